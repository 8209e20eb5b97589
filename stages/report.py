"""report: the study in one page: base curves, learning curves, efficiency against xi, a table.

Learning efficiency of a regime = gain in accuracy at the common H_eval per 100k generated
completion tokens, and the fall in E[T] (censored at H_eval) per 100k tokens, both against the
base policy evaluated the same way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import pandas as pd
import yaml

from relbudget import plots
from relbudget.estimators import to_json_safe
from relbudget.io import write_json, write_text
from relbudget.tracking import log_metrics
from relbudget.schemas import HISTORY, read_table

log = logging.getLogger("relbudget.report")
SECTIONS = ["report", "regimes", "paths"]


def load_inputs(params) -> dict:
    p = params.paths
    xi_dir = Path(p.xi)
    return {
        "summary": json.loads((xi_dir / "summary.json").read_text()),
        "budgets": yaml.safe_load((xi_dir / "budgets.yaml").read_text()),
        "curves": pd.read_parquet(xi_dir / "curves.parquet"),
        "base_eval": json.loads((Path(p.eval) / "base.json").read_text()),
        "evals": {r: json.loads((Path(p.eval) / f"{r}.json").read_text()) for r in params.regimes},
        "histories": {r: read_table(Path(p.train) / r / "history.parquet", HISTORY)
                      for r in params.regimes},
    }


def regime_row(name: str, inp: dict) -> dict:
    """Headline numbers of one regime against the base policy at H_eval."""
    b, ev, h = inp["budgets"][name], inp["evals"][name]["at"], inp["histories"][name]
    base = inp["base_eval"]["at"]["H_eval"]
    tokens = int(h["cum_generated_tokens"].iloc[-1])
    per = 1e5 / max(tokens, 1)
    gain = ev["H_eval"]["accuracy"] - base["accuracy"]
    fall = (base["E_T"] or float("inf")) - (ev["H_eval"]["E_T"] or float("inf"))
    return {
        "regime": name, "target_xi": b["target_xi"], "xi": b["xi"], "H": b["H"],
        "predicted_p_informative": b.get("p_informative"),
        "steps": int(h["step"].iloc[-1]), "generated_tokens": tokens,
        "frac_informative_mean": float(h["frac_informative"].mean()),
        "clipped_ratio_mean": float(h["clipped_ratio"].mean()),
        "acc_own_H_base": inp["base_eval"]["at"].get(f"H_{name}", {}).get("accuracy"),
        "acc_own_H": ev["H_own"]["accuracy"],
        "acc_H_eval_base": base["accuracy"], "acc_H_eval": ev["H_eval"]["accuracy"],
        "gain": gain, "gain_per_100k": gain * per,
        "E_T_base": base["E_T"], "E_T": ev["H_eval"]["E_T"],
        "E_T_fall_per_100k": fall * per if fall == fall else None,
        "xi_t_final": float(h["xi_t"].dropna().iloc[-1]) if h["xi_t"].notna().any() else None,
        "mean_length_H_eval": ev["H_eval"]["mean_length"],
        "tokens_after_correct": ev["H_eval"]["tokens_after_correct"],
        "pass@k": {k: v for k, v in ev["H_eval"].items() if k.startswith("pass@")},
    }


def _fmt(v, nd=3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def findings(rows: list[dict]) -> list[str]:
    """Plain statements of what this run measured, including regimes that got worse."""
    out = []
    best = max(rows, key=lambda r: r["gain_per_100k"])
    out.append(f"Highest accuracy gain per 100k tokens: **{best['regime']}** (xi = {best['xi']:.2f}, "
               f"{best['gain_per_100k']:+.3f} per 100k tokens).")
    for r in rows:
        if r["gain"] < 0 or (r["E_T"] is not None and r["E_T_base"] is not None
                             and r["E_T"] > r["E_T_base"]):
            out.append(f"**{r['regime']}** got worse than the base policy: accuracy at H_eval "
                       f"{r['acc_H_eval_base']:.3f} -> {r['acc_H_eval']:.3f}, E[T] "
                       f"{_fmt(r['E_T_base'], 1)} -> {_fmt(r['E_T'], 1)} "
                       f"(mean share of informative groups {r['frac_informative_mean']:.2f}).")
        if r["clipped_ratio_mean"] < 0.001:
            out.append(f"**{r['regime']}**: H = {r['H']} never truncated a training completion "
                       f"(clipped ratio {r['clipped_ratio_mean']:.4f}), so any larger H trains "
                       "the same way: the budget does not bind there.")
        if r["tokens_after_correct"] and r["tokens_after_correct"] > 2:
            out.append(f"**{r['regime']}** keeps writing after its first correct answer: "
                       f"{r['tokens_after_correct']:.1f} tokens on average at H_eval.")
    return out


def render(inp: dict, rows: list[dict], params) -> str:
    s = inp["summary"]
    lines = ["# relbudget report", "",
             f"Base policy: E[T] = {_fmt(s['E_T'], 2)} tokens (95% CI {_fmt(s['E_T_ci'][0], 2)} - "
             f"{_fmt(s['E_T_ci'][1], 2)}), unsolved share {s['unsolved_share']:.3f}, "
             f"{s['n_prompts']} prompts x {s['n_attempts'] // max(s['n_prompts'], 1)} attempts at "
             f"cap {s['max_tokens']}.", "",
             "## What this run measured", ""]
    lines += [f"- {f}" for f in findings(rows)]
    lines += ["", "## Regimes", "",
              "| regime | xi | H | steps | tokens | informative | acc@H (base -> RL) | "
              "acc@H_eval (base -> RL) | gain/100k tok | E[T] (base -> RL) | xi_t final | "
              "after-correct tokens |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['regime']} | {r['xi']:.2f} | {r['H']} | {r['steps']} | {r['generated_tokens']} | "
            f"{r['frac_informative_mean']:.2f} | {_fmt(r['acc_own_H_base'])} -> {_fmt(r['acc_own_H'])} | "
            f"{_fmt(r['acc_H_eval_base'])} -> {_fmt(r['acc_H_eval'])} | {r['gain_per_100k']:+.3f} | "
            f"{_fmt(r['E_T_base'], 1)} -> {_fmt(r['E_T'], 1)} | {_fmt(r['xi_t_final'], 2)} | "
            f"{_fmt(r['tokens_after_correct'], 1)} |")
    lines += ["", f"H_eval = {params.evaluate.h_eval}; tokens are generated completion tokens "
              "(compute-matched across regimes).", "",
              "## Plots", "",
              "![base curves](xi_curves.png)", "", "![learning curves](learning_curves.png)", "",
              "![efficiency](efficiency.png)", ""]
    return "\n".join(lines)


def run(params) -> dict:
    out = Path(params.paths.report)
    inp = load_inputs(params)
    rows = [regime_row(r, inp) for r in params.regimes]
    band = tuple(params.report.paper_band)
    plots.xi_curves(inp["curves"], inp["budgets"], out / "xi_curves.png", band)
    plots.learning_curves(inp["histories"], out / "learning_curves.png")
    plots.efficiency(pd.DataFrame(rows), out / "efficiency.png", band)
    metrics = to_json_safe({"base": {"E_T": inp["summary"]["E_T"],
                                     "acc_H_eval": inp["base_eval"]["at"]["H_eval"]["accuracy"]},
                            "regimes": {r["regime"]: r for r in rows}})
    write_json(metrics, out / "metrics.json")
    write_text(render(inp, rows, params), out / "report.md")
    log_metrics({f"{r['regime']}/{k}": v for r in rows for k, v in r.items()})
    for f in ("report.md", "metrics.json", "xi_curves.png", "learning_curves.png", "efficiency.png"):
        mlflow.log_artifact(str(out / f))
    log.info("report written to %s", out)
    return metrics


if __name__ == "__main__":
    from stages._cli import main

    main("report", run, SECTIONS)
