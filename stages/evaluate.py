"""evaluate@REGIME: accuracy at the regime's own H and at the common H_eval, pass@k, E[T], xi.

`python -m stages.evaluate base` evaluates the base policy the same way, as the reference, at
H_eval and at every regime's H. Sampling runs without early exit so lengths are real.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import yaml

from relbudget.estimators import to_json_safe
from relbudget.evaluation import metrics_at
from relbudget.io import write_json
from relbudget.models import render_prompts
from relbudget.sampling import load_generator, requests_from, sample_table, set_threads
from relbudget.tracking import log_metrics
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
    set_threads(e.threads)
    budgets = load_budgets(params)
    horizons = horizons_for(regime, budgets, e.h_eval)
    cap = max(horizons.values())
    folder = params.paths.base_model if regime == "base" else str(Path(params.paths.models) / regime)
    prompts = read_table(Path(params.paths.prepared) / "eval.parquet", PROMPTS)
    gen, tok, backend = load_generator(params.sampling.backend, folder, cap, e.temperature, 1.0,
                                       False, e.batch_size, e.seed, params.base_policy.trust_remote_code)
    prompts = render_prompts(prompts, tok, params.base_policy.chat_template)
    t0 = time.time()
    table = sample_table(gen, tok, requests_from(prompts), e.attempts, cap, e.seed, policy=regime,
                         chunk_prompts=max(1, len(prompts)), desc=f"evaluate@{regime}")
    out = Path(params.paths.eval)
    write_table(table, ROLLOUTS, out / f"{regime}_rollouts.parquet")
    result = {"regime": regime, "policy": folder, "cap": cap, "n_prompts": len(prompts),
              "attempts": e.attempts, "final_accuracy_at_cap": float(table["final_correct"].mean()),
              "seconds": time.time() - t0, "backend": backend,
              "at": {name: metrics_at(table, H, e.pass_k) for name, H in horizons.items()}}
    write_json(to_json_safe(result), out / f"{regime}.json")
    for name, m in result["at"].items():
        log_metrics({f"{name}/{k}": v for k, v in m.items()})
    log.info("evaluate@%s: %s", regime, {n: round(m["accuracy"], 3) for n, m in result["at"].items()})
    return result


if __name__ == "__main__":
    from stages._cli import main

    main("evaluate", run, SECTIONS, takes_regime=True)
