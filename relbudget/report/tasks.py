"""The cross-task answer: does efficiency peak at one xi across tasks (the theory: it depends on H
only through xi = H / E[T]) or at one H (an absolute budget)?

Each task of params `tasks` has its own E[T] and its own sweep over the grid of params `sweep`
(stages task_t, task_xi, task_sweep). Per task: the sweep table against the task's base policy
(relbudget.report.analysis, as for the study's sweep), the mean gain per xi, and the peak xi with
its bootstrap interval over seeds. The peak in H is the same peak read in tokens: [round(low x
E[T]), round(high x E[T])]. The peaks align in xi when one xi lies in every task's interval, i.e.
the intervals overlap (the largest low is at most the smallest high); likewise in H. Numbers only;
the sentence is built from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from relbudget.measure.estimators import horizon_for
from relbudget.report import analysis, prediction
from relbudget.report.headline import numbers


def load_task(paths, sweep) -> dict:
    """One task's E[T] summary, base evaluation and sweep cells (paths: Paths.task)."""
    return {"summary": json.loads(Path(paths.xi_summary).read_text()),
            "base_eval": json.loads(Path(paths.eval_json("base")).read_text()),
            "cells": analysis.load_cells(paths, sweep)}


PREDICTION_KEYS = ("predicted_peak_xi", "spearman", "mae_normalised", "peak_inside",
                   "prediction_tokens", "sweep_tokens")


def task_result(name: str, E_T: float, table: pd.DataFrame, predicted: dict | None = None) -> dict:
    """A task's row of metrics.json from its sweep table (one row per cell: xi, seed, H,
    gain_per_100k, and generated_tokens when a prediction is scored): the mean over seeds per
    xi and the peak with its interval, in xi and H; with the task's `predicted` (its xi summary's,
    relbudget.measure.predict), the prediction made before training scored against the sweep
    (relbudget.report.prediction) and each xi's predicted value beside the measured gain."""
    agg = analysis.by_xi(table)
    peak = analysis.peak_xi(table)
    row = {"task": name, "E_T": E_T,
           "peak": {k: peak[k] for k in ("xi", "low", "high")},
           # None where the peak gives no interval (too few seeds or xi, cells not compute-matched)
           "peak_H": {h: None if peak[k] is None else horizon_for(peak[k], E_T)
                      for h, k in (("H", "xi"), ("low", "low"), ("high", "high"))},
           "sweep": [{"xi": float(r.xi), "H": int(r.H), "gain_per_100k": float(r.gain_per_100k)}
                     for r in agg.itertuples(index=False)]}
    if predicted is None:  # a task_xi output from before the prediction: scored as missing
        return {**row, **dict.fromkeys(PREDICTION_KEYS)}
    cmp = prediction.compare(predicted, agg, peak, int(table["generated_tokens"].sum()))
    for r, c in zip(row["sweep"], cmp["curve"]):
        r["predicted"] = c["predicted"]
    return {**row, "predicted_peak_xi": cmp["predicted_peak_xi"],
            **{k: cmp["predictor"][k] for k in ("spearman", "mae_normalised", "peak_inside")},
            "prediction_tokens": cmp["prediction_tokens"], "sweep_tokens": cmp["sweep_tokens"]}


def common(intervals: list[tuple[float, float]]) -> bool | None:
    """Whether one value lies in every closed interval (None when a task has no interval)."""
    if any(lo is None or hi is None for lo, hi in intervals):
        return None
    return max(lo for lo, _ in intervals) <= min(hi for _, hi in intervals)


def universality(tasks: list[dict]) -> dict:
    """Do the peaks align in xi, in H? (booleans; meaningful from two tasks on)."""
    return {"peak_xi_common": common([(t["peak"]["low"], t["peak"]["high"]) for t in tasks]),
            "peak_H_common": common([(t["peak_H"]["low"], t["peak_H"]["high"]) for t in tasks])}


def verdict(tasks: list[dict], u: dict) -> str:
    """The universality answer in one sentence, with every task's intervals."""
    if None in u.values():
        return ("No answer on alignment: at least one task's peak has no interval (fewer than 2 "
                "seeds or 3 xi, or cells that are not compute-matched).")
    xs = "; ".join(f"{t['task']} (E[T] {t['E_T']:.1f}): xi {t['peak']['xi']:g} "
                   f"[{t['peak']['low']:g}, {t['peak']['high']:g}], H {t['peak_H']['H']} "
                   f"[{t['peak_H']['low']}, {t['peak_H']['high']}]" for t in tasks)
    where = {(True, True): "in xi and in H alike (the tasks' intervals cannot tell the two apart)",
             (True, False): "in xi, not in H: the efficient budget scales with E[T], as the theory "
                            "says",
             (False, True): "in H, not in xi: an absolute budget, against the theory",
             (False, False): "neither in xi nor in H"}[(u["peak_xi_common"], u["peak_H_common"])]
    return f"The per-task peaks (95% bootstrap intervals over seeds) align {where}: {xs}."


def headline(tasks: list[dict], u: dict) -> dict:
    """{metric: {entity: number}} for `dvc metrics diff`, as the study's headline is
    (relbudget.report.headline): per task E[T] and peak xi with its interval (rounded); the
    verdict as 0/1."""
    return {"task_E_T": numbers({t["task"]: t["E_T"] for t in tasks}),
            "task_peak_xi": numbers({f"{t['task']}{s}": t["peak"][k] for t in tasks
                                     for k, s in (("xi", ""), ("low", "_low"), ("high", "_high"))}),
            "universality": {k: int(v) for k, v in u.items() if v is not None}}


def interval(low, high) -> str:
    """`[low, high]` as the verdict writes it (1.0 -> 1), or "none" where the peak has none."""
    return "none" if low is None or high is None else f"[{low:g}, {high:g}]"


def markdown(tasks: list[dict], u: dict, sweep_png: str, h_png: str) -> str:
    lines = ["# Across tasks: one xi or one H?", "", verdict(tasks, u), "",
             "| task | E[T] | peak xi | interval | peak H | interval |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {t['task']} | {t['E_T']:.2f} | {t['peak']['xi']:g} | "
              f"{interval(t['peak']['low'], t['peak']['high'])} | {t['peak_H']['H']} | "
              f"{interval(t['peak_H']['low'], t['peak_H']['high'])} |" for t in tasks]
    lines += prediction_table(tasks)
    lines += ["", f"![efficiency against xi, every task]({sweep_png})", "",
              f"![efficiency against H, every task]({h_png})", ""]
    return "\n".join(lines)


def prediction_table(tasks: list[dict]) -> list[str]:
    """Per task, the peak predicted from its base rollouts before training against the measured
    one, with the figures that judge the prediction (goals: inside, >= 0.8, <= 0.15, <= 10%)."""
    if all(t.get("predicted_peak_xi") is None for t in tasks):
        return []
    lines = ["", "Predicted before training (from each task's base rollouts alone) against the "
             "measured sweep (goals: inside the interval, Spearman >= 0.8, normalised MAE <= 0.15, "
             "cost <= 10% of the sweep's tokens):", "",
             "| task | predicted peak xi | measured peak xi [interval] | Spearman | normalised MAE "
             "| cost in tokens (share of the task's sweep) |", "|---|---|---|---|---|---|"]
    for t in tasks:
        if t.get("predicted_peak_xi") is None:
            lines.append(f"| {t['task']} | n/a | | | | |")
            continue
        share = t["prediction_tokens"] / t["sweep_tokens"] if t["sweep_tokens"] else None
        lines.append(
            f"| {t['task']} | {t['predicted_peak_xi']:g} "
            f"({prediction.inside_word(t['peak_inside'])}) | {t['peak']['xi']:g} "
            f"{interval(t['peak']['low'], t['peak']['high'])} | {prediction.figure(t['spearman'])} | "
            f"{prediction.figure(t['mae_normalised'])} | {t['prediction_tokens']:,} "
            f"({'n/a' if share is None else f'{share:.1%}'}) |")
    return lines

