"""What every trained policy is measured by, against the base policy: learning efficiency at
H_eval (gain in accuracy and fall in E[T] per 100k generated completion tokens) and the final
xi_t of its training. One home for these definitions: the training runs log them, the report
tabulates them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PER = 1e5  # efficiencies are per 100k generated completion tokens


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else math.nan


def efficiency(at: dict, base_at: dict, tokens: int) -> dict:
    """Gain in accuracy and fall in E[T] at H_eval against the base, per 100k generated tokens.
    A run that generated no token has no rate: its per-100k figures are None (dividing by 1
    instead once put a gain of 2344 per 100k into the headline, from an empty history)."""
    gain = at["accuracy"] - base_at["accuracy"]
    if int(tokens) <= 0:
        return {"gain": gain, "gain_per_100k": None, "E_T_fall_per_100k": None}
    per = PER / int(tokens)
    fall = _num(base_at.get("E_T")) - _num(at.get("E_T"))  # nan where either is infinite
    return {"gain": gain, "gain_per_100k": gain * per,
            "E_T_fall_per_100k": fall * per if math.isfinite(fall) else None}


def gain_metrics(at: dict[str, dict], base_eval: str | Path, tokens: int) -> dict:
    """`gain`, `gain_per_100k`, `E_T_fall_per_100k` at H_eval against the base policy's
    evaluation file: what every run that trained (sweep cells, arms) logs under
    the same keys, so the MLflow runs table sorts trained policies by the headline efficiency."""
    base = json.loads(Path(base_eval).read_text())["at"]["H_eval"]
    return efficiency(at["H_eval"], base, tokens)


FINAL_STEPS = 10  # "final xi_t" = the mean over the last FINAL_STEPS steps of training


def final_xi_t(history: pd.DataFrame) -> float | None:
    """The one definition of "final xi_t" (report table, metrics.json, the train run's
    summary/final_xi_t): the mean of the finite per-step xi_t = H / E_t[T] over the last
    FINAL_STEPS steps. A step's xi_t comes from that step's own few rollouts, so the last step
    alone is noisy; steps without a hit (xi_t undefined) are skipped. None when none is finite."""
    xi_t = history["xi_t"].tail(FINAL_STEPS).astype(float)
    xi_t = xi_t[np.isfinite(xi_t)]
    return float(xi_t.mean()) if len(xi_t) else None
