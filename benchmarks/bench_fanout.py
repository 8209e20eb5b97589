"""Benchmark: the part of the flow after xi (sweep cells, arms, fixed_best, report) on
2 Dask worker processes vs the thread runner, same machine, one run each (figures only).

    python benchmarks/bench_fanout.py [--params params.yaml] [--out-root runs/bench-fanout]

1. The thread runner runs the whole flow (torch stages one at a time, as `dvc repro` would).
2. The outputs of every stage after xi are deleted; a Dask LocalCluster of 2 worker processes
   (1 thread each; the stages' own `threads` params keep torch at 1 thread) runs the flow again:
   the measurement stages are Cached, everything after xi executes.
The time of each is the wall time of its stages after xi, from their MLflow runs (first start to
last end), so neither the measurement stages nor the cluster's start count. Prints both, the
ratio, and whether every output after xi is byte-identical. Pass a small params file (e.g. the
tests' tiny params) for a smoke run; the default study takes about 25 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

MEASUREMENT = ("prepare", "base_policy", "sample_t", "xi")


def after_xi_outputs(params_file: str, out_root: str) -> list[str]:
    """The output paths of every stage execution after xi, as the flow writes them."""
    from flows import pipeline as fp
    from flows.cache import stage_io
    from relbudget.core.params import load_params

    params = fp.rooted(load_params(params_file), out_root)
    return [o for s in fp.flow_plan(params) if s.module not in MEASUREMENT
            for o in stage_io(s.module, s.key, params)[1]]


def run(runner, params_file: str, out_root: str) -> tuple[float, dict[str, str]]:
    """One flow run; the wall time of its stages after xi (s) and their states."""
    import mlflow

    from flows import pipeline as fp

    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 120}):  # busy CPUs
        state = fp.pipeline.with_options(task_runner=runner)(
            params_file=params_file, out_root=out_root, retries=0, return_state=True)
    if not state.is_completed():
        raise SystemExit(f"error: flow run {state.name}: {state.message}")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("relbudget")
    runs = client.search_runs([exp.experiment_id], f"tags.`prefect.flow_run_id` = "
                              f"'{state.state_details.flow_run_id}' and tags.stage != 'pipeline'")
    late = [r for r in runs if r.data.tags["stage"] not in MEASUREMENT]
    seconds = (max(r.info.end_time for r in late) - min(r.info.start_time for r in late)) / 1000
    return seconds, state.result()["states"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out-root", default="runs/bench-fanout")
    args = ap.parse_args()
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    from flows import pipeline as fp
    from flows.cache import tree_digest

    shutil.rmtree(args.out_root, ignore_errors=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    outs = after_xi_outputs(args.params, args.out_root)
    t_threads, _ = run(fp.make_task_runner("threads"), args.params, args.out_root)
    reference = {o: tree_digest(o) for o in outs}
    for o in map(Path, outs):
        shutil.rmtree(o) if o.is_dir() else o.unlink()
    t0 = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        print(f"dask cluster up in {time.perf_counter() - t0:.1f} s")
        t_dask, states = run(DaskTaskRunner(address=cluster.scheduler_address), args.params,
                             args.out_root)
    executed = sorted(lb for lb, s in states.items() if s == "Completed")
    differ = [o for o in outs if tree_digest(o) != reference[o]]
    print(json.dumps({"params": args.params, "stages_after_xi_executed": executed,
                      "threads_s": round(t_threads, 1), "dask_2_workers_s": round(t_dask, 1),
                      "speedup": round(t_threads / t_dask, 2),
                      "outputs_identical": not differ, "differ": differ}, indent=2))


if __name__ == "__main__":
    main()
