"""train.budget controller / per_prompt and train.prompt_filter on the real TRL trainer (tiny)."""

from __future__ import annotations

import pytest

from relbudget.train.grpo import BudgetReward, train_policy
from relbudget.measure.models import load_saved
from relbudget.core.params import PerPromptParams, PromptFilterParams, TrainParams
from relbudget.train.prompt_budgets import filter_prompts, per_prompt_caps
from relbudget.measure.sampling import hf_generate_fn, requests_from, sample_table
from relbudget.core.schemas import HISTORY, validate
from relbudget.measure.task import builtin_splits
from tests.helpers import TINY_TRAIN, killed_at_step_3, pretrained


@pytest.fixture(scope="module")
def rambler(tmp_path_factory):
    """Writes guesses after its answer, so a cap of ~10-30 tokens really cuts completions."""
    return pretrained(tmp_path_factory.mktemp("rambler"), after_answer="|A:0|A:0|A:0")


@pytest.fixture(scope="module")
def prompts():
    return builtin_splits(16, 4, [1], 2, seed=0)[0]


@pytest.fixture(scope="module")
def rollouts(rambler, prompts):
    model, tok = load_saved(rambler)
    gen = hf_generate_fn(model, tok, 40, 1.0, 1.0, True, 64)
    return sample_table(gen, tok, requests_from(prompts), 4, 40, 0, "base", 16)


def _watch(monkeypatch):
    """What the trainer generated, as the (real) reward receives it: (prompt, ids) per completion."""
    seen, real = [], BudgetReward.__call__

    def keep(self, prompts, completions, completion_ids, *a, **kw):
        seen.append((list(prompts), [list(c) for c in completion_ids], self.H))
        return real(self, prompts, completions, completion_ids, *a, **kw)

    monkeypatch.setattr(BudgetReward, "__call__", keep)
    return seen


@pytest.mark.parametrize("after_answer", ["keep", "stop"])  # TRL's generate / our rollout_func
def test_controller_moves_H_and_generation_respects_it(after_answer, rambler, prompts, tmp_path,
                                                       monkeypatch):
    seen = _watch(monkeypatch)
    t = TrainParams.of_project(stop="steps", max_steps=5, after_answer=after_answer, budget="controller",
                    controller=dict(target_xi=0.1, every=1, h_min=6, h_max=30, smoothing=0.0),
                    **TINY_TRAIN)
    model, tok = load_saved(rambler)
    _, hist = train_policy(model, tok, prompts, t, 30, tmp_path / "work")
    validate(hist, HISTORY)
    assert {"E_T_est", "H_next"} <= set(hist.columns)
    assert hist["H"].nunique() > 1, hist[["H", "E_T", "E_T_est", "H_next"]]  # H_t moved
    assert (hist["H"].iloc[1:].to_numpy() == hist["H_next"].iloc[:-1].to_numpy()).all()
    assert hist["H"].between(6, 30).all()
    assert len(seen) == len(hist)
    for (_, ids, H_seen), H_t in zip(seen, hist["H"]):
        assert H_seen == H_t
        assert max(len(c) for c in ids) <= H_t  # no completion exceeds the step's H_t
    assert (hist["max_length"] <= hist["H"]).all()


@pytest.mark.parametrize("after_answer", ["keep", "stop"])
def test_per_prompt_caps_are_applied_per_request(after_answer, rambler, prompts, rollouts, tmp_path,
                                                 monkeypatch):
    pp = PerPromptParams.of_project(target_xi=0.2, shrink=2.0, h_min=6, h_max=30)
    kept, summary = per_prompt_caps(rollouts, prompts, pp)
    assert summary["n_kept"] == len(kept) == len(prompts)
    assert summary["H_x_q00"] <= summary["H_x_q50"] <= summary["H_x_q100"]
    assert kept["H_x"].between(6, 30).all() and kept["H_x"].nunique() > 1
    caps = dict(zip(kept["prompt"], kept["H_x"]))

    seen = _watch(monkeypatch)
    t = TrainParams.of_project(stop="steps", max_steps=3, after_answer=after_answer, budget="per_prompt",
                    **TINY_TRAIN)
    model, tok = load_saved(rambler)
    _, hist = train_policy(model, tok, kept, t, int(kept["H_x"].max()), tmp_path / "work")
    validate(hist, HISTORY)
    hit_cap = 0
    for ps, ids, _ in seen:
        for p, c in zip(ps, ids):
            assert len(c) <= caps[p]
            hit_cap += len(c) == caps[p]
    assert hit_cap > 0  # the per-request caps bind

    drop = per_prompt_caps(rollouts, prompts, pp.model_copy(update={"unsolved": "drop"}))[1]
    assert drop["n_kept"] == len(prompts) - drop["n_unsolved"]


def test_prompt_filter_counts_and_refusal(prompts, rollouts):
    from relbudget.measure import estimators as est

    pp = est.per_prompt(rollouts).set_index("prompt_id")
    xi_x = (20 / pp["E_T"]).reindex(prompts["prompt_id"].astype(str))
    lo, hi = float(xi_x.quantile(0.25)), float(xi_x.quantile(0.75))
    kept, counts = filter_prompts(rollouts, prompts, PromptFilterParams(xi_band=(lo, hi), H=None), 20)
    assert counts["n_kept"] == len(kept) == int(((xi_x >= lo) & (xi_x <= hi)).sum()) > 0
    assert counts["n_prompts"] == len(prompts) and counts["filter_H"] == 20
    with pytest.raises(ValueError, match=r"kept no prompt.*\[50, 60\] at H = 20"):
        filter_prompts(rollouts, prompts, PromptFilterParams(xi_band=(50, 60), H=None), 20)
    # an explicit H wins over the regime's
    assert filter_prompts(rollouts, prompts, PromptFilterParams(xi_band=(0, 1e9), H=7), 20)[1][
        "filter_H"] == 7


def test_train_stage_applies_filter_then_per_prompt(prompts, rollouts, tmp_path):
    from relbudget.core.params import params_with
    from relbudget.core.schemas import ROLLOUTS, write_table
    from relbudget.train.training import adaptive_budgets

    path = tmp_path / "base.parquet"
    write_table(rollouts, ROLLOUTS, path)
    params = params_with({"allow_outside_paths": True, "paths": {"rollouts": str(path)}, "train": {
        "budget": "per_prompt", "per_prompt": {"target_xi": 0.2, "h_min": 6, "h_max": 30},
        "prompt_filter": {"xi_band": [0.0, 1e9], "H": 20}}})
    kept, H, out = adaptive_budgets(params.train, path, prompts, 20)
    covered = prompts["prompt_id"].isin(rollouts["prompt_id"]).sum()
    assert out["filter_n_kept"] == covered == len(kept) and out["filter_n_prompts"] == len(prompts)
    assert H == kept["H_x"].max() and out["per_prompt_H_x_q100"] == H
    fixed = params_with({"allow_outside_paths": True, "paths": {"rollouts": str(path)}})
    assert adaptive_budgets(fixed.train, path, prompts, 20)[1:] == (20, {})


def test_controller_resumes_at_the_saved_H(rambler, prompts, tmp_path, monkeypatch):
    import pandas as pd


    t = TrainParams.of_project(stop="steps", max_steps=4, checkpoint_every=2, after_answer="stop",
                    budget="controller",
                    controller=dict(target_xi=0.1, every=1, h_min=6, h_max=30, smoothing=0.0), **TINY_TRAIN)
    model, tok = load_saved(rambler)
    _, straight = train_policy(model, tok, prompts, t, 30, tmp_path / "straight")

    model, tok = load_saved(rambler)
    killed_at_step_3(monkeypatch, model, tok, prompts, t, 30, tmp_path / "work")
    model, tok = load_saved(rambler)
    _, resumed = train_policy(model, tok, prompts, t, 30, tmp_path / "work")
    assert list(resumed["step"]) == [1, 2, 3, 4]
    assert straight["H"].nunique() > 1
    pd.testing.assert_frame_equal(resumed, straight)
