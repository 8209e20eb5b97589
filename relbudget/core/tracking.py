"""MLflow helpers: one run per stage execution, in a local SQLite store by default.

Each run is tagged with stage, regime, params hash and git commit so the MLflow UI compares
regimes side by side. A stage that raises ends its run FAILED with the error logged as text.

The stage runs of one pipeline execution are children of one parent run (tag `stage` =
`pipeline`), and every one of them, the parent included, carries the tag `pipeline_run`. DVC runs
each stage as a process of its own, so the shared id comes from the environment
(`pipeline_run`): `RELBUDGET_PIPELINE_RUN` when set; else, under DVC (which sets `DVC_STAGE` for
every stage command), the DVC process that runs the stages: `dvc-repro-STAMP`, or
`dvc-exp-NAME-STAMP` under `dvc exp run` (DVC sets `DVC_EXP_NAME`), where STAMP hashes the host,
pid and start time of the nearest `dvc` ancestor process. So one `dvc repro` (or one experiment)
is one pipeline run, and a rerun where only some stages execute is a new one. The Prefect flow
passes its own (`prefect-FLOW_RUN_ID`). A stage run by hand (`python -m stages.xi`) has none: a
top-level run without the tag. The parent is found by its tag, or created by the first stage.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import socket
import subprocess
import threading
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

# Offline by design: MLflow's usage telemetry would only time out here. Set before the import,
# which is when mlflow starts its telemetry client.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
import mlflow  # noqa: E402

log = logging.getLogger(__name__)
EXPERIMENT = "relbudget"
PIPELINE_ENV = "RELBUDGET_PIPELINE_RUN"
PIPELINE_STAGE = "pipeline"  # the `stage` tag of a parent run


def metric_name(name: str) -> str:
    """MLflow allows only [A-Za-z0-9_-. /] in metric names; pass@k becomes pass_at_k."""
    return name.replace("@", "_at_")


def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
    """Log the finite numeric entries of a dict (None, nan and inf are skipped, not errors)."""
    clean = {metric_name(k): float(v) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    if clean:
        mlflow.log_metrics(clean, step=step)


def eval_headline(at: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline metrics of an evaluation (`at`: horizon name -> metrics), under the same keys
    on every evaluate run, the base policy's included, so the MLflow runs table sorts by them:
    accuracy, E[T] and first-answer accuracy at the common H_eval; accuracy at the regime's own H
    where there is one (`acc_own_H`)."""
    h = at.get("H_eval", {})
    out = {"acc_H_eval": h.get("accuracy"), "E_T_H_eval": h.get("E_T"),
           "first_answer_acc": h.get("first_answer_accuracy")}
    if "H_own" in at:
        out["acc_own_H"] = at["H_own"].get("accuracy")
    return out


def log_dataset(df: Any, path: str | Path, context: str) -> None:
    """Record a prompt table as an MLflow dataset input of the active run (name `prompts-STEM`,
    source its path; MLflow adds a digest and the schema), so a run shows what it read."""
    import warnings

    import mlflow.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's source, schema and pandas-deprecation hints
        ds = mlflow.data.from_pandas(df, source=str(Path(path).resolve()),
                                     name=f"prompts-{Path(path).stem}")
        mlflow.log_input(ds, context=context)


def log_policy(model: Any, tokenizer: Any, folder: str | Path) -> None:
    """A trained policy as an MLflow model (transformers flavour, artifact `policy`,
    text-generation), loadable with mlflow.transformers or mlflow.pyfunc. Its name_or_path is set
    to the absolute folder it was saved to, never a Hub repo id, so MLflow looks nothing up on the
    Hub (no network). A failure here is logged and tagged, not raised: the stage's outputs are
    written already."""
    try:
        import mlflow.transformers
        import torch
        import transformers

        model.config._name_or_path = str(Path(folder).resolve())
        mlflow.transformers.log_model(
            {"model": model, "tokenizer": tokenizer}, name="policy", task="text-generation",
            pip_requirements=[f"transformers=={transformers.__version__}",
                              f"torch=={torch.__version__.split('+')[0]}"])
    except Exception as err:
        log.warning("could not log the policy as an MLflow model: %s: %s", type(err).__name__, err)
        mlflow.set_tag("policy_model_error", f"{type(err).__name__}: {err}"[:5000])


class TrackingError(RuntimeError):
    pass


def repo_root() -> Path:
    """The project root: the nearest folder up from cwd that holds params.yaml."""
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "params.yaml").exists():
            return d
    return here


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast on a tracking server that does not answer, instead of hanging in retries."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        import urllib.request

        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout)  # noqa: S310
        except Exception as err:  # any network failure means the same thing to the user
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({err}); "
                                "unset MLFLOW_TRACKING_URI to use the local SQLite store") from None
    elif parsed.scheme == "sqlite":
        folder = Path(parsed.path).parent if parsed.path else Path.cwd()
        if not folder.exists():
            raise TrackingError(f"MLflow SQLite store folder does not exist: {folder}")
        check_sqlite_store(uri)


def check_sqlite_store(uri: str) -> None:
    """A damaged SQLite store (`file is not a database`, a truncated or overwritten mlflow.db) is
    one line naming the file and the fix, not SQLAlchemy's traceback. An absent or empty file is
    fine (MLflow creates the store); a store locked by a writer, or left with a hot journal by a
    killed one, is left to MLflow."""
    import sqlite3

    # sqlite:///relative.db, sqlite:////absolute.db (SQLAlchemy's convention), maybe ?query
    db = uri[len("sqlite:///"):].split("?", 1)[0] if uri.startswith("sqlite:///") else ""
    if not db or db == ":memory:" or not Path(db).is_file() or Path(db).stat().st_size == 0:
        return
    try:
        con = sqlite3.connect(f"{Path(db).resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError:
        # locked or busy (a writer), or a hot journal a killed writer left, which a read-only
        # connection may not roll back ("attempt to write a readonly database"): not damage;
        # MLflow's own read-write connection deals with each
        return
    except sqlite3.DatabaseError as err:  # file is not a database, disk image is malformed
        bad = err
    else:
        return
    import shlex

    raise TrackingError(f"the MLflow store {db} is not a usable SQLite database ({bad}); move it "
                        f"aside (mv {shlex.quote(db)} {shlex.quote(db + '.broken')}) to start a "
                        "new store, or set MLFLOW_TRACKING_URI to another one")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=repo_root())
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


@dataclass(frozen=True)
class PipelineRun:
    """One pipeline execution: its id (the `pipeline_run` tag), the parent run's name, and tags
    that go on the parent and on every stage run (orchestrator, DVC experiment, flow run)."""

    id: str
    name: str
    tags: dict[str, str] = field(default_factory=dict)


def _is_dvc(cmdline: list[str]) -> bool:
    """`dvc ...`, `python .../bin/dvc ...` or `python -m dvc ...`."""
    names = [Path(a).name for a in cmdline[:3]]
    return bool(names) and (names[0] in ("dvc", "dvc.exe") or names[1:2] == ["dvc"]
                            or cmdline[1:3] == ["-m", "dvc"])


def _process_stamp() -> str:
    """A short id of the nearest `dvc` ancestor process (host, pid, start time); of the parent
    process when none is found."""
    import psutil

    try:
        me = psutil.Process()
        proc = next((p for p in me.parents() if _is_dvc(p.cmdline())), None) or me.parent()
        blob = f"{socket.gethostname()}:{proc.pid}:{proc.create_time():.3f}"
    except (psutil.Error, AttributeError):  # no parent, or no access to it
        blob = f"{socket.gethostname()}:{os.getppid()}"
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _clean_id(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:@-]", "-", value.strip())[:200]


def pipeline_run() -> PipelineRun | None:
    """The pipeline execution this process belongs to, from the environment (module docstring);
    None for a stage run outside any pipeline."""
    env = os.environ
    if env.get(PIPELINE_ENV, "").strip():
        rid = _clean_id(env[PIPELINE_ENV])
        return PipelineRun(rid, f"pipeline {rid}", {"orchestrator": "external"})
    if not env.get("DVC_STAGE"):
        return None
    stamp = _process_stamp()
    exp = env.get("DVC_EXP_NAME")
    if exp:
        return PipelineRun(_clean_id(f"dvc-exp-{exp}-{stamp}"), f"dvc exp {exp}",
                           {"orchestrator": "dvc", "dvc_exp_name": exp,
                            "dvc_exp_baseline_rev": env.get("DVC_EXP_BASELINE_REV", "")})
    return PipelineRun(f"dvc-repro-{stamp}", f"dvc repro {stamp}", {"orchestrator": "dvc"})


_parent_lock = threading.Lock()  # the flow's thread runner: one parent per pipeline run


def parent_run_id(client: Any, experiment_id: str, pipe: PipelineRun) -> str:
    """The parent run of a pipeline execution: found by its tags, or created. Two processes that
    create one at the same moment converge: the oldest is kept, the other deleted."""
    query = f"tags.pipeline_run = '{pipe.id}' and tags.stage = '{PIPELINE_STAGE}'"

    def oldest() -> str | None:
        found = client.search_runs([experiment_id], query, max_results=100)
        return min(((r.info.start_time, r.info.run_id) for r in found), default=(0, None))[1]

    with _parent_lock:
        first = oldest()
        if first is not None:
            return first
        tags = {**pipe.tags, "stage": PIPELINE_STAGE, "regime": "", "pipeline_run": pipe.id,
                "git_commit": git_commit()}
        mine = client.create_run(experiment_id, run_name=pipe.name, tags=tags).info.run_id
        first = oldest() or mine
        if first != mine:
            client.delete_run(mine)
        return first


def _mark_parent(client: Any, parent_id: str, status: str) -> None:
    """RUNNING while a stage runs, FINISHED after it; FAILED, once a stage failed, stays."""
    try:
        if client.get_run(parent_id).info.status == "FAILED" and status != "FAILED":
            return
        if status == "RUNNING":
            client.update_run(parent_id, status="RUNNING")
        else:
            client.set_terminated(parent_id, status)
    except Exception as err:  # the parent is bookkeeping: never fail a stage over it
        log.warning("could not update the pipeline's parent run %s: %s", parent_id, err)


def _end_orphans(client: Any, experiment_id: str, pipe: PipelineRun, stage: str,
                 regime: str | None) -> None:
    """End KILLED the runs of this stage execution in this pipeline execution still RUNNING: one
    stage execution runs once at a time in a pipeline, so such a run lost its process (a worker
    killed mid-stage, a preempted node) and would show RUNNING forever."""
    query = (f"tags.pipeline_run = '{pipe.id}' and tags.stage = '{stage}' and "
             f"tags.regime = '{regime or ''}' and attributes.status = 'RUNNING'")
    try:
        for run in client.search_runs([experiment_id], query, max_results=100):
            client.set_tag(run.info.run_id, "error", "its process was lost; the stage ran again")
            client.set_terminated(run.info.run_id, "KILLED")
    except Exception as err:  # bookkeeping: never fail a stage over it
        log.warning("could not end the lost runs of %s: %s", run_label(stage, regime), err)


def run_label(stage: str, key: str | None = None) -> str:
    """`stage@KEY` (or the stage alone): the one name of a stage execution, as MLflow runs and
    the Prefect flow's tasks and cache manifests spell it."""
    return f"{stage}@{key}" if key else stage


@contextmanager
def stage_run(stage: str, params: dict[str, Any], params_hash: str,
              regime: str | None = None, pipeline: PipelineRun | None = None) -> Iterator[Any]:
    """Open an MLflow run for one stage execution; end it FAILED (error logged) on exception.
    It is nested under the parent run of `pipeline` (default: `pipeline_run()`), if any."""
    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(EXPERIMENT)
    name = run_label(stage, regime)
    tags = {"stage": stage, "regime": regime or "", "params_hash": params_hash,
            "git_commit": git_commit()}
    pipe = pipeline or pipeline_run()
    client, parent = mlflow.MlflowClient(uri), None
    if pipe is not None:
        parent = parent_run_id(client, experiment.experiment_id, pipe)
        tags.update({**pipe.tags, "pipeline_run": pipe.id, "mlflow.parentRunId": parent})
        _end_orphans(client, experiment.experiment_id, pipe, stage, regime)
        _mark_parent(client, parent, "RUNNING")
    # The parent comes from its tag only, never from a run active in this process (nested=False).
    run = mlflow.start_run(run_name=name, tags=tags)
    try:
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
        yield run
    except BaseException as err:
        mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:5000])
        mlflow.log_text("".join(traceback.format_exception(err)), "error.txt")
        failures = getattr(err, "failures", None)  # a TableError carries every schema failure
        if failures is not None and hasattr(failures, "to_csv"):
            mlflow.log_text(failures.to_csv(index=False), "schema_failures.csv")
        mlflow.end_run(status="FAILED")
        if parent:
            _mark_parent(client, parent, "FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")
        if parent:
            _mark_parent(client, parent, "FINISHED")
