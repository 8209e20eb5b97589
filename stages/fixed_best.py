"""fixed_best@SEED: the sweep's best fixed xi, rerun as an arm of the budget comparison.

    python -m stages.fixed_best 0

The xi with the highest mean gain per 100k tokens over the sweep cells (the report's peak), at
H = round(xi * E[T]) with train.seed = SEED on `sweep.token_budget` tokens: the same trajectory as
that sweep cell, now evaluated at H_eval along training (`arms.eval_at`), so the adaptive arms
(stages.arm) are compared with it by tokens-to-target. Writes {paths.arms}/fixed_best-sSEED/.
"""

from __future__ import annotations

from stages.arm import run as run_arm

# the whole sweep section: its grid picks the best xi
SECTIONS = ["arms.eval_at", "sweep", "train", "evaluate", "sampling.backend",
            "base_policy.trust_remote_code", "base_policy.chat_template", "paths"]


def run(params, seed: str) -> dict:
    return run_arm(params, f"fixed_best-s{seed}")


if __name__ == "__main__":
    from stages._cli import main

    main("fixed_best", run, SECTIONS, takes_regime=True)
