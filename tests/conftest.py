"""Shared fixtures: tiny params, an isolated MLflow store, and a project copy for stage runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Sizes small enough for a whole pipeline in well under a minute of compute on 2 cores.
TINY = {
    # The single-attempt task keeps these pipeline tests fast; tests/test_task_retry.py and
    # test_retry_policy_* cover the self-correcting default.
    "data": {"n_train": 8, "n_eval": 4, "levels": [1], "seed": 0, "style": "trace"},
    # About a third of attempts right after ~3 s of pre-training: hits and misses both occur.
    "base_policy": {"hidden_size": 32, "n_layers": 2, "n_heads": 2, "intermediate_size": 64,
                    "max_position": 128, "steps": 200, "batch_size": 64, "lr": 0.003,
                    "n_traces": 60},
    "sampling": {"attempts": 4, "max_tokens": 24, "batch_size": 32, "chunk_prompts": 4},
    "xi": {"n_bootstrap": 50},
    "regimes": {"low": 0.5, "high": 2.0},
    "train": {"token_budget": 600, "max_steps": 6, "num_generations": 4, "prompts_per_step": 2,
              "checkpoint_every": 2, "controller": {"h_max": 64}, "per_prompt": {"h_max": 64}},
    "evaluate": {"attempts": 4, "h_eval": 24, "pass_k": [1, 4], "batch_size": 32},
    "sweep": {"xi": [1.0, 2.0], "seeds": [0], "token_budget": 300, "eval_attempts": 2},
    # every arm, one seed; the band keeps every prompt of so few; one evaluation along the way
    "arms": {"filter_band": [0.0, 1000.0], "eval_at": [100]},
}


def deep_update(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        out[k] = deep_update(out.get(k, {}), v) if isinstance(v, dict) and k != "regimes" else v
    return out


def tiny_params(**overrides) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    return deep_update(deep_update(raw, TINY), overrides)


def no_outside_pipeline(monkeypatch) -> None:
    """Stage runs in a test belong to no pipeline run of the shell that started pytest."""
    for var in ("RELBUDGET_PIPELINE_RUN", "DVC_STAGE", "DVC_EXP_NAME"):
        monkeypatch.delenv(var, raising=False)


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
