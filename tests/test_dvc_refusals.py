"""`dvc repro` refuses before it removes anything: bad params, and the Prefect flow running on the
same outputs (a real temp git+DVC repo, the project's own dvc.yaml cut to what each case needs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import git_dvc_init, no_outside_pipeline, project_copy, ran_stages, sh, tiny_params

pytestmark = pytest.mark.slow


@pytest.fixture
def repo(project: Path) -> Path:
    return git_dvc_init(project)


def test_bad_params_fail_before_any_work(repo: Path):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sampling"]["max_tokns"] = 10
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=repo, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "sampling.max_tokns" in out.stderr and "did you mean 'max_tokens'" in out.stderr
    assert not (repo / "data").exists()


def dvc_fails(*cmd: str, cwd: Path) -> str:
    """Run a dvc command that must fail; its stdout and stderr."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode != 0, f"{' '.join(cmd)} succeeded:\n{out.stdout[-3000:]}"
    return out.stdout + out.stderr


def outputs_of(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.name != ".gitignore"}


def xi_only(repo: Path) -> None:
    """dvc.yaml cut to check_params and xi (both as the project declares them), with synthetic
    rollouts in place of sample_t's: the xi stage's outputs in seconds, not a pre-training."""
    from tests.synth import make_rollouts

    raw = yaml.safe_load((repo / "dvc.yaml").read_text())
    raw["stages"] = {k: v for k, v in raw["stages"].items() if k in ("check_params", "xi")}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (repo / "data/rollouts").mkdir(parents=True)
    make_rollouts(30, 8, seed=1).drop(columns=["type"]).to_parquet(
        repo / "data/rollouts/base.parquet", index=False)


@pytest.fixture(scope="module")
def xi_ran(tmp_path_factory) -> Path:
    """A git+DVC repo of the project with tiny params, dvc.yaml cut by xi_only, after one
    `dvc repro xi` (done once for this file's tests; each works on its own copy, xi_repo)."""
    dest = project_copy(tmp_path_factory.mktemp("xi-ran") / "proj", tiny_params())
    git_dvc_init(dest)
    xi_only(dest)
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{dest / 'mlflow.db'}")
    no_outside_pipeline(mp)
    try:
        sh("dvc", "repro", "xi", cwd=dest)
    finally:
        mp.undo()
    return dest


@pytest.fixture
def xi_repo(xi_ran: Path, tmp_path: Path, monkeypatch) -> Path:
    """A copy of xi_ran, cwd and MLflow there (its own mlflow.db: a store records the absolute
    artifact folder of the project it was made in, and a stage refuses another project's)."""
    dest = Path(shutil.copytree(xi_ran, tmp_path / "proj", symlinks=True,
                                ignore=shutil.ignore_patterns("mlflow.db", "mlruns", "tmp")))
    monkeypatch.chdir(dest)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{dest / 'mlflow.db'}")
    no_outside_pipeline(monkeypatch)
    return dest


def test_invalid_params_stop_dvc_repro_before_it_removes_any_output(xi_repo: Path):
    repo = xi_repo
    xi = repo / "data/xi"
    before = outputs_of(xi)
    assert len(before) == 7  # 2 tables, budgets, E[T], summary, 2 plots

    # A typo under xi: (measured before: DVC had removed all seven files when the xi stage
    # refused it; summary.json and the two plots, not cached, were gone for good)
    text = (repo / "params.yaml").read_text()
    params = yaml.safe_load(text)
    params["xi"]["n_bootstap"] = 1000
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc_fails("dvc", "repro", "xi", cwd=repo)
    assert "xi.n_bootstap: unknown key; did you mean 'n_bootstrap'" in out, out
    assert "failed to reproduce 'check_params'" in out and "Traceback" not in out, out
    assert ran_stages(out) == {"check_params"}
    assert outputs_of(xi) == before  # every file, byte for byte

    # every output of the stage is in DVC's cache: lost files come back with `dvc checkout`
    (repo / "params.yaml").write_text(text)
    for f in xi.iterdir():
        f.unlink()
    sh("dvc", "checkout", "xi", cwd=repo)
    assert outputs_of(xi) == before
    assert ran_stages(sh("dvc", "repro", "xi", cwd=repo)) == {"check_params"}  # xi up to date


def test_dvc_repro_beside_the_flow_refuses_before_removing_anything(xi_repo: Path):
    """The flow holds the project lock (its own exclusive_root, in a real process); `dvc repro`
    started beside it stops at check_params, naming the flow, every output intact."""
    repo = xi_repo
    before = outputs_of(repo / "data/xi")
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text().replace(
        "n_bootstrap: 50", "n_bootstrap: 60"))  # so xi is stale: DVC would remove its outputs
    flow = subprocess.Popen([sys.executable, "-c", FLOW_HOLDS_THE_LOCK], cwd=repo,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert flow.stdout.readline().strip() == "locked"
        out = dvc_fails("dvc", "repro", "xi", cwd=repo)
    finally:
        flow.kill()
        flow.wait()
    assert f"the Prefect flow (process {flow.pid}" in out and "is running on" in out, out
    assert ran_stages(out) == {"check_params"} and outputs_of(repo / "data/xi") == before
    # the flow gone, the stage that refused passes (the lock is the flow's, released with it)
    assert ran_stages(sh("dvc", "repro", "check_params", cwd=repo)) == {"check_params"}


FLOW_HOLDS_THE_LOCK = """
import time
from pathlib import Path
from flows.pipeline import exclusive_root
with exclusive_root(Path(".")):
    print("locked", flush=True)
    time.sleep(600)
"""
