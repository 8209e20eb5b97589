"""Laws checked on generated inputs (hypothesis): the lean rollout reader agrees with the pandera
schema on every table, valid or not; an output set leaves all-old or all-new files whatever the
writes and wherever the process dies; the xi controller's H stays in [h_min, h_max] whatever the
E_t[T] it sees.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relbudget.core.io import output_set, remove_stale_temps, write_text
from relbudget.core.schemas import ROLLOUTS, STOP_REASONS, TableError, read_rollouts, read_table
from relbudget.train.controller import XiController

# A few dozen examples each: the rules' edges are drawn on purpose (one rule broken at a time, small
# values), so more examples add seconds, not cases.
FAST = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

# ---------------------------------------------------------------- the lean rollout reader

# One rule of the rollout table broken at a time (or none): each rule of the NumPy re-coding is
# met on its own, and a row can also break none.
BREAKS = ["none", "attempt<0", "duplicate", "n_tokens<0", "max_tokens<=0", "fct<1", "fct>n",
          "stop_reason", "length!=cap", "first_correct!=fct", "first_correct_no_fct"]


@st.composite
def rollout_rows(draw):
    n_rows = draw(st.integers(1, 6))
    rows = []
    for i in range(n_rows):
        cap = draw(st.integers(1, 5))
        stop = draw(st.sampled_from(STOP_REASONS))
        if stop == "length":
            n = cap
        else:
            n = draw(st.integers(0, cap))
        fct = draw(st.none() | st.integers(1, max(n, 1))) if n >= 1 else None
        if stop == "first_correct":
            n = max(n, 1)
            fct = n
        rows.append({"prompt_id": draw(st.sampled_from(["a", "b", "c"])), "attempt": i,
                     "n_tokens": n, "max_tokens": cap, "first_correct_token": fct,
                     "stop_reason": stop, "final_correct": draw(st.booleans()),
                     "policy": draw(st.sampled_from(["p", "q"])), "seed": draw(st.integers(0, 2))})
    broken = draw(st.sampled_from(BREAKS))
    r = rows[draw(st.integers(0, n_rows - 1))]
    if broken == "attempt<0":
        r["attempt"] = -1
    elif broken == "duplicate":
        rows.append(dict(r))
    elif broken == "n_tokens<0":
        r.update(n_tokens=-1, first_correct_token=None, stop_reason="eos")
    elif broken == "max_tokens<=0":
        r["max_tokens"] = draw(st.integers(-1, 0))
    elif broken == "fct<1":
        r["first_correct_token"] = draw(st.integers(-1, 0))
    elif broken == "fct>n":
        r["first_correct_token"] = r["n_tokens"] + 1
    elif broken == "stop_reason":
        r["stop_reason"] = draw(st.sampled_from(["EOS", "", "stop"]))
    elif broken == "length!=cap":
        r.update(stop_reason="length", n_tokens=r["max_tokens"] + draw(st.sampled_from([-1, 1])))
    elif broken == "first_correct!=fct":
        r.update(stop_reason="first_correct", first_correct_token=max(1, r["n_tokens"] - 1),
                 n_tokens=r["n_tokens"] + 1)
    elif broken == "first_correct_no_fct":
        r.update(stop_reason="first_correct", first_correct_token=None)
    return rows, broken


def _table(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in ("attempt", "n_tokens", "max_tokens", "seed"):
        df[col] = df[col].astype("int64")
    df["first_correct_token"] = pd.array(df["first_correct_token"], dtype="Int64")
    return df


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    """Values only: categoricals and string dtypes as Python objects."""
    return pd.DataFrame({c: (df[c].astype(object) if df[c].dtype.kind not in "ib" else df[c])
                         for c in df}).reset_index(drop=True)


@settings(FAST, max_examples=30)
@given(rollout_rows())
def test_lean_reader_agrees_with_the_schema(tmp_path, drawn):
    rows, broken = drawn
    path = tmp_path / "r.parquet"
    _table(rows).to_parquet(path, index=False)
    try:
        full = read_table(path, ROLLOUTS, schema_columns_only=True)
    except TableError as err:
        full, full_err = None, str(err)
    from relbudget.core.schemas import _lean_rollouts

    lean = _lean_rollouts(path, list(ROLLOUTS.columns))
    # the lean checks accept exactly what pandera accepts (these tables are all of the form
    # they cover: int64, strings, bools, a nullable Int64)
    assert (lean is not None) == (full is not None), (broken, rows)
    if full is None:
        assert broken != "none"
        with pytest.raises(TableError) as got:
            read_rollouts(path)
        assert str(got.value) == full_err
        return
    pd.testing.assert_frame_equal(_plain(lean), _plain(full[list(ROLLOUTS.columns)]),
                                  check_dtype=False)
    cols = ["n_tokens", "first_correct_token"]
    pd.testing.assert_frame_equal(_plain(read_rollouts(path, cols)), _plain(full[cols]),
                                  check_dtype=False)


# ---------------------------------------------------------------- output_set: all old or all new

NAMES = ["a.json", "b.txt", "sub/c.txt"]


def _state(root: Path) -> dict[str, str | None]:
    return {n: (root / n).read_text() if (root / n).exists() else None for n in NAMES}


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if p.name.endswith(".tmp")
                  or ".old." in p.name)


def _run_and_die(root: Path, writes: list[tuple[int, str]], fail_at: int | None, kill: bool):
    """In a forked child: the writes inside one output set, the process ending (os._exit, as a
    SIGKILL would: no cleanup) or raising at its `fail_at`-th file-system step (a write inside
    the block, an fsync, a rename)."""
    pid = os.fork()
    if pid:
        return os.waitpid(pid, 0)[1]
    steps = [0]
    real_replace, real_fsync = os.replace, os.fsync

    def step():
        steps[0] += 1
        if fail_at is not None and steps[0] == fail_at:
            if kill:
                os._exit(9)
            raise RuntimeError("failure point")

    def replace(*a, **k):
        step()
        return real_replace(*a, **k)

    def fsync(*a, **k):
        step()
        return real_fsync(*a, **k)

    os.replace, os.fsync = replace, fsync
    try:
        with output_set():
            for i, text in writes:
                write_text(text, root / NAMES[i])
                step()
    except RuntimeError:
        os._exit(1)
    except BaseException:
        os._exit(3)
    os._exit(0)


@FAST
@given(old=st.lists(st.none() | st.text("xyz", max_size=3), min_size=3, max_size=3),
       writes=st.lists(st.tuples(st.integers(0, 2), st.text("abc", max_size=3)), min_size=1,
                       max_size=5),
       fail_at=st.none() | st.integers(1, 16), kill=st.booleans())
def test_output_set_is_all_old_or_all_new(tmp_path_factory, old, writes, fail_at, kill):
    root = tmp_path_factory.mktemp("set")
    for name, text in zip(NAMES, old):
        if text is not None:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
    before = _state(root)
    new = dict(before)
    for i, text in writes:  # the last write of a file wins
        new[NAMES[i]] = text
    status = _run_and_die(root, writes, fail_at, kill)
    assert os.WEXITSTATUS(status) in (0, 1, 9), status
    remove_stale_temps([root / n for n in NAMES])  # what the stage's next start does
    after = _state(root)
    assert after in (before, new), (after, before, new)
    if fail_at is None:
        assert after == new
    if not kill and os.WEXITSTATUS(status) == 1:
        assert after == before  # an exception before the journal: nothing replaced
    assert _leftovers(root) == []


# ---------------------------------------------------------------- the controller's clamp

windows = st.lists(st.lists(st.tuples(st.integers(0, 400), st.booleans()), min_size=0, max_size=6),
                   min_size=1, max_size=8)


@FAST
@given(windows, st.floats(0.05, 20), st.integers(1, 3), st.integers(1, 50), st.integers(0, 300),
       st.floats(0, 0.95), st.sampled_from(["ratio", "gamma"]))
def test_controller_H_stays_within_its_clamp(steps, target_xi, every, h_min, h_span, smoothing,
                                              method):
    h_max = h_min + h_span
    ctrl = XiController(target_xi=target_xi, every=every, h_min=h_min, h_max=h_max,
                        smoothing=smoothing, method=method)
    ctrl.resume(h_min + h_span // 2)
    for step, completions in enumerate(steps, start=1):
        if completions:
            ctrl.record([n for n, _ in completions], [hit for _, hit in completions])
        row = ctrl.step_row(step)
        assert h_min <= ctrl.H <= h_max
        if row is not None:
            assert h_min <= row["H"] <= h_max and row["H_next"] == ctrl.H
