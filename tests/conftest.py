"""Shared fixtures: an isolated MLflow store, and a project copy for stage runs (tiny params from
tests/helpers.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, no_outside_pipeline, tiny_params


# The test files that take longest, longest first (seconds each on this machine's 2 cores, from
# `--durations=0`). scripts/test.sh hands whole files to the two pytest-xdist workers in
# collection order (`--dist loadfile --no-loadscope-reorder`), so these start first and the many
# short files fill in at the end. xdist's own order (most tests first) started the 6-minute
# one-test pipeline file last, with the other worker idle for its whole run.
LONGEST_FIRST = ("test_pipeline_dvc.py",  # 386
                 "test_fanout.py",  # 236
                 "test_reliability_inputs.py",  # 191
                 "test_flow.py",  # 154
                 "test_reliability.py",  # 133
                 "test_browser.py",  # 127
                 "test_stages.py",  # 96
                 "test_dvc_refusals.py",  # 75
                 "test_smollm2.py",  # 60
                 "test_interfaces.py",  # 57
                 "test_tasks.py",  # 49
                 "test_tracking.py")  # 49


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep order


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    no_outside_pipeline(monkeypatch)
    return uri


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A copy of the project (code, dvc.yaml, tiny params.yaml) in a temp dir, cwd set to it."""
    dest = tmp_path / "proj"
    dest.mkdir()
    for name in ("relbudget", "stages", "flows"):
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", dest / "dvc.yaml")
    (dest / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    monkeypatch.chdir(dest)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{dest / 'mlflow.db'}")
    no_outside_pipeline(monkeypatch)
    return dest
