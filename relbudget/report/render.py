"""The report's words: report.md from the numbers of relbudget.report.analysis, and its HTML
page for MLflow. Pure functions of their arguments; no file access but `html_page`, which reads
the PNGs it embeds.
"""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path
from urllib.parse import unquote

import pandas as pd

from relbudget.core import params as P
from relbudget.measure.metrics import FINAL_STEPS

FLAG_MIN_GAIN = 0.01  # a rise in accuracy within H below this is noise, not a flag
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


def band_sentence(peak: dict, band: tuple[float, float]) -> str:
    """One plain sentence comparing the measured peak with the paper's band, whatever it is."""
    lo, hi = band
    x = peak["xi"]
    if peak.get("withheld"):
        return (f"The highest mean gain in this run is at xi = {x:g}, but no interval can be "
                f"given ({peak['withheld']}), so this run says nothing about the paper's band "
                f"[{lo:g}, {hi:g}].")
    where = "inside" if lo <= x <= hi else ("below" if x < lo else "above")
    overlaps = peak["low"] <= hi and peak["high"] >= lo
    return (f"The most efficient xi in this run is {x:g} (bootstrap {100 * peak['level']:.0f}% "
            f"interval over seeds [{peak['low']:g}, {peak['high']:g}]), {where} the paper's band "
            f"[{lo:g}, {hi:g}]; the interval {'overlaps' if overlaps else 'does not overlap'} "
            "the band.")


def _where(x: float, band: tuple[float, float]) -> str:
    return "inside" if band[0] <= x <= band[1] else ("below" if x < band[0] else "above")


def robustness_sentence(rows: list[dict], band: tuple[float, float]) -> str:
    """Which conclusions about the peak hold under every choice (evaluation horizon, reading of
    T) and which do not, in plain words; a peak that moves with H_eval is said so first."""
    restart = [r for r in rows if r["reading"] == "restart"]
    if len({r["peak_xi"] for r in restart}) > 1:
        at = ", ".join(f"{r['peak_xi']:g} at {r['h_eval']} (H {_fmt(r['H_eval'])})"
                       for r in restart)
        first = (f"The peak moves with the evaluation horizon: xi = {at}. That is a finding: which "
                 "training budget looks most efficient depends on the budget it is judged at.")
    else:
        first = (f"The peak is xi = {restart[0]['peak_xi']:g} at every evaluation horizon read "
                 f"({', '.join(r['h_eval'] for r in restart)}).")
    held, not_held, unknown = [], [], ""
    if any(r["low"] is None or r["high"] is None for r in restart):
        # the report withholds a peak's interval for too few seeds or xi: no range is claimed
        unknown = " No xi range is claimed: a peak has no interval (too few seeds or xi)."
    else:
        lo, hi = max(r["low"] for r in restart), min(r["high"] for r in restart)
        if lo <= hi:
            held.append(f"the xi range [{lo:g}, {hi:g}] lies in the interval of every horizon")
        else:
            not_held.append("no xi lies in the interval of every horizon")
    where = {r["choice"]: _where(r["peak_xi"], band) for r in rows}
    places = [w for w in ("below", "inside", "above") if w in where.values()]
    paper = f"the paper's band [{band[0]:g}, {band[1]:g}]"
    if len(places) == 1:
        held.append(f"the peak is {places[0]} {paper}")
    else:
        not_held.append(f"the peak's place against {paper} (" + "; ".join(
            f"{w}: {', '.join(c for c in where if where[c] == w)}" for w in places) + ")")
    text = (f"{first} Under all {len(rows)} choices: "
            f"{'; '.join(held) or 'none of these conclusions'}.")
    return text + (f" Not under all: {'; '.join(not_held)}." if not_held else "") + unknown


def robustness_section(rows: list[dict], band: tuple[float, float]) -> list[str]:
    """The table "peak xi (interval) under each choice" and its sentence (Markdown lines)."""
    if not rows:
        return []
    by = {(r["h_eval"], r["reading"]): r for r in rows}

    def cell(r: dict | None) -> str:
        if r is None:
            return "n/a"
        if r["low"] is None or r["high"] is None:
            return f"{r['peak_xi']:.3g} [no interval]"
        return f"{r['peak_xi']:.3g} [{r['low']:.3g}, {r['high']:.3g}]"

    lines = ["## Peak xi (interval) under each choice", "",
             robustness_sentence(rows, band), "",
             "| H_eval | H | peak xi [interval], T with restarts | peak xi [interval], T within "
             "one completion |", "|---|---|---|---|"]
    for name in dict.fromkeys(r["h_eval"] for r in rows):
        r = by[(name, "restart")]
        lines.append(f"| {name} | {_fmt(r['H_eval'])} | {cell(r)} | "
                     f"{cell(by.get((name, 'within')))} |")
    lines += ["", "Each row reads every sweep cell and the base policy at that horizon of the "
              "same evaluation pass (`xM`: M x E[T] of the base policy); the interval is the "
              "bootstrap over seeds of the sweep's peak. Within one completion, a cell's xi is "
              "its H over the base policy's E[T] read within one completion (smaller than with "
              "restarts, so every xi is larger): the same cell peaks, at another xi.", ""]
    return lines


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
               f"(xi = {best['xi']:.2f}, {_pm(best['gain_per_100k'], best.get('gain_per_100k_err'))}"
               f" per 100k tokens, mean of {best['n_seeds']} seed(s)).")
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
    lines = ["| regime | xi | H | seeds | steps | tokens | informative | acc@H (base -> RL) | "
             "acc@H_eval (base -> RL) | first answer@H_eval (base -> RL) | gain/100k tok | "
             f"E[T] (base -> RL) | xi_t final (last {FINAL_STEPS} steps) | after-correct tokens |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['regime']} | {r['xi']:.2f} | {r['H']} | {r['n_seeds']} | {_fmt(r['steps'], 0)} | "
            f"{_fmt(r['generated_tokens'], 0)} | {_fmt(r['frac_informative_mean'], 2)} | "
            f"{_fmt(r['acc_own_H_base'])} -> {_fmt(r['acc_own_H'])} | "
            f"{_fmt(r['acc_H_eval_base'])} -> {_pm(r['acc_H_eval'], r.get('acc_H_eval_err'), 3, False)} | "
            f"{_fmt(r['first_answer_acc_base'])} -> {_fmt(r['first_answer_acc'])} | "
            f"{_pm(r['gain_per_100k'], r.get('gain_per_100k_err'))} | "
            f"{_fmt(r['E_T_base'], 1)} -> {_fmt(r['E_T'], 1)} | "
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
    if peak.get("withheld"):
        lines += ["", f"Peak: xi = {peak['xi']:g}; NO INTERVAL: {peak['withheld']}.", ""]
    else:
        lines += ["", f"Peak: xi = {peak['xi']:g}, bootstrap {100 * peak['level']:.0f}% interval "
                  f"over seeds [{peak['low']:g}, {peak['high']:g}] (the argmax in "
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
    lines += ["", f"![xi_t over training]({P.XI_T_SWEEP_PNG})", ""]
    return lines


CROSS_TASK_COMMAND = "cp params/tasks.yaml params.yaml && dvc repro"
CROSS_TASK_REPORT = "profiles/tasks/data/report/tasks/tasks.md"


def across_tasks(compared: bool, tasks_md: str) -> list[str]:
    """Where the cross-task answer is: this run's tasks report, or the profile that runs one."""
    where = (f"this run's `{tasks_md}`" if compared else
             f"the cross-task profile's `{CROSS_TASK_REPORT}` (`{CROSS_TASK_COMMAND}`)")
    return ["## Across tasks", "",
            "The sweep above is one task, so it cannot say whether efficiency peaks at one xi "
            "(the theory: H matters only through H / E[T]) or at one H; tasks of different E[T] "
            f"on the same base policy can, and their answer is in {where}.", ""]


def render(summary: dict, rows: list[dict], h_eval: int, agg: pd.DataFrame | None = None,
           peak: dict | None = None, band: tuple[float, float] = (1.5, 2.0),
           base_at: dict | None = None, gamma_png: str = f"../xi/{P.GAMMA_FIT_PNG}",
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
    lines += ["", f"Each regime is the sweep's cells at its xi: its row is their mean over seeds "
              f"(+- standard error), the same numbers as the sweep's table below. H_eval = "
              f"{h_eval}; tokens are generated completion tokens (compute-matched across the "
              "sweep); first answer = the first answer candidate of a completion is correct (and "
              "within H_eval).", ""]
    if agg is not None and peak is not None:
        lines += _sweep_section(agg, peak, band, base_at or {}, s.get("gamma"), gamma_png)
    lines += more or []
    lines += ["## Plots", "", f"![efficiency]({P.EFFICIENCY_PNG})", "",
              f"![predicted against measured]({P.PREDICTED_PNG})", "",
              f"![base curves]({P.XI_CURVES_PNG})", "",
              f"![learning curves]({P.LEARNING_CURVES_PNG})", ""]
    return "\n".join(lines)
