"""What every sampling backend shares: turning generated token ids into rollout-table rows.

A backend returns, per attempt, the generated token ids and why generation ended. Scoring is the
same for every backend, so HF and vLLM write identical tables for identical generations.
"""

from __future__ import annotations

from dataclasses import dataclass

from relbudget.verify import Verdict, verify


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


def content_ids(tokenizer, ids: list[int]) -> list[int]:
    """Generated ids up to and including EOS; the count of these is n_tokens."""
    eos = tokenizer.eos_token_id
    if eos in ids:
        return ids[: ids.index(eos) + 1]
    return ids


def score(tokenizer, g: Generation, max_tokens: int, policy: str, keep_text: bool = True) -> dict:
    """One rollout-table row (DESIGN section 5) for one generation."""
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
    }
    if keep_text:
        row["completion"] = text
    return row
