"""Estimators on a rollout table (DESIGN sections 1, 2): E[T] with a bootstrap CI, curves over the
horizon H, regimes of xi = H / E[T], and the budget planner.

One sampling pass with cap Hmax = max_tokens gives every H <= Hmax exactly: a generation cut at H
is a prefix of the generation at Hmax, so "a correct answer within H tokens" is read straight off
`first_correct_token`. Below the cap nothing is censored (an attempt that ended early without a
correct answer is a miss at every H), so p(H) is a plain empirical frequency and needs no survival
estimator. Above the cap the data cannot tell, and the functions here refuse.

Every function is pure: a DataFrame with the DESIGN section 5 columns in, numbers out.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable

import numpy as np
import pandas as pd
from scipy import stats

REGIMES = ("deficient", "balanced", "ample")

# BCa, not percentile: the pooled ratio sum(consumed) / sum(hits) is right-skewed (a resample with
# few hits blows the ratio up), and the percentile interval then covers the truth less often than
# nominal as prompts get fewer. BCa corrects for bias and skew. On the synthetic tables of
# tests/synth.py (1000 replicates, 95% level, 999 resamples) BCa / percentile covered
# 0.957 / 0.954 at 200 prompts x 8, 0.954 / 0.941 at 50 prompts and 0.937 / 0.923 at 20.
CI_METHOD = "BCa"

# Prompts x resamples held in memory at once by the bootstrap (indices are int64).
_BOOTSTRAP_CELLS = 2_000_000


# ---------------------------------------------------------------- per attempt


def _fct(df: pd.DataFrame) -> np.ndarray:
    """first_correct_token as float, NaN where the attempt has no correct answer."""
    return pd.array(df["first_correct_token"], dtype="Float64").to_numpy(dtype=float, na_value=np.nan)


def is_hit(df: pd.DataFrame) -> pd.Series:
    """True where the attempt contains a correct answer (anywhere up to its end)."""
    return pd.Series(~np.isnan(_fct(df)), index=df.index, name="hit")


def consumed(df: pd.DataFrame) -> pd.Series:
    """Tokens each attempt costs under restart semantics.

    A hit costs the tokens up to its first correct answer (what follows is never needed); a miss
    costs every token it generated before the policy starts over.
    """
    fct = _fct(df)
    n = df["n_tokens"].to_numpy(dtype=float)
    return pd.Series(np.where(np.isnan(fct), n, fct).astype(np.int64), index=df.index, name="consumed")


def hit_within(df: pd.DataFrame, H: int) -> pd.Series:
    """Reward at horizon H: a correct answer within the first H tokens (no correct answer -> False)."""
    with np.errstate(invalid="ignore"):
        return pd.Series(_fct(df) <= H, index=df.index, name="hit_within")


def table_cap(df: pd.DataFrame) -> int:
    """The largest H the table can answer: the smallest max_tokens any attempt ran under."""
    if len(df) == 0:
        raise ValueError("the rollout table has no rows")
    return int(df["max_tokens"].min())


def check_horizons(df: pd.DataFrame, horizons: Iterable[int]) -> np.ndarray:
    """Horizons as int64, each a whole number in 1..cap; ValueError naming the first bad one."""
    cap = table_cap(df)
    out = []
    for H in horizons:
        if isinstance(H, bool) or not float(H).is_integer() or H < 1:
            raise ValueError(f"horizon H={H!r} must be a whole number of tokens >= 1")
        if H > cap:
            raise ValueError(
                f"horizon H={int(H)} is above the table's cap max_tokens={cap}: attempts stop at "
                f"the cap, so the data cannot tell whether a correct answer would come by H={int(H)}")
        out.append(int(H))
    if not out:
        raise ValueError("no horizons given")
    return np.asarray(out, dtype=np.int64)


def _check_group_size(group_size: int) -> int:
    if isinstance(group_size, bool) or int(group_size) != group_size or group_size < 2:
        raise ValueError(f"group size G={group_size!r} must be a whole number >= 2")
    return int(group_size)


# ---------------------------------------------------------------- E[T]


def per_prompt(df: pd.DataFrame) -> pd.DataFrame:
    """Per-prompt renewal estimator E[T|x] = sum(consumed) / #hits.

    Columns: prompt_id, n_attempts, hits, consumed_sum, E_T (inf when unsolved), solved, E_T_lower.
    E_T_lower is E_T for a solved prompt and consumed_sum for an unsolved one: at least that many
    tokens went by without a correct answer, so it is the one finite number to plot for it.
    """
    t = pd.DataFrame({"prompt_id": df["prompt_id"].to_numpy(),
                      "hit": is_hit(df).to_numpy(), "consumed": consumed(df).to_numpy()})
    out = (t.groupby("prompt_id", sort=True)
           .agg(n_attempts=("hit", "size"), hits=("hit", "sum"), consumed_sum=("consumed", "sum"))
           .reset_index())
    out["hits"] = out["hits"].astype(np.int64)
    out["solved"] = out["hits"] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        e_t = out["consumed_sum"].to_numpy(float) / out["hits"].to_numpy(float)
    out["E_T"] = np.where(out["solved"], e_t, np.inf)
    out["E_T_lower"] = np.where(out["solved"], out["E_T"], out["consumed_sum"].astype(float))
    return out[["prompt_id", "n_attempts", "hits", "consumed_sum", "E_T", "solved", "E_T_lower"]]


def _ratio(c: np.ndarray, h: np.ndarray, axis: int = -1) -> np.ndarray:
    # Tokens per correct solution; a (resampled) set without any hit gives inf, which is the
    # honest value and is kept rather than dropped.
    c, h = np.sum(c, axis=axis), np.sum(h, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(h > 0, c / h, np.inf)


def pooled_E_T(df: pd.DataFrame) -> float:
    """Dataset E[T]: sum(consumed) / #hits over all attempts (inf if no attempt hit).

    Its target is E_x[E[consumed|x]] / E_x[P(hit|x)], tokens spent per correct solution.
    """
    if len(df) == 0:
        raise ValueError("the rollout table has no rows")
    return float(_ratio(consumed(df).to_numpy(float), is_hit(df).to_numpy(float)))


def ratio_ci(consumed_sum: np.ndarray, hits: np.ndarray, n_resamples: int = 999,
             level: float = 0.95, seed: int = 0, method: str = CI_METHOD) -> tuple[float, float]:
    """Bootstrap CI of sum(consumed_sum) / sum(hits), resampling the (prompt) pairs.

    Degenerate cases give a clear answer, not an exception: no hit at all -> (inf, inf);
    a single prompt -> (nan, nan), since one prompt says nothing about prompt-to-prompt spread.
    """
    c = np.asarray(consumed_sum, dtype=float)
    h = np.asarray(hits, dtype=float)
    if h.sum() == 0:
        return (math.inf, math.inf)
    if len(c) < 2:
        return (math.nan, math.nan)

    def run(m: str) -> tuple[float, float]:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            # DegenerateDataWarning (all resamples equal) and inf ratios are handled below.
            warnings.simplefilter("ignore")
            res = stats.bootstrap((c, h), _ratio, paired=True, vectorized=True,
                                  n_resamples=n_resamples, confidence_level=level, method=m,
                                  batch=max(1, _BOOTSTRAP_CELLS // len(c)),
                                  rng=np.random.default_rng(seed))
        return float(res.confidence_interval.low), float(res.confidence_interval.high)

    low, high = run(method)
    # BCa's jackknife breaks when leaving one prompt out removes every hit (inf) or when every
    # resample is equal; the percentile interval is still well defined there (its upper end may
    # be inf, which is what the data say).
    if math.isnan(low) or math.isnan(high):
        low, high = run("percentile")
    return low, high


def bootstrap_ci(df: pd.DataFrame, n_resamples: int = 999, level: float = 0.95, seed: int = 0,
                 method: str = CI_METHOD) -> tuple[float, float]:
    """CI of pooled_E_T by resampling PROMPTS with replacement (attempts of a prompt are not
    independent draws of the dataset quantity: they share the prompt's difficulty)."""
    pp = per_prompt(df)
    return ratio_ci(pp["consumed_sum"].to_numpy(), pp["hits"].to_numpy(),
                    n_resamples=n_resamples, level=level, seed=seed, method=method)


# ---------------------------------------------------------------- curves over H


def p_mixed(hits: np.ndarray, k: np.ndarray, group_size: int) -> np.ndarray:
    """P(a GRPO group of G rollouts of this prompt has both rewards), from h hits out of K.

    K >= G: the unbiased estimator 1 - C(h,G)/C(K,G) - C(K-h,G)/C(K,G) (draw the group without
    replacement from the K observed attempts; E[C(h,G)/C(K,G)] = p^G exactly). The plug-in
    1 - p^G - (1-p)^G with p = h/K understates P_inf (by Jensen, E[p_hat^G] > p^G), most for
    small K, so it is only the fallback when K < G.
    """
    G = _check_group_size(group_size)
    h = np.asarray(hits, dtype=float)
    k = np.asarray(k, dtype=float)
    all_hit = np.ones(np.broadcast(h, k).shape)
    all_miss = np.ones_like(all_hit)
    with np.errstate(divide="ignore", invalid="ignore"):
        # C(h,G)/C(K,G) = prod_i (h-i)/(K-i); a factor hits 0 once i reaches h, so h < G gives 0.
        for i in range(G):
            all_hit = all_hit * (h - i) / (k - i)
            all_miss = all_miss * (k - h - i) / (k - i)
        p = h / k
    plug_in = 1.0 - p**G - (1.0 - p) ** G
    return np.where(k >= G, 1.0 - all_hit - all_miss, plug_in)


def curves(df: pd.DataFrame, horizons: Iterable[int], group_size: int,
           E_T: float | None = None) -> pd.DataFrame:
    """p(H), p(1-p), P_inf(H, G) (unbiased, per prompt, averaged), the pooled-p P_inf, and xi(H).

    Computed in O(attempts + horizons) for any number of horizons: as H grows past a hit's
    first_correct_token, that prompt's count of hits within H steps from r to r+1, so each hit
    adds one known increment to every per-prompt statistic from its horizon on.
    """
    H = check_horizons(df, horizons)
    G = _check_group_size(group_size)
    if E_T is None:
        E_T = pooled_E_T(df)

    codes, _ = pd.factorize(df["prompt_id"], sort=True)
    n_prompts = int(codes.max()) + 1
    k = np.bincount(codes, minlength=n_prompts).astype(float)  # attempts per prompt
    fct = _fct(df)

    # Hits sorted by prompt, then by token; rank r = hits of the same prompt that came before.
    hit = ~np.isnan(fct)
    hc, hf = codes[hit], fct[hit]
    order = np.lexsort((hf, hc))
    hc, hf = hc[order], hf[order]
    r = np.arange(len(hc)) - np.searchsorted(hc, hc, side="left")

    # Where each hit starts to count: the first horizon (in sorted order) with H >= token.
    h_order = np.argsort(H, kind="stable")
    j = np.searchsorted(H[h_order], hf, side="left")
    nH = len(H)

    def accumulate(weights: np.ndarray) -> np.ndarray:
        # Sum of per-hit increments over hits with token <= H, for each sorted horizon.
        return np.cumsum(np.bincount(j, weights=weights, minlength=nH + 1))[:nH]

    n_hits_sorted = accumulate(np.ones(len(hf)))
    delta = p_mixed(r + 1, k[hc], G) - p_mixed(r, k[hc], G)
    mixed_sorted = p_mixed(np.zeros(n_prompts), k, G).sum() + accumulate(delta)

    # Back to the caller's order of horizons.
    n_hits = np.empty(nH)
    mixed = np.empty(nH)
    n_hits[h_order] = n_hits_sorted
    mixed[h_order] = mixed_sorted

    p = n_hits / len(df)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = H / E_T
    return pd.DataFrame({
        "H": H,
        "xi": xi,
        "p": p,
        "reward_var": p * (1.0 - p),
        "p_informative": mixed / n_prompts,
        "p_informative_pooled": 1.0 - p**G - (1.0 - p) ** G,
    })


# ---------------------------------------------------------------- regimes and horizons


def regime_of(xi: float, deficient_below: float, ample_above: float) -> str:
    """'deficient' below the lower bound, 'ample' above the upper one, else 'balanced'."""
    if not deficient_below < ample_above:
        raise ValueError(f"deficient_below ({deficient_below}) must be below ample_above ({ample_above})")
    if xi is None or math.isnan(xi):
        raise ValueError(f"xi must be a number, got {xi!r}")
    if xi < deficient_below:
        return "deficient"
    if xi > ample_above:
        return "ample"
    return "balanced"


def default_horizons(max_tokens: int) -> list[int]:
    """Every H the table can answer, 1..max_tokens (the grid for curves.parquet)."""
    return list(range(1, int(max_tokens) + 1))


def summary_horizons(max_tokens: int, fractions: Iterable[float] = (0.125, 0.25, 0.5, 0.75, 1.0)) -> list[int]:
    """A few round fractions of the cap, for a readable summary (the CLI's default)."""
    return sorted({max(1, int(math.floor(f * max_tokens + 0.5))) for f in fractions})


# ---------------------------------------------------------------- planner and summary


def plan(df: pd.DataFrame, target_xi: float, group_size: int) -> dict[str, Any]:
    """The horizon for a target xi: H = max(1, round(target_xi * E_T)), with p, p(1-p), P_inf at H.

    If H is above the table's cap the data cannot measure p there: the predictions are None,
    `extrapolated` is True and `warning` says why (sample again with a larger max_tokens).
    """
    if target_xi is None or not math.isfinite(target_xi) or target_xi <= 0:
        raise ValueError(f"target xi must be a finite number > 0, got {target_xi!r}")
    G = _check_group_size(group_size)
    E_T = pooled_E_T(df)
    if not math.isfinite(E_T):
        raise ValueError("no attempt in the rollout table is correct, so E[T] is infinite and "
                         "no finite horizon reaches the target xi")
    H = max(1, int(math.floor(target_xi * E_T + 0.5)))  # round half up
    cap = table_cap(df)
    out: dict[str, Any] = {"target_xi": float(target_xi), "H": H, "xi": H / E_T, "E_T": E_T,
                           "group_size": G, "max_tokens": cap, "extrapolated": H > cap,
                           "warning": None}
    if H > cap:
        out.update(p=None, reward_var=None, p_informative=None, p_informative_pooled=None)
        out["warning"] = (f"H={H} is above the table's cap max_tokens={cap}; p(H), reward variance "
                          f"and P_inf cannot be measured there (sample with max_tokens >= {H})")
        return out
    row = curves(df, [H], G, E_T=E_T).iloc[0]
    out.update({c: float(row[c]) for c in ("p", "reward_var", "p_informative", "p_informative_pooled")})
    return out


def summarize(df: pd.DataFrame, horizons: Iterable[int] | None = None, group_size: int = 8,
              n_bootstrap: int = 1000, ci_level: float = 0.95, seed: int = 0,
              deficient_below: float = 0.5, ample_above: float = 3.0) -> dict[str, Any]:
    """The DESIGN section 6 `xi` summary, JSON-safe (inf and nan become None).

    horizons=None uses summary_horizons(cap).
    """
    cap = table_cap(df)
    H = check_horizons(df, summary_horizons(cap) if horizons is None else horizons)
    pp = per_prompt(df)
    E_T = pooled_E_T(df)
    low, high = ratio_ci(pp["consumed_sum"].to_numpy(), pp["hits"].to_numpy(),
                         n_resamples=n_bootstrap, level=ci_level, seed=seed)
    solved = pp["solved"].to_numpy()
    cv = curves(df, H, group_size, E_T=E_T)
    rows = []
    for c in cv.itertuples(index=False):
        rows.append({"H": int(c.H), "xi": c.xi, "p": c.p, "reward_var": c.reward_var,
                     "p_informative": c.p_informative,
                     "p_informative_pooled": c.p_informative_pooled,
                     "regime": regime_of(c.xi, deficient_below, ample_above)})
    return to_json_safe({
        "E_T": E_T,
        "E_T_ci": [low, high],
        "E_T_prompt_mean": float(pp.loc[solved, "E_T"].mean()) if solved.any() else None,
        "unsolved_share": float(1.0 - solved.mean()),
        "n_prompts": len(pp),
        "n_attempts": len(df),
        "n_hits": int(pp["hits"].sum()),
        "horizons": rows,
        "max_tokens": cap,
        "group_size": int(group_size),
        "ci_level": float(ci_level),
        "ci_method": CI_METHOD,
        "n_bootstrap": int(n_bootstrap),
    })


def to_json_safe(obj: Any) -> Any:
    """numpy scalars to Python, inf/nan to None (JSON has neither), recursively."""
    if isinstance(obj, dict):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
