"""The flow fanned out over worker processes: flows/pipeline.py on a distributed.LocalCluster
through prefect-dask, on tiny params (the multi-node setup of docs/scale_out.md in miniature).

One project folder is shared by the module, and one real `mlflow server` on 127.0.0.1 (as on a
cluster, where a SQLite file cannot be shared): the thread runner's outputs (runs/threads) are
the reference; the Dask runs write runs/dask. The cluster has 2 worker processes of 2 threads, each
declaring one (fake) "GPU": the flow runs with gpu=True, so each torch stage claims it and a
worker runs one torch stage at a time, though it has 2 threads.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from flows import pipeline as fp
from relbudget.core.params import merged, params_with
from tests.helpers import flow_params, free_port, stop_group

VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
RUN = dict(retries=0, retry_delay_s=0)
CELLS4 = {"regimes": {"a": 0.5},  # a regime is a xi of the grid
          "sweep": {"xi": [0.5, 2.0], "seeds": [0, 1]}}  # 4 training cells, none run before


def write_params(folder: Path, name: str, **override) -> str:
    # no adaptive arm: the runners place every torch stage alike (sweep cells, fixed_best)
    raw = flow_params(**{"arms": {"arms": []}, **override})
    params_with(raw)
    (folder / name).write_text(yaml.safe_dump(merged(raw), sort_keys=False))
    return name


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    folder = tmp_path_factory.mktemp("fanout")
    write_params(folder, "params.yaml")
    server, proc = mlflow_server(folder)
    mp = pytest.MonkeyPatch()
    # before the cluster starts: its worker processes inherit the folder and the tracking URI
    mp.chdir(folder)
    mp.setenv("MLFLOW_TRACKING_URI", server)
    for var in ("RELBUDGET_PIPELINE_RUN", "DVC_STAGE", "DVC_EXP_NAME"):
        mp.delenv(var, raising=False)
    try:
        with prefect_test_harness(server_startup_timeout=120):
            yield folder
    finally:
        mp.undo()
        stop_group(proc)


def mlflow_server(folder: Path) -> tuple[str, subprocess.Popen]:
    """`mlflow server` on 127.0.0.1 (its own store and artifacts in folder), once healthy."""
    import urllib.request

    store, port = f"sqlite:///{folder}/server.db", free_port()
    mlflow.MlflowClient(store).search_experiments()  # the tables, before the server reads them
    log = (folder / "mlflow-server.log").open("w")
    proc = subprocess.Popen([str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", store,
                             "--artifacts-destination", str(folder / "mlartifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)  # noqa: S310
            return url, proc
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                stop_group(proc)
                raise RuntimeError((folder / "mlflow-server.log").read_text()[-3000:]) from None
            time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(project):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, resources={"GPU": 1},
                      dashboard_address=None, host="127.0.0.1") as c:
        yield c


def run_flow(runner, **kwargs):
    state = fp.pipeline.with_options(task_runner=runner)(**{**RUN, **kwargs}, return_state=True)
    assert state.is_completed(), state.message
    return state, state.result()


def on_dask(cluster, **kwargs):
    from prefect_dask import DaskTaskRunner

    return run_flow(DaskTaskRunner(address=cluster.scheduler_address), out_root="runs/dask",
                    gpu=True, **kwargs)


@pytest.fixture(scope="module")
def threads_run(project):
    return run_flow(fp.make_task_runner("threads"), out_root="runs/threads")


@pytest.fixture(scope="module")
def dask_run(project, cluster, threads_run):
    return on_dask(cluster)


def flow_runs(state) -> list:
    """The MLflow runs of one flow run, the parent included."""
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("relbudget")
    query = f"tags.`prefect.flow_run_id` = '{state.state_details.flow_run_id}'"
    return client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time ASC"])


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- 1. Dask, tested


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_dask_runs_every_stage_once_and_writes_the_threads_runners_bytes(project, threads_run,
                                                                         dask_run):
    state, summary = dask_run
    assert set(summary["states"].values()) == {"Completed"}, summary["states"]
    runs = flow_runs(state)
    (parent,) = [r for r in runs if r.data.tags["stage"] == "pipeline"]
    stages = [r for r in runs if r is not parent]
    # every stage of the plan ran once, as one FINISHED MLflow run under the one parent run
    assert sorted(r.data.tags["prefect.task"] for r in stages) == sorted(summary["states"])
    assert {r.info.status for r in stages} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in stages} == {parent.info.run_id}
    threads, dask = files(project / "runs/threads/data"), files(project / "runs/dask/data")
    assert sorted(dask) == sorted(threads)
    assert [f for f in threads if threads[f] != dask[f]] == []  # byte for byte


# ---------------------------------------------------------------------------- 2. resources


def intervals_overlap(runs) -> list[tuple[str, str]]:
    """Pairs of runs of one worker process whose [start, end] intervals overlap."""
    by_worker: dict[str, list] = {}
    for r in runs:
        by_worker.setdefault(r.data.tags["worker"], []).append(r)
    pairs = []
    for rs in by_worker.values():
        rs.sort(key=lambda r: r.info.start_time)
        pairs += [(a.info.run_name, b.info.run_name) for a, b in zip(rs, rs[1:])
                  if b.info.start_time < a.info.end_time]
    return pairs


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_gpu_stages_never_share_a_workers_gpu(project, cluster):
    # 4 training cells on 2 workers of 2 threads and one "GPU" each: without the claim, a worker
    # would run two cells at once in its two threads
    state, summary = on_dask(cluster, params_file=write_params(project, "cells4.yaml", **CELLS4))
    cells = {lb for lb in summary["states"] if lb.startswith("sweep@")}
    assert len(cells) == 4 and {summary["states"][c] for c in cells} == {"Completed"}
    executed = [r for r in flow_runs(state) if r.data.tags["stage"] in fp.TORCH_STAGES]
    assert {r.data.tags["prefect.task"] for r in executed} >= cells
    assert {r.info.status for r in executed} == {"FINISHED"}
    assert len({r.data.tags["worker"] for r in executed}) == 2  # both GPUs were used
    assert intervals_overlap(executed) == []


# ---------------------------------------------------------------------------- 3. a lost worker


def kill_worker_mid_cell(cell: str, started_after_ms: int, killed: list) -> None:
    """SIGKILL the worker process running `cell` (its MLflow run's `worker` tag), once its run
    has started: a preempted node, as abrupt as it gets."""
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("relbudget")
    query = (f"tags.`prefect.task` = '{cell}' and attributes.status = 'RUNNING' "
             f"and attributes.start_time > {started_after_ms}")
    deadline = time.time() + 300
    while time.time() < deadline and not killed:
        for run in client.search_runs([exp.experiment_id], query):
            _, pid = run.data.tags["worker"].rsplit(":", 1)
            time.sleep(1)  # mid-cell: training has begun
            os.kill(int(pid), signal.SIGKILL)
            killed.append(run.info.run_id)
            return
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_worker_lost_mid_cell_is_redone_elsewhere(project, cluster, dask_run):
    cell, out = "sweep@1.0-0", project / "runs/dask/data/sweep/xi1.0-s0"
    uninterrupted = files(out)
    shutil.rmtree(out)  # the cell's outputs gone: the flow executes it again
    killed: list[str] = []
    killer = threading.Thread(target=kill_worker_mid_cell,
                              args=(cell, int(time.time() * 1000), killed))
    killer.start()
    try:
        state, summary = on_dask(cluster)
    finally:
        killed.append("stop")  # the killer gives up if the cell never started
        killer.join()
    assert killed[0] != "stop", "the cell never ran"
    assert summary["states"][cell] == "Completed"
    runs = [r for r in flow_runs(state) if r.data.tags.get("prefect.task") == cell]
    first, *rest = sorted(runs, key=lambda r: r.info.start_time)
    assert first.info.run_id == killed[0]
    assert first.info.status == "KILLED"  # not RUNNING forever
    assert [r.info.status for r in rest] == ["FINISHED"]
    assert rest[0].data.tags["worker"] != first.data.tags["worker"]  # another worker process
    # the redone cell wrote exactly what the uninterrupted run wrote
    assert files(out) == uninterrupted
