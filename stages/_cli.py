"""The shared entry point of every stage: validate params first, then run inside an MLflow run."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Callable

from relbudget.budgets import BudgetError
from relbudget.io import WorkLocked, remove_stale_temps
from relbudget.schemas import TableError
from relbudget.params import Params, ParamsError, dump_sections, load_params, params_hash
from relbudget.tracking import PipelineRun, TrackingError, stage_run

log = logging.getLogger("relbudget")
REGIME_STAGES = ("train", "evaluate")  # their argument names a regime of params.yaml


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "alembic", "urllib3", "mlflow.store", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def execute(stage: str, fn: Callable[..., object], params: Params, sections: list[str],
            regime: str | None = None, pipeline: PipelineRun | None = None) -> object:
    """Run one stage execution as one MLflow run tagged with its params hash (science params
    only), nested under its pipeline execution's parent run (`pipeline`, or found from the
    environment: see relbudget.tracking.pipeline_run)."""
    dumped = dump_sections(params, sections)
    if stage in REGIME_STAGES and regime not in (None, "base") and regime not in params.regimes:
        raise ParamsError(f"unknown regime {regime!r}; params.yaml regimes: {', '.join(params.regimes)}")
    remove_stale_temps(_outputs(params, stage, regime))
    with stage_run(stage, dumped, params_hash(params, sections), regime=regime, pipeline=pipeline):
        return fn(params, regime) if regime is not None else fn(params)


def _outputs(params: Params, stage: str, regime: str | None) -> tuple[str, ...]:
    from relbudget.paths import stage_files

    try:
        return stage_files(params.paths, stage, regime).outputs
    except ValueError:  # a stage without declared files
        return ()


class StageKilled(Exception):
    """SIGTERM (timeout, Prefect, Kubernetes): raised in the stage, so it ends like an exception
    (temp files removed, MLflow run FAILED)."""


def _on_sigterm(signum, frame) -> None:
    raise StageKilled(f"killed by {signal.Signals(signum).name}")


def main(stage: str, fn: Callable[..., object], sections: list[str], takes_regime: bool = False) -> None:
    setup_logging()
    ap = argparse.ArgumentParser(prog=f"python -m stages.{stage}")
    if takes_regime:
        ap.add_argument("regime")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        params = load_params(args.params)  # validated before any compute
        execute(stage, fn, params, sections, getattr(args, "regime", None))
    except StageKilled as err:
        print(f"error: {err}; temporary files removed, MLflow run FAILED", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except (ParamsError, TrackingError, BudgetError, TableError, WorkLocked, FileNotFoundError) as err:
        # user errors (params, a damaged or missing input file): one message, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
