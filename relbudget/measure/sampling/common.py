"""What every sampling backend shares: the early-exit check, and turning generated token ids
into rollout-table rows.

A backend returns, per attempt, the generated token ids and why generation ended. Scoring is the
same for every backend, so HF and vLLM write identical tables for identical generations; early
exit (HF stopping criterion, vLLM logits processor) asks one `FirstCorrect` check per new token.
"""

from __future__ import annotations

from dataclasses import dataclass

from relbudget.measure.verify import (ANCHOR_HINTS, INTEGER_FORMATS, Verdict, answer_is_correct,
                              find_candidates, verify)

ANCHOR_WINDOW = 8  # tokens: every anchor hint is shorter, so one ending at the new token is inside


@dataclass(frozen=True)
class Request:
    prompt_id: str
    prompt: str
    answer: str
    answer_format: str


@dataclass
class Generation:
    request: Request
    attempt: int
    token_ids: list[int]
    ended: str  # "eos" | "length" | "first_correct" (early exit)
    seed: int


def token_count_for_chars(tokenizer, ids: list[int], n_chars: int) -> int:
    """Smallest k such that decode(ids[:k]) has at least n_chars characters (binary search).

    Decoding prefixes, rather than summing per-token strings, stays right for byte-level BPE
    whose single tokens may decode to partial UTF-8.
    """
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[:mid], skip_special_tokens=True)) >= n_chars:
            hi = mid
        else:
            lo = mid + 1
    return lo


@dataclass
class RowCheck:
    """One generation's state for `FirstCorrect`: its gold answer, and whether an answer anchor
    has been written yet (no candidate can exist before one)."""

    answer: str
    fmt: str
    anchored: bool = False


class FirstCorrect:
    """Does a generation's newest token confirm its first correct answer?

    Called once per new token of each row, in order. Every test before `verify` is a necessary
    condition, so the answer is exactly verify's; they keep the cost per token O(1) until the row
    could hold a correct answer:
    - an anchor can only be completed by a token holding its last character; only then is the
      row's last ANCHOR_WINDOW tokens decoded to look for it (memoised per token id);
    - a candidate is confirmed only by a terminator (a non-digit, '}' for math);
    - an integer gold's digits must appear in the text.
    """

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self._memo: dict[tuple[str, int, str], bool] = {}

    def __call__(self, row: RowCheck, ids, last: int | None = None) -> bool:
        """ids: the row's generated token ids so far (list or 1-D tensor), newest last, or a
        function returning them (HF: built only for the few rows that get past the token tests);
        `last`: the newest id, when the caller has it already."""
        get = ids if callable(ids) else (lambda: ids)
        last = int(get()[-1]) if last is None else last
        hints = ANCHOR_HINTS[row.fmt]
        if not row.anchored and self._per_token("anchor", last, row.fmt,
                                                lambda p: any(h[-1] in p.lower() for h in hints)):
            tail = self.tok.decode(get()[-ANCHOR_WINDOW:], skip_special_tokens=True).lower()
            row.anchored = any(h in tail for h in hints)
        if not (row.anchored and self._per_token("terminate", last, row.fmt,
                                                 lambda p: may_terminate(p, row.fmt))):
            return False
        text = self.tok.decode(get(), skip_special_tokens=True)
        digits = gold_digits(row.answer, row.fmt)
        if digits is not None and digits not in text.replace(",", ""):
            return False
        return verify(text, row.answer, row.fmt, ended=False).first_correct_chars is not None

    def _per_token(self, test: str, token_id: int, fmt: str, fn) -> bool:
        key = (test, token_id, fmt)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = bool(fn(self.tok.decode([token_id])))
        return hit


def may_terminate(piece: str, fmt: str) -> bool:
    """Whether a token's text can end an answer candidate (see verify.py: terminators)."""
    if fmt == "math":
        return "}" in piece
    return any(not ch.isdigit() for ch in piece)


def gold_digits(answer: str, fmt: str) -> str | None:
    """The digits every correct number candidate contains (an integer gold's, without sign,
    commas and leading zeros), or None where no such cheap necessary condition is used."""
    if fmt not in INTEGER_FORMATS + ("gsm8k",):
        return None
    a = answer.strip().lstrip("+-\u2212").replace(",", "")
    if not a.isdigit():
        return None
    return a.lstrip("0") or "0"


def first_answer_correct(text: str, gold: str, fmt: str, ended: bool, v: Verdict) -> bool:
    """Whether the first complete answer candidate of `text` is correct (never true without a
    correct candidate, so the candidates are only listed then)."""
    if v.first_correct_chars is None:
        return False
    first = find_candidates(text, fmt, ended)[0]
    return answer_is_correct(first.value, gold, fmt)


def score(tokenizer, g: Generation, max_tokens: int, policy: str, keep_text: bool = True) -> dict:
    """One rollout-table row (its columns: docs/definitions.md) for one generation, with two extra
    columns: `first_answer_correct` (the first answer candidate is correct; it then is the first
    correct one, so it lies within H exactly when first_correct_token <= H) and `n_answers` (complete
    answer candidates in the completion: attempts per completion)."""
    ids = g.token_ids
    n_tokens = len(ids)
    ended = g.ended
    if ended == "length" and n_tokens < max_tokens:
        ended = "eos"  # a backend that strips EOS still ended on its own
    text = tokenizer.decode(ids, skip_special_tokens=True)
    v: Verdict = verify(text, g.request.answer, g.request.answer_format, ended=(ended == "eos"))
    fct = None
    if v.first_correct_chars is not None:
        fct = n_tokens if (v.at_eos or ended == "first_correct") else \
            token_count_for_chars(tokenizer, ids, v.first_correct_chars)
        fct = min(max(fct, 1), n_tokens)
    if ended == "first_correct" and fct is None:
        ended = "length" if n_tokens >= max_tokens else "eos"  # defensive: never mislabel
    row = {
        "prompt_id": g.request.prompt_id,
        "attempt": g.attempt,
        "n_tokens": n_tokens,
        "max_tokens": max_tokens,
        "first_correct_token": fct,
        "stop_reason": ended,
        "final_correct": bool(v.final_correct),
        "policy": policy,
        "seed": g.seed,
        "first_answer_correct": first_answer_correct(text, g.request.answer, g.request.answer_format,
                                                     ended == "eos", v),
        "n_answers": int(v.n_candidates),
    }
    if keep_text:
        row["completion"] = text
    return row
