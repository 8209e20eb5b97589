"""Shared fixtures: an isolated MLflow store, and a project copy for stage runs (tiny params from
tests/helpers.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, no_outside_pipeline, tiny_params


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
