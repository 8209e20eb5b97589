"""arm@ARM-SEED and fixed_best@SEED: one run of a budget arm, compute-matched with the sweep.

    python -m stages.arm controller-s0
    python -m stages.arm fixed_best-s0

Trains GRPO from the base policy on `sweep.token_budget` generated tokens with train.seed = SEED
(the rest of `train` as for the sweep), with the arm's budget (params `arms`):
- controller: H_t = arms.target_xi * E_t[T], re-estimated from the policy's own rollouts;
- per_prompt: H_x = arms.target_xi * E[T|x] from the base rollouts, per request;
- filtered: fixed H = arms.target_xi * E[T] on the prompts whose xi_x lies in arms.filter_band;
- fixed_best: fixed H = xi* E[T] at the sweep's best xi* (highest mean gain per token), i.e. the
  sweep cell of that xi and seed again (same trajectory), now with the curve.
Each run is evaluated at H_eval when its generated tokens pass each of `arms.eval_at` (history
column acc_H_eval) and at the end, as a sweep cell is; the report compares the arms with the best
fixed xi by the generated tokens each needs to reach a target accuracy. Writes {paths.arms}/NAME/history.parquet
and arm.json; the work folder {paths.arms}/.NAME.work is removed on success.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import mlflow

from relbudget.measure.budgets import check_token_budget
from relbudget.core.io import output_set, write_json
from relbudget.measure.metrics import gain_metrics
from relbudget.report import analysis
from relbudget.core.params import parse_arm
from relbudget.core.schemas import HISTORY, write_table
from relbudget.core.tracking import eval_headline, log_metrics
from relbudget.train.training import horizon, train_and_evaluate

log = logging.getLogger("relbudget.arm")
# fixed_best reads the whole `sweep` section (its grid, to find the best xi); the adaptive arms
# only its budget and evaluation size
SECTIONS = ["arms.target_xi", "arms.filter_band", "arms.eval_at", "sweep.token_budget",
            "sweep.eval_attempts", "train", "evaluate", "sampling.backend",
            "base_policy.trust_remote_code", "base_policy.chat_template", "paths"]


def best_fixed_xi(params) -> float:
    """The sweep's xi with the highest mean gain per 100k tokens (the report's peak)."""
    import json

    base = json.loads(Path(params.paths.eval_json("base")).read_text())
    table = analysis.sweep_table(analysis.load_cells(params.paths, params.sweep), base)
    return analysis.peak_xi(table)["xi"]


def run(params, name: str) -> dict:
    arm, seed = parse_arm(name)
    paths, s, a = params.paths, params.sweep, params.arms
    xi = best_fixed_xi(params) if arm == "fixed_best" else a.target_xi
    H, E_T = horizon(paths.E_T, xi)
    t = a.train_params(params.train, arm, seed, s.token_budget)
    check_token_budget(t, H, f"arm@{name}")  # an unreachable budget: refused before compute
    mlflow.set_tags({"arm": arm, "seed": str(seed), "target_xi": str(xi), "H": str(H),
                     "budget": t.budget, "reward": t.reward, "after_answer": t.after_answer})
    log.info("arm@%s: %s at target xi %g (H0 = %d, E[T] %.2f), budget %d tokens", name, arm, xi,
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
    log_metrics(gain_metrics(result["at"], paths.eval_json("base"),
                                 stats["generated_tokens"]))
    log.info("arm@%s: accuracy at H_eval %.3f after %d tokens", name,
             result["at"]["H_eval"]["accuracy"], stats["generated_tokens"])
    return result


if __name__ == "__main__":
    from stages._cli import main

    main("arm", run, SECTIONS, takes_regime=True)
