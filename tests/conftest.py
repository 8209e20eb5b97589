"""Shared fixtures: an isolated MLflow store, and a project copy for stage runs (tiny params from
tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import no_outside_pipeline, project_copy, tiny_params


# The test files that take longest, longest first (seconds each on this machine's 2 cores, from
# `--durations=0`). scripts/test.sh hands whole files to the two pytest-xdist workers in
# collection order (`--dist loadfile --no-loadscope-reorder`), so these start first and the many
# short files fill in at the end. xdist's own order (most tests first) started the 6-minute
# one-test pipeline file last, with the other worker idle for its whole run.
LONGEST_FIRST = ("test_pipeline_dvc.py",  # 262
                 "test_fanout.py",  # 173
                 "test_flow.py",  # 145
                 "test_reliability_inputs.py",  # 115
                 "test_reliability.py",  # 105
                 "test_browser.py",  # 89
                 "test_stages.py",  # 61
                 "test_smollm2.py",  # 54
                 "test_dvc_refusals.py",  # 47
                 "test_interfaces.py",  # 45
                 "test_tracking.py",  # 41
                 "test_tasks.py",  # 31
                 "test_dvc_metrics.py")  # 31


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
    dest = project_copy(tmp_path / "proj", tiny_params())
    monkeypatch.chdir(dest)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{dest / 'mlflow.db'}")
    no_outside_pipeline(monkeypatch)
    return dest
