"""The real `relbudget` CLI (its main in this process, the entry point in a subprocess twice), on
parquet tables written to tmp_path."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from relbudget.measure import estimators as est
from relbudget.cli import main
from relbudget.core.params import XiParams
from tests.helpers import cli_run as run
from tests.synth import make_rollouts

SUMMARY_KEYS = {"E_T", "E_T_ci", "E_T_prompt_mean", "unsolved_share", "n_prompts", "n_attempts",
               "horizons"}
HORIZON_KEYS = {"H", "xi", "p", "reward_var", "p_informative", "regime"}
PLAN_KEYS = {"target_xi", "H", "p", "reward_var", "p_informative", "E_T"}


def failed(r: subprocess.CompletedProcess) -> bool:
    """Exit 2, nothing on stdout, a message (not a traceback) on stderr."""
    return (r.returncode == 2 and r.stdout == "" and bool(r.stderr.strip())
            and "Traceback" not in r.stderr)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    df = make_rollouts(60, 8, seed=4)
    path = tmp_path_factory.mktemp("rollouts") / "base.parquet"
    df.to_parquet(path, index=False)
    return path, df


def test_xi_json(table):
    path, df = table
    r = run("xi", "--rollouts", path, "--json", "--n-bootstrap", 200, process=True)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)  # exactly one JSON object, nothing else on stdout
    assert SUMMARY_KEYS <= set(s)
    assert s["E_T"] == pytest.approx(est.pooled_E_T(df))
    assert s["E_T_ci"][0] < s["E_T"] < s["E_T_ci"][1]
    # both readings of T: within one completion beside the restart E_T (docs/definitions.md)
    assert s["E_T_within"] == pytest.approx(est.within_E_T(df))
    assert s["E_T_within_ci"][0] < s["E_T_within"] < s["E_T_within_ci"][1]
    assert 0 < s["unsolved_share_within"] < 1
    assert s["n_prompts"] == 60 and s["n_attempts"] == 480
    assert s["group_size"] == XiParams.of_project().group_size  # defaults come from params
    assert [h["H"] for h in s["horizons"]] == est.summary_horizons(int(df["max_tokens"].max()))
    for h in s["horizons"]:
        assert HORIZON_KEYS <= set(h) and h["regime"] in est.REGIMES
        assert h["xi_within"] == pytest.approx(h["H"] / s["E_T_within"])


def test_xi_horizons_and_options(table):
    path, _ = table
    r = run("xi", "--rollouts", path, "--json", "--horizon", 8, "--horizon", 128, "--group-size", 4,
            "--n-bootstrap", 100, "--seed", 1, "--deficient-below", 0.2, "--ample-above", 1.0)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert [h["H"] for h in s["horizons"]] == [8, 128]
    assert [h["regime"] for h in s["horizons"]] == ["deficient", "ample"]
    assert s["group_size"] == 4


def test_xi_human_table(table):
    path, _ = table
    r = run("xi", "--rollouts", path, "--n-bootstrap", 100)
    assert r.returncode == 0, r.stderr
    assert "E[T] =" in r.stdout and "regime" in r.stdout and "unsolved" in r.stdout
    assert "within one completion" in r.stdout and "xi_wthn" in r.stdout  # both readings of T
    assert len([ln for ln in r.stdout.splitlines() if ln.strip().startswith("128 ")]) == 1


def test_plan_json_and_human(table):
    path, df = table
    r = run("plan", "--rollouts", path, "--target-xi", 1.5, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert PLAN_KEYS <= set(out)
    assert out["H"] == max(1, round(1.5 * est.pooled_E_T(df)))
    assert out["p"] is not None and not out["extrapolated"]
    r = run("plan", "--rollouts", path, "--target-xi", 1.5, "--group-size", 4)
    assert r.returncode == 0 and f"H = {out['H']}" in r.stdout


def test_xi_reward_budget_json_and_human(table):
    path, df = table
    r = run("xi", "--rollouts", path, "--json", "--reward", "budget", "--horizon", 64,
            "--n-bootstrap", 100)
    assert r.returncode == 0, r.stderr
    h = json.loads(r.stdout)["horizons"][0]
    want = est.reward_curves(df, [64], XiParams.of_project().group_size, "budget").iloc[0]
    assert h["reward_mean"] == pytest.approx(want["reward_mean"])
    assert h["reward_var"] == pytest.approx(want["reward_var"])
    assert h["p_informative"] == pytest.approx(want["p_informative"])
    assert h["p"] == pytest.approx(est.hit_within(df, 64).mean())
    r = run("xi", "--rollouts", path, "--reward", "budget", "--n-bootstrap", 100)
    assert r.returncode == 0 and "E[R]" in r.stdout and "reward: budget" in r.stdout


def test_plan_beyond_cap_warns(table):
    path, _ = table
    r = run("plan", "--rollouts", path, "--target-xi", 10, "--json")
    assert r.returncode == 0
    out = json.loads(r.stdout)
    assert out["extrapolated"] and out["p"] is None
    assert "warning" in r.stderr and "max_tokens=128" in r.stderr


def test_plan_bad_target_xi(table, capsys):
    path, _ = table
    r = run("plan", "--rollouts", path, "--target-xi", 0, process=True)
    assert failed(r) and "--target-xi" in r.stderr
    for xi in ("-1", "nan", "inf"):  # the same path in process (fast)
        assert main(["plan", "--rollouts", str(path), f"--target-xi={xi}"]) == 2
        assert "--target-xi" in capsys.readouterr().err


def test_horizon_above_cap_fails(table):
    path, _ = table
    r = run("xi", "--rollouts", path, "--horizon", 129)
    assert failed(r) and "H=129" in r.stderr and "max_tokens=128" in r.stderr


def test_missing_file_fails(tmp_path):
    r = run("xi", "--rollouts", tmp_path / "nope.parquet", "--json")
    assert failed(r) and "nope.parquet" in r.stderr


def test_not_parquet_fails(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_text("not a table")
    assert failed(run("plan", "--rollouts", path, "--target-xi", 1))


@pytest.mark.parametrize("breakage", ["duplicate", "length_short"])
def test_schema_violation_fails_with_row(tmp_path, breakage):
    df = make_rollouts(5, 4, seed=0)
    if breakage == "duplicate":
        row = 6
        df.loc[row, "attempt"] = df.loc[row - 1, "attempt"]  # (prompt_id, attempt) twice
    else:
        row = int(df.index[df["stop_reason"] != "length"][3])
        df.loc[row, "stop_reason"] = "length"  # 'length' but n_tokens < max_tokens
        assert df.loc[row, "n_tokens"] < df.loc[row, "max_tokens"]
    path = tmp_path / "bad.parquet"
    df.to_parquet(path, index=False)
    r = run("xi", "--rollouts", path, "--json")
    assert failed(r) and f"row {row}" in r.stderr, r.stderr


# In process (fast): argument checks that go through XiParams.


@pytest.mark.parametrize("args, needle", [
    (["--group-size", "1"], "--group-size"),
    (["--n-bootstrap", "3"], "--n-bootstrap"),
    (["--deficient-below", "5"], "deficient_below"),
])
def test_bad_params_in_process(table, capsys, args, needle):
    path, _ = table
    assert main(["xi", "--rollouts", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
