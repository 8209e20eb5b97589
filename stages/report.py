"""report: the study in one page: base curves, the named regimes, efficiency against xi from the
sweep cells, its peak against the paper's band (analysis: relbudget.report).

Reads the xi stage's outputs, the evaluations, the training histories and every sweep cell of
params `sweep` (found by the xi and seed in their eval.json); writes report.md, metrics.json and
the plots. metrics.json holds no timings: unchanged inputs give the same bytes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import mlflow
import pandas as pd

from relbudget import compare, headline, plots
from relbudget import report as rep
from relbudget.budgets import read_budgets
from relbudget.io import output_set, to_json_safe, write_json, write_text
from relbudget.params import REPORT_PLOTS
from relbudget.schemas import HISTORY, read_table
from relbudget.tracking import log_metrics

log = logging.getLogger("relbudget.report")
SECTIONS = ["report", "regimes", "evaluate.h_eval", "sweep.xi", "sweep.seeds", "arms", "paths"]


def load_inputs(params) -> dict:
    p = params.paths
    return {
        "summary": json.loads(Path(p.xi_summary).read_text()),
        "budgets": {k: b.model_dump() for k, b in read_budgets(p.xi).items()},
        "curves": pd.read_parquet(p.curves),
        "base_eval": json.loads(Path(p.eval_json("base")).read_text()),
        "evals": {r: json.loads(Path(p.eval_json(r)).read_text()) for r in params.regimes},
        "histories": {r: read_table(p.history(r), HISTORY) for r in params.regimes},
        "cells": rep.load_cells(p, params.sweep),
    }


def run(params) -> dict:
    p, out = params.paths, Path(params.paths.report)
    inp = load_inputs(params)
    band = tuple(params.report.paper_band)
    rows = [rep.regime_row(r, inp["budgets"][r], inp["evals"][r], inp["histories"][r],
                           inp["base_eval"]) for r in params.regimes]
    table = rep.sweep_table(inp["cells"], inp["base_eval"])
    agg, peak = rep.by_xi(table), rep.peak_xi(table)
    histories: dict[float, list] = {}
    for ev, h in inp["cells"]:
        histories.setdefault(float(ev["xi"]), []).append(h)
    base_at = inp["base_eval"]["at"]["H_eval"]
    arms = compare.compare(p, params.arms, params.sweep.seeds, base_at["accuracy"])

    with output_set():  # the report's files replaced together, or none (relbudget.io)
        plots.xi_curves(inp["curves"], inp["budgets"], p.report_plot("xi_curves.png"), band)
        plots.learning_curves(inp["histories"], p.report_plot("learning_curves.png"))
        plots.efficiency(agg, p.report_plot("efficiency.png"), band, pd.DataFrame(rows), peak)
        plots.xi_t_sweep(histories, dict(zip(agg["xi"], agg["xi_t_slope_per_10k"])),
                         p.report_plot("xi_t_sweep.png"))
        plots.tokens_to_target(arms["curves"], arms["target_accuracy"],
                               p.report_plot("tokens_to_target.png"))
        metrics = to_json_safe({
            "base": {"E_T": inp["summary"]["E_T"], "acc_H_eval": base_at["accuracy"],
                     "first_answer_acc": base_at.get("first_answer_accuracy")},
            "regimes": {r["regime"]: r for r in rows},
            "sweep": table.to_dict(orient="records"),
            "sweep_by_xi": agg.to_dict(orient="records"),
            "peak": {k: peak[k] for k in ("xi", "low", "high")},
            "peak_sentence": rep.band_sentence(peak, band),
            **{k: arms[k] for k in ("target_accuracy", "arms", "arms_summary")}})
        write_json(metrics, p.report_metrics)
        # the numbers DVC compares across commits: git-tracked, outside data/ (relbudget.headline)
        headline.write(metrics, inp["summary"], p)
        gamma_png = os.path.relpath(p.xi_plot("gamma_fit.png"), out)
        write_text(rep.render(inp["summary"], rows, params.evaluate.h_eval, agg, peak, band,
                              base_at, gamma_png, arms["markdown"]), p.report_md)
    log_metrics({f"{r['regime']}/{k}": v for r in rows for k, v in r.items()})
    log_metrics({"peak_xi": peak["xi"], "peak_xi_low": peak["low"], "peak_xi_high": peak["high"],
                 "target_accuracy": arms["target_accuracy"]})
    log_metrics({f"arms/{s['arm']}/{k}": v for s in arms["arms_summary"] for k, v in s.items()
                 if k not in ("arm",)})
    for f in (p.report_md, p.report_metrics, *map(p.report_plot, REPORT_PLOTS)):
        mlflow.log_artifact(f)
    # MLflow shows report.md as text; this page renders, with the plots embedded (MLflow only)
    mlflow.log_text(rep.html_page(Path(p.report_md).read_text(), out), "report.html")
    log.info("report written to %s; %s", out, metrics["peak_sentence"])
    return metrics


if __name__ == "__main__":
    from stages._cli import main

    main("report", run, SECTIONS)
