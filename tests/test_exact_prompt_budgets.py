"""Exact values of the per-prompt horizons and the xi-band filter (relbudget.train.prompt_budgets)
on a tiny hand-made rollout table, no model: H_x with and without shrinkage, its clamp exactly at
h_min / h_max and one past them, the unsolved and uncovered prompts, the band's ends exactly, just
inside and just outside, and both refusals word for word.

The base rollouts (cap 10), per prompt: consumed_sum / hits = E[T|x]
  a: 4 + 10 + 3 + 2 = 19 / 2 = 9.5      b: 10 + 7 = 17 / 0 (unsolved, E[T|x] = inf)
  c: 5 + 1 + 10 = 16 / 3 = 16/3         d: 2 + 8 = 10 / 1 = 10
pooled E_T = 62 / 6 = 31/3. The training prompts are d, e, a, b, c: e is not in the rollouts.
"""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from relbudget.core.params import PerPromptParams, PromptFilterParams
from relbudget.train.prompt_budgets import filter_prompts, per_prompt_caps
from tests.synth import HAND_ROWS, tiny_table

CAP = 10
ROWS = HAND_ROWS
E_T = 31 / 3


@pytest.fixture
def rollouts() -> pd.DataFrame:
    return tiny_table(ROWS, CAP)


@pytest.fixture
def prompts() -> pd.DataFrame:
    # a non-default index: the kept rows keep theirs
    return pd.DataFrame({"prompt_id": list("deabc"), "prompt": [f"q {x}" for x in "deabc"]},
                        index=[10, 11, 12, 13, 14])


def _pp(**kw) -> PerPromptParams:
    return PerPromptParams(**{"target_xi": 2.0, "shrink": 1.0, "unsolved": "h_max", "h_min": 1,
                              "h_max": 100, **kw})


# ---------------------------------------------------------------- per_prompt_caps


def test_per_prompt_caps_shrunk_toward_the_pooled_E_T(rollouts, prompts, caplog):
    # m = 1 pseudo-hit at E_T = 31/3, H_x = rint(2 * (consumed_sum + 31/3) / (hits + 1)):
    #   d: 2 * (10 + 31/3) / 2 = 20.33 -> 20     e: not covered, 2 * 31/3 = 20.67 -> 21
    #   a: 2 * (19 + 31/3) / 3 = 19.56 -> 20     b: unsolved -> h_max = 100
    #   c: 2 * (16 + 31/3) / 4 = 13.17 -> 13
    with caplog.at_level(logging.INFO, logger="relbudget.train.prompt_budgets"):
        kept, summary = per_prompt_caps(rollouts, prompts, _pp())
    assert kept["H_x"].tolist() == [20, 21, 20, 100, 13]
    assert kept.index.tolist() == [10, 11, 12, 13, 14]
    assert kept["prompt"].tolist() == prompts["prompt"].tolist()
    assert "H_x" not in prompts  # a copy: the caller's table is left alone
    # sorted 13, 20, 20, 21, 100; linear quantiles: q10 at 0.4 -> 15.8, q90 at 3.6 -> 68.4
    assert summary == {"E_T": pytest.approx(E_T), "n_prompts": 5, "n_kept": 5, "n_unsolved": 1,
                       "n_uncovered": 1, "H_x_mean": pytest.approx(174 / 5),
                       "H_x_q00": 13, "H_x_q10": 15, "H_x_q25": 20, "H_x_q50": 20,
                       "H_x_q75": 21, "H_x_q90": 68, "H_x_q100": 100}
    assert [r.getMessage() for r in caplog.records] == [f"per-prompt horizons: {summary}"]


def test_per_prompt_caps_without_shrinkage_and_the_clamp_at_its_ends(rollouts, prompts):
    # m = 0: H_x = rint(E[T|x]); d 10, e (uncovered) rint(31/3) = 10, a rint(9.5) = 10, c 16/3 -> 5
    drop = dict(target_xi=1.0, shrink=0.0, unsolved="drop")
    kept, summary = per_prompt_caps(rollouts, prompts, _pp(h_min=5, h_max=10, **drop))
    assert kept["prompt_id"].tolist() == ["d", "e", "a", "c"]  # b dropped, e kept at E_T
    assert kept["H_x"].tolist() == [10, 10, 10, 5]  # exactly at h_max and at h_min
    assert (summary["n_kept"], summary["n_unsolved"], summary["n_uncovered"]) == (4, 1, 1)
    assert summary["H_x_mean"] == pytest.approx(35 / 4)
    # one past each end: 10 -> 9 and 5 -> 6
    kept, _ = per_prompt_caps(rollouts, prompts, _pp(h_min=6, h_max=9, **drop))
    assert kept["H_x"].tolist() == [9, 9, 9, 6]
    # one inside each end: unchanged
    kept, _ = per_prompt_caps(rollouts, prompts, _pp(h_min=4, h_max=11, **drop))
    assert kept["H_x"].tolist() == [10, 10, 10, 5]
    # an unsolved prompt kept at h_max (here 11, above every other H_x) when not dropped
    kept, summary = per_prompt_caps(rollouts, prompts, _pp(h_min=4, h_max=11, target_xi=1.0,
                                                           shrink=0.0))
    assert kept["H_x"].tolist() == [10, 10, 10, 11, 5]
    assert summary["n_kept"] == 5 and summary["H_x_q100"] == 11
    # d has exactly one hit: with m = 0 it reads its own E[T|x] (2 x 10 = 20), not the pooled
    # one (2 x 31/3 -> 21); e, uncovered, does: 21; a 2 x 9.5 = 19; c 2 x 16/3 -> 11
    kept, _ = per_prompt_caps(rollouts, prompts, _pp(target_xi=2.0, shrink=0.0, unsolved="drop"))
    assert kept["H_x"].tolist() == [20, 21, 19, 11] and kept["H_x"].dtype == "int64"


def test_per_prompt_caps_refusals(rollouts):
    never = tiny_table([("a", 10, None), ("b", 3, None)], CAP)
    with pytest.raises(ValueError) as err:
        per_prompt_caps(never, pd.DataFrame({"prompt_id": ["a"]}), _pp())
    assert str(err.value) == ("per_prompt budgets: no correct attempt in the base rollouts, so "
                              "E[T] is infinite and no H_x can be derived")
    with pytest.raises(ValueError) as err:
        per_prompt_caps(rollouts, pd.DataFrame({"prompt_id": ["b", "b"]}), _pp(unsolved="drop"))
    assert str(err.value) == ("per_prompt budgets: every one of the 2 training prompts is unsolved "
                              "by the base policy and train.per_prompt.unsolved is 'drop'")


# ---------------------------------------------------------------- filter_prompts


def _band(lo, hi, H=None) -> PromptFilterParams:
    return PromptFilterParams(xi_band=(lo, hi), H=H)


def test_filter_keeps_the_band_ends_exactly(rollouts, prompts, caplog):
    # xi_x = 19 / E[T|x]: d 1.9, e uncovered, a 2.0, b 0 (unsolved), c 3.5625
    with caplog.at_level(logging.INFO, logger="relbudget.train.prompt_budgets"):
        kept, counts = filter_prompts(rollouts, prompts, _band(1.9, 2.0), 19)
    assert kept["prompt_id"].tolist() == ["d", "a"] and kept.index.tolist() == [10, 12]
    assert list(kept.columns) == ["prompt_id", "prompt"]
    assert counts == {"filter_H": 19, "filter_lo": 1.9, "filter_hi": 2.0, "n_prompts": 5,
                      "n_kept": 2, "n_uncovered": 1}
    assert [r.getMessage() for r in caplog.records] == [
        "prompt filter: kept 2 of 5 prompts (xi_x in [1.9, 2] at H=19)"]
    # just inside either end drops the prompt at that end
    assert filter_prompts(rollouts, prompts, _band(1.9 + 1e-9, 2.0), 19)[0]["prompt_id"].tolist() \
        == ["a"]
    assert filter_prompts(rollouts, prompts, _band(1.9, 2.0 - 1e-9), 19)[0]["prompt_id"].tolist() \
        == ["d"]
    # the band's own H wins over the one passed
    kept, counts = filter_prompts(rollouts, prompts, _band(1.9, 2.0, H=19), 5)
    assert kept["prompt_id"].tolist() == ["d", "a"] and counts["filter_H"] == 19


def test_filter_keeps_an_unsolved_prompt_at_xi_0(rollouts, prompts):
    # H = 5: d 0.5, a 0.526, b 0, c 0.9375
    kept, counts = filter_prompts(rollouts, prompts, _band(0.0, 0.5), 5)
    assert kept["prompt_id"].tolist() == ["d", "b"]
    assert counts == {"filter_H": 5, "filter_lo": 0.0, "filter_hi": 0.5, "n_prompts": 5,
                      "n_kept": 2, "n_uncovered": 1}


def test_filter_refusals_word_for_word(rollouts, prompts):
    with pytest.raises(ValueError) as err:
        filter_prompts(rollouts, prompts, _band(50, 60), 19)
    assert str(err.value) == (
        "train.prompt_filter kept no prompt: none of the 5 training prompts has xi_x = H / E[T|x] "
        "in [50, 60] at H = 19 (1 not in the base rollouts; xi_x of the others ranges 0 .. 3.56); "
        "widen the band or change H")
    with pytest.raises(ValueError) as err:
        filter_prompts(rollouts, pd.DataFrame({"prompt_id": ["e", "f"]}), _band(0, 1e9), 19)
    assert str(err.value) == (
        "train.prompt_filter kept no prompt: none of the 2 training prompts has xi_x = H / E[T|x] "
        "in [0, 1e+09] at H = 19 (2 not in the base rollouts; no prompt is in the base rollouts); "
        "widen the band or change H")
