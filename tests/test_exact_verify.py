"""relbudget.measure.verify at its edges, each expected value worked out by hand: the gold readers
(extract_gold, every branch and message), the number lexer's thousands groups, the canonical
number's length guard, the group matcher behind the factorial check, and the short repr the
messages use.
"""

from __future__ import annotations

import re

import pytest

from relbudget.measure import verify as V
from relbudget.measure.verify import extract_gold, find_candidates

BIG = 2 ** 200  # bit_length 201: refused before str() (a huge int costs quadratic time there)


@pytest.mark.parametrize("raw,fmt,gold", [
    (BIG - 1, "int", str(BIG - 1)),  # bit_length 200, 61 digits: kept
    (3.0, "int", "3"),
    (2.5, "gsm8k", "2.5"),
    (200.0, "math", "200"),  # an integral float below 2**53 is written as an int
    (float(2 ** 53 - 1), "math", "9007199254740991"),
    (float(2 ** 53), "math", "9007199254740992.0"),  # from 2**53 on, repr: floats no longer exact
    ("a #### 5\nb #### 7", "gsm8k", "7"),  # the last marker
    ("####12", "gsm8k", "12"),
    ("#### $ 1,234.\nfoo\nbar", "gsm8k", "1234"),  # the marker's own line; $ , and . dropped
    ("$5", "gsm8k", "5"),
    ("#### 12,34", "gsm8k", "1234"),  # every comma dropped, a thousands group or not
    ("5.", "gsm8k", "5"),
    (" 0042 ", "int", "42"),
    ("\\boxed{1} then \\boxed{2}", "math", "2"),  # the last complete box
    ("\\boxed{" + "x" * 1000 + "}", "math", "x" * 1000),  # exactly MAX_BOXED_CHARS
    ("$$x$$", "math", "x"), ("$x$", "math", "x"), ("\\(x\\)", "math", "x"),
    ("\\[x\\]", "math", "x"),
    ("$$$$", "math", "$$"),  # too short for $$..$$: read as $..$ around "$$"
    ("x$$", "math", "x$$"),  # a closer alone strips nothing
    ("y" * 200, "math", "y" * 200),  # a bare answer of 200 characters
    ("\\boxed{" + " " * 1500 + "x}", "math", "x"),  # the whole box is read, then stripped
])
def test_extract_gold_by_hand(raw, fmt, gold):
    assert extract_gold(raw, fmt) == gold


@pytest.mark.parametrize("raw,fmt,message", [
    (BIG, "int", "integer answer too large"),
    (2.5, "int", "answer 2.5 is not an integer"),
    (float("inf"), "gsm8k", "answer is inf, not a finite number"),
    (True, "int", "answer is True, expected a string or number"),
    ([1], "math", "answer is list, expected a string or number"),
    ("12a", "int", "answer '12a' is not an integer of at most 64 digits"),
    ("1" * 65, "prose", f"answer '{'1' * 65}' is not an integer of at most 64 digits"),
    ("#### abc", "gsm8k", "no number after '####' in GSM8K answer '#### abc'"),
    ("####abc", "gsm8k", "no number after '####' in GSM8K answer '####abc'"),  # marker at 0
    ("#### X5", "gsm8k", "no number after '####' in GSM8K answer '#### X5'"),  # $ alone stripped
    ("#### 5X", "gsm8k", "no number after '####' in GSM8K answer '#### 5X'"),  # . alone
    ("abc", "gsm8k",
     "no number (no '####' marker, and not a bare number) in GSM8K answer 'abc'"),
    ("#### $ 1 234\nx", "gsm8k", "no number after '####' in GSM8K answer '#### $ 1 234\\nx'"),
    ("so \\boxed{ }", "math", "empty \\boxed{} in MATH solution 'so \\\\boxed{ }'"),
    ("\\boxed{" + "x" * 1001 + "}", "math", "\\boxed content longer than 1000 chars"),
    ("\\boxed{3", "math", "unclosed \\boxed{ in MATH solution '\\\\boxed{3'"),
    ("  ", "math", "empty MATH answer"),
    ("$$ $$", "math", "empty MATH answer"),
    ("y" * 201, "math", "no \\boxed{...} in MATH solution, and it is too long to be a bare "
                        f"answer: '{'y' * 76}..."),
    ("a\nb", "math", "no \\boxed{...} in MATH solution, and it is too long to be a bare "
                     "answer: 'a\\nb'"),
])
def test_extract_gold_refusals_word_for_word(raw, fmt, message):
    with pytest.raises(ValueError) as err:
        extract_gold(raw, fmt)
    assert str(err.value) == message


def test_short_cuts_at_80_characters():
    assert V._short("x" * 78) == repr("x" * 78)  # 80 characters with its quotes: kept
    assert V._short("x" * 79) == "'" + "x" * 76 + "..."  # 81: 77 kept, then "..."
    assert len(V._short("x" * 500)) == 80
    assert V._short(None) == "None" and V._short(12, n=5) == "12"


@pytest.mark.parametrize("text,ended,found", [
    ("A:-123,456\n", True, [("-123,456", 2, 10)]),  # a 3-digit lead after its sign: groups
    ("A:-999,999\n", True, [("-999,999", 2, 10)]),
    ("A:+123,456\n", True, [("+123,456", 2, 10)]),
    ("A:123,456\n", True, [("123,456", 2, 9)]),
    ("A:1234,567\n", True, [("1234", 2, 6)]),  # a 4-digit lead: the comma is punctuation
    ("A:-1234,567\n", True, [("-1234", 2, 7)]),
    ("A:123,4567\n", True, [("123", 2, 9)]),  # a 4th digit: not a group
    ("A:12,34\n", True, [("12", 2, 7)]),  # 2 digits after the comma, proven by the newline
    ("A:1,2345\n", True, [("1", 2, 7)]),
    ("A:1,234\n", True, [("1,234", 2, 7)]),
    ("A:1,a23\n", True, [("1", 2, 4)]),  # no digit right after the comma: proven there
    ("A:-1,234,567.5\n", True, [("-1,234,567.5", 2, 14)]),
    ("A:999,999", True, [("999,999", 2, 9)]), ("A:999,999", False, []),  # at the end: EOS proves
    ("A:1,23", True, [("1", 2, 6)]), ("A:1,23", False, []),
])
def test_thousands_groups_by_hand(text, ended, found):
    assert [(c.value, c.start, c.end) for c in find_candidates(text, "int", ended)] == found


def test_find_candidates_names_a_wrong_text_type():
    with pytest.raises(TypeError, match=re.escape("text must be str, got bytes")):
        find_candidates(b"A:1", "int", True)


def test_canon_number_length_guard_at_its_edge():
    # 2 * MAX_NUMBER_DIGITS + 2 = 130 characters at most, blanks included, before any parsing
    assert V._canon_number(" " * 129 + "7") == "7"
    assert V._canon_number(" " * 130 + "7") is None
    # then MAX_NUMBER_DIGITS = 64 digits at most, integer and fraction digits together (after
    # leading and trailing zeros are dropped)
    assert V._canon_number("1" * 40 + "." + "1" * 24) == "1" * 40 + "." + "1" * 24
    assert V._canon_number("1" * 40 + "." + "1" * 25) is None
    assert V._canon_number("0" * 10 + "1" * 40 + "." + "1" * 24 + "0" * 10) == "1" * 40 + "." + "1" * 24


@pytest.mark.parametrize("s,j,start", [
    ("a(b)c", 3, 1),
    ("(x[y{z}]w)", 9, 0),  # the outer closer: past the nested groups
    ("(x[y{z}]w)", 7, 2),
    ("q(x[y{z}]w)", 7, 5),
    ("q(x[y{z}]w)", 8, 3),
    ("x)", 1, 0),  # unmatched: 0
    ("x)(", 1, 0),  # the scan stops at the start, never wraps to the end
    ("a(X)", 3, 1), ("(Xa)", 3, 0),  # letters are neither closers nor openers
    ("ab)c)", 4, 0),
])
def test_group_start_by_hand(s, j, start):
    assert V._group_start(s, j) == start


@pytest.mark.parametrize("s,j,end", [
    ("a(b[c]d)e", 1, 8), ("((a))b", 0, 5), ("(X)a", 0, 3), ("{a}{b}", 0, 3),
    ("(x", 0, 2),  # unclosed: len(s)
])
def test_group_end_by_hand(s, j, end):
    assert V._group_end(s, j) == end


def test_an_invalid_gold_is_named_word_for_word():
    with pytest.raises(ValueError) as err:
        V.verify("A:1", "abc", "int", True)
    assert str(err.value) == ("gold answer 'abc' is not a valid int answer (use extract_gold on "
                              "the dataset field)")


def test_factorial_of_a_group_reads_back_to_its_opener():
    """(..)! is refused when the group holds a factorial or a power, whatever comes before it."""
    assert V._math_unsafe("2^{3}+(3!)!") == "factorial too large"
    assert V._math_unsafe("x^{2}(3)!") is None  # the power lies before the group: allowed
    assert V._math_unsafe("(x^{2})!") == "factorial too large"
    assert V._math_unsafe("a(b)!") is None and V._math_unsafe("(2*3)!") is None


# ------------------------------------------------ the pieces of the power check, by hand

@pytest.mark.parametrize("s,k,exponent", [
    ("2^10", 1, "10"),
    ("2^   10+1", 1, "10"),  # spaces after '^' skipped; the run ends at '+'
    ("2^", 1, ""),  # nothing after '^'
    ("2^  ", 1, ""),  # only spaces after it
    ("2^x.5y+1", 1, "x.5y"),  # letters, digits and '.' are one run
    ("2^-3", 1, "-"),  # no run: the one character
    ("2^{3+4}5", 1, "{3+4}"),  # a group, its braces kept
    ("2^(3)(4)", 1, "(3)"),
    ("2^[3", 1, "[3"),  # unclosed: to the end
    ("2^{a{b}c}d", 1, "{a{b}c}"),  # nested
    ("2^\\pi+1", 1, "\\pi"),  # a command without a group
    ("2^\\frac{1}{2}{3}", 1, "\\frac{1}{2}"),  # at most two groups
    ("2^\\sqrt{9}x", 1, "\\sqrt{9}"),
    ("2^\\frac {1}", 1, "\\frac"),  # a space before the group: not its argument
    ("2^\\left(3\\right)z", 1, "\\left(3\\right)"),  # \left with its group
    ("2^\\left x", 1, "\\left"),  # \left without one
    ("2^\\left", 1, "\\left"),  # \left at the end
    ("2^\\,5", 1, "\\,"),  # a backslash and no letters: two characters
    ("2^\\", 1, "\\"),  # a lone backslash at the end
    ("a^2^3", 3, "3"),  # the '^' at k, not the first one
    ("2^X5+1", 1, "X5"),  # a letter opens no group
    ("2^\\sqrt", 1, "\\sqrt"),  # a command at the very end: no group to look for
])
def test_exponent_reads_what_follows_the_caret(s, k, exponent):
    assert s[k] == "^"
    assert V._exponent(s, k) == exponent


@pytest.mark.parametrize("s,product", [
    ("", 1), ("x", 1), ("7", 7), ("2 3 4", 24), ("10x5", 50),
    ("0", 1), ("0 5", 5),  # a zero counts as 1: never shrinks the estimate
    ("1000000 1000000 1000000 1000000 1000000 1000000", 10 ** 36),  # past 1e30: stops there
    ("1000000 1000000 1000000 1000000 1000000 1000000 7", 10 ** 36),  # the 7 never multiplied
    ("1000000000000000 1000000000000000", 10 ** 30),  # exactly 1e30: goes on
    ("1000000000000000 1000000000000000 3", 3 * 10 ** 30),
    ("1000000000000000 2000000000000000 3", 2 * 10 ** 30),  # just past 1e30: stops
])
def test_literal_product(s, product):
    assert V._literal_product(s) == product


@pytest.mark.parametrize("s,k,j", [
    ("ab", 1, 0), ("a  b", 3, 0), ("   b", 3, -1), ("b", 0, -1), ("a b", 2, 0),
])
def test_prev_char_skips_spaces(s, k, j):
    assert V._prev_char(s, k) == j


@pytest.mark.parametrize("value,gold", [("", "5"), ("}{", "5"), ("5", "")])
def test_math_equal_is_false_when_either_side_parses_to_nothing(value, gold):
    # math_verify's parse gives [] for these: no comparison, not a match
    assert V._math_equal_local(value, gold, None) is False
