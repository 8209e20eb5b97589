"""MLflow tracking: fail fast on an unreachable store, FAILED on exceptions, concurrent writers."""

from __future__ import annotations

import subprocess
import sys
import time

import mlflow
import pytest

from relbudget.tracking import TrackingError, stage_run


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
from relbudget.tracking import stage_run
import mlflow
with stage_run(sys.argv[1], {}, "h"):
    for step in range(30):
        mlflow.log_metric("m", step, step=step)
"""


def test_two_stages_at_once_share_the_sqlite_store(mlflow_uri, tmp_path):
    # Create the schema once first, as the first stage of a pipeline does.
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
