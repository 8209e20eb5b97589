"""relbudget.report.prediction by hand: the report's section line by line (both predictors, an
interval and none, a cost share and none), and compare's refusal and zero-token sweep."""

from __future__ import annotations

import pandas as pd
import pytest

from relbudget.report import prediction

# the sweep by xi: gain per 100k 0.1, 0.4, 0.2 -> 0.25, 1.0, 0.5 of its maximum
AGG = pd.DataFrame({"xi": [0.5, 1.0, 2.0], "gain_per_100k": [0.1, 0.4, 0.2]})
PREDICTED = {"best_xi": 1.0, "static_best_xi": 0.5, "prediction_tokens": 1500,
             "curve": [{"xi": 0.5, "H": 20, "predicted": 0.5, "static": 1.0},
                       {"xi": 1.0, "H": 40, "predicted": 1.0, "static": 0.75},
                       {"xi": 2.0, "H": 80, "predicted": 0.25, "static": 0.5}]}
PEAK = {"xi": 1.0, "low": 1.0, "high": 2.0}


def test_compare_by_hand():
    cmp = prediction.compare(PREDICTED, AGG, PEAK, 60_000)
    assert cmp["curve"] == [
        {"xi": 0.5, "H": 20, "measured": 0.25, "predicted": 0.5, "static": 1.0},
        {"xi": 1.0, "H": 40, "measured": 1.0, "predicted": 1.0, "static": 0.75},
        {"xi": 2.0, "H": 80, "measured": 0.5, "predicted": 0.25, "static": 0.5}]
    # predictor: ranks 2,3,1 vs 1,3,2 -> Spearman 0.5; |0.25|, 0, |0.25| -> MAE 1/6
    assert cmp["predictor"]["spearman"] == pytest.approx(0.5)
    assert cmp["predictor"]["mae_normalised"] == pytest.approx(1 / 6)
    assert (cmp["predictor"]["peak_inside"], cmp["static"]["peak_inside"]) == (True, False)
    assert (cmp["predicted_peak_xi"], cmp["static_peak_xi"]) == (1.0, 0.5)
    assert (cmp["prediction_tokens"], cmp["sweep_tokens"]) == (1500, 60_000)
    assert cmp["cost_share"] == pytest.approx(0.025)
    assert prediction.compare(PREDICTED, AGG, PEAK, 0)["cost_share"] is None


def test_compare_refuses_a_grid_the_prediction_lacks_word_for_word():
    short = {**PREDICTED, "curve": PREDICTED["curve"][:2]}
    with pytest.raises(ValueError) as err:
        prediction.compare(short, AGG, PEAK, 1)
    assert str(err.value) == ("the xi summary's predicted curve has no xi [2.0] of the sweep: "
                              "rerun the xi stage with the sweep's grid (dvc repro xi)")


def test_markdown_line_by_line():
    cmp = prediction.compare(PREDICTED, AGG, PEAK, 60_000)
    assert prediction.markdown(cmp, PEAK) == [
        "## Predicted before training against measured", "",
        "The xi stage predicts efficiency over the sweep's grid from the base rollouts alone "
        "(signal per generated token with Adam's sqrt(informative groups) step; the static "
        "baseline counts informative groups per token). Each curve is divided by its own "
        "maximum.", "",
        "| xi | H | measured | predicted | static baseline |", "|---|---|---|---|---|",
        "| 0.5 | 20 | +0.25 | 0.50 | 1.00 |",
        "| 1 | 40 | +1.00 | 1.00 | 0.75 |",
        "| 2 | 80 | +0.50 | 0.25 | 0.50 |",
        "", "| figure | predictor | static baseline | goal |", "|---|---|---|---|",
        "| Spearman over the grid | 0.50 | -0.50 | >= 0.8 |",
        "| predicted peak xi vs measured [1, 2] | 1 (inside) | 0.5 (outside) | inside |",
        "| mean absolute error, normalised curves | 0.17 | 0.33 | <= 0.15 |",
        "| cost: generated tokens (share of the sweep's 60,000) | 1,500 (2.5%) | "
        "the same rollouts | <= 10% |", "",
        "The cost is what sampling the base rollouts generated; no training run is needed.", ""]


@pytest.mark.parametrize("low,high", [(None, 2.0), (1.0, None), (None, None)])
def test_markdown_without_an_interval_or_a_cost_share(low, high):
    peak = {"xi": 1.0, "low": low, "high": high}
    cmp = prediction.compare(PREDICTED, AGG, peak, 0)
    lines = prediction.markdown(cmp, peak)
    assert ("| predicted peak xi vs measured no interval (too few seeds or xi) | "
            "1 (no verdict) | 0.5 (no verdict) | inside |") in lines
    assert ("| cost: generated tokens (share of the sweep's 0) | 1,500 (n/a) | "
            "the same rollouts | <= 10% |") in lines


def test_figure_and_inside_word():
    assert prediction.figure(None) == "n/a" and prediction.figure(0.125) == "0.12"
    assert prediction.figure(-1) == "-1.00"
    assert [prediction.inside_word(f) for f in (True, False, None)] == [
        "inside", "outside", "no verdict"]
