"""train@REGIME: budgeted GRPO from the base policy at that regime's horizon H (from budgets.yaml).

Writes the trained policy to {paths.models}/REGIME/ and the per-step history to
{paths.train}/REGIME/history.parquet. Trainer checkpoints live in {paths.train}/.REGIME.work,
so an interrupted run resumes where it stopped; the folder is removed on success.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import mlflow

from relbudget.measure.budgets import budget_of, check_token_budget
from relbudget.train.grpo import preflight, train_policy
from relbudget.core.io import atomic_dir, work_lock
from relbudget.measure.models import load_saved, render_prompts, save_policy
from relbudget.core.schemas import HISTORY, PROMPTS, read_table, write_table
from relbudget.core.tracking import log_dataset, log_policy
from relbudget.train.training import adaptive_budgets, check_length, context_H, summary

log = logging.getLogger("relbudget.train")
# the regime's H comes from budgets.yaml (a data dep), not from params `regimes`
SECTIONS = ["train", "base_policy.trust_remote_code", "base_policy.chat_template", "paths"]


def budget_entry(xi_dir: str | Path, regime: str) -> dict:
    """The regime's validated entry in budgets.yaml (H, predicted p, P_inf, ...)."""
    return budget_of(xi_dir, regime).model_dump()


def run(params, regime: str) -> dict:
    t, paths = params.train, params.paths
    entry = budget_entry(paths.xi, regime)
    H = int(entry["H"])
    mlflow.set_tags({"H": str(H), "target_xi": str(entry.get("target_xi")),
                     "reward": t.reward, "after_answer": t.after_answer, "stop": t.stop,
                     "budget": t.budget})
    check_token_budget(t, H, f"train@{regime}")  # an unreachable budget: refused before compute
    warning = preflight(entry, t, regime)  # before any compute; raises if asked to refuse

    model, tok = load_saved(paths.base_model, params.base_policy.trust_remote_code)
    prompts = read_table(paths.prompts("train"), PROMPTS)
    log_dataset(prompts, paths.prompts("train"), "training")
    prompts = render_prompts(prompts, tok, params.base_policy.chat_template)
    prompts, H, budget_stats = adaptive_budgets(t, paths.rollouts, prompts, H)
    if budget_stats:
        mlflow.log_metrics({f"budget/{k}": float(v) for k, v in budget_stats.items()})
    work = Path(paths.train_work(regime))
    log.info("train@%s: H=%d, %d prompts, stop=%s (budget %d tokens, max %d steps)", regime, H,
             len(prompts), t.stop, t.token_budget, t.max_steps)

    max_model_len = check_length(model, tok, prompts, context_H(t, H), t)
    t0 = time.time()
    with work_lock(work):  # a second train@REGIME is refused: it never shares a live checkpoint
        model, history = train_policy(model, tok, prompts, t, H, work, max_model_len)
    seconds = time.time() - t0

    with atomic_dir(paths.policy(regime)) as tmp:
        save_policy(model, tok, tmp)
    hist_path = paths.history(regime)
    write_table(history, HISTORY, hist_path)
    shutil.rmtree(work, ignore_errors=True)

    stats = {**summary(history, seconds, H, warning), **budget_stats}
    # under summary/ so they never mix with the per-step metrics of the same name
    mlflow.log_metrics({f"summary/{k}": float(v) for k, v in stats.items()
                        if isinstance(v, (int, float)) and math.isfinite(float(v))})
    mlflow.log_artifact(hist_path)
    log_policy(model, tok, Path(paths.policy(regime)))
    log.info("train@%s done: %s", regime, stats)
    return stats


if __name__ == "__main__":
    from stages._cli import main

    main("train", run, SECTIONS, takes_regime=True)
