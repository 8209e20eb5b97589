"""Exact values of the arms comparison (relbudget.report.compare) on tiny hand-made runs.

Each expected number is computed by hand in the comment beside it: the boundaries of a target
(exactly at an evaluation, just below, just above), seeds that disagree (some reach the target,
some not), and the goal ratio at its edge. These are the numbers the report's headline carries.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from relbudget.report import compare


def _curve(points):
    return pd.DataFrame(points, columns=["tokens", "accuracy"])


def _run(arm, seed, final, points, end=40000, xi=1.0, H=45, budget=None):
    ev = {"arm": arm, "seed": seed, "target_xi": xi, "H0": 45,
          "at": {"H_eval": {"accuracy": final}}, "budget": budget or {}}
    h = pd.DataFrame({"cum_generated_tokens": [t for t, _ in points] + [end],
                      "acc_H_eval": [a for _, a in points] + [math.nan],
                      "H": H if isinstance(H, list) else [H] * (len(points) + 1)})
    return ev, h


# ---------------------------------------------------------------- tokens_to_target


@pytest.mark.parametrize("target, expected", [
    (0.6, 1000.0),            # exactly at the first evaluation after the base
    (0.6 + 1e-9, 1000.0 + 2000.0 * 1e-9 / 0.2),  # just above it: just past 1000
    (0.6 - 1e-9, 1000.0 - 1000.0 * 1e-9 / 0.1),  # just below it: just before 1000
    (0.55, 500.0),            # halfway from (0, 0.5) to (1000, 0.6)
    (0.75, 2500.0),           # 0.6 @1000 -> 0.8 @3000: 3/4 of the way
    (0.8, 3000.0),            # exactly at the last evaluation
    (0.5, 0.0),               # the base policy is already there
    (0.4, 0.0),               # below the base: also 0 tokens
    (0.8 + 1e-9, None),       # just above the best point: never
])
def test_tokens_to_target_at_its_boundaries(target, expected):
    c = _curve([(0, 0.5), (1000, 0.6), (3000, 0.8)])
    got = compare.tokens_to_target(c, target)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-6)


def test_tokens_to_target_uses_the_point_before_the_first_crossing():
    # 0.5 @0, 0.65 @2000, 0.9 @4000; target 0.7: from (2000, 0.65) 0.05 / 0.25 of 2000 = 400
    c = _curve([(0, 0.5), (2000, 0.65), (4000, 0.9)])
    assert compare.tokens_to_target(c, 0.7) == pytest.approx(2400)


# ---------------------------------------------------------------- curve and default target


def test_curve_starts_at_the_base_and_ends_at_the_final_evaluation():
    ev, h = _run("controller", 0, 0.9, [(1000, 0.6), (3000, 0.7)], end=5000)
    c = compare.curve(ev, h, 0.5)
    assert list(c.itertuples(index=False, name=None)) == [
        (0, 0.5), (1000, 0.6), (3000, 0.7), (5000, 0.9)]
    # a history without the curve column: only the base and the final point
    c = compare.curve(ev, h.drop(columns="acc_H_eval"), 0.5)
    assert list(c.itertuples(index=False, name=None)) == [(0, 0.5), (5000, 0.9)]
    # an empty history: the final point at 0 tokens
    c = compare.curve(ev, h.iloc[:0], 0.5)
    assert list(c.itertuples(index=False, name=None)) == [(0, 0.5), (0, 0.9)]


def test_default_target_takes_the_best_arm_mean_over_seeds_not_the_best_seed():
    runs = [_run("fixed_best", 0, 0.9, []), _run("fixed_best", 1, 0.5, []),   # mean 0.7
            _run("controller", 0, 0.8, []), _run("controller", 1, 0.8, [])]  # mean 0.8
    # base 0.4: 0.4 + (0.8 - 0.4) / 2 = 0.6 (the single best seed, 0.9, would give 0.65)
    assert compare.default_target(0.4, runs) == pytest.approx(0.6)


def test_arm_rows_count_evaluations_and_tokens():
    runs = [_run("controller", 3, 0.9, [(1000, 0.6), (3000, 0.7)], end=5000, xi=1.5)]
    (row,) = compare.arm_rows(runs, 0.5, 0.65)
    # 0.6 @1000 -> 0.7 @3000: 0.05 / 0.1 of 2000 past 1000 = 2000
    assert row == {"arm": "controller", "seed": 3, "xi": 1.5, "H0": 45,
                   "tokens_to_target": pytest.approx(2000), "acc_H_eval": 0.9,
                   "generated_tokens": 5000, "n_evaluations": 3}
    # crossing from the base point: 0.5 @0 -> 0.6 @1000, target 0.55 -> 500
    (row,) = compare.arm_rows(runs, 0.5, 0.55)
    assert row["tokens_to_target"] == pytest.approx(500)


# ---------------------------------------------------------------- summary over seeds


def _row(arm, seed, tokens, acc, xi=1.0):
    return {"arm": arm, "seed": seed, "xi": xi, "H0": 45, "tokens_to_target": tokens,
            "acc_H_eval": acc}


def test_summary_mean_and_se_over_the_seeds_that_reached_the_target():
    rows = [_row("fixed_best", 0, 1000.0, 0.7), _row("fixed_best", 1, 2000.0, 0.8),
            _row("fixed_best", 2, 4000.0, 0.9),
            _row("controller", 0, 500.0, 0.6), _row("controller", 1, None, 0.5),
            _row("controller", 2, 1500.0, 0.7)]
    by = {s["arm"]: s for s in compare.summarize(rows)}
    ref = by["fixed_best"]
    # mean 7000/3; deviations -4000/3, -1000/3, 5000/3: var = (16+1+25)/9e-6 / 2 = 7e6/3,
    # s.e. = sqrt(7e6/3) / sqrt(3) = sqrt(7e6) / 3
    assert ref["tokens_to_target"] == pytest.approx(7000 / 3)
    assert ref["tokens_to_target_se"] == pytest.approx(math.sqrt(7e6) / 3)
    assert (ref["n_seeds"], ref["n_reached"]) == (3, 3)
    assert ref["acc_H_eval"] == pytest.approx(0.8)
    assert ref["acc_H_eval_se"] == pytest.approx(0.1 / math.sqrt(3))  # sd 0.1 over 3 seeds
    assert ref["ratio_to_fixed_best"] == pytest.approx(1.0)
    ctl = by["controller"]
    # seeds disagree: 2 of 3 reached; the mean is over those two (1000), no ratio
    assert (ctl["n_seeds"], ctl["n_reached"]) == (3, 2)
    assert ctl["tokens_to_target"] == pytest.approx(1000)
    assert ctl["tokens_to_target_se"] == pytest.approx(500)  # sd 707.1 / sqrt 2
    assert ctl["ratio_to_fixed_best"] is None
    assert ctl["acc_H_eval"] == pytest.approx(0.6)
    assert [s["arm"] for s in compare.summarize(rows)] == ["fixed_best", "controller"]


def test_summary_one_seed_has_no_se_and_a_ratio():
    by = {s["arm"]: s for s in compare.summarize(
        [_row("fixed_best", 0, 4000.0, 0.7, xi=2.0), _row("per_prompt", 0, 1000.0, 0.6, xi=1.0)])}
    assert by["fixed_best"]["tokens_to_target_se"] is None
    assert by["fixed_best"]["acc_H_eval_se"] is None
    assert by["fixed_best"]["xi"] == 2.0 and by["per_prompt"]["xi"] == 1.0
    assert by["per_prompt"]["ratio_to_fixed_best"] == pytest.approx(0.25)


def test_no_ratio_when_the_reference_misses_in_a_seed_or_is_absent():
    rows = [_row("fixed_best", 0, 4000.0, 0.7), _row("fixed_best", 1, None, 0.6),
            _row("controller", 0, 1000.0, 0.8), _row("controller", 1, 1000.0, 0.8)]
    by = {s["arm"]: s for s in compare.summarize(rows)}
    assert by["controller"]["ratio_to_fixed_best"] is None
    assert by["fixed_best"]["ratio_to_fixed_best"] is None
    alone = compare.summarize([_row("controller", 0, 1000.0, 0.8)])
    assert alone[0]["ratio_to_fixed_best"] is None
    # a reference at 0 tokens (the base already there): no ratio rather than a division by 0
    zero = compare.summarize([_row("fixed_best", 0, 0.0, 0.8), _row("controller", 0, 10.0, 0.8)])
    assert [s["ratio_to_fixed_best"] for s in zero] == [None, None]


def test_summary_of_no_rows_is_empty():
    assert compare.summarize([]) == []
    assert compare._mean_se([]) == (None, None)


# ---------------------------------------------------------------- the sentence, at the goal's edge


def _summary(ratio, n_reached=3):
    ref = {"arm": "fixed_best", "xi": 1.5, "H0": 45, "n_seeds": 3, "n_reached": 3,
           "tokens_to_target": 12345.6, "tokens_to_target_se": None,
           "acc_H_eval": 0.8, "acc_H_eval_se": None, "ratio_to_fixed_best": 1.0}
    arm = {**ref, "arm": "controller", "n_reached": n_reached, "ratio_to_fixed_best": ratio}
    return [ref, arm]


@pytest.mark.parametrize("ratio, wins", [(0.8, True), (0.79, True), (0.81, False)])
def test_the_goal_is_met_at_exactly_the_goal_ratio(ratio, wins):
    text = compare.sentence(_summary(ratio), 0.75)
    assert text.startswith("To reach accuracy 0.750 at H_eval, the best fixed xi (1.5) needed "
                           "12,346 generated tokens on mean; ")
    assert f"controller needed {ratio:.2f}x its tokens" in text
    assert ("controller met the goal of <= 0.8x." in text) == wins
    assert ("no adaptive arm met the goal of <= 0.8x the best fixed xi's tokens." in text) != wins


def test_the_sentence_when_the_reference_never_reaches_the_target():
    s = _summary(None)
    s[0]["tokens_to_target"] = None
    assert compare.sentence(s, 0.75) == ("The best fixed xi never reached the target accuracy "
                                         "0.750; no ratio.")
    assert compare.sentence(s[1:], 0.5).startswith("The best fixed xi never reached")
    text = compare.sentence(_summary(None, n_reached=1), 0.75)
    assert "; controller reached it in 1 of 3 seeds: no adaptive arm met" in text


# ---------------------------------------------------------------- budget notes and the table


def test_budget_notes_from_each_arm_first_seed():
    b = {"filter_n_kept": 3, "filter_n_prompts": 8, "per_prompt_H_x_q10": 20.0,
         "per_prompt_H_x_q50": 40.0, "per_prompt_H_x_q90": 80.0, "other": 1}
    runs = [_run("controller", 0, 0.9, [(1000, 0.6), (2000, 0.7)], H=[30, 60, 50]),
            _run("controller", 1, 0.9, [(1000, 0.6)], H=[10, 90]),
            _run("filtered", 2, 0.9, [], budget=b),
            _run("fixed_best", 0, 0.9, [], H=[45])]
    notes = compare.budget_notes(runs)
    assert notes["controller"] == {"H_t_min": 30, "H_t_max": 60, "H_t_last": 50, "seed": 0}
    assert notes["filtered"] == {"filter_n_kept": 3, "filter_n_prompts": 8,
                                 "per_prompt_H_x_q10": 20.0, "per_prompt_H_x_q50": 40.0,
                                 "per_prompt_H_x_q90": 80.0, "seed": 2}
    assert notes["fixed_best"] == {"seed": 0}  # no H range for a fixed budget
    ev, h = _run("controller", 5, 0.9, [])
    assert compare.budget_notes([(ev, h.iloc[:0])]) == {"controller": {"seed": 5}}


def test_render_rows_with_and_without_se():
    summary = compare.summarize([
        _row("fixed_best", 0, 1000.0, 0.7), _row("fixed_best", 1, 3000.0, 0.9),
        _row("controller", 0, 500.0, 0.8), _row("controller", 1, 1500.0, 0.8)])
    md = compare.render(summary, 0.75, {"controller": {"H_t_min": 30, "q": 40.0, "seed": 1,
                                                       "n": 1000000},
                                        "fixed_best": {"seed": 0}})
    assert md[:3] == ["## Adaptive budgets against the best fixed xi (compute-matched)", "",
                      compare.sentence(summary, 0.75)]
    # 2000 +- 1000 (sd 1414.2 / sqrt 2); accuracy 0.8 +- 0.1
    assert "| fixed_best | 1 | 45 | 2,000 +- 1,000 | 2/2 | 1.00 | 0.800 +- 0.100 |" in md
    assert "| controller | 1 | 45 | 1,000 +- 500 | 2/2 | 0.50 | 0.800 +- 0.000 |" in md
    # floats as %g, ints whole
    assert "- controller (seed 1): H_t_min 30, q 40, n 1000000" in md
    assert not any(line.startswith("- fixed_best") for line in md)
    one = compare.render(compare.summarize([_row("fixed_best", 0, 1000.0, 0.7)]), 0.75, {})
    assert "| fixed_best | 1 | 45 | 1,000 | 1/1 | 1.00 | 0.700 |" in one


def test_render_whole_section():
    summary = compare.summarize([_row("fixed_best", 0, 1000.0, 0.7),
                                 _row("controller", 0, 500.0, 0.8)])
    assert compare.render(summary, 0.75, {}) == [
        "## Adaptive budgets against the best fixed xi (compute-matched)", "",
        "To reach accuracy 0.750 at H_eval, the best fixed xi (1) needed 1,000 generated tokens "
        "on mean; controller needed 0.50x its tokens: controller met the goal of <= 0.8x.", "",
        "| arm | xi | H (start) | tokens to target | reached | x best fixed | acc@H_eval |",
        "|---|---|---|---|---|---|---|",
        "| fixed_best | 1 | 45 | 1,000 | 1/1 | 1.00 | 0.700 |",
        "| controller | 1 | 45 | 500 | 1/1 | 0.50 | 0.800 |",
        "",
        "Tokens to target: the first evaluation at or above the target, linear between "
        "evaluations (at 0 tokens: the base policy), mean +- s.e. over the seeds that "
        "reached it. controller: H_t = xi * E_t[T] re-estimated from the policy's own "
        "rollouts; per_prompt: H_x = xi * E[T|x] from the base rollouts; filtered: fixed H "
        "on the prompts whose xi_x is in the band; fixed_best: the sweep's best xi.",
        "", "![tokens to target](tokens_to_target.png)", ""]


def test_the_sentence_joins_several_arms():
    s = _summary(0.5)
    s.append({**s[1], "arm": "per_prompt", "ratio_to_fixed_best": 0.7})
    s.append({**s[1], "arm": "filtered", "ratio_to_fixed_best": None, "n_reached": 2})
    assert compare.sentence(s, 0.75) == (
        "To reach accuracy 0.750 at H_eval, the best fixed xi (1.5) needed 12,346 generated "
        "tokens on mean; controller needed 0.50x its tokens; per_prompt needed 0.70x its tokens; "
        "filtered reached it in 2 of 3 seeds: controller, per_prompt met the goal of <= 0.8x.")


def _history(points, end):
    """A history with every column of the HISTORY schema."""
    n = len(points) + 1
    return pd.DataFrame({
        "step": range(1, n + 1), "generated_tokens": [1] * n,
        "cum_generated_tokens": [t for t, _ in points] + [end], "reward_mean": [0.5] * n,
        "frac_informative": [0.5] * n, "frac_reward_zero_std": [0.5] * n,
        "clipped_ratio": [0.0] * n, "mean_length": [20.0] * n, "tokens_after_correct": [0.0] * n,
        "E_T": [30.0] * n, "xi_t": [1.5] * n, "H": [45] * n,
        "acc_H_eval": [a for _, a in points] + [math.nan]})


def test_compare_from_files_with_a_given_target(tmp_path):
    from relbudget.core.io import write_json
    from relbudget.core.params import params_with
    from relbudget.core.schemas import HISTORY, write_table

    params = params_with({"allow_outside_paths": True, "paths": {"arms": str(tmp_path / "arms")},
                          "arms": {"arms": ["controller"], "target_accuracy": 0.55}})
    p = params.paths
    with pytest.raises(FileNotFoundError, match="fixed_best-s0, fixed_best-s1, controller-s0, "
                                                "controller-s1; run their"):
        compare.compare(p, params.arms, [0, 1], 0.5)
    for arm, acc in (("fixed_best", 0.6), ("controller", 0.9)):
        for seed in (0, 1):
            name = f"{arm}-s{seed}"
            write_table(_history([(1000, acc)], 3000), HISTORY, p.arm_history(name))
            write_json({"arm": arm, "seed": seed, "target_xi": 1.0, "H0": 45, "budget": {},
                        "at": {"H_eval": {"accuracy": acc}}}, p.arm_json(name))
    out = compare.compare(p, params.arms, [0, 1], 0.5)
    # the given target, not the default (0.5 + (0.9 - 0.5) / 2 = 0.7)
    assert out["target_accuracy"] == 0.55
    # from the base 0.5 @0: fixed_best 0.6 @1000 -> 500; controller 0.9 @1000 -> 125
    assert [r["tokens_to_target"] for r in out["arms"]] == pytest.approx([500, 500, 125, 125])
    assert [s["arm"] for s in out["arms_summary"]] == ["fixed_best", "controller"]
    assert out["arms_summary"][1]["ratio_to_fixed_best"] == pytest.approx(0.25)
    assert out["markdown"] == compare.render(out["arms_summary"], 0.55,
                                             compare.budget_notes(compare.load_runs(
                                                 p, ["controller"], [0, 1])))
    assert sorted(out["curves"]) == ["controller", "fixed_best"]
    assert list(out["curves"]["controller"][1].itertuples(index=False, name=None)) == [
        (0, 0.5), (1000, 0.9), (3000, 0.9)]
