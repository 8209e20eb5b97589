"""Evaluation of a policy: sampling its evaluation rollouts, and the metrics at each horizon.

One sampling pass at cap max(H, H_eval) answers every horizon up to it, because a generation
cut at H is a prefix of the generation at the cap (docs/definitions.md, "Estimators"). Sampling
stops a completion at its first correct answer (early exit): accuracy within H, first-answer
accuracy, E[T] and pass@k are the same as without it, and a policy that runs on after a correct
answer costs no more than the tokens up to it. Lengths and tokens after the first correct answer are therefore
measured in training (the history), not here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import comb

from relbudget.measure import estimators as est


def pass_at_k(df: pd.DataFrame, H: int, k: int) -> float:
    """Unbiased pass@k at horizon H (Chen et al., 2021): mean over prompts of 1 - C(n-c,k)/C(n,k)."""
    g = est.hit_within(df, H).groupby(df["prompt_id"]).agg(["sum", "count"])
    n, c = g["count"].to_numpy(), g["sum"].to_numpy()
    if (n < k).any():
        raise ValueError(f"pass@{k} needs at least {k} samples per prompt; some prompts have {n.min()}")
    return float(np.mean(1.0 - comb(n - c, k) / comb(n, k)))


def mean_length_at(df: pd.DataFrame, H: int) -> float:
    """Mean completion length had generation been capped at H."""
    return float(np.minimum(df["n_tokens"].to_numpy(), H).mean())


def censor(df: pd.DataFrame, H: int) -> pd.DataFrame:
    """The rollouts as if sampled at cap H: hits after H vanish, lengths are cut at H."""
    out = df.copy()
    late = out["first_correct_token"].fillna(0) > H
    out.loc[late, "first_correct_token"] = pd.NA
    cut = out["n_tokens"] > H
    out.loc[cut, "n_tokens"] = H
    out.loc[cut, "stop_reason"] = "length"
    out["max_tokens"] = H
    return out


def tokens_after_correct(df: pd.DataFrame, H: int) -> float:
    """Mean tokens written after the first correct answer, over attempts that hit within H."""
    hit = est.hit_within(df, H)
    if not hit.any():
        return 0.0
    fct = df.loc[hit, "first_correct_token"].astype(float)
    return float((np.minimum(df.loc[hit, "n_tokens"], H) - fct).mean())


def metrics_at(df: pd.DataFrame, H: int, pass_k: list[int]) -> dict:
    """Accuracy, pass@k, E[T], xi, lengths at one horizon H (<= the table's cap)."""
    c = censor(df, H)
    E_T = est.pooled_E_T(c)
    out = {
        "H": int(H),
        "accuracy": float(est.hit_within(df, H).mean()),
        "E_T": E_T,
        "xi": H / E_T if np.isfinite(E_T) else 0.0,
        "mean_length": mean_length_at(df, H),
        "clipped_ratio": float((df["n_tokens"] >= H).mean()),
        "tokens_after_correct": tokens_after_correct(df, H),
        "unsolved_share": float(1 - est.per_prompt(c)["solved"].mean()),
    }
    if "first_answer_correct" in df:
        # the first answer, when correct, is the first correct one: within H iff its token is
        out["first_answer_accuracy"] = float((df["first_answer_correct"].astype(bool)
                                              & est.hit_within(df, H)).mean())
    for k in pass_k:
        out[f"pass@{k}"] = pass_at_k(df, H, k)
    return out


def multiple_name(m: float) -> str:
    """The named horizon of a multiple of E[T] in eval.json's `at`: 0.75 -> 'x0.75', 3.0 -> 'x3'."""
    return f"x{m:g}"


def multiple_horizons(E_T: float, multiples: list[float]) -> dict[str, int]:
    """Named horizons at multiples of the base policy's E[T] (`evaluate.h_multiples`), rounded
    to tokens as every xi is (estimators.horizon_for)."""
    return {multiple_name(m): est.horizon_for(m, E_T) for m in multiples}


def check_cap(folder: str | Path, prompts: pd.DataFrame, cap: int, base_policy) -> None:
    """Refuse, before any compute, an evaluation cap that the policy's context cannot hold after
    the longest eval prompt (as the policy is given it): BudgetError naming the fix."""
    from relbudget.core.errors import BudgetError
    from relbudget.measure.models import render_prompts, saved_context

    tok, limit = saved_context(folder, base_policy.trust_remote_code)
    rendered = render_prompts(prompts, tok, base_policy.chat_template)["prompt"]
    longest = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in rendered)
    if limit and cap + longest > limit:
        raise BudgetError(
            f"the evaluation cap {cap} (the largest of evaluate.h_eval, the regime's H and "
            f"evaluate.h_multiples x E[T]) plus the longest eval prompt ({longest} tokens) exceeds "
            f"the policy's max_position_embeddings ({limit}); lower evaluate.h_multiples to at "
            f"most a cap of {limit - longest} tokens")


def evaluate_policy(folder: str | Path, prompts: pd.DataFrame, horizons: dict[str, int], e,
                    base_policy, backend: str, policy: str,
                    attempts: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Sample a saved policy on the eval prompts at cap max(horizons), with early exit, and
    measure it at every named horizon. `e` is the evaluate params section, `base_policy` gives
    trust_remote_code and chat_template; `attempts` overrides e.attempts (pass@k above it is
    skipped). Returns (rollout table, result); the result holds no timings."""
    from relbudget.measure.models import check_prompt_room, policy_context, render_prompts
    from relbudget.measure.sampling import load_generator, requests_from, sample_table, set_threads

    attempts = attempts or e.attempts
    set_threads(e.threads)
    cap = max(horizons.values())
    gen, tok, used = load_generator(backend, folder, cap, e.temperature, 1.0, True, e.batch_size,
                                    base_policy.trust_remote_code)
    prompts = render_prompts(prompts, tok, base_policy.chat_template)
    check_prompt_room(prompts, tok, cap, policy_context(folder, base_policy.trust_remote_code),
                      f"evaluate@{policy}")
    table = sample_table(gen, tok, requests_from(prompts), attempts, cap, e.seed, policy=policy,
                         chunk_prompts=max(1, len(prompts)), desc=f"evaluate@{policy}")
    pass_k = [k for k in e.pass_k if k <= attempts]
    result = {"policy": policy, "cap": cap, "n_prompts": len(prompts), "attempts": attempts,
              "backend": used, "answers_per_completion_at_cap": float(table["n_answers"].mean()),
              "at": {name: metrics_at(table, H, pass_k) for name, H in horizons.items()}}
    return table, result
