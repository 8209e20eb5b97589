"""The report's headline numbers, small enough for DVC to compare across commits and experiments.

`data/report/metrics.json` holds everything (rows of every sweep cell, strings, the sentence on
the paper's band) and lives under the git-ignored data/. The headline is the part worth a column
in `dvc exp show` or a line in `dvc metrics diff`: numbers only, rounded to SIGNIFICANT digits (a
rerun with unchanged inputs writes the same bytes, and the file stays short), written outside
data/ and tracked in git (`cache: false` in dvc.yaml), so every commit and experiment carries it.

Keys are METRIC.ENTITY: `gain_per_100k.xi1_75` (sweep cell xi = 1.75, mean over seeds),
`gain_per_100k.balanced` (a regime), `acc_H_eval.base`, `xi.peak` with its interval
`xi.peak_low` and `xi.peak_high`, `E_T.base` with `E_T.base_low` and `E_T.base_high`. No name
holds a dot (DVC joins nested keys with dots), and no key repeats a key of params.yaml or of the
other metrics files (data/xi/summary.json, data/eval/*.json, data/report/metrics.json, which nest
by entity): `dvc exp show` names a column whose key two files share `PATH:KEY`, which widens the
table and escapes a `--keep KEY` pattern.

`headline(metrics)` takes the same dict the report stage writes to metrics.json; each function of
PARTS gives the rows {entity: {metric: number}} of one part, empty where its input is absent
(the budget arms: `tokens_to_target.arm_controller`, `ratio_to_fixed_best.arm_per_prompt`,
`acc_H_eval.target`).

`efficiency_rows(metrics)` is the sweep per xi as a small CSV table for `dvc plots diff`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from relbudget.core.io import atomic_path

SIGNIFICANT = 4
BASE_KEYS = ("E_T", "acc_H_eval")
REGIME_KEYS = ("xi", "H", "acc_H_eval", "gain_per_100k")
SWEEP_KEYS = ("H", "acc_H_eval", "gain_per_100k", "gain_per_100k_err")
ARM_KEYS = ("tokens_to_target", "ratio_to_fixed_best", "acc_H_eval")
METRIC_ORDER = ("gain_per_100k", "gain_per_100k_err", "tokens_to_target", "ratio_to_fixed_best",
                "acc_H_eval", "xi", "H", "E_T")
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


def xi_key(xi: Any) -> str:
    """`xi1_75` for 1.75, `xi1` for 1.0: a key without the dot DVC splits nested keys on."""
    return "xi" + f"{float(xi):g}".replace(".", "_").replace("-", "m")


def numbers(d: dict, keys: tuple[str, ...] | None = None) -> dict:
    """The finite numbers of d (those of `keys`, in that order, when given), rounded; None,
    NaN, inf and strings left out."""
    out = {}
    for k in keys if keys is not None else d:
        v = number(d.get(k))
        if v is not None:
            out[k] = v
    return out


def _base(metrics: dict) -> dict:
    """The base policy: E[T] from the xi stage with its interval, accuracy at H_eval."""
    base, summary = metrics.get("base") or {}, metrics.get("xi_summary") or {}
    low, high = summary.get("E_T_ci") or [None, None]
    rows = {"base": numbers({**base, "E_T": base.get("E_T", summary.get("E_T"))}, BASE_KEYS),
            "base_low": numbers({"E_T": low}), "base_high": numbers({"E_T": high})}
    return {k: v for k, v in rows.items() if v}


def _peak(metrics: dict) -> dict:
    """The xi of the peak mean gain over the sweep, with its bootstrap interval over seeds."""
    peak = metrics.get("peak") or {}
    rows = {"peak": numbers({"xi": peak.get("xi")}), "peak_low": numbers({"xi": peak.get("low")}),
            "peak_high": numbers({"xi": peak.get("high")})}
    return {k: v for k, v in rows.items() if v}


def _regimes(metrics: dict) -> dict:
    return {name: numbers(row, REGIME_KEYS) for name, row in (metrics.get("regimes") or {}).items()}


def _sweep(metrics: dict) -> dict:
    rows = sorted(metrics.get("sweep_by_xi") or [], key=lambda r: float(r["xi"]))
    return {xi_key(r["xi"]): numbers(r, SWEEP_KEYS) for r in rows}


def _arms(metrics: dict) -> dict:
    """The budget arms (relbudget.report.compare): tokens to the target accuracy (mean over the seeds
    that reached it), its ratio to the best fixed xi, final accuracy; the target itself."""
    rows = {f"arm_{r['arm']}": numbers(r, ARM_KEYS) for r in metrics.get("arms_summary") or []}
    target = numbers({"acc_H_eval": metrics.get("target_accuracy")})
    return {**rows, **({"target": target} if target else {})}


# Each part: metrics -> {entity: {metric: number}}; headline() turns them into {metric: {entity:
# number}}. Entities are unique across parts: base(_low, _high), peak(_low, _high), the regimes,
# xi<XI> of the sweep cells, arm_<ARM> and target of the budget arms.
PARTS: list[Callable[[dict], dict[str, dict]]] = [_base, _peak, _regimes, _sweep, _arms]


def headline(metrics: dict, xi_summary: dict | None = None) -> dict:
    """The headline of the report's metrics dict (the one written to metrics.json; `xi_summary`,
    the xi stage's summary.json, adds the interval of E[T]) as {metric: {entity: number}}: finite
    numbers only, metrics in METRIC_ORDER (then first seen), entities in the order of PARTS.
    Parts whose input is absent are left out; an entity named twice is a ValueError."""
    src = {**metrics, "xi_summary": xi_summary} if xi_summary else metrics
    rows: dict[str, dict] = {}
    for build in PARTS:
        for entity, row in build(src).items():
            if entity in rows:
                raise ValueError(f"headline: {entity!r} is named twice (a regime or arm named "
                                 "like base, peak_low or a sweep cell xi<XI>); rename it")
            rows[entity] = row
    seen = [m for row in rows.values() for m in row]
    order = [m for m in METRIC_ORDER if m in seen] + [m for m in dict.fromkeys(seen)
                                                      if m not in METRIC_ORDER]
    return {m: {e: row[m] for e, row in rows.items() if m in row} for m in order}


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


def write(metrics: dict, xi_summary: dict | None, paths) -> dict:
    """Write the headline JSON and the efficiency CSV of the report's metrics (at
    `paths.headline_json` and `paths.efficiency_csv`); returns the headline."""
    json_path, csv_path = paths.headline_json, paths.efficiency_csv
    h = headline(metrics, xi_summary)
    write_headline(h, json_path)
    write_efficiency(efficiency_rows(metrics), csv_path)
    return h
