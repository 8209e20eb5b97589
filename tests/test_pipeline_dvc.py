"""A real `dvc repro` of the whole pipeline in a temporary git+DVC repo, at tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from relbudget.schemas import HISTORY, ROLLOUTS, read_table

pytestmark = pytest.mark.slow


def sh(*cmd: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def ran_stages(log: str) -> set[str]:
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}


@pytest.fixture
def repo(project: Path) -> Path:
    sh("git", "init", "-q", cwd=project)
    sh("dvc", "init", "-q", cwd=project)
    sh("dvc", "config", "core.analytics", "false", cwd=project)
    return project


def test_repro_runs_all_then_nothing_then_only_downstream(repo: Path):
    log = sh("dvc", "repro", cwd=repo)
    assert ran_stages(log) == {"prepare", "base_policy", "sample_t", "xi", "train@low",
                               "train@high", "evaluate@low", "evaluate@high", "evaluate_base",
                               "report"}

    # Outputs exist and pass their schemas.
    rollouts = read_table(repo / "data/rollouts/base.parquet", ROLLOUTS)
    assert len(rollouts) == 8 * 4
    summary = json.loads((repo / "data/xi/summary.json").read_text())
    assert {"E_T", "E_T_ci", "unsolved_share", "horizons"} <= set(summary)
    budgets = yaml.safe_load((repo / "data/xi/budgets.yaml").read_text())
    assert set(budgets) == {"low", "high"} and budgets["low"]["H"] <= budgets["high"]["H"]
    for r in ("low", "high"):
        read_table(repo / f"data/train/{r}/history.parquet", HISTORY)
        assert (repo / f"data/models/{r}/config.json").exists()
        assert "H_eval" in json.loads((repo / f"data/eval/{r}.json").read_text())["at"]
    report = (repo / "data/report/report.md").read_text()
    assert "| low |" in report and "| high |" in report
    for png in ("xi_curves.png", "learning_curves.png", "efficiency.png"):
        assert (repo / "data/report" / png).read_bytes()[:4] == b"\x89PNG"

    # One MLflow run per stage execution, all FINISHED, tagged by stage and regime.
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["relbudget"])
    assert len(runs) == 10
    assert set(runs["status"]) == {"FINISHED"}
    assert set(runs["tags.regime"]) == {"", "low", "high", "base"}

    # Nothing changed: nothing runs.
    assert ran_stages(sh("dvc", "repro", cwd=repo)) == set()

    # A train param changes: only train, evaluate of the regimes and report run.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lr"] = 2e-4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(sh("dvc", "repro", cwd=repo)) == {
        "train@low", "train@high", "evaluate@low", "evaluate@high", "report"}


def test_bad_params_fail_before_any_work(repo: Path):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sampling"]["max_tokns"] = 10
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=repo, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "sampling.max_tokns" in out.stderr and "did you mean 'max_tokens'" in out.stderr
    assert not (repo / "data").exists()
