"""The pipeline of dvc.yaml as a Prefect 3 flow: same stages, same DAG, cached, scheduled.

The DAG is dvc.yaml's, read through DVC's own loader (flows/dag.py) at each flow run, against the
flow's params: one task per stage DVC expands from it, named as DVC names it (`evaluate_base`,
`sweep@0.25-0`, `arm@controller-0`, `fixed_best@0`), each waiting for the stages
whose outs its deps read. With the stages of dvc.yaml today:

    check_params -> every stage                        params.yaml checked as a whole
    prepare -> base_policy -> sample_t -> xi
    xi -> evaluate_base                                the base policy's reference
    xi, evaluate_base -> sweep@XI-SEED                 one per cell of the xi x seed grid
                                                       (a named regime: the cells at its xi)
    xi, sample_t, evaluate_base -> arm@ARM-SEED        adaptive budgets, per arm and seed
    every sweep cell -> fixed_best@SEED                the sweep's best xi again, per seed
    xi, evaluate_base, sweep@*, arm@*, fixed_best@* -> report

A stage added to dvc.yaml (its cmd `python -m stages.NAME [KEY]`) is a task of the flow with no
edit here; a new stage module also needs its files in relbudget.core.paths and a timeout below.

Every task calls the stage's own `run` through `stages._cli.execute`, the function behind
`python -m stages.NAME` (and so behind `dvc repro`): one MLflow run per stage execution, ended
FAILED on an exception. No stage logic and no edge of the DAG live here, only the orchestration.

Where it writes: every path of `params.paths` is re-rooted under the flow parameter `out_root`
(default `runs/prefect`, relative to the working directory), so `runs/prefect/data/rollouts/...`
instead of `data/rollouts/...`. The DVC view (`data/`, `dvc.lock`) is never touched and
`dvc status` stays truthful. Prefect's result records live in `OUT_ROOT/.prefect-results`, the
output manifests in `OUT_ROOT/.flow`. `out_root="."` writes `data/` itself (not recommended:
`dvc status` then reports those outs as modified until `dvc repro`/`dvc commit`).

Cache key of a task: flows/cache.py (inputs' content, the stage's params hash, the code it
imports); results persist across flow runs and are checked against the outputs on disk.

Run:  python -m flows.pipeline                  (see --help; `serve` schedules it with a cron)
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from prefect import allow_failure, flow, get_run_logger, task
from prefect.context import FlowRunContext
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flows.cache import (MISSING, base_key, label_of, manifest, stage_cache_key, stage_io,
                         tree_digest)
from flows.dag import DVC_YAML, DagError, Step, plan
from relbudget.core.io import to_json_safe, write_json
from relbudget.core.params import Params, ParamsError, Paths, format_errors, load_params
from relbudget.core.paths import STAGES

SAMPLING = frozenset({"sample_t", "evaluate", "task_t", "task_xi"})  # retried with exponential backoff
# What one execution of each stage module needs from a worker, by the module of its dvc.yaml cmd:
# the GPUs it claims when the flow runs with `gpu` (Dask worker resource "GPU").
# The stages that load a policy want one each; the others run on any CPU.
GPUS = {"check_params": 0, "prepare": 0, "base_policy": 1, "sample_t": 1, "xi": 0, "evaluate": 1, "sweep": 1, "arm": 1, "fixed_best": 1, "report": 0,
        "task_t": 1, "task_xi": 1, "task_sweep": 1, "tasks_report": 0}
# The same stages draw from torch's process-global RNG (and set its global thread count): two of
# them running at once in threads of one process would interleave their random streams.
TORCH_STAGES = frozenset(m for m, n in GPUS.items() if n)
DEFAULT_OUT_ROOT = "runs/prefect"
RESULTS_DIR = ".prefect-results"
STATE_DIR = ".flow"
RUNNERS = ("threads", "processes", "dask")
REPORT_ARTIFACT = "relbudget-report"  # Prefect artifact keys: lowercase letters, digits, dashes
SWEEP_ARTIFACT = "relbudget-sweep"


# --------------------------------------------------------------------------- flow parameters


class FlowConfigError(ValueError):
    """Flow parameters that do not validate; the message names every bad field."""


class Timeouts(BaseModel):
    """Seconds each task may run (one attempt) before Prefect fails it as TimedOut, per stage
    module (every stage of dvc.yaml runs one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    check_params: float = Field(300, gt=0)
    prepare: float = Field(1800, gt=0)
    base_policy: float = Field(4 * 3600, gt=0)
    sample_t: float = Field(4 * 3600, gt=0)
    xi: float = Field(1800, gt=0)
    evaluate: float = Field(4 * 3600, gt=0)
    sweep: float = Field(12 * 3600, gt=0)
    arm: float = Field(12 * 3600, gt=0)
    fixed_best: float = Field(12 * 3600, gt=0)
    report: float = Field(1800, gt=0)
    task_t: float = Field(4 * 3600, gt=0)
    task_xi: float = Field(4 * 3600, gt=0)
    task_sweep: float = Field(12 * 3600, gt=0)
    tasks_report: float = Field(1800, gt=0)


class FlowConfig(BaseModel):
    """Every flow parameter, validated before any stage runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    params_file: str = Field("params.yaml", description="the params file, as for dvc repro")
    out_root: str = Field(DEFAULT_OUT_ROOT, description="every output path is re-rooted here")
    timeouts: Timeouts = Timeouts()
    retries: int = Field(2, ge=0, le=10, description="retries of the sampling tasks")
    retry_delay_s: float = Field(30.0, ge=0, le=3600,
                                 description="first retry delay; doubles on each retry")
    reproducible: bool = Field(True, description="thread runner: never run two torch stages at "
                               "once, so outputs match dvc repro bit for bit")
    gpu: bool = Field(False, description="each torch stage claims GPUS[stage] from the runner "
                      "(Dask worker resource GPU); for workers with GPUs")

    @field_validator("params_file", "out_root")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


def flow_config(**values: Any) -> FlowConfig:
    """FlowConfig from flow parameters (None means default), or FlowConfigError."""
    try:
        return FlowConfig.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as err:
        raise FlowConfigError(format_errors(err, "invalid flow parameters:", FlowConfig)) from None


def rooted(params: Params, out_root: str) -> Params:
    """The same params with every relative output path moved under out_root."""
    root = Path(out_root)
    moved = {}
    for name, value in params.paths.model_dump().items():
        p = Path(value)
        if p.is_absolute():
            raise FlowConfigError(f"paths.{name} is absolute ({value}); the flow re-roots relative "
                                  f"paths under out_root, so make it relative")
        moved[name] = value if root == Path(".") else (root / p).as_posix()
    return params.model_copy(update={"paths": params.paths.model_copy(update=moved)})


def flow_plan(params: Params, dvc_yaml: Path = DVC_YAML) -> list[Step]:
    """dvc.yaml's stage executions for these params (flows/dag.py), refused before any task
    starts if one runs a stage module the flow cannot run (no files declared, no timeout)."""
    steps = plan(params, dvc_yaml)
    for s in steps:
        if s.module not in STAGES or s.module not in Timeouts.model_fields or s.module not in GPUS:
            raise DagError(f"dvc.yaml stage {s.label} runs stages.{s.module}, which the flow does "
                           "not know: declare its files in relbudget.core.paths, its timeout "
                           "in flows/pipeline.py (Timeouts) and its GPUs (GPUS)")
    return steps


# --------------------------------------------------------------------------- the task


class StageFailed(RuntimeError):
    """A stage execution that raised; names the stage. `transient` decides retries."""

    def __init__(self, label: str, detail: str, transient: bool = True):
        super().__init__(f"stage {label} failed: {detail}")
        self.label, self.detail, self.transient = label, detail, transient

    def __reduce__(self):
        return type(self), (self.label, self.detail, self.transient)


def is_transient(err: BaseException) -> bool:
    """Worth a retry: the environment failed (I/O, network, memory, a runtime/engine error, a
    timeout), not the inputs. Invalid params or tables, missing files, bugs are not retried."""
    deterministic = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                     NotImplementedError, RecursionError)
    return (isinstance(err, (OSError, TimeoutError, MemoryError, RuntimeError))
            and not isinstance(err, deterministic))


def retry_if_transient(task_, task_run, state) -> bool:
    try:
        state.result()
    except StageFailed as err:
        return err.transient
    except Exception as err:  # raised outside the stage: Prefect's timeout, a crash
        return is_transient(err)
    return True


def _tag_mlflow_run(label: str) -> None:
    import socket

    import mlflow
    from prefect.runtime import task_run

    # `worker`: the process that ran the stage, to find it after a lost node or a slow cell
    mlflow.set_tags({"prefect.task_run_id": str(task_run.id), "prefect.task": label,
                     "worker": f"{socket.gethostname()}:{os.getpid()}"})


def flow_pipeline_run():
    """This flow run as one pipeline execution: the parent MLflow run of its stage runs, and the
    `pipeline_run` tag (`prefect-FLOW_RUN_ID`) on all of them."""
    from prefect.runtime import flow_run

    from relbudget.core.tracking import PipelineRun

    rid = str(flow_run.id)
    return PipelineRun(f"prefect-{rid}", f"flow {flow_run.name}",
                       {"orchestrator": "prefect", "prefect.flow_run_id": rid,
                        "prefect.flow_run_name": str(flow_run.name)})


@task(persist_result=True, cache_key_fn=stage_cache_key)
def run_stage(stage: str, regime: str | None, params: Params, state_dir: str,
              label: str | None = None) -> dict:
    """One stage execution through stages._cli.execute (its MLflow run ends FAILED on error):
    module `stages.<stage>` on its key `regime`; `label` is its dvc.yaml name (errors, logs)."""
    from prefect.transactions import get_transaction

    from stages._cli import execute

    label = label or label_of(stage, regime)
    logger = get_run_logger()
    try:
        module = importlib.import_module(f"stages.{stage}")

        def fn(p: Params, *regime_arg: str) -> object:
            _tag_mlflow_run(label)
            return module.run(p, *regime_arg)

        result = execute(stage, fn, params, list(module.SECTIONS), regime,
                         pipeline=flow_pipeline_run())
        _, outs = stage_io(stage, regime, params)
        digests = {o: tree_digest(o) for o in outs}
        missing = [o for o, d in digests.items() if d == MISSING]
        if missing:
            raise FileNotFoundError(f"the stage finished without writing {', '.join(missing)}")
    except Exception as err:
        raise StageFailed(label, f"{type(err).__name__}: {err}",
                          transient=is_transient(err)) from err
    txn = get_transaction()
    key = txn.key if txn is not None and txn.key else base_key(stage, regime, params)
    # the manifest is named as flows/cache.py reads it back: by module and key
    write_json({"key": key, "outputs": digests}, manifest(state_dir, label_of(stage, regime)))
    logger.info("%s wrote %s", label, ", ".join(outs))
    return {"stage": label, "outputs": digests, "result": to_json_safe(result)}


# --------------------------------------------------------------------------- task runners


def make_task_runner(kind: str | None = None, max_workers: int | None = None) -> TaskRunner:
    """threads (default) | processes | dask; from RELBUDGET_TASK_RUNNER when kind is None. No
    Ray: its raylet did not start on the 2 shared cores the runners are tested on (docs/scale_out.md),
    and an untested runner stays out."""
    kind = kind or os.environ.get("RELBUDGET_TASK_RUNNER") or "threads"
    env_workers = os.environ.get("RELBUDGET_MAX_WORKERS")
    if not max_workers and env_workers:
        if not env_workers.isdigit() or int(env_workers) < 1:
            raise ValueError(f"RELBUDGET_MAX_WORKERS must be a positive integer, got {env_workers!r}")
        max_workers = int(env_workers)
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=max_workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise RuntimeError("task runner 'dask' needs prefect-dask: pip install -e '.[dask]'") from None
        address = os.environ.get("RELBUDGET_DASK_ADDRESS")
        if address:
            return DaskTaskRunner(address=address)
        # One thread per worker process: torch's RNG is per process, so stages never share one.
        return DaskTaskRunner(cluster_kwargs={"n_workers": max_workers or 2, "threads_per_worker": 1,
                                              "processes": True})
    raise ValueError(f"unknown task runner {kind!r} (RELBUDGET_TASK_RUNNER or --task-runner); "
                     f"choose one of {', '.join(RUNNERS)}")


def _import_time_runner() -> TaskRunner:
    """The flow's default runner, from the environment; a bad variable must not break the import
    (`python -m flows.pipeline --help` included): main() reports it in one line instead."""
    try:
        return make_task_runner()
    except (ValueError, RuntimeError):
        return ThreadPoolTaskRunner()


def check_out_root(out_root: str, params: Params) -> None:
    """--out-root is a folder (or not there yet) inside the project, before Prefect starts: a file
    there failed in the project lock, and a folder outside got the flow's lock, results and
    .gitignore (found by a hostile probe)."""
    out, here = Path(out_root), Path.cwd().resolve()
    if out.exists() and not out.is_dir():
        raise FlowConfigError(f"--out-root {out_root} is a file; give a folder (it is created)")
    if not params.allow_outside_paths and not out.resolve().is_relative_to(here):
        raise FlowConfigError(f"--out-root {out_root} lies outside the project {here}; give a "
                              "folder inside it, or set allow_outside_paths: true in the params")


@contextmanager
def claiming(runner: TaskRunner, gpus: int) -> Iterator[None]:
    """Tasks submitted inside claim `gpus` GPUs through Dask's own mechanism, a task annotation:
    such a task runs only on a worker started with `--resources GPU=1`, one at a time per worker
    (which sees only its GPU through CUDA_VISIBLE_DEVICES, docs/scale_out.md). The thread and
    process runners live on one machine and place nothing."""
    if gpus and type(runner).__name__ == "DaskTaskRunner":  # prefect-dask stays optional
        import dask

        with dask.annotate(resources={"GPU": gpus}):
            yield
    else:
        yield


# --------------------------------------------------------------------------- the flow


class PipelineFailed(RuntimeError):
    pass


class _DropThreadTimeoutWarning(logging.Filter):
    """Prefect warns on every threaded task with a timeout; the README documents the semantics."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout of %s seconds configured for this task")


_THREAD_TIMEOUT_FILTER = _DropThreadTimeoutWarning()
logging.getLogger("prefect.task_runs").addFilter(_THREAD_TIMEOUT_FILTER)


class _NoTracebackWhenKilled(logging.Filter):
    """After a SIGTERM, Prefect's failure records of the killed stages and of the flow keep their
    message (it names the stage and `killed by SIGTERM`) but not the traceback of the flow's
    own code; each stage's traceback is in its MLflow run (error.txt)."""

    def filter(self, record: logging.LogRecord) -> bool:
        cli = sys.modules.get("stages._cli")
        exc = record.exc_info[0] if record.exc_info else None
        if (cli is not None and cli.KILLED.is_set() and isinstance(exc, type)
                and issubclass(exc, (StageFailed, PipelineFailed))):
            record.exc_info = record.exc_text = None
        return True


_KILLED_FILTER = _NoTracebackWhenKilled()
for _name in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_name).addFilter(_KILLED_FILTER)


def _ship_stage_logs() -> Callable[[], None]:
    """Send the stages' own log lines (logger 'relbudget') to the Prefect UI during the flow."""
    from prefect.logging.handlers import APILogHandler

    lg = logging.getLogger("relbudget")
    if any(isinstance(h, APILogHandler) for h in lg.handlers):
        return lambda: None
    handler, level = APILogHandler(), lg.level
    lg.addHandler(handler)
    if lg.level == logging.NOTSET or lg.level > logging.INFO:
        lg.setLevel(logging.INFO)

    def undo() -> None:
        lg.removeHandler(handler)
        lg.setLevel(level)

    return undo


def _kill_stages_on_sigterm() -> Callable[[], None]:
    """While the flow body runs: SIGTERM ends each running stage like an exception (StageKilled
    raised in its thread: MLflow run FAILED `killed by SIGTERM`, temp files removed) and refuses
    the stages not started, so the flow ends Failed and `main` exits 143 with one line. Without
    this, Prefect's handler (TerminationSignal in the main thread) leaves the stage threads
    running: measured, the stage ran on to its end and the process had not exited 280 s later.
    A runner's cancellation (Prefect's control intent set) still goes on to Prefect's handler,
    after the stages are killed. Returns the undo; a no-op outside the main thread."""
    import signal
    import threading

    from stages._cli import KILLED, kill_running_stages

    KILLED.clear()  # a new flow run in this process (tests, notebooks) starts unkilled
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    prev = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame) -> None:
        kill_running_stages()
        if callable(prev) and _runner_intent():
            prev(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    return lambda: signal.signal(signal.SIGTERM, prev)


def _runner_intent() -> bool:
    try:
        from prefect._internal import control_listener

        return control_listener.get_intent() is not None
    except Exception:  # a private API: without it, a SIGTERM is a plain kill
        return False


def publish_report(paths: Paths) -> list[str]:
    """The report as artifacts of this flow run (a cached report too): report.md as Markdown and
    the per-xi sweep table of metrics.json. Returns the keys published."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    published = []
    md = Path(paths.report_md)
    if md.exists():
        create_markdown_artifact(markdown=md.read_text(), key=REPORT_ARTIFACT,
                                 description=f"relbudget report ({md}); plots: MLflow, {paths.report}")
        published.append(REPORT_ARTIFACT)
    metrics = Path(paths.report_metrics)
    rows = json.loads(metrics.read_text()).get("sweep_by_xi") if metrics.exists() else None
    if isinstance(rows, list) and rows:
        create_table_artifact(table=to_json_safe(rows), key=SWEEP_ARTIFACT,
                              description="learning efficiency per swept xi (mean over seeds)")
        published.append(SWEEP_ARTIFACT)
    return published


def _failure_text(state) -> str:
    if state.name == "TimedOut":
        return f"timed out ({state.message})"
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as err:  # the result itself could not be read
        exc = err
    return str(exc) if isinstance(exc, BaseException) else (state.message or state.name)


@flow(name="relbudget-pipeline", task_runner=_import_time_runner(), validate_parameters=True,
      description="The stages of dvc.yaml (prepare, base_policy, sample_t, xi, evaluate_base, "
                  "sweep@XI-SEED (the regimes are cells at their xi), arm@ARM-SEED, "
                  "fixed_best@SEED, report) with dvc.yaml's DAG, cached per task")
def pipeline(params_file: str = "params.yaml", out_root: str = DEFAULT_OUT_ROOT,
             timeouts: dict[str, float] | None = None, retries: int = 2,
             retry_delay_s: float = 30.0, reproducible: bool = True, gpu: bool = False) -> dict:
    """The dvc.yaml pipeline. Parameters: see FlowConfig; timeouts maps stage module -> seconds."""
    logger = get_run_logger()
    cfg = flow_config(params_file=params_file, out_root=out_root, timeouts=timeouts,
                      retries=retries, retry_delay_s=retry_delay_s, reproducible=reproducible,
                      gpu=gpu)
    params = rooted(load_params(cfg.params_file), cfg.out_root)  # validated before any compute
    steps = flow_plan(params)  # dvc.yaml's stages and edges, for these params
    root = Path(cfg.out_root)
    results_dir, state_dir = root / RESULTS_DIR, root / STATE_DIR
    for d in (results_dir, state_dir):
        d.mkdir(parents=True, exist_ok=True)
    if root != Path(".") and not (root / ".gitignore").exists():
        (root / ".gitignore").write_text("# written by flows/pipeline.py: flow outputs, never committed\n*\n")
    storage = results_dir.resolve()  # a Path: Prefect makes it a LocalFileSystem, nothing saved

    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None)
    serial = cfg.reproducible and isinstance(runner, ThreadPoolTaskRunner)
    logger.info("%d stages of dvc.yaml, writing under %s (params %s); torch stages %s", len(steps),
                root.resolve(), cfg.params_file,
                "one at a time (reproducible)" if serial else "concurrent")

    futures: dict[str, Any] = {}
    last_torch: list[Any] = []

    def submit(step: Step) -> None:
        # options by stage module (its retries and timeout), edges by dvc.yaml
        sampling = step.module in SAMPLING
        t = run_stage.with_options(
            name=step.module, task_run_name=step.label, result_storage=storage,
            timeout_seconds=getattr(cfg.timeouts, step.module),
            retries=cfg.retries if sampling else 0,
            retry_delay_seconds=exponential_backoff(cfg.retry_delay_s) if sampling else 0,
            retry_jitter_factor=0.2 if sampling and cfg.retry_delay_s else None,
            retry_condition_fn=retry_if_transient if sampling else None)
        wait = [futures[u] for u in step.upstream]  # plan order: submitted already
        torch_serial = serial and step.module in TORCH_STAGES
        if torch_serial:
            wait += [allow_failure(f) for f in last_torch]
        with claiming(runner, GPUS[step.module] if cfg.gpu else 0):
            futures[step.label] = t.submit(step.module, step.key, params, str(state_dir),
                                           step.label, wait_for=wait)
        if torch_serial:
            last_torch[:] = [futures[step.label]]

    undo_logs, undo_sigterm = _ship_stage_logs(), _kill_stages_on_sigterm()
    try:
        with exclusive_root(root):  # no stage process (dvc repro's, or by hand) on these outputs
            for step in steps:
                submit(step)
            for f in futures.values():
                f.wait()
    finally:
        undo_sigterm()
        undo_logs()

    states = {label: f.state for label, f in futures.items()}
    failed = {lb: _failure_text(s) for lb, s in states.items() if s.is_failed() or s.is_crashed()}
    skipped = [lb for lb, s in states.items() if not s.is_final()]
    summary = {"out_root": str(root), "states": {lb: s.name for lb, s in states.items()}}
    logger.info("task states: %s", summary["states"])
    if "report" in states and states["report"].is_completed():
        summary["artifacts"] = publish_report(params.paths)
    if failed:
        why = "; ".join(msg if msg.startswith(f"stage {lb} ") else f"stage {lb} failed: {msg}"
                        for lb, msg in failed.items())
        raise PipelineFailed(why + (f" (not run: {', '.join(skipped)})" if skipped else ""))
    return summary


# --------------------------------------------------------------------------- one pipeline at a time


def dvc_activity(root: Path) -> str | None:
    """Who runs DVC on `root` now, if it is a DVC project, else None. `dvc repro` holds its repo
    lock (.dvc/tmp/lock) between stages and releases it while a stage's command runs; the
    stage's outputs are then in its rwlock (.dvc/tmp/rwlock) under the dvc process's PID. Read
    while holding the repo lock, the rwlock cannot change, so one of the two always shows it."""
    import zc.lockfile

    tmp = root / ".dvc" / "tmp"
    if not tmp.is_dir():
        return None
    try:
        lock = zc.lockfile.LockFile(str(tmp / "lock"))
    except zc.lockfile.LockError:
        pid = (tmp / "lock").read_text(errors="replace").strip() or "?"
        return f"a dvc command (process {pid})"
    try:
        import psutil

        try:
            infos = json.loads((tmp / "rwlock").read_text())
        except (OSError, ValueError):
            infos = {}
        for mode in ("write", "read"):
            for path, info in (infos.get(mode) or {}).items():
                for one in (info if isinstance(info, list) else [info]):
                    if isinstance(one, dict) and psutil.pid_exists(int(one.get("pid", 0))):
                        where = os.path.relpath(path, root) if os.path.isabs(path) else path
                        return (f"`{one.get('cmd', 'dvc')}` (process {one['pid']}, running a "
                                f"stage on {where})")
    finally:
        lock.close()
    return None


@contextmanager
def exclusive_root(root: Path) -> Iterator[None]:
    """The project lock on `root`, exclusive for the flow's run (relbudget.core.io.project_lock),
    refused (ProjectBusy, naming the other) when a stage process holds it or DVC runs on `root`."""
    from relbudget.core.io import ProjectBusy, project_lock

    holder = f"the Prefect flow (process {os.getpid()}: python -m flows.pipeline --out-root {root})"
    with project_lock(root, exclusive=True, holder=holder):
        dvc = dvc_activity(root.resolve())
        if dvc is not None:
            raise ProjectBusy(f"{dvc} is running on {root.resolve()}; the flow would write the "
                              "same outputs: wait for it to end, or give the flow another --out-root")
        yield


# --------------------------------------------------------------------------- command line


def _timeouts_arg(items: list[str]) -> dict[str, float] | None:
    out: dict[str, float] = {}
    for item in items:
        stage, sep, value = item.partition("=")
        if not sep:
            raise FlowConfigError(f"--timeout wants STAGE=SECONDS, got {item!r}")
        try:
            out[stage] = float(value)
        except ValueError:
            raise FlowConfigError(f"--timeout {item!r}: {value!r} is not a number") from None
    return out or None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n")[0])
    ap.add_argument("command", nargs="?", choices=["run", "serve"], default="run",
                    help="run the flow once (default), or serve it as a scheduled deployment")
    ap.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    ap.add_argument("--out-root", default=DEFAULT_OUT_ROOT, help=f"default {DEFAULT_OUT_ROOT}")
    ap.add_argument("--timeout", action="append", default=[], metavar="STAGE=SECONDS")
    ap.add_argument("--retries", type=int, default=2, help="retries of sampling tasks")
    ap.add_argument("--retry-delay", type=float, default=30.0, help="first retry delay (s)")
    ap.add_argument("--no-reproducible", action="store_true",
                    help="threads: let torch stages run at once (outputs may then differ from dvc repro)")
    ap.add_argument("--gpu", action="store_true",
                    help="dask: each torch stage claims one GPU (workers declare GPU=1 each)")
    ap.add_argument("--task-runner", choices=RUNNERS, default=None,
                    help="default: $RELBUDGET_TASK_RUNNER or threads")
    ap.add_argument("--max-workers", type=int, default=None)
    ap.add_argument("--name", default="scheduled", help="serve: deployment name")
    ap.add_argument("--cron", default="0 3 * * *", help="serve: cron schedule (default daily 03:00)")
    args = ap.parse_args(argv)
    from relbudget.core.io import ProjectBusy
    from relbudget.core.tracking import TrackingError, check_reachable, tracking_uri
    from stages._cli import KILLED

    try:
        kwargs = dict(params_file=args.params, out_root=args.out_root,
                      timeouts=_timeouts_arg(args.timeout), retries=args.retries,
                      retry_delay_s=args.retry_delay, reproducible=not args.no_reproducible,
                      gpu=args.gpu)
        # fail fast, before Prefect starts: bad params, flow parameters, dvc.yaml, runner
        params = load_params(args.params)
        check_out_root(flow_config(**kwargs).out_root, params)
        flow_plan(rooted(params, flow_config(**kwargs).out_root))
        try:
            runner = make_task_runner(args.task_runner, args.max_workers)
        except (ValueError, RuntimeError) as err:  # RELBUDGET_* variables, a missing extra
            raise FlowConfigError(str(err)) from None
        check_reachable(tracking_uri())  # a damaged mlflow.db: one line here, not in every task
        with exclusive_root(Path(flow_config(**kwargs).out_root)):
            pass  # dvc repro or a stage on these outputs: refused here, before Prefect starts
    except (FlowConfigError, ParamsError, DagError, TrackingError, ProjectBusy) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    flow_ = pipeline.with_options(task_runner=runner)
    if args.command == "serve":
        flow_.serve(name=args.name, cron=args.cron, parameters=kwargs)
        return 0
    from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                                  temporary_settings)

    # Without PREFECT_API_URL, Prefect starts a temporary server; on a busy machine its default
    # 20 s start timeout is short. A running `prefect server start` is faster (README).
    slow_start = {} if PREFECT_API_URL.value() else {PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 120}
    with temporary_settings(updates=slow_start):
        state = flow_(**kwargs, return_state=True)
    if KILLED.is_set():
        print(f"error: flow run killed by SIGTERM: {_failure_text(state)}", file=sys.stderr)
        return 128 + 15
    if not state.is_completed():
        print(f"error: flow run {state.name}: {_failure_text(state)}", file=sys.stderr)
        return 1
    summary = state.result()
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    # Run the importable module's flow, not this __main__ copy: the process and dask runners
    # then pickle the task by reference instead of by value.
    from flows.pipeline import main as _main

    sys.exit(_main())
