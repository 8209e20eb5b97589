"""fixed_best@SEED: the sweep's best fixed xi, rerun as an arm of the budget comparison.

    python -m stages.fixed_best 0

The xi with the highest mean gain per 100k tokens over the sweep cells (the report's peak, read
through relbudget.report.analysis), at H = round(xi * E[T]) with train.seed = SEED on
`sweep.token_budget` tokens: the same trajectory as that sweep cell, now evaluated at H_eval
along training (`arms.eval_at`), so the adaptive arms (stages/arm.py) are compared with it by
tokens-to-target. The run is relbudget.train.arms.run_arm, as for the adaptive arms. Writes
{paths.arms}/fixed_best-sSEED/history.parquet and arm.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from relbudget.report import analysis
from relbudget.train.arms import run_arm

# the whole sweep section: its grid picks the best xi
SECTIONS = ["arms.eval_at", "sweep", "train", "evaluate", "sampling.backend",
            "base_policy.trust_remote_code", "base_policy.chat_template", "paths"]


def best_fixed_xi(params) -> float:
    """The sweep's xi with the highest mean gain per 100k tokens (the report's peak)."""
    base = json.loads(Path(params.paths.eval_json("base")).read_text())
    table = analysis.sweep_table(analysis.load_cells(params.paths, params.sweep), base)
    return analysis.peak_xi(table)["xi"]


def run(params, seed: str) -> dict:
    if not str(seed).isdigit():
        raise ValueError(f"fixed_best@{seed}: the key is a seed of params sweep.seeds "
                         "(a non-negative integer)")
    return run_arm(params, "fixed_best", int(seed), best_fixed_xi(params), f"fixed_best@{seed}")


if __name__ == "__main__":
    from stages._cli import main

    main("fixed_best", run, SECTIONS, takes_regime=True)
