"""pandera schemas for every table passed between stages (the rollout table's columns and rules:
docs/definitions.md, "The rollout table").

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

from relbudget.core.io import write_parquet

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
    # a missing first_correct_token compares as NA, which pandera would pass: it must fail
    at_end = (df["first_correct_token"] == df["n_tokens"]).fillna(False)
    return (df["stop_reason"] != "first_correct") | at_end


def _attempt_unique(df: pd.DataFrame) -> pd.Series:
    """False on each row whose (prompt_id, attempt) occurs more than once.

    Counts prompt code * stride + attempt with np.bincount (about 16 bytes a row) where attempts
    are dense, as they are (0..K-1); DataFrame.duplicated, what `unique=` runs, hashes the pairs
    at about 40 bytes a row, which dominates reading a multi-million-row table.
    """
    if "prompt_id" not in df or "attempt" not in df:
        return pd.Series(True, index=df.index)  # the missing column is reported on its own
    if isinstance(df["prompt_id"].dtype, pd.CategoricalDtype):  # its codes, without hashing
        cat = df["prompt_id"].cat
        codes, n_ids = cat.codes.to_numpy().astype(np.int64), len(cat.categories)
    else:
        codes, uniques = pd.factorize(df["prompt_id"])
        n_ids = len(uniques)
    attempt = df["attempt"].to_numpy()
    if (len(df) and attempt.dtype.kind == "i" and attempt.min() >= 0 and codes.min() >= 0
            and n_ids * (int(attempt.max()) + 1) <= 2 * len(df) + 1024):
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
        if col in df and df[col].dtype != "int64" and df[col].notna().all() and _integral(df[col]):
            df[col] = df[col].astype("int64")
    if "first_correct_token" in df and _integral(df["first_correct_token"]):
        df["first_correct_token"] = pd.array(df["first_correct_token"], dtype="Int64")
    # a column left as it came (3.5 tokens, text) is the schema's to report, by column and row
    return df


def _integral(col: pd.Series) -> bool:
    """Whether a column's values are whole numbers (so a cast to int loses nothing): a token
    count of 3.5 is refused by the schema, not truncated to 3 (or a TypeError, found by a
    hostile probe)."""
    if pd.api.types.is_integer_dtype(col) or pd.api.types.is_bool_dtype(col):
        return True
    values = col.dropna()
    if not pd.api.types.is_numeric_dtype(values):  # object: Python ints and None, or text
        try:
            values = pd.to_numeric(values)
        except (ValueError, TypeError):
            return False
    v = values.to_numpy(dtype=float)
    return bool(np.all(np.isfinite(v) & (v == np.floor(v))))


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
    if not path.is_file():  # a FIFO or a device: reading it would block or never end
        raise TableError(f"{schema.name} table {path} is not a regular file; give one parquet file")
    try:
        df = _read_parquet(path, list(schema.columns) if schema_columns_only else None)
    except (pa_lib.ArrowException, OSError) as err:  # garbage, truncated or not parquet at all
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise TableError(f"{schema.name} table {path} is not a readable parquet file: {first}") from None
    if schema is ROLLOUTS:
        df = normalise_rollouts(df)
    return validate(df, schema, f"{schema.name} table {path}")


# ---------------------------------------------------------------- a lean read of a rollout table

_STRINGS = ("prompt_id", "stop_reason", "policy")  # read dictionary-encoded, as categoricals
_INT_TYPES = {None, *(f"{i}nt{b}" for i in "iI" for b in (8, 16, 32, 64))}


def _sorted_categorical(col: pa_lib.ChunkedArray) -> pd.Categorical:
    """A dictionary column as a Categorical whose categories are sorted, so that
    pd.factorize(sort=True) gives the codes it gives on the strings."""
    cat = col.to_pandas().array
    cats = cat.categories
    return cat if cats.is_monotonic_increasing else cat.reorder_categories(cats.sort_values())


def _lean_rollouts(path: Path, columns: list[str]) -> pd.DataFrame | None:
    """The ROLLOUTS checks on NumPy arrays, one column at a time; None where a check fails or the
    table is stored in a form they do not cover (other types, nulls, a stored index), which
    read_table then decides on, with its own message."""
    arrow = pq.read_schema(path)
    meta = arrow.pandas_metadata or {}
    if any(isinstance(c, str) for c in meta.get("index_columns", [])):
        return None
    numpy_type = {c.get("name"): c.get("numpy_type") for c in meta.get("columns", [])}
    for name in ROLLOUTS.columns:
        i = arrow.get_field_index(name)  # -1: missing or not unique
        if i < 0:
            return None
        t, nt = arrow.field(i).type, numpy_type.get(name)
        if name in _STRINGS:
            ok = (pa_lib.types.is_string(t) or pa_lib.types.is_large_string(t)) \
                and nt in (None, "object", "str")
        elif name == "final_correct":
            ok = pa_lib.types.is_boolean(t) and nt in (None, "bool")
        else:
            ok = pa_lib.types.is_signed_integer(t) and nt in _INT_TYPES
        if not ok:
            return None

    def read(name: str) -> pa_lib.ChunkedArray | None:
        col = pq.read_table(path, columns=[name],
                            read_dictionary=[name] if name in _STRINGS else None).column(0)
        pa_lib.default_memory_pool().release_unused()  # the decoder's buffers
        return None if col.null_count and name != "first_correct_token" else col

    def ints(name: str) -> np.ndarray | None:
        col = read(name)
        return None if col is None else col.to_numpy().astype(np.int64, copy=False)

    out: dict[str, object] = {}
    prompt = read("prompt_id")
    attempt = ints("attempt")
    if prompt is None or attempt is None or (len(attempt) and attempt.min() < 0):
        return None
    prompt = _sorted_categorical(prompt)
    if not _attempt_unique(pd.DataFrame({"prompt_id": prompt, "attempt": attempt},
                                        copy=False)).all():
        return None
    out["prompt_id"], out["attempt"], out["seed"] = prompt, attempt, ints("seed")
    if out["seed"] is None:
        return None
    for name in ("attempt", "seed"):  # checked; dropped unless asked for
        if name not in columns:
            del out[name]
    del attempt
    for name in ("policy", "stop_reason"):
        col = read(name)
        if col is None:
            return None
        out[name] = _sorted_categorical(col)
    n = out["n_tokens"] = ints("n_tokens")
    cap = out["max_tokens"] = ints("max_tokens")
    final = read("final_correct")
    if n is None or cap is None or final is None or (len(n) and (n.min() < 0 or cap.min() <= 0)):
        return None
    out["final_correct"] = final.to_numpy().astype(bool, copy=False)
    del final

    col = read("first_correct_token")
    missing = col.is_null().to_numpy()
    fct = col.fill_null(0).to_numpy().astype(np.int64, copy=False)
    del col
    stop = out["stop_reason"]
    used = stop.categories[np.bincount(stop.codes, minlength=len(stop.categories)) > 0]
    if not set(used) <= set(STOP_REASONS):
        return None
    codes = {c: i for i, c in enumerate(stop.categories)}
    # first_correct_token in 1..n_tokens; 'length' ends at the cap; 'first_correct' at the answer
    bad = ~missing & ((fct < 1) | (fct > n))
    if "length" in codes:
        bad |= (stop.codes == codes["length"]) & (n != cap)
    if "first_correct" in codes:
        bad |= (stop.codes == codes["first_correct"]) & (missing | (fct != n))
    if bad.any():
        return None
    out["first_correct_token"] = pd.arrays.IntegerArray(fct, missing)
    return pd.DataFrame({c: out[c] for c in columns}, copy=False)


def read_rollouts(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """read_table(path, ROLLOUTS, schema_columns_only=True), only `columns` of it (default: all
    of the schema's), with prompt_id, stop_reason and policy as categoricals (sorted categories).

    For the command line on millions of rows: the ROLLOUTS checks run as NumPy operations on the
    columns as they are read, and the columns not asked for (attempt, seed) are dropped once
    checked, so the peak memory is about the returned frame's. A table that fails a check, or is
    stored in a form these checks do not cover, goes through read_table: the same error message,
    or the same table (with its string dtypes) where pandera accepts it.
    """
    columns = list(ROLLOUTS.columns) if columns is None else list(columns)
    if unknown := [c for c in columns if c not in ROLLOUTS.columns]:
        raise ValueError(f"not rollout schema columns: {unknown}")
    path = Path(path)
    if path.is_file():
        try:
            df = _lean_rollouts(path, columns)
        except (pa_lib.ArrowException, OSError):
            df = None  # read_table says what is wrong with the file
        pa_lib.default_memory_pool().release_unused()
        if df is not None:
            return df
    return read_table(path, ROLLOUTS, schema_columns_only=True)[columns]
