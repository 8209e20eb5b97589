"""The failure cases of docs/failures.md (round two): each gives a clean one-line error (exit 2) or
documented behaviour, before expensive work, with existing outputs intact. Real files, real
parquet, real subprocesses where they are cheap."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from relbudget.budgets import (BudgetError, budget_of, check_token_budget, plan_budgets,
                               read_budgets, write_budgets)
from relbudget.io import (WorkLocked, atomic_dir, remove_stale_temps, switch_work_dir, work_lock,
                          write_json)
from relbudget.params import ParamsError, TrainParams, XiParams, load_params, parse_params
from relbudget.schemas import PROMPTS, TableError, read_table

sys.path.insert(0, str(Path(__file__).parent))
from synth import make_rollouts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REGIMES = {"deficient": 0.4, "balanced": 1.75, "ample": 5.0}


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}


def _clean_failure(r: subprocess.CompletedProcess, code: int = 2) -> bool:
    return r.returncode == code and "Traceback" not in r.stderr and r.stderr.strip() != ""


@pytest.fixture(scope="module")
def rollouts() -> pd.DataFrame:
    return make_rollouts(40, 8, seed=3)


@pytest.fixture
def xi_dir(tmp_path, rollouts) -> Path:
    write_budgets(plan_budgets(rollouts, REGIMES, XiParams()), tmp_path / "data" / "xi")
    return tmp_path / "data" / "xi"


# ---------------------------------------------------------------- budgets.yaml, typed


def test_budgets_round_trip_and_bytes(xi_dir, rollouts):
    budgets = read_budgets(xi_dir)
    assert list(budgets) == list(REGIMES) and all(b.H >= 1 for b in budgets.values())
    assert budget_of(xi_dir, "balanced").regime == "balanced"
    # the bytes the xi stage wrote before the typed Budget: the plan's keys in order, regime last
    text = (xi_dir / "budgets.yaml").read_text()
    assert yaml.safe_dump(yaml.safe_load(text), sort_keys=False) == text
    assert list(yaml.safe_load(text)["balanced"])[-1] == "regime"


def _cut_after_H(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    last_H = max(i for i, line in enumerate(lines) if line.strip().startswith("H:"))
    path.write_text("".join(lines[: last_H + 1]))


@pytest.mark.parametrize("damage,needle", [
    (_cut_after_H, "field 'regime'"),
    (lambda p: p.write_text(p.read_text().replace("  H: ", "  H: -", 1)), "field 'H'"),
    (lambda p: p.write_text(p.read_text().replace("  H: ", "  H: 0 #", 1)), "field 'H'"),
    (lambda p: p.write_text(": : garbage [\n"), "not valid YAML"),
    (lambda p: p.write_text(p.read_text() + "balanced: {H: 3}\n"), "duplicate key 'balanced'"),
    (lambda p: p.write_text(""), "must map each regime"),
])
def test_damaged_budgets_name_file_and_field(xi_dir, damage, needle):
    damage(xi_dir / "budgets.yaml")
    with pytest.raises(BudgetError, match=needle) as err:
        read_budgets(xi_dir)
    assert str(xi_dir / "budgets.yaml") in str(err.value) and "\n" not in str(err.value)
    assert "after changing params.yaml regimes" not in str(err.value)


def test_evaluate_refuses_a_cut_budgets_file(tmp_path, xi_dir):
    """The measured case: budgets.yaml cut after `H: 5`; evaluate used to run at H = 5, exit 0."""
    _cut_after_H(xi_dir / "budgets.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"regimes": REGIMES}))
    r = subprocess.run([sys.executable, "-m", "stages.evaluate", "ample"], cwd=tmp_path,
                       env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert _clean_failure(r), r.stderr
    assert "budgets.yaml" in r.stderr and "field 'regime'" in r.stderr
    assert not (tmp_path / "data" / "eval").exists()  # nothing sampled, nothing written


def test_tiny_xi_warns_with_numbers(rollouts):
    (b,) = plan_budgets(rollouts, {"tiny": 0.001}, XiParams()).values()
    assert b.H == 1 and "rounds below 1" in b.warning and "0.001" in b.warning


# ---------------------------------------------------------------- params: duplicate keys, bounds


def test_duplicate_key_in_params_is_an_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("regimes:\n  balanced: 1.0\n  balanced: 2.0\n")
    with pytest.raises(ParamsError, match="duplicate key 'balanced'"):
        load_params(path)
    r = subprocess.run([sys.executable, "-m", "stages.xi", "--params", str(path)], cwd=tmp_path,
                       env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert _clean_failure(r) and "duplicate key 'balanced'" in r.stderr


@pytest.mark.parametrize("override,needle", [
    ({"data": {"n_train": 800_000}}, "hold 736380"),
    ({"data": {"n_train": 10**9}}, "data.n_train"),
    ({"sampling": {"attempts": 10**8}}, "sampling.attempts"),
    ({"sampling": {"attempts": 4000}, "data": {"n_train": 20000}}, "GiB of rollouts"),
    ({"evaluate": {"attempts": 4000, "pass_k": [1]}, "data": {"n_eval": 20000}}, "evaluate: 4000"),
    ({"xi": {"group_size": 10**9}}, "xi.group_size"),
    ({"xi": {"n_bootstrap": 10**9}}, "xi.n_bootstrap"),
    ({"regimes": {"balanced": float("inf")}}, "finite number"),
    ({"regimes": {"balanced": 1e308}}, "finite number in 0.001..1000"),
    ({"regimes": {"balanced": 1e-300}}, "finite number in 0.001..1000"),
    ({"sweep": {"xi": [1.0, 1e308]}}, "sweep.xi"),
    ({"regimes": {"x" * 65: 1.0}}, "at most 64 characters"),
    ({"regimes": {"base": 1.0}}, "other than 'base'"),
    ({"regimes": {"models": 1.0}}, "clashes with paths.models"),
    ({"regimes": {"prepared": 1.0}}, "clashes with paths.prepared"),
    ({"paths": {"base_model": "data/models/mybase"}, "regimes": {"mybase": 1.0}},
     "clashes with paths.base_model"),
    ({"paths": {"xi": "../elsewhere"}}, "leaves the project folder"),
    ({"paths": {"xi": "data/../../elsewhere"}}, "leaves the project folder"),
    ({"paths": {"xi": "/tmp/elsewhere"}}, "allow_outside_paths"),
])
def test_params_out_of_range_are_refused(override, needle):
    with pytest.raises(ParamsError, match=needle.replace(".", r"\.")):
        parse_params(override)


def test_outside_paths_need_the_flag():
    p = parse_params({"paths": {"xi": "/tmp/elsewhere"}, "allow_outside_paths": True})
    assert p.paths.xi == "/tmp/elsewhere"


def test_unreachable_token_budget_is_refused():
    t = TrainParams(token_budget=10**15, max_steps=400, prompts_per_step=8, num_generations=8)
    with pytest.raises(BudgetError, match=r"at most 1459200 tokens.*max_steps to at least"):
        check_token_budget(t, 57, "train@balanced")
    check_token_budget(TrainParams(token_budget=150_000), 57, "train@balanced")  # reachable
    check_token_budget(TrainParams(token_budget=10**15, stop="steps"), 57, "x")  # no token stop


# ---------------------------------------------------------------- CLI inputs


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relbudget.cli", *map(str, args)], cwd=ROOT,
                          env=_env(ROOT), capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    a, b = make_rollouts(20, 4, cap=128, seed=1), make_rollouts(20, 4, cap=64, seed=2, policy="other")
    b["prompt_id"] = b["prompt_id"] + "-b"
    path = tmp_path_factory.mktemp("mixed") / "mixed.parquet"
    pd.concat([a, b], ignore_index=True).to_parquet(path, index=False)
    return path


def test_cli_refuses_a_mixed_table_unless_asked(mixed):
    r = _cli("xi", "--rollouts", mixed, "--json")
    assert _clean_failure(r) and "--allow-mixed" in r.stderr and "policy" in r.stderr
    assert _cli("xi", "--rollouts", mixed, "--json", "--allow-mixed").returncode == 0


@pytest.mark.parametrize("args,needle", [
    (["plan", "--target-xi", "1e308"], "--target-xi"),
    (["plan", "--target-xi", "1.5", "--group-size", "1000000000"], "--group-size"),
    (["xi", "--n-bootstrap", "1000000000"], "--n-bootstrap"),
])
def test_cli_numbers_out_of_range(tmp_path, rollouts, args, needle):
    path = tmp_path / "r.parquet"
    rollouts.to_parquet(path, index=False)
    t0 = time.time()
    r = _cli(args[0], "--rollouts", path, *args[1:])
    assert _clean_failure(r) and needle in r.stderr and time.time() - t0 < 60


def test_cli_garbage_and_directory(tmp_path):
    (tmp_path / "junk.parquet").write_bytes(os.urandom(3000))
    r = _cli("xi", "--rollouts", tmp_path / "junk.parquet")
    assert _clean_failure(r) and "not a readable parquet file" in r.stderr
    assert "ArrowInvalid" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("xi", "--rollouts", tmp_path)
    assert _clean_failure(r) and "is a directory" in r.stderr


def test_missing_prompt_column_names_it(tmp_path):
    path = tmp_path / "train.parquet"
    pd.DataFrame({"prompt_id": ["a"], "prompt": ["1+1="]}).to_parquet(path, index=False)
    with pytest.raises(TableError, match="answer"):
        read_table(path, PROMPTS)


# ---------------------------------------------------------------- resumable work, locks


def test_work_of_another_configuration_is_kept_and_restored(tmp_path, caplog):
    work = tmp_path / ".base.chunks"
    switch_work_dir(work, "fingerprint.txt", "aaa")
    (work / "chunk-00000.parquet").write_text("hours of sampling")
    switch_work_dir(work, "fingerprint.txt", "bbb")  # another params file: kept, not deleted
    kept = tmp_path / ".base.chunks.kept" / "aaa" / "chunk-00000.parquet"
    assert kept.read_text() == "hours of sampling" and not list(work.glob("chunk-*"))
    assert "kept in" in caplog.text and str(kept.parent) in caplog.text
    switch_work_dir(work, "fingerprint.txt", "aaa")  # back: resumes the kept chunks
    assert (work / "chunk-00000.parquet").read_text() == "hours of sampling"
    for fp in ("c1", "c2", "c3", "c4", "c5"):  # pruned to the newest KEEP_STALE
        (work / "x").write_text(fp)
        switch_work_dir(work, "fingerprint.txt", fp)
        time.sleep(0.01)
    assert len(list((tmp_path / ".base.chunks.kept").iterdir())) == 3


def test_second_process_on_a_work_folder_is_refused(tmp_path):
    work = tmp_path / ".balanced.work"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / ".balanced.work.lock"
        lock.write_text(str(sleeper.pid))  # a live process holds it
        with pytest.raises(WorkLocked, match=f"in use by process {sleeper.pid}"):
            with work_lock(work):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with work_lock(work) as held:  # its process is dead now: the stale lock is taken over
        assert held.read_text() == str(os.getpid())
    assert not lock.exists()


# ---------------------------------------------------------------- umask, temp files, SIGTERM


def test_outputs_get_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json({"a": 1}, tmp_path / "out.json")
        with atomic_dir(tmp_path / "folder") as d:
            (d / "f").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755


def test_stale_temp_files_are_removed_at_stage_start(tmp_path):
    (tmp_path / ".xi_curves.png.abc123.tmp").write_bytes(b"")
    (tmp_path / ".balanced.k2j.tmp").mkdir()
    (tmp_path / "keep.txt").write_text("x")
    gone = remove_stale_temps([tmp_path / "xi_curves.png", tmp_path / "balanced"])
    assert len(gone) == 2 and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


SLOW_STAGE = """
import sys, time
from pathlib import Path
from stages._cli import main
def run(params):
    Path("started").write_text("1")
    time.sleep(60)
sys.argv = ["x", "--params", "params.yaml"]
main("prepare", run, ["data"])
"""


def test_sigterm_ends_the_stage_like_an_exception(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_STAGE], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "started").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "killed by SIGTERM" in err
    assert "Traceback" not in err
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs(client.get_experiment_by_name("relbudget").experiment_id)
    assert run.info.status == "FAILED" and "killed" in run.data.tags["error"]
