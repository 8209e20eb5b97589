"""Exact values of the report's headline (relbudget.report.headline) on tiny hand-made metrics.

The rounding at its boundaries (4 significant digits, ints kept, -0.0, numpy scalars, values that
are not finite numbers), the peak's gain read from the sweep row at exactly the peak xi, the
reference arm left out, and the bytes of the two files written.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from relbudget.report import headline as hl


@pytest.mark.parametrize("v, expected", [
    (1.23444, 1.234), (1.23455, 1.235), (12345.6, 12350.0), (0.000123456, 0.0001235),
    (7, 7), (123456789, 123456789),  # ints kept whole
    (-0.00001, -1e-05), (-1e-300, -1e-300), (0.0, 0.0), (-0.0, 0.0),
    (np.float64(2.71828), 2.718), (np.int64(3), 3), (np.float32(0.5), 0.5),
    (None, None), (float("nan"), None), (float("inf"), None), (float("-inf"), None),
    (True, None), (False, None), ("1.0", None), ([1.0], None), (np.bool_(True), None),
])
def test_number_rounds_to_four_significant_digits(v, expected):
    got = hl.number(v)
    assert got == expected and type(got) is type(expected)
    if expected == 0.0 and expected is not None:
        assert str(got) == "0.0"  # never -0.0


def test_numbers_keep_the_finite_ones_in_order():
    assert hl.numbers({"b": 2.00004, "a": None, "c": float("nan"), "d": 3, "e": "x"}) == {
        "b": 2.0, "d": 3}
    assert list(hl.numbers({"z": 1, "a": 2})) == ["z", "a"]


def _metrics():
    return {
        "peak": {"xi": 1.0, "low": 0.5, "high": 1.75},
        "sweep_by_xi": [{"xi": 0.5, "gain_per_100k": 9.0, "acc_H_eval": 0.7},
                        {"xi": 1.0, "gain_per_100k": 1.234567, "acc_H_eval": 0.81234},
                        {"xi": 1.75, "gain_per_100k": float("nan"), "acc_H_eval": None}],
        "arms_summary": [{"arm": "fixed_best", "ratio_to_fixed_best": 1.0},
                         {"arm": "controller", "ratio_to_fixed_best": 0.4567891},
                         {"arm": "per_prompt", "ratio_to_fixed_best": None}],
        "base": {"E_T": 45.0312},
    }


def test_headline_by_hand():
    h = hl.headline(_metrics())
    # the gain is the sweep row at exactly the peak xi (1.0), not the largest gain (9.0)
    assert h == {"xi": {"peak": 1.0, "peak_low": 0.5, "peak_high": 1.75},
                 "gain_per_100k": {"peak": 1.235},
                 "ratio": {"controller": 0.4568},
                 "E_T": {"base": 45.03}}
    assert list(h) == ["xi", "gain_per_100k", "ratio", "E_T"]


def test_headline_parts_absent_or_empty_are_left_out():
    m = _metrics()
    assert hl.headline({**m, "peak": None}) == {"ratio": {"controller": 0.4568},
                                                "E_T": {"base": 45.03}}
    # a peak xi that no sweep row has: no gain (the xi interval stays)
    h = hl.headline({**m, "peak": {"xi": 3.0, "low": 1.0, "high": 3.0}})
    assert "gain_per_100k" not in h and h["xi"] == {"peak": 3.0, "peak_low": 1.0, "peak_high": 3.0}
    assert hl.headline({"peak": {"low": 1.0}, "sweep_by_xi": m["sweep_by_xi"]}) == {
        "xi": {"peak_low": 1.0}}
    assert hl.headline({"arms_summary": [{"arm": "fixed_best", "ratio_to_fixed_best": 1.0}]}) == {}
    assert hl.headline({"base": None, "sweep_by_xi": None, "arms_summary": None}) == {}


def test_efficiency_rows_sorted_by_xi_and_rounded():
    rows = hl.efficiency_rows({"sweep_by_xi": list(reversed(_metrics()["sweep_by_xi"]))})
    assert rows == [{"xi": 0.5, "gain_per_100k": 9.0, "acc_H_eval": 0.7},
                    {"xi": 1.0, "gain_per_100k": 1.235, "acc_H_eval": 0.8123},
                    {"xi": 1.75, "gain_per_100k": None, "acc_H_eval": None}]
    assert hl.efficiency_rows({}) == [] and hl.efficiency_rows({"sweep_by_xi": None}) == []
    assert hl.efficiency_rows({"sweep_by_xi": [{"xi": "2"}, {"xi": 10}]})[0]["xi"] is None


def test_the_files_byte_for_byte(tmp_path):
    paths = SimpleNamespace(headline_json=tmp_path / "h.json", efficiency_csv=tmp_path / "e.csv")
    h = hl.write(_metrics(), paths)
    assert h == hl.headline(_metrics())
    assert Path(paths.headline_json).read_text() == (
        '{\n  "xi": {\n    "peak": 1.0,\n    "peak_low": 0.5,\n    "peak_high": 1.75\n  },\n'
        '  "gain_per_100k": {\n    "peak": 1.235\n  },\n  "ratio": {\n    "controller": 0.4568\n'
        '  },\n  "E_T": {\n    "base": 45.03\n  }\n}\n')
    assert Path(paths.efficiency_csv).read_text() == (
        "xi,gain_per_100k,acc_H_eval\n0.5,9.0,0.7\n1.0,1.235,0.8123\n1.75,,\n")
    assert hl.dumps({}) == "{}\n"
    with pytest.raises(ValueError):
        hl.dumps({"x": {"y": float("nan")}})
    assert json.loads(hl.dumps(h)) == h
