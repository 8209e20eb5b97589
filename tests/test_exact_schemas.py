"""The words of a table's refusal (relbudget.core.schemas): every failing check named with its row
and column (or the table), and the list capped at ten with the rest counted."""

from __future__ import annotations

import pandas as pd
import pytest

from relbudget.core.schemas import HISTORY, TableError, read_rollouts, validate


def _history(n: int, H: int, cum: list[int] | None = None) -> pd.DataFrame:
    return pd.DataFrame({
        "step": range(1, n + 1), "generated_tokens": [10] * n,
        "cum_generated_tokens": cum or [10 * (i + 1) for i in range(n)], "reward_mean": [0.5] * n,
        "frac_informative": [0.5] * n, "frac_reward_zero_std": [0.5] * n,
        "clipped_ratio": [0.1] * n, "mean_length": [20.0] * n, "tokens_after_correct": [0.0] * n,
        "E_T": [40.0] * n, "xi_t": [1.0] * n, "H": [H] * n})


def test_a_refusal_names_each_check_row_and_column():
    df = _history(2, 0, cum=[10, 5])
    df.loc[1, "H"] = 5
    with pytest.raises(TableError) as err:
        validate(df, HISTORY)
    assert str(err.value) == (
        "history: 2 schema failure(s)\n"
        "  table column 'history': cum_generated_tokens must not decrease (value 0)\n"
        "  row 0 column 'H': greater_than(0) (value 0)")
    with pytest.raises(TableError, match="^the cell's history: 1 schema failure"):
        validate(_history(1, 0), HISTORY, "the cell's history")


def test_a_refusal_lists_ten_and_counts_the_rest():
    with pytest.raises(TableError) as err:
        validate(_history(12, 0), HISTORY)
    lines = str(err.value).split("\n")
    assert lines[0] == "history: 12 schema failure(s)" and len(lines) == 12
    assert lines[1:11] == [f"  row {i} column 'H': greater_than(0) (value 0)" for i in range(10)]
    assert lines[11] == "  ... and 2 more"
    with pytest.raises(TableError) as err:
        validate(_history(10, 0), HISTORY)
    assert len(str(err.value).split("\n")) == 11 and "more" not in str(err.value)


def test_reading_unknown_rollout_columns_is_refused(tmp_path):
    with pytest.raises(ValueError) as err:
        read_rollouts(tmp_path / "r.parquet", ["n_tokens", "nope"])
    assert str(err.value) == "not rollout schema columns: ['nope']"


def test_a_damaged_rollout_file_is_read_tables_refusal(tmp_path):
    # the lean reader gives up on a file pyarrow cannot open; read_table then names the problem
    bad = tmp_path / "rollouts.parquet"
    bad.write_text("not parquet")
    with pytest.raises(TableError) as err:
        read_rollouts(bad)
    assert str(err.value).startswith(f"rollouts table {bad} is not a readable parquet file: ")


def _written(tmp_path, name: str, frame=None, table=None, **kw):
    import pyarrow.parquet as pq

    path = tmp_path / f"{name}.parquet"
    if table is not None:
        pq.write_table(table, path)
    else:
        frame.to_parquet(path, **kw)
    return path


def test_only_files_the_lean_checks_cover_take_the_fast_path(tmp_path):
    """The lean reader answers for a file pandas wrote with the schema's types, or one without
    pandas metadata; any other form (a stored index, ints kept as Python objects) goes to
    read_table, whose table it returns (string, not categorical, columns), and a file pandera
    refuses gets read_table's own message. Which path ran shows in prompt_id's dtype."""
    import pyarrow as pa

    from relbudget.core.schemas import ROLLOUTS, read_table
    from tests.synth import HAND_ROWS, tiny_table

    df = tiny_table(HAND_ROWS, 10)
    fast = [_written(tmp_path, "plain", df, index=False),
            _written(tmp_path, "no_pandas_metadata", table=pa.Table.from_pandas(
                df, preserve_index=False).replace_schema_metadata(None))]
    indexed = df.set_index(pd.Index(range(100, 100 + len(df)), name="row").astype("int64"))
    indexed.index = pd.Index(list(indexed.index), name="row")  # a stored column, not a range
    objects = df.assign(n_tokens=df["n_tokens"].astype(object))
    slow = [_written(tmp_path, "stored_index", indexed),
            _written(tmp_path, "object_ints", objects, index=False)]
    for path in fast + slow:
        got = read_rollouts(path)
        want = read_table(path, ROLLOUTS, schema_columns_only=True)
        assert isinstance(got["prompt_id"].dtype, pd.CategoricalDtype) == (path in fast), path
        pd.testing.assert_frame_equal(got.astype(want.dtypes.to_dict()).reset_index(drop=True),
                                      want.reset_index(drop=True))
    nulls = df.assign(n_tokens=df["n_tokens"].astype("Int64"))
    nulls.loc[0, "n_tokens"] = pd.NA
    flags = df.assign(final_correct=df["final_correct"].astype("boolean"))
    for path in (_written(tmp_path, "null_n_tokens", nulls, index=False),
                 _written(tmp_path, "nullable_flags", flags, index=False)):
        with pytest.raises(TableError) as want:
            read_table(path, ROLLOUTS, schema_columns_only=True)
        with pytest.raises(TableError) as got:
            read_rollouts(path)
        assert str(got.value) == str(want.value)
