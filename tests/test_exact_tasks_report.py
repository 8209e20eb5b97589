"""Exact values of the cross-task report (relbudget.report.tasks) by hand: a task's row from a
table of 3 xi x 2 seeds that disagree, the interval test exactly where two intervals touch and
with an end missing, each of the five verdict sentences, the headline numbers, and the Markdown
line by line, a task without a prediction and a sweep of zero tokens included."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from relbudget.core.params import params_with
from relbudget.core.schemas import HISTORY, write_table
from relbudget.report import tasks as T


def _table(E_T: float, gains: dict[float, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"xi": xi, "seed": s, "H": round(xi * E_T), "gain_per_100k": g}
                         for xi, gs in gains.items() for s, g in enumerate(gs)])


# xi 1 beats 0.5 and 2 in both seeds: the peak is xi 1 in every resample
GAINS = {0.5: [0.1, 0.2], 1.0: [0.5, 0.6], 2.0: [0.0, 0.1]}


def test_task_result_by_hand():
    t = T.task_result("easy", 10.0, _table(10.0, GAINS))
    assert t == {"task": "easy", "E_T": 10.0, "peak": {"xi": 1.0, "low": 1.0, "high": 1.0},
                 "peak_H": {"H": 10, "low": 10, "high": 10},
                 "sweep": [{"xi": 0.5, "H": 5, "gain_per_100k": pytest.approx(0.15)},
                           {"xi": 1.0, "H": 10, "gain_per_100k": pytest.approx(0.55)},
                           {"xi": 2.0, "H": 20, "gain_per_100k": pytest.approx(0.05)}],
                 **dict.fromkeys(T.PREDICTION_KEYS)}
    # peak H = xi x E[T] rounded half up: 1.75 x 12.2 = 21.35 -> 21
    assert T.task_result("h", 12.2, _table(12.2, {1.75: [1, 1], 1.0: [0, 0], 3.0: [0, 0]}))[
        "peak_H"] == {"H": 21, "low": 21, "high": 21}
    # one seed: no interval, in xi or in H
    one = T.task_result("one", 10.0, _table(10.0, {x: g[:1] for x, g in GAINS.items()}))
    assert one["peak"] == {"xi": 1.0, "low": None, "high": None}
    assert one["peak_H"] == {"H": 10, "low": None, "high": None}


def test_common_where_intervals_touch_or_lack_an_end():
    assert T.common([(0.5, 1.0), (1.0, 2.0)]) is True  # touching at 1
    assert T.common([(0.5, 0.99), (1.0, 2.0)]) is False
    assert T.common([(0.5, 1.0)]) is True
    assert T.common([(None, 1.0), (1.0, 2.0)]) is None
    assert T.common([(0.5, 1.0), (1.0, None)]) is None
    assert (T.interval(0.5, 1.0), T.interval(0.5, None), T.interval(None, 2.0)) == (
        "[0.5, 1]", "none", "none")


def _task(name, E_T, xi, lo, hi, H, H_lo, H_hi):
    return {"task": name, "E_T": E_T, "peak": {"xi": xi, "low": lo, "high": hi},
            "peak_H": {"H": H, "low": H_lo, "high": H_hi}}


EASY = _task("easy", 10.0, 1.0, 0.5, 1.0, 10, 5, 10)
HARD = _task("hard", 40.25, 1.0, 1.0, 2.0, 40, 40, 81)


def test_each_verdict_word_for_word():
    head = "The per-task peaks (95% bootstrap intervals over seeds) align "
    tail = (": easy (E[T] 10.0): xi 1 [0.5, 1], H 10 [5, 10]; hard (E[T] 40.2): xi 1 [1, 2], "
            "H 40 [40, 81].")
    u = T.universality([EASY, HARD])
    assert u == {"peak_xi_common": True, "peak_H_common": False}
    assert T.verdict([EASY, HARD], u) == (
        head + "in xi, not in H: the efficient budget scales with E[T], as the theory says" + tail)
    for xi, H, words in ((False, True, "in H, not in xi: an absolute budget, against the theory"),
                         (False, False, "neither in xi nor in H"),
                         (True, True, "in xi and in H alike (the tasks' intervals cannot tell "
                                      "the two apart)")):
        assert T.verdict([EASY, HARD], {"peak_xi_common": xi, "peak_H_common": H}) == \
            head + words + tail
    assert T.verdict([EASY], {"peak_xi_common": None, "peak_H_common": True}) == (
        "No answer on alignment: at least one task's peak has no interval (fewer than 2 seeds or "
        "3 xi, or cells that are not compute-matched).")


def test_headline_numbers():
    u = {"peak_xi_common": True, "peak_H_common": None}
    assert T.headline([EASY, {**HARD, "E_T": 40.123456}], u) == {
        "task_E_T": {"easy": 10.0, "hard": 40.12},  # 4 significant digits
        "task_peak_xi": {"easy": 1.0, "easy_low": 0.5, "easy_high": 1.0,
                         "hard": 1.0, "hard_low": 1.0, "hard_high": 2.0},
        "universality": {"peak_xi_common": 1}}  # no answer: left out, not 0


def test_markdown_line_by_line():
    none = _task("flat", 20.0, 2.0, None, None, 40, None, None)
    u = T.universality([EASY, none])  # flat has no interval: no answer
    assert T.markdown([EASY, none], u, "xi.png", "H.png").split("\n") == [
        "# Across tasks: one xi or one H?", "", T.verdict([EASY, none], u), "",
        "| task | E[T] | peak xi | interval | peak H | interval |",
        "|---|---|---|---|---|---|",
        "| easy | 10.00 | 1 | [0.5, 1] | 10 | [5, 10] |",
        "| flat | 20.00 | 2 | none | 40 | none |",
        "", "![efficiency against xi, every task](xi.png)", "",
        "![efficiency against H, every task](H.png)", ""]
    two = T.markdown([EASY, HARD], T.universality([EASY, HARD]), "xi.png", "H.png").split("\n")
    assert two[2] == T.verdict([EASY, HARD], T.universality([EASY, HARD])) and "hard" in two[2]


def test_prediction_table_line_by_line():
    scored = {**EASY, "predicted_peak_xi": 0.5, "peak_inside": True, "spearman": 0.8123,
              "mae_normalised": 0.15, "prediction_tokens": 12345, "sweep_tokens": 100000}
    outside = {**HARD, "predicted_peak_xi": 4.0, "peak_inside": False, "spearman": None,
               "mae_normalised": None, "prediction_tokens": 7, "sweep_tokens": 0}
    lines = T.prediction_table([scored, {**EASY, "task": "old"}, outside])
    assert lines[:3] == ["", "Predicted before training (from each task's base rollouts alone) "
                         "against the measured sweep (goals: inside the interval, Spearman >= "
                         "0.8, normalised MAE <= 0.15, cost <= 10% of the sweep's tokens):", ""]
    assert lines[3:] == [
        "| task | predicted peak xi | measured peak xi [interval] | Spearman | normalised MAE | "
        "cost in tokens (share of the task's sweep) |", "|---|---|---|---|---|---|",
        "| easy | 0.5 (inside) | 1 [0.5, 1] | 0.81 | 0.15 | 12,345 (12.3%) |",
        "| old | n/a | | | | |",  # no prediction: its row says so, and the next row follows
        "| hard | 4 (outside) | 1 [1, 2] | n/a | n/a | 7 (n/a) |"]
    assert T.prediction_table([{**EASY, "predicted_peak_xi": None}]) == []


def test_load_task_reads_the_tasks_own_files(tmp_path):
    params = params_with({"allow_outside_paths": True, "paths": {"tasks": str(tmp_path / "t")},
                          "regimes": {"r": 1.0}, "sweep": {"xi": [1.0], "seeds": [0]}})
    p = params.paths.task("carry1")
    for path, doc in ((p.xi_summary, {"E_T": 41.9}), (p.eval_json("base"), {"at": {}}),
                      (p.cell_eval("xi1.0-s0"),
                       {"xi": 1.0, "seed": 0, "H": 42, "at": {"H_eval": {"accuracy": 0.5}}})):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
    write_table(pd.DataFrame({
        "step": [1], "generated_tokens": [100], "cum_generated_tokens": [100],
        "reward_mean": [0.5], "frac_informative": [0.5], "frac_reward_zero_std": [0.5],
        "clipped_ratio": [0.1], "mean_length": [20.0], "tokens_after_correct": [0.0],
        "E_T": [40.0], "xi_t": [1.0], "H": [42]}), HISTORY, p.cell_history("xi1.0-s0"))
    got = T.load_task(p, params.sweep)
    assert got["summary"] == {"E_T": 41.9} and got["base_eval"] == {"at": {}}
    ((ev, history),) = got["cells"]
    assert ev["H"] == 42 and history["cum_generated_tokens"].tolist() == [100]
    assert str(tmp_path / "t" / "carry1" / "sweep") in str(p.cell_eval("xi1.0-s0"))
