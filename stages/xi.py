"""xi: E[T] with a bootstrap CI, per-prompt E[T|x], curves over H, and the budget per regime."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import pandas as pd

from relbudget import estimators as est
from relbudget.io import write_json, write_parquet, write_yaml
from relbudget.plots import gamma_fit, xi_curves
from relbudget.tracking import log_metrics
from relbudget.schemas import ROLLOUTS, read_table

log = logging.getLogger("relbudget.xi")
SECTIONS = ["xi", "regimes", "report", "paths"]


def budgets_for(df: pd.DataFrame, regimes: dict[str, float], x) -> dict[str, dict]:
    """H per named regime (H = round(xi * E[T])) with the predicted p, variance and P_inf."""
    out = {}
    for name, target in regimes.items():
        plan = est.plan(df, target, x.group_size)
        if plan["warning"]:
            log.warning("regime %s: %s", name, plan["warning"])
        plan["regime"] = est.regime_of(plan["xi"], x.deficient_below, x.ample_above)
        out[name] = est.to_json_safe(plan)
    return out


def per_prompt_table(df: pd.DataFrame, budgets: dict[str, dict]) -> pd.DataFrame:
    pp = est.per_prompt(df)
    for name, b in budgets.items():
        pp[f"xi_{name}"] = b["H"] / pp["E_T"]  # 0 for unsolved prompts (E_T = inf)
    return pp


def run(params) -> dict:
    x, out = params.xi, Path(params.paths.xi)
    df = read_table(params.paths.rollouts, ROLLOUTS)
    summary = est.summarize(df, None, x.group_size, x.n_bootstrap, x.ci_level, x.seed,
                            x.deficient_below, x.ample_above)
    budgets = budgets_for(df, params.regimes, x)
    summary["budgets"] = {k: {"H": b["H"], "target_xi": b["target_xi"], "regime": b["regime"]}
                          for k, b in budgets.items()}
    curves = est.curves(df, est.default_horizons(summary["max_tokens"]), x.group_size)
    curves["regime"] = [est.regime_of(v, x.deficient_below, x.ample_above) for v in curves["xi"]]
    summary["gamma"] = est.to_json_safe(est.fit_gamma(df))  # ValueError on a table without a hit

    write_parquet(per_prompt_table(df, budgets), out / "per_prompt.parquet")
    write_parquet(curves, out / "curves.parquet")
    write_yaml(budgets, out / "budgets.yaml")
    xi_curves(curves, budgets, out / "xi_curves.png", tuple(params.report.paper_band))
    gamma_fit(df, out / "gamma_fit.png", summary["gamma"])
    write_json(summary, out / "summary.json")
    # What the sweep cells read: it changes only with the rollouts, so editing regimes or the
    # bootstrap leaves every cell cached.
    write_json({k: summary[k] for k in ("E_T", "n_attempts", "n_hits")}, out / "E_T.json")

    log_metrics({**summary, **{f"H_{k}": b["H"] for k, b in budgets.items()},
                 "gamma_K": summary["gamma"]["K"]})
    for f in ("summary.json", "budgets.yaml", "xi_curves.png", "gamma_fit.png", "curves.parquet"):
        mlflow.log_artifact(str(out / f))
    log.info("E[T] = %.2f (CI %s), unsolved %.1f%%; budgets %s; Gamma K = %.2f",
             summary["E_T"] or float("inf"), summary["E_T_ci"], 100 * summary["unsolved_share"],
             {k: b["H"] for k, b in budgets.items()}, summary["gamma"]["K"])
    return summary


if __name__ == "__main__":
    from stages._cli import main

    main("xi", run, SECTIONS)
