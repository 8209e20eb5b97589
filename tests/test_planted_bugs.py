"""Tests that each fail on a small, realistic bug that the rest of the suite once let through.

Each test names the bug it guards against. They run real components on hand-made or synthetic
tables (a real parquet file, a real tiny model), at sizes that take well under a second each.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformers import TrainerControl, TrainerState

from relbudget.measure import estimators as est
from relbudget.measure.evaluation import censor, metrics_at
from relbudget.train.grpo import BudgetReward, HistoryCallback
from relbudget.measure.models import char_tokenizer, tiny_llama
from relbudget.core.params import TrainParams
from relbudget.measure.sampling import hf
from relbudget.measure.sampling.common import Request
from relbudget.core.schemas import ROLLOUTS, TableError, read_table, validate
from tests.synth import CAP, make_rollouts, tiny_table

# ---------------------------------------------------------------- estimators


def test_summarize_ci_resamples_prompts_not_attempts():
    """Bug: summarize's CI resampling attempts. Attempts of one prompt share its difficulty, so
    with few prompts of mixed difficulty the interval over prompts is much wider."""
    df = make_rollouts(12, 64, seed=3)
    s = est.summarize(df, [CAP], n_bootstrap=500, seed=1)
    pp = est.per_prompt(df)
    over_prompts = est.ratio_ci(pp["consumed_sum"], pp["hits"], n_resamples=500, seed=1)
    assert s["E_T_ci"] == list(over_prompts)
    assert s["E_T_ci"] == list(est.bootstrap_ci(df, n_resamples=500, seed=1))
    low, high = est.ratio_ci(est.consumed(df), est.is_hit(df), n_resamples=500, seed=1)
    assert s["E_T_ci"][1] - s["E_T_ci"][0] > 2 * (high - low)


def test_mixed_cap_table_answers_up_to_its_smallest_cap():
    """Bug: table_cap taking the largest max_tokens. Attempts sampled at cap 16 cannot tell
    whether a correct answer would come by H = 20."""
    df = pd.concat([tiny_table([("a", 16, None), ("a", 9, 9)], 16),
                    tiny_table([("b", 32, None), ("b", 20, 20)], 32)], ignore_index=True)
    validate(df, ROLLOUTS)
    assert est.table_cap(df) == 16
    with pytest.raises(ValueError, match="H=20 is above the table's cap max_tokens=16"):
        est.check_horizons(df, [20])
    s = est.summarize(df, group_size=2, n_bootstrap=50)
    assert s["max_tokens"] == 16 and max(r["H"] for r in s["horizons"]) == 16


# ---------------------------------------------------------------- evaluation at a horizon H


def test_censoring_at_H_keeps_a_hit_at_H_counts_clipped_and_unsolved():
    """Bugs: censor dropping a hit exactly at H; clipped_ratio counted with `>`; unsolved_share
    taken from the uncensored table."""
    H = 10
    df = tiny_table([("a", 10, 10),    # hit exactly at H (early exit there)
                     ("a", 20, None),  # miss cut by the cap
                     ("a", 10, None),  # miss that ends exactly at H
                     ("b", 20, 15),    # b's only hit comes after H: b is unsolved at H
                     ("b", 7, None)], cap=20)
    c = censor(df, H)
    validate(c, ROLLOUTS)
    assert c["first_correct_token"].tolist() == [10, pd.NA, pd.NA, pd.NA, pd.NA]
    assert c["n_tokens"].tolist() == [10, 10, 10, 10, 7]
    m = metrics_at(df, H, [1])
    assert m["accuracy"] == pytest.approx(1 / 5)
    assert m["E_T"] == pytest.approx((10 + 10 + 10 + 10 + 7) / 1)
    assert m["clipped_ratio"] == pytest.approx(4 / 5)  # every attempt that reached H tokens
    assert m["unsolved_share"] == pytest.approx(1 / 2)


# ---------------------------------------------------------------- rollout schema


def _break(df: pd.DataFrame, rule: str) -> int:
    """Break one schema rule on one row (and only that rule); return the row."""
    if rule == "first_correct_token must lie in 1..n_tokens":
        row = int(df.index[df["stop_reason"] == "eos"][0])  # a miss that ended on its own
        df.loc[row, "first_correct_token"] = df.loc[row, "n_tokens"] + 1
    else:
        row = int(df.index[(df["stop_reason"] == "first_correct")
                           & (df["n_tokens"] < df["max_tokens"] - 1)][0])
        df.loc[row, "n_tokens"] += 1  # the answer is no longer the attempt's last token
    return row


@pytest.mark.parametrize("rule", ["first_correct_token must lie in 1..n_tokens",
                                  "stop_reason 'first_correct' implies first_correct_token == n_tokens"])
def test_rollout_schema_rejects_the_failing_row(tmp_path, rule):
    """Bug: the rollout schema without `first_correct_token <= n_tokens` or without
    `first_correct => first_correct_token == n_tokens`."""
    df = make_rollouts(6, 4, seed=0)
    row = _break(df, rule)
    path = tmp_path / "rollouts.parquet"
    df.to_parquet(path, index=False)
    with pytest.raises(TableError) as err:
        read_table(path, ROLLOUTS)
    assert set(err.value.failures["index"]) == {row}
    assert f"row {row}" in str(err.value) and rule in str(err.value)


# ---------------------------------------------------------------- training: the token budget


def test_token_budget_stops_on_reaching_it_exactly():
    """Bug: the token-budget stop with `>` instead of `>=` (one step too many, every regime)."""
    tok = char_tokenizer()
    reward = BudgetReward(tok, 16, num_generations=2)
    ids = [tok("A:5", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]] * 2
    budget = 2 * sum(len(i) for i in ids)  # exactly two steps' tokens
    callback = HistoryCallback(reward, TrainParams.of_project(stop="tokens", token_budget=budget), 16)
    state = TrainerState()
    for step, stop in ((1, False), (2, True)):
        reward(prompts=[""] * 2, completions=[""] * 2, completion_ids=ids, answer=["5", "5"],
               answer_format=["int", "int"])
        state.global_step = step
        control = callback.on_step_end(None, state, TrainerControl())
        assert control.should_training_stop is stop, f"step {step}"
    assert callback.cum_tokens == budget


# ---------------------------------------------------------------- HF sampling


def test_hf_sampler_counts_the_eos_token():
    """Bug: the HF sampler dropping the EOS from n_tokens. A completion that ends on EOS
    generated that token: it is in token_ids and counted (restart semantics pay for it)."""
    tok = char_tokenizer()
    torch.manual_seed(0)
    model = tiny_llama(tok, 16, 1, 2, 32, 64).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # uniform next token: EOS ends some rows, others hit the cap
    reqs = [Request(f"p{i}", "1+2=" * (i + 1), "3", "int") for i in range(4)]  # padded batch
    gens = hf.generate(model, tok, [(r, a) for r in reqs for a in range(8)], 24, 1.0, 1.0,
                       False, seed=0)
    ended = [g for g in gens if g.ended == "eos"]
    assert ended and any(g.ended == "length" for g in gens)
    for g in ended:
        assert g.token_ids[-1] == tok.eos_token_id
        assert tok.eos_token_id not in g.token_ids[:-1] and len(g.token_ids) <= 24
    for g in gens:
        if g.ended == "length":
            assert len(g.token_ids) == 24 and tok.eos_token_id not in g.token_ids
