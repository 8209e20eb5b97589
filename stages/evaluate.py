"""evaluate base: the base policy's reference evaluation, against which every sweep cell and
arm reads its gain: accuracy at the common H_eval and at `evaluate.h_multiples` x E[T] (named
`x0.75`, ...), pass@k, E[T], xi. It reads no regime: the report reads the base's accuracy at any
other H (a regime's) from these rollouts, so editing `regimes` reruns neither this nor the cells.

    python -m stages.evaluate base

Sampling stops each completion at its first correct answer (early exit, see
relbudget.measure.evaluation): a policy that runs on after wrong answers costs only its tokens up
to the first correct one, or up to the cap. The regimes themselves are the sweep's cells at their
xi (stages/sweep.py), evaluated the same way.
"""

from __future__ import annotations

import logging
import time

import mlflow

from relbudget.measure.budgets import read_E_T
from relbudget.measure.evaluation import check_cap, evaluate_policy, multiple_horizons
from relbudget.core.io import write_json
from relbudget.core.tracking import eval_headline, log_dataset, log_metrics
from relbudget.core.schemas import PROMPTS, ROLLOUTS, read_table, write_table

log = logging.getLogger("relbudget.evaluate")
SECTIONS = ["evaluate", "sampling.backend", "base_policy.trust_remote_code",
            "base_policy.chat_template", "paths"]


def run(params, regime: str) -> dict:  # regime: 'base' (stages._cli checks it)
    e = params.evaluate
    more = multiple_horizons(read_E_T(params.paths.E_T), e.h_multiples)
    horizons = {"H_eval": e.h_eval, **more}  # one sampling pass at the largest answers them all
    folder = params.paths.base_model
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
    log_metrics(eval_headline(result["at"]))  # the same columns as every sweep cell and arm
    mlflow.log_artifact(params.paths.eval_json(regime))
    log.info("evaluate@%s: %s", regime, {n: round(m["accuracy"], 3) for n, m in result["at"].items()})
    return result


if __name__ == "__main__":
    from stages._cli import main

    main("evaluate", run, SECTIONS, takes_regime=True)
