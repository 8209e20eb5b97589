"""Synthetic rollout tables whose E[T] is known exactly, and hand-made inputs of the report stage
(test helper, not a test module).

Each prompt has a difficulty type. An attempt of a prompt of type (q, floor, mean, ...) either
heads for the right answer (prob q), which then appears at token floor + X with X geometric on
{0, 1, ...} of mean `mean`, or heads for a wrong answer and stops (EOS) at wrong_floor + Y.
Anything that would pass the cap is cut there: n_tokens = max_tokens, stop_reason 'length', and a
correct answer after the cap is never seen. Type 'never' has q = 0 (an unsolvable prompt).

Because every quantity is a capped geometric, the pooled target
E_x[E[consumed|x]] / E_x[P(hit|x)] is computed in closed form by `true_E_T`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from relbudget.core.params import cell_name
from relbudget.core.schemas import ROLLOUTS, normalise_rollouts, validate, write_table

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


# ------------------------------------------------ a report stage's inputs, written by hand

# the base policy's evaluation (evaluate.json) the report's hand-made inputs carry
REPORT_BASE = {"at": {"H_eval": {"accuracy": 0.77, "E_T": 40.0, "first_answer_accuracy": 0.6},
               "H_balanced": {"accuracy": 0.7}}}


def history(n: int = 12, xi0: float = 1.0) -> pd.DataFrame:
    """A training history with the HISTORY schema's columns."""
    tokens = [3000 * (i + 1) for i in range(n)]
    return pd.DataFrame({
        "step": range(1, n + 1), "generated_tokens": [3000] * n, "cum_generated_tokens": tokens,
        "reward_mean": [0.5] * n, "frac_informative": [0.5] * n, "frac_reward_zero_std": [0.5] * n,
        "clipped_ratio": [0.1] * n, "mean_length": [20.0] * n, "tokens_after_correct": [0.0] * n,
        "attempts_per_completion": [1.5] * n, "E_T": [40.0] * n,
        "xi_t": [xi0 + 0.01 * i for i in range(n)], "H": [45] * n})


def cell_eval(xi: float, seed: int, acc: float) -> dict:
    return {"xi": xi, "seed": seed, "H": max(1, round(45 * xi)),
            "at": {"H_eval": {"accuracy": acc, "E_T": 38.0 if acc > 0.2 else None,
                              "first_answer_accuracy": acc - 0.1}}}


def write_report_inputs(params) -> None:
    """Hand-made outputs of the xi, evaluate and sweep stages for the tiny params."""
    p = params.paths
    Path(p.xi).mkdir(parents=True, exist_ok=True)
    summary = {"E_T": 45.0312, "E_T_ci": [42.1, 48.1], "unsolved_share": 0.0, "n_prompts": 8,
               "n_attempts": 32, "max_tokens": 24, "gamma": None}
    # the predicted curve on the sweep's grid, as the xi stage writes it (relbudget.measure.predict)
    curve = [{"xi": x, "H": round(45 * x), "p_informative": 0.5, "tokens": 20.0,
              "predicted": 1.0 / (1 + abs(x - 1)), "static": 1.0 / (1 + x)}
             for x in params.sweep.xi]
    summary["predicted"] = {"E_T": 45.0312, "best_xi": 1.0, "static_best_xi": min(params.sweep.xi),
                            "prediction_tokens": 640, "curve": curve}
    Path(p.xi_summary).write_text(json.dumps(summary))
    budgets = {name: {"target_xi": t, "H": round(45 * t), "xi": round(45 * t) / 45.0312,
                      "E_T": 45.0312, "regime": "balanced"}
               for name, t in params.regimes.items()}
    Path(p.budgets).write_text(yaml.safe_dump(budgets))
    xi = np.linspace(0.1, 4, 20)
    pd.DataFrame({"xi": xi, "p": 1 - np.exp(-xi), "reward_var": np.exp(-xi) * (1 - np.exp(-xi)),
                  "p_informative": 0.5 + 0 * xi}).to_parquet(p.curves)
    Path(p.eval).mkdir(parents=True, exist_ok=True)
    Path(p.eval_json("base")).write_text(json.dumps(REPORT_BASE))
    write_table(make_rollouts(8, 4, cap=64).drop(columns="type"), ROLLOUTS, p.eval_rollouts("base"))
    for _, x, s in params.sweep.cells():
        folder = Path(p.cell_eval(cell_name(x, s))).parent
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "eval.json").write_text(json.dumps(cell_eval(x, s, 0.8 + 0.01 * x)))
        history(xi0=x).to_parquet(p.cell_history(folder.name))
    if hasattr(params, "arms"):  # the budget arms' runs (stages.arm, stages.fixed_best)
        from relbudget.core.params import arm_name

        for arm in ["fixed_best", *params.arms.arms]:
            for seed in params.sweep.seeds:
                name = arm_name(arm, seed)
                Path(p.arm_json(name)).parent.mkdir(parents=True, exist_ok=True)
                Path(p.arm_json(name)).write_text(json.dumps(
                    {"arm": arm, "seed": seed, "target_xi": 1.0, "H0": 45,
                     "at": {"H_eval": {"accuracy": 0.8}}}))
                history().assign(acc_H_eval=0.78).to_parquet(p.arm_history(name))
