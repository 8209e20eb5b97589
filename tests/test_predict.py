"""The efficiency predictor (relbudget.measure.predict): exact answers on hand-made tables, its
score against a measured curve, and `relbudget plan --predict` / the xi stage on a real sampled
rollout table."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import special

from relbudget.cli import main
from relbudget.core.params import load_params
from relbudget.measure import predict as pred
from relbudget.report import prediction
from stages import xi
from stages._cli import execute
from tests.helpers import pretrained
from tests.synth import make_rollouts, tiny_table

CAP = 128


def half_right(n_prompts: int = 3) -> list[tuple]:
    """Every prompt: 4 attempts answer right at token 10, 4 stop wrong at token 20 (EOS).
    E[T] = (4 * 10 + 4 * 20) / 4 = 30; below H = 10 no group is informative, from H = 10 on every
    group of all 8 attempts is; c(H) = 10 for H = 10, (40 + 4 * min(H, 20)) / 8 above."""
    return [(f"p{i}", n, fct) for i in range(n_prompts)
            for n, fct in [(10, 10)] * 4 + [(20, None)] * 4]


def test_known_curve_peaks_where_the_first_answers_land():
    df = tiny_table(half_right(), CAP)
    out = pred.predict(df, [0.2, 1 / 3, 0.5, 1.0, 2.0], group_size=8, prompts_per_step=2)
    curve = {round(r["xi"], 4): r for r in out["curve"]}
    assert out["E_T"] == pytest.approx(30.0)
    assert [r["H"] for r in out["curve"]] == [6, 10, 15, 30, 60]
    # H = 6: no correct answer yet, nothing to learn from; H = 10: every group informative at the
    # fewest tokens; past it the tokens grow with H and the signal stays.
    assert [r["p_informative"] for r in out["curve"]] == pytest.approx([0, 1, 1, 1, 1])
    assert [r["tokens"] for r in out["curve"]] == pytest.approx([6, 10, 12.5, 15, 15])
    assert [r["predicted"] for r in out["curve"]] == pytest.approx([0, 1, 0.8, 2 / 3, 2 / 3])
    assert out["best_xi"] == pytest.approx(1 / 3) == out["static_best_xi"]
    assert curve[0.3333]["static"] == 1.0
    assert out["prediction_tokens"] == 3 * (4 * 10 + 4 * 20)


def test_signal_is_the_mean_root_of_a_binomial():
    n, p = 4, 0.5
    exact = sum(special.comb(n, m) * p**n * math.sqrt(m / n) for m in range(n + 1))
    assert pred.signal_at(p, n) == pytest.approx(exact)
    assert pred.signal_at(0.0, 8) == 0.0 and pred.signal_at(1.0, 8) == pytest.approx(1.0)
    assert pred.signal_at(0.3, 1) == pytest.approx(0.3)  # one prompt: informative or not
    # Adam's step grows as sqrt(m): a quarter of the groups give half the full step, not a quarter
    assert pred.signal_at(0.25, 10_000) == pytest.approx(0.5, abs=1e-3)


def test_few_informative_groups_weigh_more_than_the_static_baseline_says():
    # the same tokens per completion at every H above 20, fewer informative groups as p -> 1:
    # the static baseline falls in proportion to P_inf, the predictor by its square root
    rows = [(f"p{i}", 20, 20 if a < 7 or i % 2 else None) for i in range(40) for a in range(8)]
    df = tiny_table(rows, CAP)
    out = pred.predict(df, [1.0], group_size=8, prompts_per_step=8)
    (r,) = out["curve"]
    assert r["p_informative"] == pytest.approx(0.5)  # half the prompts: 7 right, 1 wrong
    assert pred.signal_at(0.5, 8) > 0.5


def test_above_the_cap_only_completions_cut_by_it_grow():
    rows = [("a", 10, 10), ("a", 40, None), ("b", 5, None), ("b", 40, None)]  # cap 40
    df = tiny_table(rows, 40)
    assert pred.tokens_at(df, 40) == pytest.approx((10 + 40 + 5 + 40) / 4)
    assert pred.tokens_at(df, 100) == pytest.approx((10 + 100 + 5 + 100) / 4)
    assert pred.tokens_at(df, 7) == pytest.approx((7 + 7 + 5 + 7) / 4)


def test_synthetic_table_peaks_inside_the_known_informative_range():
    # make_rollouts: answers from token 8 on; nothing is learnable before the first one
    df = make_rollouts(200, 8, seed=1, stratified=True)
    grid = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0]
    out = pred.predict(df, grid, group_size=8, prompts_per_step=8)
    first = min(r["xi"] for r in out["curve"] if r["H"] >= 8)
    assert out["curve"][0]["predicted"] == 0.0  # H = 2: no answer within it, no signal
    assert first <= out["best_xi"] <= 1.0  # peaks once answers land, before completions run on
    assert max(r["predicted"] for r in out["curve"]) == 1.0


def test_score_of_a_perfect_and_of_an_inverted_prediction():
    measured = [-0.2, 0.29, 0.30, 0.21, 0.20, 0.14]
    same = pred.score(np.array(measured) * 3, measured, 1.0, (0.5, 1.0))
    assert same == {"spearman": pytest.approx(1.0), "peak_inside": True,
                    "mae_normalised": pytest.approx(0.0)}
    flipped = pred.score([-m for m in measured], measured, 0.25, (0.5, 1.0))
    assert flipped["spearman"] == pytest.approx(-1.0) and not flipped["peak_inside"]
    with pytest.raises(ValueError, match="same xi grid"):
        pred.score([1.0], [1.0, 2.0], 1.0, (0.5, 1.0))


def test_score_withholds_what_one_xi_or_no_interval_cannot_say():
    # a smoke sweep at one xi with one seed: no rank correlation, no interval, so no verdict
    one = pred.score([1.0], [0.3], 1.0, (None, None))
    assert one == {"spearman": None, "peak_inside": None, "mae_normalised": pytest.approx(0.0)}
    lines = "\n".join(prediction.markdown(
        {"curve": [{"xi": 1.0, "H": 45, "measured": 1.0, "predicted": 1.0, "static": 1.0}],
         "predictor": one, "static": one, "predicted_peak_xi": 1.0, "static_peak_xi": 1.0,
         "prediction_tokens": 10, "sweep_tokens": 100, "cost_share": 0.1},
        {"xi": 1.0, "low": None, "high": None}))
    assert "| Spearman over the grid | n/a | n/a |" in lines
    assert "no interval (too few seeds or xi)" in lines and "1 (no verdict)" in lines


def test_a_table_without_a_correct_answer_is_refused():
    df = tiny_table([("a", 12, None), ("a", 12, None)], 12)
    with pytest.raises(ValueError, match="no attempt .* is correct"):
        pred.predict(df, [1.0], group_size=2, prompts_per_step=1)


def test_tokens_at_ends_an_episode_at_its_first_correct_answer():
    # generation ran on past the answer at token 10 (no early exit): c(H) counts 10 tokens, not
    # min(30, H); the miss that ended at EOS (8 tokens) stays 8; the one cut at the cap (40) grows
    rows = [("a", 30, 10), ("a", 8, None), ("b", 40, None)]
    df = tiny_table(rows, 40)
    expected = {9: 9 + 8 + 9, 10: 10 + 8 + 10, 11: 10 + 8 + 11, 20: 10 + 8 + 20,
                39: 10 + 8 + 39, 40: 10 + 8 + 40, 41: 10 + 8 + 41, 100: 10 + 8 + 100}
    assert {H: pred.tokens_at(df, H) for H in expected} == {
        H: pytest.approx(total / 3) for H, total in expected.items()}


def test_predict_errors_say_why_in_full():
    with pytest.raises(ValueError) as e:
        pred.predict(tiny_table([("a", 12, None)], 12), [1.0], group_size=2, prompts_per_step=1)
    assert str(e.value) == ("no attempt in the rollout table is correct, so E[T] is infinite and "
                            "no efficiency over xi can be predicted")
    # E[T] = 30: xi = 0.3 gives H = 9, one token short of the first answers (xi = 1/3, H = 10)
    with pytest.raises(ValueError) as e:
        pred.predict(tiny_table(half_right(), CAP), [0.3, 0.1], group_size=8, prompts_per_step=2)
    assert str(e.value) == ("no xi of [0.1, 0.3] predicts any learning signal (no informative "
                            "group at H = [3, 9]); give larger xi values")
    with pytest.raises(ValueError) as e:
        pred.score([1.0], [1.0, 2.0], 1.0, (0.5, 1.0))
    assert str(e.value) == "predicted (1) and measured (2) curves need the same xi grid"


def test_score_ranks_two_points_and_withholds_a_flat_curve_quietly():
    # two points that differ on both curves are enough for a rank correlation
    assert pred.score([1.0, 2.0], [3.0, 4.0], 1.0, (None, None))["spearman"] == pytest.approx(1.0)
    assert pred.score([2.0, 1.0], [3.0, 4.0], 1.0, (None, None))["spearman"] == pytest.approx(-1.0)
    # a flat curve (nothing learned anywhere, or one predicted value) has none: None, and scipy
    # is not asked (it would warn that an input is constant)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flat_pred = pred.score([0.5, 0.5], [0.1, 0.3], 1.0, (None, None))
        flat_meas = pred.score([0.1, 0.3], [0.2, 0.2], 1.0, (None, None))
        both = pred.score([0.5, 0.5, 0.5], [0.2, 0.2, 0.2], 1.0, (None, None))
    # [1, 1] against [1/3, 1]; [1/3, 1] against [1, 1]; [1, 1, 1] against [1, 1, 1]
    assert flat_pred == {"spearman": None, "peak_inside": None,
                         "mae_normalised": pytest.approx(1 / 3)}
    assert flat_meas == {"spearman": None, "peak_inside": None,
                         "mae_normalised": pytest.approx(1 / 3)}
    assert both == {"spearman": None, "peak_inside": None, "mae_normalised": 0.0}


def test_score_peak_inside_at_the_interval_ends_and_without_one_end():
    curve = [1.0, 2.0]
    inside = {x: pred.score(curve, curve, x, (0.5, 1.0))["peak_inside"]
              for x in (0.49, 0.5, 0.51, 0.99, 1.0, 1.01)}
    assert inside == {0.49: False, 0.5: True, 0.51: True, 0.99: True, 1.0: True, 1.01: False}
    # an interval with one end missing is no interval: no verdict either way
    assert pred.score(curve, curve, 0.7, (0.5, None))["peak_inside"] is None
    assert pred.score(curve, curve, 0.7, (None, 1.0))["peak_inside"] is None


def test_score_mae_needs_a_positive_maximum_on_both_curves():
    up = [1.0, 2.0]  # normalised [0.5, 1]
    # a maximum of exactly 0 (nothing learned) gives no MAE, whichever curve has it
    assert pred.score([-1.0, 0.0], up, 1.0, (None, None))["mae_normalised"] is None
    assert pred.score(up, [-1.0, 0.0], 1.0, (None, None))["mae_normalised"] is None
    assert pred.score([-2.0, -1.0], [-2.0, -1.0], 1.0, (None, None))["mae_normalised"] is None
    # just above 0 it is defined: [0, 1] against [0.5, 1]
    assert pred.score([0.0, 0.25], up, 1.0, (None, None))["mae_normalised"] == 0.25
    assert pred.score(up, [0.0, 0.25], 1.0, (None, None))["mae_normalised"] == 0.25


def test_score_reads_float32_curves_in_float64():
    # a curve from a float32 array (as a parquet column may hold it) is scored in float64:
    # 1/3 in float32 is not 1/3, so the same curve in both precisions would not match exactly
    f32 = np.array([1.0, 3.0], dtype=np.float32)
    assert pred.score(f32, [1.0, 3.0], 1.0, (None, None))["mae_normalised"] == 0.0
    assert pred.score([1.0, 3.0], f32, 1.0, (None, None))["mae_normalised"] == 0.0


# ---------------------------------------------------------------- on a real sampled table


def real_rollouts(folder: Path, path: str, max_tokens: int) -> None:
    """A rollout table sampled from a real tiny policy (pre-trained in seconds) written to path:
    16 one-digit sums x 4 attempts, early exit, as sample_t samples."""
    from relbudget.core.schemas import ROLLOUTS, write_table
    from relbudget.measure.models import load_saved
    from relbudget.measure.sampling import hf_generate_fn, requests_from, sample_table
    from relbudget.measure.task import builtin_splits

    model, tok = load_saved(pretrained(folder))
    train, _ = builtin_splits(16, 2, [1], 2, 0)
    fn = hf_generate_fn(model, tok, max_tokens, 1.0, 1.0, True, 64)
    write_table(sample_table(fn, tok, requests_from(train), 4, max_tokens, 0, "tiny", 16),
                ROLLOUTS, path)


def test_xi_stage_and_cli_predict_on_real_rollouts(project: Path, capsys):
    params = load_params(project / "params.yaml")
    real_rollouts(project / "policy", params.paths.rollouts, params.sampling.max_tokens)
    execute("xi", xi.run, params, xi.SECTIONS)
    summary = json.loads(Path(params.paths.xi_summary).read_text())
    predicted = summary["predicted"]
    assert [r["xi"] for r in predicted["curve"]] == params.sweep.xi
    assert predicted["best_xi"] in params.sweep.xi
    assert max(r["predicted"] for r in predicted["curve"]) == 1.0

    # the CLI on the same parquet, with the sweep's grid and batch: the same numbers
    assert main(["plan", "--rollouts", params.paths.rollouts, "--predict", "--json",
                 "--group-size", str(params.train.num_generations),
                 "--prompts-per-step", str(params.train.prompts_per_step),
                 *[a for x in params.sweep.xi for a in ("--xi", str(x))]]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["curve"] == predicted["curve"] and out["best_xi"] == predicted["best_xi"]
    assert out["prediction_tokens"] == int(pd.read_parquet(params.paths.rollouts)["n_tokens"].sum())

    assert main(["plan", "--rollouts", params.paths.rollouts, "--predict"]) == 0
    text = capsys.readouterr().out
    assert "predicted best xi =" in text and "static baseline" in text


@pytest.mark.parametrize("args, needle", [
    (["--predict", "--xi", "0"], "--xi"),
    (["--predict", "--prompts-per-step", "0"], "--prompts-per-step"),
    ([], "--target-xi is required"),
])
def test_predict_bad_input_is_one_error_line(tmp_path, capsys, args, needle):
    path = tmp_path / "r.parquet"
    tiny_table(half_right(), CAP).to_parquet(path, index=False)
    assert main(["plan", "--rollouts", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and needle in err


# ---------------------------------------------------------------- the report's comparison

# The default study's sweep (gain per 100k tokens, mean over 3 seeds) and the static baseline's
# curve on the same grid as the issue that asked for the predictor quotes them.
SWEEP = pd.DataFrame({"xi": [0.25, 0.5, 1.0, 1.75, 3.0, 6.0],
                      "gain_per_100k": [-0.2025, 0.2939, 0.2973, 0.2092, 0.2032, 0.1423]})
STATIC = [0.11, 1.0, 0.60, 0.34, 0.18, 0.09]


def test_report_comparison_gives_the_four_figures(tmp_path):
    from relbudget.report import plots, prediction

    predicted = {"best_xi": 1.0, "static_best_xi": 0.5, "prediction_tokens": 36_000,
                 "curve": [{"xi": x, "H": round(45 * x), "predicted": m, "static": s}
                           for x, m, s in zip(SWEEP["xi"], [0.2, 0.9, 1.0, 0.7, 0.6, 0.5],
                                              STATIC)]}
    peak = {"xi": 1.0, "low": 0.5, "high": 1.0}
    cmp = prediction.compare(predicted, SWEEP, peak, 720_000)
    # the static baseline's figures as the issue measured them: Spearman 0.89, MAE 0.41
    assert cmp["static"]["spearman"] == pytest.approx(0.886, abs=1e-3)
    assert cmp["static"]["mae_normalised"] == pytest.approx(0.41, abs=5e-3)
    assert cmp["static"]["peak_inside"] and cmp["predictor"]["peak_inside"]
    assert cmp["cost_share"] == pytest.approx(0.05)
    assert [r["measured"] for r in cmp["curve"]][2] == 1.0
    md = "\n".join(prediction.markdown(cmp, peak))
    assert "| Spearman over the grid |" in md and "0.41" in md and "5.0%" in md
    plots.predicted(pd.DataFrame(cmp["curve"]), peak, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"

    with pytest.raises(ValueError, match="no xi \\[0.25\\]"):
        prediction.compare({**predicted, "curve": predicted["curve"][1:]}, SWEEP, peak, 1)
