"""evaluate@REGIME: accuracy at the regime's own H and at the common H_eval, pass@k, E[T], xi.

`python -m stages.evaluate base` evaluates the base policy the same way, as the reference, at
H_eval and at every regime's H. Sampling stops each completion at its first correct answer
(early exit, see relbudget.evaluation): a policy that runs on after wrong answers costs only its
tokens up to the first correct one, or up to the cap.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import mlflow
import yaml

from relbudget.estimators import to_json_safe
from relbudget.evaluation import evaluate_policy
from relbudget.io import write_json
from relbudget.tracking import eval_headline, log_dataset, log_metrics
from relbudget.schemas import PROMPTS, ROLLOUTS, read_table, write_table

log = logging.getLogger("relbudget.evaluate")
SECTIONS = ["evaluate", "sampling", "base_policy", "paths"]


def load_budgets(params) -> dict:
    path = Path(params.paths.xi) / "budgets.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the xi stage first")
    return yaml.safe_load(path.read_text())


def horizons_for(regime: str, budgets: dict, h_eval: int) -> dict[str, int]:
    """Named horizons to report: the regime's own H (every regime's H for the base) and H_eval."""
    if regime == "base":
        named = {f"H_{name}": int(b["H"]) for name, b in budgets.items()}
    else:
        if regime not in budgets:
            raise KeyError(f"regime {regime!r} is not in budgets.yaml ({', '.join(budgets)})")
        named = {"H_own": int(budgets[regime]["H"])}
    return {**named, "H_eval": h_eval}


def run(params, regime: str) -> dict:
    e = params.evaluate
    budgets = load_budgets(params)
    horizons = horizons_for(regime, budgets, e.h_eval)
    folder = params.paths.base_model if regime == "base" else str(Path(params.paths.models) / regime)
    prompts = read_table(Path(params.paths.prepared) / "eval.parquet", PROMPTS)
    log_dataset(prompts, Path(params.paths.prepared) / "eval.parquet", "evaluation")
    t0 = time.time()
    table, result = evaluate_policy(folder, prompts, horizons, e, params.base_policy,
                                    params.sampling.backend, regime)
    mlflow.log_metric("seconds", time.time() - t0)  # a timing: MLflow only, never the metrics file
    out = Path(params.paths.eval)
    write_table(table, ROLLOUTS, out / f"{regime}_rollouts.parquet")
    result = {"regime": regime, **result}
    write_json(to_json_safe(result), out / f"{regime}.json")
    for name, m in result["at"].items():
        log_metrics({f"{name}/{k}": v for k, v in m.items()})
    log_metrics(eval_headline(result["at"]))  # the same columns on every evaluate run
    mlflow.log_artifact(str(out / f"{regime}.json"))
    log.info("evaluate@%s: %s", regime, {n: round(m["accuracy"], 3) for n, m in result["at"].items()})
    return result


if __name__ == "__main__":
    from stages._cli import main

    main("evaluate", run, SECTIONS, takes_regime=True)
