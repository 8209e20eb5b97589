"""evaluate@REGIME: accuracy at the regime's own H, at the common H_eval and at
`evaluate.h_multiples` x E[T] of the base policy (named `x0.75`, ...), pass@k, E[T], xi.

`python -m stages.evaluate base` evaluates the base policy the same way, as the reference, at
H_eval and at every regime's H. Sampling stops each completion at its first correct answer
(early exit, see relbudget.measure.evaluation): a policy that runs on after wrong answers costs only its
tokens up to the first correct one, or up to the cap.
"""

from __future__ import annotations

import logging
import time

import mlflow

from relbudget.measure.budgets import BudgetError, read_budgets, read_E_T
from relbudget.measure.evaluation import check_cap, evaluate_policy, multiple_horizons
from relbudget.core.io import write_json
from relbudget.measure.metrics import gain_metrics
from relbudget.core.tracking import eval_headline, log_dataset, log_metrics
from relbudget.core.schemas import HISTORY, PROMPTS, ROLLOUTS, read_table, write_table

log = logging.getLogger("relbudget.evaluate")
SECTIONS = ["evaluate", "sampling.backend", "base_policy.trust_remote_code",
            "base_policy.chat_template", "paths"]


def load_budgets(params) -> dict:
    """budgets.yaml, every entry validated (relbudget.measure.budgets): H >= 1, regime, every field."""
    return {k: b.model_dump() for k, b in read_budgets(params.paths.xi).items()}


def horizons_for(regime: str, budgets: dict, h_eval: int,
                 more: dict[str, int] | None = None) -> dict[str, int]:
    """Named horizons to report: the regime's own H (every regime's H for the base), H_eval and
    `more` (the multiples of E[T]); one sampling pass at the largest answers them all."""
    if regime == "base":
        named = {f"H_{name}": int(b["H"]) for name, b in budgets.items()}
    else:
        if regime not in budgets:
            raise BudgetError(f"regime {regime!r} is not in budgets.yaml ({', '.join(budgets)}); "
                              "rerun the xi stage")
        named = {"H_own": int(budgets[regime]["H"])}
    return {**named, "H_eval": h_eval, **(more or {})}


def run(params, regime: str) -> dict:
    e = params.evaluate
    budgets = load_budgets(params)
    more = multiple_horizons(read_E_T(params.paths.E_T), e.h_multiples)
    horizons = horizons_for(regime, budgets, e.h_eval, more)
    folder = params.paths.policy(regime)
    prompts = read_table(params.paths.prompts("eval"), PROMPTS)
    check_cap(folder, prompts, max(horizons.values()), params.base_policy)  # before sampling
    log_dataset(prompts, params.paths.prompts("eval"), "evaluation")
    t0 = time.time()
    table, result = evaluate_policy(folder, prompts, horizons, e, params.base_policy,
                                    params.sampling.backend, regime)
    mlflow.log_metric("seconds", time.time() - t0)  # a timing: MLflow only, never the metrics file
    write_table(table, ROLLOUTS, params.paths.eval_rollouts(regime))
    result = {"regime": regime, **result}
    write_json(result, params.paths.eval_json(regime))
    for name, m in result["at"].items():
        log_metrics({f"{name}/{k}": v for k, v in m.items()})
    log_metrics(eval_headline(result["at"]))  # the same columns on every evaluate run
    if regime != "base":  # the headline efficiency, one column with the sweep cells and arms
        tokens = read_table(params.paths.history(regime), HISTORY)["cum_generated_tokens"].max()
        log_metrics(gain_metrics(result["at"], params.paths.eval_json("base"), int(tokens)))
    mlflow.log_artifact(params.paths.eval_json(regime))
    log.info("evaluate@%s: %s", regime, {n: round(m["accuracy"], 3) for n, m in result["at"].items()})
    return result


if __name__ == "__main__":
    from stages._cli import main

    main("evaluate", run, SECTIONS, takes_regime=True)
