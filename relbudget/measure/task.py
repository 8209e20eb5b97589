"""The built-in task: seeded multi-digit addition whose solution needs a column-sum trace.

Why a trace: with a bare answer, T (tokens to the first correct answer) is near-geometric, so no
deficient regime exists. Writing column sums with carries before `A:<answer>` gives T a floor,
as chain-of-thought does in real models:

    prompt      347+85=
    completion  7+5=12|4+8+1=13|3+1=4|A:432<eos>

Levels are digits per operand.

`style="retry"` (the default) makes the policy self-correct, like a reasoning model that keeps
going until it finds the answer: a completion holds attempts joined by `||`, each a full column
trace that may carry a *slip* (one column total off by one, the rest of the attempt consistent
with it, so its answer is wrong; at most one slip per attempt):

    completion  7+5=13|4+8+1=14|3+1=4|A:442||5+7=12|8+4+1=13|1+3=4|A:432||...

(the terms of each column in a random order, so that no attempt is a copy of the one before).

After each attempt the pre-training traces go on with probability `continue_rate` whatever the
attempt's correctness (the policy cannot tell its own slip from a right sum), so a completion
without a correct answer runs on until it stops or hits the cap, and T (tokens to the first
correct answer) keeps growing with the number of failed attempts. The slip rates are the knob
for the policy's imperfection: a column with a carry slips with `slip_carry`, one without with
`slip_plain`, so long sums with many carries are hard and short ones easy. `style="trace"` is
the single-attempt task: one attempt, then EOS, so the budget stops binding above ~30 tokens.

`style="natural"` poses the same problems in English for chat
models (`Calculate 64 + 97.`); their answers are read with the `prose` answer format, which finds
the number after `=`, `is`, `Answer:` and the like (see verify.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from relbudget.core.params import capacity

# Measured on SmolLM2-135M-Instruct (chat template on, 16 problems x 4 attempts, T=0.7, 96 tokens):
# correct answers 20/64 with this wording, 15/64 with "What is ...?", 12/64 when also asked to
# write "Answer: N" (it rarely does; the request only derails it), 0/48 with a column-by-column
# instruction.
NATURAL_TEMPLATE = "Calculate {expr}."
ANSWER_FORMAT = {"retry": "int", "trace": "int", "natural": "prose"}
ATTEMPT_SEP = "||"


def column_trace(operands: list[int]) -> str:
    """The reasoning prefix and answer, least significant column first."""
    digits = [str(x)[::-1] for x in operands]
    width = max(len(d) for d in digits)
    carry, parts = 0, []
    for col in range(width):
        terms = [d[col] for d in digits if col < len(d)]
        if carry:
            terms.append(str(carry))
        total = sum(int(t) for t in terms)
        parts.append(f"{'+'.join(terms)}={total}")
        carry = total // 10
    return "|".join(parts) + f"|A:{sum(operands)}"


def carry_columns(operands: list[int]) -> list[bool]:
    """Per column (least significant first) of the correct sum: does it carry in or out?"""
    digits = [str(x)[::-1] for x in operands]
    carry, out = 0, []
    for col in range(max(len(d) for d in digits)):
        total = sum(int(d[col]) for d in digits if col < len(d)) + carry
        out.append(bool(carry) or total >= 10)
        carry = total // 10
    return out


def slipped_trace(operands: list[int], rng: np.random.Generator, slip_carry: float,
                  slip_plain: float, shuffle: bool = False) -> str:
    """One attempt: the column trace with at most one slip. Column by column, a column with a
    carry (in the correct sum) slips with probability slip_carry, one without with slip_plain,
    until one slips: its total is written off by one, and later columns and the answer follow
    the written totals, so the attempt states a wrong answer."""
    rates = [slip_carry if c else slip_plain for c in carry_columns(operands)]
    draws = rng.random(len(rates))
    slip = next((j for j, (u, r) in enumerate(zip(draws, rates)) if u < r), None)
    digits = [str(x)[::-1] for x in operands]
    carry, parts, answer = 0, [], []
    for col in range(len(rates)):
        terms = [d[col] for d in digits if col < len(d)]
        if shuffle:
            # Terms in a random order: attempts do not repeat each other verbatim, so the policy
            # cannot learn to copy its last attempt (and its slip) instead of adding again.
            # Measured: consecutive attempts with the same answer 0.64 -> 0.49.
            terms = [terms[i] for i in rng.permutation(len(terms))]
        if carry:
            terms.append(str(carry))
        total = sum(int(t) for t in terms)
        if col == slip:
            total = total - 1 if total > 0 and rng.random() < 0.5 else total + 1
        parts.append(f"{'+'.join(terms)}={total}")
        answer.append(str(total % 10))
        carry = total // 10
    if carry:
        answer.append(str(carry))
    return "|".join(parts) + f"|A:{int(''.join(reversed(answer)))}"


def retry_completion(operands: list[int], rng: np.random.Generator, slip_carry: float,
                     slip_plain: float, continue_rate: float, max_chars: int) -> tuple[str, bool]:
    """A self-correcting completion: attempts joined by `||`, going on after each attempt with
    probability continue_rate. Returns (text, ended): ended=False when the text was cut at
    max_chars (the policy would have gone on), so no EOS follows it in pre-training."""
    text = slipped_trace(operands, rng, slip_carry, slip_plain, shuffle=True)
    while len(text) < max_chars:
        if rng.random() >= continue_rate:
            return text, True
        text += ATTEMPT_SEP + slipped_trace(operands, rng, slip_carry, slip_plain, shuffle=True)
    return text[:max_chars], False


def draw_problem(levels: list[int], operands: int, rng: np.random.Generator) -> tuple[int, list[int]]:
    """One problem (level, operands); a level's operands have exactly `level` digits."""
    level = int(rng.choice(levels))
    lo = 0 if level == 1 else 10 ** (level - 1)
    return level, [int(v) for v in rng.integers(lo, 10**level, size=operands)]


def make_problems(n: int, levels: list[int], operands: int, rng: np.random.Generator,
                  exclude: set[tuple[int, ...]] | None = None, carries: list[int] | None = None,
                  ) -> list[tuple[int, list[int]]]:
    """n distinct problems (level, operands). With `carries`, only problems whose correct column
    trace has that many carry columns (columns that carry in or out: where the base policy slips
    with slip_carry instead of slip_plain, so the count sets how hard a problem is)."""
    seen = set(exclude or ())
    out: list[tuple[int, list[int]]] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct problems from levels {levels}"
                             + (f" with {carries} carry columns" if carries is not None else "")
                             + "; lower n_train/n_eval or add levels")
        level, xs = draw_problem(levels, operands, rng)
        key = tuple(xs)
        if key in seen:
            continue
        seen.add(key)
        if carries is None or sum(carry_columns(xs)) in carries:
            out.append((level, xs))
    return out


def prompt_text(xs: list[int], style: str) -> str:
    """The prompt as the policy reads it (retry and trace share the compact form)."""
    expr = "+".join(str(x) for x in xs)
    if style == "natural":
        return NATURAL_TEMPLATE.format(expr=" + ".join(str(x) for x in xs))
    return f"{expr}="


def to_frame(problems: list[tuple[int, list[int]]], split: str, style: str) -> pd.DataFrame:
    return pd.DataFrame({
        "prompt_id": [f"{split}-{i:05d}" for i in range(len(problems))],
        "prompt": [prompt_text(xs, style) for _, xs in problems],
        "answer": [str(sum(xs)) for _, xs in problems],
        "answer_format": ANSWER_FORMAT[style],
        "level": [lvl for lvl, _ in problems],
        "solution": [column_trace(xs) for _, xs in problems],
    })


def task_splits(n_train: int, n_eval: int, levels: list[int], carries: list[int] | None,
                operands: int, seed: int, style: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A task's disjoint train and eval problems, the same for the same seed."""
    rng = np.random.default_rng(seed)
    problems = make_problems(n_eval + n_train, levels, operands, rng, carries=carries)
    return to_frame(problems[n_eval:], "train", style), to_frame(problems[:n_eval], "eval", style)


def builtin_splits(n_train: int, n_eval: int, levels: list[int], operands: int, seed: int,
                   style: str = "trace") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Disjoint train and eval problems, the same for the same seed."""
    rng = np.random.default_rng(seed)
    eval_p = make_problems(n_eval, levels, operands, rng)
    train_p = make_problems(n_train, levels, operands, rng, exclude={tuple(x) for _, x in eval_p})
    return to_frame(train_p, "train", style), to_frame(eval_p, "eval", style)


def trace_corpus(n: int, levels: list[int], operands: int, seed: int,
                 exclude: set[str] | None = None, retry=None) -> list[tuple[str, str, bool]]:
    """(prompt, completion, ends_with_eos) triples to pre-train the built-in base policy; eval
    prompts excluded. `retry` (BasePolicyParams) asks for self-correcting multi-attempt traces;
    without it each completion is one correct attempt then EOS (the single-attempt task).

    A retry trace is cut at a length drawn uniformly up to `retry.trace_tokens` characters (one
    token each), so every position up to the sampling cap is trained at about half the cost of
    full-length traces."""
    rng = np.random.default_rng(seed + 7919)
    out = []
    # Small levels hold few distinct problems (one digit, two operands: 100); draw at most 90%.
    n = min(n, int(0.9 * capacity(levels, operands)))
    for _, xs in make_problems(n, levels, operands, rng):
        p = prompt_text(xs, "trace")
        if exclude and p in exclude:
            continue
        if retry is None:
            out.append((p, column_trace(xs), True))
            continue
        first = len(column_trace(xs))
        cut = int(rng.integers(first, max(first, retry.trace_tokens) + 1))
        out.append((p, *retry_completion(xs, rng, retry.slip_carry, retry.slip_plain,
                                         retry.continue_rate, cut)))
    return out
