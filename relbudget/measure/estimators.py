"""Estimators on a rollout table (T, H, xi and the estimators as docs/definitions.md defines them):
E[T] with a bootstrap CI, curves over the horizon H, regimes of xi = H / E[T], and the budget
planner.

One sampling pass with cap Hmax = max_tokens gives every H <= Hmax exactly: a generation cut at H
is a prefix of the generation at Hmax, so "a correct answer within H tokens" is read straight off
`first_correct_token`. Below the cap nothing is censored (an attempt that ended early without a
correct answer is a miss at every H), so p(H) is a plain empirical frequency and needs no survival
estimator. Above the cap the data cannot tell, and the functions here refuse.

Every function is pure: a DataFrame with the rollout table's columns (docs/definitions.md) in,
numbers out.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable

import numpy as np
import pandas as pd
from scipy import special, stats

from relbudget.core.io import to_json_safe

REGIMES = ("deficient", "balanced", "ample")

# BCa, not percentile: the pooled ratio sum(consumed) / sum(hits) is right-skewed (a resample with
# few hits blows the ratio up), and the percentile interval then covers the truth less often than
# nominal as prompts get fewer. BCa corrects for bias and skew. On the synthetic tables of
# tests/synth.py (1000 replicates, 95% level, 999 resamples) BCa / percentile covered
# 0.957 / 0.954 at 200 prompts x 8, 0.954 / 0.941 at 50 prompts and 0.937 / 0.923 at 20.
CI_METHOD = "BCa"

# Prompts x resamples held in memory at once by the bootstrap (indices are int64).
_BOOTSTRAP_CELLS = 2_000_000
# Attempts whose per-attempt temporaries are held at once where a formula needs many of them.
_CHUNK = 1 << 20


# ---------------------------------------------------------------- per attempt


def _fct(df: pd.DataFrame) -> np.ndarray:
    """first_correct_token as float, NaN where the attempt has no correct answer."""
    return df["first_correct_token"].to_numpy(dtype=float, na_value=np.nan)


def is_hit(df: pd.DataFrame) -> pd.Series:
    """True where the attempt contains a correct answer (anywhere up to its end)."""
    return pd.Series(~np.isnan(_fct(df)), index=df.index, name="hit")


def consumed(df: pd.DataFrame) -> pd.Series:
    """Tokens each attempt costs under restart semantics.

    A hit costs the tokens up to its first correct answer (what follows is never needed); a miss
    costs every token it generated before the policy starts over.
    """
    _, c = _hit_consumed(df)
    return pd.Series(c.astype(np.int64), index=df.index, name="consumed")


def _hit_consumed(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(hit, consumed as float) per attempt, from one read of first_correct_token."""
    fct = _fct(df)
    hit = ~np.isnan(fct)
    return hit, np.where(hit, fct, df["n_tokens"].to_numpy())


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


def _prompt_codes(df: pd.DataFrame) -> tuple[np.ndarray, Any]:
    """pd.factorize(prompt_id, sort=True): codes 0..P-1 in the sorted order of the ids, also for a
    categorical column (schemas.read_rollouts), which factorize would order as its categories."""
    ids = df["prompt_id"]
    if isinstance(ids.dtype, pd.CategoricalDtype):
        cats = ids.cat.categories
        if not cats.is_monotonic_increasing:
            ids = ids.cat.reorder_categories(cats.sort_values())
    return pd.factorize(ids, sort=True)


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
    Rows are sorted by prompt_id. O(attempts) after one sort of the distinct prompt ids.
    """
    codes, ids = _prompt_codes(df)
    hit, c = _hit_consumed(df)

    def per_code(weights: np.ndarray | None) -> np.ndarray:
        # float sums of whole numbers are exact below 2**53
        return np.bincount(codes, weights=weights, minlength=len(ids)).astype(np.int64)

    hits = per_code(hit)
    consumed_sum = per_code(c)
    solved = hits > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        e_t = np.where(solved, consumed_sum / hits, np.inf)
    return pd.DataFrame({"prompt_id": np.asarray(ids, dtype=object),
                         "n_attempts": per_code(None), "hits": hits,
                         "consumed_sum": consumed_sum, "E_T": e_t, "solved": solved,
                         "E_T_lower": np.where(solved, e_t, consumed_sum.astype(float))})


def _ratio(c: np.ndarray, h: np.ndarray, axis: int = -1) -> np.ndarray:
    # Tokens per correct solution; a (resampled) set without any hit gives inf, which is the
    # honest value and is kept rather than dropped.
    c, h = np.sum(c, axis=axis), np.sum(h, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(h > 0, c / h, np.inf)


def renewal_E_T(consumed, hits) -> float:
    """The renewal estimator of E[T]: tokens spent per correct solution, sum(consumed) / #hits
    (a miss adds all its tokens, a hit its tokens up to the answer); inf without a hit. The one
    definition behind the dataset's E_T, each training step's E_t[T] and the controller's ratio."""
    return float(_ratio(np.asarray(consumed, dtype=float), np.asarray(hits, dtype=bool)))


def horizon_for(xi: float, E_T: float) -> int:
    """H = max(1, round(xi * E[T])), rounded half up: the one rounding of a target xi to tokens
    (the regimes' budgets, the sweep cells, the arms)."""
    return max(1, int(math.floor(xi * E_T + 0.5)))


def pooled_E_T(df: pd.DataFrame) -> float:
    """Dataset E[T]: sum(consumed) / #hits over all attempts (inf if no attempt hit).

    Its target is E_x[E[consumed|x]] / E_x[P(hit|x)], tokens spent per correct solution.
    """
    if len(df) == 0:
        raise ValueError("the rollout table has no rows")
    hit, c = _hit_consumed(df)
    return float(_ratio(c, hit))


def _bootstrap_ratios(c: np.ndarray, h: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """sum(c) / sum(h) on each of n_resamples resamples of the n (c, h) pairs.

    The resamples are drawn exactly as scipy.stats.bootstrap(paired=True, rng=default_rng(seed),
    batch=B) draws them: per batch, rng.integers(0, n, (b, n)) indices, so both give the same
    bootstrap distribution. Batches of _BOOTSTRAP_CELLS // n resamples bound the memory.
    """
    rng = np.random.default_rng(seed)
    n = len(c)
    batch = max(1, _BOOTSTRAP_CELLS // n)
    out = np.empty(n_resamples)
    for k in range(0, n_resamples, batch):
        i = rng.integers(0, n, (min(batch, n_resamples - k), n))
        out[k:k + len(i)] = _ratio(c[i], h[i])
    return out


def _bca_levels(c: np.ndarray, h: np.ndarray, theta_b: np.ndarray, alpha: float) -> np.ndarray:
    """The BCa interval's two quantile levels (Efron & Tibshirani 14.3, as scipy computes them).

    z0 from the share of the bootstrap distribution below the estimate; the acceleration from the
    jackknife, whose leave-one-prompt-out ratios are closed-form for a ratio of sums,
    (C - c_i) / (Hh - h_i), so O(n) instead of scipy's O(n^2) re-evaluation. NaN levels (a
    leave-one-out without any hit gives inf; all resamples equal gives 0 / 0) are left to the caller.
    """
    theta = _ratio(c, h)
    below = np.count_nonzero(theta_b < theta) + np.count_nonzero(theta_b <= theta)
    z0 = special.ndtri(below / (2 * len(theta_b)))
    n = len(c)
    theta_i = _ratio(c.sum() - c, h.sum() - h, axis=())
    u = (n - 1) * (theta_i.mean() - theta_i)
    a = 1 / 6 * (np.sum(u**3) / n**3) / (np.sum(u**2) / n**2) ** 1.5
    z = np.array([special.ndtri(alpha), -special.ndtri(alpha)])
    return special.ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))


def ratio_ci(consumed_sum: np.ndarray, hits: np.ndarray, n_resamples: int = 999,
             level: float = 0.95, seed: int = 0, method: str = CI_METHOD) -> tuple[float, float]:
    """Bootstrap CI of sum(consumed_sum) / sum(hits), resampling the (prompt) pairs.

    method: 'BCa' (default), 'percentile' or 'basic'. Equal to scipy.stats.bootstrap((c, h),
    ratio, paired=True, method=..., batch=max(1, _BOOTSTRAP_CELLS // n),
    rng=np.random.default_rng(seed)), which draws the same resamples, in O(n * n_resamples) time
    (scipy's BCa jackknife is O(n^2)) and O(_BOOTSTRAP_CELLS) extra memory.

    Degenerate cases give a clear answer, not an exception: no hit at all -> (inf, inf);
    a single prompt -> (nan, nan), since one prompt says nothing about prompt-to-prompt spread.
    """
    c = np.asarray(consumed_sum, dtype=float)
    h = np.asarray(hits, dtype=float)
    m = method.lower()
    if m not in ("bca", "percentile", "basic"):
        raise ValueError(f"CI method must be 'BCa', 'percentile' or 'basic', got {method!r}")
    if h.sum() == 0:
        return (math.inf, math.inf)
    if len(c) < 2:
        return (math.nan, math.nan)

    alpha = (1 - level) / 2
    with np.errstate(all="ignore"):
        theta_b = _bootstrap_ratios(c, h, n_resamples, seed)
        levels = _bca_levels(c, h, theta_b, alpha) if m == "bca" else np.array([alpha, 1 - alpha])
        low, high = stats.quantile(theta_b, levels)
        # BCa breaks when leaving one prompt out removes every hit (inf) or when every resample
        # is equal; the percentile interval is still well defined there (its upper end may be
        # inf, which is what the data say).
        if m == "bca" and (math.isnan(low) or math.isnan(high)):
            low, high = stats.quantile(theta_b, np.array([alpha, 1 - alpha]))
        if m == "basic":
            theta = _ratio(c, h)
            low, high = 2 * theta - high, 2 * theta - low
    return float(low), float(high)


def bootstrap_ci(df: pd.DataFrame, n_resamples: int = 999, level: float = 0.95, seed: int = 0,
                 method: str = CI_METHOD) -> tuple[float, float]:
    """CI of pooled_E_T by resampling PROMPTS with replacement (attempts of a prompt are not
    independent draws of the dataset quantity: they share the prompt's difficulty)."""
    pp = per_prompt(df)
    return ratio_ci(pp["consumed_sum"].to_numpy(), pp["hits"].to_numpy(),
                    n_resamples=n_resamples, level=level, seed=seed, method=method)


# ---------------------------------------------------------------- T within one completion


def within_sums(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt (ids sorted as in per_prompt): the sum of first_correct_token over its
    completions that reach a correct answer, and how many do."""
    codes, ids = _prompt_codes(df)
    fct = _fct(df)
    hit = ~np.isnan(fct)
    return (np.bincount(codes, weights=np.where(hit, fct, 0.0), minlength=len(ids)),
            np.bincount(codes, weights=hit, minlength=len(ids)))


def within_E_T(df: pd.DataFrame) -> float:
    """E[T] read within one completion: the mean first_correct_token over the completions that
    reach a correct answer within the cap (inf if none does); no restart, so a miss adds nothing.

    The restart E_T is this plus (tokens of the misses) / #hits, so it is never smaller. The
    conditional mean, not a Kaplan-Meier restricted mean or the Gamma fit: a restricted mean
    counts every unsolved completion as the cap, so it moves with the sampling cap, and the Gamma
    fit extrapolates past the cap where nothing was seen; the completions that never solve are
    reported beside it as a share (`within_summary`)."""
    return float(_ratio(*within_sums(df)))


def within_summary(df: pd.DataFrame, n_resamples: int = 999, level: float = 0.95,
                   seed: int = 0) -> dict[str, Any]:
    """The within-one-completion reading of T: `E_T_within` (within_E_T) with a bootstrap CI over
    prompts (the same BCa as E_T's), and `unsolved_share_within`, the share of completions
    without a correct answer within the cap."""
    fct_sum, hits = within_sums(df)
    low, high = ratio_ci(fct_sum, hits, n_resamples=n_resamples, level=level, seed=seed)
    return {"E_T_within": float(_ratio(fct_sum, hits)), "E_T_within_ci": [low, high],
            "unsolved_share_within": float(1.0 - hits.sum() / len(df))}


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


def p_inf_estimator(df: pd.DataFrame, group_size: int) -> tuple[str, str | None]:
    """The P_inf estimator p_mixed uses on this table, and a warning unless it is the unbiased
    one: `unbiased` (every prompt has K >= G attempts), `plug-in` (none has), or `mixed`."""
    codes, _ = _prompt_codes(df)
    k = np.bincount(codes)
    short = int((k < group_size).sum())
    if short == 0:
        return "unbiased", None
    name = "plug-in" if short == len(k) else "mixed"
    return name, (f"P_inf uses the plug-in 1 - p^G - (1-p)^G for {short} of {len(k)} prompts: "
                  f"they have fewer attempts (min {int(k.min())}) than the group size G = "
                  f"{group_size}, so P_inf is understated there; sample at least {group_size} "
                  "attempts per prompt for the unbiased estimate")


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

    fct = _fct(df)
    hit = ~np.isnan(fct)
    hf = fct[hit].astype(np.int64)
    del fct
    codes, _ = _prompt_codes(df)
    n_prompts = int(codes.max()) + 1
    k = np.bincount(codes, minlength=n_prompts).astype(float)  # attempts per prompt

    # Hits sorted by prompt, then by token (one in-place sort of prompt * stride + token, which
    # keeps a multi-million-row table's temporaries few); rank r = hits of the same prompt that
    # came before.
    stride = int(hf.max(initial=0)) + 1
    key = codes[hit]
    del codes, hit
    key *= stride
    key += hf
    key.sort()
    hc, hf = np.divmod(key, stride)
    del key
    r = np.arange(len(hc)) - np.searchsorted(hc, hc, side="left")

    # Where each hit starts to count: the first horizon (in sorted order) with H >= token.
    h_order = np.argsort(H, kind="stable")
    j = np.searchsorted(H[h_order], hf, side="left")
    nH = len(H)

    def accumulate(weights: np.ndarray | None) -> np.ndarray:
        # Sum of per-hit increments over hits with token <= H, for each sorted horizon.
        return np.cumsum(np.bincount(j, weights=weights, minlength=nH + 1))[:nH]

    n_hits_sorted = accumulate(None)
    delta = np.empty(len(hc))
    for lo in range(0, len(hc), _CHUNK):  # p_mixed's temporaries on a chunk of hits at a time
        r_s, k_s = r[lo:lo + _CHUNK], k[hc[lo:lo + _CHUNK]]
        delta[lo:lo + _CHUNK] = p_mixed(r_s + 1, k_s, G) - p_mixed(r_s, k_s, G)
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


# ---------------------------------------------------------------- rewards at horizon H

REWARDS = ("within", "final", "budget")


def _check_reward(reward: str) -> str:
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {', '.join(REWARDS)}, got {reward!r}")
    return reward


def final_within(df: pd.DataFrame, H: int) -> pd.Series:
    """The `final` reward at horizon H: the completion ended within H and its last answer is right.

    A completion cut by H has no final answer (its text stops mid-way), so it scores 0 whatever
    `final_correct` says of the truncated text. "Ended within H" is read from the table: stopped on
    its own (`eos`, or the early exit `first_correct`, where first_correct_token == n_tokens) with
    n_tokens <= H. A `length` row was cut at the cap, so it has no final answer even at H = cap.
    With the early exit the last answer of a hit is its first correct one, so on such a table
    `final` equals `within` for hits; the table cannot tell how the completion would have ended.
    """
    n = df["n_tokens"].to_numpy()
    ended = (df["stop_reason"].to_numpy() != "length") & (n <= H)
    return pd.Series(ended & df["final_correct"].to_numpy(dtype=bool), index=df.index,
                     name="final_within")


def budget_reward(df: pd.DataFrame, H: int) -> pd.Series:
    """The length-aware `budget` reward at horizon H: (H - T + 1) / H if T <= H, else 0.

    T is the completion's own first_correct_token (no restart across completions): 1 for an answer
    at the first token, 1/H for one at the last token of the budget, 0 for none within H. This form
    is taken from a summary of the paper (Wachi et al. 2026, arXiv 2602.01523) and was not checked
    against the PDF.
    """
    return pd.Series(budget_value(_fct(df), H), index=df.index, name="budget_reward")


def budget_value(T, H: int):
    """The `budget` reward of a first correct token T (NaN: none) at horizon H, elementwise:
    (H - T + 1) / H if T <= H, else 0. The one formula behind the table's reward curves and the
    reward GRPO trains on."""
    with np.errstate(invalid="ignore"):
        return np.where(np.asarray(T, dtype=float) <= H, (H - np.asarray(T, dtype=float) + 1.0) / H,
                        0.0)


def reward_at(df: pd.DataFrame, H: int, reward: str) -> pd.Series:
    """Per-attempt reward at horizon H: `within` (float 0/1), `final` (float 0/1) or `budget`."""
    _check_reward(reward)
    if reward == "budget":
        return budget_reward(df, H)
    hit = hit_within(df, H) if reward == "within" else final_within(df, H)
    return hit.astype(float).rename(reward)


def p_all_equal(counts: np.ndarray, k: np.ndarray, group_size: int) -> np.ndarray:
    """P(all G draws of a group fall in one class of c attempts), per (class, prompt) pair.

    K >= G: C(c,G)/C(K,G) = prod_i (c-i)/(K-i) (unbiased for p_v^G, drawing without replacement;
    a ratio of products, so no overflow for large G); K < G: the plug-in (c/K)^G.
    """
    G = _check_group_size(group_size)
    c = np.asarray(counts, dtype=float)
    k = np.asarray(k, dtype=float)
    out = np.ones(np.broadcast(c, k).shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(G):
            out = out * np.clip(c - i, 0.0, None) / (k - i)
        plug_in = (c / k) ** G
    return np.where(k >= G, out, plug_in)


def _p_informative_runs(codes: np.ndarray, key: np.ndarray, k: np.ndarray, G: int) -> float:
    """Mean over prompts of 1 - sum_v C(c_v,G)/C(K,G), for rows sorted so that equal keys of a
    prompt are contiguous (codes: prompt index 0..P-1 per row, k: attempts per prompt)."""
    start = np.ones(len(codes), dtype=bool)
    start[1:] = (codes[1:] != codes[:-1]) | (key[1:] != key[:-1])
    first = np.flatnonzero(start)
    counts = np.diff(np.append(first, len(codes)))
    run_prompt = codes[first]
    same = np.bincount(run_prompt, weights=p_all_equal(counts, k[run_prompt], G),
                       minlength=len(k))
    return float(np.mean(1.0 - same))


def reward_curves(df: pd.DataFrame, horizons: Iterable[int], group_size: int,
                  reward: str = "within") -> pd.DataFrame:
    """Per H: reward_mean, reward_var (over all attempts) and p_informative for one reward.

    p_informative is the unbiased per-prompt share of GRPO groups of G (drawn without replacement
    from that prompt's K attempts) whose rewards are not all equal, averaged over prompts:
    1 - sum over distinct reward values v of C(c_v,G)/C(K,G), the plug-in 1 - sum (c_v/K)^G when
    K < G (as p_mixed). `within` is curves() itself (reward_mean = p). One pass over the rows per
    horizon; rows are sorted once.
    """
    _check_reward(reward)
    H = check_horizons(df, horizons)
    G = _check_group_size(group_size)
    if reward == "within":
        cv = curves(df, H, G, E_T=math.nan)
        return pd.DataFrame({"H": H, "reward_mean": cv["p"], "reward_var": cv["reward_var"],
                             "p_informative": cv["p_informative"]})
    codes, _ = _prompt_codes(df)
    k = np.bincount(codes).astype(float)
    fct = _fct(df)
    # Budget rewards of a prompt are equal iff their T (any T > H counting as one "none") are, and
    # min(T, H + 1) is monotone in T: rows sorted by (prompt, T) keep equal rewards contiguous.
    order = np.lexsort((np.nan_to_num(fct, nan=np.inf), codes))
    codes_s, fct_s = codes[order], fct[order]
    rows = []
    for h in H:
        r = reward_at(df, int(h), reward).to_numpy()
        if reward == "budget":
            key = np.where(fct_s <= h, fct_s, h + 1.0)
            p_inf = _p_informative_runs(codes_s, key, k, G)
        else:  # binary: p_mixed from the count of ones per prompt
            ones = np.bincount(codes, weights=r, minlength=len(k))
            p_inf = float(np.mean(p_mixed(ones, k, G)))
        rows.append({"H": int(h), "reward_mean": float(r.mean()), "reward_var": float(r.var()),
                     "p_informative": p_inf})
    return pd.DataFrame(rows, columns=["H", "reward_mean", "reward_var", "p_informative"])


def _reward_columns(cv: pd.DataFrame, df: pd.DataFrame, group_size: int,
                    reward: str) -> pd.DataFrame:
    """curves() with reward_mean added and, for a reward other than `within`, its reward_var and
    p_informative in place of the binary ones (p and p_informative_pooled stay as they are)."""
    cv = cv.copy()
    rc = reward_curves(df, cv["H"], group_size, reward) if reward != "within" else \
        cv.rename(columns={"p": "reward_mean"})
    cv["reward_mean"] = rc["reward_mean"].to_numpy()
    cv["reward_var"] = rc["reward_var"].to_numpy()
    cv["p_informative"] = rc["p_informative"].to_numpy()
    return cv


# ---------------------------------------------------------------- the Gamma model of T


def restart_T(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """T under restart semantics: (observed, right-censored) token counts, int64 arrays.

    Per prompt, its attempts are walked in attempt order, adding up what each consumes (tokens to
    the first correct answer for a hit, every token for a miss). Each hit closes one observed T
    (the tokens since the previous hit of that prompt, or since its start); misses after a
    prompt's last hit give one right-censored T, at least their sum (dropped when that sum is 0,
    since T >= 0 says nothing). Observed T's come in (prompt_id, attempt) order.
    """
    codes, _ = _prompt_codes(df)
    order = np.lexsort((df["attempt"].to_numpy(), codes))
    codes = codes[order]
    c = consumed(df).to_numpy()[order]
    hit = is_hit(df).to_numpy()[order]
    cs = np.cumsum(c)
    n_prompts = int(codes.max()) + 1 if len(codes) else 0
    first = np.searchsorted(codes, np.arange(n_prompts), side="left")
    last = np.searchsorted(codes, np.arange(n_prompts), side="right") - 1
    start = (cs - c)[first]  # tokens before each prompt's first attempt (global cumsum)
    ends = cs[hit]
    hc = codes[hit]
    new_prompt = np.ones(len(hc), dtype=bool)
    new_prompt[1:] = hc[1:] != hc[:-1]
    prev = np.where(new_prompt, start[hc], np.roll(ends, 1))
    observed = ends - prev
    mark = start.copy()
    np.maximum.at(mark, hc, ends)  # ends grow within a prompt: the last hit's end
    censored = cs[last] - mark
    return observed.astype(np.int64), censored[censored > 0].astype(np.int64)


def _sup_distance(cdf, t: np.ndarray, km: np.ndarray) -> float:
    """sup over whole tokens t <= max(t) of |cdf(t) - KM(t)|: KM is flat between its jumps t_i, so
    the sup is at a jump (cdf(t_i) vs KM(t_i)) or just before it (cdf(t_i - 1) vs KM(t_{i-1}))."""
    before = np.concatenate([[0.0], km[:-1]])
    return float(max(np.max(np.abs(cdf(t) - km)), np.max(np.abs(cdf(t - 1.0) - before))))


def km_cdf(observed: np.ndarray, censored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier estimate of P(T <= t): its jump points t and values (scipy.stats.ecdf)."""
    data = stats.CensoredData(uncensored=np.asarray(observed, float), right=np.asarray(censored, float))
    cdf = stats.ecdf(data).cdf
    return np.asarray(cdf.quantiles, float), np.asarray(cdf.probabilities, float)


def fit_gamma_T(observed: np.ndarray, censored: np.ndarray) -> dict[str, Any]:
    """Maximum-likelihood T ~ Gamma(K, rate) (and Exponential, K = 1) with right censoring.

    One pooled fit over all prompts (the per-prompt T | x of the theory mixed over prompts).
    Goodness of fit: the sup-distance between the fitted CDF and the Kaplan-Meier estimate over
    whole tokens up to the largest T seen (T counts tokens, so the fit is read as the law of
    ceil(X), whose CDF at a whole t is the Gamma CDF at t). With the Exponential, the mean
    (sum observed + sum censored) / n_observed is the pooled E_T of the same table.
    """
    obs = np.asarray(observed, dtype=float)
    cens = np.asarray(censored, dtype=float)
    if len(obs) == 0:
        raise ValueError("no correct answer in the rollout table, so no T is observed and the "
                         "Gamma model of T cannot be fitted")
    data = stats.CensoredData(uncensored=obs, right=cens)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        K, _, scale = stats.gamma.fit(data, floc=0)
        _, e_scale = stats.expon.fit(data, floc=0)
    t, km = km_cdf(obs, cens)
    gamma, expon = stats.gamma(K, scale=scale), stats.expon(scale=e_scale)
    return {
        "K": float(K), "rate": float(1.0 / scale), "mean": float(K * scale),
        "n_observed": int(len(obs)), "n_censored": int(len(cens)),
        "sup_distance": _sup_distance(gamma.cdf, t, km),
        "expon_rate": float(1.0 / e_scale), "expon_mean": float(e_scale),
        "expon_sup_distance": _sup_distance(expon.cdf, t, km),
    }


def fit_gamma(df: pd.DataFrame) -> dict[str, Any]:
    """fit_gamma_T on the restart-semantics T of a rollout table (see restart_T)."""
    return fit_gamma_T(*restart_T(df))


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


def plan(df: pd.DataFrame, target_xi: float, group_size: int,
         reward: str = "within") -> dict[str, Any]:
    """The horizon for a target xi: H = max(1, round(target_xi * E_T)), with p, p(1-p), P_inf at H.

    reward_mean, reward_var and p_informative are those of `reward` (reward_curves); for `within`
    reward_mean = p and the rest is p(1-p) and the unbiased P_inf, as always.

    If H is above the table's cap the data cannot measure p there: the predictions are None,
    `extrapolated` is True and `warning` says why (sample again with a larger max_tokens).
    """
    if target_xi is None or not math.isfinite(target_xi) or target_xi <= 0:
        raise ValueError(f"target xi must be a finite number > 0, got {target_xi!r}")
    G = _check_group_size(group_size)
    _check_reward(reward)
    E_T = pooled_E_T(df)
    if not math.isfinite(E_T):
        raise ValueError("no attempt in the rollout table is correct, so E[T] is infinite and "
                         "no finite horizon reaches the target xi")
    H = horizon_for(target_xi, E_T)
    cap = table_cap(df)
    out: dict[str, Any] = {"target_xi": float(target_xi), "H": H, "xi": H / E_T, "E_T": E_T,
                           "group_size": G, "reward": reward, "max_tokens": cap,
                           "extrapolated": H > cap, "warning": None}
    if H > cap:
        out.update(p=None, reward_mean=None, reward_var=None, p_informative=None,
                   p_informative_pooled=None)
        out["warning"] = (f"H={H} is above the table's cap max_tokens={cap}; p(H), reward variance "
                          f"and P_inf cannot be measured there (sample with max_tokens >= {H})")
        return out
    row = _reward_columns(curves(df, [H], G, E_T=E_T), df, G, reward).iloc[0]
    out.update({c: float(row[c]) for c in ("p", "reward_mean", "reward_var", "p_informative",
                                           "p_informative_pooled")})
    out["p_informative_estimator"], out["warning"] = p_inf_estimator(df, G)
    return out


def summarize(df: pd.DataFrame, horizons: Iterable[int] | None = None, group_size: int = 8,
              n_bootstrap: int = 1000, ci_level: float = 0.95, seed: int = 0,
              deficient_below: float = 0.5, ample_above: float = 3.0,
              reward: str = "within") -> dict[str, Any]:
    """The summary `relbudget xi` prints (docs/pipeline.md, "The command line"), JSON-safe (inf
    and nan become None).

    Both readings of T: `E_T` (restart, behind every xi) and `E_T_within` (within one completion,
    with `unsolved_share_within`; see within_E_T), and per horizon `xi` and `xi_within`.
    horizons=None uses summary_horizons(cap). Per horizon, reward_mean, reward_var and
    p_informative are those of `reward` (for `within`: p, p(1-p) and P_inf); p and
    p_informative_pooled (1 - p^G - (1-p)^G) always refer to the binary p(H).
    """
    _check_reward(reward)
    cap = table_cap(df)
    H = check_horizons(df, summary_horizons(cap) if horizons is None else horizons)
    pp = per_prompt(df)
    E_T = pooled_E_T(df)
    low, high = ratio_ci(pp["consumed_sum"].to_numpy(), pp["hits"].to_numpy(),
                         n_resamples=n_bootstrap, level=ci_level, seed=seed)
    solved = pp["solved"].to_numpy()
    cv = _reward_columns(curves(df, H, group_size, E_T=E_T), df, group_size, reward)
    within = within_summary(df, n_bootstrap, ci_level, seed)
    estimator, warning = p_inf_estimator(df, group_size)
    rows = []
    for c in cv.itertuples(index=False):
        rows.append({"H": int(c.H), "xi": c.xi, "xi_within": float(c.H / within["E_T_within"]),
                     "p": c.p, "reward_mean": c.reward_mean,
                     "reward_var": c.reward_var,
                     "p_informative": c.p_informative,
                     "p_informative_pooled": c.p_informative_pooled,
                     "regime": regime_of(c.xi, deficient_below, ample_above)})
    return to_json_safe({
        "E_T": E_T,
        "E_T_ci": [low, high],
        "E_T_prompt_mean": float(pp.loc[solved, "E_T"].mean()) if solved.any() else None,
        "unsolved_share": float(1.0 - solved.mean()),
        **within,
        "n_prompts": len(pp),
        "n_attempts": len(df),
        "n_hits": int(pp["hits"].sum()),
        "horizons": rows,
        "max_tokens": cap,
        "group_size": int(group_size),
        "p_informative_estimator": estimator,
        "p_informative_warning": warning,
        "reward": reward,
        "ci_level": float(ci_level),
        "ci_method": CI_METHOD,
        "n_bootstrap": int(n_bootstrap),
    })
