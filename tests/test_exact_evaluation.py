"""Exact values of the evaluation metrics (relbudget.measure.evaluation) by hand, on the table of
tests/synth.py (cap 20; prompt, attempt: tokens, first correct token):

    a0: 8, 8    a1: 20, -    a2: 12, 5    a3: 6, -
    b0: 20, 15  b1: 9, -     b2: 20, -    b3: 4, 4

read at H = 10, at H exactly a hit's token and one below it, and where nothing is solved."""

from __future__ import annotations

import math

import pytest

from relbudget.measure.evaluation import (censor, metrics_at, multiple_horizons, multiple_name,
                                          pass_at_k)
from tests.synth import EVAL


def test_metrics_at_10_by_hand():
    assert metrics_at(EVAL, 10, [1, 2]) == {
        "H": 10,
        "accuracy": 3 / 8,  # hits at 8, 5, 4
        # tokens to the first hit, or the attempt cut at 10: 8+10+5+6 + 10+9+10+4 = 62, 3 hits
        "E_T": pytest.approx(62 / 3), "xi": pytest.approx(10 / (62 / 3)),
        "mean_length": 67 / 8,  # 8+10+10+6 + 10+9+10+4
        "clipped_ratio": 0.5,  # 20, 12, 20, 20 tokens reach 10
        "tokens_after_correct": pytest.approx(5 / 3),  # a2 goes on from 5 to the cut at 10
        "unsolved_share": 0.0,
        "pass@1": 3 / 8,
        # a: 2 of 4 hit, 1 - C(2,2)/C(4,2) = 5/6; b: 1 of 4, 1 - C(3,2)/C(4,2) = 1/2
        "pass@2": pytest.approx((5 / 6 + 1 / 2) / 2)}


def test_metrics_at_a_hits_own_token_and_one_below():
    at4 = metrics_at(EVAL, 4, [1])  # b3 hits exactly at 4: counted
    assert (at4["accuracy"], at4["E_T"], at4["xi"], at4["unsolved_share"]) == (1 / 8, 32.0,
                                                                                0.125, 0.5)
    assert at4["clipped_ratio"] == 1.0  # every attempt has >= 4 tokens (b3 exactly 4)
    at3 = metrics_at(EVAL, 3, [1])  # nothing within 3: E[T] infinite, xi 0, all unsolved
    assert (at3["accuracy"], at3["E_T"], at3["xi"], at3["unsolved_share"]) == (0.0, math.inf,
                                                                                0.0, 1.0)
    assert at3["mean_length"] == 3.0 and at3["tokens_after_correct"] == 0.0
    at12 = metrics_at(EVAL, 12, [])
    assert at12["clipped_ratio"] == 0.5 and "pass@1" not in at12  # a2's 12 tokens reach 12
    assert metrics_at(EVAL, 13, [])["clipped_ratio"] == 3 / 8


def test_first_answer_accuracy_needs_the_hit_within_H():
    df = EVAL.copy()
    df["first_answer_correct"] = [True, False, False, False, True, False, False, True]
    # a0 (8) and b3 (4) within 10; b0's first answer is right but comes at 15
    assert metrics_at(df, 10, [])["first_answer_accuracy"] == 2 / 8
    assert metrics_at(df, 15, [])["first_answer_accuracy"] == 3 / 8
    assert "first_answer_accuracy" not in metrics_at(EVAL, 10, [])


def test_censor_at_8_by_hand():
    c = censor(EVAL, 8)
    assert c["n_tokens"].tolist() == [8, 8, 8, 6, 8, 8, 8, 4]
    # a hit exactly at 8 stays; b0's hit at 15 vanishes
    assert c["first_correct_token"].isna().tolist() == [False, True, False, True, True, True,
                                                         True, False]
    assert c["first_correct_token"].dropna().tolist() == [8, 5, 4]
    # cut attempts end by length, even a2 whose hit at 5 survives; a0 (8 of 8) keeps its EOS
    assert c["stop_reason"].tolist() == ["eos", "length", "length", "eos", "length", "length",
                                         "length", "eos"]
    assert set(c["max_tokens"]) == {8}
    assert EVAL["n_tokens"].tolist()[1] == 20  # the caller's table is left alone


def test_pass_at_k_refusal_and_k_equal_to_n():
    with pytest.raises(ValueError) as err:
        pass_at_k(EVAL, 10, 5)
    assert str(err.value) == "pass@5 needs at least 5 samples per prompt; some prompts have 4"
    assert pass_at_k(EVAL, 10, 4) == 1.0  # every prompt has a hit among its 4
    assert pass_at_k(EVAL, 4, 4) == 0.5  # only b does


def test_named_multiples_of_E_T():
    assert [multiple_name(m) for m in (0.75, 1.5, 3.0, 6)] == ["x0.75", "x1.5", "x3", "x6"]
    # rounded to whole tokens as every H = xi E[T]: 34.275, 68.55, 137.1
    assert multiple_horizons(45.7, [0.75, 1.5, 3]) == {"x0.75": 34, "x1.5": 69, "x3": 137}
    assert multiple_horizons(1.0, [0.1]) == {"x0.1": 1}  # never below one token
