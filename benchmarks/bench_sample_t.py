"""Benchmark: tokens spent by sample_t with and without early exit, and tokens/s (figures only).

    python benchmarks/bench_sample_t.py [--policy data/models/base] [--params params.yaml]

Reports, for the default sample_t settings: tokens generated with early exit divided by
sum(min(T_i, Hmax)) (goal <= 1.1; T_i per attempt = first correct token, or the attempt's length
when it never hits), the same ratio without early exit, and tokens/s of each. The denominator
comes from the run without early exit, whose generations are the same (same seed: stopping a
row does not change the others' samples). Pass a trained policy folder (any HF folder, e.g. one
saved with relbudget.measure.models.save_policy) to see early exit on a policy that keeps writing
after its answer.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from relbudget.measure import estimators as est
from relbudget.measure.models import render_prompts
from relbudget.core.params import load_params
from relbudget.measure.sampling import load_generator, requests_from, sample_table, set_threads
from relbudget.core.schemas import PROMPTS, read_table


def run_once(params, policy: str, early_exit: bool, n_prompts: int | None):
    s = params.sampling
    prompts = read_table(Path(params.paths.prepared) / "train.parquet", PROMPTS)
    prompts = prompts.head(n_prompts or s.n_prompts or len(prompts))
    gen, tok, backend = load_generator(s.backend, policy, s.max_tokens, s.temperature, s.top_p,
                                       early_exit, s.batch_size)
    prompts = render_prompts(prompts, tok, params.base_policy.chat_template)  # as sample_t does
    t0 = time.perf_counter()
    df = sample_table(gen, tok, requests_from(prompts), s.attempts, s.max_tokens, s.seed,
                      "bench", s.chunk_prompts, desc=f"early_exit={early_exit}")
    return df, time.perf_counter() - t0, backend


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--policy", default=None)
    ap.add_argument("--n-prompts", type=int, default=None)
    args = ap.parse_args()
    params = load_params(args.params)
    set_threads(params.sampling.threads)
    policy = args.policy or params.paths.base_model
    full, t_full, backend = run_once(params, policy, False, args.n_prompts)
    early, t_early, _ = run_once(params, policy, True, args.n_prompts)
    target = int(est.consumed(full).clip(upper=params.sampling.max_tokens).sum())
    out = {
        "policy": policy, "backend": backend, "attempts": len(full),
        "Hmax": params.sampling.max_tokens,
        "sum_min_T_Hmax": target,
        "tokens_early_exit": int(early["n_tokens"].sum()),
        "tokens_no_early_exit": int(full["n_tokens"].sum()),
        "ratio_early_exit": int(early["n_tokens"].sum()) / target,
        "ratio_no_early_exit": int(full["n_tokens"].sum()) / target,
        "tokens_per_s_early_exit": int(early["n_tokens"].sum()) / t_early,
        "tokens_per_s_no_early_exit": int(full["n_tokens"].sum()) / t_full,
        "seconds_early_exit": t_early, "seconds_no_early_exit": t_full,
        "same_hits": bool((early["first_correct_token"].fillna(-1)
                           == full["first_correct_token"].fillna(-1)).all()),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
