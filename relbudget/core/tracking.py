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
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

# Offline by design: MLflow's usage telemetry would only time out here. Set before the import,
# which is when mlflow starts its telemetry client.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# A tracking server that stops answering mid-run: MLflow's defaults (120 s per request, 7 retries
# with exponential back-off) would leave a stage silent for many minutes per call. 15 s and 2
# retries bound one call to under a minute. An explicit setting in the environment wins.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
import mlflow  # noqa: E402

log = logging.getLogger(__name__)
EXPERIMENT = "relbudget"
PIPELINE_ENV = "RELBUDGET_PIPELINE_RUN"
PIPELINE_STAGE = "pipeline"  # the `stage` tag of a parent run
INTERRUPTED = "interrupted by Ctrl-C (SIGINT)"


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
    accuracy, E[T] and first-answer accuracy at the common H_eval; accuracy at a cell's own H
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


# What a stage asks a tracking server first, and so what the check asks too: /health alone can
# answer while the API behind it hangs (a proxy in front, a server whose store is locked).
API_PROBE = f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}"


# MLflow's tracking stores: a server, SQLite (the default), other SQL databases, Databricks, and
# the file store (file://, which MLflow 3 accepts only with MLFLOW_ALLOW_FILE_STORE=true)
STORE_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "file")


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail fast on a tracking server whose /health or API does not answer within `timeout`
    seconds each, instead of hanging in MLflow's retries."""
    parsed = urlparse(uri)
    if parsed.scheme not in STORE_SCHEMES:  # a typo or a bare path: not a permissions problem
        raise TrackingError(f"MLFLOW_TRACKING_URI={uri!r} is not a store relbudget can record "
                            "runs in: give sqlite:///PATH/mlflow.db (a bare path needs the "
                            "sqlite:/// prefix) or http://HOST:PORT of an MLflow server, or "
                            "unset it to use the project's mlflow.db")
    if parsed.scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        for path, what in (("/health", "is unreachable"),
                           (API_PROBE, f"answers /health but its API does not (timeout {timeout:.0f} s)")):
            try:
                urllib.request.urlopen(f"{uri.rstrip('/')}{path}", timeout=timeout)  # noqa: S310
                continue
            except urllib.error.HTTPError as err:
                if path == API_PROBE and err.code < 500:  # the API answered (404: no experiment)
                    continue
                cause = err
            except Exception as err:  # any network failure means the same thing to the user
                cause = err
            raise TrackingError(f"MLflow tracking server {uri} {what} ({cause}); unset "
                                "MLFLOW_TRACKING_URI to use the local SQLite store")
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
        check_sqlite_writable(db)
        return
    import shlex

    raise TrackingError(f"the MLflow store {db} is not a usable SQLite database ({bad}); move it "
                        f"aside (mv {shlex.quote(db)} {shlex.quote(db + '.broken')}) to start a "
                        "new store, or set MLFLOW_TRACKING_URI to another one")


def check_artifact_location(location: str, uri: str) -> None:
    """A local SQLite store records where its experiment keeps artifacts as an absolute path when
    the experiment is created; in a copied or moved project that path is still the original
    clone's mlruns/, and every stage would write its artifacts (budgets, plots, models) there.
    Refused (TrackingError, one line) when that folder lies outside both this project (the
    working directory) and the store's own folder."""
    parsed = urlparse(location or "")
    if parsed.scheme not in ("", "file") or not uri.startswith("sqlite:///"):
        return  # a tracking server's artifact store, or a remote one: not this project's files
    artifacts = Path(parsed.path).resolve()
    store = Path(uri[len("sqlite:///"):].split("?", 1)[0]).resolve().parent
    if any(artifacts.is_relative_to(root) for root in (Path.cwd().resolve(), store)):
        return
    raise TrackingError(f"the MLflow store {store / 'mlflow.db'} keeps the artifacts of experiment "
                        f"{EXPERIMENT!r} in {artifacts}, outside this project: it was copied or "
                        "moved from another clone, whose mlruns/ every stage would write into; "
                        "move mlflow.db and mlruns/ aside to start a new store here, or set "
                        "MLFLOW_TRACKING_URI")


def check_sqlite_writable(db: str) -> None:
    """A store that cannot be written (chmod a-w, chattr +i, a read-only mount) is one line, not
    MLflow's logged SQLAlchemy traceback when the run starts. The probe creates a table inside
    a transaction and rolls it back: the file is never changed."""
    import sqlite3

    con = sqlite3.connect(db, timeout=10, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("CREATE TABLE relbudget_write_probe (x)")
        con.execute("ROLLBACK")
    except sqlite3.OperationalError as err:
        if getattr(err, "sqlite_errorname", "") == "SQLITE_READONLY":
            raise TrackingError(f"the MLflow store {db} is read-only ({err}); make it writable "
                                "(chmod u+w, chattr -i, or a writable mount), or set "
                                "MLFLOW_TRACKING_URI to another store") from None
        # locked or busy: left to MLflow's own connection, as above
    finally:
        con.close()


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
    """RUNNING while a stage runs, FINISHED after it; FAILED (or KILLED), once a stage failed
    (or was interrupted), stays."""
    try:
        if client.get_run(parent_id).info.status in ("FAILED", "KILLED") \
                and status not in ("FAILED", "KILLED"):
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


def root_cause(err: BaseException) -> str:
    """The first line of the innermost error under `err` (SQLAlchemy's `orig`, or the cause):
    `attempt to write a readonly database`, not SQLAlchemy's advice on autoflush."""
    while isinstance(nxt := getattr(err, "orig", None) or err.__cause__, BaseException):
        err = nxt
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def _open_run(uri: str, name: str, tags: dict[str, str], pipe: PipelineRun | None):
    """Start a stage's run (and find or make its pipeline's parent): (client, parent id, run)."""
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(EXPERIMENT)
    check_artifact_location(experiment.artifact_location, uri)
    client, parent = mlflow.MlflowClient(uri), None
    if pipe is not None:
        parent = parent_run_id(client, experiment.experiment_id, pipe)
        tags = {**tags, **pipe.tags, "pipeline_run": pipe.id, "mlflow.parentRunId": parent}
        _end_orphans(client, experiment.experiment_id, pipe, tags["stage"], tags["regime"] or None)
        _mark_parent(client, parent, "RUNNING")
    # The parent comes from its tag only, never from a run active in this process (nested=False).
    return client, parent, mlflow.start_run(run_name=name, tags=tags)


@contextmanager
def stage_run(stage: str, params: dict[str, Any], params_hash: str,
              regime: str | None = None, pipeline: PipelineRun | None = None,
              committed: Callable[[], bool] | None = None) -> Iterator[Any]:
    """Open an MLflow run for one stage execution; end it FAILED (error logged) on exception,
    KILLED on Ctrl-C, or FINISHED with a note on a Ctrl-C once `committed()` says every output
    is written. It is nested under the parent run of `pipeline` (default: `pipeline_run()`)."""
    uri = tracking_uri()
    check_reachable(uri)
    tags = {"stage": stage, "regime": regime or "", "params_hash": params_hash,
            "git_commit": git_commit()}
    pipe = pipeline or pipeline_run()
    try:
        client, parent, run = _open_run(uri, run_label(stage, regime), tags, pipe)
    except Exception as err:  # nothing computed yet: a store that cannot take a run is one line
        raise TrackingError(f"the MLflow store {uri} cannot record a run ({root_cause(err)}); "
                            "make it writable (chmod u+w, chattr -i) with free space, or set "
                            "MLFLOW_TRACKING_URI to another store") from None

    def end(status: str) -> None:
        mlflow.end_run(status=status)
        if parent:
            _mark_parent(client, parent, status)

    try:
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
        yield run
    except KeyboardInterrupt as err:
        # Ctrl-C: KILLED, with the reason, unless the outputs were all written already (then
        # the work is done and a rerun would skip it: FINISHED, with a note). The outcome rides
        # on the exception, for the one line the entry point prints.
        if committed is not None and committed():
            err.outcome = "after its outputs were written: they are complete, MLflow run FINISHED"
            mlflow.set_tag("note", f"{INTERRUPTED} {err.outcome}")
            end("FINISHED")
        else:
            err.outcome = ("before its outputs were written: the previous outputs are kept, "
                           "MLflow run KILLED")
            mlflow.set_tag("error", f"KeyboardInterrupt: {INTERRUPTED} {err.outcome}")
            end("KILLED")
        raise
    except BaseException as err:
        mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:5000])
        mlflow.log_text("".join(traceback.format_exception(err)), "error.txt")
        failures = getattr(err, "failures", None)  # a TableError carries every schema failure
        if failures is not None and hasattr(failures, "to_csv"):
            mlflow.log_text(failures.to_csv(index=False), "schema_failures.csv")
        end("FAILED")
        raise
    else:
        end("FINISHED")
