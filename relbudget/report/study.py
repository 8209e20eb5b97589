"""The report's analysis in one call: from the report stage's inputs to every number, the
Markdown page and what the plots draw. relbudget.report.tables computes each part (regimes, the sweep by
xi, its peak, the page); relbudget.report.compare the budget arms against the best fixed xi.
"""

from __future__ import annotations

import os

from relbudget.core import params as P
from relbudget.report import compare, prediction
from relbudget.report import analysis, render
from relbudget.core.io import to_json_safe


def analyse(inp: dict, params) -> dict:
    """`inp`: what stages.report.load_inputs reads. Returns `metrics` (metrics.json), `markdown`
    (report.md), and for the plots `rows` (regimes), `agg` (sweep by xi), `peak`, `band`,
    `cell_histories` (xi -> the cells' histories), `regime_histories` (regime -> the histories of
    the cells at its xi), `arms` (relbudget.report.compare.compare) and
    `prediction` (relbudget.report.prediction.compare)."""
    band = tuple(params.report.paper_band)
    base_at = inp["base_eval"]["at"]["H_eval"]
    table = analysis.sweep_table(inp["cells"], inp["base_eval"])
    agg, peak = analysis.by_xi(table), analysis.peak_xi(table)
    # the regimes are the sweep's cells at their xi: one source, so they cannot disagree
    rows = analysis.regime_rows(params.regimes, inp["budgets"], table, inp["base_eval"],
                                inp["base_rollouts"])
    cell_histories: dict[float, list] = {}
    for ev, h in inp["cells"]:
        cell_histories.setdefault(float(ev["xi"]), []).append(h)
    regime_histories = {r: cell_histories[float(x)] for r, x in params.regimes.items()}
    arms = compare.compare(params.paths, params.arms, params.sweep.seeds, base_at["accuracy"])
    predicted = prediction.compare(inp["summary"]["predicted"], agg, peak,
                                   int(table["generated_tokens"].sum()))
    robust = analysis.robustness(inp["cells"], inp["base_eval"], inp["summary"].get("E_T_within"))
    metrics = to_json_safe({
        "base": {"E_T": inp["summary"]["E_T"], "acc_H_eval": base_at["accuracy"],
                 "first_answer_acc": base_at.get("first_answer_accuracy")},
        "regimes": {r["regime"]: r for r in rows},
        "sweep": table.to_dict(orient="records"),
        "sweep_by_xi": agg.to_dict(orient="records"),
        "peak": {k: peak[k] for k in ("xi", "low", "high", "withheld") if k in peak},
        "peak_sentence": render.band_sentence(peak, band),
        "prediction": predicted,
        "robustness": robust,
        "robustness_sentence": render.robustness_sentence(robust, band) if robust else None,
        **{k: arms[k] for k in ("target_accuracy", "arms", "arms_summary")}})
    gamma_png = os.path.relpath(params.paths.xi_plot(P.GAMMA_FIT_PNG), params.paths.report)
    markdown = render.render(inp["summary"], rows, params.evaluate.h_eval, agg, peak, band, base_at,
                          gamma_png, render.robustness_section(robust, band)
                          + prediction.markdown(predicted, peak) + arms["markdown"]
                          + render.across_tasks(bool(params.tasks.report), params.paths.tasks_md))
    return {"metrics": metrics, "markdown": markdown, "rows": rows, "agg": agg, "peak": peak,
            "band": band, "cell_histories": cell_histories,
            "regime_histories": regime_histories, "arms": arms, "prediction": predicted}
