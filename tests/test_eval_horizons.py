"""Accuracy at several horizons from one evaluation pass (`evaluate.h_multiples`), on a real tiny
policy: the readout at h of a pass at a larger cap equals a separate evaluation at cap h with the
same seed, and a cap the policy's context cannot hold is refused before any sampling."""

from __future__ import annotations

import pytest

from relbudget.core.errors import BudgetError, ModelError
from relbudget.core.params import defaults
from relbudget.measure.evaluation import check_cap, evaluate_policy, multiple_horizons
from relbudget.measure.task import builtin_splits
from tests.helpers import pretrained

CAP = 48  # the one pass; the tiny policy's context is 128 positions


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return pretrained(tmp_path_factory.mktemp("policy"))


@pytest.fixture(scope="module")
def prompts():
    return builtin_splits(4, 12, [1], 2, seed=5)[1]


def evaluate(policy, prompts, horizons: dict[str, int], **kw) -> tuple:
    e = defaults().evaluate.model_copy(update={"attempts": 4, "pass_k": [1, 4], "batch_size": 16,
                                               "threads": 1, **kw})
    return evaluate_policy(policy, prompts, horizons, e, defaults().base_policy, "hf", "base")


def test_readout_at_h_equals_a_separate_evaluation_at_cap_h(policy, prompts):
    # this policy's first correct answers come at tokens 10 to 12, so horizons 10 and 11 cut
    horizons = multiple_horizons(10.0, [1.0, 1.1])
    assert horizons == {"x1": 10, "x1.1": 11}
    table, one_pass = evaluate(policy, prompts, {**horizons, "cap": CAP})
    assert one_pass["cap"] == CAP
    # the readout is not trivial: completions run past h, and some hit only after it
    for name, h in horizons.items():
        assert (table["n_tokens"] > h).any()
        assert 0 < one_pass["at"][name]["accuracy"] < one_pass["at"]["cap"]["accuracy"]
        _, alone = evaluate(policy, prompts, {name: h})
        assert alone["cap"] == h
        assert one_pass["at"][name] == alone["at"][name]  # every metric, exactly


def test_a_cap_beyond_the_context_is_refused_before_sampling(policy, prompts):
    longest = max(len(p) for p in prompts["prompt"])  # the char tokenizer: a token per character
    check_cap(policy, prompts, 128 - longest, defaults().base_policy)  # fits exactly
    with pytest.raises(BudgetError, match=r"evaluate\.h_multiples.*at most a cap of "
                                          rf"{128 - longest} tokens"):
        check_cap(policy, prompts, 129 - longest, defaults().base_policy)


def test_the_result_records_the_pass_and_stops_at_the_first_correct_answer(policy, prompts,
                                                                            capfd):
    table, result = evaluate(policy, prompts, {"H_eval": 20, "cap": CAP})
    assert {k: v for k, v in result.items() if k != "at"} == {
        "policy": "base", "cap": CAP, "n_prompts": 12, "attempts": 4, "backend": "hf",
        "answers_per_completion_at_cap": float(table["n_answers"].mean())}
    assert list(result["at"]) == ["H_eval", "cap"]
    assert {"pass@1", "pass@4"} <= set(result["at"]["cap"])  # pass@k up to k = attempts
    assert "evaluate@base" in capfd.readouterr().err  # the progress bar names the pass
    # early exit: a completion stops at its first correct answer, and says so
    assert (table["stop_reason"] == "first_correct").any()
    assert (table.loc[table["stop_reason"] == "first_correct", "n_tokens"]
            == table.loc[table["stop_reason"] == "first_correct", "first_correct_token"]).all()
    # the evaluate section's temperature reaches the sampler: a colder pass samples otherwise
    cold, _ = evaluate(policy, prompts, {"H_eval": 20, "cap": CAP}, temperature=0.3)
    assert not cold["n_tokens"].equals(table["n_tokens"])
    _, fewer = evaluate(policy, prompts, {"cap": CAP}, attempts=2, pass_k=[1, 2, 4])
    assert fewer["attempts"] == 2 and "pass@2" in fewer["at"]["cap"]
    assert "pass@4" not in fewer["at"]["cap"]  # above the attempts: skipped


def test_a_prompt_too_long_for_the_cap_is_refused_by_name(policy, prompts):
    longest = max(len(p) for p in prompts["prompt"])
    with pytest.raises(ModelError, match=rf"^evaluate@base: prompt '.*' is {longest} tokens; "
                                         rf"with H = {129 - longest} it needs 129 positions"):
        evaluate(policy, prompts, {"cap": 129 - longest})
