"""Synthetic rollout tables whose E[T] is known exactly (test helper, not a test module).

Each prompt has a difficulty type. An attempt of a prompt of type (q, floor, mean, ...) either
heads for the right answer (prob q), which then appears at token floor + X with X geometric on
{0, 1, ...} of mean `mean`, or heads for a wrong answer and stops (EOS) at wrong_floor + Y.
Anything that would pass the cap is cut there: n_tokens = max_tokens, stop_reason 'length', and a
correct answer after the cap is never seen. Type 'never' has q = 0 (an unsolvable prompt).

Because every quantity is a capped geometric, the pooled target
E_x[E[consumed|x]] / E_x[P(hit|x)] is computed in closed form by `true_E_T`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from relbudget.core.schemas import ROLLOUTS, normalise_rollouts, validate

# name: (weight, q, floor, mean extra tokens, wrong_floor, wrong mean extra tokens)
TYPES = {
    "easy": (0.35, 0.95, 8, 8.0, 10, 10.0),
    "medium": (0.30, 0.80, 16, 16.0, 20, 20.0),
    "hard": (0.20, 0.50, 24, 40.0, 30, 40.0),
    "never": (0.15, 0.00, 0, 1.0, 20, 40.0),
}
CAP = 128


def _geom0(rng: np.random.Generator, mean: float, size: int) -> np.ndarray:
    """Geometric on {0, 1, ...} with the given mean."""
    return rng.geometric(1.0 / (1.0 + mean), size=size) - 1


def _capped_mean(floor: int, mean: float, cap: int) -> float:
    """E[min(floor + X, cap)] for X geometric on {0, 1, ...} with the given mean."""
    s = 1.0 / (1.0 + mean)
    k = np.arange(0, max(cap - floor, -1) + 1)
    pk = s * (1.0 - s) ** k
    return float(np.sum(pk * (floor + k)) + (1.0 - pk.sum()) * cap)


def true_E_T(types: dict = TYPES, cap: int = CAP) -> float:
    """Exact pooled target E_x[E[consumed|x]] / E_x[P(hit|x)] for prompts drawn from `types`."""
    tokens = hits = 0.0
    for w, q, f, m, wf, wm in types.values():
        p_in_cap = 1.0 - (1.0 - 1.0 / (1.0 + m)) ** (cap - f + 1)  # P(floor + X <= cap)
        tokens += w * (q * _capped_mean(f, m, cap) + (1 - q) * _capped_mean(wf, wm, cap))
        hits += w * q * p_in_cap
    return tokens / hits


def make_rollouts(n_prompts: int, attempts: int, cap: int = CAP, seed: int = 0,
                  types: dict = TYPES, early_exit: bool = True, policy: str = "synth",
                  stratified: bool = False, validated: bool = True) -> pd.DataFrame:
    """A rollout table (its columns: docs/definitions.md) with a `type` column naming each prompt's
    difficulty.

    stratified=False draws each prompt's type at random (i.i.d. prompts: the model the bootstrap
    over prompts assumes); stratified=True gives the types in their exact shares, which removes the
    prompt-mix sampling error and leaves the attempt-level error of the estimator.
    early_exit=False keeps generating after the first correct answer (to EOS or the cap), which
    must not change E[T]: consumed counts tokens up to the first correct answer only.
    """
    rng = np.random.default_rng(seed)
    names = list(types)
    w = np.array([types[n][0] for n in names])
    if stratified:
        counts = np.floor(w / w.sum() * n_prompts + 0.5).astype(int)
        counts[0] += n_prompts - counts.sum()
        ptype = np.repeat(np.arange(len(names)), counts)
    else:
        ptype = rng.choice(len(names), size=n_prompts, p=w / w.sum())
    t = np.repeat(ptype, attempts)
    n = len(t)
    par = np.array([types[nm][1:] for nm in names], dtype=float)[t]  # q, f, m, wf, wm per attempt
    q, f, m, wf, wm = par.T

    right = rng.random(n) < q
    when = f.astype(np.int64) + rng.geometric(1.0 / (1.0 + m)) - 1  # token of the correct answer
    wrong_end = wf.astype(np.int64) + rng.geometric(1.0 / (1.0 + wm)) - 1
    hit = right & (when <= cap)

    if early_exit:
        hit_end = when
    else:
        hit_end = when + _geom0(rng, 10.0, n)
    end = np.where(hit, hit_end, np.where(right, cap, wrong_end))
    n_tokens = np.minimum(end, cap)
    stop = np.where(end >= cap, "length", "eos")
    if early_exit:
        stop = np.where(hit, "first_correct", stop)
    fct = pd.array(np.where(hit, when, 0), dtype="Int64")
    fct[~hit] = pd.NA

    df = pd.DataFrame({
        "prompt_id": np.repeat([f"p{i:05d}" for i in range(n_prompts)], attempts),
        "attempt": np.tile(np.arange(attempts), n_prompts),
        "n_tokens": n_tokens.astype(np.int64),
        "max_tokens": np.full(n, cap, dtype=np.int64),
        "first_correct_token": fct,
        "stop_reason": stop,
        "final_correct": hit,
        "policy": policy,
        "seed": seed,
        "type": np.asarray(names)[t],
    })
    df = normalise_rollouts(df)
    return validate(df, ROLLOUTS) if validated else df


def tiny_table(rows: list[tuple], cap: int) -> pd.DataFrame:
    """A hand-made table from (prompt_id, n_tokens, first_correct_token or None) rows."""
    recs = []
    seen: dict[str, int] = {}
    for pid, n_tok, fct in rows:
        a = seen.get(pid, 0)
        seen[pid] = a + 1
        if fct is not None and fct == n_tok:
            stop = "first_correct"
        elif n_tok == cap:
            stop = "length"
        else:
            stop = "eos"
        recs.append({"prompt_id": pid, "attempt": a, "n_tokens": n_tok, "max_tokens": cap,
                     "first_correct_token": fct, "stop_reason": stop,
                     "final_correct": fct is not None, "policy": "hand", "seed": 0})
    return validate(normalise_rollouts(pd.DataFrame(recs)), ROLLOUTS)


# The hand-checked table of the exact estimator tests, at cap 10:
# (prompt_id, n_tokens, first_correct_token)
#   a: hit at 4 (early exit), miss cut at the cap, hit at 3 then more text to 6, miss EOS at 2
#   b: never correct (unsolved)
#   c: three hits, one exactly at the cap
#   d: K=2 < G=3 (the plug-in branch of P_inf)
# per prompt consumed_sum / hits = a 19/2, b 17/0, c 16/3, d 10/1; pooled E_T = 62/6 = 31/3
HAND_ROWS = [
    ("a", 4, 4), ("a", 10, None), ("a", 6, 3), ("a", 2, None),
    ("b", 10, None), ("b", 7, None),
    ("c", 5, 5), ("c", 1, 1), ("c", 10, 10),
    ("d", 2, 2), ("d", 8, None),
]


def eval_table(rows) -> pd.DataFrame:
    """A rollout table at cap 20 from (prompt_id, attempt, n_tokens, first_correct_token,
    stop_reason) rows."""
    df = pd.DataFrame(rows, columns=["prompt_id", "attempt", "n_tokens", "first_correct_token",
                                     "stop_reason"])
    df["max_tokens"] = 20
    df["final_correct"] = df["first_correct_token"].notna()
    df["policy"], df["seed"] = "p", 0
    return validate(normalise_rollouts(df), ROLLOUTS)


# the hand-checked evaluation table of test_sweep_eval.py and test_exact_evaluation.py
EVAL = eval_table([
    ("a", 0, 8, 8, "eos"), ("a", 1, 20, None, "length"), ("a", 2, 12, 5, "eos"), ("a", 3, 6, None, "eos"),
    ("b", 0, 20, 15, "length"), ("b", 1, 9, None, "eos"), ("b", 2, 20, None, "length"), ("b", 3, 4, 4, "eos"),
])
