"""The report's headline numbers, few enough for `dvc metrics show` to print in one terminal row.

`data/report/metrics.json` holds everything (rows of every sweep cell, the regimes, the arms,
strings, the sentence on the paper's band); it is an ordinary DVC output under the git-ignored
data/. The headline is the handful of numbers the study is about, written outside data/ and
tracked in git (`cache: false` in dvc.yaml), so every commit and experiment carries it, and it is
the only metrics file of the pipeline: plain `dvc metrics show` prints one row of them and
`dvc metrics diff REV` compares them with no `--targets` (docs/tracking.md).

DVC prints one column per key, so the headline holds only:
  xi.peak, xi.peak_low, xi.peak_high   the xi of the highest mean gain over the sweep, with its
                                       bootstrap interval over seeds
  gain_per_100k.peak                   that highest mean gain (accuracy at H_eval per 100k tokens)
  ratio.ARM                            an adaptive budget arm's tokens to the target accuracy over
                                       the best fixed xi's (absent where a seed never reached it)
  E_T.base                             E[T] of the base policy (xi stage)
Numbers only, rounded to SIGNIFICANT digits (a rerun with unchanged inputs writes the same bytes).
Keys are METRIC.ENTITY with no dot inside a name (DVC joins nested keys with dots), and none
repeats a key of params.yaml: `dvc exp show` names a column whose key two files share
`PATH:KEY`, which widens the table and escapes a `--keep KEY` pattern. The rest (per regime, per
swept xi, tokens to target) is in report.md and metrics.json; `efficiency_rows(metrics)` is the
sweep per xi as a small git-tracked CSV table for `dvc plots diff`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from relbudget.core.io import atomic_path

SIGNIFICANT = 4
METRIC_ORDER = ("xi", "gain_per_100k", "ratio", "E_T")
REFERENCE_ARM = "fixed_best"  # its ratio to itself is 1: left out
EFFICIENCY_COLUMNS = ("xi", "gain_per_100k", "acc_H_eval")


def number(v: Any) -> int | float | None:
    """v as a JSON number rounded to SIGNIFICANT digits (ints kept), or None where it is not a
    finite number (None, NaN, inf, a string, a bool)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        if not hasattr(v, "item"):  # numpy scalars
            return None
        return number(v.item())
    if isinstance(v, int):
        return v
    if not math.isfinite(v):
        return None
    r = float(f"{v:.{SIGNIFICANT}g}")
    return 0.0 if r == 0 else r  # no -0.0


def numbers(d: dict) -> dict:
    """The finite numbers of d, rounded, in its order; None, NaN, inf and strings left out."""
    out = {}
    for k, v in d.items():
        v = number(v)
        if v is not None:
            out[k] = v
    return out


def _peak(metrics: dict) -> dict:
    """The xi of the highest mean gain over the sweep, with its bootstrap interval over seeds,
    and that gain (the sweep's row at the peak xi)."""
    peak = metrics.get("peak") or {}
    at_peak = [r for r in metrics.get("sweep_by_xi") or []
               if peak.get("xi") is not None and float(r["xi"]) == float(peak["xi"])]
    return {"xi": numbers({"peak": peak.get("xi"), "peak_low": peak.get("low"),
                           "peak_high": peak.get("high")}),
            "gain_per_100k": numbers({"peak": at_peak[0].get("gain_per_100k")} if at_peak
                                     else {})}


def _arms(metrics: dict) -> dict:
    """The adaptive budget arms (relbudget.report.compare): tokens to the target accuracy over
    the best fixed xi's."""
    return {"ratio": numbers({r["arm"]: r.get("ratio_to_fixed_best")
                              for r in metrics.get("arms_summary") or []
                              if r["arm"] != REFERENCE_ARM})}


def _base(metrics: dict) -> dict:
    return {"E_T": numbers({"base": (metrics.get("base") or {}).get("E_T")})}


# Each part: metrics -> {metric: {entity: number}}, empty where its input is absent.
PARTS: list[Callable[[dict], dict[str, dict]]] = [_peak, _arms, _base]


def headline(metrics: dict) -> dict:
    """The headline of the report's metrics dict (the one written to metrics.json) as
    {metric: {entity: number}}: finite numbers only, metrics in METRIC_ORDER, parts whose input
    is absent left out."""
    rows: dict[str, dict] = {}
    for build in PARTS:
        for metric, row in build(metrics).items():
            if row:
                rows.setdefault(metric, {}).update(row)
    return {m: rows[m] for m in (*METRIC_ORDER, *rows) if m in rows}


def efficiency_rows(metrics: dict) -> list[dict]:
    """One row per swept xi: EFFICIENCY_COLUMNS, rounded (None where not finite)."""
    rows = sorted(metrics.get("sweep_by_xi") or [], key=lambda r: float(r["xi"]))
    return [{c: number(r.get(c)) for c in EFFICIENCY_COLUMNS} for r in rows]


def dumps(h: dict) -> str:
    """The headline as JSON text: key order as built, fixed indent, one trailing newline."""
    return json.dumps(h, indent=2, allow_nan=False) + "\n"


def write_headline(h: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(dumps(h))


def write_efficiency(rows: list[dict], path: str | Path) -> None:
    lines = [",".join(EFFICIENCY_COLUMNS)]
    lines += [",".join("" if r[c] is None else repr(r[c]) for c in EFFICIENCY_COLUMNS)
              for r in rows]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def write(metrics: dict, paths) -> dict:
    """Write the headline JSON and the efficiency CSV of the report's metrics (at
    `paths.headline_json` and `paths.efficiency_csv`); returns the headline."""
    h = headline(metrics)
    write_headline(h, paths.headline_json)
    write_efficiency(efficiency_rows(metrics), paths.efficiency_csv)
    return h
