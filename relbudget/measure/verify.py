"""The verifier: find the answer candidates in a generated text and check them against the gold.

Answer formats
--------------
- ``int`` (the built-in arithmetic task): a number after an anchor, ``A:432`` (the built-in
  policy), ``Answer: 432`` / ``answer is 432`` (chat models, any case) or ``#### 432``. Compared as
  exact integers on normalized strings (sign, grouping commas and leading zeros removed; ``-0`` is
  ``0``; a fractional part of zeros is allowed, ``432.0`` is 432). Never converted with ``int()``.
- ``prose`` (the built-in task posed in English to a chat model, ``data.style: natural``): an
  integer compared as ``int``, found after the anchors a small chat model actually writes:
  ``Answer:`` / ``answer is``, ``=`` (``64 + 97 = 161``), ``equals``, ``is`` (``the sum is 161``),
  ``makes``, ``gives`` or ``####``. Measured on SmolLM2-135M-Instruct: it almost never writes
  ``Answer: N`` when asked to, but restates the sum as an equation or a sentence.
- ``gsm8k``: a number after ``####``, ``Answer:`` or ``answer is``; numbers may carry a sign,
  thousands commas (``1,234``) and decimals. Compared as exact decimals (commas removed, leading
  zeros and trailing fractional zeros stripped), again on strings.
- ``math``: the content of ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced nested braces
  (``\\{`` and ``\\}`` are escaped characters, not groups), compared with ``math_verify`` (parse +
  verify) against the gold, after a cheap exact-text fast path.

Between the anchor and the number up to 16 filler characters are allowed: blanks, ``*`` (markdown
bold), ``$``, ``:``, ``\\(``, ``\\[`` and ``\\boxed{``.

Digits are ASCII only. Unicode digits (Arabic-Indic, fullwidth, ...) are *not* digits here and are
never part of a number: NFKC normalization would change character offsets (which the verdict
reports) and does not cover every script anyway. The unicode minus sign (U+2212) is accepted as a
minus sign.

Candidates and their terminator (``Candidate.end``)
---------------------------------------------------
A candidate is *complete* when no continuation of the text can change it. ``end`` is the index
of the character whose presence proves this (the terminator), or ``len(text)`` when only the end of
generation (EOS) proves it:

- a number ends at the first character that cannot continue it: a non-digit, except that a ``,``
  or ``.`` right after digits may still start a thousands group / a fractional part, so then the
  character after it decides (``42.`` needs one more character: ``42. `` is 42, ``42.5`` is not);
  ``1,23`` needs up to 4 more. A number that runs to the end of the text is complete only when
  ``ended`` is True (the generation emitted EOS): ``A:13`` may still become ``A:132``;
- a ``\\boxed{...}`` ends at its closing brace (``end`` = the index of that ``}``); EOS never
  completes an unclosed one.

The number of leading characters needed to confirm a candidate is therefore
``min(end + 1, len(text))``, and the confirmation is "at EOS" exactly when ``end == len(text)``
(see `confirm_point`). `verify` reports this for the first correct candidate.

Safety (bounded time and memory on any input)
---------------------------------------------
- Model text is never executed; regexes have no nested unbounded quantifiers (linear time).
- Only the first ``MAX_SCAN_CHARS`` (32,000) characters are scanned. A longer text is treated as
  if cut there without EOS, so a candidate not confirmed within them does not count.
- Numbers longer than ``MAX_NUMBER_DIGITS`` (64) digits are candidates but never correct.
  ``\\boxed`` contents longer than ``MAX_BOXED_CHARS`` (1,000) or nested deeper than
  ``MAX_BRACE_DEPTH`` (10) braces are candidates but never correct (their ``value`` is cut to
  ``MAX_BOXED_CHARS + 1`` characters). The brace scan is one linear pass. Contents longer than
  ``MAX_SYMPY_CHARS`` (256) only get the exact-text comparison (whitespace, ``\\left``/``\\right``
  and ``\\dfrac``/``\\tfrac`` normalized), never sympy: parsing ~1,000 characters of LaTeX alone
  can take a second.
- Before sympy sees a math candidate, a static screen rejects (as incorrect) what can make sympy
  compute astronomically large numbers in C, where no timeout can interrupt it: ``\\sum``,
  ``\\prod``, ``\\int``, ``\\lim``, exponents inside exponents (unless on a letter base),
  numeric powers whose result would exceed ~``MAX_POWER_DIGITS`` digits, factorials of more than
  ``MAX_FACTORIAL_ARG`` or of factorials, binomials with powers or factorials in them.
- math_verify's own timeouts use ``signal.alarm``, which only works in the main thread. In the
  main thread they are on (``MATH_TIMEOUT_S`` per parse and per comparison; note this cancels any
  outer ``SIGALRM`` timer, e.g. pytest-timeout's signal method). In any other thread (Prefect runs
  tasks in worker threads) the check runs in a helper subprocess (``python -m relbudget.measure.verify
  --math-worker``) that uses the signal timeouts itself and is killed after
  ``MATH_WORKER_TIMEOUT_S`` (a hard bound even for C-level work; address space capped at 4 GiB).
  If that subprocess cannot start, the check runs in the thread with timeouts off and only the
  caps above bound it (a warning says so, once).
- A `verify` call starts no more sympy checks once it has spent ``MATH_BUDGET_S`` (2 s) on them
  or made ``MAX_MATH_CHECKS`` (16) (the last candidate, for ``final_correct``, still gets one);
  candidates past that budget count as incorrect (a warning is logged). So one call costs at most
  about the budget plus two checks' timeouts. Results are cached per (value, gold) across calls.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FORMATS = ("int", "prose", "gsm8k", "math")
INTEGER_FORMATS = ("int", "prose")  # compared as exact integers

MAX_SCAN_CHARS = 32_000
MAX_NUMBER_DIGITS = 64
MAX_BOXED_CHARS = 1_000
MAX_SYMPY_CHARS = 256    # longer math candidates get only the exact-text comparison
MAX_BRACE_DEPTH = 10
MAX_POWER_DIGITS = 100_000
MAX_FACTORIAL_ARG = 10_000
MAX_POWERS = 32          # '^' in one math candidate
MAX_FACTORIALS = 16      # '!' in one math candidate
MAX_MATH_CHECKS = 16     # distinct sympy checks per verify() call (+1 for the final candidate)
MATH_TIMEOUT_S = 1       # math_verify parse / per-comparison timeout (whole seconds: signal.alarm)
MATH_WORKER_TIMEOUT_S = 8.0
MATH_BUDGET_S = 2.0
MAX_FILLER = 16

_DIGITS = "0123456789"
_SIGNS = "+-\u2212"

# Anchors. Each is a fixed alternation followed by a bounded filler: linear time.
_FILLER = r"(?:[ \t\r\n*$:]|\\\(|\\\[|\\boxed\{){0,%d}" % MAX_FILLER
_ANSWER_WORD = r"\b(?i:answer)(?:[ \t]{0,3}(?i:is)\b[ \t]{0,3}:?|[ \t]{0,3}:)"
_ANCHORS = {
    "int": re.compile(r"(?:(?<![A-Za-z_])A:|####|" + _ANSWER_WORD + ")" + _FILLER),
    "gsm8k": re.compile(r"(?:####|" + _ANSWER_WORD + ")" + _FILLER),
    "prose": re.compile(r"(?:####|" + _ANSWER_WORD + r"|=|\b(?i:equals?|is|makes|gives)\b)"
                        + _FILLER),
}
# Lower-cased strings, one of which every candidate's anchor contains (the anchors above and
# _BOX_OPENERS below). Until a text holds one, no candidate can exist: early exit uses this to skip
# the verifier (relbudget/measure/sampling/common.py).
ANCHOR_HINTS = {"int": ("a:", "####", "answer"), "gsm8k": ("####", "answer"),
                "prose": ("####", "answer", "=", "equal", "is", "make", "give"),
                "math": ("\\boxed", "\\fbox")}
_SIGNED_DIGITS = re.compile(r"[+\-\u2212]?[0-9]+")
_NUMBER_FULL = re.compile(
    r"([+\-\u2212]?)([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.([0-9]+))?")
_BRACE_TOKENS = re.compile(r"[\\{}]")
_BOX_OPENERS = ("\\boxed", "\\fbox")


# ----------------------------------------------------------------------------------- public API

@dataclass(frozen=True)
class Candidate:
    """One complete answer candidate.

    value: the answer as written (number with its sign/commas; boxed content, cut to
    MAX_BOXED_CHARS + 1 chars when longer). start: index of its first character.
    end: index of the terminator that proves it complete, or len(text) when EOS proves it.
    """

    value: str
    start: int
    end: int


@dataclass(frozen=True)
class Verdict:
    """first_correct_chars: leading characters of the text needed to confirm the first correct
    candidate (its terminator included), None if no candidate is correct. at_eos: that
    confirmation is the EOS itself (the caller sets first_correct_token = n_tokens).
    final_correct: the last complete candidate is correct. n_candidates: complete candidates."""

    first_correct_chars: int | None
    at_eos: bool
    final_correct: bool
    n_candidates: int


def confirm_point(candidate: Candidate, text_len: int) -> tuple[int, bool]:
    """(characters needed to confirm `candidate`, whether the confirmation is the EOS)."""
    return min(candidate.end + 1, text_len), candidate.end >= text_len


def find_candidates(text: str, fmt: str, ended: bool) -> list[Candidate]:
    """Complete candidates in `text`, in the order they are confirmed (by `end`)."""
    _check_fmt(fmt)
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    if len(text) > MAX_SCAN_CHARS:
        text, ended = text[:MAX_SCAN_CHARS], False
    if fmt == "math":
        return [c for c, _ in _boxed_candidates(text)]
    return _number_candidates(text, fmt, bool(ended))


def verify(text: str, gold: str, fmt: str, ended: bool) -> Verdict:
    """Check every complete candidate of `text` against `gold` (see the module docstring).

    Raises ValueError for an unknown format or a gold answer that is not valid for it (a data
    bug), TypeError for a non-str text; a candidate never makes it raise.
    """
    _check_fmt(fmt)
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    n = min(len(text), MAX_SCAN_CHARS)
    if fmt == "math":
        gold_key = _math_gold(gold)
        if len(text) > MAX_SCAN_CHARS:
            text = text[:MAX_SCAN_CHARS]
        pairs = _boxed_candidates(text)
        checker = _MathChecker(gold_key)
        cands = [c for c, _ in pairs]
        check = lambda i, final=False: checker(pairs[i][0].value, pairs[i][1], final)  # noqa: E731
    else:
        gold_key = _gold_number(gold, fmt)
        cands = find_candidates(text, fmt, ended)
        check = lambda i, final=False: _canon_number(cands[i].value) == gold_key  # noqa: E731
    first = None
    for i, c in enumerate(cands):
        ok = check(i)
        if ok is None:  # math budget spent: later candidates count as incorrect
            break
        if ok:
            first = c
            break
    final_ok = bool(cands) and (cands[-1] is first or check(len(cands) - 1, True) is True)
    if first is None:
        return Verdict(None, False, final_ok, len(cands))
    chars, at_eos = confirm_point(first, n)
    return Verdict(chars, at_eos, final_ok, len(cands))


def answer_is_correct(value: str, gold: str, fmt: str) -> bool:
    """Whether one answer `value` equals `gold` in format `fmt` (never raises for a bad value;
    raises ValueError for an unknown format or an invalid gold)."""
    _check_fmt(fmt)
    if fmt == "math":
        return _MathChecker(_math_gold(gold))(value, None, True) is True
    gold_key = _gold_number(gold, fmt)
    return isinstance(value, str) and _canon_number(value) == gold_key


def extract_gold(raw: Any, fmt: str) -> str:
    """The gold answer from a dataset answer field.

    gsm8k: the number after the last ``####`` (commas removed), or a bare number.
    math: the content of the last complete ``\\boxed{...}``/``\\fbox{...}``, or the field itself
    when it is a bare answer (one line of at most 200 characters; ``$...$`` stripped).
    int, prose: the integer, normalized (sign kept, leading zeros and commas removed).
    Raises ValueError with the reason when there is none.
    """
    _check_fmt(fmt)
    if isinstance(raw, bool) or raw is None:
        raise ValueError(f"answer is {raw!r}, expected a string or number")
    if isinstance(raw, int):
        if raw.bit_length() > 200:  # far beyond MAX_NUMBER_DIGITS; never str() a huge int
            raise ValueError("integer answer too large")
        raw = str(raw)
    elif isinstance(raw, float):
        if not math.isfinite(raw):
            raise ValueError(f"answer is {raw!r}, not a finite number")
        if fmt in INTEGER_FORMATS and not raw.is_integer():
            raise ValueError(f"answer {raw!r} is not an integer")
        raw = str(int(raw)) if raw.is_integer() and abs(raw) < 2 ** 53 else repr(raw)
    elif not isinstance(raw, str):
        raise ValueError(f"answer is {type(raw).__name__}, expected a string or number")
    if fmt in INTEGER_FORMATS:
        canon = _canon_number(raw.strip())
        if canon is None or "." in canon:
            raise ValueError(f"answer {_short(raw)} is not an integer of at most "
                             f"{MAX_NUMBER_DIGITS} digits")
        return canon
    if fmt == "gsm8k":
        k = raw.rfind("####")
        tail = raw[k + 4:] if k >= 0 else raw
        tail = tail.strip().split("\n", 1)[0].strip()
        tail = tail.lstrip("$").rstrip(".").strip().replace(",", "")
        canon = _canon_number(tail)
        if canon is None:
            what = "after '####'" if k >= 0 else "(no '####' marker, and not a bare number)"
            raise ValueError(f"no number {what} in GSM8K answer {_short(raw)}")
        return canon
    # math
    boxed = _boxed_candidates(raw, cut=False)
    if boxed:
        content = boxed[-1][0].value.strip()
        if not content:
            raise ValueError(f"empty \\boxed{{}} in MATH solution {_short(raw)}")
        if len(content) > MAX_BOXED_CHARS:
            raise ValueError(f"\\boxed content longer than {MAX_BOXED_CHARS} chars")
        return content
    if any(op in raw for op in _BOX_OPENERS):
        raise ValueError(f"unclosed \\boxed{{ in MATH solution {_short(raw)}")
    bare = raw.strip()
    for a, b in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(bare) > len(a) + len(b) and bare.startswith(a) and bare.endswith(b):
            bare = bare[len(a):-len(b)].strip()
            break
    if not bare:
        raise ValueError("empty MATH answer")
    if len(bare) > 200 or "\n" in bare:
        raise ValueError(f"no \\boxed{{...}} in MATH solution, and it is too long to be a bare "
                         f"answer: {_short(raw)}")
    return bare


# ------------------------------------------------------------------------------------- numbers

def _check_fmt(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown answer format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _short(s: Any, n: int = 80) -> str:
    r = repr(s)
    return r if len(r) <= n else r[: n - 3] + "..."


def _number_candidates(text: str, fmt: str, ended: bool) -> list[Candidate]:
    out = []
    n = len(text)
    for m in _ANCHORS[fmt].finditer(text):
        p = m.end()
        got = _lex_number(text, p, n, ended)
        if got is not None:
            value_end, confirm = got
            out.append(Candidate(text[p:value_end], p, confirm))
    return out


def _lex_number(text: str, p: int, n: int, ended: bool) -> tuple[int, int] | None:
    """(end of the number's characters, index of the proving terminator or n for EOS) for a
    number starting at p; None when there is no number at p or it is not complete yet."""
    m = _SIGNED_DIGITS.match(text, p)
    if m is None:
        return None
    j = m.end()
    lead = j - p - (1 if text[p] in _SIGNS else 0)
    if lead <= 3:  # thousands groups only after a 1-3 digit lead
        while j < n and text[j] == ",":
            k = j + 1
            while k < n and k < j + 4 and text[k] in _DIGITS:
                k += 1
            if k < j + 4:                        # fewer than 3 digits after the comma
                if k < n:
                    return j, k                  # text[k], a non-digit, proves no group
                return (j, n) if ended else None
            if k == n:                           # ',ddd' at the very end
                if not ended:
                    return None
                j = k
                break
            if text[k] in _DIGITS:
                return j, k                      # a 4th digit: the comma was not a separator
            j = k                                # a group
    if j < n and text[j] == ".":
        k = j + 1
        if k == n:
            return (j, n) if ended else None
        if text[k] not in _DIGITS:
            return j, k                          # a full stop, proven by the char after it
        j = _SIGNED_DIGITS.match(text, k).end()
    if j == n:
        return (j, n) if ended else None
    return j, j


def _canon_number(s: str) -> str | None:
    """Canonical decimal string ('-12.5', '0', '1234'), or None if `s` is not a plain number
    (ASCII digits, optional sign and thousands commas and fraction) of <= MAX_NUMBER_DIGITS."""
    if not isinstance(s, str) or len(s) > 2 * MAX_NUMBER_DIGITS + 2:
        return None
    m = _NUMBER_FULL.fullmatch(s.strip())
    if m is None:
        return None
    sign, ip, fp = m.group(1), m.group(2).replace(",", "").lstrip("0") or "0", \
        (m.group(3) or "").rstrip("0")
    if len(ip) + len(fp) > MAX_NUMBER_DIGITS:
        return None
    body = ip + ("." + fp if fp else "")
    return ("-" if sign in ("-", "\u2212") and body != "0" else "") + body


def _gold_number(gold: Any, fmt: str) -> str:
    canon = _canon_number(gold) if isinstance(gold, str) else None
    if canon is None or (fmt in INTEGER_FORMATS and "." in canon):
        raise ValueError(f"gold answer {_short(gold)} is not a valid {fmt} answer "
                         f"(use extract_gold on the dataset field)")
    return canon


# ---------------------------------------------------------------------------------------- math

def _boxed_candidates(text: str, cut: bool = True) -> list[tuple[Candidate, int]]:
    """(candidate, brace depth inside it) for every closed \\boxed{...}/\\fbox{...}, by end.

    One pass over the braces and backslashes with a stack; each entry carries the depth of the
    braces nested inside it, so depth and length of every candidate cost O(1) more."""
    out: list[tuple[Candidate, int]] = []
    stack: list[list] = []  # [is_box, content_start, inner_depth]
    skip = -1
    for m in _BRACE_TOKENS.finditer(text):
        i = m.start()
        if i <= skip:
            continue
        ch = text[i]
        if ch == "\\":
            skip = i + 1  # \{ \} \\ are characters, not groups
        elif ch == "{":
            is_box = text.endswith(_BOX_OPENERS[0], 0, i) or text.endswith(_BOX_OPENERS[1], 0, i)
            stack.append([is_box, i + 1, 0])
        elif stack:
            is_box, start, depth = stack.pop()
            if stack and stack[-1][2] < depth + 1:
                stack[-1][2] = depth + 1
            if is_box:
                stop = min(i, start + MAX_BOXED_CHARS + 1) if cut else i
                out.append((Candidate(text[start:stop], start, i), depth))
    return out


def _math_gold(gold: Any) -> str:
    if not isinstance(gold, str) or not gold.strip():
        raise ValueError(f"gold answer {_short(gold)} is not a valid math answer")
    return gold.strip()


_SPACES = re.compile(r"\s+|\\[,;:! ]|\\left|\\right")


def _norm_latex(s: str) -> str:
    s = _SPACES.sub("", s).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.strip("$").rstrip(".")
    return s


_HEAVY = re.compile(r"\\(?:sum|prod|coprod|int|iint|iiint|oint|lim|limsup|liminf|uparrow)"
                    r"(?![A-Za-z])|\\operatorname\{(?:lim|sum|prod)")
_BINOM = re.compile(r"\\[dt]?binom(?![A-Za-z])|\\choose(?![A-Za-z])")
_LONG_LITERAL = re.compile(r"\d{%d,}" % (MAX_NUMBER_DIGITS + 1))
_LITERAL = re.compile(r"\d+")
_COMMAND = re.compile(r"\\[A-Za-z]+")
_EXP_RUN = re.compile(r"[0-9A-Za-z.]+")
_CLOSERS = {"}": "{", ")": "(", "]": "["}


def _group_end(s: str, j: int) -> int:
    """Index after the group opened at s[j] ('{', '(' or '['), or len(s) when unclosed."""
    depth = 0
    for k in range(j, len(s)):
        c = s[k]
        if c in "{([":
            depth += 1
        elif c in "})]":
            depth -= 1
            if depth == 0:
                return k + 1
    return len(s)


def _group_start(s: str, j: int) -> int:
    """Index of the opener matching the closer at s[j], or 0 when unmatched."""
    depth = 0
    for k in range(j, -1, -1):
        c = s[k]
        if c in "})]":
            depth += 1
        elif c in "{([":
            depth -= 1
            if depth == 0:
                return k
    return 0


def _exponent(s: str, k: int) -> str:
    """The exponent after the '^' at s[k] (conservatively large)."""
    j = k + 1
    while j < len(s) and s[j] == " ":
        j += 1
    if j >= len(s):
        return ""
    if s[j] in "{([":
        return s[j:_group_end(s, j)]
    if s[j] == "\\":
        m = _COMMAND.match(s, j)
        end = m.end() if m else j + 2
        if m and m.group() == "\\left":
            return s[j:_group_end(s, end)] if end < len(s) and s[end] in "([{" else s[j:end]
        for _ in range(2):  # \frac{..}{..}, \sqrt{..}
            if end < len(s) and s[end] == "{":
                end = _group_end(s, end)
        return s[j:end]
    m = _EXP_RUN.match(s, j)
    return m.group() if m else s[j]


def _literal_product(s: str) -> int:
    prod = 1
    for lit in _LITERAL.findall(s):
        prod *= max(int(lit), 1)  # each literal has <= MAX_NUMBER_DIGITS digits
        if prod > 10 ** 30:
            break
    return prod


def _prev_char(s: str, k: int) -> int:
    j = k - 1
    while j >= 0 and s[j] == " ":
        j -= 1
    return j


def _math_unsafe(s: str, depth: int | None = None) -> str | None:
    """Why sympy must not see `s` (as a math answer), or None when it may."""
    if len(s) > MAX_BOXED_CHARS:
        return f"longer than {MAX_BOXED_CHARS} chars"
    if depth is None:
        depth = cur = 0
        skip = -1
        for m in _BRACE_TOKENS.finditer(s):
            i = m.start()
            if i <= skip:
                continue
            if s[i] == "\\":
                skip = i + 1
            elif s[i] == "{":
                cur += 1
                depth = max(depth, cur)
            else:
                cur = max(cur - 1, 0)
    if depth > MAX_BRACE_DEPTH:
        return f"braces nested deeper than {MAX_BRACE_DEPTH}"
    if _LONG_LITERAL.search(s):
        return f"a number longer than {MAX_NUMBER_DIGITS} digits"
    if _HEAVY.search(s):
        return "sum/product/integral/limit"
    n_pow, n_fact = s.count("^"), s.count("!")
    if n_pow > MAX_POWERS or n_fact > MAX_FACTORIALS:
        return "too many powers or factorials"
    if _BINOM.search(s) and (n_pow or n_fact or any(
            int(x) > MAX_FACTORIAL_ARG for x in _LITERAL.findall(s))):
        return "binomial of a large argument"
    if n_pow:
        widest = max((len(x) for x in _LITERAL.findall(s)), default=1)
        total = 1
        for k in (i for i, c in enumerate(s) if c == "^"):
            e = _exponent(s, k)
            if "!" in e:
                return "factorial in an exponent"
            for kk in (i for i, c in enumerate(e) if c == "^"):
                b = _prev_char(e, kk)
                if b < 0 or not e[b].isalpha() or e[b].isdigit():
                    return "power in an exponent"
            b = _prev_char(s, k)
            if b >= 0 and s[b].isascii() and s[b].isalpha():
                continue  # a symbolic base (x^100) never becomes a huge number
            total *= _literal_product(e)
            if total * widest > MAX_POWER_DIGITS:
                return "power too large"
    if n_fact:
        for k in (i for i, c in enumerate(s) if c == "!"):
            if k > 0 and s[k - 1] == "\\":
                continue  # \! is a negative thin space
            b = _prev_char(s, k)
            if b < 0:
                continue
            c = s[b]
            if c == "!":
                return "factorial of a factorial"
            if c.isdecimal():
                a = b
                while a > 0 and s[a - 1].isdecimal():
                    a -= 1
                before = _prev_char(s, a)
                if int(s[a:b + 1]) > MAX_FACTORIAL_ARG or (before >= 0 and s[before] in "^_"):
                    return "factorial too large"
            elif c in _CLOSERS:
                group = s[_group_start(s, b):b + 1]
                if "!" in group or "^" in group or _literal_product(group) > MAX_FACTORIAL_ARG:
                    return "factorial too large"
    return None


class _MathChecker:
    """Checks math candidates against one gold within one verify() call's budget.

    Returns True/False, or None once the budget (time or number of sympy checks) is spent."""

    def __init__(self, gold: str):
        self.gold = gold
        self.gold_norm = _norm_latex(gold)
        self.memo: dict[str, bool] = {}
        self.spent = 0.0
        self.checks = 0
        self.warned = False

    def __call__(self, value: Any, depth: int | None, final: bool) -> bool | None:
        if not isinstance(value, str):
            return False
        if value in self.memo:
            return self.memo[value]
        reason = _math_unsafe(value, depth)
        if reason is not None:
            logger.debug("math candidate not checked (%s): %s", reason, _short(value))
            self.memo[value] = False
            return False
        if not value.strip():
            self.memo[value] = False
            return False
        if _norm_latex(value) == self.gold_norm:
            self.memo[value] = True
            return True
        if len(value) > MAX_SYMPY_CHARS:
            self.memo[value] = False
            return False
        limit = MAX_MATH_CHECKS + (1 if final else 0)
        if self.checks >= limit or (self.spent >= MATH_BUDGET_S and not final):
            if not self.warned:
                logger.warning("verify: math check budget spent (%d checks, %.1fs); the "
                               "remaining candidates count as incorrect", self.checks, self.spent)
                self.warned = True
            return None
        t0 = time.monotonic()
        ok = _math_equal_cached(value, self.gold)
        self.spent += time.monotonic() - t0
        self.checks += 1
        self.memo[value] = ok
        return ok


@lru_cache(maxsize=8192)
def _math_equal_cached(value: str, gold: str) -> bool:
    if threading.current_thread() is threading.main_thread():
        return _math_equal_local(value, gold, MATH_TIMEOUT_S)
    return _math_equal_in_worker(value, gold)


@lru_cache(maxsize=1024)
def _parse_gold(gold: str, timeout: int | None) -> tuple:
    from math_verify import parse
    return tuple(parse("\\boxed{" + gold + "}", parsing_timeout=timeout))


def _math_equal_local(value: str, gold: str, timeout: int | None) -> bool:
    """math_verify parse + verify; timeouts must be None outside the main thread."""
    from math_verify import parse
    from math_verify import verify as mv_verify
    from math_verify.errors import TimeoutException
    try:
        g = list(_parse_gold(gold, timeout))
        p = parse("\\boxed{" + value + "}", parsing_timeout=timeout)
        if not g or not p:
            return False
        return bool(mv_verify(g, p, timeout_seconds=timeout))
    except (Exception, TimeoutException) as err:  # math_verify's timeout is a BaseException
        logger.debug("math_verify failed on %s: %s", _short(value), err)
        return False


# ---------------------------------------------------------- math checks outside the main thread

class _MathWorker:
    """A `python -m relbudget.measure.verify --math-worker` subprocess: one JSON line in, one out."""

    def __init__(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        self.pid = os.getpid()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relbudget.measure.verify", "--math-worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True)
        try:
            ready = self._readline(120.0)
        except (OSError, ValueError):
            ready = None
        if ready != {"ready": True}:
            self.kill()
            raise RuntimeError("math worker did not start")

    def alive(self) -> bool:
        return self.pid == os.getpid() and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def _readline(self, timeout: float) -> Any:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()  # the worker writes whole lines in one write
        return json.loads(line) if line else None

    def check(self, value: str, gold: str) -> bool | None:
        """True/False, or None when the worker timed out or died (it is then killed)."""
        try:
            self.proc.stdin.write(json.dumps({"v": value, "g": gold}).encode() + b"\n")
            self.proc.stdin.flush()
            reply = self._readline(MATH_WORKER_TIMEOUT_S)
        except (OSError, ValueError):
            reply = None
        if not isinstance(reply, dict) or "ok" not in reply:
            self.kill()
            return None
        return bool(reply["ok"])


_POOL_LOCK = threading.Lock()
_POOL_SLOTS = threading.BoundedSemaphore(max(1, min(4, os.cpu_count() or 1)))
_IDLE: list[_MathWorker] = []
_WORKER_BROKEN = False


def _math_equal_in_worker(value: str, gold: str) -> bool:
    global _WORKER_BROKEN
    if not _WORKER_BROKEN:
        with _POOL_SLOTS:
            with _POOL_LOCK:
                w = _IDLE.pop() if _IDLE else None
            try:
                if w is None or not w.alive():
                    w = _MathWorker()
            except Exception as err:  # noqa: BLE001 - any failure: fall back below
                _WORKER_BROKEN = True
                logger.warning("verify: cannot start the math worker subprocess (%s); math "
                               "checks outside the main thread now run without timeouts, "
                               "bounded only by the static caps", err)
            else:
                ok = w.check(value, gold)
                if w.alive():
                    with _POOL_LOCK:
                        _IDLE.append(w)
                if ok is None:
                    logger.warning("verify: math check timed out after %.0fs (counted incorrect): "
                                   "%s", MATH_WORKER_TIMEOUT_S, _short(value))
                    return False
                return ok
    return _math_equal_local(value, gold, None)


def _shutdown_workers() -> None:
    with _POOL_LOCK:
        workers, _IDLE[:] = list(_IDLE), []
    for w in workers:
        if w.pid == os.getpid():
            w.kill()


atexit.register(_shutdown_workers)
if hasattr(os, "register_at_fork"):  # a forked child must not share its parent's workers
    os.register_at_fork(after_in_child=lambda: _IDLE.clear())


def _worker_main() -> int:
    try:
        import resource
        cap = 4 * 1024 ** 3
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except (ImportError, ValueError, OSError):
        pass
    logging.basicConfig(level=logging.ERROR)
    import math_verify  # noqa: F401 - import before saying ready
    out = sys.stdout.buffer
    out.write(b'{"ready": true}\n')
    out.flush()
    for line in sys.stdin.buffer:
        try:
            req = json.loads(line)
            ok = _math_equal_local(str(req["v"]), str(req["g"]), MATH_TIMEOUT_S)
        except (Exception, MemoryError):  # noqa: BLE001
            ok = False
        out.write(json.dumps({"ok": bool(ok)}).encode() + b"\n")
        out.flush()
    return 0


# --------------------------------------------------------------------------------------- rewards

if __name__ == "__main__":
    if sys.argv[1:] == ["--math-worker"]:
        sys.exit(_worker_main())
    print("usage: python -m relbudget.measure.verify --math-worker", file=sys.stderr)
    sys.exit(2)
