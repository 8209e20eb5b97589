"""Evaluation metrics of a policy from its evaluation rollouts (sampled without early exit).

One sampling pass at cap max(H, H_eval) answers every horizon up to it, because a generation
cut at H is a prefix of the generation at the cap (DESIGN section 2).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import comb

from relbudget import estimators as est


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
    for k in pass_k:
        out[f"pass@{k}"] = pass_at_k(df, H, k)
    return out
