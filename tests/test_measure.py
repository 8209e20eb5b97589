"""`relbudget measure` end to end, offline: the tiny policy on a local JSONL dataset."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from relbudget.cli import main
from relbudget.core.schemas import ROLLOUTS, read_table
from relbudget.measure.task import builtin_splits
from tests.helpers import pretrained, sigint_default


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return pretrained(tmp_path_factory.mktemp("policy"))


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory):
    train, _ = builtin_splits(9, 2, [1], 2, seed=3)
    path = tmp_path_factory.mktemp("data") / "sums.jsonl"
    path.write_text("".join(json.dumps({"q": p, "gold": str(a)}) + "\n"
                            for p, a in zip(train["prompt"], train["answer"])))
    return path


def _argv(policy_dir, jsonl, out, *extra):
    return ["measure", "--model", str(policy_dir), "--dataset", str(jsonl),
            "--column-map", "prompt=q,answer=gold", "--answer-format", "int", "--attempts", "4",
            "--max-tokens", "40", "--target-xi", "1.5", "--chunk-prompts", "3", "--out", str(out),
            *extra]


def test_measure_end_to_end(policy_dir, jsonl, tmp_path, capsys):
    out = tmp_path / "rollouts.parquet"
    assert main(_argv(policy_dir, jsonl, out)) == 0
    text = capsys.readouterr().out
    table = read_table(out, ROLLOUTS)
    assert table["prompt_id"].nunique() == 9 and len(table) == 36  # every row, 4 attempts each
    assert (table["max_tokens"] == 40).all() and table["first_correct_token"].notna().any()
    assert not (tmp_path / ".rollouts.chunks").exists()
    m = re.search(r"^GRPOConfig\(max_completion_length=(\d+)\)$", text, re.M)
    assert m, text
    assert "target xi = 1.5 -> H = " + m.group(1) in text

    # --json: plan's keys plus the line; the same H as `relbudget plan` on the written table
    assert main(["plan", "--rollouts", str(out), "--target-xi", "1.5", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["H"] == int(m.group(1))
    assert main(_argv(policy_dir, jsonl, out, "--json")) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["grpo_config"] == f"GRPOConfig(max_completion_length={plan['H']})"
    assert got["H"] == plan["H"]  # same seed, same table
    pd.testing.assert_frame_equal(read_table(out, ROLLOUTS), table)


def test_measure_bad_column_map(policy_dir, jsonl, tmp_path, capsys):
    argv = _argv(policy_dir, jsonl, tmp_path / "x.parquet")
    argv[argv.index("prompt=q,answer=gold")] = "question"
    assert main(argv) == 2
    assert "--column-map" in capsys.readouterr().err


# ---------------------------------------------------------------- found by the round-four probe


@pytest.mark.parametrize("extra,needle", [
    (("--threads", "0"), "--threads must be in 1..1024, got 0"),
    (("--attempts", "100000000"), "--attempts must be in 1..4096"),
    (("--batch-size", "0"), "--batch-size must be in 1..65536, got 0"),
    (("--chunk-prompts", "0"), "--chunk-prompts must be in 1.."),
    (("--temperature", "nan"), "--temperature must be a finite number > 0"),
    (("--target-xi", "0"), "--target-xi: target xi must be a finite number"),
])
def test_measure_flags_are_checked_before_the_model_loads(tmp_path, capsys, extra, needle):
    """Before: --threads 0 a traceback, --attempts 10^8 memory growing without a check,
    --batch-size 0 "range() arg 3 must not be zero" after the model loaded. The model path does
    not exist: the flags are refused before anything is loaded."""
    argv = ["measure", "--model", str(tmp_path / "no-model"), "--dataset", str(tmp_path / "x.jsonl"),
            "--answer-format", "int", "--attempts", "2", "--max-tokens", "8",
            "--out", str(tmp_path / "r.parquet")]
    assert main(argv + list(extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"relbudget measure: error: {err.split('error: ', 1)[1]}" and needle in err


def test_measure_refuses_a_folder_as_out_before_sampling(policy_dir, jsonl, tmp_path, capsys):
    """Before: every prompt sampled, then `cannot replace ...: it is a folder`."""
    (tmp_path / "rollouts").mkdir()
    assert main(_argv(policy_dir, jsonl, tmp_path / "rollouts")) == 2
    err = capsys.readouterr().err
    assert "--out " in err and "is a folder" in err
    assert not (tmp_path / ".rollouts.chunks").exists()  # nothing sampled


def test_ctrl_c_during_measure_is_one_line_and_130(policy_dir, jsonl, tmp_path):
    """A real SIGINT while it samples (before: a 108-line KeyboardInterrupt traceback, exit 1);
    the finished chunks stay, so the same command resumes."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "rollouts.parquet"
    argv = _argv(policy_dir, jsonl, out, "--attempts", "4096", "--chunk-prompts", "1")
    proc = subprocess.Popen([sys.executable, "-m", "relbudget.cli", *argv], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "HF_DATASETS_OFFLINE": "1"},
                            preexec_fn=sigint_default)
    seen = ""
    while "measure" not in seen:  # its progress bar: sampling has started
        ch = proc.stderr.read(1)
        assert ch, seen
        seen += ch
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, seen + rest
    assert "Traceback" not in seen + rest
    assert (seen + rest).rstrip().splitlines()[-1].endswith(
        "relbudget measure: error: interrupted by Ctrl-C (SIGINT); the finished chunks are "
        "kept, so the same command resumes")
    assert not out.exists()


def test_a_local_file_leaves_no_copy_in_the_hf_cache(jsonl):
    """Before: every local CSV/JSONL was copied as Arrow (with lock files) into
    ~/.cache/huggingface/datasets, outside the project. Now it is read through a temporary cache
    into memory: the dataset has no cache file."""
    from relbudget.measure.datasets import _load_local

    ds = _load_local(str(jsonl), "train_split")
    assert len(ds) == 9 and ds.cache_files == []
