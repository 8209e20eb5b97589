"""A real `dvc repro` of the whole pipeline in a temporary git+DVC repo, at tiny sizes.

The refusals of `dvc repro` (bad params, the flow beside it) are in tests/test_dvc_refusals.py:
this file's one test is the suite's longest, and pytest-xdist runs one file per worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from relbudget.core.schemas import HISTORY, ROLLOUTS, read_table
from tests.helpers import git_dvc_init, ran_stages, sh, stale

pytestmark = pytest.mark.slow


def edit_reruns(repo: Path, path: str, old: str, new: str) -> set[str]:
    """The stages `dvc status` lists after replacing the first `old` by `new` in a code file of
    the project; the file is restored afterwards."""
    f = repo / path
    text = f.read_text()
    assert old in text, (path, old)
    f.write_text(text.replace(old, new, 1))
    try:
        return stale(repo)
    finally:
        f.write_text(text)


@pytest.fixture
def repo(project: Path) -> Path:
    # one adaptive arm: the arm stages are one matrix template (tests/test_stages.py runs each
    # arm's code); two more would add ~30 s of training to the suite's longest test
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["arms"]["arms"] = ["controller"]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return git_dvc_init(project)


def test_repro_runs_all_then_nothing_then_only_downstream(repo: Path):
    log = sh("dvc", "repro", cwd=repo)
    assert ran_stages(log) == {"check_params", "prepare", "base_policy", "sample_t", "xi",
                               "evaluate_base", "sweep@1.0-0", "sweep@2.0-0", "arm@controller-0",
                               "fixed_best@0", "report"}

    # Outputs exist and pass their schemas.
    rollouts = read_table(repo / "data/rollouts/base.parquet", ROLLOUTS)
    assert len(rollouts) == 8 * 4
    summary = json.loads((repo / "data/xi/summary.json").read_text())
    assert {"E_T", "E_T_ci", "unsolved_share", "horizons"} <= set(summary)
    assert summary["E_T_within"] <= summary["E_T"]  # both readings of T; restarts add the misses
    budgets = yaml.safe_load((repo / "data/xi/budgets.yaml").read_text())
    assert set(budgets) == {"low", "high"} and budgets["low"]["H"] <= budgets["high"]["H"]
    assert not (repo / "data/train").exists() and not (repo / "data/models/low").exists()
    report = (repo / "data/report/report.md").read_text()
    assert "| low |" in report and "| high |" in report
    for png in ("xi_curves.png", "learning_curves.png", "efficiency.png", "xi_t_sweep.png",
                "tokens_to_target.png", "predicted.png"):
        assert (repo / "data/report" / png).read_bytes()[:4] == b"\x89PNG"
    # the sweep cells: H = xi * E[T] from the xi stage, aggregated by the report
    metrics = json.loads((repo / "data/report/metrics.json").read_text())
    assert [(c["xi"], c["seed"]) for c in metrics["sweep"]] == [(1.0, 0), (2.0, 0)]
    assert [c["H"] for c in metrics["sweep"]] == [max(1, int(x * summary["E_T"] + 0.5)) for x in (1, 2)]
    assert metrics["peak"]["xi"] in (1.0, 2.0) and "paper's band" in metrics["peak_sentence"]
    # the regimes (low = xi 1, high = xi 2) are those cells: the same numbers, never other runs
    by_xi = {r["xi"]: r for r in metrics["sweep_by_xi"]}
    for name, xi in (("low", 1.0), ("high", 2.0)):
        row = metrics["regimes"][name]
        assert (row["target_xi"], row["H"], row["n_seeds"]) == (xi, by_xi[xi]["H"], 1)
        assert row["gain_per_100k"] == by_xi[xi]["gain_per_100k"]
        assert row["acc_H_eval"] == by_xi[xi]["acc_H_eval"]
    # the base's accuracy at a regime's H is read from its one pass (cap 1.5 x E[T] here): xi 1
    # is inside it, xi 2 past it and not extrapolated
    assert 0 <= metrics["regimes"]["low"]["acc_own_H_base"] <= 1
    assert metrics["regimes"]["high"]["acc_own_H_base"] is None
    # the prediction made at the xi stage, judged against the sweep
    assert [r["xi"] for r in metrics["prediction"]["curve"]] == [1.0, 2.0]
    assert metrics["prediction"]["predicted_peak_xi"] in (1.0, 2.0)
    assert "## Predicted before training against measured" in report
    for cell in ("xi1.0-s0", "xi2.0-s0"):
        read_table(repo / f"data/sweep/{cell}/history.parquet", HISTORY)
        at = json.loads((repo / f"data/sweep/{cell}/eval.json").read_text())["at"]
        assert "first_answer_accuracy" in at["H_eval"]
        # evaluate.h_multiples (tiny: 0.75, 1.5) x E[T], read from the same pass
        assert {n: at[n]["H"] for n in ("x0.75", "x1.5")} == {
            f"x{m:g}": max(1, int(m * summary["E_T"] + 0.5)) for m in (0.75, 1.5)}
    # the peak under each choice: 3 evaluation horizons x 2 readings of T
    assert [(r["h_eval"], r["reading"]) for r in metrics["robustness"]] == [
        (h, t) for h in ("H_eval", "x0.75", "x1.5") for t in ("restart", "within")]
    assert "Peak xi (interval) under each choice" in report and metrics["robustness_sentence"]
    assert not list((repo / "data/sweep").glob(".*.work"))  # no weights or checkpoints left
    # the budget arms, compute-matched with the sweep, each evaluated along training (eval_at)
    assert 0 < metrics["target_accuracy"] <= 1
    assert {(a["arm"], a["seed"]) for a in metrics["arms"]} == {("fixed_best", 0), ("controller", 0)}
    best = [a for a in metrics["arms"] if a["arm"] == "fixed_best"][0]
    assert best["xi"] == metrics["peak"]["xi"]  # the sweep's best xi, rerun
    for a in metrics["arms"]:
        h = read_table(repo / f"data/arms/{a['arm']}-s0/history.parquet", HISTORY)
        assert h["acc_H_eval"].notna().sum() == 1  # eval_at [100], then the final evaluation
        assert a["generated_tokens"] == h["cum_generated_tokens"].iloc[-1] >= 300
    assert "Adaptive budgets against the best fixed xi" in report

    # One MLflow run per stage execution, all FINISHED, tagged by stage and regime.
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["relbudget"])
    parents, runs = runs[runs["tags.stage"] == "pipeline"], runs[runs["tags.stage"] != "pipeline"]
    assert len(runs) == 11
    assert set(runs["status"]) == {"FINISHED"}
    # one dvc repro = one pipeline run: one parent, every stage run its child, one shared tag
    assert len(parents) == 1 and parents["tags.pipeline_run"].iloc[0].startswith("dvc-repro-")
    assert set(runs["tags.mlflow.parentRunId"]) == set(parents["run_id"])
    assert set(runs["tags.pipeline_run"]) == set(parents["tags.pipeline_run"])
    assert set(runs["tags.regime"]) == {"", "base", "xi1.0-s0", "xi2.0-s0", "controller-s0", "0"}

    # Nothing changed: nothing runs but the check of params (always_changed, a few seconds).
    assert ran_stages(sh("dvc", "repro", cwd=repo)) == {"check_params"}
    # Bytecode caches are not code: an import of the report's layer with bytecode writing on
    # (Python's default) leaves relbudget/report/__pycache__/ in a folder the report's deps
    # name, and .dvcignore keeps it out of the folder's hash.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", "import relbudget.report.render"], cwd=repo, env=env,
                   check=True, timeout=120)
    assert list((repo / "relbudget/report/__pycache__").glob("render.*.pyc"))
    assert stale(repo) == {"check_params"}

    # Reruns follow meaning: rewording the report reruns the report alone (no training run
    # depends on its words); an estimator edit reruns what measures and trains, never the data
    # or the pre-training of the base policy.
    assert edit_reruns(repo, "relbudget/report/render.py", "# relbudget report",
                       "# The relbudget report") == {"check_params", "report"}
    rerun = edit_reruns(repo, "relbudget/measure/estimators.py", "\n", "\n# an edit\n")
    assert {"xi", "sweep@1.0-0", "report"} <= rerun and not rerun & {"prepare", "base_policy"}, rerun

    # Forced rerun with unchanged inputs: every output has the same bytes (no timings, fixed plot
    # metadata), so dvc.lock does not change (a fresh clone's `git status` stays clean). One stage
    # of each kind of code: pre-training, sampling, the estimates and their plot, a cell (GRPO
    # training and its evaluation pass), the report and its plots. The stages left out share
    # that code (evaluate_base samples like sample_t; an arm trains and evaluates like a cell;
    # prepare writes the seeded data the others read); the full default study is checked the
    # same way by hand (docs/pipeline.md), as the suite cannot afford it twice.
    lock = (repo / "dvc.lock").read_text()
    once = ["base_policy", "sample_t", "xi", "sweep@1.0-0", "report"]
    assert ran_stages(sh("dvc", "repro", "-f", "-s", *once, cwd=repo)) == set(once)
    assert (repo / "dvc.lock").read_text() == lock

    # One swept xi (and the regime named there) changes: only that cell, fixed_best (the best xi
    # may move), xi (its prediction covers the grid; the cells read E_T.json, whose bytes stay)
    # and report are stale; the adaptive arms do not depend on the grid. (`dvc status` and
    # `dvc repro` read the same stage hashes; the report's leaving out of a cell no longer in
    # the grid is tests/test_dvc_metrics.py's, without training it here.)
    original = (repo / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["sweep"]["xi"], params["regimes"]["high"] = [1.0, 1.5], 1.5  # a regime is a grid xi
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # (check_params runs at every repro; its mark keeps its bytes, so it reruns nothing)
    assert stale(repo) == {"check_params", "xi", "sweep@1.5-0", "fixed_best@0", "report"}

    # A train param changes (on the grid that ran): every stage that trains is stale (evaluate
    # and report follow from their outputs), never the data, the base policy, its rollouts or xi.
    params = yaml.safe_load(original)
    params["train"]["lr"] = 2e-4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stale(repo) == {"check_params", "sweep@1.0-0", "sweep@2.0-0", "arm@controller-0",
                           "fixed_best@0"}
