"""Budgeted GRPO on the real TRL trainer, at tiny sizes (a 2-layer, 32-wide Llama, one thread).

The policy is pre-trained for a few seconds on one-digit sums so that it is right about a third
of the time: GRPO groups then have mixed rewards and a step really moves the weights.
"""

from __future__ import annotations

import json
import math

import mlflow
import pandas as pd
import pytest
import torch
import yaml

from relbudget.train.grpo import BudgetReward, score_completion, train_policy
from relbudget.measure.models import char_tokenizer, load_saved, save_policy
from relbudget.core.io import to_json_safe
from relbudget.core.params import TrainParams, params_with
from relbudget.core.schemas import HISTORY, PROMPTS, read_table, validate, write_table
from relbudget.measure.task import builtin_splits
from stages import sweep as sweep_stage
from stages._cli import execute
from tests.helpers import TINY_TRAIN, killed_at_step_3, pretrained

H = 24


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return pretrained(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def rambler_dir(tmp_path_factory):
    """Keeps writing guesses after its answer, as RL-ed policies do: early exit has work to do.
    400 steps: at 200 it is right on about 1 sum in 7, and 3 tiny steps may then see no answer
    at all; at 400, about 2 in 3."""
    return pretrained(tmp_path_factory.mktemp("rambler"), after_answer="|A:0|A:0|A:0", steps=400)


@pytest.fixture(scope="module")
def prompts():
    train, _ = builtin_splits(24, 4, [1], 2, seed=0)
    return train


def _ids(tok, text: str, eos: bool) -> list[int]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids + [tok.eos_token_id] if eos else ids


# ---------------------------------------------------------------- reward and step statistics


def test_rewards_on_hand_made_completions():
    tok = char_tokenizer()
    trace = "7+5=12|4+8+1=13|3+1=4|"  # 22 characters, one token each
    H_ = 34
    cases = [  # text, ends with EOS, reward within, reward final
        (trace + "A:432", True, 1.0, 1.0),             # correct, then EOS (28 tokens)
        (trace + "A:432|A:999", True, 1.0, 0.0),       # correct, then more text and a wrong answer
        (trace + "A:431", True, 0.0, 0.0),             # wrong
        ("|" * 8 + trace + "A:43", False, 0.0, 0.0),   # cut at H in the middle of the answer
        (trace + "A:432|1+1+1+", False, 1.0, 1.0),     # correct, then cut at H
    ]
    completions = [_ids(tok, t, e) for t, e, *_ in cases]
    n = [len(c) for c in completions]
    assert n == [28, 34, 28, 34, 34]
    for mode, col in (("within", 2), ("final", 3)):
        reward = BudgetReward(tok, H_, num_generations=len(cases), mode=mode)
        assert reward.__name__ == f"reward_{mode}"
        got = reward(prompts=[""] * 5, completions=[t for t, *_ in cases], completion_ids=completions,
                     answer=["432"] * 5, answer_format=["int"] * 5)
        assert got == [c[col] for c in cases], mode
        stats = reward.take()
        assert reward.take() is None  # taken once per step
        assert stats["generated_tokens"] == sum(n)
        assert stats["mean_length"] == pytest.approx(sum(n) / 5)
        assert stats["n_hits"] == 3
        # the first correct answer is confirmed at token 28 in every hit (by EOS or by the '|')
        assert stats["tokens_after_correct"] == pytest.approx((0 + 6 + 6) / 3)
        assert stats["E_T"] == pytest.approx((28 + 28 + 28 + 34 + 28) / 3)
        assert stats["xi_t"] == pytest.approx(H_ / stats["E_T"])
        assert stats["clipped_ratio"] == pytest.approx(2 / 5)
        assert stats["frac_informative"] == 1.0 and stats["frac_reward_zero_std"] == 0.0


def test_reward_never_raises_and_uninformative_groups(caplog):
    tok = char_tokenizer()
    reward = BudgetReward(tok, 10, num_generations=2)
    ids = [_ids(tok, "A:5", True), _ids(tok, "A:5", True), _ids(tok, "A:1", True), _ids(tok, "A:2", True)]
    got = reward(prompts=[""] * 4, completions=[""] * 4, completion_ids=ids,
                 answer=["5", "5", "5", "5"], answer_format=["int", "no-such-format", "int", "int"])
    assert got == [1.0, 0.0, 0.0, 0.0]  # the verifier error scores 0 instead of raising
    assert "verifier failed" in caplog.text
    stats = reward.take()
    assert stats["verifier_failures"] == 1
    assert stats["frac_informative"] == 0.5 and stats["frac_reward_zero_std"] == 0.5
    # no hit at all: E_T and xi_t are undefined, not zero
    reward([""] * 2, [""] * 2, ids[2:], ["5", "5"], ["int", "int"])
    stats = reward.take()
    assert math.isnan(stats["E_T"]) and math.isnan(stats["xi_t"])


# ---------------------------------------------------------------- the trainer


def test_stop_mode_spends_nothing_after_the_answer(rambler_dir, prompts, tmp_path, monkeypatch):
    # Keep what the trainer generated, as the (real) reward receives it.
    seen = []
    real = BudgetReward.__call__

    def keep(self, prompts, completions, completion_ids, answer, answer_format, stop_reason=None,
             **kw):
        seen.append((completion_ids, answer, answer_format, stop_reason))
        return real(self, prompts, completions, completion_ids, answer, answer_format,
                    stop_reason=stop_reason, **kw)

    monkeypatch.setattr(BudgetReward, "__call__", keep)
    model, tok = load_saved(rambler_dir)
    t = TrainParams.of_project(stop="steps", max_steps=3, after_answer="stop", **TINY_TRAIN)
    _, hist = train_policy(model, tok, prompts, t, H, tmp_path / "work")
    validate(hist, HISTORY)
    assert list(hist["step"]) == [1, 2, 3]  # steps mode: exactly max_steps
    assert hist["n_hits"].sum() > 0
    # tokens_after_correct is 0 by construction once a completion is labelled 'first_correct'
    # (its answer is then taken to end it), so check the tokens themselves: scored without the
    # label, every correct answer is confirmed by its completion's last token, and the early
    # exit did stop completions there.
    early, generated = 0, 0
    for ids, answers, fmts, reasons in seen:
        for i, completion in enumerate(ids):
            row = score_completion(tok, completion, answers[i], fmts[i], H)
            assert row["first_correct_token"] in (None, row["n_tokens"]), tok.decode(completion)
            early += reasons[i] == "first_correct"
            generated += len(completion)
    assert early > 0
    assert generated == hist["generated_tokens"].sum()
    assert (hist["tokens_after_correct"] == 0).all()


def test_resume_continues_the_same_run(base_dir, prompts, tmp_path, monkeypatch):
    t = TrainParams.of_project(stop="steps", max_steps=4, checkpoint_every=2, **TINY_TRAIN)
    model, tok = load_saved(base_dir)
    straight_model, straight = train_policy(model, tok, prompts, t, H, tmp_path / "straight")

    model, tok = load_saved(base_dir)
    killed_at_step_3(monkeypatch, model, tok, prompts, t, H, tmp_path / "work")

    model, tok = load_saved(base_dir)
    trained, resumed = train_policy(model, tok, prompts, t, H, tmp_path / "work")
    assert list(resumed["step"]) == [1, 2, 3, 4]
    # steps 1-2 come back from the checkpoint; 3-4 are drawn and trained as in the uninterrupted
    # run (same optimizer state, same seeds): the same history (it holds no timings) and weights
    assert "wall_seconds" not in resumed
    pd.testing.assert_frame_equal(resumed, straight)
    expected = straight_model.state_dict()
    assert all(torch.equal(expected[k], v) for k, v in trained.state_dict().items())

    # killed after the final checkpoint: a rerun trains no further step, it loads that checkpoint
    model, tok = load_saved(base_dir)
    again, again_hist = train_policy(model, tok, prompts, t, H, tmp_path / "work")
    pd.testing.assert_frame_equal(again_hist, resumed)
    after = trained.state_dict()
    assert all(torch.equal(after[k], v) for k, v in again.state_dict().items())


def _cell_params(tmp_path, **train):
    return params_with({
        "paths": {k: str(tmp_path / v) for k, v in {
            "prepared": "prepared", "base_model": "models/base", "xi": "xi", "sweep": "sweep",
            "rollouts": "rollouts/base.parquet", "eval": "eval", "report": "report"}.items()},
        "allow_outside_paths": True,  # tmp_path is outside the project
        "train": {"max_steps": 60, "checkpoint_every": 5, **TINY_TRAIN, **train},
        "evaluate": {"attempts": 1, "h_eval": H, "h_multiples": [1.0], "pass_k": [1]},
        "sweep": {"token_budget": 700, "eval_attempts": 1}, "arms": {"eval_at": [100]},
    })


def test_a_cell_trains_until_the_token_budget(base_dir, prompts, tmp_path, monkeypatch):
    """A sweep cell (a regime is the cells at its xi): GRPO at H = xi * E[T] until the token
    budget, then its evaluation; outputs, history and its MLflow run."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    params = _cell_params(tmp_path)
    write_table(prompts, PROMPTS, tmp_path / "prepared" / "train.parquet")
    write_table(prompts.head(4), PROMPTS, tmp_path / "prepared" / "eval.parquet")
    base, tok = load_saved(base_dir)
    save_policy(base, tok, tmp_path / "models" / "base")
    (tmp_path / "xi").mkdir()
    (tmp_path / "xi" / "E_T.json").write_text(json.dumps({"E_T": H / 1.75}))  # H = 1.75 E[T]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "base.json").write_text(json.dumps(
        {"at": {"H_eval": {"accuracy": 0.25, "E_T": 20.0}}}))

    result = execute("sweep", sweep_stage.run, params, sweep_stage.SECTIONS, "xi1.75-s0")

    # outputs: a schema-valid history and evaluation, no leftover work folder (no weights kept)
    hist = read_table(tmp_path / "sweep" / "xi1.75-s0" / "history.parquet", HISTORY)
    assert result["H"] == H and 0 <= result["at"]["H_eval"]["accuracy"] <= 1
    assert json.loads((tmp_path / "sweep" / "xi1.75-s0" / "eval.json").read_text()) == \
        json.loads(json.dumps(to_json_safe(result)))
    assert not list((tmp_path / "sweep").glob(".*.work"))
    # the token budget stopped it: over budget now, under it one step before, before max_steps
    cum = hist["cum_generated_tokens"].tolist()
    assert cum[-1] >= 700 > cum[-2]
    assert len(hist) < 60
    assert (hist["H"] == H).all() and hist["step"].tolist() == list(range(1, len(hist) + 1))
    assert (hist["cum_generated_tokens"] == hist["generated_tokens"].cumsum()).all()

    # MLflow: one FINISHED run with per-step metrics; generated tokens agree with TRL's own count
    client = mlflow.MlflowClient()
    (run,) = client.search_runs(client.get_experiment_by_name("relbudget").experiment_id)
    assert run.info.status == "FINISHED" and run.data.tags["regime"] == "xi1.75-s0"
    trl_len = {m.step: m.value for m in client.get_metric_history(run.info.run_id,
                                                                  "trl/completions/mean_length")}
    batch = TINY_TRAIN["num_generations"] * TINY_TRAIN["prompts_per_step"]
    for r in hist.itertuples():
        assert r.generated_tokens == round(trl_len[r.step] * batch)
    assert len(client.get_metric_history(run.info.run_id, "xi_t")) >= 1
    assert run.data.metrics["summary/generated_tokens"] == cum[-1]
    assert run.data.metrics["cum_generated_tokens"] == cum[-1]  # the per-step metric's last value
    # timings go to MLflow, never into the tracked history; the headline gain against the base
    assert "wall_seconds" not in hist and run.data.metrics["summary/train_seconds"] > 0
    assert run.data.metrics["gain"] == pytest.approx(result["at"]["H_eval"]["accuracy"] - 0.25)
    # the prompts it trained on, as an MLflow dataset input
    assert [(i.dataset.name, i.tags[0].value) for i in run.inputs.dataset_inputs] == [
        ("prompts-train", "training")]


def test_a_missing_regime_is_named_with_those_present(tmp_path):
    from relbudget.measure.budgets import budget_of

    (tmp_path / "budgets.yaml").write_text(yaml.safe_dump(
        {"ample": {"H": 40, "target_xi": 5.0, "regime": "ample"}}))
    with pytest.raises(ValueError, match="regime 'balanced' is not in .*it has: ample"):
        budget_of(tmp_path, "balanced")
