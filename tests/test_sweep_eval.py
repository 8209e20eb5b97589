"""Evaluation metrics on hand-made tables: pass@k, censoring, first-answer accuracy beside
accuracy within H, answers per completion. (The xi x seed sweep is a DVC matrix stage:
tests/test_pipeline_dvc.py.)"""

from __future__ import annotations

import itertools

import pandas as pd
import pytest

from relbudget.measure.evaluation import censor, mean_length_at, metrics_at, pass_at_k, tokens_after_correct
from relbudget.train.grpo import step_stats
from relbudget.measure.models import char_tokenizer
from relbudget.measure.sampling.common import Generation, Request, score
from relbudget.core.schemas import ROLLOUTS, normalise_rollouts, validate
from tests.synth import EVAL


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


# ---------------------------------------------------------------- first answer vs within H


def score_text(text: str, attempt: int = 0, eos: bool = True, early: bool = False, cap: int = 64):
    """Score a completion of 3+4 written one character per token (the char tokenizer), EOS last."""
    tok = char_tokenizer()
    ids = tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])
    ended = "first_correct" if early else ("eos" if eos else "length")
    gen = Generation(Request("p", "3+4=", "7", "int"), attempt, ids, ended, 0)
    return score(tok, gen, cap, policy="t")


@pytest.mark.parametrize("text,first_ok,n_answers,fct", [
    ("3+4=8|A:8||3+4=7|A:7", False, 2, 21),  # first answer wrong, a later one right (EOS: 21)
    ("3+4=7|A:7||3+4=8|A:8", True, 2, 10),   # first answer right ('|' confirms it: token 10)
    ("3+4=8|A:8||3+4=9|A:9", False, 2, None),
    ("3+4=7|", False, 0, None),              # no answer at all
])
def test_first_answer_correct_on_multi_answer_completions(text, first_ok, n_answers, fct):
    row = score_text(text)
    assert row["first_answer_correct"] is first_ok
    assert row["n_answers"] == n_answers
    assert row["first_correct_token"] == fct


def test_first_answer_accuracy_beside_accuracy_within_H():
    rows = [score_text("3+4=8|A:8||3+4=7|A:7", 0),  # within H=21, first answer wrong
            score_text("3+4=7|A:7||3+4=8|A:8", 1),  # first answer right at token 10
            score_text("3+4=7|A:7|", 2, eos=False, early=True),  # early exit at the '|' (10)
            score_text("3+4=8|A:8||3+4=9|A:9", 3)]
    df = validate(normalise_rollouts(pd.DataFrame(rows)), ROLLOUTS)  # extra columns are allowed
    at21, at10, at9 = (metrics_at(df, H, [1]) for H in (21, 10, 9))
    assert at21["accuracy"] == pytest.approx(3 / 4)
    assert at21["first_answer_accuracy"] == pytest.approx(2 / 4)
    assert at10["accuracy"] == at10["first_answer_accuracy"] == pytest.approx(2 / 4)
    assert at9["accuracy"] == at9["first_answer_accuracy"] == 0.0


def test_training_history_counts_attempts_per_completion():
    rows = [score_text(t) for t in ("3+4=8|A:8||3+4=7|A:7", "3+4=7|A:7", "3+4=7|")]
    stats = step_stats(rows, [1.0, 1.0, 0.0], H=64, G=3)
    assert stats["attempts_per_completion"] == pytest.approx((2 + 1 + 0) / 3)
    assert stats["first_answer_correct_rate"] == pytest.approx(1 / 3)
