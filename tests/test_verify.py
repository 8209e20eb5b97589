"""The verifier: candidates, first-correct confirmation points, formats, and hostile inputs."""

from __future__ import annotations

import logging
import random
import threading
import time

import pytest

from relbudget.measure import verify as V
from relbudget.measure.verify import (Candidate, Verdict, answer_is_correct, confirm_point,
                              extract_gold, find_candidates, verify)


@pytest.fixture(scope="module", autouse=True)
def _warm_math_verify():
    """The first math check imports sympy (about a second); keep that out of the timings."""
    assert verify("\\boxed{\\frac{1}{2}}", "0.5", "math", True).final_correct


@pytest.fixture(autouse=True)
def _fresh_math_cache():
    """Each test's math checks run sympy, not a result remembered from an earlier test (or from
    the unmutated run that mutmut forks every mutant's run from: with the cache warm, no mutant
    of the sympy comparison was ever called)."""
    V._math_equal_cached.cache_clear()


# ---------------------------------------------------------------------------------- int (A:)

def test_builtin_format_at_eos_and_terminated():
    v = verify("3+4=7 A:7", "7", "int", ended=True)
    assert v == Verdict(first_correct_chars=9, at_eos=True, final_correct=True, n_candidates=1)
    v = verify("3+4=7 A:7\n", "7", "int", ended=False)
    assert v == Verdict(first_correct_chars=10, at_eos=False, final_correct=True, n_candidates=1)


def test_unterminated_number_counts_only_at_eos():
    # at the cap (no EOS) 'A:13' may still become 'A:132': not a candidate
    assert find_candidates("A:13", "int", ended=False) == []
    v = verify("A:13", "13", "int", ended=False)
    assert v.first_correct_chars is None and v.n_candidates == 0 and not v.final_correct
    assert find_candidates("A:13", "int", ended=True) == [Candidate("13", 2, 4)]


def test_prefix_confusion_13_vs_132():
    assert verify("A:132\n", "13", "int", True).first_correct_chars is None
    assert verify("A:13", "132", "int", False).first_correct_chars is None
    assert verify("A:13", "132", "int", True).first_correct_chars is None
    assert verify("A:132\n", "132", "int", False).first_correct_chars == 6


def test_first_of_several_candidates_and_final():
    text = "A:45 no, A:46 hmm A:47\n"
    v = verify(text, "46", "int", False)
    assert v.first_correct_chars == text.index("46") + 3  # '46' and its terminator ' '
    assert v.n_candidates == 3 and not v.final_correct
    v = verify("A:45 A:46\n", "46", "int", False)
    assert v.first_correct_chars == 10 and v.final_correct


def test_chat_anchors_int():
    for text in ("The answer is 432.\n", "Answer: 432\n", "**Answer:** 432\n", "#### 432\n",
                 "so the final answer is $\\boxed{432}$", "ANSWER IS: 432 "):
        assert verify(text, "432", "int", False).first_correct_chars is not None, text
    # 'answer' without 'is' or ':' is not an anchor; 'QA:' is not 'A:'
    assert find_candidates("check my answer 3 times, QA:5 ", "int", False) == []


@pytest.mark.parametrize("text, first", [
    # what SmolLM2-135M-Instruct wrote for 'Calculate 64 + 97.' (cut to the answer)
    ("To calculate 64 + 97, you simply add them. 64 + 97 = 161\n", "161"),
    ("The sum of 64 and 97 is 161!\n", "161"),
    ("So, 64 + 97 equals 161 in total", "161"),
    ("That makes 161 apples", "161"),
    ("The answer is: **161**\n", "161"),
    ("Answer: 161\n", "161"),
])
def test_prose_anchors(text, first):
    # confirmed by the character after the number ('161.' would need one more: 161.5?)
    v = verify(text, "161", "prose", False)
    assert v.first_correct_chars == text.index(first) + len(first) + 1, text
    assert v.final_correct


def test_prose_wrong_numbers_and_non_anchors():
    # a wrong sum first, then the right one: T is at the right one
    text = "64 + 97 = 151. Sorry, 64 + 97 = 161.\n"
    v = verify(text, "161", "prose", False)
    assert v.first_correct_chars == text.index("161.") + 5 and v.n_candidates == 2  # "161.\n"
    # numbers without an anchor ('this', 'island' contain 'is' but are not the word) never count
    assert verify("Think of 161 apples, this 161, island 161\n", "161", "prose", True).n_candidates == 0
    assert find_candidates("this 5 island 6 ", "prose", False) == []
    # an operand restated is a candidate, and wrong
    assert not verify("x = 64\n", "161", "prose", True).final_correct
    # 'int' (the built-in policy's format) keeps its strict anchors: '=' is not one
    assert verify("64 + 97 = 161\n", "161", "int", False).first_correct_chars is None


def test_negative_and_signed_numbers():
    assert verify("A:-5\n", "-5", "int", False).final_correct
    assert not verify("A:-5\n", "5", "int", False).final_correct
    assert verify("Answer: \u22125\n", "-5", "int", False).final_correct  # unicode minus
    assert verify("A:+5\n", "5", "int", False).final_correct
    assert verify("A:-0\n", "0", "int", False).final_correct
    assert verify("A:007\n", "7", "int", False).final_correct
    assert not verify("A:7.5\n", "7", "int", False).final_correct  # not 7 followed by '.5'
    assert verify("A:7.0\n", "7", "int", False).final_correct


def test_streaming_prefixes_confirm_exactly_once():
    """A prefix cut below first_correct_chars never confirms; from there on it always does."""
    cases = [("A:12 A:132\n", "132", "int"), ("A:13. Then A:13", "13", "int"),
             ("#### 1,234 done", "1234", "gsm8k"), ("The answer is 42.5.\n", "42.5", "gsm8k"),
             ("x \\boxed{\\frac{1}{2}} y", "0.5", "math")]
    for text, gold, fmt in cases:
        full = verify(text, gold, fmt, False).first_correct_chars
        assert full is not None, text
        for k in range(len(text) + 1):
            got = verify(text[:k], gold, fmt, False).first_correct_chars
            assert got == (full if k >= full else None), (text, k, got)


def test_text_beyond_scan_cap_is_ignored():
    pad = "." * (V.MAX_SCAN_CHARS - 4)
    assert verify(pad + "A:7 ", "7", "int", True).first_correct_chars == V.MAX_SCAN_CHARS
    # a text of exactly the cap is scanned whole, so EOS still confirms
    assert verify(pad + "A:77", "77", "int", True).at_eos
    # one char more: the terminator falls past the cap, not confirmed, even with EOS
    assert verify(pad + "A:77 ", "77", "int", True).first_correct_chars is None
    assert verify(pad + "A:777", "77", "int", True).first_correct_chars is None
    assert verify("." * 50_000 + "A:7\n", "7", "int", True).n_candidates == 0


def test_confirm_point():
    assert confirm_point(Candidate("7", 2, 3), 10) == (4, False)
    assert confirm_point(Candidate("7", 2, 3), 3) == (3, True)


# --------------------------------------------------------------------------------------- gsm8k

@pytest.mark.parametrize("text,gold,ok", [
    ("so #### 1,234\n", "1234", True),
    ("#### 1,234,567 ", "1234567", True),
    ("#### 1,234.50 ", "1234.5", True),
    ("#### -3.25\n", "-3.25", True),
    ("The answer is $1,234.", "1234", True),  # ended: the final '.' is a full stop
    ("#### 12,34 ", "1234", False),  # '12' then ',34': not a thousands group
    ("#### 1234,567 ", "1234567", False),  # grouping needs a 1-3 digit lead
    ("#### 42\n", "42.0", True),
])
def test_gsm8k_numbers(text, gold, ok):
    assert verify(text, gold, "gsm8k", True).final_correct is ok


def test_gsm8k_comma_needs_lookahead():
    assert find_candidates("#### 1,23", "gsm8k", False) == []  # may become 1,234
    assert find_candidates("#### 1,234", "gsm8k", False) == []  # may become 1,2345 -> 1
    assert find_candidates("#### 1,2345", "gsm8k", False) == [Candidate("1", 5, 10)]
    assert find_candidates("#### 1,234", "gsm8k", True) == [Candidate("1,234", 5, 10)]
    assert find_candidates("A:5 ", "gsm8k", True) == []  # 'A:' is the built-in task's anchor


# ---------------------------------------------------------------------------------------- math

@pytest.mark.parametrize("boxed,gold", [
    ("\\frac{1}{2}", "0.5"), ("0.5", "\\frac{1}{2}"), ("\\dfrac{1}{2}", "\\frac12"),
    ("\\frac{2}{4}", "\\frac{1}{2}"), ("2^{-1}", "\\frac{1}{2}"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt 3}{2}"), ("\\{1,2\\}", "\\{1, 2\\}"),
    ("x^{2}+\\frac{1}{2}", "\\frac{1}{2}+x^2"),
])
def test_math_equivalent_forms(boxed, gold):
    text = f"We get $\\boxed{{{boxed}}}$."
    v = verify(text, gold, "math", False)
    assert v.first_correct_chars == text.index("}$") + 1 and v.final_correct


def test_math_nested_braces_and_positions():
    text = "a \\boxed{x^{2}+\\frac{1}{2}} b \\boxed{3"
    assert find_candidates(text, "math", True) == [Candidate("x^{2}+\\frac{1}{2}", 9, 26)]
    assert verify("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", "math", True).first_correct_chars is None


def test_math_first_correct_vs_final():
    text = "\\boxed{0.5} wait, no: \\boxed{3}"
    v = verify(text, "\\frac{1}{2}", "math", True)
    assert v.first_correct_chars == 11 and not v.final_correct and v.n_candidates == 2
    text = "\\boxed{3} wait, no: \\boxed{\\frac12}"
    v = verify(text, "\\frac{1}{2}", "math", True)
    assert v.first_correct_chars == len(text) and not v.at_eos and v.final_correct


def test_math_from_another_thread():
    out = {}

    def run():
        out["v"] = verify("\\boxed{\\frac{3}{6}} \\boxed{1}", "0.5", "math", True)
        out["t"] = answer_is_correct("\\frac{6}{12}", "1/2", "math")

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert out["v"].first_correct_chars == 19 and not out["v"].final_correct and out["t"]


@pytest.mark.parametrize("thread", [False, True])
def test_math_sympy_hard_inputs_are_bounded_by_timeouts(thread):
    """Small but expensive for sympy: cut by math_verify's timeouts (main thread) or by the
    worker subprocess (other threads); counted incorrect."""
    text = "\\boxed{(x+y+z)^{99}} \\boxed{(x+y+z+w)^{30}(x-y)^{30}}"
    out = {}

    def run():
        t0 = time.perf_counter()
        out["v"] = verify(text, "8" if thread else "7", "math", True)  # no cached results
        out["dt"] = time.perf_counter() - t0

    if thread:
        t = threading.Thread(target=run)
        t.start()
        t.join(60)
    else:
        run()
    assert out["v"].first_correct_chars is None and out["v"].n_candidates == 2
    assert out["dt"] < 20


# ------------------------------------------------------------------------------ answers, golds

def test_answer_is_correct_numbers():
    assert answer_is_correct("1,234", "1234", "gsm8k")
    assert answer_is_correct("001234.000", "1234", "gsm8k")
    assert not answer_is_correct("1234.01", "1234", "gsm8k")
    assert answer_is_correct("-12", "-12", "int")
    big = "9" * 100_000  # int() would raise past 4300 digits; never called
    assert not answer_is_correct(big, "9", "int")
    assert not answer_is_correct(big, "9" * 64, "gsm8k")
    assert answer_is_correct("9" * 64, "9" * 64, "int")
    assert not answer_is_correct("\u0664\u0662", "42", "int")  # Arabic-Indic digits: rejected
    assert not answer_is_correct("\uff14\uff12", "42", "int")  # fullwidth digits: rejected
    for bad in ("NaN", "inf", "-inf", "1e3", "", None, 42):
        assert not answer_is_correct(bad, "1000", "gsm8k")
    with pytest.raises(ValueError, match="not a valid int answer"):
        answer_is_correct("1", "1.5", "int")
    with pytest.raises(ValueError, match="unknown answer format"):
        answer_is_correct("1", "1", "mcq")


def test_extract_gold():
    assert extract_gold("Natalia sold 48/2 = 24 clips.\n#### 72", "gsm8k") == "72"
    assert extract_gold("... so\n#### 1,234", "gsm8k") == "1234"
    assert extract_gold("#### -0.50", "gsm8k") == "-0.5"
    assert extract_gold("18", "gsm8k") == "18"
    assert extract_gold(18, "gsm8k") == "18"
    assert extract_gold("So $\\boxed{1}$, then \\boxed{\\frac{\\sqrt{3}}{2}}.", "math") \
        == "\\frac{\\sqrt{3}}{2}"
    assert extract_gold("\\boxed{\\{1,2\\}}", "math") == "\\{1,2\\}"
    assert extract_gold("$\\frac{1}{2}$", "math") == "\\frac{1}{2}"
    assert extract_gold(" 0042 ", "int") == "42"
    assert extract_gold(-7, "int") == "-7"
    for raw, fmt, msg in [("no marker here, just words", "gsm8k", "no number"),
                          ("#### forty", "gsm8k", "no number"), ("#### NaN", "gsm8k", "no number"),
                          ("\\boxed{1", "math", "unclosed"), ("\\boxed{ }", "math", "empty"),
                          ("word " * 60, "math", "too long"), ("4.5", "int", "not an integer"),
                          (None, "int", "expected"), (True, "gsm8k", "expected"),
                          (float("nan"), "gsm8k", "finite"), ([1], "math", "expected")]:
        with pytest.raises(ValueError, match=msg):
            extract_gold(raw, fmt)


def test_math_answers_compare_by_value():
    # (the rewards' "never raises" lives where GRPO scores: tests/test_train.py, BudgetReward)
    assert verify("\\boxed{0.5}", "\\frac{1}{2}", "math", True).final_correct


# ------------------------------------------------------------------------------ hostile inputs

def _random_mb() -> str:
    rng = random.Random(0)
    return rng.randbytes(1_000_000).decode("utf-8", errors="replace")


DIGITS_1E5 = "7" * 100_000
HOSTILE = [
    pytest.param("A:" + DIGITS_1E5 + "\n", id="int-1e5-digits"),
    pytest.param("#### " + DIGITS_1E5, id="gsm8k-1e5-digits"),
    pytest.param("\\boxed{" + DIGITS_1E5 + "}", id="boxed-1e5-digits"),
    pytest.param("A:" + "7" * 20_000 + " \\boxed{" + "7" * 10_000 + "}", id="long-terminated"),
    pytest.param("#### " + "1," * 50_000 + "\n", id="comma-chain"),
    pytest.param("{" * 10_000 + "}" * 10_000, id="1e4-nested-braces"),
    pytest.param("\\boxed{" + "{" * 10_000 + "1" + "}" * 10_001, id="boxed-1e4-nested-braces"),
    pytest.param("\\boxed{" * 10_000, id="boxed-open-1e4"),
    pytest.param("\\boxed{" * 2_000 + "1" + "}" * 2_000, id="boxed-nested-closed-2e3"),
    pytest.param("\\boxed{}" * 4_000, id="boxed-empty-4e3"),
    pytest.param("".join(f"\\boxed{{{i}}} " for i in range(3_000)), id="boxed-distinct-3e3"),
    pytest.param("A:" * 50_000, id="anchors-only"),
    pytest.param("Answer:" + " " * 100_000 + "5 ", id="long-filler"),
    pytest.param("\\" * 100_000 + "}" * 10_000, id="backslashes"),
    pytest.param("A:\u0664\u0662\n #### \u0664\u0662 \\boxed{\u0664\u0662}", id="arabic-indic"),
    pytest.param("A:\uff14\uff12\n #### \uff14\uff12 \\boxed{\uff14\uff12}", id="fullwidth"),
    pytest.param("A:" + "\u0664" * 100_000, id="arabic-indic-1e5"),
    pytest.param("\\boxed{" + "\u0669" * 900 + "!}", id="arabic-indic-factorial"),
    pytest.param("A:\u221242\n Answer: \u2212 42 \\boxed{\u221242}", id="unicode-minus"),
    pytest.param("A:NaN\n #### inf Answer: -inf \\boxed{NaN} \\boxed{\\infty} A:1e309 ",
                 id="nan-inf"),
    pytest.param("\\boxed{" + "\\frac{" * 1_000 + "1" + "}{2}" * 1_000 + "}", id="frac-bomb-1e3"),
    pytest.param("\\boxed{" + "\\frac{" * 10_000 + "1" + "}{2}" * 10_000 + "}", id="frac-bomb-1e4"),
    pytest.param("\\boxed{" + "\\frac{" * 9 + "1" + "}{2}" * 9 + "}", id="frac-at-depth-cap"),
    pytest.param("\\boxed{" + "\\sqrt{" * 10 + "2" + "}" * 10 + "}", id="sqrt-at-depth-cap"),
    pytest.param("\\boxed{9^{9^{9^{9}}}} \\boxed{(9999^{9999})^{9999}} \\boxed{10^{10^{10}}}",
                 id="power-towers"),
    pytest.param("\\boxed{99999!} \\boxed{(9!)!} \\boxed{9!!!} \\boxed{\\binom{2^{20}}{2^{19}}}",
                 id="factorials"),
    pytest.param("\\boxed{\\sum_{i=1}^{10^{9}} i!} \\boxed{\\prod_{k=1}^{99999} k}", id="sums"),
    pytest.param("\\boxed{" + "+".join(["1"] * 499) + "}", id="long-flat-sum"),
    pytest.param(_random_mb(), id="1MB-random-bytes"),
]
GOLDS = {"int": "42", "prose": "42", "gsm8k": "42", "math": "\\frac{1}{2}"}
# A correct answer in each format, and the characters that confirm it (its terminator included;
# the closing brace for math).
ANSWERS = {"int": ("A:42\n", 5), "prose": ("Answer: 42\n", 11), "gsm8k": ("#### 42\n", 8),
           "math": ("\\boxed{\\frac{1}{2}}\n", 19)}
TIMINGS: dict[str, float] = {}


@pytest.mark.parametrize("text", HOSTILE)
@pytest.mark.parametrize("fmt", V.FORMATS)
def test_hostile_inputs_are_fast(text, fmt, request):
    for ended in (False, True):
        t0 = time.perf_counter()
        v = verify(text, GOLDS[fmt], fmt, ended)
        dt = time.perf_counter() - t0
        TIMINGS[request.node.callspec.id + f"-ended={ended}"] = dt
        # a guard against a blow-up (backtracking, a sympy bomb: minutes), not a speed goal: 1 s
        # failed once on a machine shared with three other jobs (1.05 s)
        assert dt < 10.0, f"{dt:.2f}s"
        # No hostile text holds the gold answer (nor a look-alike: other digits, signs, nesting),
        # so nothing is correct and no reward is paid.
        assert isinstance(v, Verdict)
        assert (v.first_correct_chars, v.at_eos, v.final_correct) == (None, False, False)
        # The same text after a genuine answer: that answer is still found, confirmed right
        # where it ends, however hostile what follows is.
        answer, confirmed_at = ANSWERS[fmt]
        after = verify(answer + text, GOLDS[fmt], fmt, ended)
        assert (after.first_correct_chars, after.at_eos) == (confirmed_at, False)
        assert after.n_candidates >= 1


def test_hostile_values_never_correct():
    assert not verify("A:\u0664\u0662\n", "42", "int", True).final_correct
    assert not verify("A:\uff14\uff12\n", "42", "int", True).final_correct
    assert verify("A:\u221242\n", "-42", "int", True).final_correct
    assert not verify("\\boxed{" + "\\frac{" * 20 + "1" + "}{2}" * 20 + "}", "1", "math",
                      True).final_correct
    assert V._math_unsafe("9^{9^{9}}") and V._math_unsafe("(9!)!") and V._math_unsafe("99999!")
    assert V._math_unsafe("x^{10}+x^{9}+x^{8}+x^{7}+x^{6}") is None
    assert V._math_unsafe("(n+1)!") is None and V._math_unsafe("2^{10}\\cdot 5!") is None


def test_worker_is_killed_past_its_hard_timeout(monkeypatch, caplog):
    """A check that outlives MATH_WORKER_TIMEOUT_S kills the worker; the next call gets a new one.
    The next check runs at the usual timeout: a fresh worker's first parse can itself take more
    than 0.3 s on a loaded machine (seen once in the suite: both checks "timed out")."""
    usual = V.MATH_WORKER_TIMEOUT_S
    monkeypatch.setattr(V, "MATH_WORKER_TIMEOUT_S", 0.3)
    out = {}

    def run():
        out["slow"] = V._math_equal_in_worker("(x+y+z)^{98}", "9")
        monkeypatch.setattr(V, "MATH_WORKER_TIMEOUT_S", usual)
        out["next"] = V._math_equal_in_worker("\\frac{2}{4}", "0.5")

    with caplog.at_level(logging.WARNING, logger="relbudget.measure.verify"):
        t = threading.Thread(target=run)
        t.start()
        t.join(60)
    assert out == {"slow": False, "next": True}
    assert sum("timed out" in r.message for r in caplog.records) == 1  # the slow one alone
