"""arm@ARM-SEED: one run of an adaptive budget arm, compute-matched with the sweep.

    python -m stages.arm controller-s0

ARM is one of params `arms.arms` (controller, per_prompt, filtered), aiming at `arms.target_xi`;
the run itself (training on `sweep.token_budget` tokens with train.seed = SEED, the accuracy
curve at `arms.eval_at`, the final evaluation, the outputs) is relbudget.train.arms.run_arm. The
report compares the arms with the best fixed xi (stages/fixed_best.py) by the generated tokens
each needs to reach a target accuracy. Writes {paths.arms}/ARM-sSEED/history.parquet and arm.json.
"""

from __future__ import annotations

from relbudget.core.params import ADAPTIVE_ARMS, parse_arm
from relbudget.train.arms import run_arm

# the adaptive arms read only the sweep's budget and evaluation size, not its grid
SECTIONS = ["arms.target_xi", "arms.filter_band", "arms.eval_at", "sweep.token_budget",
            "sweep.eval_attempts", "train", "evaluate", "sampling.backend",
            "base_policy.trust_remote_code", "base_policy.chat_template", "paths"]


def run(params, name: str) -> dict:
    arm, seed = parse_arm(name)
    if arm not in ADAPTIVE_ARMS:
        raise ValueError(f"arm@{name}: {arm} is not an adaptive arm ({', '.join(ADAPTIVE_ARMS)}); "
                         "the sweep's best fixed xi runs as `python -m stages.fixed_best SEED`")
    return run_arm(params, arm, seed, params.arms.target_xi, f"arm@{name}")


if __name__ == "__main__":
    from stages._cli import main

    main("arm", run, SECTIONS, takes_regime=True)
