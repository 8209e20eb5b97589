"""One run of a budget arm, compute-matched with the sweep: arm@ARM-SEED (an adaptive budget)
and fixed_best@SEED (the sweep's best fixed xi) both train, evaluate and write through `run_arm`.

Trains GRPO from the base policy on `sweep.token_budget` generated tokens with train.seed = SEED
(the rest of `train` as for the sweep), with the arm's budget (params `arms`, see
ArmsParams.train_params) at the target xi the stage gives:
- controller: H_t = xi * E_t[T], re-estimated from the policy's own rollouts;
- per_prompt: H_x = xi * E[T|x] from the base rollouts, per request;
- filtered: fixed H = xi * E[T] on the prompts whose xi_x lies in arms.filter_band;
- fixed_best: fixed H = xi E[T] at the sweep's best xi (stages/fixed_best.py finds it), i.e. the
  sweep cell of that xi and seed again (same trajectory), now with the curve.
Each run is evaluated at H_eval when its generated tokens pass each of `arms.eval_at` (history
column acc_H_eval) and at the end, as a sweep cell is. Writes {paths.arms}/NAME/history.parquet
and arm.json as one output set; the work folder {paths.arms}/.NAME.work is removed on success.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import mlflow

from relbudget.core.io import output_set, write_json
from relbudget.core.params import arm_name
from relbudget.core.schemas import HISTORY, write_table
from relbudget.core.tracking import eval_headline, log_metrics
from relbudget.measure.budgets import check_token_budget
from relbudget.measure.metrics import gain_metrics
from relbudget.train.training import horizon, train_and_evaluate

log = logging.getLogger("relbudget.arm")


def run_arm(params, arm: str, seed: int, xi: float, label: str) -> dict:
    """Train and evaluate arm `arm` with seed `seed` at target xi `xi`, write its history and
    arm.json, log its metrics; returns arm.json's content. `label` names the stage execution in
    messages (arm@controller-s0, fixed_best@0)."""
    name = arm_name(arm, seed)
    paths, s, a = params.paths, params.sweep, params.arms
    H, E_T = horizon(paths.E_T, xi)
    t = a.train_params(params.train, arm, seed, s.token_budget)
    check_token_budget(t, H, label)  # an unreachable budget: refused before compute
    mlflow.set_tags({"arm": arm, "seed": str(seed), "target_xi": str(xi), "H": str(H),
                     "budget": t.budget, "reward": t.reward, "after_answer": t.after_answer})
    log.info("%s: %s at target xi %g (H0 = %d, E[T] %.2f), budget %d tokens", label, arm, xi,
             H, E_T, t.token_budget)
    work = Path(paths.arm_work(name))
    history, _, result, stats = train_and_evaluate(params, t, H, name, work, s.eval_attempts,
                                                   a.eval_at)
    result = {"arm": arm, "seed": seed, "target_xi": xi, "H0": H, "E_T_base": E_T,
              "token_budget": t.token_budget,
              "budget": {k: v for k, v in stats.items() if k.startswith(("filter_", "per_prompt_"))},
              **result}
    with output_set():  # history and arm.json replaced together, or neither
        write_table(history, HISTORY, paths.arm_history(name))
        write_json(result, paths.arm_json(name))
    shutil.rmtree(work, ignore_errors=True)

    log_metrics({f"summary/{k}": v for k, v in stats.items()})
    log_metrics(eval_headline(result["at"]))
    log_metrics(gain_metrics(result["at"], paths.eval_json("base"), stats["generated_tokens"]))
    log.info("%s: accuracy at H_eval %.3f after %d tokens", label,
             result["at"]["H_eval"]["accuracy"], stats["generated_tokens"])
    return result
