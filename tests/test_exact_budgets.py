"""Exact values of budgets.yaml (relbudget.measure.budgets) on a hand-made rollout table with
E[T] = 4 exactly: the plan of a regime, the "rounds below 1" warning exactly at 0.5 token and
just below, the file's bytes, every refusal of the reader and of read_E_T word for word, and the
token budget exactly at what max_steps can reach and one token above.
"""

from __future__ import annotations

import json
import logging

import pytest

from relbudget.core.errors import BudgetError
from relbudget.core.params import TrainParams, XiParams
from relbudget.measure.budgets import (Budget, budget_of, budgets_file, check_token_budget,
                                       plan_budgets, read_budgets, read_E_T, write_budgets)
from tests.synth import tiny_table

# two prompts, each hit at token 4 in both of its attempts: E[T] = 16 / 4 = 4, p(H >= 4) = 1
ROWS = [("a", 4, 4), ("a", 4, 4), ("b", 4, 4), ("b", 4, 4)]
XI = XiParams.of_project(group_size=2)


@pytest.fixture
def table():
    return tiny_table(ROWS, 10)


def test_plan_budgets_by_hand_and_the_half_token_edge(table, caplog):
    with caplog.at_level(logging.WARNING, logger="relbudget.measure.budgets"):
        b = plan_budgets(table, {"balanced": 1.75, "edge": 0.125, "tiny": 0.1}, XI)
    assert list(b) == ["balanced", "edge", "tiny"]
    # 1.75 x 4 = 7 tokens: xi 7/4, every group all-correct, so no group is informative
    assert (b["balanced"].H, b["balanced"].xi, b["balanced"].E_T) == (7, 1.75, 4.0)
    assert (b["balanced"].p, b["balanced"].p_informative, b["balanced"].max_tokens) == (1.0, 0.0, 10)
    assert b["balanced"].regime == "balanced" and b["balanced"].warning is None
    # 0.125 x 4 = 0.5 token exactly: not below 0.5, so no warning (H is still lifted to 1)
    assert b["edge"].H == 1 and b["edge"].warning is None and b["edge"].regime == "deficient"
    assert b["tiny"].H == 1 and b["tiny"].xi == 0.25
    assert b["tiny"].warning == ("target xi 0.1 x E[T] 4.00 = 0.4 tokens rounds below 1; H is "
                                 "set to 1 (achieved xi 0.25)")
    assert [r.getMessage() for r in caplog.records] == [f"regime tiny: {b['tiny'].warning}"]
    # ample above 3: 6 x 4 = 24 tokens, past the table's cap of 10: extrapolated
    (a,) = plan_budgets(table, {"ample": 6.0}, XI).values()
    assert (a.H, a.regime, a.extrapolated, a.p) == (24, "ample", True, None)


def test_budgets_file_bytes_and_round_trip(table, tmp_path):
    budgets = plan_budgets(table, {"balanced": 1.75}, XI)
    path = write_budgets(budgets, tmp_path)
    assert path == budgets_file(tmp_path) == tmp_path / "budgets.yaml"
    text = path.read_text()
    assert text.startswith("balanced:\n  target_xi: 1.75\n  H: 7\n  xi: 1.75\n  E_T: 4.0\n")
    assert text.endswith("  regime: balanced\n")  # written last: a cut file misses it
    assert read_budgets(tmp_path) == budgets
    assert budget_of(tmp_path, "balanced") == budgets["balanced"]


def _write(tmp_path, text: str):
    (tmp_path / "budgets.yaml").write_text(text)
    return tmp_path / "budgets.yaml"


def test_read_budgets_refusals_word_for_word(tmp_path):
    path = tmp_path / "budgets.yaml"
    fix = "the file is damaged or hand-edited: rerun the xi stage"
    cases = [
        (None, f"{path} not found: run the xi stage first"),
        ("- 1\n", f"{path} must map each regime name to its budget, got list: rerun the xi stage"),
        ("{}\n", f"{path} must map each regime name to its budget, got dict: rerun the xi stage"),
        ("balanced: 3\n", f"{path}: regime 'balanced' is not a mapping (got 3); rerun the xi stage"),
        ("balanced: {target_xi: 1.0, H: 4}\n",
         f"{path}: regime 'balanced', field 'regime': Field required; {fix}"),
        ("balanced: {target_xi: -1, H: 4, regime: balanced}\n",
         f"{path}: regime 'balanced', field 'target_xi': Input should be greater than 0 (got -1);"
         f" {fix}"),
        ("balanced: {target_xi: -1, H: 0, regime: balanced}\n",
         f"{path}: regime 'balanced', field 'target_xi': Input should be greater than 0 (got -1) "
         f"and 1 more; {fix}"),
        ("balanced: {target_xi: .inf, H: 4, regime: balanced}\n",
         f"{path}: regime 'balanced', field 'target_xi': Value error, must be finite, got inf "
         f"(got inf); {fix}"),
        ("balanced: {target_xi: 1, H: 4, regime: balanced, extra: 1}\n",
         f"{path}: regime 'balanced', field 'extra': Extra inputs are not permitted (got 1); {fix}"),
    ]
    for text, message in cases:
        if text is not None:
            _write(tmp_path, text)
        with pytest.raises(BudgetError) as err:
            read_budgets(tmp_path)
        assert str(err.value) == message, text


def test_budget_of_names_the_regimes_present(tmp_path):
    _write(tmp_path, "deficient: {target_xi: 0.25, H: 1, regime: deficient}\n"
                     "1: {target_xi: 1, H: 4, regime: balanced}\n")
    assert list(read_budgets(tmp_path)) == ["deficient", "1"]  # every name read as text
    assert budget_of(tmp_path, "1").H == 4
    with pytest.raises(BudgetError) as err:
        budget_of(tmp_path, "ample")
    assert str(err.value) == (f"regime 'ample' is not in {tmp_path / 'budgets.yaml'} (it has: "
                              "deficient, 1); rerun the xi stage after adding it to params.yaml "
                              "regimes")


def test_budget_fields_are_checked_where_declared():
    ok = dict(target_xi=1.0, H=1, regime="balanced")
    assert Budget(**ok).xi is None
    for field, bad in (("xi", float("nan")), ("E_T", float("-inf")), ("H", 0), ("group_size", 1),
                       ("p", 1.5), ("p_informative", -0.1), ("reward_var", -1e-9)):
        with pytest.raises(ValueError, match=field):
            Budget(**{**ok, field: bad})
    assert Budget(**ok, p=1.0, p_informative=0.0, reward_var=0.0, group_size=2).p == 1.0


def test_read_E_T_exact(tmp_path):
    path = tmp_path / "E_T.json"
    with pytest.raises(FileNotFoundError) as err:
        read_E_T(path)
    assert str(err.value) == f"{path} not found: run the xi stage first"
    for raw in ("true", "0", "-1.5", "Infinity", "NaN", '"4"', "null"):
        path.write_text(f'{{"E_T": {raw}}}')
        with pytest.raises(BudgetError) as err:
            read_E_T(path)
        got = repr(json.loads(f"[{raw}]")[0])
        assert str(err.value) == (f"{path}: E_T is {got}; the base policy solved nothing, so no "
                                  "H = xi E[T]"), raw
    path.write_text("{}")
    with pytest.raises(BudgetError, match="E_T is None"):
        read_E_T(path)
    path.write_text('{"E_T": 4}')
    assert read_E_T(path) == 4.0 and type(read_E_T(path)) is float
    path.write_text('{"E_T": 1e-9}')
    assert read_E_T(path) == 1e-9


def test_token_budget_exactly_reachable_and_one_above():
    def train(budget, **kw):
        return TrainParams.of_project(token_budget=budget, max_steps=10, prompts_per_step=2,
                                      num_generations=3, **kw)

    # 10 steps x 2 prompts x 3 completions x 5 tokens = at most 300 tokens
    check_token_budget(train(300), 5, "sweep@xi1.0-s0")
    with pytest.raises(BudgetError) as err:
        check_token_budget(train(301), 5, "sweep@xi1.0-s0")
    assert str(err.value) == (
        "sweep@xi1.0-s0: token_budget 301 cannot be reached: max_steps 10 x prompts_per_step 2 x "
        "num_generations 3 x H 5 = at most 300 tokens; raise train.max_steps to at least 11 or "
        "lower the budget")  # 301 / 30 per step, rounded up
    # the step count is rounded up only when it must be: 330 / 30 = 11 steps, 331 needs 12
    with pytest.raises(BudgetError, match="at most 300 tokens; raise train.max_steps to at least 11 or"):
        check_token_budget(train(330), 5, "x")
    with pytest.raises(BudgetError, match="at least 12 or"):
        check_token_budget(train(331), 5, "x")
    check_token_budget(train(10**6, stop="steps"), 5, "x")  # stops on steps: nothing to reach
