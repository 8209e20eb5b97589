"""The shared entry point of every stage: validate params first, then run inside an MLflow run."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

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
    with stage_run(stage, dumped, params_hash(params, sections), regime=regime, pipeline=pipeline):
        return fn(params, regime) if regime is not None else fn(params)


def main(stage: str, fn: Callable[..., object], sections: list[str], takes_regime: bool = False) -> None:
    setup_logging()
    ap = argparse.ArgumentParser(prog=f"python -m stages.{stage}")
    if takes_regime:
        ap.add_argument("regime")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    try:
        params = load_params(args.params)  # validated before any compute
        execute(stage, fn, params, sections, getattr(args, "regime", None))
    except (ParamsError, TrackingError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
