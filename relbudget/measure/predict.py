"""Predict learning efficiency over xi from the base policy's rollouts alone, before any training
(docs/definitions.md, "Predicting the peak before training", states the model and its
assumptions).

GRPO trains at cap H in optimizer steps of n prompts x G completions. Per step:

- its cost is the tokens it generates, n * G * c(H), where c(H) is the mean tokens of one
  completion at cap H with the episode ending at the first correct answer (read off the table);
- its learning signal comes from the m informative groups (mixed rewards) among the n prompts,
  m ~ Binomial(n, P_inf(H)). Adam divides each coordinate's step by the root mean square of its
  gradient, and with a few groups per step that gradient is mostly noise, so the step's useful
  part grows as sqrt(m) (the mean of m noisy group gradients: signal m, noise sqrt(m)), not as m.

The predicted efficiency at H is E[sqrt(m / n)] / (n * G * c(H)), signal per generated token,
reported normalised to its maximum over the xi grid (its unit, how far one step moves the policy,
is what a pilot run would measure; the normalised shape and the best xi do not need it). The
static baseline is P_inf(H) / c(H): informative groups per generated token, as if each group
counted in proportion.

Above the table's cap the data say nothing about new correct answers: the predictor assumes none
(p and P_inf stay at their values at the cap) and lets the completions that hit the cap run on
to H, so c(H) grows by the share of `length` misses per extra token.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from relbudget.measure import estimators as est

PREDICTORS = ("sqrt_informative", "static")


def tokens_at(df: pd.DataFrame, H: int) -> float:
    """c(H): mean generated tokens of one completion at cap H, the episode ending at the first
    correct answer. Up to the table's cap a completion cut at H is a prefix of the sampled one;
    above it, only the completions that ran into the cap without a correct answer grow."""
    fct = df["first_correct_token"].to_numpy(dtype=float, na_value=np.nan)
    n = df["n_tokens"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        hit = fct <= H
    cap = est.table_cap(df)
    length_miss = np.isnan(fct) & (df["stop_reason"].to_numpy() == "length")
    grown = np.where(length_miss & (H > cap), H, np.minimum(n, H))
    return float(np.mean(np.where(hit, fct, grown)))


def signal_at(p_informative: float, n_prompts: int) -> float:
    """E[sqrt(m / n)] for m ~ Binomial(n, P_inf): the useful part of one Adam step, in units of
    the step whose n groups are all informative."""
    m = np.arange(n_prompts + 1)
    return float(np.sum(stats.binom.pmf(m, n_prompts, p_informative) * np.sqrt(m / n_prompts)))


def _informative(df: pd.DataFrame, H: int, group_size: int) -> float:
    """P_inf at H; at the table's cap for H above it (no new correct answers assumed there)."""
    h = min(int(H), est.table_cap(df))
    return float(est.curves(df, [h], group_size, E_T=math.nan)["p_informative"].iloc[0])


def predict(df: pd.DataFrame, xis: Iterable[float], group_size: int,
            prompts_per_step: int) -> dict:
    """The predicted efficiency curve over `xis` and the predicted best xi.

    Returns {"E_T", "best_xi", "static_best_xi", "prediction_tokens" (what sampling the table
    generated: the prediction's cost), "curve": [{xi, H, p_informative, tokens, predicted,
    static}]}, `predicted` and `static` each normalised to their maximum over the grid
    (ties go to the smaller xi, as the measured peak's). ValueError for a table without a
    correct answer (E[T] infinite: no xi maps to a finite H).
    """
    E_T = est.pooled_E_T(df)
    if not math.isfinite(E_T):
        raise ValueError("no attempt in the rollout table is correct, so E[T] is infinite and no "
                         "efficiency over xi can be predicted")
    rows = []
    for xi in sorted(set(float(x) for x in xis)):
        H = est.horizon_for(xi, E_T)
        p_inf, c = _informative(df, H, group_size), tokens_at(df, H)
        per_token = prompts_per_step * group_size * c
        rows.append({"xi": xi, "H": H, "p_informative": p_inf, "tokens": c,
                     "predicted": signal_at(p_inf, prompts_per_step) / per_token,
                     "static": p_inf / c})
    curve = pd.DataFrame(rows)
    if not curve["predicted"].max() > 0:  # a "best xi" of an all-zero curve would be a guess
        raise ValueError(f"no xi of {curve['xi'].tolist()} predicts any learning signal (no "
                         f"informative group at H = {curve['H'].tolist()}); give larger xi values")
    for col in ("predicted", "static"):
        top = curve[col].max()
        curve[col] = curve[col] / top if top > 0 else 0.0
    return {"E_T": E_T, "best_xi": _argmax_xi(curve, "predicted"),
            "static_best_xi": _argmax_xi(curve, "static"),
            "prediction_tokens": int(df["n_tokens"].sum()),
            "curve": curve.to_dict(orient="records")}


def _argmax_xi(curve: pd.DataFrame, col: str) -> float:
    return float(curve["xi"].iloc[int(np.argmax(curve[col].to_numpy()))])


def score(predicted: Iterable[float], measured: Iterable[float], predicted_best_xi: float,
          interval: tuple[float, float]) -> dict:
    """How a predicted curve matches a measured one on the same xi grid: Spearman's rank
    correlation, whether the predicted best xi lies in the measured peak's interval, and the mean
    absolute error of the two curves each divided by its own maximum."""
    pred = np.asarray(list(predicted), dtype=float)
    meas = np.asarray(list(measured), dtype=float)
    if len(pred) != len(meas):
        raise ValueError(f"predicted ({len(pred)}) and measured ({len(meas)}) curves need the "
                         "same xi grid")
    low, high = interval
    # a rank correlation needs two points that differ on both curves; a one-xi sweep (a smoke
    # run) or a flat curve has none
    defined = len(pred) >= 2 and np.ptp(pred) > 0 and np.ptp(meas) > 0
    rho = stats.spearmanr(pred, meas).statistic if defined else float("nan")
    return {"spearman": None if np.isnan(rho) else float(rho),
            # None where the measured peak has no interval (too few seeds or xi)
            "peak_inside": None if low is None or high is None
            else bool(low <= predicted_best_xi <= high),
            # None where a curve has no positive maximum to divide by (nothing learned)
            "mae_normalised": None if pred.max() <= 0 or meas.max() <= 0
            else float(np.mean(np.abs(pred / pred.max() - meas / meas.max())))}
