"""The built-in task: seeded multi-digit addition whose solution needs a column-sum trace.

Why a trace: with a bare answer, T (tokens to the first correct answer) is near-geometric, so no
deficient regime exists. Writing column sums with carries before `A:<answer>` gives T a floor,
as chain-of-thought does in real models:

    prompt      347+85=
    completion  7+5=12|4+8+1=13|3+1=4|A:432<eos>

Levels are digits per operand. `style="natural"` poses the same problems in English for chat
models (`Calculate 64 + 97.`); their answers are read with the `prose` answer format, which finds
the number after `=`, `is`, `Answer:` and the like (see verify.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Measured on SmolLM2-135M-Instruct (chat template on, 16 problems x 4 attempts, T=0.7, 96 tokens):
# correct answers 20/64 with this wording, 15/64 with "What is ...?", 12/64 when also asked to
# write "Answer: N" (it rarely does; the request only derails it), 0/48 with a column-by-column
# instruction.
NATURAL_TEMPLATE = "Calculate {expr}."
ANSWER_FORMAT = {"trace": "int", "natural": "prose"}


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


def make_problems(n: int, levels: list[int], operands: int, rng: np.random.Generator,
                  exclude: set[tuple[int, ...]] | None = None) -> list[tuple[int, list[int]]]:
    """n distinct problems (level, operands); a level's operands have exactly `level` digits."""
    seen = set(exclude or ())
    out: list[tuple[int, list[int]]] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct problems from levels {levels}; "
                             "lower n_train/n_eval or add levels")
        level = int(rng.choice(levels))
        lo = 0 if level == 1 else 10 ** (level - 1)
        xs = [int(v) for v in rng.integers(lo, 10**level, size=operands)]
        key = tuple(xs)
        if key in seen:
            continue
        seen.add(key)
        out.append((level, xs))
    return out


def capacity(levels: list[int], operands: int) -> int:
    """How many distinct problems the levels hold."""
    return sum((10**lvl - (0 if lvl == 1 else 10 ** (lvl - 1))) ** operands for lvl in set(levels))


def prompt_text(xs: list[int], style: str) -> str:
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


def builtin_splits(n_train: int, n_eval: int, levels: list[int], operands: int, seed: int,
                   style: str = "trace") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Disjoint train and eval problems, the same for the same seed."""
    rng = np.random.default_rng(seed)
    eval_p = make_problems(n_eval, levels, operands, rng)
    train_p = make_problems(n_train, levels, operands, rng, exclude={tuple(x) for _, x in eval_p})
    return to_frame(train_p, "train", style), to_frame(eval_p, "eval", style)


def trace_corpus(n: int, levels: list[int], operands: int, seed: int,
                 exclude: set[str] | None = None) -> list[tuple[str, str]]:
    """(prompt, completion) pairs to pre-train the built-in base policy; eval prompts excluded."""
    rng = np.random.default_rng(seed + 7919)
    pairs = []
    # Small levels hold few distinct problems (one digit, two operands: 100); draw at most 90%.
    n = min(n, int(0.9 * capacity(levels, operands)))
    for _, xs in make_problems(n, levels, operands, rng):
        p = prompt_text(xs, "trace")
        if exclude and p in exclude:
            continue
        pairs.append((p, column_trace(xs)))
    return pairs
