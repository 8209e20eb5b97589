"""The report's numbers: each trained policy against the base policy, the xi sweep per xi, its
peak with a bootstrap interval over seeds.

Learning efficiency of a trained policy = gain in accuracy at the common H_eval per 100k generated
completion tokens, and the fall in E[T] (censored at H_eval) per 100k tokens, both against the
base policy evaluated the same way (relbudget.measure.metrics). The sweep (params `sweep`, one DVC
stage per xi x seed cell) gives these per cell; per xi they are reported as mean +- standard error
over seeds, and the xi of the peak mean gain comes with a bootstrap interval over seeds (seeds
resampled with replacement within each xi, the argmax recomputed, a percentile interval of the
argmax on the xi grid).

Numbers only, no wording: fixed_best@SEED reads the peak from here, so rewording the report
(relbudget.report.render) reruns the report alone.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from relbudget.core.errors import DataError
from relbudget.core.params import cell_name
from relbudget.core.schemas import HISTORY, read_table
from relbudget.measure.estimators import hit_within, table_cap
from relbudget.measure.metrics import efficiency, final_xi_t

PEAK_RESAMPLES = 2000
PEAK_LEVEL = 0.95
PEAK_SEED = 0
SWEEP_MEANS = ["gain_per_100k", "E_T_fall_per_100k", "acc_H_eval", "first_answer_acc", "gain",
               "first_answer_gain", "frac_informative_mean", "clipped_ratio_mean",
               "attempts_per_completion", "tokens_after_correct_mean", "xi_t_slope_per_10k"]
# a regime's row: these, mean and standard error over the seeds of the cells at its xi
REGIME_MEANS = [*SWEEP_MEANS, "acc_own_H", "E_T", "steps", "generated_tokens", "xi_t_final"]


def xi_t_slope(history: pd.DataFrame) -> float | None:
    """Fitted slope of xi_t per 10k generated tokens (least squares of xi_t on tokens / 1e4)."""
    h = history[["cum_generated_tokens", "xi_t"]].dropna()
    h = h[np.isfinite(h["xi_t"])]
    if len(h) < 3 or h["cum_generated_tokens"].nunique() < 2:
        return None
    return float(stats.linregress(h["cum_generated_tokens"] / 1e4, h["xi_t"]).slope)


def _tokens(history: pd.DataFrame) -> int:
    """Generated completion tokens of a run: the last row's running total (0 without a step)."""
    return int(history["cum_generated_tokens"].iloc[-1]) if len(history) else 0


def _training(history: pd.DataFrame) -> dict:
    """Means over training of the history's per-step figures."""
    def mean(col: str) -> float | None:
        return float(history[col].mean()) if col in history and history[col].notna().any() else None

    return {"steps": int(history["step"].iloc[-1]) if len(history) else 0,
            "generated_tokens": _tokens(history),
            "frac_informative_mean": mean("frac_informative"),
            "clipped_ratio_mean": mean("clipped_ratio"),
            "attempts_per_completion": mean("attempts_per_completion"),
            "tokens_after_correct_mean": mean("tokens_after_correct"),
            "xi_t_final": final_xi_t(history),
            "xi_t_slope_per_10k": xi_t_slope(history)}


def regime_rows(regimes: dict[str, float], budgets: dict, table: pd.DataFrame,
                base_eval: dict, base_rollouts: pd.DataFrame) -> list[dict]:
    """The named regimes, read from the sweep: each regime's row is the mean over the seeds of
    the cells at its xi (`COL_err`: their standard error), so it is the sweep's own number at that
    xi, never a separate run's. `budgets`: budgets.yaml (its H and predicted informative share);
    `base_rollouts`: the base policy's evaluation pass, read at the regime's own H."""
    base = base_eval["at"]["H_eval"]
    agg = by_xi(table, REGIME_MEANS).set_index("xi")  # the sweep's own aggregation
    cols = [c for c in REGIME_MEANS if c in agg]
    rows = []
    for name, xi in regimes.items():
        if xi not in agg.index:
            raise DataError(f"regime {name!r} (xi {xi:g}) has no sweep cell; it must be one of "
                            "params sweep.xi", [])
        if name not in budgets:
            raise DataError(f"regime {name!r} is not in budgets.yaml ({', '.join(budgets)}); rerun "
                            "the xi stage (dvc repro xi)", [])
        r, b = agg.loc[xi], budgets[name]
        rows.append({
            "regime": name, "target_xi": xi, "xi": b["xi"], "H": int(r["H"]),
            "n_seeds": int(r["n_seeds"]),
            "predicted_p_informative": b.get("p_informative"),
            # NaN (-> None) where no seed has the figure, or one seed gives no standard error
            **{k: None if pd.isna(r[k]) else float(r[k]) for c in cols for k in (c, f"{c}_err")},
            "acc_own_H_base": base_accuracy_at(base_rollouts, int(r["H"])),
            "acc_H_eval_base": base["accuracy"],
            "first_answer_acc_base": base.get("first_answer_accuracy"), "E_T_base": base["E_T"]})
    return rows


def base_accuracy_at(rollouts: pd.DataFrame, H: int) -> float | None:
    """The base policy's accuracy at H from its one evaluation pass (None past that pass's cap,
    where it would be extrapolated); the accuracy relbudget.measure.evaluation reports at H."""
    if rollouts.empty or H > table_cap(rollouts):
        return None
    return float(hit_within(rollouts, H).mean())


def cell_row(ev: dict, history: pd.DataFrame, base_eval: dict) -> dict:
    """One sweep cell (its eval.json and history) against the base policy at H_eval."""
    at, base = ev["at"]["H_eval"], base_eval["at"]["H_eval"]
    train = _training(history)
    first, first_base = at.get("first_answer_accuracy"), base.get("first_answer_accuracy")
    return {"xi": float(ev["xi"]), "seed": int(ev["seed"]), "H": int(ev["H"]),
            **efficiency(at, base, train["generated_tokens"]),
            "acc_H_eval": at["accuracy"], "first_answer_acc": first,
            "acc_own_H": ev["at"].get("H_own", {}).get("accuracy"),
            "first_answer_gain": None if first is None or first_base is None else first - first_base,
            "E_T": at["E_T"], **train}


def read_eval(path: Path) -> dict:
    """An eval.json; a truncated or hand-edited one is one line naming it and the stage to rerun."""
    try:
        ev = json.loads(path.read_text())
        float(ev["xi"]), int(ev["seed"]), ev["at"]["H_eval"]
        return ev
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path} is damaged ({type(err).__name__}: {str(err)[:100]}); rerun the "
                        f"stage that writes it (dvc repro sweep@{path.parent.name})", []) from None


def load_cells(paths, sweep) -> list[tuple[dict, pd.DataFrame]]:
    """(eval.json, history) of every cell of the grid; a folder named as the cell wins over
    another one with the same xi and seed (e.g. `xi1-s0` beside `xi1.0-s0`)."""
    root = Path(paths.sweep)
    found: dict[tuple[float, int], tuple[str, dict]] = {}
    for f in sorted(map(Path, glob.glob(paths.cell_eval("*")))):
        ev = read_eval(f)
        key = (float(ev["xi"]), int(ev["seed"]))
        if key not in found or f.parent.name == cell_name(*key):
            found[key] = (f.parent.name, ev)
    cells, missing = [], []
    for _, xi, seed in sweep.cells():
        if (xi, seed) not in found:
            missing.append(cell_name(xi, seed))
            continue
        folder, ev = found[(xi, seed)]
        history = read_table(paths.cell_history(folder), HISTORY)
        if history.empty:  # a cell trains at least one step: an empty history is damage
            raise DataError(f"{paths.cell_history(folder)} holds no training step; rerun the "
                            f"stage that writes it (dvc repro sweep@{folder})", [])
        cells.append((ev, history))
    if missing:
        raise FileNotFoundError(f"sweep cells without results under {root}: {', '.join(missing)}; "
                                "run their sweep stages first")
    return cells


def sweep_table(cells: list[tuple[dict, pd.DataFrame]], base_eval: dict) -> pd.DataFrame:
    """One row per cell, ordered by (xi, seed)."""
    rows = [cell_row(ev, h, base_eval) for ev, h in cells]
    return pd.DataFrame(rows).sort_values(["xi", "seed"], ignore_index=True)


def by_xi(table: pd.DataFrame, columns: list[str] = SWEEP_MEANS) -> pd.DataFrame:
    """Per xi: mean and standard error over seeds (`COL_err`; NaN with one seed) of each figure
    of `columns` the table has."""
    cols = [c for c in columns if c in table]
    num = table[["xi", *cols]].astype(float)
    g = num.groupby("xi")
    out = g[cols].mean().join(g[cols].sem(ddof=1).add_suffix("_err"))
    out["H"] = table.groupby("xi")["H"].first()
    out["n_seeds"] = table.groupby("xi")["seed"].nunique()
    return out.reset_index()


MIN_SEEDS, MIN_XI = 2, 3  # below these the report gives the peak without an interval
MATCH_RATIO = 2.0  # cells whose generated tokens differ more than this are not compute-matched


def not_compute_matched(table: pd.DataFrame) -> str | None:
    """Why the sweep's cells cannot be compared per token (None when they can): the most and the
    fewest generated tokens of a cell differ by more than MATCH_RATIO (a cell stopped early by
    max_steps, or cells from runs with another token budget)."""
    if "generated_tokens" not in table:  # a table of figures only (no training history)
        return None
    tokens = table["generated_tokens"].astype(float)
    lo, hi = tokens.min(), tokens.max()
    if lo > 0 and hi <= MATCH_RATIO * lo:
        return None
    few = table.loc[tokens.idxmin()]
    return (f"NOT COMPUTE-MATCHED: cells trained on {lo:,.0f} (xi {few['xi']:g}, seed "
            f"{int(few['seed'])}) to {hi:,.0f} generated tokens; rerun the short cells with "
            "sweep.token_budget reachable (raise train.max_steps)")


def peak_xi(table: pd.DataFrame, col: str = "gain_per_100k", n_resamples: int = PEAK_RESAMPLES,
            level: float = PEAK_LEVEL, seed: int = PEAK_SEED) -> dict:
    """The xi of the highest mean `col` over seeds, with a bootstrap interval over seeds.

    Each resample draws, within every xi, as many seeds as it has, with replacement; the argmax xi
    of the resampled means is recorded; the interval is the (1-level)/2 and (1+level)/2 quantiles
    of those argmaxes (inverted CDF, so its ends are xi values of the grid). Ties go to the smaller
    xi. Fixed seed: the same table gives the same interval."""
    unmatched = not_compute_matched(table)
    groups = [(float(x), g[col].astype(float).to_numpy()) for x, g in table.groupby("xi")]
    groups = [(x, v[np.isfinite(v)]) for x, v in groups]
    groups = [(x, v) for x, v in groups if len(v)]
    if not groups:
        raise ValueError(f"no finite {col} in the sweep table")
    xis = np.array([x for x, _ in groups])
    best = xis[int(np.argmax([v.mean() for _, v in groups]))]
    rng = np.random.default_rng(seed)
    means = np.stack([v[rng.integers(0, len(v), size=(n_resamples, len(v)))].mean(axis=1)
                      for _, v in groups], axis=1)  # (resamples, xi)
    draws = xis[np.argmax(means, axis=1)]
    seeds = min(len(v) for _, v in groups)
    if seeds < MIN_SEEDS or len(groups) < MIN_XI:
        # one seed resamples to itself and two xi values bound nothing: an "interval" [x, x]
        # would read as certainty. No interval, and so no verdict on the paper's band.
        unmatched = unmatched or (f"{seeds} seed(s) and {len(groups)} xi value(s); an interval "
                                  f"needs at least {MIN_SEEDS} seeds per xi and {MIN_XI} xi values")
    if unmatched:
        return {"xi": float(best), "low": None, "high": None, "level": level,
                "n_resamples": n_resamples, "share_at_peak": None, "withheld": unmatched}
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return {"xi": float(best), "low": float(low), "high": float(high), "level": level,
            "n_resamples": n_resamples, "share_at_peak": float(np.mean(draws == best))}


# ---------------------------------------------------------------- the peak under each choice


def horizon_choices(base_eval: dict, cells: list[tuple[dict, pd.DataFrame]]) -> list[str]:
    """The evaluation horizons that the base policy and every cell were read at: H_eval first,
    then the multiples of E[T] (`xM`, evaluate.h_multiples) by their H."""
    names = [n for n in base_eval["at"] if n == "H_eval" or n.startswith("x")]
    names = [n for n in names if all(n in ev["at"] for ev, _ in cells)]
    return sorted(names, key=lambda n: (n != "H_eval", base_eval["at"][n].get("H", 0)))


def gains_at(cells: list[tuple[dict, pd.DataFrame]], base_eval: dict, name: str) -> pd.DataFrame:
    """One row per cell (xi, seed, H, gain, gain_per_100k), with accuracy read at the named
    horizon `name` of the same evaluation pass, against the base policy's at the same horizon."""
    return pd.DataFrame([{"xi": float(ev["xi"]), "seed": int(ev["seed"]), "H": int(ev["H"]),
                          **efficiency(ev["at"][name], base_eval["at"][name], _tokens(h))}
                         for ev, h in cells])


def robustness(cells: list[tuple[dict, pd.DataFrame]], base_eval: dict,
               E_T_within: float | None) -> list[dict]:
    """The peak xi with its bootstrap interval (peak_xi) under each choice: every evaluation
    horizon the cells were read at, and each reading of T. Under the within-one-completion
    reading a cell's xi is its H / E_T_within (the base policy's), so the argmax cell is the same
    and only its xi changes; it is left out when E_T_within is unknown (an older xi stage)."""
    rows = []
    for name in horizon_choices(base_eval, cells):
        table = gains_at(cells, base_eval, name)
        peak = peak_xi(table)
        at = {"h_eval": name, "H_eval": base_eval["at"][name].get("H")}
        ends = {"peak_xi": peak["xi"], "low": peak["low"], "high": peak["high"]}
        rows.append({"choice": f"{name} / restart", **at, "reading": "restart", **ends})
        if E_T_within:
            H_of = table.groupby("xi")["H"].first()  # the grid xi -> the cell's H
            rows.append({"choice": f"{name} / within", **at, "reading": "within",
                         **{k: None if v is None else float(H_of[v] / E_T_within)
                            for k, v in ends.items()}})
    return rows
