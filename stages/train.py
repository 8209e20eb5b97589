"""train@REGIME: budgeted GRPO from the base policy at that regime's horizon H (from budgets.yaml).

Trains on the same path as a sweep cell or an arm run (relbudget.train.training.train_from_base)
and writes the trained policy to {paths.models}/REGIME/ and the per-step history to
{paths.train}/REGIME/history.parquet, replaced together as one output set. Trainer checkpoints
live in {paths.train}/.REGIME.work, so an interrupted run resumes where it stopped; the folder is
removed on success.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import mlflow

from relbudget.core.io import atomic_dir, output_set
from relbudget.core.schemas import HISTORY, write_table
from relbudget.core.tracking import log_policy
from relbudget.measure.budgets import budget_of, check_token_budget
from relbudget.measure.models import save_policy
from relbudget.train.grpo import preflight
from relbudget.train.training import train_from_base

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

    work = Path(paths.train_work(regime))
    # the checkpoints in the work folder itself (where an interrupted train@REGIME left them)
    trained = train_from_base(params, t, H, f"train@{regime}", work, checkpoints=work,
                              warning=warning, log_inputs=True)
    hist_path = paths.history(regime)
    with output_set():  # the policy and its history replaced together, or neither
        with atomic_dir(paths.policy(regime)) as tmp:
            save_policy(trained.model, trained.tokenizer, tmp)
        write_table(trained.history, HISTORY, hist_path)
    shutil.rmtree(work, ignore_errors=True)

    stats = trained.stats
    # under summary/ so they never mix with the per-step metrics of the same name
    mlflow.log_metrics({f"summary/{k}": float(v) for k, v in stats.items()
                        if isinstance(v, (int, float)) and math.isfinite(float(v))})
    mlflow.log_artifact(hist_path)
    log_policy(trained.model, trained.tokenizer, Path(paths.policy(regime)))
    log.info("train@%s done: %s", regime, stats)
    return stats


if __name__ == "__main__":
    from stages._cli import main

    main("train", run, SECTIONS, takes_regime=True)
