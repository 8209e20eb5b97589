"""Several tasks: the family's E[T] ordering, the universality verdict, and per-task stages that
rerun alone (a real `dvc repro` of the task stages in a temp git+DVC repo, tiny params)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from flows.dag import plan
from relbudget.core.params import defaults, load_params
from relbudget.measure.task import carry_columns, retry_completion, task_splits
from relbudget.measure.verify import verify
from relbudget.report import tasks as T
from tests.helpers import ROOT
from tests.test_pipeline_dvc import ran_stages, sh, stale


# ------------------------------------------------------------- the family: known E[T] ordering

def trace_T(prompt: str, answer: str, rng: np.random.Generator) -> int:
    """T (one token a character) of a pre-training trace of the base policy on `prompt`: what
    the policy learns to imitate, so its E[T] ordering is the tasks' by construction."""
    b = defaults().base_policy
    xs = [int(x) for x in prompt.rstrip("=").split("+")]
    text, ended = retry_completion(xs, rng, b.slip_carry, b.slip_plain, 1.0, 4000)
    v = verify(text, answer, "int", ended)
    assert v.first_correct_chars is not None  # 4000 characters: some attempt is right
    return v.first_correct_chars


def test_tasks_by_carry_columns_order_E_T():
    rng = np.random.default_rng(0)
    E_T = {}
    for carries in ([0], [1], [2]):
        train, eval_ = task_splits(150, 50, [2], carries, 2, 0, "retry")
        assert not set(train["prompt"]) & set(eval_["prompt"])  # disjoint splits
        xs = [[int(x) for x in p.rstrip("=").split("+")] for p in train["prompt"]]
        assert {sum(carry_columns(x)) for x in xs} == set(carries)
        assert set(train["level"]) == {2} and all(9 < x < 100 for x in np.ravel(xs))
        E_T[carries[0]] = np.mean([trace_T(p, a, rng) for p, a in zip(train["prompt"],
                                                                      train["answer"])])
    assert E_T[0] < E_T[1] < E_T[2]
    assert E_T[2] / E_T[0] >= 2.5, E_T  # the span the cross-task study needs


def test_a_task_too_narrow_for_its_prompts_is_refused():
    # one-digit sums without a carry: 55 problems in all
    with pytest.raises(ValueError, match="cannot draw 60 distinct problems .* carry columns"):
        task_splits(50, 10, [1], [0], 2, 0, "retry")


# ------------------------------------------------------------ the verdict on hand-made tables

def sweep(E_T: float, peak_at, spread: float = 0.01) -> pd.DataFrame:
    """Three seeds per xi of a grid; the gain falls off from the xi where `peak_at(xi, H)` is
    zero, with a seed noise far below the gaps between xi."""
    rows = []
    for xi in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0):
        H = max(1, round(xi * E_T))
        for seed, noise in enumerate((-spread, 0.0, spread)):
            rows.append({"xi": xi, "seed": seed, "H": H,
                         "gain_per_100k": 1.0 - abs(peak_at(xi, H)) + noise})
    return pd.DataFrame(rows)


def test_peaks_at_one_xi_align_in_xi_not_in_H():
    tasks = [T.task_result(name, E_T, sweep(E_T, lambda xi, H: np.log2(xi)))
             for name, E_T in (("easy", 10.0), ("hard", 40.0))]
    assert [t["peak"]["xi"] for t in tasks] == [1.0, 1.0]
    assert [t["peak_H"]["xi"] for t in tasks] == [10, 40]
    assert T.universality(tasks) == {"peak_xi_common": True, "peak_H_common": False}
    assert "in xi, not in H" in T.verdict(tasks, T.universality(tasks))


def test_peaks_at_one_H_align_in_H_not_in_xi():
    tasks = [T.task_result(name, E_T, sweep(E_T, lambda xi, H: np.log2(H / 40)))
             for name, E_T in (("easy", 10.0), ("hard", 40.0))]
    assert [t["peak"]["xi"] for t in tasks] == [4.0, 1.0]
    assert T.universality(tasks) == {"peak_xi_common": False, "peak_H_common": True}
    h = T.headline(tasks, T.universality(tasks))
    assert h["universality"] == {"peak_xi_common": 0, "peak_H_common": 1}
    assert h["task_peak_xi"]["easy"] == 4.0 and h["task_E_T"]["hard"] == 40.0


def test_overlapping_intervals_share_a_value():
    assert T.common([(0.5, 1.0), (1.0, 2.0)]) and not T.common([(0.5, 1.0), (1.75, 2.0)])


# ------------------------------------------------------------------- stages per task, in DVC

def test_the_flow_runs_each_task_after_its_own_stages():
    """The Prefect flow's DAG, read from dvc.yaml with the cross-task profile."""
    steps = {s.label: s for s in plan(load_params(ROOT / "params" / "tasks.yaml"))}
    cell = steps["task_sweep@carry2-1.75-0"]
    assert (cell.module, cell.key) == ("task_sweep", "carry2-xi1.75-s0")
    assert cell.upstream == ("base_policy", "task_t@carry2", "task_xi@carry2")
    cells = {n for n in steps if n.startswith("task_sweep@")}
    assert len(cells) == 3 * 6 * 3  # tasks x xi x seeds
    assert cells <= set(steps["tasks_report@universality"].upstream)


TASKS = {"plain": {"levels": [1], "carries": [0], "n_train": 8, "n_eval": 4},
         "carry": {"levels": [1], "carries": [1], "n_train": 8, "n_eval": 4}}


@pytest.fixture
def repo(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tasks"].update({"family": TASKS, "report": ["universality"]})
    params["sweep"].update({"xi": [1.0], "seeds": [0]})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (("git", "init", "-q"), ("dvc", "init", "-q")):
        sh(*cmd, cwd=project)
    return project


TASK_STAGES = ("task_t", "task_xi", "task_sweep", "tasks_report")


@pytest.mark.slow
def test_each_task_runs_its_own_stages_and_reruns_alone(repo):
    log = sh("dvc", "repro", "tasks_report@universality", cwd=repo)
    assert {"task_t@plain", "task_xi@carry", "task_sweep@plain-1.0-0", "task_sweep@carry-1.0-0",
            "tasks_report@universality"} <= ran_stages(log)
    m = json.loads((repo / "data/report/tasks/metrics.json").read_text())
    assert [t["task"] for t in m["tasks"]] == ["plain", "carry"]
    assert set(m["universality"]) == {"peak_xi_common", "peak_H_common"}
    assert [s["xi"] for s in m["tasks"][0]["sweep"]] == [1.0]

    # One task's params change: its own stages (and the cross-task report), none of the other's.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tasks"]["family"]["carry"]["n_eval"] = 5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stale(repo, *TASK_STAGES) == {"task_t@carry", "task_xi@carry",
                                         "task_sweep@carry-1.0-0", "tasks_report@universality"}
