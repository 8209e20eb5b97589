"""Several tasks: the family's E[T] ordering, the universality verdict, the flow's DAG, and
per-task stages that go stale alone (`dvc status` in a temp git+DVC repo, tiny params)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from flows.dag import plan
from relbudget.core.params import ParamsError, defaults, load_params, params_with, task_cell_name
from relbudget.core.paths import stage_files
from relbudget.core.schemas import PROMPTS, ROLLOUTS, read_table
from relbudget.measure.estimators import horizon_for
from relbudget.measure.evaluation import metrics_at
from relbudget.measure.task import carry_columns, retry_completion, task_splits
from relbudget.measure.verify import verify
from relbudget.report import tasks as T
from stages import task_sweep, task_t, task_xi, tasks_report
from stages._cli import execute
from tests.helpers import ROOT, pretrained, sh, stale


# ------------------------------------------------------------- the family: known E[T] ordering

def trace_T(prompt: str, answer: str, rng: np.random.Generator, b) -> int:
    """T (one token a character) of a pre-training trace of the base policy `b` (its params) on
    `prompt`: what the policy learns to imitate, so its E[T] ordering is the tasks' by
    construction."""
    xs = [int(x) for x in prompt.rstrip("=").split("+")]
    text, ended = retry_completion(xs, rng, b.slip_carry, b.slip_plain, 1.0, 4000)
    v = verify(text, answer, "int", ended)
    assert v.first_correct_chars is not None  # 4000 characters: some attempt is right
    return v.first_correct_chars


def test_tasks_by_carry_columns_order_E_T():
    rng, b = np.random.default_rng(0), defaults().base_policy  # (reads params.yaml: once)
    E_T = {}
    for carries in ([0], [1], [2]):
        train, eval_ = task_splits(150, 50, [2], carries, 2, 0, "retry")
        assert not set(train["prompt"]) & set(eval_["prompt"])  # disjoint splits
        xs = [[int(x) for x in p.rstrip("=").split("+")] for p in train["prompt"]]
        assert {sum(carry_columns(x)) for x in xs} == set(carries)
        assert set(train["level"]) == {2} and all(9 < x < 100 for x in np.ravel(xs))
        E_T[carries[0]] = np.mean([trace_T(p, a, rng, b) for p, a in zip(train["prompt"],
                                                                      train["answer"])])
    assert E_T[0] < E_T[1] < E_T[2]
    assert E_T[2] / E_T[0] >= 2.5, E_T  # the span the cross-task study needs


def test_a_task_too_narrow_for_its_prompts_is_refused():
    # one-digit sums without a carry: 55 problems in all
    with pytest.raises(ValueError, match="cannot draw 60 distinct problems .* carry columns"):
        task_splits(50, 10, [1], [0], 2, 0, "retry")


@pytest.mark.parametrize("tasks, message", [
    ({"family": {"a": {"levels": [3], "carries": None, "n_train": 8, "n_eval": 4}}},
     r"tasks.family.a.levels \[3\]: .* data.levels \[1, 2\]"),
    ({"family": {"a-b": {"levels": [1], "carries": None, "n_train": 8, "n_eval": 4}}},
     "task name 'a-b' must be an ASCII identifier"),
    ({"family": {"a": {"levels": [1], "carries": [], "n_train": 8, "n_eval": 4}}},
     "carries must be null or a non-empty list"),
    ({"report": ["universality"]}, "tasks.report compares tasks: list two or more"),
])
def test_bad_tasks_are_refused_by_name(tasks, message):
    with pytest.raises(ParamsError, match=message):
        params_with({"tasks": tasks})


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
    assert [t["peak_H"]["H"] for t in tasks] == [10, 40]
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


def test_a_tasks_prediction_is_scored_against_its_own_sweep():
    # predicted before training: the peak at xi 1, the curve a tent over log2 xi, like the sweep
    E_T, grid = 10.0, [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    table = sweep(E_T, lambda xi, H: np.log2(xi)).assign(generated_tokens=1000)
    predicted = {"best_xi": 1.0, "static_best_xi": 0.5, "prediction_tokens": 900,
                 "curve": [{"xi": x, "H": max(1, round(x * E_T)),
                            "predicted": 1.0 - abs(np.log2(x)) / 3, "static": 1.0}
                           for x in grid]}
    t = T.task_result("easy", E_T, table, predicted)
    assert t["predicted_peak_xi"] == 1.0 and t["peak_inside"] is True
    assert t["spearman"] == pytest.approx(1.0)  # the same order over the grid
    assert (t["prediction_tokens"], t["sweep_tokens"]) == (900, 18 * 1000)
    assert [r["predicted"] for r in t["sweep"]] == [c["predicted"] for c in predicted["curve"]]
    md = "\n".join(T.prediction_table([t]))
    assert "| easy | 1 (inside) | 1 [1, 1] | 1.00 |" in md and "900 (5.0%)" in md
    # a task_xi output from before the prediction: the keys are there, empty
    old = T.task_result("easy", E_T, table)
    assert all(old[k] is None for k in T.PREDICTION_KEYS) and T.prediction_table([old]) == []


def test_overlapping_intervals_share_a_value():
    assert T.common([(0.5, 1.0), (1.0, 2.0)]) and not T.common([(0.5, 1.0), (1.75, 2.0)])


# ------------------------------------------------------------------- stages per task, in DVC

def test_the_flow_runs_each_task_after_its_own_stages():
    """The Prefect flow's DAG, read from dvc.yaml with the cross-task profile."""
    steps = {s.label: s for s in plan(load_params(ROOT / "params" / "tasks.yaml"))}
    cell = steps["task_sweep@carry2-1.75-0"]
    assert (cell.module, cell.key) == ("task_sweep", "carry2-xi1.75-s0")
    assert cell.upstream == ("check_params", "base_policy", "task_t@carry2", "task_xi@carry2")
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
    params["regimes"] = {"low": 1.0}  # a regime is a xi of the grid
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (("git", "init", "-q"), ("dvc", "init", "-q")):
        sh(*cmd, cwd=project)
    return project


TASK_STAGES = ("task_t", "task_xi", "task_sweep", "tasks_report")


def put(path: Path) -> None:
    """A file (a name with a suffix) or a folder holding one, with a fixed content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix:
        path.write_text("x")
    else:
        path.mkdir(exist_ok=True)
        (path / "f").write_text("x")


def record_done(repo: Path) -> None:
    """Record the task stages in dvc.lock as run, without their compute: every data file they
    read or write is put in place and `dvc commit` hashes it with the params. What is tested is
    which stages DVC ties to which params and files (the stages' own runs: tests/test_stages.py)."""
    params = load_params(repo / "params.yaml")
    keys = {"task_t": list(TASKS), "task_xi": list(TASKS), "tasks_report": ["universality"],
            "task_sweep": [task_cell_name(t, x, s) for t in TASKS for x in params.sweep.xi
                           for s in params.sweep.seeds]}
    files = [stage_files(params.paths, stage, key) for stage in keys for key in keys[stage]]
    for f in files:  # the report's deps are the task folders, which the others fill
        for path in (*f.deps, *f.outputs):
            if path != params.paths.tasks:
                put(repo / path)
    sh("dvc", "commit", "-f", *TASK_STAGES, cwd=repo)


@pytest.mark.slow
def test_one_tasks_params_make_only_its_stages_stale(repo):
    record_done(repo)
    assert stale(repo, *TASK_STAGES) == set()

    # One task's params change: its own stages and the cross-task report, none of the other's.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tasks"]["family"]["carry"]["n_eval"] = 5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stale(repo, *TASK_STAGES) == {"task_t@carry", "task_xi@carry",
                                         "task_sweep@carry-1.0-0", "tasks_report@universality"}

    # The relative evaluation cap is every task's: their evaluations and cells, not their prompts.
    params["tasks"]["family"]["carry"]["n_eval"] = 4
    params["tasks"]["h_eval_xi"] = 2.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stale(repo, *TASK_STAGES) == {"task_xi@plain", "task_xi@carry", "task_sweep@plain-1.0-0",
                                         "task_sweep@carry-1.0-0", "tasks_report@universality"}


# ------------------------------------------------------------------ the stages, run for real

@pytest.mark.slow
def test_task_stages_measure_each_task_on_its_own_prompts(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tasks"]["family"] = {"any": {"levels": [1], "carries": None, "n_train": 8, "n_eval": 4},
                                 "plain": {"levels": [1], "carries": [0], "n_train": 8, "n_eval": 4}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    params = load_params(repo / "params.yaml")
    pretrained(repo / params.paths.base_model)
    for task in params.tasks.family:
        execute("task_t", task_t.run, params, task_t.SECTIONS, task)
        summary = execute("task_xi", task_xi.run, params, task_xi.SECTIONS, task)
        cell = execute("task_sweep", task_sweep.run, params, task_sweep.SECTIONS,
                       task_cell_name(task, 1.0, 0))
        p = params.paths.task(task)
        prompts = read_table(p.prompts("train"), PROMPTS)
        rollouts = read_table(p.rollouts, ROLLOUTS)
        assert set(rollouts["prompt_id"]) == set(prompts["prompt_id"])  # the task's own prompts
        assert summary["H_eval"] == horizon_for(params.tasks.h_eval_xi, summary["E_T"])
        assert cell["H"] == horizon_for(1.0, summary["E_T"]) and cell["task"] == task
        assert cell["at"]["H_eval"] == metrics_at(read_table(p.cell_rollouts(cell["cell"]),
                                                             ROLLOUTS), summary["H_eval"], [1])
    xs = [[int(x) for x in q.rstrip("=").split("+")]
          for q in read_table(params.paths.task("plain").prompts("eval"), PROMPTS)["prompt"]]
    assert all(sum(x) < 10 for x in xs)  # no carry
    out = execute("tasks_report", tasks_report.run, params, tasks_report.SECTIONS, "universality")
    assert [t["task"] for t in out["tasks"]] == ["any", "plain"]
    assert (repo / params.paths.tasks_headline).is_file()
