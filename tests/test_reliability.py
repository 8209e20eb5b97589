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
from pydantic import ValidationError
import yaml

from relbudget.measure.budgets import (BudgetError, budget_of, check_token_budget, plan_budgets,
                               read_budgets, write_budgets)
from relbudget.core.io import (WorkLocked, atomic_dir, remove_stale_temps, switch_work_dir, work_lock,
                          write_json)
from relbudget.core.params import ParamsError, TrainParams, XiParams, load_params, merged, params_with
from relbudget.core.schemas import PROMPTS, TableError, read_table
from tests.helpers import cli_run
from tests.synth import make_rollouts

ROOT = Path(__file__).resolve().parents[1]
REGIMES = {"deficient": 0.25, "balanced": 1.75, "ample": 6.0}  # named xi of the sweep grid


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
    write_budgets(plan_budgets(rollouts, REGIMES, XiParams.of_project()), tmp_path / "data" / "xi")
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


def test_tiny_xi_warns_with_numbers(rollouts):
    (b,) = plan_budgets(rollouts, {"tiny": 0.001}, XiParams.of_project()).values()
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
    ({"data": {"n_train": 800_000, "levels": [1, 2, 3]}}, "hold 736380"),
    ({"data": {"n_train": 10**9}}, "data.n_train"),
    ({"sampling": {"attempts": 10**8}}, "sampling.attempts"),
    ({"sampling": {"attempts": 4000}, "data": {"n_train": 20000, "levels": [1, 2, 3]}}, "GiB of rollouts"),
    ({"evaluate": {"attempts": 4000, "pass_k": [1]}, "data": {"n_eval": 20000, "levels": [1, 2, 3]}},
     "evaluate: 4000"),
    ({"xi": {"group_size": 10**9}}, "xi.group_size"),
    ({"xi": {"n_bootstrap": 10**9}}, "xi.n_bootstrap"),
    ({"regimes": {"balanced": float("inf")}}, "finite number"),
    ({"regimes": {"balanced": 1e308}}, "finite number in 0.001..1000"),
    ({"regimes": {"balanced": 1e-300}}, "finite number in 0.001..1000"),
    ({"sweep": {"xi": [1.0, 1e308]}}, "sweep.xi"),
    ({"regimes": {"x" * 65: 1.0}}, "at most 64 characters"),
    ({"regimes": {"base": 1.0}}, "other than 'base'"),
    ({"regimes": {"balanced": 1.5}}, "regimes.balanced = 1.5 is not in sweep.xi"),
    ({"paths": {"xi": "../elsewhere"}}, "leaves the project folder"),
    ({"paths": {"xi": "data/../../elsewhere"}}, "leaves the project folder"),
    ({"paths": {"xi": "/tmp/elsewhere"}}, "allow_outside_paths"),
])
def test_params_out_of_range_are_refused(override, needle):
    with pytest.raises(ParamsError, match=needle.replace(".", r"\.")):
        params_with(override)


def test_outside_paths_need_the_flag():
    p = params_with({"paths": {"xi": "/tmp/elsewhere"}, "allow_outside_paths": True})
    assert p.paths.xi == "/tmp/elsewhere"


def test_unreachable_token_budget_is_refused():
    # 1e15 is refused by its range already; within range, 400 steps of 64 x 57 tokens cannot
    # reach 10^10 tokens: refused before compute, with the numbers
    with pytest.raises(ValidationError, match="less than or equal to"):
        TrainParams.of_project(token_budget=10**15)
    t = TrainParams.of_project(token_budget=10**10, max_steps=400, prompts_per_step=8, num_generations=8)
    with pytest.raises(BudgetError, match=r"at most 1459200 tokens.*max_steps to at least"):
        check_token_budget(t, 57, "train@balanced")
    check_token_budget(TrainParams.of_project(token_budget=150_000), 57, "train@balanced")  # reachable
    check_token_budget(TrainParams.of_project(token_budget=10**10, stop="steps"), 57, "x")  # no token stop


# ---------------------------------------------------------------- CLI inputs


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    a, b = make_rollouts(20, 4, cap=128, seed=1), make_rollouts(20, 4, cap=64, seed=2, policy="other")
    b["prompt_id"] = b["prompt_id"] + "-b"
    path = tmp_path_factory.mktemp("mixed") / "mixed.parquet"
    pd.concat([a, b], ignore_index=True).to_parquet(path, index=False)
    return path


def test_cli_refuses_a_mixed_table_unless_asked(mixed):
    r = cli_run("xi", "--rollouts", mixed, "--json")
    assert _clean_failure(r) and "--allow-mixed" in r.stderr and "policy" in r.stderr
    assert cli_run("xi", "--rollouts", mixed, "--json", "--allow-mixed").returncode == 0


@pytest.mark.parametrize("args,needle", [
    (["plan", "--target-xi", "1e308"], "--target-xi"),
    (["plan", "--target-xi", "1.5", "--group-size", "1000000000"], "--group-size"),
    (["xi", "--n-bootstrap", "1000000000"], "--n-bootstrap"),
])
def test_cli_numbers_out_of_range(tmp_path, rollouts, args, needle):
    path = tmp_path / "r.parquet"
    rollouts.to_parquet(path, index=False)
    t0 = time.time()
    r = cli_run(args[0], "--rollouts", path, *args[1:])
    assert _clean_failure(r) and needle in r.stderr and time.time() - t0 < 60


def test_cli_garbage_and_directory(tmp_path):
    (tmp_path / "junk.parquet").write_bytes(os.urandom(3000))
    r = cli_run("xi", "--rollouts", tmp_path / "junk.parquet")
    assert _clean_failure(r) and "not a readable parquet file" in r.stderr
    assert "ArrowInvalid" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli_run("xi", "--rollouts", tmp_path)
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


def sigterm_once_started(script: str, tmp_path, start_s: float, end_s: float):
    """Run `python -c script` in tmp_path (empty params), SIGTERM it once it has written
    `started` (or after start_s), and return (process, its stderr) when it has ended."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(merged({})))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + start_s
    while not (tmp_path / "started").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=end_s)
    return proc, err


def test_sigterm_ends_the_stage_like_an_exception(tmp_path):
    proc, err = sigterm_once_started(SLOW_STAGE, tmp_path, start_s=120, end_s=60)
    assert proc.returncode == 128 + signal.SIGTERM and "killed by SIGTERM" in err
    assert "Traceback" not in err
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs(client.get_experiment_by_name("relbudget").experiment_id)
    assert run.info.status == "FAILED" and "killed" in run.data.tags["error"]


# ---------------------------------------------------------------- outputs replaced as a set


def test_a_failed_write_inside_a_set_changes_no_file(tmp_path):
    from relbudget.core.io import atomic_path, output_set, write_parquet, write_text

    write_json({"v": "old"}, tmp_path / "a.json")
    write_parquet(pd.DataFrame({"v": ["old"]}), tmp_path / "b.parquet")
    write_text("old\n", tmp_path / "c.txt")
    old = {n: (tmp_path / n).read_bytes() for n in ("a.json", "b.parquet", "c.txt")}
    with pytest.raises(OSError, match="disk full"):
        with output_set():
            write_json({"v": "new"}, tmp_path / "a.json")
            with atomic_path(tmp_path / "b.parquet") as tmp:  # the second write fails midway
                tmp.write_bytes(b"PAR1 half a table")
                raise OSError(28, "disk full")
            write_text("new\n", tmp_path / "c.txt")
    assert {n: (tmp_path / n).read_bytes() for n in old} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(old)  # no temp file left
    with output_set():  # and a set that succeeds replaces all three
        write_json({"v": "new"}, tmp_path / "a.json")
        write_text("new\n", tmp_path / "c.txt")
    assert (tmp_path / "c.txt").read_text() == "new\n"
    assert "new" in (tmp_path / "a.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(old)


def _folder_and_file(root: Path) -> dict[str, bytes]:
    """The files of a policy-like folder and of a history file beside it, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


WRITE_FOLDER_SET = """
from relbudget.core.io import atomic_dir, atomic_path, output_set

def write_folder_set(root, tag, fail=False):
    with output_set():
        with atomic_dir(root / "models" / "low") as d:
            (d / "weights.bin").write_bytes(tag.encode() * 100)
            (d / f"only-{tag}.json").write_text(tag)
        with atomic_path(root / "train" / "history.parquet") as tmp:
            tmp.write_text(f"history {tag}")
            if fail:
                raise OSError(28, "disk full")
"""


def _write_folder_set(root: Path, tag: str, fail: bool = False) -> None:
    """One set of a folder (two files, names depending on `tag`) and a file, as train@REGIME
    writes its policy and history; `fail`: the file's write raises after the folder is staged.
    The same code runs in the SIGKILL test's subprocess."""
    scope: dict = {}
    exec(WRITE_FOLDER_SET, scope)
    scope["write_folder_set"](root, tag, fail)


def test_a_folder_is_replaced_with_its_set(tmp_path):
    """atomic_dir inside output_set: the folder waits for the set, like a file. A failure leaves
    the old folder and file and no temp folder; success replaces both, old folder content gone."""
    _write_folder_set(tmp_path, "old")
    old = _folder_and_file(tmp_path)
    with pytest.raises(OSError, match="disk full"):
        _write_folder_set(tmp_path, "new", fail=True)
    assert _folder_and_file(tmp_path) == old
    assert sorted(p.name for p in tmp_path.rglob(".*")) == []  # no temp file or folder left
    _write_folder_set(tmp_path, "new")
    assert _folder_and_file(tmp_path) == {"models/low/only-new.json": b"new",
                                          "models/low/weights.bin": b"new" * 100,
                                          "train/history.parquet": b"history new"}
    assert sorted(p.name for p in tmp_path.rglob(".*")) == []


# A script fragment: SIGKILL the process after `count` renames of an output set's commit.
KILL_AFTER_RENAMES = """
def kill_after_renames(count):
    import os, signal
    import relbudget.core.io as rio

    real, done = rio._rename, [0]
    def rename(src, dst):
        if done[0] == count:
            os.kill(os.getpid(), signal.SIGKILL)
        done[0] += 1
        real(src, dst)
    rio._rename = rename
"""

KILL_FOLDER_SET = WRITE_FOLDER_SET + KILL_AFTER_RENAMES + """
import sys
from pathlib import Path

kill_after_renames(int(sys.argv[1]))
write_folder_set(Path("."), "new")
"""


@pytest.mark.parametrize("count", [0, 1])
def test_sigkill_mid_commit_of_a_folder_set_leaves_the_new_set(tmp_path, count):
    """SIGKILL between the renames of a set holding a folder: 0, after the old folder was moved
    aside (the target is missing); 1, after the folder was renamed, before the file. The next
    stage start completes the set from its journal: the new folder and file, no leftovers."""
    _write_folder_set(tmp_path, "old")
    r = subprocess.run([sys.executable, "-c", KILL_FOLDER_SET, str(count)], cwd=tmp_path,
                       env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert (tmp_path / "models" / "low").exists() == (count == 1)
    remove_stale_temps([tmp_path / "models" / "low", tmp_path / "train" / "history.parquet"])
    assert _folder_and_file(tmp_path) == {"models/low/only-new.json": b"new",
                                          "models/low/weights.bin": b"new" * 100,
                                          "train/history.parquet": b"history new"}
    assert sorted(p.name for p in tmp_path.rglob(".*")) == []


XI_PARAMS = {"xi": {"n_bootstrap": 50}, "regimes": REGIMES}


def _xi_outputs(params) -> list[Path]:
    from relbudget.core.paths import stage_files

    return [Path(f) for f in stage_files(params.paths, "xi").outputs]


def _xi_project(folder: Path, seed: int) -> Path:
    (folder / "data" / "rollouts").mkdir(parents=True)
    make_rollouts(30, 8, seed=seed).drop(columns=["type"]).to_parquet(
        folder / "data" / "rollouts" / "base.parquet", index=False)
    return folder


def _run_xi_here(monkeypatch, folder: Path) -> dict[str, bytes]:
    """The xi stage's run() in `folder`, MLflow calls stubbed; its outputs' bytes."""
    import types

    import stages.xi as xi

    monkeypatch.chdir(folder)
    monkeypatch.setattr(xi, "log_metrics", lambda *a, **k: None)
    monkeypatch.setattr(xi, "mlflow", types.SimpleNamespace(log_artifact=lambda *a, **k: None))
    params = params_with(XI_PARAMS)
    xi.run(params)
    return {str(f): f.read_bytes() for f in _xi_outputs(params)}


def _state(folder: Path) -> dict[str, bytes | None]:
    params = params_with(XI_PARAMS)
    return {str(f): (folder / f).read_bytes() if (folder / f).exists() else None
            for f in _xi_outputs(params)}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "data" / "xi").iterdir() if p.name.startswith("."))


def test_xi_stage_failing_midway_keeps_the_old_outputs(tmp_path, monkeypatch):
    """The measured bug: a new budgets.yaml beside an old summary.json. Here the fifth of seven
    writes (gamma_fit.png) raises; not one of the seven files may change."""
    import stages.xi as xi

    old = _run_xi_here(monkeypatch, _xi_project(tmp_path, seed=1))
    (tmp_path / "data" / "rollouts" / "base.parquet").unlink()
    make_rollouts(30, 8, seed=2).drop(columns=["type"]).to_parquet(
        tmp_path / "data" / "rollouts" / "base.parquet", index=False)

    def broken(*args, **kwargs):
        raise RuntimeError("the plot failed")

    monkeypatch.setattr(xi, "gamma_fit", broken)
    with pytest.raises(RuntimeError, match="the plot failed"):
        _run_xi_here(monkeypatch, tmp_path)
    assert _state(tmp_path) == old and _leftovers(tmp_path) == []


KILL_XI = KILL_AFTER_RENAMES + """
import os, signal, sys, types
import stages.xi as xi
from relbudget.core.params import params_with

where, count = sys.argv[1], int(sys.argv[2])
xi.log_metrics = lambda *a, **k: None
xi.mlflow = types.SimpleNamespace(log_artifact=lambda *a, **k: None)
if where == "rename":  # SIGKILL after `count` renames of the set's commit
    kill_after_renames(count)
else:  # SIGKILL inside the gamma_fit plot (the fifth write), after its temp file is written
    real_plot = xi.gamma_fit
    def plot(df, path, gamma):
        real_plot(df, path, gamma)
        os.kill(os.getpid(), signal.SIGKILL)
    xi.gamma_fit = plot
xi.run(params_with(%r))
""" % (XI_PARAMS,)


@pytest.fixture(scope="module")
def xi_sets(tmp_path_factory) -> tuple[Path, dict, dict]:
    """An xi project with the outputs of rollouts seed 1 (old) and seed-2 rollouts in place, and
    the bytes a clean run on seed 2 writes (new)."""
    with pytest.MonkeyPatch.context() as mp:
        new = _run_xi_here(mp, _xi_project(tmp_path_factory.mktemp("reference"), seed=2))
        proj = _xi_project(tmp_path_factory.mktemp("proj"), seed=1)
        old = _run_xi_here(mp, proj)
    assert all(old[f] != new[f] for f in old)
    make_rollouts(30, 8, seed=2).drop(columns=["type"]).to_parquet(
        proj / "data" / "rollouts" / "base.parquet", index=False)
    return proj, old, new


@pytest.mark.parametrize("where,count,expect", [("write", 0, "old"), ("rename", 0, "new"),
                                                ("rename", 3, "new")])
def test_sigkill_of_xi_mid_set_leaves_all_old_or_all_new(tmp_path, xi_sets, where, count, expect):
    """SIGKILL while the xi stage writes its seven files, or between the renames of its commit:
    once the stage starts again (remove_stale_temps, the first thing `execute` does), every file
    is the old one or every file is the new one, byte for byte."""
    import shutil

    template, old, new = xi_sets
    proj = Path(shutil.copytree(template, tmp_path / "proj"))
    r = subprocess.run([sys.executable, "-c", KILL_XI, where, str(count)], cwd=proj,
                       env=_env(proj), capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    killed = _state(proj)
    if where == "rename":  # the journal is there, and (count > 0) the files are a mix now
        assert any(n.endswith(".journal.tmp") for n in _leftovers(proj))
        assert count == 0 or {killed[f] == new[f] for f in killed} == {True, False}
    else:
        assert killed == old and _leftovers(proj) != []  # the staged temp files
    remove_stale_temps([proj / f for f in _xi_outputs(params_with(XI_PARAMS))])
    assert _state(proj) == (old if expect == "old" else new)
    assert _leftovers(proj) == []


# ---------------------------------------------------------------- MLflow store, read-only data/


def test_damaged_mlflow_db_is_one_line_naming_the_file(tmp_path):
    """The measured case: mlflow.db overwritten with garbage gave SQLAlchemy's `file is not a
    database` traceback from every stage."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(merged({})))
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not sqlite at all " * 300)
    env = _env(tmp_path)
    del env["MLFLOW_TRACKING_URI"]  # the default store: mlflow.db beside params.yaml
    r = subprocess.run([sys.executable, "-m", "stages.xi"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert _clean_failure(r) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(db) in r.stderr and "file is not a database" in r.stderr
    assert "mv " in r.stderr and "MLFLOW_TRACKING_URI" in r.stderr
    assert db.read_bytes() == b"not sqlite at all " * 300


def _read_only(folder: Path, cmd: list[str]) -> list[str]:
    """`cmd` with `folder` read-only: a read-only bind mount in a private mount namespace when
    root (permissions do not stop root), else the folder's write bits cleared (undone by the
    caller's chmod)."""
    if os.geteuid() != 0:
        for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
            d.chmod(0o555)
        return cmd
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("root without mount namespaces: cannot make a folder read-only")
    import shlex

    f = shlex.quote(str(folder))
    return ["unshare", "-m", "sh", "-c", f"mount --bind {f} {f} && mount -o remount,bind,ro {f} "
            f"{f} && exec {' '.join(map(shlex.quote, cmd))}"]


def test_read_only_data_fails_before_any_compute(tmp_path, monkeypatch):
    """The measured case: evaluate sampled for 10.7 s on a read-only data/, then PermissionError.
    Every stage now probes its outputs' folders first (here xi): one line, exit 2, no MLflow run,
    the old outputs as they were."""
    _xi_project(tmp_path, seed=1)
    old = _run_xi_here(monkeypatch, tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(merged(XI_PARAMS)))
    t0 = time.time()
    try:
        r = subprocess.run(_read_only(tmp_path / "data", [sys.executable, "-m", "stages.xi"]),
                           cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                           timeout=120)
    finally:
        for d in [tmp_path / "data", *(p for p in (tmp_path / "data").rglob("*") if p.is_dir())]:
            d.chmod(0o755)
    assert _clean_failure(r) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "data/xi" in r.stderr and "not writable" in r.stderr and time.time() - t0 < 60
    assert _state(tmp_path) == old
    assert not (tmp_path / "mlflow.db").exists()  # refused before the MLflow run


# ---------------------------------------------------------------- CLI: a folder of tables


def test_cli_pools_a_folder_only_with_allow_mixed(tmp_path, mixed, capsys):
    from relbudget.cli import main as cli_main

    df = pd.read_parquet(mixed)
    folder = tmp_path / "tables"
    folder.mkdir()
    for policy, part in df.groupby("policy"):
        part.to_parquet(folder / f"{policy}.parquet", index=False)
    r = cli_run("xi", "--rollouts", folder, "--json")
    assert _clean_failure(r) and "is a directory" in r.stderr and "--allow-mixed" in r.stderr
    pooled = cli_run("xi", "--rollouts", folder, "--json", "--allow-mixed")
    assert pooled.returncode == 0, pooled.stderr
    assert pooled.stdout == cli_run("xi", "--rollouts", mixed, "--json", "--allow-mixed").stdout
    # the same attempts in two files are duplicates, as in one file
    df[df["policy"] == "synth"].to_parquet(folder / "copy.parquet", index=False)
    assert cli_main(["xi", "--rollouts", str(folder), "--allow-mixed"]) == 2
    assert "3 files pooled" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["xi", "--rollouts", str(tmp_path / "empty"), "--allow-mixed"]) == 2
    assert "holds no *.parquet" in capsys.readouterr().err


# ---------------------------------------------------------------- SIGTERM in the Prefect flow


FLOW_THREADS = """
import sys, threading, time
from pathlib import Path
from flows.pipeline import _kill_stages_on_sigterm
from relbudget.core.io import atomic_path
from relbudget.core.params import params_with
from stages._cli import KILLED, execute

def slow(params):
    with atomic_path("data/prepared/part.txt") as tmp:
        tmp.write_text("half written")
        Path("started").write_text("1")
        while True:
            time.sleep(0.05)

params, result = params_with({}), {}

def worker(stage):
    try:
        execute(stage, slow, params, ["data"])
    except BaseException as err:
        result[stage] = f"{type(err).__name__}: {err}"

undo = _kill_stages_on_sigterm()  # what the flow body installs
t = threading.Thread(target=worker, args=("prepare",))  # as the thread task runner runs a stage
t.start()
t.join()
later = threading.Thread(target=worker, args=("xi",))
later.start()
later.join()
undo()
print(result)
sys.exit(143 if KILLED.is_set() else 0)
"""


def test_sigterm_in_the_flow_ends_its_stage_threads_like_an_exception(tmp_path):
    """The flow runs stages in threads, where no signal handler runs: SIGTERM raises StageKilled
    into each stage thread (MLflow run FAILED "killed", temp files removed) and refuses the
    stages not started yet."""
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", FLOW_THREADS], cwd=tmp_path,
                            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not (tmp_path / "started").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert "'prepare': 'StageKilled: killed by SIGTERM'" in out
    assert "'xi': 'StageKilled: killed by SIGTERM before it started'" in out
    assert list((tmp_path / "data" / "prepared").iterdir()) == []  # the temp file is gone
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs(client.get_experiment_by_name("relbudget").experiment_id)
    assert run.info.run_name == "prepare" and run.info.status == "FAILED"
    assert run.data.tags["error"] == "StageKilled: killed by SIGTERM"


FLOW_MAIN = """
import sys, time
from pathlib import Path
import stages.prepare
from relbudget.core.io import atomic_path

def slow(params):
    with atomic_path(Path(params.paths.prepared) / "part.txt") as tmp:
        tmp.write_text("half written")
        Path("started").write_text("1")
        while True:
            time.sleep(0.05)

stages.prepare.run = slow
from flows.pipeline import main
sys.exit(main(["--out-root", "out", "--retries", "0"]))
"""


@pytest.mark.slow
def test_sigterm_to_the_flow_process(tmp_path):
    """`python -m flows.pipeline` (a temporary Prefect server: ~20-40 s) gets SIGTERM while its
    first stage runs: exit 143, one `error:` line, no traceback, the stage's run FAILED."""
    proc, err = sigterm_once_started(FLOW_MAIN, tmp_path, start_s=240, end_s=120)
    assert proc.returncode == 143, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: flow run killed by SIGTERM: stage "
                                                     "prepare failed: StageKilled"), err
    # no traceback through the flow or the stage (the temporary server may log its own)
    assert "flows/pipeline.py" not in err and "stages/_cli.py" not in err, err
    assert not [p for p in (tmp_path / "out").rglob(".*.tmp")]
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs(client.get_experiment_by_name("relbudget").experiment_id,
                              "tags.stage = 'prepare'")
    assert [(r.info.status, r.data.tags["error"]) for r in runs] == [
        ("FAILED", "StageKilled: killed by SIGTERM")]


# ---------------------------------------------------------------- the memory estimate


def test_memory_estimate_covers_a_sampled_table_in_memory():
    """The cost check's rows x (ROW_BYTES + TOKEN_BYTES x cap) against a table built by
    sample_table from the built-in task's completions (benchmarks/bench_row_bytes.py: 96 B/row of
    columns + 1.03 B per token of text; the peak RSS of building it, ~320 B + 3.7 B per token, is
    what the constants are set from, docs/failures.md)."""
    from benchmarks.bench_row_bytes import build_table
    from relbudget.core.params import ROW_BYTES, rollout_bytes

    table = build_table(800, 8, 256)
    deep = table.memory_usage(deep=True, index=False)
    assert (deep.sum() - deep["completion"]) / len(table) < ROW_BYTES
    assert deep["completion"] / table["n_tokens"].sum() < 1.2  # about one byte per token
    # the finished table is well inside the estimate of the peak (~1.3 KB/row at cap 256)
    assert 2 * deep.sum() / len(table) <= rollout_bytes(1, 1, 256)


def test_outputs_of_foreign_writers_get_the_umask(tmp_path):
    """safetensors writes model weights 0600 whatever the umask; the stage entry point gives
    every output file and folder the user's umask afterwards (modes only)."""
    from stages._cli import apply_umask

    model = tmp_path / "models" / "r"
    model.mkdir(parents=True)
    weights = model / "model.safetensors"
    weights.write_bytes(b"w")
    weights.chmod(0o600)
    model.chmod(0o700)
    table = tmp_path / "t.parquet"
    table.write_bytes(b"t")
    table.chmod(0o600)
    old = os.umask(0o022)
    try:
        apply_umask([str(model), str(table), str(tmp_path / "absent")])
    finally:
        os.umask(old)
    assert (weights.stat().st_mode & 0o777, model.stat().st_mode & 0o777,
            table.stat().st_mode & 0o777) == (0o644, 0o755, 0o644)
    assert weights.read_bytes() == b"w"


def test_evaluate_takes_only_base_a_regime_is_its_sweep_cells(tmp_path):
    from relbudget.core.params import ParamsError, params_with
    from stages._cli import execute

    params = params_with({})
    with pytest.raises(ParamsError, match="'balanced': evaluate takes 'base'.*sweep cells"):
        execute("evaluate", lambda p, r: None, params, ["evaluate"], "balanced")


@pytest.mark.parametrize("section,key", [
    ("base_policy", "hidden_size"), ("base_policy", "steps"), ("base_policy", "n_traces"),
    ("sampling", "max_tokens"), ("sampling", "batch_size"), ("train", "max_steps"),
    ("train", "token_budget"), ("train", "checkpoint_every"), ("evaluate", "h_eval"),
    ("sweep", "token_budget"), ("sweep", "eval_attempts"), ("train", "threads")])
def test_every_numeric_param_has_a_ceiling(section, key):
    """1e9-scale values used to pass validation and then hang or exhaust memory; each is now
    refused by name before any stage starts."""
    from relbudget.core.params import ParamsError, params_with

    with pytest.raises(ParamsError, match=rf"{section}\.{key}: .*less than or equal"):
        params_with({section: {key: 10**12}})


def test_a_store_left_with_a_hot_journal_is_not_called_damaged(tmp_path):
    """A writer killed mid-transaction leaves mlflow.db with a hot journal; a read-only check
    cannot roll it back ("attempt to write a readonly database"). That is not damage: MLflow's
    read-write connection rolls it back. Seen as a flaky failure of a kill-and-resume test."""
    import shutil
    import sqlite3

    from relbudget.core.tracking import check_sqlite_store

    live = tmp_path / "live.db"
    con = sqlite3.connect(live)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.execute("BEGIN")
    con.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(20000)])
    con.execute("PRAGMA cache_size = 1")  # spill pages to the file: the journal is now hot
    con.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(20000)])
    copy = tmp_path / "copy" / "mlflow.db"
    copy.parent.mkdir()
    shutil.copy(live, copy)  # the files as a SIGKILL mid-transaction leaves them
    shutil.copy(tmp_path / "live.db-journal", tmp_path / "copy" / "mlflow.db-journal")
    con.rollback()
    con.close()
    check_sqlite_store(f"sqlite:///{copy}")  # no TrackingError
    assert sqlite3.connect(copy).execute("SELECT count(*) FROM t").fetchone() == (0,)


# ---------------------------------------------------------------- round three: sets, owners, locks


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _write_abc(folder: Path, tag: str) -> None:
    from relbudget.core.io import output_set, write_text

    with output_set():
        for name in ("a.txt", "b.txt", "c.txt"):
            write_text(f"{name} {tag}\n", folder / name)


def test_a_folder_where_a_file_goes_leaves_the_whole_set_old(tmp_path):
    """The measured case: budgets.yaml replaced by a folder, then the xi stage: two files were
    new, the rest old, and the journal stuck every later start. Now: refused before any rename,
    one line naming the target and the fix, every file old, nothing left beside them."""
    from relbudget.core.io import OutputSetError

    _write_abc(tmp_path, "old")
    (tmp_path / "b.txt").unlink()
    (tmp_path / "b.txt").mkdir()
    (tmp_path / "b.txt" / "mine").write_text("the user's")
    before = _files(tmp_path)
    with pytest.raises(OutputSetError, match=r"b.txt: it is a folder, but the stage writes a file "
                                             r"there; move it away"):
        _write_abc(tmp_path, "new")
    assert _files(tmp_path) == before and not [p for p in tmp_path.iterdir() if p.name[0] == "."]


def test_a_rename_failing_mid_commit_puts_every_old_file_back(tmp_path, monkeypatch):
    """A rename that fails after others succeeded (a full disk, a permission): every target
    already replaced gets its old file back: all old, no temp, no journal left."""
    import errno

    import relbudget.core.io as rio

    _write_abc(tmp_path, "old")
    before = _files(tmp_path)
    real, calls = rio._rename, []

    def rename(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real(src, dst)

    monkeypatch.setattr(rio, "_rename", rename)
    with pytest.raises(rio.OutputSetError, match="No space left on device; every output of the "
                                                 "set is the old one"):
        _write_abc(tmp_path, "new")
    assert _files(tmp_path) == before and not [p for p in tmp_path.iterdir() if p.name[0] == "."]


WRITE_ABC = """
def write_abc(folder, tag):
    from relbudget.core.io import output_set, write_text
    with output_set():
        for name in ("a.txt", "b.txt", "c.txt"):
            write_text(f"{name} {tag}\\n", folder / name)
"""


def test_a_stuck_journal_says_so_in_one_line_and_is_undone_once_fixed(tmp_path):
    """A commit killed midway (journal left, b.txt moved aside), then a folder put where b.txt
    was: the set can be neither completed nor put back. Every start says so in one line with
    the fix; once the folder is gone, the next start puts every old file back."""
    from relbudget.core.io import OutputSetError

    _write_abc(tmp_path, "old")
    before = _files(tmp_path)
    kill = WRITE_ABC + KILL_AFTER_RENAMES + (
        "from pathlib import Path\nkill_after_renames(1)\nwrite_abc(Path('.'), 'new')\n")
    r = subprocess.run([sys.executable, "-c", kill], cwd=tmp_path, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert (tmp_path / ".a.txt.journal.tmp").exists() and not (tmp_path / "b.txt").exists()
    (tmp_path / "b.txt").mkdir()
    outputs = [tmp_path / n for n in ("a.txt", "b.txt", "c.txt")]
    for _ in range(2):
        with pytest.raises(OutputSetError) as err:
            remove_stale_temps(outputs)
        assert "\n" not in str(err.value)
        assert str(err.value).startswith(f"stuck output journal {tmp_path / '.a.txt.journal.tmp'}")
        assert "fix that and run the stage again" in str(err.value)
    (tmp_path / "b.txt").rmdir()  # the fix
    remove_stale_temps(outputs)
    assert _files(tmp_path) == before and not [p for p in tmp_path.iterdir() if p.name[0] == "."]


LIVE_WRITER = """
import sys, time
from pathlib import Path
from relbudget.core.io import atomic_path
with atomic_path(Path("out.json")) as tmp:
    tmp.write_text("being written")
    print(tmp, flush=True)
    time.sleep(600)
"""


def test_start_up_clean_up_leaves_a_live_writers_temp_file(tmp_path):
    """The measured case: two `python -m stages.xi` 1 s apart, the second removed the first's
    temp files ("No such file"). A temp name carries its writer's PID: kept while it lives."""
    writer = subprocess.Popen([sys.executable, "-c", LIVE_WRITER], cwd=tmp_path,
                              env=_env(tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        tmp = tmp_path / writer.stdout.readline().strip()
        assert tmp.name.startswith(f".out.json.{writer.pid}-")
        assert remove_stale_temps([tmp_path / "out.json"]) == [] and tmp.exists()
    finally:
        writer.kill()
        writer.wait()
    assert remove_stale_temps([tmp_path / "out.json"]) == [tmp]  # its writer is dead now


CONCURRENT_SETS = """
import sys
from pathlib import Path
from relbudget.core.io import output_set, write_text
tag = sys.argv[1]
for i in range(30):
    with output_set():
        for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
            write_text(f"{tag} {i}\\n", Path(name))
"""


def test_two_writers_of_one_set_at_once_end_with_one_whole_set(tmp_path):
    """Two processes replacing the same set 30 times each, at once: commits take turns (a lock
    on the folder), neither removes the other's files, and the set ends whole."""
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_SETS, tag], cwd=tmp_path,
                              env=_env(tmp_path), stderr=subprocess.PIPE, text=True)
             for tag in ("x", "y")]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    final = _files(tmp_path)
    assert len(set(final.values())) == 1 and list(final.values())[0].endswith(b" 29\n"), final


def _wait_until_started(proc: subprocess.Popen, folder: Path) -> None:
    """Until `proc` has written `started` in folder; it must not end first."""
    deadline = time.time() + 240
    while not (folder / "started").exists():
        assert proc.poll() is None and time.time() < deadline, f"{proc.args} ended first"
        time.sleep(0.2)


def test_the_flow_refuses_a_tree_a_stage_process_works_in(tmp_path):
    """A stage started by hand (or by dvc repro) holds the project lock shared; the flow asks
    for it exclusive and refuses in one line. The reverse: a stage beside the flow refuses,
    naming the flow."""
    from flows.pipeline import exclusive_root
    from relbudget.core.io import ProjectBusy, project_lock

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(merged({})))
    stage = subprocess.Popen([sys.executable, "-c", SLOW_STAGE], cwd=tmp_path, env=_env(tmp_path),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_started(stage, tmp_path)
        with pytest.raises(ProjectBusy, match=r"a stage process .* is running on"):
            with exclusive_root(tmp_path):
                pass
    finally:
        stage.kill()
        stage.wait()
    with exclusive_root(tmp_path):  # the stage is gone: the flow takes it
        with pytest.raises(ProjectBusy, match=r"the Prefect flow \(process \d+"):
            with project_lock(tmp_path, exclusive=False):
                pass


def test_the_flow_sees_a_running_dvc_repro(tmp_path):
    """DVC's own locks, as `dvc repro` holds them while a stage's command runs (its rwlock) and
    between stages (its repo lock): the flow names the dvc process."""
    from flows.pipeline import dvc_activity

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True, timeout=120)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  slow:\n    cmd: touch started && sleep 600 && touch out\n    outs:\n"
        "      - out\n")
    assert dvc_activity(tmp_path) is None
    repro = subprocess.Popen(["dvc", "repro"], cwd=tmp_path, env=env, start_new_session=True)
    try:
        _wait_until_started(repro, tmp_path)
        found = dvc_activity(tmp_path)
        assert found.endswith(f"dvc repro` (process {repro.pid}, running a stage on out)"), found
    finally:
        os.killpg(repro.pid, signal.SIGKILL)
        repro.wait()


def test_a_symlinked_metrics_folder_is_refused_before_any_write(tmp_path):
    """The measured case: the git-tracked metrics/ replaced by a symlink, and the report wrote
    headline.json wherever it pointed. Now the stage refuses in one line, before any compute."""
    outside = tmp_path / "outside"
    outside.mkdir()
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "params.yaml").write_text(yaml.safe_dump(merged({})))
    (proj / "metrics").symlink_to(outside)
    r = subprocess.run([sys.executable, "-m", "stages.report"], cwd=proj, env=_env(proj),
                       capture_output=True, text=True, timeout=300)
    assert _clean_failure(r) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"resolves to {outside}, outside the project" in r.stderr
    assert "allow_outside_paths: true" in r.stderr and list(outside.iterdir()) == []


def test_a_copied_project_does_not_write_artifacts_into_the_original(tmp_path):
    """mlflow.db records its experiment's artifact folder as an absolute path: in a copy of the
    project it is the original's mlruns/. A stage in the copy refuses, naming both."""
    import shutil

    orig = tmp_path / "orig"
    orig.mkdir()
    (orig / "params.yaml").write_text(yaml.safe_dump(merged({})))
    env = {**_env(orig)}
    del env["MLFLOW_TRACKING_URI"]  # the default store: mlflow.db in the project
    r = subprocess.run([sys.executable, "-m", "stages.check_params"], cwd=orig, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    copy = Path(shutil.copytree(orig, tmp_path / "copy"))
    artifacts = _files(orig / "mlruns")
    r = subprocess.run([sys.executable, "-m", "stages.check_params"], cwd=copy, env=env,
                       capture_output=True, text=True, timeout=300)
    assert _clean_failure(r) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"in {orig / 'mlruns'}" in r.stderr and "copied or moved" in r.stderr
    assert _files(orig / "mlruns") == artifacts


def test_a_single_write_onto_a_folder_is_one_line_and_keeps_the_folder(tmp_path):
    """Found by the round-three probe: `paths.params_ok: data` (a folder) gave IsADirectoryError's
    traceback from a write outside any set. Now the same one line as inside a set."""
    from relbudget.core.io import OutputSetError, write_text

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep").write_text("x")
    with pytest.raises(OutputSetError, match="it is a folder, but the stage writes a file there"):
        write_text("mark\n", tmp_path / "data")
    assert _files(tmp_path) == {"data/keep": b"x"} and len(list(tmp_path.iterdir())) == 1


def test_a_journal_naming_other_files_than_the_outputs_is_left_alone(tmp_path):
    """A hand-made journal (it could come with a pulled commit into the git-tracked metrics/)
    asking to undo a "set" whose target is ../params.yaml: nothing outside the stage's outputs
    and their hidden siblings is ever renamed or deleted."""
    import json

    (tmp_path / "metrics").mkdir()
    victim = tmp_path / "params.yaml"
    victim.write_text("mine\n")
    journal = tmp_path / "metrics" / ".headline.json.journal.tmp"
    journal.write_text(json.dumps({"files": [[".x.1-a.tmp", "../params.yaml", ".y.old.1", False]],
                                   "undo": True}))
    remove_stale_temps([tmp_path / "metrics" / "headline.json"])
    assert victim.read_text() == "mine\n" and journal.exists()
