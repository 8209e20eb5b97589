"""MLflow helpers: one run per stage execution, in a local SQLite store by default.

Each run is tagged with stage, regime, params hash and git commit so the MLflow UI compares
regimes side by side. A stage that raises ends its run FAILED with the error logged as text.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

# Offline by design: MLflow's usage telemetry would only time out here. Set before the import,
# which is when mlflow starts its telemetry client.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
import mlflow  # noqa: E402

log = logging.getLogger(__name__)
EXPERIMENT = "relbudget"


def metric_name(name: str) -> str:
    """MLflow allows only [A-Za-z0-9_-. /] in metric names; pass@k becomes pass_at_k."""
    return name.replace("@", "_at_")


def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
    """Log the finite numeric entries of a dict (None, nan and inf are skipped, not errors)."""
    clean = {metric_name(k): float(v) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    if clean:
        mlflow.log_metrics(clean, step=step)


class TrackingError(RuntimeError):
    pass


def repo_root() -> Path:
    """The project root: the nearest folder up from cwd that holds params.yaml."""
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "params.yaml").exists():
            return d
    return here


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast on a tracking server that does not answer, instead of hanging in retries."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        import urllib.request

        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout)  # noqa: S310
        except Exception as err:  # any network failure means the same thing to the user
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({err}); "
                                "unset MLFLOW_TRACKING_URI to use the local SQLite store") from None
    elif parsed.scheme == "sqlite":
        folder = Path(parsed.path).parent if parsed.path else Path.cwd()
        if not folder.exists():
            raise TrackingError(f"MLflow SQLite store folder does not exist: {folder}")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=repo_root())
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


@contextmanager
def stage_run(stage: str, params: dict[str, Any], params_hash: str,
              regime: str | None = None) -> Iterator[Any]:
    """Open an MLflow run for one stage execution; end it FAILED (error logged) on exception."""
    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(EXPERIMENT)
    name = f"{stage}@{regime}" if regime else stage
    tags = {"stage": stage, "regime": regime or "", "params_hash": params_hash,
            "git_commit": git_commit()}
    # Optuna-style nesting is not wanted: a stage always gets a top-level run of its own.
    run = mlflow.start_run(run_name=name, tags=tags)
    try:
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
        yield run
    except BaseException as err:
        mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:5000])
        mlflow.log_text("".join(traceback.format_exception(err)), "error.txt")
        failures = getattr(err, "failures", None)  # a TableError carries every schema failure
        if failures is not None and hasattr(failures, "to_csv"):
            mlflow.log_text(failures.to_csv(index=False), "schema_failures.csv")
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")
