"""The report's analysis: regimes against the base policy, the xi sweep, its peak, the Markdown.

Learning efficiency of a trained policy = gain in accuracy at the common H_eval per 100k generated
completion tokens, and the fall in E[T] (censored at H_eval) per 100k tokens, both against the
base policy evaluated the same way. The sweep (params `sweep`, one DVC stage per xi x seed cell)
gives these per cell; per xi they are reported as mean +- standard error over seeds, and the xi of
the peak mean gain comes with a bootstrap interval over seeds (seeds resampled with replacement
within each xi, the argmax recomputed, a percentile interval of the argmax on the xi grid).

Pure functions of the stage's inputs (dicts read from JSON, history tables); no file access but
`html_page`, which reads the PNGs it embeds.
"""

from __future__ import annotations

import base64
import glob
import json
import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd
from scipy import stats

from relbudget.params import cell_name
from relbudget.schemas import HISTORY, read_table

PER = 1e5  # efficiencies are per 100k generated completion tokens
PEAK_RESAMPLES = 2000
PEAK_LEVEL = 0.95
PEAK_SEED = 0
FLAG_MIN_GAIN = 0.01  # a rise in accuracy within H below this is noise, not a flag
SWEEP_MEANS = ["gain_per_100k", "E_T_fall_per_100k", "acc_H_eval", "first_answer_acc", "gain",
               "first_answer_gain", "frac_informative_mean", "clipped_ratio_mean",
               "attempts_per_completion", "tokens_after_correct_mean", "xi_t_slope_per_10k"]


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else math.nan


def efficiency(at: dict, base_at: dict, tokens: int) -> dict:
    """Gain in accuracy and fall in E[T] at H_eval against the base, per 100k generated tokens."""
    per = PER / max(int(tokens), 1)
    gain = at["accuracy"] - base_at["accuracy"]
    fall = _num(base_at.get("E_T")) - _num(at.get("E_T"))  # nan where either is infinite
    return {"gain": gain, "gain_per_100k": gain * per,
            "E_T_fall_per_100k": fall * per if math.isfinite(fall) else None}


def gain_metrics(at: dict[str, dict], base_eval: str | Path, tokens: int) -> dict:
    """`gain`, `gain_per_100k`, `E_T_fall_per_100k` at H_eval against the base policy's
    evaluation file: what every run that trained (train cells, arms, evaluate@REGIME) logs under
    the same keys, so the MLflow runs table sorts trained policies by the headline efficiency."""
    base = json.loads(Path(base_eval).read_text())["at"]["H_eval"]
    return efficiency(at["H_eval"], base, tokens)


FINAL_STEPS = 10  # "final xi_t" = the mean over the last FINAL_STEPS steps of training
HTML_STYLE = ("body{font-family:sans-serif;max-width:72em;margin:1em auto}"
              "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
              "img{max-width:100%}")


def html_page(markdown_text: str, folder: str | Path) -> str:
    """report.md as one self-contained HTML page: tables rendered, and every PNG it links
    (relative to `folder`) embedded as a data: URI. MLflow's artifact viewer shows a .md file as
    plain text, but renders HTML with its images."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_text)

    def embed(m: re.Match) -> str:
        f = Path(folder) / unquote(m.group(1))
        if f.suffix.lower() != ".png" or not f.is_file():
            return m.group(0)
        return f'src="data:image/png;base64,{base64.b64encode(f.read_bytes()).decode()}"'

    body = re.sub(r'src="([^"]+)"', embed, body)
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>relbudget report</title>"
            f"<style>{HTML_STYLE}</style></head>\n<body>\n{body}</body></html>\n")


def final_xi_t(history: pd.DataFrame) -> float | None:
    """The one definition of "final xi_t" (report table, metrics.json, the train run's
    summary/final_xi_t): the mean of the finite per-step xi_t = H / E_t[T] over the last
    FINAL_STEPS steps. A step's xi_t comes from that step's own few rollouts, so the last step
    alone is noisy; steps without a hit (xi_t undefined) are skipped. None when none is finite."""
    xi_t = history["xi_t"].tail(FINAL_STEPS).astype(float)
    xi_t = xi_t[np.isfinite(xi_t)]
    return float(xi_t.mean()) if len(xi_t) else None


def xi_t_slope(history: pd.DataFrame) -> float | None:
    """Fitted slope of xi_t per 10k generated tokens (least squares of xi_t on tokens / 1e4)."""
    h = history[["cum_generated_tokens", "xi_t"]].dropna()
    h = h[np.isfinite(h["xi_t"])]
    if len(h) < 3 or h["cum_generated_tokens"].nunique() < 2:
        return None
    return float(stats.linregress(h["cum_generated_tokens"] / 1e4, h["xi_t"]).slope)


def _training(history: pd.DataFrame) -> dict:
    """Means over training of the history's per-step figures."""
    def mean(col: str) -> float | None:
        return float(history[col].mean()) if col in history and history[col].notna().any() else None

    return {"steps": int(history["step"].iloc[-1]) if len(history) else 0,
            "generated_tokens": int(history["cum_generated_tokens"].iloc[-1]) if len(history) else 0,
            "frac_informative_mean": mean("frac_informative"),
            "clipped_ratio_mean": mean("clipped_ratio"),
            "attempts_per_completion": mean("attempts_per_completion"),
            "tokens_after_correct_mean": mean("tokens_after_correct"),
            "xi_t_final": final_xi_t(history),
            "xi_t_slope_per_10k": xi_t_slope(history)}


def regime_row(name: str, budget: dict, ev: dict, history: pd.DataFrame, base_eval: dict) -> dict:
    """Headline numbers of one named regime against the base policy at H_eval."""
    at, base = ev["at"], base_eval["at"]["H_eval"]
    train = _training(history)
    return {
        "regime": name, "target_xi": budget["target_xi"], "xi": budget["xi"], "H": budget["H"],
        "predicted_p_informative": budget.get("p_informative"), **train,
        "acc_own_H_base": base_eval["at"].get(f"H_{name}", {}).get("accuracy"),
        "acc_own_H": at["H_own"]["accuracy"],
        "acc_H_eval_base": base["accuracy"], "acc_H_eval": at["H_eval"]["accuracy"],
        "first_answer_acc_base": base.get("first_answer_accuracy"),
        "first_answer_acc": at["H_eval"].get("first_answer_accuracy"),
        **efficiency(at["H_eval"], base, train["generated_tokens"]),
        "E_T_base": base["E_T"], "E_T": at["H_eval"]["E_T"],
        "pass@k": {k: v for k, v in at["H_eval"].items() if k.startswith("pass@")},
    }


def cell_row(ev: dict, history: pd.DataFrame, base_eval: dict) -> dict:
    """One sweep cell (its eval.json and history) against the base policy at H_eval."""
    at, base = ev["at"]["H_eval"], base_eval["at"]["H_eval"]
    train = _training(history)
    first, first_base = at.get("first_answer_accuracy"), base.get("first_answer_accuracy")
    return {"xi": float(ev["xi"]), "seed": int(ev["seed"]), "H": int(ev["H"]),
            **efficiency(at, base, train["generated_tokens"]),
            "acc_H_eval": at["accuracy"], "first_answer_acc": first,
            "first_answer_gain": None if first is None or first_base is None else first - first_base,
            "E_T": at["E_T"], **train}


def load_cells(paths, sweep) -> list[tuple[dict, pd.DataFrame]]:
    """(eval.json, history) of every cell of the grid; a folder named as the cell wins over
    another one with the same xi and seed (e.g. `xi1-s0` beside `xi1.0-s0`)."""
    root = Path(paths.sweep)
    found: dict[tuple[float, int], tuple[str, dict]] = {}
    for f in sorted(map(Path, glob.glob(paths.cell_eval("*")))):
        ev = json.loads(f.read_text())
        key = (float(ev["xi"]), int(ev["seed"]))
        if key not in found or f.parent.name == cell_name(*key):
            found[key] = (f.parent.name, ev)
    cells, missing = [], []
    for _, xi, seed in sweep.cells():
        if (xi, seed) not in found:
            missing.append(cell_name(xi, seed))
            continue
        folder, ev = found[(xi, seed)]
        cells.append((ev, read_table(paths.cell_history(folder), HISTORY)))
    if missing:
        raise FileNotFoundError(f"sweep cells without results under {root}: {', '.join(missing)}; "
                                "run their sweep stages first")
    return cells


def sweep_table(cells: list[tuple[dict, pd.DataFrame]], base_eval: dict) -> pd.DataFrame:
    """One row per cell, ordered by (xi, seed)."""
    rows = [cell_row(ev, h, base_eval) for ev, h in cells]
    return pd.DataFrame(rows).sort_values(["xi", "seed"], ignore_index=True)


def by_xi(table: pd.DataFrame) -> pd.DataFrame:
    """Per xi: mean and standard error over seeds (`COL_err`; NaN with one seed) of each figure."""
    cols = [c for c in SWEEP_MEANS if c in table]
    num = table[["xi", *cols]].astype(float)
    g = num.groupby("xi")
    out = g[cols].mean().join(g[cols].sem(ddof=1).add_suffix("_err"))
    out["H"] = table.groupby("xi")["H"].first()
    out["n_seeds"] = table.groupby("xi")["seed"].nunique()
    return out.reset_index()


def peak_xi(table: pd.DataFrame, col: str = "gain_per_100k", n_resamples: int = PEAK_RESAMPLES,
            level: float = PEAK_LEVEL, seed: int = PEAK_SEED) -> dict:
    """The xi of the highest mean `col` over seeds, with a bootstrap interval over seeds.

    Each resample draws, within every xi, as many seeds as it has, with replacement; the argmax xi
    of the resampled means is recorded; the interval is the (1-level)/2 and (1+level)/2 quantiles
    of those argmaxes (inverted CDF, so its ends are xi values of the grid). Ties go to the smaller
    xi. Fixed seed: the same table gives the same interval."""
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
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return {"xi": float(best), "low": float(low), "high": float(high), "level": level,
            "n_resamples": n_resamples, "share_at_peak": float(np.mean(draws == best))}


def band_sentence(peak: dict, band: tuple[float, float]) -> str:
    """One plain sentence comparing the measured peak with the paper's band, whatever it is."""
    lo, hi = band
    x = peak["xi"]
    where = "inside" if lo <= x <= hi else ("below" if x < lo else "above")
    overlaps = peak["low"] <= hi and peak["high"] >= lo
    return (f"The most efficient xi in this run is {x:g} (bootstrap {100 * peak['level']:.0f}% "
            f"interval over seeds [{peak['low']:g}, {peak['high']:g}]), {where} the paper's band "
            f"[{lo:g}, {hi:g}]; the interval {'overlaps' if overlaps else 'does not overlap'} "
            "the band.")


def candidate_flags(agg: pd.DataFrame) -> list[str]:
    """Where accuracy within H_eval rose but first-answer accuracy did not: more candidates listed,
    not better first answers."""
    out = []
    for r in agg.itertuples(index=False):
        fa = getattr(r, "first_answer_gain", math.nan)
        if r.gain > FLAG_MIN_GAIN and not (fa > 0):
            out.append(f"xi = {r.xi:g}: accuracy within H_eval rose by {r.gain:+.3f} while "
                       f"first-answer accuracy did not ({fa:+.3f}); the gain comes from listing more "
                       f"candidate answers ({_fmt(r.attempts_per_completion, 2)} per completion in "
                       "training), not from better first answers.")
    return out


def _fmt(v, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _pm(mean, err, nd: int = 3, sign: bool = True) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    m = f"{mean:+.{nd}f}" if sign else f"{mean:.{nd}f}"
    return m + (f" +- {err:.{nd}f}" if err is not None and math.isfinite(err) else "")


def findings(rows: list[dict]) -> list[str]:
    """Plain statements of what the named regimes measured, including regimes that got worse."""
    out = []
    best = max(rows, key=lambda r: r["gain_per_100k"])
    out.append(f"Highest accuracy gain per 100k tokens among the regimes: **{best['regime']}** "
               f"(xi = {best['xi']:.2f}, {best['gain_per_100k']:+.3f} per 100k tokens).")
    for r in rows:
        if r["gain"] < 0 or (r["E_T"] is not None and r["E_T_base"] is not None
                             and r["E_T"] > r["E_T_base"]):
            out.append(f"**{r['regime']}** got worse than the base policy: accuracy at H_eval "
                       f"{r['acc_H_eval_base']:.3f} -> {r['acc_H_eval']:.3f}, E[T] "
                       f"{_fmt(r['E_T_base'], 1)} -> {_fmt(r['E_T'], 1)} "
                       f"(mean share of informative groups {_fmt(r['frac_informative_mean'], 2)}).")
        if r["clipped_ratio_mean"] is not None and r["clipped_ratio_mean"] < 0.001:
            out.append(f"**{r['regime']}**: H = {r['H']} never truncated a training completion "
                       f"(clipped ratio {r['clipped_ratio_mean']:.4f}), so any larger H trains "
                       "the same way: the budget does not bind there.")
        if r["tokens_after_correct_mean"] and r["tokens_after_correct_mean"] > 2:
            out.append(f"**{r['regime']}** keeps writing after its first correct answer: "
                       f"{r['tokens_after_correct_mean']:.1f} tokens on average in training.")
    return out


def _regime_table(rows: list[dict]) -> list[str]:
    lines = ["| regime | xi | H | steps | tokens | informative | acc@H (base -> RL) | "
             "acc@H_eval (base -> RL) | first answer@H_eval (base -> RL) | gain/100k tok | "
             f"E[T] (base -> RL) | xi_t final (last {FINAL_STEPS} steps) | after-correct tokens |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['regime']} | {r['xi']:.2f} | {r['H']} | {r['steps']} | {r['generated_tokens']} | "
            f"{_fmt(r['frac_informative_mean'], 2)} | {_fmt(r['acc_own_H_base'])} -> "
            f"{_fmt(r['acc_own_H'])} | {_fmt(r['acc_H_eval_base'])} -> {_fmt(r['acc_H_eval'])} | "
            f"{_fmt(r['first_answer_acc_base'])} -> {_fmt(r['first_answer_acc'])} | "
            f"{r['gain_per_100k']:+.3f} | {_fmt(r['E_T_base'], 1)} -> {_fmt(r['E_T'], 1)} | "
            f"{_fmt(r['xi_t_final'], 2)} | {_fmt(r['tokens_after_correct_mean'], 1)} |")
    return lines


def _sweep_section(agg: pd.DataFrame, peak: dict, band: tuple[float, float], base_at: dict,
                   gamma: dict | None, gamma_png: str) -> list[str]:
    seeds = int(agg["n_seeds"].max())
    lines = ["## Efficiency against xi (sweep)", "",
             f"{len(agg)} xi values x {seeds} seed(s); mean +- standard error over seeds. Base "
             f"policy at H_eval: accuracy {_fmt(base_at['accuracy'])}, first-answer accuracy "
             f"{_fmt(base_at.get('first_answer_accuracy'))}.", "",
             "| xi | H | gain/100k tok | E[T] fall/100k tok | acc@H_eval | first answer@H_eval | "
             "informative | clipped | attempts/completion | after-correct tokens | "
             "xi_t slope /10k tok |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in agg.to_dict(orient="records"):
        e = lambda c, nd=3, sign=True: _pm(r.get(c), r.get(f"{c}_err"), nd, sign)  # noqa: E731
        lines.append(
            f"| {r['xi']:g} | {int(r['H'])} | {e('gain_per_100k')} | {e('E_T_fall_per_100k', 2)} | "
            f"{e('acc_H_eval', sign=False)} | {e('first_answer_acc', sign=False)} | "
            f"{e('frac_informative_mean', 2, False)} | {e('clipped_ratio_mean', 3, False)} | "
            f"{e('attempts_per_completion', 2, False)} | {e('tokens_after_correct_mean', 1, False)} | "
            f"{e('xi_t_slope_per_10k', 3)} |")
    lines += ["", f"Peak: xi = {peak['xi']:g}, bootstrap {100 * peak['level']:.0f}% interval over "
              f"seeds [{peak['low']:g}, {peak['high']:g}] (the argmax in "
              f"{100 * peak['share_at_peak']:.0f}% of {peak['n_resamples']} resamples).", ""]
    flags = candidate_flags(agg)
    lines += [f"- {f}" for f in flags] or ["No xi raised accuracy within H_eval without raising "
                                           "first-answer accuracy."]
    if gamma and isinstance(gamma.get("K"), (int, float)):
        fit = f", sup-distance of the fit {gamma['sup_distance']:.3f}" if isinstance(
            gamma.get("sup_distance"), (int, float)) else ""
        lines += ["", f"Gamma model of the base policy's T: K = {gamma['K']:.2f}{fit}; beside it, "
                  "the measured xi_t slopes per 10k tokens in the table above. No claim beyond "
                  "what is measured.", "", f"![Gamma fit]({gamma_png})"]
    lines += ["", "![xi_t over training](xi_t_sweep.png)", ""]
    return lines


def render(summary: dict, rows: list[dict], h_eval: int, agg: pd.DataFrame | None = None,
           peak: dict | None = None, band: tuple[float, float] = (1.5, 2.0),
           base_at: dict | None = None, gamma_png: str = "../xi/gamma_fit.png",
           more: list[str] | None = None) -> str:
    """report.md; `more`: further sections (Markdown lines) before the plots."""
    s = summary
    lines = ["# relbudget report", "",
             f"Base policy: E[T] = {_fmt(s['E_T'], 2)} tokens (95% CI {_fmt(s['E_T_ci'][0], 2)} - "
             f"{_fmt(s['E_T_ci'][1], 2)}), unsolved share {s['unsolved_share']:.3f}, "
             f"{s['n_prompts']} prompts x {s['n_attempts'] // max(s['n_prompts'], 1)} attempts at "
             f"cap {s['max_tokens']}.", ""]
    if peak is not None:
        lines += [band_sentence(peak, band), ""]
    lines += ["## What this run measured", ""]
    lines += [f"- {f}" for f in findings(rows)]
    lines += ["", "## Regimes", ""] + _regime_table(rows)
    lines += ["", f"H_eval = {h_eval}; tokens are generated completion tokens (compute-matched "
              "within the regimes and within the sweep); first answer = the first answer "
              "candidate of a completion is correct (and within H_eval).", ""]
    if agg is not None and peak is not None:
        lines += _sweep_section(agg, peak, band, base_at or {}, s.get("gamma"), gamma_png)
    lines += more or []
    lines += ["## Plots", "", "![efficiency](efficiency.png)", "", "![base curves](xi_curves.png)",
              "", "![learning curves](learning_curves.png)", ""]
    return "\n".join(lines)
