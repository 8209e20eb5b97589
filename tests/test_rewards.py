"""Rewards at horizon H (within, final, budget): means, variances and P_inf against hand-computed
values and brute-force enumeration of every GRPO group; the CLI's --reward; grpo.reward_of."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from relbudget.measure import estimators as est
from relbudget.cli import main
from tests.synth import make_rollouts, tiny_table

CAP = 10
# (prompt_id, n_tokens, first_correct_token), 2 prompts x 4 attempts, cap 10.
ROWS = [
    ("a", 2, 2), ("a", 8, 5), ("a", 10, None), ("a", 5, 5),
    ("b", 3, None), ("b", 1, 1), ("b", 10, 10), ("b", 10, None),
]
# budget rewards (H - T + 1) / H, T > H or no hit -> 0, worked out by hand
BUDGET = {10: [0.9, 0.6, 0.0, 0.6, 0.0, 1.0, 0.1, 0.0],
          5: [0.8, 0.2, 0.0, 0.2, 0.0, 1.0, 0.0, 0.0]}
# P_inf by hand: per prompt 1 - sum_v C(c_v, G) / C(4, G), averaged over the two prompts.
#   H=10: a {0.9: 1, 0.6: 2, 0: 1}, b {0: 2, 1: 1, 0.1: 1} -> G=2: 1 - 1/6 each; G=3: 1 each
#   H=5:  a {0.8: 1, 0.2: 2, 0: 1} -> 5/6, 1;  b {0: 3, 1: 1} -> 1 - 3/6, 1 - 1/4
P_INF = {(10, 2): 5 / 6, (10, 3): 1.0, (5, 2): (5 / 6 + 1 / 2) / 2, (5, 3): (1 + 3 / 4) / 2}


@pytest.fixture
def tiny() -> pd.DataFrame:
    return tiny_table(ROWS, CAP)


def brute_p_informative(rewards: np.ndarray, prompts: np.ndarray, G: int) -> float:
    """Share of non-constant groups over every G-subset of each prompt's attempts, averaged."""
    shares = []
    for pid in np.unique(prompts):
        r = rewards[prompts == pid]
        groups = list(itertools.combinations(r, G))
        shares.append(np.mean([len(set(g)) > 1 for g in groups]))
    return float(np.mean(shares))


# ---------------------------------------------------------------- budget


def test_budget_reward_per_attempt(tiny):
    for H, want in BUDGET.items():
        assert est.budget_reward(tiny, H).tolist() == pytest.approx(want)
        assert est.reward_at(tiny, H, "budget").tolist() == pytest.approx(want)


@pytest.mark.parametrize("G", [2, 3])
def test_budget_mean_var_p_informative_by_hand(tiny, G):
    rc = est.reward_curves(tiny, [10, 5], G, "budget").set_index("H")
    assert rc.loc[10, "reward_mean"] == pytest.approx(3.2 / 8)
    assert rc.loc[10, "reward_var"] == pytest.approx(2.54 / 8 - (3.2 / 8) ** 2)
    assert rc.loc[5, "reward_mean"] == pytest.approx(2.2 / 8)
    assert rc.loc[5, "reward_var"] == pytest.approx(1.72 / 8 - (2.2 / 8) ** 2)
    prompts = tiny["prompt_id"].to_numpy()
    for H in (10, 5):
        assert rc.loc[H, "p_informative"] == pytest.approx(P_INF[(H, G)])
        assert rc.loc[H, "p_informative"] == pytest.approx(
            brute_p_informative(np.array(BUDGET[H]), prompts, G))


@pytest.mark.parametrize("G", [2, 3, 5])
def test_budget_p_informative_matches_enumeration_on_synthetic(G):
    df = make_rollouts(30, 7, cap=40, seed=3)
    prompts = df["prompt_id"].to_numpy()
    for H in (6, 17, 40):
        got = est.reward_curves(df, [H], G, "budget")["p_informative"].iloc[0]
        assert got == pytest.approx(brute_p_informative(est.budget_reward(df, H).to_numpy(), prompts, G))


def test_plug_in_when_fewer_attempts_than_group():
    # K=2 < G=3: 1 - sum_v (c_v / K)^G = 1 - 2 * (1/2)^3 for rewards {0.8, 0}
    df = tiny_table([("c", 3, 3), ("c", 4, None)], CAP)
    got = est.reward_curves(df, [10], 3, "budget")["p_informative"].iloc[0]
    assert got == pytest.approx(0.75)


def test_large_group_no_overflow():
    df = make_rollouts(20, 80, cap=64, seed=1)
    rc = est.reward_curves(df, [32, 64], 64, "budget")
    assert np.isfinite(rc["p_informative"]).all() and rc["p_informative"].between(0, 1).all()


# ---------------------------------------------------------------- within and final


def test_within_is_curves_exactly():
    df = make_rollouts(60, 8, seed=4)
    H = [1, 8, 32, 64, 128]
    cv = est.curves(df, H, 8)
    rc = est.reward_curves(df, H, 8, "within")
    assert rc["reward_mean"].tolist() == cv["p"].tolist()
    assert rc["reward_var"].tolist() == cv["reward_var"].tolist()
    assert rc["p_informative"].tolist() == cv["p_informative"].tolist()
    s = est.summarize(df, H, 8, n_bootstrap=50)
    for row, c in zip(s["horizons"], cv.itertuples(index=False)):
        assert (row["reward_mean"], row["reward_var"], row["p_informative"]) == (c.p, c.reward_var,
                                                                                c.p_informative)


def test_final_needs_an_ending_within_H():
    # attempt 0: correct last answer, EOS at 8; 1: cut at the cap (no final answer) though the
    # truncated text ends on a right answer; 2: early exit at 4; 3: a hit whose last answer is wrong
    df = pd.DataFrame({
        "prompt_id": "p", "attempt": [0, 1, 2, 3], "n_tokens": [8, 10, 4, 6], "max_tokens": 10,
        "first_correct_token": pd.array([3, 2, 4, 2], dtype="Int64"),
        "stop_reason": ["eos", "length", "first_correct", "eos"],
        "final_correct": [True, True, True, False], "policy": "hand", "seed": 0})
    assert est.final_within(df, 10).tolist() == [True, False, True, False]
    assert est.final_within(df, 7).tolist() == [False, False, True, False]
    rc = est.reward_curves(df, [7, 10], 2, "final").set_index("H")
    assert rc.loc[10, "reward_mean"] == 0.5 and rc.loc[10, "reward_var"] == 0.25
    assert rc.loc[7, "reward_mean"] == 0.25
    # 2 ones out of 4: 1 - (C(2,2) + C(2,2)) / C(4,2) = 2/3; 1 one: 1 - C(3,2)/C(4,2) = 1/2
    assert rc.loc[10, "p_informative"] == pytest.approx(2 / 3)
    assert rc.loc[7, "p_informative"] == pytest.approx(1 / 2)


def test_bad_reward_raises(tiny):
    with pytest.raises(ValueError, match="reward must be one of"):
        est.reward_curves(tiny, [5], 2, "sparse")
    with pytest.raises(ValueError, match="reward must be one of"):
        est.plan(tiny, 1.0, 2, "sparse")


# ---------------------------------------------------------------- CLI and planner


def test_cli_json_budget(tiny, tmp_path, capsys):
    path = tmp_path / "tiny.parquet"
    tiny.to_parquet(path, index=False)
    args = ["xi", "--rollouts", str(path), "--horizon", "10", "--horizon", "5", "--group-size", "2",
            "--n-bootstrap", "50", "--json"]
    assert main([*args, "--reward", "budget"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["reward"] == "budget"
    by_H = {h["H"]: h for h in s["horizons"]}
    assert by_H[10]["reward_mean"] == pytest.approx(3.2 / 8)
    assert by_H[10]["reward_var"] == pytest.approx(2.54 / 8 - (3.2 / 8) ** 2)
    assert by_H[10]["p_informative"] == pytest.approx(P_INF[(10, 2)])
    assert by_H[5]["p_informative"] == pytest.approx(P_INF[(5, 2)])
    assert by_H[5]["p"] == pytest.approx(4 / 8)  # p stays P(T <= H): hits at 2, 5, 5, 1

    assert main(args) == 0  # default within: the values of today
    w = json.loads(capsys.readouterr().out)
    cv = est.curves(tiny, [10, 5], 2)
    assert [h["reward_mean"] for h in w["horizons"]] == cv["p"].tolist()
    assert [h["p_informative"] for h in w["horizons"]] == cv["p_informative"].tolist()
    assert [h["reward_var"] for h in w["horizons"]] == cv["reward_var"].tolist()

    assert main(["plan", "--rollouts", str(path), "--target-xi", "1", "--group-size", "3",
                 "--reward", "budget", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    H = p["H"]
    want = est.reward_curves(tiny, [H], 3, "budget").iloc[0]
    assert p["reward"] == "budget" and p["reward_mean"] == pytest.approx(want["reward_mean"])
    assert p["p_informative"] == pytest.approx(want["p_informative"])
    assert p["p"] == pytest.approx(est.hit_within(tiny, H).mean())


def test_cli_bad_reward_exits_2(tiny, tmp_path, capsys):
    path = tmp_path / "tiny.parquet"
    tiny.to_parquet(path, index=False)
    with pytest.raises(SystemExit) as e:
        main(["xi", "--rollouts", str(path), "--reward", "sparse"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


# ---------------------------------------------------------------- training reward


def test_grpo_reward_of_budget():
    from relbudget.train.grpo import BudgetReward, reward_of

    H = 16
    row = {"n_tokens": H, "max_tokens": H, "final_correct": True, "stop_reason": "eos"}
    assert reward_of({**row, "first_correct_token": 1}, "budget", H) == 1.0
    assert reward_of({**row, "first_correct_token": H}, "budget", H) == pytest.approx(1 / H)
    assert reward_of({**row, "first_correct_token": H + 1}, "budget", H) == 0.0
    assert reward_of({**row, "first_correct_token": None}, "budget", H) == 0.0
    assert reward_of({**row, "first_correct_token": 5}, "budget") == pytest.approx(12 / 16)  # H = max_tokens
    assert reward_of({**row, "first_correct_token": 5}, "within") == 1.0
    assert BudgetReward(None, H, 4, mode="budget").__name__ == "reward_budget"
    with pytest.raises(ValueError, match="'budget'"):
        BudgetReward(None, H, 4, mode="sparse")
