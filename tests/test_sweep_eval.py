"""Evaluation metrics on hand-made tables, and the xi x seed sweep at tiny sizes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pandas as pd
import pytest

from relbudget.evaluation import censor, mean_length_at, metrics_at, pass_at_k, tokens_after_correct
from relbudget.params import load_params
from relbudget.schemas import ROLLOUTS, normalise_rollouts, validate
from stages import base_policy, prepare, sample_t
from stages._cli import execute


def table(rows):
    df = pd.DataFrame(rows, columns=["prompt_id", "attempt", "n_tokens", "first_correct_token",
                                     "stop_reason"])
    df["max_tokens"] = 20
    df["final_correct"] = df["first_correct_token"].notna()
    df["policy"], df["seed"] = "p", 0
    return validate(normalise_rollouts(df), ROLLOUTS)


EVAL = table([
    ("a", 0, 8, 8, "eos"), ("a", 1, 20, None, "length"), ("a", 2, 12, 5, "eos"), ("a", 3, 6, None, "eos"),
    ("b", 0, 20, 15, "length"), ("b", 1, 9, None, "eos"), ("b", 2, 20, None, "length"), ("b", 3, 4, 4, "eos"),
])


@pytest.mark.parametrize("H,k", [(5, 1), (10, 2), (20, 3), (20, 4), (8, 2)])
def test_pass_at_k_matches_enumeration(H, k):
    expected = []
    for _, g in EVAL.groupby("prompt_id"):
        hits = (g["first_correct_token"].fillna(10**9) <= H).tolist()
        subsets = list(itertools.combinations(hits, k))
        expected.append(sum(any(s) for s in subsets) / len(subsets))
    assert pass_at_k(EVAL, H, k) == pytest.approx(sum(expected) / len(expected))


def test_metrics_at_a_shorter_horizon_are_a_cut_of_the_cap():
    m = metrics_at(EVAL, 10, [1, 2])
    assert m["accuracy"] == pytest.approx(3 / 8)  # hits at 8, 5, 4
    assert mean_length_at(EVAL, 10) == pytest.approx((8 + 10 + 10 + 6 + 10 + 9 + 10 + 4) / 8)
    c = censor(EVAL, 10)
    validate(c, ROLLOUTS)  # a censored table is still a valid rollout table
    assert m["E_T"] == pytest.approx((8 + 10 + 5 + 6 + 10 + 9 + 10 + 4) / 3)
    assert tokens_after_correct(EVAL, 10) == pytest.approx(((8 - 8) + (10 - 5) + (4 - 4)) / 3)
    with pytest.raises(ValueError, match="pass@5"):
        pass_at_k(EVAL, 10, 5)


@pytest.mark.slow
def test_sweep_over_xi_and_seeds(project: Path):
    from relbudget import sweep

    params = load_params("params.yaml")
    for name, mod in (("prepare", prepare), ("base_policy", base_policy), ("sample_t", sample_t)):
        execute(name, mod.run, params, mod.SECTIONS)
    sweep.main(["--xi", "0.5", "2", "--seeds", "0", "1", "--token-budget", "300"])
    out = Path("data/sweep")
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["regime"] for r in metrics["regimes"]] == ["xi_0_5", "xi_2"]
    assert all(r["n_seeds"] == 2 for r in metrics["regimes"])
    assert all("gain_per_100k_err" in r for r in metrics["regimes"])
    assert (out / "efficiency.png").read_bytes()[:4] == b"\x89PNG"
    assert "| xi_2 |" in (out / "report.md").read_text()
    for seed in (0, 1):
        assert (out / f"seed{seed}/report/report.md").exists()
