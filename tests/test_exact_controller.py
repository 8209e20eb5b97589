"""Exact values of the xi controller (relbudget.train.controller.XiController) by hand: a cadence
other than 1 (the window spans the steps since the last update), the EMA in log space, and the
clamp exactly at, one below and one above h_min and h_max."""

from __future__ import annotations

import math

import pytest

from relbudget.train.controller import XiController


def test_cadence_two_pools_the_window_and_smooths_in_log_space():
    changes = []
    ctrl = XiController(target_xi=2.0, every=2, h_min=10, h_max=100, smoothing=0.5,
                        method="ratio", on_change=changes.append)
    ctrl.resume(40)
    ctrl.record([10, 20], [True, False])
    row = ctrl.step_row(1)  # step 1: no update (every 2)
    assert row["H"] == 40 and row["H_next"] == 40 and math.isnan(row["E_T_est"])
    assert row["E_T"] == 30.0 and row["xi_t"] == pytest.approx(40 / 30)
    ctrl.record([5, 5], [True, True])
    row = ctrl.step_row(2)
    # the window holds both steps: (10 + 20 + 5 + 5) / 3 hits = 40/3; target H = 80/3;
    # EMA in log space with weight 0.5: sqrt(40 * 80/3) = 32.66 -> 33
    assert row["E_T_est"] == pytest.approx(40 / 3)
    assert row["E_T"] == 5.0 and row["xi_t"] == 8.0  # this step alone, at the H it ran at
    assert (row["H"], row["H_next"], ctrl.H) == (40, 33, 33)
    assert changes == [33]
    assert (row["hit_rate"], row["max_length"], row["n_completions"]) == (1.0, 5, 2)
    assert ctrl.step_row(3) is None  # nothing recorded: no row


@pytest.mark.parametrize("E_T, H", [(9, 10), (10, 10), (11, 11), (19, 19), (20, 20), (21, 20)])
def test_the_clamp_at_its_edges(E_T, H):
    ctrl = XiController(target_xi=1.0, every=1, h_min=10, h_max=20, smoothing=0.0, method="ratio")
    ctrl.resume(15)
    ctrl.record([E_T], [True])
    assert ctrl.step_row(1)["H_next"] == H


def test_no_hit_keeps_H_and_the_estimate():
    ctrl = XiController(target_xi=1.0, h_min=1, h_max=100, smoothing=0.0, method="ratio")
    ctrl.resume(50)
    ctrl.record([30], [True])
    assert ctrl.step_row(1)["H_next"] == 30
    ctrl.record([30, 30], [False, False])
    row = ctrl.step_row(2)
    assert row["H_next"] == 30 and row["E_T_est"] == 30.0 and math.isnan(row["xi_t"])
