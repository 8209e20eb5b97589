"""Per-prompt horizons H_x and the xi-band prompt filter, both from the base policy's rollouts.

- `per_prompt_caps`: H_x = target_xi * E~[T|x], where E~[T|x] = (consumed_sum + m * E_T) /
  (hits + m) shrinks the per-prompt renewal estimate toward the pooled E_T with m pseudo-hits
  (`train.per_prompt.shrink`): a prompt with one lucky hit does not get a tiny H. Prompts without
  a correct base attempt get h_max or are dropped (`unsolved`); prompts the rollout table does not
  cover get target_xi * E_T. Clamped to [h_min, h_max].
- `filter_prompts`: keep prompts whose xi_x = H / E[T|x] lies in [lo, hi] (an unsolved prompt has
  xi_x = 0; a prompt the table does not cover is dropped and counted).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from relbudget.measure import estimators as est
from relbudget.core.params import PerPromptParams, PromptFilterParams

log = logging.getLogger(__name__)
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def per_prompt_caps(rollouts: pd.DataFrame, prompts: pd.DataFrame,
                    pp: PerPromptParams) -> tuple[pd.DataFrame, dict]:
    """(prompts kept, with a column `H_x`; summary with the distribution of H_x)."""
    E_T = est.pooled_E_T(rollouts)
    if not math.isfinite(E_T):
        raise ValueError("per_prompt budgets: no correct attempt in the base rollouts, so E[T] "
                         "is infinite and no H_x can be derived")
    pp_df = est.per_prompt(rollouts).set_index("prompt_id")
    ids = prompts["prompt_id"].astype(str)
    hits = ids.map(pp_df["hits"]).fillna(0).to_numpy(float)
    cons = ids.map(pp_df["consumed_sum"]).fillna(0).to_numpy(float)
    covered = ids.isin(pp_df.index).to_numpy()
    unsolved = covered & (hits == 0)
    m = pp.shrink
    with np.errstate(divide="ignore", invalid="ignore"):
        shrunk = np.where(hits + m > 0, (cons + m * E_T) / (hits + m), E_T)
    shrunk = np.where(covered, shrunk, E_T)
    H = np.clip(np.rint(pp.target_xi * shrunk), pp.h_min, pp.h_max).astype(np.int64)
    H = np.where(unsolved, pp.h_max, H)
    keep = ~unsolved if pp.unsolved == "drop" else np.ones(len(H), bool)
    out = prompts.loc[keep].copy()
    out["H_x"] = H[keep]
    if out.empty:
        raise ValueError(f"per_prompt budgets: every one of the {len(prompts)} training prompts "
                         "is unsolved by the base policy and train.per_prompt.unsolved is 'drop'")
    q = np.quantile(out["H_x"], QUANTILES)
    summary = {"E_T": float(E_T), "n_prompts": int(len(prompts)), "n_kept": int(len(out)),
               "n_unsolved": int(unsolved.sum()), "n_uncovered": int((~covered).sum()),
               "H_x_mean": float(out["H_x"].mean()),
               **{f"H_x_q{int(round(p * 100)):02d}": int(v) for p, v in zip(QUANTILES, q)}}
    log.info("per-prompt horizons: %s", summary)
    return out, summary


def filter_prompts(rollouts: pd.DataFrame, prompts: pd.DataFrame, pf: PromptFilterParams,
                   H: int) -> tuple[pd.DataFrame, dict]:
    """(prompts whose xi_x at H lies in the band, counts). Raises when none is kept."""
    H = int(pf.H or H)
    lo, hi = pf.xi_band
    pp_df = est.per_prompt(rollouts).set_index("prompt_id")
    ids = prompts["prompt_id"].astype(str)
    e_t = ids.map(pp_df["E_T"])
    covered = e_t.notna().to_numpy()
    xi_x = (H / e_t.astype(float)).to_numpy()  # unsolved: E[T|x] = inf, xi_x = 0; uncovered: nan
    keep = covered & (xi_x >= lo) & (xi_x <= hi)
    counts = {"filter_H": H, "filter_lo": float(lo), "filter_hi": float(hi),
              "n_prompts": int(len(prompts)), "n_kept": int(keep.sum()),
              "n_uncovered": int((~covered).sum())}
    if not keep.any():
        seen = (f"xi_x of the others ranges {xi_x[covered].min():.3g} .. {xi_x[covered].max():.3g}"
                if covered.any() else "no prompt is in the base rollouts")
        raise ValueError(
            f"train.prompt_filter kept no prompt: none of the {len(prompts)} training prompts has "
            f"xi_x = H / E[T|x] in [{lo:g}, {hi:g}] at H = {H} ({counts['n_uncovered']} not in the "
            f"base rollouts; {seen}); widen the band or change H")
    log.info("prompt filter: kept %d of %d prompts (xi_x in [%g, %g] at H=%d)", keep.sum(),
             len(prompts), lo, hi, H)
    return prompts.loc[keep].copy(), counts
