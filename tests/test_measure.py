"""`relbudget measure` end to end, offline: the tiny policy on a local JSONL dataset."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from relbudget.cli import main
from relbudget.core.schemas import ROLLOUTS, read_table
from relbudget.measure.task import builtin_splits
from tests.helpers import pretrained


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
