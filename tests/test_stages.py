"""Stages on real files: determinism, kill-and-resume of sample_t, early exit, FAILED runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from relbudget.measure import estimators as est
from relbudget.measure.models import char_tokenizer, tiny_llama
from relbudget.core.params import load_params, params_with
from relbudget.measure.sampling import hf_generate_fn, requests_from, sample_table
from relbudget.core.schemas import ROLLOUTS, validate
from relbudget.measure.task import builtin_splits
from relbudget.testing import rambling_corpus, tiny_policy
from stages import base_policy, prepare, sample_t, xi
from stages._cli import execute
from tests.helpers import ROOT, no_outside_pipeline, tiny_params


def write_params(project: Path, **overrides) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params(**overrides), sort_keys=False))


MEASURED = dict(data={"n_train": 24, "n_eval": 4, "levels": [1]},
                sampling={"chunk_prompts": 1, "attempts": 4, "max_tokens": 24})


@pytest.fixture(scope="module")
def measured_data(tmp_path_factory) -> Path:
    """data/ after prepare and base_policy on MEASURED's params, run once for this file's tests
    (each test works on its own copy: the pre-training is the same seeded bytes every time)."""
    folder = tmp_path_factory.mktemp("measured")
    write_params(folder, **MEASURED)
    mp = pytest.MonkeyPatch()
    mp.chdir(folder)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    no_outside_pipeline(mp)
    try:
        params = load_params(folder / "params.yaml")
        execute("prepare", prepare.run, params, prepare.SECTIONS)
        execute("base_policy", base_policy.run, params, base_policy.SECTIONS)
    finally:
        mp.undo()
    return folder / "data"


@pytest.fixture
def measured(project: Path, measured_data: Path) -> Path:
    """The project copy with prepare's and base_policy's outputs in place."""
    import shutil

    write_params(project, **MEASURED)
    shutil.copytree(measured_data, project / "data", symlinks=True)
    return project


def test_same_seed_same_table(measured: Path):
    params = load_params("params.yaml")
    execute("sample_t", sample_t.run, params, sample_t.SECTIONS)
    first = pd.read_parquet("data/rollouts/base.parquet")
    execute("sample_t", sample_t.run, params, sample_t.SECTIONS)
    second = pd.read_parquet("data/rollouts/base.parquet")
    pd.testing.assert_frame_equal(first, second)
    assert len(first) == 24 * 4
    validate(first, ROLLOUTS)
    assert not Path("data/rollouts/.base.chunks").exists()  # chunks removed once the table is written


def test_sample_t_killed_leaves_no_output_and_resumes_to_the_same_table(measured: Path):
    params = load_params("params.yaml")
    execute("sample_t", sample_t.run, params, sample_t.SECTIONS)
    reference = pd.read_parquet("data/rollouts/base.parquet")
    Path("data/rollouts/base.parquet").unlink()

    proc = subprocess.Popen([sys.executable, "-m", "stages.sample_t"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    chunks = Path("data/rollouts/.base.chunks")
    deadline = time.time() + 120
    while time.time() < deadline and len(list(chunks.glob("chunk-*.parquet"))) < 3:
        assert proc.poll() is None, "sample_t finished before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(chunks.glob("chunk-*.parquet")))
    assert 3 <= done_before < 24
    assert not Path("data/rollouts/base.parquet").exists()
    assert not list(Path("data/rollouts").glob(".base.parquet.*"))  # no half-written temp file left

    execute("sample_t", sample_t.run, params, sample_t.SECTIONS)
    pd.testing.assert_frame_equal(pd.read_parquet("data/rollouts/base.parquet"), reference)


def test_stage_exception_ends_mlflow_run_failed(measured: Path):
    Path("data/rollouts").mkdir(parents=True, exist_ok=True)
    bad = pd.DataFrame({"prompt_id": ["a", "a"], "attempt": [0, 0], "n_tokens": [3, 4],
                        "max_tokens": [4, 4], "first_correct_token": [None, None],
                        "stop_reason": ["eos", "length"], "final_correct": [False, False],
                        "policy": ["p", "p"], "seed": [0, 0]})
    bad.to_parquet("data/rollouts/base.parquet")
    params = load_params("params.yaml")
    with pytest.raises(ValueError, match="schema failure"):
        execute("xi", xi.run, params, xi.SECTIONS)
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["relbudget"], filter_string="tags.stage = 'xi'")
    assert list(runs["status"]) == ["FAILED"]
    assert "schema failure" in runs["tags.error"].iloc[0]
    # Every failure case (not only the first) is kept as an artifact of the failed run.
    failures = mlflow.artifacts.load_text(f"{runs['artifact_uri'].iloc[0]}/schema_failures.csv")
    assert "multiple_fields_uniqueness" in failures and "prompt_id" in failures
    assert not Path("data/xi/summary.json").exists()


@pytest.fixture(scope="module")
def rambling_policy(tmp_path_factory) -> Path:
    """A real tiny policy trained to keep writing guesses after its answer, as RL-ed ones do."""
    return tiny_policy(tmp_path_factory.mktemp("rambler"), rambling_corpus(100, 0), heads=2,
                       steps=150, batch_size=32, lr=0.01)


def test_early_exit_spends_min_T_Hmax_and_keeps_hits(rambling_policy: Path):
    from relbudget.measure.models import load_saved

    model, tok = load_saved(rambling_policy)
    train, _ = builtin_splits(16, 2, [1], 2, 0)
    reqs = requests_from(train)
    tables = {}
    for early in (False, True):
        fn = hf_generate_fn(model, tok, 48, 1.0, 1.0, early, 64)
        tables[early] = sample_table(fn, tok, reqs, 4, 48, 0, "rambler", 8)
    full, early = tables[False], tables[True]
    hits = full["first_correct_token"].notna()
    assert hits.sum() >= 8, "the test policy should solve some one-digit sums"
    # Same generations up to the first correct answer: same hits, same positions.
    pd.testing.assert_series_equal(full["first_correct_token"], early["first_correct_token"])
    # Early exit spends exactly sum(min(T, Hmax)); without it the rambling costs more.
    assert early["n_tokens"].sum() == est.consumed(full).sum()
    assert full["n_tokens"].sum() > early["n_tokens"].sum()
    stopped = early[early["stop_reason"] == "first_correct"]
    assert len(stopped) > 0 and (stopped["n_tokens"] == stopped["first_correct_token"]).all()


def test_a_killed_cell_resumes_from_its_checkpoint(measured: Path):
    import shutil

    from stages import evaluate, sweep

    write_params(measured, data=MEASURED["data"],
                 train={"stop": "steps", "max_steps": 40, "checkpoint_every": 2,
                        "num_generations": 4, "prompts_per_step": 2})
    params = load_params("params.yaml")
    for name, mod in (("sample_t", sample_t), ("xi", xi)):
        execute(name, mod.run, params, mod.SECTIONS)
    execute("evaluate", evaluate.run, params, evaluate.SECTIONS, "base")
    cell = "xi2.0-s0"  # the regime `high` of the tiny params
    execute("sweep", sweep.run, params, sweep.SECTIONS, cell)
    reference = pd.read_parquet(f"data/sweep/{cell}/history.parquet")
    shutil.rmtree(f"data/sweep/{cell}")

    proc = subprocess.Popen([sys.executable, "-m", "stages.sweep", cell],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = Path(f"data/sweep/.{cell}.work/trainer")
    deadline = time.time() + 300
    while time.time() < deadline and not list(work.glob("checkpoint-4*")):
        assert proc.poll() is None, "the cell finished before it could be killed"
        time.sleep(0.05)
    time.sleep(0.2)  # mid-training; an unfinished checkpoint is skipped on resume
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not Path(f"data/sweep/{cell}/history.parquet").exists()

    execute("sweep", sweep.run, params, sweep.SECTIONS, cell)
    work = work.parent
    resumed = pd.read_parquet(f"data/sweep/{cell}/history.parquet")
    cols = ["step", "generated_tokens", "cum_generated_tokens", "reward_mean", "frac_informative"]
    pd.testing.assert_frame_equal(resumed[cols], reference[cols])
    assert not work.exists()


def test_horizon_beyond_the_model_context_is_refused_before_training():
    from relbudget.train.training import check_length

    tok = char_tokenizer()
    model = tiny_llama(tok, 32, 1, 2, 64, max_position=40)
    prompts = pd.DataFrame({"prompt": ["12+34=", "1+2="]})
    train = params_with({"train": {"use_vllm": True}}).train
    assert check_length(model, tok, prompts, 34, train) == 40  # 6 + 34 = 40 fits, sizes vLLM
    with pytest.raises(ValueError, match="max_position_embeddings"):
        check_length(model, tok, prompts, 35, train)
    # TRL's colocated vLLM engine too small for prompt + H: refused, naming the field
    small = params_with({"train": {"use_vllm": True, "vllm_max_model_len": 39}}).train
    with pytest.raises(ValueError, match=r"train.vllm_max_model_len = 39 .* at least 40"):
        check_length(model, tok, prompts, 34, small)
    roomy = params_with({"train": {"use_vllm": True, "vllm_max_model_len": 64}}).train
    assert check_length(model, tok, prompts, 34, roomy) == 64


def test_a_tokenizer_that_adds_bos_is_flagged_before_training(caplog):
    from tokenizers.processors import TemplateProcessing

    from relbudget.train.training import check_length

    tok = char_tokenizer()
    model = tiny_llama(tok, 32, 1, 2, 64, max_position=64)
    prompts = pd.DataFrame({"prompt": ["12+34="]})
    train = params_with({}).train
    with caplog.at_level("WARNING", logger="relbudget.train"):
        check_length(model, tok, prompts, 8, train)
    assert "special tokens" not in caplog.text
    tok._tokenizer.post_processor = TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)])
    with caplog.at_level("WARNING", logger="relbudget.train"):
        check_length(model, tok, prompts, 8, train)
    assert "TRL will add them" in caplog.text and "<bos>" in caplog.text


def test_each_arm_stage_runs_only_its_own_arms():
    """arm@ARM-SEED takes the adaptive arms; the sweep's best fixed xi is fixed_best@SEED's,
    whose key is a seed. Both refused before any compute."""
    from stages import arm, fixed_best

    params = load_params(ROOT / "params.yaml")
    with pytest.raises(ValueError, match="not an adaptive arm.*stages.fixed_best"):
        arm.run(params, "fixed_best-s0")
    with pytest.raises(ValueError, match="key is a seed"):
        fixed_best.run(params, "s0")
