"""relbudget.trl: the censored estimator of E[T] and the plug-in on a plain TRL GRPOTrainer."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from relbudget.trl import XiController, censored_mean_T

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "trl_xi_plugin.py"


@pytest.mark.parametrize("K,xi", [(1, 1.0), (2, 1.75), (4, 1.0), (4, 3.0)])
def test_censored_gamma_estimator_bias_below_5_percent(K, xi):
    """T ~ Gamma(K, mean 40) whole tokens, completions cut at H = xi * E[T]: the controller's
    window size (8 prompts x 8 generations x every 4 = 256 completions), 60 windows."""
    rng = np.random.default_rng(K)
    E_T, H = 40.0, int(xi * 40)
    est, ratio = [], []
    for _ in range(60):
        T = np.ceil(rng.gamma(K, E_T / K, size=256))
        hit = T <= H
        n = np.minimum(T, H)
        est.append(censored_mean_T(n, hit))
        ratio.append(censored_mean_T(n, hit, "ratio"))
    assert abs(np.mean(est) / E_T - 1) < 0.05
    if K >= 4 and xi == 1.0:  # the ratio is exact only for an exponential T
        assert np.mean(ratio) / E_T - 1 > 0.2


def test_estimator_edge_cases():
    assert math.isnan(censored_mean_T([5, 6], [False, False]))
    assert censored_mean_T([4, 6, 10], [True, True, False]) == 10.0  # < MIN_HITS: the ratio
    with pytest.raises(ValueError):
        XiController(target_xi=0)
    with pytest.raises(ValueError):
        XiController(h_min=10, h_max=5)


def test_controller_clamps_and_smooths():
    seen = []
    c = XiController(target_xi=2.0, every=1, h_min=8, h_max=100, smoothing=0.5, on_change=seen.append)
    c.H = 50
    c.record([10] * 10, [True] * 10)  # E_T = 10 -> target 20; EMA in log space from 20 (first)
    c.step_row(1)
    assert c.H == 20 and seen == [20]
    c.record([200] * 10, [True] * 10)  # target 400: sqrt(20 * 400) = 89.4 -> 89
    row = c.step_row(2)
    assert row["H"] == 20 and row["H_next"] == 89 and c.H == 89
    c.record([900] * 10, [True] * 10)
    c.step_row(3)
    assert c.H == 100  # clamped at h_max


def test_readme_example_runs_on_a_plain_grpo_trainer():
    """The README's plug-in example (examples/trl_xi_plugin.py) through TRL's own generation."""
    readme = (EXAMPLE.parents[1] / "README.md").read_text()
    assert "examples/trl_xi_plugin.py" in readme
    spec = importlib.util.spec_from_file_location("trl_xi_plugin", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ctrl = mod.main(max_steps=6)
    rows = ctrl.history
    assert [r["step"] for r in rows] == list(range(1, 7))
    for r in rows:  # no completion is longer than the H it was generated at
        assert r["max_length"] <= r["H"]
    assert len({r["H"] for r in rows}) > 1  # the controller moved H
    t = ctrl.trainer  # and TRL's own generation reads the new cap
    assert t.max_completion_length == t.generation_config.max_new_tokens == ctrl.H
    assert 8 <= ctrl.H <= 48
    assert t.state.log_history[0]["relbudget/H"] == rows[0]["H"]
