"""Exact texts and draws of the built-in task (relbudget.measure.task), worked by hand: the
column trace and its carries at a column total of exactly 9 and 10, a slip forced at a known
column (and its direction where only one is possible), the retry completion cut exactly at
max_chars, the operand ranges of each level at their ends, the refusals word for word, and the
splits of one seed as the prepare stage writes them (the bytes dvc.lock records)."""

from __future__ import annotations

import numpy as np
import pytest

from relbudget.core.params import BasePolicyParams
from relbudget.measure.task import (builtin_splits, carry_columns, column_trace, draw_problem,
                                    make_problems, prompt_text, retry_completion, slipped_trace,
                                    task_splits, to_frame, trace_corpus)


def test_column_trace_by_hand():
    # units first; a carry is written as a term of the next column; the last carry out is in
    # the answer only
    assert column_trace([347, 85]) == "7+5=12|4+8+1=13|3+1=4|A:432"
    assert column_trace([95, 5]) == "5+5=10|9+1=10|A:100"
    assert column_trace([4, 6]) == "4+6=10|A:10"
    assert column_trace([12, 34, 5]) == "2+4+5=11|1+3+1=5|A:51"  # three operands


def test_carry_columns_at_9_and_10():
    assert carry_columns([45, 54]) == [False, False]  # totals 9 and 9: no carry
    assert carry_columns([10, 90]) == [False, True]  # 0, then exactly 10: carries out
    assert carry_columns([15, 5]) == [True, True]  # 10 carries out, 1 + 1 carries in
    assert carry_columns([347, 85]) == [True, True, True]  # the last carries in only
    assert carry_columns([5, 123]) == [False, False, False]  # a short operand
    # 5 + 5 = 10 carries into 9 + 1 = 10, which carries into 1 + 1: three carry columns
    assert carry_columns([195, 5]) == [True, True, True]


def test_a_slip_is_forced_where_the_rates_say():
    rng = np.random.default_rng(0)
    # no slip at rates 0: the column trace itself
    assert slipped_trace([347, 85], rng, 0.0, 0.0) == column_trace([347, 85])
    # a plain column always slips at rate 1; a total of 0 can only go up: 0 -> 1, and the later
    # column and the answer follow the written total
    assert {slipped_trace([10, 90], rng, 0.0, 1.0) for _ in range(50)} == {"0+0=1|1+9=10|A:101"}
    # a total of 1 may go either way: 0 or 2
    assert {slipped_trace([1, 0], rng, 0.0, 1.0) for _ in range(50)} == {"1+0=0|A:0",
                                                                          "1+0=2|A:2"}
    # the carry column only (rate 1 there, 0 elsewhere): 10 -> 9 or 11, both seen
    seen = {slipped_trace([10, 90], rng, 1.0, 0.0) for _ in range(50)}
    assert seen == {"0+0=0|1+9=9|A:90", "0+0=0|1+9=11|A:110"}
    # at most one slip per attempt: the first column slips, the second is right
    seen = {slipped_trace([12, 34], rng, 1.0, 1.0) for _ in range(50)}
    assert seen == {"2+4=5|1+3=4|A:45", "2+4=7|1+3=4|A:47"}
    # shuffled terms: the same columns in another order, never another sum
    seen = {slipped_trace([12, 34], rng, 0.0, 0.0, shuffle=True) for _ in range(50)}
    assert seen == {"2+4=6|1+3=4|A:46", "4+2=6|3+1=4|A:46", "2+4=6|3+1=4|A:46",
                    "4+2=6|1+3=4|A:46"}


def test_retry_completion_stops_or_is_cut_exactly():
    rng = np.random.default_rng(0)
    one = "2+4=6|1+3=4|A:46"  # 16 characters, whatever the order of the terms
    text, ended = retry_completion([12, 34], rng, 0.0, 0.0, continue_rate=0.0, max_chars=17)
    assert len(text) == 16 and ended  # one attempt, then EOS
    text, ended = retry_completion([12, 34], rng, 0.0, 0.0, continue_rate=0.0, max_chars=16)
    assert len(text) == 16 and not ended  # exactly at max_chars: cut, no EOS
    text, ended = retry_completion([12, 34], rng, 0.0, 0.0, continue_rate=1.0, max_chars=40)
    assert len(text) == 40 and not ended and text.count("||") == 2
    assert all(len(a) == len(one) for a in text.split("||")[:2])


def test_each_level_draws_operands_of_exactly_its_digits():
    rng = np.random.default_rng(0)
    for level, lo, hi in ((1, 0, 9), (2, 10, 99)):
        xs = np.ravel([draw_problem([level], 2, rng)[1] for _ in range(2000)])
        assert xs.min() == lo and xs.max() == hi, level
    xs = np.ravel([draw_problem([3], 3, rng)[1] for _ in range(300)])
    assert 100 <= xs.min() < 110 and 990 <= xs.max() <= 999  # three digits, never two


def test_make_problems_distinct_excluded_and_by_carries():
    rng = np.random.default_rng(0)
    every = make_problems(100, [1], 2, rng)  # all 100 one-digit pairs
    assert len({tuple(xs) for _, xs in every}) == 100
    some = make_problems(10, [1], 2, rng, exclude={(1, 2)}, carries=[0])
    assert all(sum(carry_columns(xs)) == 0 for _, xs in some) and (1, 2) not in {
        tuple(xs) for _, xs in some}
    with pytest.raises(ValueError) as err:
        make_problems(101, [1], 2, rng)
    assert str(err.value) == ("cannot draw 101 distinct problems from levels [1]; lower "
                              "n_train/n_eval or add levels")
    with pytest.raises(ValueError) as err:
        make_problems(60, [1], 2, rng, carries=[0])  # 55 one-digit pairs carry nothing
    assert str(err.value) == ("cannot draw 60 distinct problems from levels [1] with [0] carry "
                              "columns; lower n_train/n_eval or add levels")
    assert len(make_problems(55, [1], 2, rng, carries=[0])) == 55  # exactly all of them
    # it gives up after exactly 100 n + 1000 draws: here every draw is excluded, and the
    # generator is left where 1,200 draws (n = 2) leave a twin
    every_one = {(i,) for i in range(10)}
    rng, twin = np.random.default_rng(3), np.random.default_rng(3)
    with pytest.raises(ValueError, match="cannot draw 2 distinct problems"):
        make_problems(2, [1], 1, rng, exclude=every_one)
    for _ in range(1200):
        draw_problem([1], 1, twin)
    assert rng.integers(10**9) == twin.integers(10**9)


def test_prompts_and_frames():
    assert prompt_text([12, 34], "retry") == prompt_text([12, 34], "trace") == "12+34="
    assert prompt_text([12, 34], "natural") == "Calculate 12 + 34."
    f = to_frame([(2, [12, 34]), (1, [3, 4])], "eval", "natural")
    assert f.to_dict("list") == {
        "prompt_id": ["eval-00000", "eval-00001"],
        "prompt": ["Calculate 12 + 34.", "Calculate 3 + 4."], "answer": ["46", "7"],
        "answer_format": ["prose", "prose"], "level": [2, 1],
        "solution": ["2+4=6|1+3=4|A:46", "3+4=7|A:7"]}
    assert list(to_frame([(1, [3, 4])], "train", "retry")["answer_format"]) == ["int"]


def test_the_splits_of_one_seed():
    """What prepare writes for seed 0 (dvc.lock records these bytes): eval drawn first, train
    after it without the eval problems."""
    train, eval_ = builtin_splits(3, 2, [1, 2], 2, seed=0)
    assert list(eval_["prompt_id"]) == ["eval-00000", "eval-00001"]
    assert eval_[["prompt", "answer", "level"]].to_dict("list") == {
        "prompt": ["67+56=", "3+0="], "answer": ["123", "3"], "level": [2, 1]}
    assert train[["prompt_id", "prompt", "solution"]].to_dict("list") == {
        "prompt_id": ["train-00000", "train-00001", "train-00002"],
        "prompt": ["0+1=", "68+92=", "64+97="],
        "solution": ["0+1=1|A:1", "8+2=10|6+9+1=16|A:160", "4+7=11|6+9+1=16|A:161"]}
    # a task: its eval problems are the first drawn, its train the next, all with one carry
    train, eval_ = task_splits(2, 1, [2], [1], 2, 0, "retry")
    assert list(eval_["prompt"]) == ["25+83="] and list(train["prompt"]) == ["55+64=", "60+94="]
    assert list(eval_["prompt_id"]) == ["eval-00000"]
    assert list(train["prompt_id"]) == ["train-00000", "train-00001"]
    # all 100 one-digit pairs: 90 train and 10 eval, none in both
    train, eval_ = builtin_splits(90, 10, [1], 2, seed=0)
    assert not set(train["prompt"]) & set(eval_["prompt"])
    assert len(set(train["prompt"]) | set(eval_["prompt"])) == 100


def test_trace_corpus_of_one_seed():
    assert trace_corpus(2, [1], 2, seed=0) == [("4+6=", "4+6=10|A:10", True),
                                               ("6+3=", "6+3=9|A:9", True)]
    # prompts named in `exclude` are left out, not replaced
    assert trace_corpus(2, [1], 2, seed=0, exclude={"4+6="}) == [("6+3=", "6+3=9|A:9", True)]
    # at most 90% of a level's distinct problems: 90 of the 100 one-digit pairs
    assert len(trace_corpus(1000, [1], 2, seed=0)) == 90
    p = BasePolicyParams.of_project(slip_carry=0.5, continue_rate=0.9, trace_tokens=40)
    assert trace_corpus(3, [1], 2, seed=0, retry=p) == [
        ("4+6=", "6+4=10|A:10|", False), ("6+3=", "6+3=9|A:9||3+6=9|A:", False),
        ("4+5=", "4+5=9|A:9||5+4=9|A:9||4+5=9|", False)]
    # a cut is never shorter than one whole attempt: trace_tokens below it cuts at its length
    short = BasePolicyParams.of_project(slip_carry=0.0, slip_plain=0.0, continue_rate=0.0,
                                        trace_tokens=1)
    # (one whole attempt, its terms shuffled, cut exactly at its length: no EOS)
    assert trace_corpus(2, [1], 2, seed=0, retry=short) == [("4+6=", "6+4=10|A:10", False),
                                                            ("6+3=", "3+6=9|A:9", False)]
