"""The shared entry point of every stage: validate params first, then run inside an MLflow run."""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from relbudget.core.errors import BudgetError, DataError, DatasetLoadError, ModelError
from relbudget.core.io import (NotWritable, OutputSetError, ProjectBusy, WorkLocked, umask,
                               check_inside, check_writable, project_lock, remove_stale_temps)
from relbudget.core.schemas import TableError
from relbudget.core.params import (Params, ParamsError, dump_sections, key_sections, load_params,
                                   params_hash, parse_arm, parse_cell, parse_task_cell)
from relbudget.core.tracking import INTERRUPTED, PipelineRun, TrackingError, stage_run

log = logging.getLogger("relbudget")
# Out of room: a full disk or quota, or a file-size limit (ulimit -f; Python ignores SIGXFSZ, so
# the write fails with EFBIG instead of the process dying).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _seed(key: str) -> int:
    if not key.isdigit():
        raise ValueError(f"{key!r} is not a seed of params sweep.seeds (a non-negative integer)")
    return int(key)


def _base(key: str) -> str:
    if key != "base":
        raise ValueError(f"{key!r}: evaluate takes 'base' (the base policy's reference evaluation); "
                         "a regime is read from the sweep cells at its xi")
    return key


# The key's form, checked before the stage's MLflow run starts (a typo is a ParamsError, not a
# traceback from inside the run): sweep@xi1.0-s0, arm@controller-s0, fixed_best@0, task cells.
KEY_FORMS = {"evaluate": _base, "sweep": parse_cell, "arm": parse_arm, "fixed_best": _seed,
             "task_sweep": parse_task_cell}


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "alembic", "urllib3", "mlflow.store", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def execute(stage: str, fn: Callable[..., object], params: Params, sections: list[str],
            regime: str | None = None, pipeline: PipelineRun | None = None) -> object:
    """Run one stage execution as one MLflow run tagged with its params hash (science params
    only), nested under its pipeline execution's parent run (`pipeline`, or found from the
    environment: see relbudget.core.tracking.pipeline_run)."""
    sections = key_sections(sections, regime)  # a task's stage: its own task's entry
    dumped = dump_sections(params, sections)
    if stage in KEY_FORMS and regime is not None:
        try:
            KEY_FORMS[stage](regime)
        except ValueError as err:
            raise ParamsError(f"{stage}: {err}") from None
    if KILLED.is_set():  # the flow got SIGTERM: no new stage starts
        raise StageKilled("killed by SIGTERM before it started")
    outputs = _outputs(params, stage, regime)
    if not params.allow_outside_paths:  # a symlinked folder (metrics/ -> elsewhere): refused
        check_inside(outputs, Path.cwd())
    check_writable(outputs)  # a read-only data/ fails here, not after the compute
    remove_stale_temps(outputs)
    started = time.time()

    def committed() -> bool:  # every output renamed into place by this execution
        return bool(outputs) and all(Path(o).exists() and Path(o).stat().st_mtime >= started
                                     for o in outputs)

    with stage_run(stage, dumped, params_hash(params, sections), regime=regime, pipeline=pipeline,
                   committed=committed):
        with _killable():
            result = fn(params, regime) if regime is not None else fn(params)
    apply_umask(outputs)
    return result


def apply_umask(outputs) -> None:
    """Give every output file and folder the mode the user's umask asks for. Writers that are
    not ours (safetensors writes model weights 0600 whatever the umask) would otherwise break
    shared-filesystem setups (Dask/Ray workers under another user). Modes only, never bytes."""
    mask = umask()
    for out in map(Path, outputs):
        paths = [out] if out.is_file() else ([out, *out.rglob("*")] if out.is_dir() else [])
        for p in paths:
            want = (0o777 if p.is_dir() else 0o666) & ~mask
            if p.stat().st_mode & 0o777 != want:
                p.chmod(want)


def _outputs(params: Params, stage: str, regime: str | None) -> tuple[str, ...]:
    from relbudget.core.paths import stage_files

    try:
        return stage_files(params.paths, stage, regime).outputs
    except ValueError:  # a stage without declared files
        return ()


class StageKilled(Exception):
    """SIGTERM (timeout, Prefect, Kubernetes): raised in the stage, so it ends like an exception
    (temp files removed, MLflow run FAILED)."""

    def __init__(self, message: str = "killed by SIGTERM"):  # raised into a thread: no argument
        super().__init__(message)


def _on_sigterm(signum, frame) -> None:
    raise StageKilled(f"killed by {signal.Signals(signum).name}")


# A process that runs stages in threads (the Prefect flow's thread runner): a signal handler runs
# in the main thread only, so SIGTERM raises StageKilled into each thread running a stage instead.
KILLED = threading.Event()  # set by SIGTERM: stages not started yet are refused
_STAGE_THREADS: set[int] = set()
_STAGE_THREADS_LOCK = threading.Lock()


@contextmanager
def _killable() -> Iterator[None]:
    """The stage function runs inside this: kill_running_stages() reaches it here, inside its
    MLflow run, so the run ends FAILED and the stage's temp files are removed."""
    # A worker process's main thread (the flow's process runner) without a handler: SIGTERM
    # would end it on the spot, so it raises StageKilled there too while the stage runs.
    main_default = (threading.current_thread() is threading.main_thread()
                    and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    if main_default:
        signal.signal(signal.SIGTERM, _on_sigterm)
    with _STAGE_THREADS_LOCK:
        _STAGE_THREADS.add(threading.get_ident())
    try:
        yield
    finally:
        with _STAGE_THREADS_LOCK:
            _STAGE_THREADS.discard(threading.get_ident())
        if main_default:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def kill_running_stages() -> int:
    """Refuse new stages and raise StageKilled in every thread of this process that is running a
    stage (other than the caller's): at its next Python instruction, so a stage inside a long C
    call (one generation step, one optimizer step) stops when it returns. The count reached."""
    import ctypes

    KILLED.set()
    me = threading.get_ident()
    with _STAGE_THREADS_LOCK:  # held: a thread cannot leave _killable (its MLflow run) meanwhile
        targets = [t for t in _STAGE_THREADS if t != me]
        for ident in targets:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                                       ctypes.py_object(StageKilled))
        _STAGE_THREADS.difference_update(targets)  # one exception each, never a stale entry
        mine = me in _STAGE_THREADS
    if mine:  # the signal's own thread runs a stage (a forked worker process): as _on_sigterm
        raise StageKilled()
    return len(targets)


def _end_progress_bars() -> None:
    """Close tqdm bars still open (a SIGTERM mid-sampling), so the error starts its own line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(stage: str, fn: Callable[..., object], sections: list[str], takes_regime: bool = False) -> None:
    setup_logging()
    ap = argparse.ArgumentParser(prog=f"python -m stages.{stage}")
    if takes_regime:
        ap.add_argument("regime")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _on_sigterm)
    folders = "its output folders"  # named in a disk-full error once params say where
    try:
        params = load_params(args.params)  # validated before any compute
        # paths.* are relative to the folder a stage runs in: from data/ with ../params.yaml
        # (or from another folder) the outputs would land in data/data/ or outside the project
        here = Path.cwd().resolve()
        if not Path(args.params).resolve().is_relative_to(here):
            raise ParamsError(f"{args.params} lies outside {here}: run python -m stages.{stage} "
                              "from the project folder (its paths are relative to the folder "
                              "you run from)")
        folders = ", ".join(sorted({str(Path(o).parent) for o in
                                    _outputs(params, stage, getattr(args, "regime", None))}))
        # shared: other stage processes may run beside it, never the flow on these outputs
        with project_lock(".", exclusive=False):
            execute(stage, fn, params, sections, getattr(args, "regime", None))
    except StageKilled as err:
        _end_progress_bars()
        print(f"error: {err}; temporary files removed, MLflow run FAILED", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt as err:
        _end_progress_bars()
        outcome = getattr(err, "outcome", "before it started: nothing was written")
        print(f"error: {stage} {INTERRUPTED} {outcome}", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except (ParamsError, TrackingError, BudgetError, ModelError, DataError, DatasetLoadError,
            TableError, WorkLocked, NotWritable, ProjectBusy, OutputSetError,
            FileNotFoundError) as err:
        # user errors (params, a damaged or missing input file): one message, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # after NotWritable and FileNotFoundError, also OSErrors
        if err.errno not in DISK_FULL:
            raise
        print(f"error: {stage} cannot write {err.filename or folders}: {err.strerror}; free "
              "disk space (or raise the file-size limit, ulimit -f) and rerun; the previous "
              "outputs are kept", file=sys.stderr)
        sys.exit(2)
