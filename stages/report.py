"""report: the study in one page: base curves, the named regimes (the sweep's cells at their
xi), efficiency against xi from the sweep cells, its peak against the paper's band, the budget
arms against the best fixed xi (analysis: relbudget.report.study, one call).

Reads the xi stage's outputs, the base policy's evaluation, every sweep cell of params
`sweep` (found by the xi and seed in their eval.json) and every arm run; writes report.md,
metrics.json, the plots and the git-tracked headline. None holds a timing: unchanged inputs give
the same bytes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import pandas as pd

from relbudget.core import params as P
from relbudget.report import headline, plots, study
from relbudget.report import analysis, render
from relbudget.measure.budgets import read_budgets
from relbudget.core.io import output_set, write_json, write_text
from relbudget.core.params import REPORT_PLOTS
from relbudget.core.schemas import ROLLOUTS, read_table
from relbudget.core.tracking import log_metrics

log = logging.getLogger("relbudget.report")
SECTIONS = ["report", "regimes", "evaluate.h_eval", "sweep.xi", "sweep.seeds", "arms", "tasks.report",
            "paths"]


def load_inputs(params) -> dict:
    p = params.paths
    return {
        "summary": json.loads(Path(p.xi_summary).read_text()),
        "budgets": {k: b.model_dump() for k, b in read_budgets(p.xi).items()},
        "curves": pd.read_parquet(p.curves),
        "base_eval": json.loads(Path(p.eval_json("base")).read_text()),
        "base_rollouts": read_table(p.eval_rollouts("base"), ROLLOUTS),
        "cells": analysis.load_cells(p, params.sweep),
    }


def write_plots(params, inp: dict, st: dict) -> None:
    p = params.paths
    plots.xi_curves(inp["curves"], inp["budgets"], p.report_plot(P.XI_CURVES_PNG), st["band"])
    plots.learning_curves(st["regime_histories"], p.report_plot(P.LEARNING_CURVES_PNG))
    plots.efficiency(st["agg"], p.report_plot(P.EFFICIENCY_PNG), st["band"],
                     pd.DataFrame(st["rows"]), st["peak"])
    slopes = dict(zip(st["agg"]["xi"], st["agg"]["xi_t_slope_per_10k"]))
    plots.xi_t_sweep(st["cell_histories"], slopes, p.report_plot(P.XI_T_SWEEP_PNG))
    plots.tokens_to_target(st["arms"]["curves"], st["arms"]["target_accuracy"],
                           p.report_plot(P.TOKENS_TO_TARGET_PNG))
    plots.predicted(pd.DataFrame(st["prediction"]["curve"]), st["peak"],
                    p.report_plot(P.PREDICTED_PNG))


def run(params) -> dict:
    p = params.paths
    inp = load_inputs(params)
    st = study.analyse(inp, params)
    metrics, peak = st["metrics"], st["peak"]
    with output_set():  # the report's files replaced together, or none (relbudget.core.io)
        write_plots(params, inp, st)
        write_json(metrics, p.report_metrics)
        # the few numbers DVC compares across commits: git-tracked, outside data/, the DAG's only
        # metrics file (relbudget.report.headline)
        headline.write(metrics, p)
        write_text(st["markdown"], p.report_md)
    log_metrics({f"{r['regime']}/{k}": v for r in st["rows"] for k, v in r.items()})
    log_metrics({"peak_xi": peak["xi"], "peak_xi_low": peak["low"], "peak_xi_high": peak["high"],
                 "target_accuracy": metrics["target_accuracy"]})
    log_metrics({f"arms/{s['arm']}/{k}": v for s in metrics["arms_summary"] for k, v in s.items()
                 if k != "arm"})
    for f in (p.report_md, p.report_metrics, *map(p.report_plot, REPORT_PLOTS)):
        mlflow.log_artifact(f)
    # MLflow shows report.md as text; this page renders, with the plots embedded (MLflow only)
    mlflow.log_text(render.html_page(Path(p.report_md).read_text(), p.report), "report.html")
    log.info("report written to %s; %s", p.report, metrics["peak_sentence"])
    return metrics


if __name__ == "__main__":
    from stages._cli import main

    main("report", run, SECTIONS)
