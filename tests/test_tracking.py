"""MLflow tracking: fail fast on an unreachable store, FAILED on exceptions, concurrent writers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from relbudget.core.tracking import TrackingError, stage_run


def test_unreachable_server_fails_fast(monkeypatch):
    # Port 9 on loopback: nothing listens, the connection is refused at once.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    t0 = time.time()
    with pytest.raises(TrackingError, match="unreachable"):
        with stage_run("xi", {}, "h"):
            pass
    assert time.time() - t0 < 10


def test_missing_sqlite_folder_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/nope/m.db")
    with pytest.raises(TrackingError, match="does not exist"):
        with stage_run("xi", {}, "h"):
            pass


def test_exception_ends_run_failed_with_error(mlflow_uri):
    with pytest.raises(RuntimeError):
        with stage_run("train", {"train": {"lr": 1}}, "abc", regime="balanced"):
            raise RuntimeError("boom")
    mlflow.set_tracking_uri(mlflow_uri)
    run = mlflow.search_runs(experiment_names=["relbudget"]).iloc[0]
    assert run["status"] == "FAILED"
    assert run["tags.error"] == "RuntimeError: boom"
    assert run["tags.stage"] == "train" and run["tags.regime"] == "balanced"
    assert run["tags.params_hash"] == "abc" and run["params.train.lr"] == "1"


WRITER = """
import sys
from relbudget.core.tracking import stage_run
import mlflow
with stage_run(sys.argv[1], {}, "h"):
    for step in range(30):
        mlflow.log_metric("m", step, step=step)
"""


def test_two_stages_at_once_share_the_sqlite_store(mlflow_uri, tmp_path, monkeypatch):
    # Create the schema once first, as the first stage of a pipeline does, from the same project
    # folder as the writers (the experiment's artifact folder is made there).
    monkeypatch.chdir(tmp_path)
    with stage_run("init", {}, "h"):
        pass
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, name], cwd=tmp_path,
                              stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    mlflow.set_tracking_uri(mlflow_uri)
    runs = mlflow.search_runs(experiment_names=["relbudget"])
    assert sorted(runs["tags.stage"]) == ["a", "b", "init"]
    assert set(runs["status"]) == {"FINISHED"}
    client = mlflow.MlflowClient()
    for run_id in runs.loc[runs["tags.stage"] != "init", "run_id"]:
        assert len(client.get_metric_history(run_id, "m")) == 30


# ---------------------------------------------------------------- pipeline runs: parent + tag


def _runs(uri: str):
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("relbudget")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_stages_of_one_pipeline_run_share_a_parent_and_tag(mlflow_uri, monkeypatch):
    monkeypatch.setenv("RELBUDGET_PIPELINE_RUN", "nightly-42")
    with stage_run("prepare", {}, "h1"):
        pass
    with stage_run("xi", {}, "h2"):
        pass
    monkeypatch.setenv("RELBUDGET_PIPELINE_RUN", "nightly-43")
    with pytest.raises(RuntimeError):
        with stage_run("xi", {}, "h2"):
            raise RuntimeError("boom")

    runs = _runs(mlflow_uri)
    parents = [r for r in runs if r.data.tags["stage"] == "pipeline"]
    assert [p.data.tags["pipeline_run"] for p in parents] == ["nightly-42", "nightly-43"]
    assert [p.info.run_name for p in parents] == ["pipeline nightly-42", "pipeline nightly-43"]
    assert [p.info.status for p in parents] == ["FINISHED", "FAILED"]
    children = [r for r in runs if r.data.tags["stage"] != "pipeline"]
    by_parent = {p.info.run_id: p.data.tags["pipeline_run"] for p in parents}
    assert [(c.data.tags["stage"], by_parent[c.data.tags["mlflow.parentRunId"]],
             c.data.tags["pipeline_run"]) for c in children] == [
        ("prepare", "nightly-42", "nightly-42"), ("xi", "nightly-42", "nightly-42"),
        ("xi", "nightly-43", "nightly-43")]


def test_a_stage_outside_any_pipeline_has_no_parent(mlflow_uri):
    with stage_run("xi", {}, "h"):
        pass
    (run,) = _runs(mlflow_uri)
    assert "pipeline_run" not in run.data.tags and "mlflow.parentRunId" not in run.data.tags


STAGE = """
import sys
from relbudget.core.tracking import stage_run
with stage_run(sys.argv[1], {}, "h"):
    pass
"""

FAKE_DVC = """#!{python}
# stands in for `dvc repro` / `dvc exp run`: a shell runs each stage command, a process of its own
import os, subprocess, sys
env = {{**os.environ, "DVC_STAGE": "x", **dict(a.split("=", 1) for a in sys.argv[1:])}}
for stage in ("prepare", "xi"):
    subprocess.run(["/bin/sh", "-c", "{python} stage.py " + stage], env=env, check=True)
"""


def test_one_dvc_invocation_is_one_pipeline_run(mlflow_uri, tmp_path):
    (tmp_path / "stage.py").write_text(STAGE)
    dvc = tmp_path / "bin" / "dvc"
    dvc.parent.mkdir()
    dvc.write_text(FAKE_DVC.format(python=sys.executable))
    dvc.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for extra in ([], [], ["DVC_EXP_NAME=lucky-fox", "DVC_EXP_BASELINE_REV=abc123"]):
        subprocess.run([str(dvc), *extra], cwd=tmp_path, env=env, check=True, timeout=300)

    runs = _runs(mlflow_uri)
    parents = [r for r in runs if r.data.tags["stage"] == "pipeline"]
    ids = [p.data.tags["pipeline_run"] for p in parents]
    assert len(parents) == 3 and len(set(ids)) == 3  # each invocation is a pipeline run of its own
    assert ids[0].startswith("dvc-repro-") and ids[1].startswith("dvc-repro-")
    assert ids[2].startswith("dvc-exp-lucky-fox-")
    assert parents[2].data.tags["dvc_exp_name"] == "lucky-fox"
    assert all(p.info.status == "FINISHED" for p in parents)
    for p in parents:
        kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
        assert [k.data.tags["stage"] for k in kids] == ["prepare", "xi"]
        assert {k.data.tags["pipeline_run"] for k in kids} == {p.data.tags["pipeline_run"]}


def test_eval_headline_has_the_same_keys_for_base_and_regimes():
    from relbudget.core.tracking import eval_headline

    m = {"accuracy": 0.5, "E_T": 12.0, "first_answer_accuracy": 0.4}
    base = eval_headline({"H_low": m, "H_eval": m})
    regime = eval_headline({"H_own": m, "H_eval": m})
    assert base == {"acc_H_eval": 0.5, "E_T_H_eval": 12.0, "first_answer_acc": 0.4}
    assert regime == {**base, "acc_own_H": 0.5}


def test_prepare_records_its_prompt_tables_as_mlflow_datasets(project):
    from relbudget.core.params import load_params
    from stages import prepare
    from stages._cli import execute

    execute("prepare", prepare.run, load_params("params.yaml"), prepare.SECTIONS)
    (run,) = _runs(f"sqlite:///{project / 'mlflow.db'}")
    inputs = {(i.dataset.name, i.tags[0].value) for i in run.inputs.dataset_inputs}
    assert inputs == {("prompts-train", "train"), ("prompts-eval", "eval")}
