"""relbudget.measure.datasets.load_hf_prompts on real local files, at its edges: the sizes it
accepts, the eval rows it carves out of one file (exactly min(n_eval, rows - 1)), a second file
as the eval split, the warnings, and each refusal word for word."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from relbudget.core.errors import DataError
from relbudget.measure.datasets import load_hf_prompts
from tests.helpers import local_source as src


def jsonl(path: Path, n: int, start: int = 0) -> Path:
    path.write_text("".join(json.dumps({"question": f"{i}+1=", "answer": str(i + 1)}) + "\n"
                            for i in range(start, start + n)))
    return path


@pytest.mark.parametrize("n_train,n_eval", [(0, 1), (1, -1), (-1, 0)])
def test_sizes_below_their_floor_are_refused_word_for_word(tmp_path, n_train, n_eval):
    with pytest.raises(ValueError) as err:
        load_hf_prompts(src(jsonl(tmp_path / "p.jsonl", 4)), n_train, n_eval, 0)
    assert str(err.value) == (f"n_train must be >= 1 and n_eval >= 0, got {n_train} and "
                              f"{n_eval}")


def test_the_smallest_sizes_are_accepted(tmp_path):
    train, evals = load_hf_prompts(src(jsonl(tmp_path / "p.jsonl", 4)), 1, 0, 0)
    assert (len(train), len(evals)) == (1, 0)
    train, evals = load_hf_prompts(src(jsonl(tmp_path / "p.jsonl", 2)), 1, 1, 0)
    assert (len(train), len(evals)) == (1, 1)


@pytest.mark.parametrize("rows,n_train,n_eval,sizes", [
    (5, 10, 2, (3, 2)),  # eval first: 2, the train split gets the 3 left
    (5, 2, 2, (2, 2)),
    (2, 8, 5, (1, 1)),  # at most rows - 1 for eval: one row stays for train
    (3, 8, 3, (1, 2)),
])
def test_eval_rows_carved_out_of_one_file(tmp_path, caplog, rows, n_train, n_eval, sizes):
    path = jsonl(tmp_path / "p.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="relbudget"):
        train, evals = load_hf_prompts(src(path), n_train, n_eval, 0)
    assert (len(train), len(evals)) == sizes
    assert not set(train["prompt_id"]) & set(evals["prompt_id"])  # disjoint
    short = [f"{path}: only {got} {what} prompts available (asked for {want})"
             for what, got, want in (("train", sizes[0], n_train), ("eval", sizes[1], n_eval))
             if got < want]
    assert [r.getMessage() for r in caplog.records] == short
    assert "raw_prompt" not in train.columns  # keep_raw is off by default


def test_one_row_cannot_give_an_eval_set_word_for_word(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", 1)
    with pytest.raises(DataError) as err:
        load_hf_prompts(src(path), 4, 1, 0)
    assert str(err.value) == (f"{path}: 1 row(s); carving an eval set out of the train split "
                              f"needs at least 2")
    assert len(load_hf_prompts(src(path), 4, 0, 0)[0]) == 1  # without eval rows it is enough


def test_a_second_file_is_the_eval_split(tmp_path):
    train_path, eval_path = jsonl(tmp_path / "t.jsonl", 6), jsonl(tmp_path / "e.jsonl", 3, 100)
    train, evals = load_hf_prompts(src(train_path, eval_split=str(eval_path)), 4, 3, 0)
    assert (len(train), len(evals)) == (4, 3)
    assert set(evals["answer"]) == {"101", "102", "103"}  # all from the second file
    assert set(train["answer"]) <= {str(i) for i in range(1, 7)}


def test_a_split_name_is_no_eval_file_word_for_word(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", 4)
    with pytest.raises(ValueError) as err:
        load_hf_prompts(src(path, eval_split="test"), 2, 1, 0)
    assert str(err.value).startswith("data.hf.eval_split 'test': for a local file, eval_split "
                                      "must be null (carve eval rows out of the file) or the "
                                      "path of a second local file (")


def test_a_train_split_name_is_ignored_for_a_local_file_with_a_warning(tmp_path, caplog):
    path = jsonl(tmp_path / "p.jsonl", 4)
    with caplog.at_level(logging.WARNING, logger="relbudget"):
        train, _ = load_hf_prompts(src(path, train_split="validation"), 2, 1, 0)
    assert len(train) == 2
    assert [r.getMessage() for r in caplog.records] == [
        "data.hf.train_split 'validation' ignored: a local file is one split"]


def test_the_seed_picks_the_rows_and_keep_raw_keeps_the_fields(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", 30)
    a, b = (load_hf_prompts(src(path), 5, 5, s) for s in (0, 1))
    assert list(a[0]["prompt_id"]) != list(b[0]["prompt_id"])
    again = load_hf_prompts(src(path), 5, 5, 0)
    assert list(again[0]["prompt_id"]) == list(a[0]["prompt_id"])
    raw, _ = load_hf_prompts(src(path), 5, 5, 0, keep_raw=True)
    assert {"raw_prompt", "raw_answer"} <= set(raw.columns)
