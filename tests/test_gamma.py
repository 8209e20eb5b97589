"""The Gamma(K, rate) model of T: restart-semantics T from a rollout table, the censored fit, its
goodness of fit and plot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from relbudget.measure import estimators as est
from relbudget.report.plots import gamma_fit
from relbudget.core.schemas import ROLLOUTS, normalise_rollouts, validate
from tests.synth import tiny_table

BIG_CAP = 100_000  # max_tokens of the synthetic tables: no attempt is cut


def gamma_table(K: float, mean: float, n_prompts: int, budget: float, seed: int):
    """Rollouts whose restart-semantics T are whole-token Gamma(K, K / mean) draws.

    Per prompt, T's are drawn until their sum passes `budget`; each T is split into 0-2 misses of
    random lengths and a hit (sometimes followed by a few tokens after the answer); the T that
    passes the budget is cut there and left as trailing misses (right-censored). Returns the
    table, the observed T's (in order) and the censored values.
    """
    rng = np.random.default_rng(seed)
    rows, observed, censored = [], [], []

    def add(pid, n, fct=None, extra=0):
        stop = "first_correct" if fct is not None and extra == 0 else "eos"
        rows.append((pid, counter[pid], n + extra, fct, stop))
        counter[pid] += 1

    counter: dict[str, int] = {}
    for i in range(n_prompts):
        pid = f"p{i:05d}"
        counter[pid] = 0
        used = 0
        while True:
            T = int(np.ceil(rng.gamma(K, mean / K)))
            m = int(rng.integers(0, 3)) if T > 2 else 0
            if used + T > budget:
                left = int(budget - used)
                if left > 0:
                    cut = int(rng.integers(1, left + 1))
                    for piece in (cut, left - cut):
                        if piece > 0:
                            add(pid, piece)
                    censored.append(left)
                break
            cuts = np.sort(rng.choice(np.arange(1, T), size=m, replace=False)) if m else []
            pieces = np.diff(np.concatenate([[0], cuts, [T]])).astype(int)
            for piece in pieces[:-1]:
                add(pid, int(piece))
            extra = int(rng.integers(0, 4))
            add(pid, int(pieces[-1]), fct=int(pieces[-1]), extra=extra)
            observed.append(T)
            used += T
    df = pd.DataFrame(rows, columns=["prompt_id", "attempt", "n_tokens", "first_correct_token",
                                     "stop_reason"])
    df["max_tokens"] = BIG_CAP
    df["final_correct"] = df["first_correct_token"].notna()
    df["policy"], df["seed"] = "gamma", seed
    df = validate(normalise_rollouts(df), ROLLOUTS)
    return df, np.array(observed), np.array(censored)


def test_restart_T_on_hand_made_table():
    # a: hit at 4 | miss 10, hit at 3 | trailing miss 2;  b: misses 10 + 7 (unsolved)
    # c: hits at 5, 1, 10;  d: hit at 2 | trailing miss 8
    rows = [("a", 4, 4), ("a", 10, None), ("a", 6, 3), ("a", 2, None), ("b", 10, None),
            ("b", 7, None), ("c", 5, 5), ("c", 1, 1), ("c", 10, 10), ("d", 2, 2), ("d", 8, None)]
    df = tiny_table(rows, 10)
    observed, censored = est.restart_T(df)
    assert observed.tolist() == [4, 13, 5, 1, 10, 2]
    assert censored.tolist() == [2, 17, 8]
    # attempt order, not row order, decides the walk
    shuffled = df.sample(frac=1.0, random_state=0)
    o2, c2 = est.restart_T(shuffled)
    assert o2.tolist() == observed.tolist() and c2.tolist() == censored.tolist()
    # a zero-token trailing miss carries no information and is dropped
    o3, c3 = est.restart_T(tiny_table([("e", 3, 3), ("e", 0, None)], 10))
    assert o3.tolist() == [3] and c3.tolist() == []


def test_synthetic_table_has_the_drawn_T():
    df, observed, censored = gamma_table(2.0, 30.0, 40, budget=100, seed=7)
    o, c = est.restart_T(df)
    assert o.tolist() == observed.tolist() and sorted(c.tolist()) == sorted(censored.tolist())
    assert len(c) > 0


@pytest.mark.parametrize("K", [3.0, 1.5])
def test_fit_recovers_K_with_censoring(K):
    mean = 60.0
    df, observed, censored = gamma_table(K, mean, 1500, budget=4 * mean, seed=11)
    assert len(censored) > 0.1 * len(observed)  # censoring is real here
    fit = est.fit_gamma(df)
    assert fit["K"] == pytest.approx(K, rel=0.10)
    assert fit["mean"] == pytest.approx(mean, rel=0.05)
    assert fit["rate"] == pytest.approx(fit["K"] / fit["mean"])
    assert (fit["n_observed"], fit["n_censored"]) == (len(observed), len(censored))
    assert fit["sup_distance"] < 0.03
    assert fit["expon_sup_distance"] > fit["sup_distance"]
    # the censored Exponential MLE mean is tokens per correct solution, the pooled E_T
    assert fit["expon_mean"] == pytest.approx(est.pooled_E_T(df), rel=1e-3)


def test_no_hit_is_a_clear_error():
    df = tiny_table([("a", 5, None), ("b", 3, None)], 10)
    with pytest.raises(ValueError, match="no correct answer"):
        est.fit_gamma(df)


def test_gamma_plot(tmp_path):
    df, _, _ = gamma_table(3.0, 40.0, 60, budget=160, seed=2)
    fit = est.fit_gamma(df)
    gamma_fit(df, tmp_path / "gamma_fit.png", fit)
    gamma_fit(df, tmp_path / "again.png")
    assert (tmp_path / "gamma_fit.png").stat().st_size > 0 and (tmp_path / "again.png").exists()
