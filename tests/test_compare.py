"""The budget arms' comparison: tokens to a target accuracy, and the curve behind it.

The curve is measured during training (relbudget.train.training.EvalCurve); the first test trains a
real tiny policy through TRL twice, with and without the curve, and asserts that evaluating along
the way leaves the training trajectory untouched (history and weights), so the fixed_best arm is
the same run as its sweep cell.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from relbudget.report import compare
from relbudget.train.grpo import train_policy
from relbudget.measure.models import load_saved
from relbudget.core.params import EvaluateParams, TrainParams, params_with
from relbudget.measure.task import builtin_splits, trace_corpus
from relbudget.testing import tiny_policy
from relbudget.train.training import EvalCurve, curve_evaluator


def _curve(points):
    return pd.DataFrame(points, columns=["tokens", "accuracy"])


def test_tokens_to_target_interpolates_between_evaluations():
    c = _curve([(0, 0.5), (1000, 0.6), (3000, 0.8), (4000, 0.9)])
    assert compare.tokens_to_target(c, 0.7) == pytest.approx(2000)  # halfway from 0.6 to 0.8
    assert compare.tokens_to_target(c, 0.8) == pytest.approx(3000)  # exactly at a point
    assert compare.tokens_to_target(c, 0.5) == 0.0  # the base policy already is there
    assert compare.tokens_to_target(c, 0.95) is None  # never within the budget
    # the first crossing counts, not a later one after a dip
    dip = _curve([(0, 0.5), (1000, 0.8), (2000, 0.6), (3000, 0.9)])
    assert compare.tokens_to_target(dip, 0.7) == pytest.approx(1000 * 0.2 / 0.3)


def _run(arm, seed, final, points, xi=1.0):
    ev = {"arm": arm, "seed": seed, "target_xi": xi, "H0": 45, "at": {"H_eval": {"accuracy": final}},
          "budget": {}}
    h = pd.DataFrame({"cum_generated_tokens": [t for t, _ in points] + [40000],
                      "acc_H_eval": [a for _, a in points] + [math.nan], "H": 45})
    return ev, h


def test_target_ratio_and_a_plain_sentence_either_way():
    base = 0.6
    runs = [_run("fixed_best", s, 0.9, [(10000, 0.7), (20000, 0.8)]) for s in range(3)]
    runs += [_run("controller", s, 0.8, [(5000, 0.7), (10000, 0.8)]) for s in range(3)]
    target = compare.default_target(base, runs)
    assert target == pytest.approx(0.75)  # halfway from 0.6 to the best mean final, 0.9
    rows = compare.arm_rows(runs, base, target)
    assert {r["arm"] for r in rows} == {"fixed_best", "controller"} and len(rows) == 6
    by = {s["arm"]: s for s in compare.summarize(rows)}
    assert by["fixed_best"]["tokens_to_target"] == pytest.approx(15000)
    assert by["controller"]["tokens_to_target"] == pytest.approx(7500)
    assert by["controller"]["ratio_to_fixed_best"] == pytest.approx(0.5)
    text = compare.sentence(list(by.values()), target)
    assert "controller needed 0.50x" in text and "controller met the goal" in text

    slow = [_run("fixed_best", s, 0.9, [(5000, 0.8)]) for s in range(3)]
    slow += [_run("per_prompt", s, 0.74, [(5000, 0.7)]) for s in range(3)]
    summary = compare.summarize(compare.arm_rows(slow, base, 0.75))
    by = {s["arm"]: s for s in summary}
    assert by["per_prompt"]["n_reached"] == 0 and by["per_prompt"]["ratio_to_fixed_best"] is None
    text = compare.sentence(summary, 0.75)
    assert "per_prompt reached it in 0 of 3 seeds" in text and "no adaptive arm met the goal" in text
    md = "\n".join(compare.render(summary, 0.75, {}))
    assert "| per_prompt | 1 | 45 | never | 0/3 | n/a |" in md


def test_compare_reads_the_arm_files_and_names_missing_ones(tmp_path):
    from relbudget.core.io import write_json
    from relbudget.core.schemas import HISTORY, write_table
    from relbudget.train.grpo import history_frame

    params = params_with({"allow_outside_paths": True, "paths": {"arms": str(tmp_path / "arms")},
                           "sweep": {"seeds": [0]}, "arms": {"arms": ["controller"]}})
    p = params.paths
    row = {"step": 1, "generated_tokens": 3000, "cum_generated_tokens": 3000, "reward_mean": 0.5,
           "frac_informative": 0.5, "frac_reward_zero_std": 0.5, "clipped_ratio": 0.0,
           "mean_length": 20.0, "tokens_after_correct": 0.0, "E_T": 30.0, "xi_t": 1.5, "H": 45}
    with pytest.raises(FileNotFoundError, match="fixed_best-s0, controller-s0"):
        compare.compare(p, params.arms, [0], 0.5)
    for arm, acc in (("fixed_best", 0.7), ("controller", 0.9)):
        name = f"{arm}-s0"
        h = history_frame([{**row, "acc_H_eval": 0.6}, {**row, "step": 2, "cum_generated_tokens": 6000}])
        write_table(h, HISTORY, p.arm_history(name))
        write_json({"arm": arm, "seed": 0, "target_xi": 1.0, "H0": 45, "budget": {},
                    "at": {"H_eval": {"accuracy": acc}}}, p.arm_json(name))
    out = compare.compare(p, params.arms, [0], 0.5)
    assert out["target_accuracy"] == pytest.approx(0.7)  # 0.5 + (0.9 - 0.5) / 2
    rows = {r["arm"]: r for r in out["arms"]}
    # fixed_best: 0.5 @0, 0.6 @3000, 0.7 @6000 -> 6000; controller: 0.6 @3000, 0.9 @6000 -> 4000
    assert rows["fixed_best"]["tokens_to_target"] == pytest.approx(6000)
    assert rows["controller"]["tokens_to_target"] == pytest.approx(4000)
    assert set(rows["controller"]) >= {"arm", "seed", "tokens_to_target", "acc_H_eval",
                                       "generated_tokens"}
    json.dumps(out["arms"])  # metrics.json-ready


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    corpus = trace_corpus(60, [1], 2, seed=0)
    return tiny_policy(tmp_path_factory.mktemp("base"), corpus)


def test_the_curve_leaves_the_training_trajectory_unchanged(base_dir, tmp_path):
    train, ev = builtin_splits(24, 8, [1], 2, seed=0)
    # after_answer keep: TRL's own generation draws from torch's global RNG, which the
    # evaluations (seeded) would move if EvalCurve did not restore it
    t = TrainParams.of_project(stop="tokens", token_budget=400, max_steps=40, num_generations=4,
                    prompts_per_step=2, lr=1e-3, threads=1, after_answer="keep")
    model, tok = load_saved(base_dir)
    plain_model, plain = train_policy(model, tok, train, t, 24, tmp_path / "plain")

    model, tok = load_saved(base_dir)
    evaluate = curve_evaluator(tok, ev, EvaluateParams.of_project(), 24, 2, "test")
    at = [100, 200, 300]
    curved_model, curved = train_policy(
        model, tok, train, t, 24, tmp_path / "curved",
        extra_callback=lambda hist: EvalCurve(hist, evaluate, at, t.token_budget))

    points = curved.dropna(subset=["acc_H_eval"])
    assert len(points) == 3  # one evaluation per point of `at` below the budget
    assert points["cum_generated_tokens"].is_monotonic_increasing
    assert ((points["acc_H_eval"] >= 0) & (points["acc_H_eval"] <= 1)).all()
    for x in at:  # each one at the first step whose tokens pass x
        step = curved.loc[curved["cum_generated_tokens"] >= x, "step"].iloc[0]
        assert step in set(points["step"])
    pd.testing.assert_frame_equal(curved.drop(columns="acc_H_eval"), plain)
    expected = plain_model.state_dict()
    assert all(torch.equal(expected[k], v) for k, v in curved_model.state_dict().items())
