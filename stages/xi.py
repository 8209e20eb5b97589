"""xi: E[T] with a bootstrap CI, per-prompt E[T|x], curves over H, the budget per regime, and the
learning efficiency predicted over the sweep's xi grid before any training (summary key
`predicted`, relbudget.measure.predict)."""

from __future__ import annotations

import logging

import mlflow
import pandas as pd

from relbudget.core import params as P
from relbudget.measure import estimators as est
from relbudget.measure import predict as pred
from relbudget.core.errors import BudgetError
from relbudget.measure.budgets import plan_budgets, write_budgets
from relbudget.core.io import output_set, write_json, write_parquet
from relbudget.core.params import XI_PLOTS
from relbudget.report.plots import gamma_fit, xi_curves
from relbudget.core.tracking import log_metrics
from relbudget.core.schemas import ROLLOUTS, read_table

log = logging.getLogger("relbudget.xi")
SECTIONS = ["xi", "regimes", "report.paper_band", "sweep.xi", "train.num_generations",
            "train.prompts_per_step", "paths"]


def per_prompt_table(df: pd.DataFrame, budgets: dict[str, dict]) -> pd.DataFrame:
    pp = est.per_prompt(df)
    for name, b in budgets.items():
        pp[f"xi_{name}"] = b["H"] / pp["E_T"]  # 0 for unsolved prompts (E_T = inf)
    return pp


def gamma_of(df: pd.DataFrame, where: str) -> dict:
    """The Gamma model of T; a table it cannot be fitted to (every T the same: no spread) is one
    line naming the table, not scipy's FitError."""
    from scipy.stats import FitError

    try:
        return est.fit_gamma(df)
    except FitError as err:
        T, _ = est.restart_T(df)
        raise BudgetError(f"{where}: the Gamma model of T cannot be fitted ({str(err)[:120]}); the "
                          f"observed T take {len(set(T.tolist()))} distinct value(s) "
                          f"({len(T)} observed): sample more attempts or a longer cap") from None


def run(params) -> dict:
    x, p = params.xi, params.paths
    df = read_table(params.paths.rollouts, ROLLOUTS)
    if df["first_correct_token"].isna().all():  # E[T] is infinite: no budget can be planned
        raise BudgetError(f"{params.paths.rollouts}: none of its {len(df)} attempts is correct, so "
                          "E[T] is infinite and no H can be planned; raise sampling.max_tokens "
                          "or pre-train the base policy longer (base_policy.steps), then rerun "
                          "sample_t")
    summary = est.summarize(df, None, x.group_size, x.n_bootstrap, x.ci_level, x.seed,
                            x.deficient_below, x.ample_above)
    if summary["p_informative_warning"]:
        log.warning(summary["p_informative_warning"])
    typed = plan_budgets(df, params.regimes, x)
    budgets = {k: b.model_dump(mode="json") for k, b in typed.items()}
    # xi_within: the same H over E[T] read within one completion (docs/definitions.md)
    summary["budgets"] = {k: {"H": b["H"], "target_xi": b["target_xi"], "regime": b["regime"],
                              "xi_within": b["H"] / summary["E_T_within"]}
                          for k, b in budgets.items()}
    curves = est.curves(df, est.default_horizons(summary["max_tokens"]), x.group_size)
    curves["regime"] = [est.regime_of(v, x.deficient_below, x.ample_above) for v in curves["xi"]]
    summary["gamma"] = est.to_json_safe(gamma_of(df, params.paths.rollouts))
    # On the sweep's grid, with the GRPO batch the sweep trains with, so the report can lay the
    # prediction over the measured curve.
    summary["predicted"] = est.to_json_safe(pred.predict(
        df, params.sweep.xi, params.train.num_generations, params.train.prompts_per_step))

    with output_set():  # all seven files replaced together, or none (relbudget.core.io.output_set)
        write_parquet(per_prompt_table(df, budgets), p.per_prompt)
        write_parquet(curves, p.curves)
        write_budgets(typed, p.xi)
        xi_curves(curves, budgets, p.xi_plot(P.XI_CURVES_PNG), tuple(params.report.paper_band))
        gamma_fit(df, p.xi_plot(P.GAMMA_FIT_PNG), summary["gamma"])
        write_json(summary, p.xi_summary)
        # What the sweep cells read: it changes only with the rollouts, so editing regimes or the
        # bootstrap leaves every cell cached.
        write_json({k: summary[k] for k in ("E_T", "n_attempts", "n_hits")}, p.E_T)

    log_metrics({**summary, **{f"H_{k}": b["H"] for k, b in budgets.items()},
                 "gamma_K": summary["gamma"]["K"],
                 "predicted_best_xi": summary["predicted"]["best_xi"]})
    for f in (p.xi_summary, p.budgets, *map(p.xi_plot, XI_PLOTS), p.curves):
        mlflow.log_artifact(f)
    log.info("E[T] = %.2f (CI %s), unsolved %.1f%%; within one completion %.2f, unsolved "
             "%.1f%%; budgets %s; Gamma K = %.2f",
             summary["E_T"] or float("inf"), summary["E_T_ci"], 100 * summary["unsolved_share"],
             summary["E_T_within"] or float("inf"), 100 * summary["unsolved_share_within"],
             {k: b["H"] for k, b in budgets.items()}, summary["gamma"]["K"])
    return summary


if __name__ == "__main__":
    from stages._cli import main

    main("xi", run, SECTIONS)
