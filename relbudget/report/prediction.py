"""The prediction made before training (the xi stage's `predicted`, relbudget.measure.predict)
against the sweep's measured efficiency: the two curves on one grid, each normalised to its own
maximum, and the four figures that judge it (Spearman, the predicted peak inside the measured
interval or not, the normalised mean absolute error, the prediction's cost in generated tokens
against the sweep's), for the predictor and for the static baseline beside it.
"""

from __future__ import annotations

import pandas as pd

from relbudget.measure.predict import score


def compare(predicted: dict, agg: pd.DataFrame, peak: dict, sweep_tokens: int) -> dict:
    """`predicted`: the xi summary's `predicted`; `agg`: the sweep by xi (relbudget.report.analysis
    .by_xi); `peak`: its measured peak with interval. Returns {"curve": [{xi, H, measured,
    predicted, static}], "predictor": score, "static": score, "predicted_peak_xi",
    "static_peak_xi", "prediction_tokens", "sweep_tokens", "cost_share"}."""
    pred = pd.DataFrame(predicted["curve"]).set_index("xi")
    measured = agg.set_index("xi")["gain_per_100k"].astype(float)
    missing = sorted(set(measured.index) - set(pred.index))
    if missing:
        raise ValueError(f"the xi summary's predicted curve has no xi {missing} of the sweep: "
                         "rerun the xi stage with the sweep's grid (dvc repro xi)")
    pred = pred.loc[measured.index]
    interval = (peak["low"], peak["high"])
    curve = pd.DataFrame({"xi": measured.index, "H": pred["H"].to_numpy(),
                          "measured": (measured / measured.max()).to_numpy(),
                          "predicted": pred["predicted"].to_numpy(),
                          "static": pred["static"].to_numpy()})
    tokens = int(predicted["prediction_tokens"])
    return {"curve": curve.to_dict(orient="records"),
            "predictor": score(pred["predicted"], measured, predicted["best_xi"], interval),
            "static": score(pred["static"], measured, predicted["static_best_xi"], interval),
            "predicted_peak_xi": predicted["best_xi"],
            "static_peak_xi": predicted["static_best_xi"],
            "prediction_tokens": tokens, "sweep_tokens": int(sweep_tokens),
            "cost_share": tokens / sweep_tokens if sweep_tokens else None}


def markdown(cmp: dict, peak: dict) -> list[str]:
    """The report's section: the overlay's numbers and the four figures, both predictors."""
    lines = ["## Predicted before training against measured", "",
             "The xi stage predicts efficiency over the sweep's grid from the base rollouts alone "
             "(signal per generated token with Adam's sqrt(informative groups) step; the static "
             "baseline counts informative groups per token). Each curve is divided by its own "
             "maximum.", "",
             "| xi | H | measured | predicted | static baseline |", "|---|---|---|---|---|"]
    lines += [f"| {r['xi']:g} | {r['H']} | {r['measured']:+.2f} | {r['predicted']:.2f} | "
              f"{r['static']:.2f} |" for r in cmp["curve"]]
    lines += ["", "| figure | predictor | static baseline | goal |", "|---|---|---|---|"]
    p, s = cmp["predictor"], cmp["static"]
    interval = ("no interval (too few seeds or xi)" if peak["low"] is None or peak["high"] is None
                else f"[{peak['low']:g}, {peak['high']:g}]")
    lines += [f"| Spearman over the grid | {figure(p['spearman'])} | {figure(s['spearman'])} | "
              ">= 0.8 |",
              f"| predicted peak xi vs measured {interval} | "
              f"{cmp['predicted_peak_xi']:g} ({inside_word(p['peak_inside'])}) | "
              f"{cmp['static_peak_xi']:g} ({inside_word(s['peak_inside'])}) | inside |",
              f"| mean absolute error, normalised curves | {figure(p['mae_normalised'])} | "
              f"{figure(s['mae_normalised'])} | <= 0.15 |"]
    share = cmp["cost_share"]
    lines += [f"| cost: generated tokens (share of the sweep's {cmp['sweep_tokens']:,}) | "
              f"{cmp['prediction_tokens']:,} ({'n/a' if share is None else f'{share:.1%}'}) | "
              "the same rollouts | <= 10% |", "",
              "The cost is what sampling the base rollouts generated; no training run is needed.",
              ""]
    return lines


def figure(x: float | None) -> str:
    """A figure to two decimals, or n/a where it is withheld."""
    return "n/a" if x is None else f"{x:.2f}"


def inside_word(flag: bool | None) -> str:
    """inside / outside the measured interval, or no verdict where it has none."""
    return {True: "inside", False: "outside", None: "no verdict"}[flag]
