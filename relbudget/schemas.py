"""pandera schemas for every table passed between stages (DESIGN section 5).

Tables are checked lazily, so one error lists every failing check and row (capped), and the
message names the file. Checked on write and on read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_lib
import pyarrow.parquet as pq
from pandera.errors import SchemaErrors

from relbudget.io import write_parquet

STOP_REASONS = ["eos", "length", "first_correct"]
MAX_LISTED = 10


class TableError(ValueError):
    """A table that fails its schema; the message lists the failing checks and rows (capped)."""

    def __init__(self, message: str, failures: pd.DataFrame | None = None):
        super().__init__(message)
        self.failures = failures


def _length_implies_cap(df: pd.DataFrame) -> pd.Series:
    return (df["stop_reason"] != "length") | (df["n_tokens"] == df["max_tokens"])


def _first_correct_implies_end(df: pd.DataFrame) -> pd.Series:
    return (df["stop_reason"] != "first_correct") | (df["first_correct_token"] == df["n_tokens"])


def _attempt_unique(df: pd.DataFrame) -> pd.Series:
    """False on each row whose (prompt_id, attempt) occurs more than once.

    Counts prompt code * stride + attempt with np.bincount (about 16 bytes a row) where attempts
    are dense, as they are (0..K-1); DataFrame.duplicated, what `unique=` runs, hashes the pairs
    at about 40 bytes a row, which dominates reading a multi-million-row table.
    """
    if "prompt_id" not in df or "attempt" not in df:
        return pd.Series(True, index=df.index)  # the missing column is reported on its own
    codes, uniques = pd.factorize(df["prompt_id"])
    attempt = df["attempt"].to_numpy()
    if (len(df) and attempt.dtype.kind == "i" and attempt.min() >= 0 and codes.min() >= 0
            and len(uniques) * (int(attempt.max()) + 1) <= 2 * len(df) + 1024):
        codes *= int(attempt.max()) + 1
        codes += attempt
        twice = np.flatnonzero(np.bincount(codes) > 1)
        return pd.Series(~np.isin(codes, twice) if len(twice) else True, index=df.index)
    return ~df.duplicated(["prompt_id", "attempt"], keep=False)


def _fct_within_attempt(df: pd.DataFrame) -> pd.Series:
    fct = df["first_correct_token"]
    return fct.isna() | ((fct >= 1) & (fct <= df["n_tokens"]))


ROLLOUTS = pa.DataFrameSchema(
    {
        "prompt_id": pa.Column(str),
        "attempt": pa.Column(int, pa.Check.ge(0)),
        "n_tokens": pa.Column(int, pa.Check.ge(0)),
        "max_tokens": pa.Column(int, pa.Check.gt(0)),
        "first_correct_token": pa.Column("Int64", pa.Check.ge(1), nullable=True),
        "stop_reason": pa.Column(str, pa.Check.isin(STOP_REASONS)),
        "final_correct": pa.Column(bool),
        "policy": pa.Column(str),
        "seed": pa.Column(int),
    },
    checks=[
        pa.Check(_attempt_unique, name="multiple_fields_uniqueness"),  # as pandera's unique=
        pa.Check(_fct_within_attempt, error="first_correct_token must lie in 1..n_tokens"),
        pa.Check(_length_implies_cap, error="stop_reason 'length' implies n_tokens == max_tokens"),
        pa.Check(_first_correct_implies_end,
                 error="stop_reason 'first_correct' implies first_correct_token == n_tokens"),
    ],
    strict=False,  # extra columns (completion text, logprobs) are allowed
    coerce=False,
    name="rollouts",
)

PROMPTS = pa.DataFrameSchema(
    {
        "prompt_id": pa.Column(str, unique=True),
        "prompt": pa.Column(str, pa.Check.str_length(min_value=1)),
        "answer": pa.Column(str, pa.Check.str_length(min_value=1)),
        "answer_format": pa.Column(str, pa.Check.isin(["int", "prose", "gsm8k", "math"])),
        "level": pa.Column(int, pa.Check.ge(0)),
    },
    strict=False,
    name="prompts",
)

HISTORY = pa.DataFrameSchema(
    {
        "step": pa.Column(int, pa.Check.ge(1), unique=True),
        "generated_tokens": pa.Column(int, pa.Check.ge(0)),
        "cum_generated_tokens": pa.Column(int, pa.Check.ge(0)),
        "reward_mean": pa.Column(float, pa.Check.in_range(0, 1)),
        "frac_informative": pa.Column(float, pa.Check.in_range(0, 1)),
        "frac_reward_zero_std": pa.Column(float, pa.Check.in_range(0, 1)),
        "clipped_ratio": pa.Column(float, pa.Check.in_range(0, 1)),
        "mean_length": pa.Column(float, pa.Check.ge(0)),
        "tokens_after_correct": pa.Column(float, pa.Check.ge(0)),
        "E_T": pa.Column(float, nullable=True),
        "xi_t": pa.Column(float, nullable=True),
        "H": pa.Column(int, pa.Check.gt(0)),
    },
    checks=[pa.Check(lambda d: d["cum_generated_tokens"].is_monotonic_increasing,
                     error="cum_generated_tokens must not decrease")],
    strict=False,
    name="history",
)


def _explain(err: SchemaErrors, what: str) -> TableError:
    fc = err.failure_cases
    lines = [f"{what}: {len(fc)} schema failure(s)"]
    for _, row in fc.head(MAX_LISTED).iterrows():
        where = f"row {row['index']}" if pd.notna(row.get("index")) else "table"
        col = f" column {row['column']!r}" if pd.notna(row.get("column")) else ""
        lines.append(f"  {where}{col}: {row['check']} (value {row['failure_case']!r})")
    if len(fc) > MAX_LISTED:
        lines.append(f"  ... and {len(fc) - MAX_LISTED} more")
    return TableError("\n".join(lines), fc)


def validate(df: pd.DataFrame, schema: pa.DataFrameSchema, what: str | None = None) -> pd.DataFrame:
    """Validate lazily; raise TableError naming every failing check and row (capped)."""
    try:
        # pandera deep-copies the frame unless inplace; no schema here coerces, so nothing is
        # written, and a shallow copy (copy-on-write) still hands the caller a new frame.
        return schema.validate(df.copy(deep=False), lazy=True, inplace=True)
    except SchemaErrors as err:
        raise _explain(err, what or schema.name) from None


def normalise_rollouts(df: pd.DataFrame) -> pd.DataFrame:
    """Bring the columns to their schema dtypes (a nullable int for first_correct_token)."""
    # Shallow: columns are replaced, never written into (copy-on-write, pandas >= 3), so the
    # caller's frame is untouched without copying a multi-million-row table.
    df = df.copy(deep=False)
    for col in ("attempt", "n_tokens", "max_tokens", "seed"):
        if col in df and df[col].dtype != "int64" and df[col].notna().all():
            df[col] = df[col].astype("int64")
    if "first_correct_token" in df:
        df["first_correct_token"] = pd.array(df["first_correct_token"], dtype="Int64")
    return df


def write_table(df: pd.DataFrame, schema: pa.DataFrameSchema, path: str | Path) -> pd.DataFrame:
    df = validate(df, schema, f"{schema.name} table for {path}")
    write_parquet(df, path)
    return df


def _read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """pd.read_parquet, one column at a time: only one column is held twice (Arrow and pandas)
    at once, so the peak memory is about the frame's own size rather than twice it."""
    meta = pq.read_schema(path)
    names = [c for c in meta.names if columns is None or c in columns]
    if any(isinstance(c, str) for c in (meta.pandas_metadata or {}).get("index_columns", [])):
        return pd.read_parquet(path, columns=names)  # a stored index: read it once, with the rest
    df = pd.DataFrame({c: pd.read_parquet(path, columns=[c])[c] for c in names}, copy=False)
    pa_lib.default_memory_pool().release_unused()  # Arrow's allocator keeps freed pages
    return df


def read_table(path: str | Path, schema: pa.DataFrameSchema,
               schema_columns_only: bool = False) -> pd.DataFrame:
    """Read and validate a table; schema_columns_only skips extra columns (completion text, ...)
    that the caller does not need, which can be most of a rollout table's size."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{schema.name} table not found: {path}")
    if path.is_dir():
        raise TableError(f"{schema.name} table {path} is a directory; give one parquet file")
    try:
        df = _read_parquet(path, list(schema.columns) if schema_columns_only else None)
    except (pa_lib.ArrowException, OSError) as err:  # garbage, truncated or not parquet at all
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise TableError(f"{schema.name} table {path} is not a readable parquet file: {first}") from None
    if schema is ROLLOUTS:
        df = normalise_rollouts(df)
    return validate(df, schema, f"{schema.name} table {path}")
