"""The shared entry point of every stage: validate params first, then run inside an MLflow run."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from relbudget.params import Params, ParamsError, load_params, section_hash
from relbudget.tracking import TrackingError, stage_run

log = logging.getLogger("relbudget")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "alembic", "urllib3", "mlflow.store", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def section_dump(params: Params, sections: list[str]) -> dict:
    return {s: getattr(params, s).model_dump(mode="json") if hasattr(getattr(params, s), "model_dump")
            else getattr(params, s) for s in sections}


def execute(stage: str, fn: Callable[..., object], params: Params, sections: list[str],
            regime: str | None = None) -> object:
    """Run one stage execution as one MLflow run tagged with its params hash."""
    dumped = section_dump(params, sections)
    if regime is not None and regime != "base" and regime not in params.regimes:
        raise ParamsError(f"unknown regime {regime!r}; params.yaml regimes: {', '.join(params.regimes)}")
    with stage_run(stage, dumped, section_hash(dumped), regime=regime):
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
