"""The self-correcting built-in task (data.style: retry): its traces and how T is read off them."""

from __future__ import annotations

import numpy as np

from relbudget.measure.models import char_tokenizer
from relbudget.core.params import BasePolicyParams
from relbudget.train.pretrain import encode_pairs
from relbudget.measure.sampling.common import Generation, Request, score
from relbudget.measure.task import (ATTEMPT_SEP, builtin_splits, column_trace, retry_completion,
                            slipped_trace, trace_corpus)


def _answer(attempt: str) -> int:
    return int(attempt.rsplit("A:", 1)[1])


def _consistent(attempt: str) -> bool:
    """Every column total follows from its terms, except for at most a slip of one, and the
    answer is the written totals' digits: what the pre-training data promises."""
    cols = attempt.split("|")[:-1]
    digits, carry = [], 0
    for col in cols:
        terms, total = col.split("=")
        parts = [int(t) for t in terms.split("+")]
        if parts[-1] != carry and carry:  # the carry written is the previous total's tens
            return False
        if abs(int(total) - sum(parts)) > 1:
            return False
        digits.append(int(total) % 10)
        carry = int(total) // 10
    value = int("".join(str(d) for d in reversed(digits + ([carry] if carry else []))))
    return value == _answer(attempt)


def test_no_slip_is_the_column_trace():
    rng = np.random.default_rng(0)
    for xs in ([347, 85], [9, 9], [0, 0], [999, 1]):
        assert slipped_trace(xs, rng, 0.0, 0.0) == column_trace(xs)


def test_slips_give_wrong_but_consistent_attempts():
    rng = np.random.default_rng(1)
    xs = [478, 356]  # every column carries
    attempts = [slipped_trace(xs, rng, 0.5, 0.0) for _ in range(2000)]
    wrong = [a for a in attempts if _answer(a) != sum(xs)]
    # Three carry columns at 0.5 each: an attempt is right with probability 1/8; one slip at most.
    assert 0.84 < len(wrong) / len(attempts) < 0.91
    assert all(_consistent(a) for a in attempts)
    # A sum without carries only slips at slip_plain.
    assert all(_answer(slipped_trace([12, 34], rng, 1.0, 0.0)) == 46 for _ in range(200))


def test_completion_goes_on_after_right_and_wrong_attempts_alike():
    rng = np.random.default_rng(2)
    text, ended = retry_completion([7, 5], rng, 0.5, 0.0, continue_rate=1.0, max_chars=200)
    assert not ended and len(text) == 200
    attempts = text.split(ATTEMPT_SEP)
    answers = [_answer(a) for a in attempts[:-1]]
    assert 12 in answers and any(a != 12 for a in answers)
    text, ended = retry_completion([7, 5], rng, 0.5, 0.0, continue_rate=0.0, max_chars=200)
    assert ended and ATTEMPT_SEP not in text


def test_corpus_cut_traces_get_no_eos():
    p = BasePolicyParams.of_project(slip_carry=0.5, continue_rate=0.9, trace_tokens=120)
    corpus = trace_corpus(300, [1, 2], 2, seed=0, retry=p)
    assert all(len(c) <= 120 for _, c, _ in corpus)
    assert {e for _, _, e in corpus} == {True, False}
    tok = char_tokenizer()
    for (prompt, completion, ends), (ids, plen) in zip(corpus[:50], encode_pairs(tok, corpus[:50])):
        assert (ids[-1] == tok.eos_token_id) == ends
        assert len(ids) == plen + len(completion) + ends
    # The single-attempt task: one correct trace, always ended.
    single = trace_corpus(50, [1, 2], 2, seed=0)
    assert all(e and ATTEMPT_SEP not in c for _, c, e in single)


def test_T_is_the_token_that_confirms_the_first_correct_answer():
    """Scored like every rollout: T counts from the completion's start across attempts."""
    tok = char_tokenizer()
    completion = "7+5=13|A:13||7+5=12|A:12||7+5=12|A:12"
    ids = tok(completion, add_special_tokens=False)["input_ids"]
    row = score(tok, Generation(Request("p", "7+5=", "12", "int"), 0, ids, "length", 0),
                max_tokens=len(ids), policy="base")
    # "A:12" ends at character 24; the '|' after it confirms the number: T = 25.
    assert completion[:24].endswith("A:12") and row["first_correct_token"] == 25
    assert row["final_correct"] is True  # the last confirmed answer (the third) is right
    wrong = tok("7+5=13|A:13||7+5=11|A:11", add_special_tokens=False)["input_ids"]
    row = score(tok, Generation(Request("p", "7+5=", "12", "int"), 0, wrong, "eos", 0),
                max_tokens=64, policy="base")
    assert row["first_correct_token"] is None


def test_retry_prompts_are_the_compact_form():
    train, _ = builtin_splits(4, 2, [2], 2, seed=0, style="retry")
    assert train["prompt"].str.fullmatch(r"\d+\+\d+=").all()
    assert (train["answer_format"] == "int").all()
