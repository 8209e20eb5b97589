"""Exact values of the report's analysis (relbudget.report.analysis) on tiny hand-made cells.

Hand-computed per-cell efficiency and training means, the xi_t slope at its edges (2 and 3
points), mean +- s.e. over seeds that disagree, the peak's tie rule and its interval when every
resample agrees, and which folder wins when two hold the same cell.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from relbudget.core.errors import DataError
from relbudget.core.params import params_with
from relbudget.core.schemas import HISTORY, write_table
from relbudget.report import analysis

BASE = {"at": {"H_eval": {"accuracy": 0.5, "E_T": 40.0, "first_answer_accuracy": 0.3}}}


def history(tokens, xi_t=None, **cols) -> pd.DataFrame:
    n = len(tokens)
    return pd.DataFrame({
        "step": range(1, n + 1), "generated_tokens": [tokens[0]] * n,
        "cum_generated_tokens": tokens, "reward_mean": [0.5] * n,
        "frac_informative": cols.get("inf", [0.5] * n), "frac_reward_zero_std": [0.5] * n,
        "clipped_ratio": cols.get("clip", [0.1] * n), "mean_length": [20.0] * n,
        "tokens_after_correct": cols.get("after", [0.0] * n), "E_T": [40.0] * n,
        "xi_t": xi_t if xi_t is not None else [1.0] * n, "H": [40] * n})


# ---------------------------------------------------------------- xi_t slope and training means


def test_xi_t_slope_by_hand_and_at_its_edges():
    # xi_t = 1, 1.5, 3 at 0, 10k, 20k tokens: least squares slope (3 - 1) / 2 = 1.0 per 10k
    assert analysis.xi_t_slope(history([0, 10_000, 20_000], [1.0, 1.5, 3.0])) == pytest.approx(1.0)
    assert analysis.xi_t_slope(history([0, 10_000], [1.0, 2.0])) is None  # 2 points: no fit
    # 3 rows but one xi_t undefined (NaN) and one infinite: fewer than 3 finite points
    assert analysis.xi_t_slope(history([0, 1, 2], [1.0, math.nan, 2.0])) is None
    assert analysis.xi_t_slope(history([0, 1, 2], [1.0, math.inf, 2.0])) is None
    # the finite ones of 4: (0, 1), (1, 2), (3, 4) in 10k tokens; mean t = 4/3, mean y = 7/3;
    # sum dt*dy = 16/9 + 1/9 + 25/9 = sum dt^2: slope 1.0
    four = history([0, 10_000, 20_000, 30_000], [1.0, 2.0, math.inf, 4.0])
    assert analysis.xi_t_slope(four) == pytest.approx(1.0)
    assert analysis.xi_t_slope(history([5, 5, 5], [1.0, 2.0, 3.0])) is None  # one token value
    # two token values among 3 points is enough: (0, 1), (0, 1), (1, 3) -> slope 2 per 10k
    assert analysis.xi_t_slope(history([0, 0, 10_000], [1.0, 1.0, 3.0])) == pytest.approx(2.0)


def test_training_means_by_hand():
    h = history([100, 300, 600], [1.0, 2.0, 3.0], inf=[0.2, 0.4, 0.9], clip=[0.0, 0.3, 0.3],
                after=[1.0, math.nan, 3.0])
    t = analysis._training(h)
    # slope: tokens / 1e4 = 0.01, 0.03, 0.06, deviations (-7, -1, 8) / 300, xi_t's (-1, 0, 1):
    # (15 / 300) / (114 / 90000) = 4500 / 114 per 10k
    assert t == {"steps": 3, "generated_tokens": 600, "frac_informative_mean": pytest.approx(0.5),
                 "clipped_ratio_mean": pytest.approx(0.2), "attempts_per_completion": None,
                 "tokens_after_correct_mean": pytest.approx(2.0), "xi_t_final": 2.0,
                 "xi_t_slope_per_10k": pytest.approx(4500 / 114)}
    with_attempts = analysis._training(h.assign(attempts_per_completion=[1.0, 2.0, 6.0]))
    assert with_attempts["attempts_per_completion"] == pytest.approx(3.0)
    empty = analysis._training(history([1])[:0])
    assert (empty["steps"], empty["generated_tokens"]) == (0, 0)
    assert empty["frac_informative_mean"] is None


# ---------------------------------------------------------------- one cell, one regime


def test_cell_row_by_hand():
    ev = {"xi": 2, "seed": "1", "H": 80.0,
          "at": {"H_eval": {"accuracy": 0.7, "E_T": 30.0, "first_answer_accuracy": 0.4}}}
    row = analysis.cell_row(ev, history([25_000, 50_000]), BASE)
    # gain 0.2 over 50k tokens: 0.4 per 100k; E[T] falls 10 -> 20 per 100k
    assert row["xi"] == 2.0 and type(row["xi"]) is float
    assert row["seed"] == 1 and row["H"] == 80 and type(row["H"]) is int
    assert row["gain"] == pytest.approx(0.2) and row["gain_per_100k"] == pytest.approx(0.4)
    assert row["E_T_fall_per_100k"] == pytest.approx(20.0)
    assert row["acc_H_eval"] == 0.7 and row["E_T"] == 30.0
    assert row["first_answer_acc"] == 0.4 and row["first_answer_gain"] == pytest.approx(0.1)
    no_first = {**ev, "at": {"H_eval": {"accuracy": 0.7, "E_T": 30.0}}}
    assert analysis.cell_row(no_first, history([1]), BASE)["first_answer_gain"] is None
    base_no_first = {"at": {"H_eval": {"accuracy": 0.5, "E_T": 40.0}}}
    assert analysis.cell_row(ev, history([1]), base_no_first)["first_answer_gain"] is None


def test_regime_rows_are_the_cells_at_their_xi_by_hand():
    """A regime's row is the mean (and standard error) over the seeds of the sweep's cells at its
    xi; the base's accuracy at the regime's H is read from the base's own evaluation pass."""
    ev = lambda seed, acc, own: {"xi": 1.75, "seed": seed, "H": 70,  # noqa: E731
                                 "at": {"H_own": {"accuracy": own},
                                        "H_eval": {"accuracy": acc, "E_T": 35.0,
                                                   "first_answer_accuracy": 0.5}}}
    cells = [(ev(0, 0.7, 0.6), history([10_000, 20_000])),
             (ev(1, 0.8, 0.7), history([10_000, 20_000])),
             ({**ev(0, 0.9, 0.9), "xi": 3.0, "H": 120}, history([10_000, 20_000]))]
    table = analysis.sweep_table(cells, BASE)
    budgets = {"balanced": {"target_xi": 1.75, "xi": 1.8, "H": 70, "p_informative": 0.6}}
    # the base's pass: 2 prompts x 2 attempts at cap 100, first correct at 50, 80, none, 60
    base = pd.DataFrame({"prompt_id": ["a", "a", "b", "b"], "attempt": [0, 1, 0, 1],
                         "n_tokens": [50, 80, 100, 60], "max_tokens": 100,
                         "first_correct_token": pd.array([50, 80, None, 60], dtype="Int64")})
    (row,) = analysis.regime_rows({"balanced": 1.75}, budgets, table, BASE, base)
    assert (row["regime"], row["target_xi"], row["xi"], row["H"], row["n_seeds"]) == \
        ("balanced", 1.75, 1.8, 70, 2)
    assert row["predicted_p_informative"] == 0.6
    assert row["acc_own_H_base"] == 0.5  # 2 of 4 attempts correct within 70 tokens (50, 60)
    assert row["acc_own_H"] == pytest.approx(0.65) and row["acc_H_eval"] == pytest.approx(0.75)
    assert row["acc_H_eval_err"] == pytest.approx(0.05)  # s.e. of 0.7 and 0.8
    assert row["acc_H_eval_base"] == 0.5 and row["first_answer_acc_base"] == 0.3
    # gains 0.2 and 0.3 over 20k tokens: 1.0 and 1.5 per 100k, mean 1.25 +- 0.25
    assert row["gain_per_100k"] == pytest.approx(1.25)
    assert row["gain_per_100k_err"] == pytest.approx(0.25)
    assert row["E_T_fall_per_100k"] == pytest.approx(25.0) and row["E_T_base"] == 40.0
    # the sweep's own number at that xi, never another one
    agg = analysis.by_xi(table).set_index("xi")
    assert row["gain_per_100k"] == agg.loc[1.75, "gain_per_100k"]
    # past the base pass's cap: no extrapolated accuracy
    assert analysis.base_accuracy_at(base, 101) is None
    assert analysis.base_accuracy_at(base, 50) == 0.25
    assert analysis.base_accuracy_at(base, 100) == 0.75  # exactly at the cap: still read
    with pytest.raises(DataError) as err:
        analysis.regime_rows({"ample": 6.0}, {"ample": budgets["balanced"]}, table, BASE, base)
    assert str(err.value) == ("regime 'ample' (xi 6) has no sweep cell; it must be one of params "
                              "sweep.xi") and err.value.problems == []
    two = {**budgets, "deficient": budgets["balanced"]}
    with pytest.raises(DataError) as err:
        analysis.regime_rows({"ample": 3.0}, two, table, BASE, base)
    assert str(err.value) == ("regime 'ample' is not in budgets.yaml (balanced, deficient); "
                              "rerun the xi stage (dvc repro xi)") and err.value.problems == []
    # one seed at xi 3: its mean is that seed's, and it has no standard error (None, not NaN)
    (one,) = analysis.regime_rows({"ample": 3.0}, {"ample": budgets["balanced"]}, table, BASE,
                                  base)
    assert one["n_seeds"] == 1 and one["acc_H_eval"] == pytest.approx(0.9)
    assert one["acc_H_eval_err"] is None and one["gain_per_100k_err"] is None


# ---------------------------------------------------------------- over seeds


def _table(values: dict[float, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"xi": x, "seed": s, "H": round(40 * x), "gain_per_100k": v,
                          "acc_H_eval": 0.5 + v}
                         for x, vs in values.items() for s, v in enumerate(vs)])


def test_by_xi_mean_and_se_when_seeds_disagree():
    t = _table({1.0: [0.0, 0.3, 0.6], 2.0: [0.9]})
    agg = analysis.by_xi(t).set_index("xi")
    assert agg.loc[1.0, "gain_per_100k"] == pytest.approx(0.3)
    assert agg.loc[1.0, "gain_per_100k_err"] == pytest.approx(0.3 / math.sqrt(3))  # sd 0.3
    assert agg.loc[1.0, "acc_H_eval"] == pytest.approx(0.8)
    assert math.isnan(agg.loc[2.0, "gain_per_100k_err"])  # one seed: no s.e.
    assert list(agg["n_seeds"]) == [3, 1] and list(agg["H"]) == [40, 80]
    assert "first_answer_acc" not in agg  # only the figures the table has


def test_sweep_table_orders_by_xi_then_seed():
    cells = [({"xi": x, "seed": s, "H": 40, "at": {"H_eval": {"accuracy": 0.5, "E_T": 40.0}}},
              history([100])) for x, s in ((2.0, 1), (1.0, 1), (2.0, 0), (1.0, 0))]
    t = analysis.sweep_table(cells, BASE)
    assert list(zip(t["xi"], t["seed"])) == [(1.0, 0), (1.0, 1), (2.0, 0), (2.0, 1)]
    assert list(t.index) == [0, 1, 2, 3]


@pytest.mark.parametrize("n_resamples", [1, 50])
def test_peak_when_every_resample_agrees(n_resamples):
    # xi 2 beats xi 1 in every seed: every resample's argmax is 2, the interval is [2, 2]
    t = _table({1.0: [0.1, 0.2], 2.0: [0.5, 0.6], 4.0: [-0.1, 0.0]})
    peak = analysis.peak_xi(t, n_resamples=n_resamples)
    assert peak == {"xi": 2.0, "low": 2.0, "high": 2.0, "level": 0.95,
                    "n_resamples": n_resamples, "share_at_peak": 1.0}


def test_peak_ties_go_to_the_smaller_xi_and_non_finite_values_are_skipped():
    # xi 4 keeps two finite seeds (0.1, 0.0) besides a NaN, so the interval is not withheld
    t = _table({0.5: [math.nan], 1.0: [0.4, 0.2], 2.0: [0.3, 0.3], 4.0: [math.inf, 0.1, 0.0]})
    t.loc[t["xi"] == 4.0, "gain_per_100k"] = [math.nan, 0.1, 0.0]
    peak = analysis.peak_xi(t, n_resamples=200)
    assert peak["xi"] == 1.0  # 1.0 and 2.0 both mean 0.3
    assert peak["low"] == 1.0 and peak["high"] == 2.0
    # resamples of xi 1 are 0.2, 0.3 (twice as often) or 0.4: 2.0 wins only when xi 1 draws 0.2
    # twice (1/4); the rest tie or lose and go to 1.0
    assert peak["share_at_peak"] == pytest.approx(0.75, abs=0.08)
    with pytest.raises(ValueError, match="no finite gain_per_100k"):
        analysis.peak_xi(_table({1.0: [math.nan]}))
    assert analysis.peak_xi(t, col="acc_H_eval", n_resamples=10)["xi"] == 1.0


def test_peak_interval_quantiles_are_grid_values():
    # xi 4 never wins; it is there because an interval needs three xi values
    t = _table({1.0: [0.0, 1.0], 2.0: [0.5, 0.5], 4.0: [-1.0, -1.0]})
    # xi 1 resamples: 0 (1/4), 0.5 (1/2, a tie -> 1.0), 1 (1/4): xi 2 wins a quarter of them
    peak = analysis.peak_xi(t, n_resamples=4000, level=0.6)
    assert peak["xi"] == 1.0 and peak["share_at_peak"] == pytest.approx(0.75, abs=0.03)
    assert (peak["low"], peak["high"]) == (1.0, 2.0)  # the 20% and 80% quantiles of the draws
    narrow = analysis.peak_xi(t, n_resamples=4000, level=0.4)
    assert (narrow["low"], narrow["high"]) == (1.0, 1.0)  # 30% and 70%: both xi 1
    # xi 2 at 0.6 beats xi 1's resamples 0 and 0.5 (3/4 of them): the 30% quantile is xi 2
    flip = _table({1.0: [0.0, 1.0], 2.0: [0.6, 0.6], 4.0: [-1.0, -1.0]})
    assert analysis.peak_xi(flip, n_resamples=4000, level=0.4)["low"] == 2.0
    # two resamples that disagree: the ends are grid values, not interpolated between them
    two = analysis.peak_xi(flip, n_resamples=2)
    assert (two["low"], two["high"], two["share_at_peak"]) == (1.0, 2.0, 0.5)


# ---------------------------------------------------------------- the cells on disk


def test_load_cells_prefers_the_folder_named_as_the_cell(tmp_path):
    params = params_with({"allow_outside_paths": True, "paths": {"sweep": str(tmp_path / "sw")},
                          "regimes": {"r": 1.0}, "sweep": {"xi": [1.0, 2.0], "seeds": [0]}})
    p = params.paths

    def put(folder, xi, acc):
        Path(p.cell_eval(folder)).parent.mkdir(parents=True)
        Path(p.cell_eval(folder)).write_text(json.dumps(
            {"xi": xi, "seed": 0, "H": 40, "at": {"H_eval": {"accuracy": acc}}}))
        write_table(history([100 * (1 + int(acc * 10))]), HISTORY, p.cell_history(folder))

    put("xi1-s0", 1.0, 0.1)    # sorts before xi1.0-s0; the named folder must win either way
    put("xi1.0-s0", 1.0, 0.2)
    put("xi2.0-s0", 2.0, 0.3)
    put("xi2.0000-s0", 2.0, 0.4)  # sorts after: the named one still wins
    put("xi3-s0", 3.0, 0.5)  # the only folder of its cell, named otherwise: still read
    three = params_with({"allow_outside_paths": True, "paths": {"sweep": str(tmp_path / "sw")},
                         "regimes": {"r": 1.0}, "sweep": {"xi": [1.0, 2.0, 3.0], "seeds": [0]}})
    cells = analysis.load_cells(p, three.sweep)
    assert [ev["at"]["H_eval"]["accuracy"] for ev, _ in cells] == [0.2, 0.3, 0.5]
    assert [int(h["cum_generated_tokens"].iloc[0]) for _, h in cells] == [300, 400, 600]
    missing = params_with({"allow_outside_paths": True, "paths": {"sweep": str(tmp_path / "sw")},
                           "regimes": {"r": 1.0}, "sweep": {"xi": [1.0, 5.0, 4.0], "seeds": [0]}})
    where = re.escape(str(tmp_path / "sw"))
    with pytest.raises(FileNotFoundError, match=f"under {where}: xi5.0-s0, xi4.0-s0; run their"):
        analysis.load_cells(p, missing.sweep)


def test_an_empty_cell_history_is_damage_not_a_rate(tmp_path):
    """Found by a hostile probe: a history.parquet with no row counted as 1 token, and the
    headline read a gain of 2344 per 100k tokens. The report now refuses the file by name, and
    a run without tokens has no per-100k rate at all."""
    from relbudget.core.errors import DataError
    from relbudget.measure.metrics import efficiency

    params = params_with({"allow_outside_paths": True, "paths": {"sweep": str(tmp_path / "sw")},
                          "regimes": {"r": 1.0}, "sweep": {"xi": [1.0], "seeds": [0]}})
    p = params.paths
    Path(p.cell_eval("xi1.0-s0")).parent.mkdir(parents=True)
    Path(p.cell_eval("xi1.0-s0")).write_text(json.dumps(
        {"xi": 1.0, "seed": 0, "H": 40, "at": {"H_eval": {"accuracy": 0.9}}}))
    write_table(history([100]).iloc[:0], HISTORY, p.cell_history("xi1.0-s0"))
    with pytest.raises(DataError, match=r"xi1.0-s0/history.parquet holds no training step; "
                                        r"rerun .* \(dvc repro sweep@xi1.0-s0\)") as err:
        analysis.load_cells(p, params.sweep)
    assert err.value.problems == []
    base = {"accuracy": 0.5, "E_T": 40.0}
    assert efficiency({"accuracy": 0.6, "E_T": 30.0}, base, 0) == {
        "gain": pytest.approx(0.1), "gain_per_100k": None, "E_T_fall_per_100k": None}
    one = efficiency({"accuracy": 0.6, "E_T": 30.0}, base, 1)  # one token: the rate is defined
    assert one["gain_per_100k"] == pytest.approx(0.1 * 1e5) and one["E_T_fall_per_100k"] == 1e6


def test_gain_metrics_reads_the_base_file_at_H_eval_by_hand(tmp_path):
    """What every training run logs: its accuracy and E[T] at H_eval against the base policy's
    evaluation file, per 100k of its own generated tokens (another horizon in either is not
    read)."""
    from relbudget.measure.metrics import gain_metrics

    base = tmp_path / "base.json"
    base.write_text(json.dumps({"at": {"H_eval": {"accuracy": 0.5, "E_T": 40.0},
                                       "x3": {"accuracy": 0.1, "E_T": 90.0}}}))
    at = {"x3": {"accuracy": 0.9, "E_T": 10.0}, "H_eval": {"accuracy": 0.6, "E_T": 30.0}}
    got = gain_metrics(at, base, 20000)  # 0.1 and 10 tokens per 20k = x5 per 100k
    assert got == {"gain": pytest.approx(0.1), "gain_per_100k": pytest.approx(0.5),
                   "E_T_fall_per_100k": pytest.approx(50.0)}
    assert gain_metrics(at, str(base), 0)["gain_per_100k"] is None  # a str path too


def test_a_damaged_eval_json_is_named_with_its_error(tmp_path):
    f = tmp_path / "xi1.0-s0" / "eval.json"
    f.parent.mkdir()
    long = "x" * 150  # float() of it: a message longer than the 100 characters kept
    f.write_text(json.dumps({"xi": long, "seed": 0, "at": {"H_eval": {}}}))
    with pytest.raises(DataError) as err:
        analysis.read_eval(f)
    try:
        float(long)
    except ValueError as e:
        cut = str(e)[:100]
    assert str(err.value) == (f"{f} is damaged (ValueError: {cut}); rerun the stage that writes "
                              "it (dvc repro sweep@xi1.0-s0)") and err.value.problems == []
    f.write_text('{"xi": 1.0, "seed": 0}')
    with pytest.raises(DataError, match=r"is damaged \(KeyError: 'at'\)"):
        analysis.read_eval(f)


# ---------------------------------------------------------------- compute matching


def test_not_compute_matched_at_its_ratio_by_hand():
    def t(tokens):
        return pd.DataFrame({"xi": [1.0, 2.0][:len(tokens)], "seed": [0, 1][:len(tokens)],
                             "generated_tokens": tokens})

    assert analysis.not_compute_matched(_table({1.0: [0.1]})) is None  # figures only
    assert analysis.not_compute_matched(t([1000, 2000])) is None  # exactly MATCH_RATIO apart
    assert analysis.not_compute_matched(t([1, 2])) is None
    assert analysis.not_compute_matched(t([2001, 1000])) == (
        "NOT COMPUTE-MATCHED: cells trained on 1,000 (xi 2, seed 1) to 2,001 generated tokens; "
        "rerun the short cells with sweep.token_budget reachable (raise train.max_steps)")
    assert analysis.not_compute_matched(t([0, 0])).startswith(  # no token at all: no rate
        "NOT COMPUTE-MATCHED: cells trained on 0 (xi 1, seed 0) to 0 generated")


def test_peak_is_withheld_from_cells_that_are_not_compute_matched():
    t = _table({1.0: [0.1, 0.2], 2.0: [0.5, 0.6], 4.0: [-0.1, 0.0]})
    t["generated_tokens"] = [1000, 1000, 1000, 1000, 1000, 2001]
    why = analysis.not_compute_matched(t)
    assert why.startswith("NOT COMPUTE-MATCHED: cells trained on 1,000 (xi 1, seed 0)")
    assert analysis.peak_xi(t) == {"xi": 2.0, "low": None, "high": None, "level": 0.95,
                                   "n_resamples": 2000, "share_at_peak": None, "withheld": why}
    t.loc[5, "generated_tokens"] = 2000
    assert analysis.peak_xi(t, n_resamples=10)["low"] == 2.0


# ---------------------------------------------------------------- the peak under each choice


def _horizon_cells():
    """xi 0.5 / 1 / 2 (H 20 / 40 / 80) x 2 seeds, read at H_eval and two multiples of E[T];
    each cell generated 20k tokens, so a gain of g is 5 g per 100k."""
    acc = {0.5: {"H_eval": 0.6, "x0.75": 0.5, "x3": 0.7},
           1.0: {"H_eval": 0.8, "x0.75": 0.3, "x3": 0.9},
           2.0: {"H_eval": 0.7, "x0.75": 0.25, "x3": 0.65}}
    cells = []
    for xi, at in acc.items():
        for seed in (0, 1):
            cells.append(({"xi": xi, "seed": seed, "H": int(40 * xi),
                           "at": {n: {"accuracy": a + 0.02 * seed, "E_T": 30.0}
                                  for n, a in at.items()}},
                          history([10_000, 20_000])))
    base = {"at": {"x3": {"H": 120, "accuracy": 0.6, "E_T": 40.0},
                   "H_own": {"H": 10, "accuracy": 0.1, "E_T": 40.0},
                   "x0.75": {"H": 30, "accuracy": 0.2, "E_T": 40.0},
                   "x1.5": {"H": 60, "accuracy": 0.4, "E_T": 40.0},  # no cell read there
                   "H_eval": {"H": 64, "accuracy": 0.5, "E_T": 40.0}}}
    return cells, base


def test_horizon_choices_are_H_eval_then_the_multiples_every_cell_has():
    cells, base = _horizon_cells()
    assert analysis.horizon_choices(base, cells) == ["H_eval", "x0.75", "x3"]
    # by H, not by name: x10 sorts before x3 as text
    at = {"x10": {"H": 400}, "x3": {"H": 120}, "H_eval": {"H": 64}, "x0.5": {"H": 20}}
    assert analysis.horizon_choices({"at": at}, [({"at": at}, None)]) == [
        "H_eval", "x0.5", "x3", "x10"]


def test_gains_at_a_horizon_by_hand():
    cells, base = _horizon_cells()
    g = analysis.gains_at(cells, base, "x0.75")
    assert list(g.columns) == ["xi", "seed", "H", "gain", "gain_per_100k", "E_T_fall_per_100k"]
    assert list(zip(g["xi"], g["seed"], g["H"])) == [
        (0.5, 0, 20), (0.5, 1, 20), (1.0, 0, 40), (1.0, 1, 40), (2.0, 0, 80), (2.0, 1, 80)]
    # xi 0.5 seed 1: 0.52 - 0.2 = 0.32, x 5 = 1.6 per 100k; E[T] 40 -> 30: 50 per 100k
    assert g.loc[1, "gain"] == pytest.approx(0.32) and g.loc[1, "gain_per_100k"] == \
        pytest.approx(1.6)
    assert list(g["E_T_fall_per_100k"]) == [pytest.approx(50.0)] * 6
    assert g.loc[4, "gain_per_100k"] == pytest.approx(0.25)  # 0.25 - 0.2 = 0.05


def test_robustness_table_by_hand():
    cells, base = _horizon_cells()
    rows = analysis.robustness(cells, base, E_T_within=20.0)
    # H_eval and x3 peak at xi 1 (H 40), x0.75 at xi 0.5 (H 20), every resample agreeing; read
    # within one completion (E[T] 20) the same cells sit at xi H / 20
    assert rows == [
        {"choice": "H_eval / restart", "h_eval": "H_eval", "H_eval": 64, "reading": "restart",
         "peak_xi": 1.0, "low": 1.0, "high": 1.0},
        {"choice": "H_eval / within", "h_eval": "H_eval", "H_eval": 64, "reading": "within",
         "peak_xi": 2.0, "low": 2.0, "high": 2.0},
        {"choice": "x0.75 / restart", "h_eval": "x0.75", "H_eval": 30, "reading": "restart",
         "peak_xi": 0.5, "low": 0.5, "high": 0.5},
        {"choice": "x0.75 / within", "h_eval": "x0.75", "H_eval": 30, "reading": "within",
         "peak_xi": 1.0, "low": 1.0, "high": 1.0},
        {"choice": "x3 / restart", "h_eval": "x3", "H_eval": 120, "reading": "restart",
         "peak_xi": 1.0, "low": 1.0, "high": 1.0},
        {"choice": "x3 / within", "h_eval": "x3", "H_eval": 120, "reading": "within",
         "peak_xi": 2.0, "low": 2.0, "high": 2.0}]
    # no within-completion E[T] (an older xi stage): the restart rows only
    assert [r["choice"] for r in analysis.robustness(cells, base, None)] == [
        "H_eval / restart", "x0.75 / restart", "x3 / restart"]
    # one seed: no interval under either reading, and the within row keeps None, not a number
    one = [(ev, h) for ev, h in cells if ev["seed"] == 0]
    first, within = analysis.robustness(one, base, 20.0)[:2]
    assert (first["peak_xi"], first["low"], first["high"]) == (1.0, None, None)
    assert (within["peak_xi"], within["low"], within["high"]) == (2.0, None, None)
