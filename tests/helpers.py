"""What several test modules share (test helper, not a test module): the tiny sizes, params files
built on the project's params.yaml, a pre-trained tiny policy, and process helpers.

Test modules import from here (or use the fixtures of conftest.py), never from one another:
tests/test_hygiene.py checks it. Synthetic rollout tables live in tests/synth.py. Heavy imports
(torch, TRL) stay inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- tiny sizes, one of each kind

# A params overlay on params.yaml for stage runs in a project copy (conftest's `project`):
# sizes small enough for a whole pipeline in well under a minute of compute on 2 cores.
TINY_PARAMS = {
    # The single-attempt task keeps these pipeline tests fast; tests/test_task_retry.py and
    # test_retry_policy_* cover the self-correcting default.
    "data": {"n_train": 8, "n_eval": 4, "levels": [1], "seed": 0, "style": "trace"},
    # About a third of attempts right after ~3 s of pre-training: hits and misses both occur.
    "base_policy": {"hidden_size": 32, "n_layers": 2, "n_heads": 2, "intermediate_size": 64,
                    "max_position": 128, "steps": 200, "batch_size": 64, "lr": 0.003,
                    "n_traces": 60},
    "sampling": {"attempts": 4, "max_tokens": 24, "batch_size": 32, "chunk_prompts": 4},
    "xi": {"n_bootstrap": 50},
    "regimes": {"low": 1.0, "high": 2.0},  # named xi of the sweep grid below
    "train": {"token_budget": 600, "max_steps": 6, "num_generations": 4, "prompts_per_step": 2,
              "checkpoint_every": 2, "controller": {"h_max": 64}, "per_prompt": {"h_max": 64}},
    # two multiples of E[T] keep the evaluation cap inside the tiny context (max_position 128)
    "evaluate": {"attempts": 4, "h_eval": 24, "h_multiples": [0.75, 1.5], "pass_k": [1, 4],
                 "batch_size": 32},
    "sweep": {"xi": [1.0, 2.0], "seeds": [0], "token_budget": 300, "eval_attempts": 2},
    # every arm, one seed; the band keeps every prompt of so few; one evaluation along the way
    "arms": {"filter_band": [0.0, 1000.0], "eval_at": [100]},
}

# A params overlay on params.yaml for the Prefect flow's tests (tests/test_flow.py,
# tests/test_browser.py): fewer tasks than TINY_PARAMS (one regime, one sweep cell, one arm).
TINY_FLOW_PARAMS = {
    "data": {"n_train": 8, "n_eval": 4, "levels": [1], "style": "trace"},
    # the smallest policy that solves some one-digit sums (a policy that never does makes xi
    # fail); pre-trained with the trace length, slip rate and threads these tests were tuned with
    "base_policy": {"steps": 200, "hidden_size": 32, "n_layers": 2, "n_heads": 4,
                    "intermediate_size": 64, "max_position": 128, "n_traces": 60,
                    "trace_tokens": 320, "slip_plain": 0.05, "threads": 1},
    "sampling": {"attempts": 2, "max_tokens": 40, "batch_size": 16, "chunk_prompts": 4},
    "xi": {"n_bootstrap": 50},
    "regimes": {"a": 1.0},
    "train": {"stop": "steps", "max_steps": 2, "token_budget": 150000, "num_generations": 4,
              "prompts_per_step": 2, "checkpoint_every": 50, "controller": {"h_max": 64},
              "per_prompt": {"h_max": 64}},
    "evaluate": {"attempts": 2, "h_eval": 40, "h_multiples": [1.0], "pass_k": [1, 2],
                 "batch_size": 16},
    "sweep": {"xi": [1.0], "seeds": [0], "eval_attempts": 2},
    "arms": {"arms": ["controller"]},
}

# Train params (keyword arguments of TrainParams) for GRPO on the tiny policy in one thread.
TINY_TRAIN = dict(num_generations=4, prompts_per_step=2, lr=1e-3, threads=1)


# ---------------------------------------------------------------- params files


def deep_update(base: dict, upd: dict) -> dict:
    """`base` with `upd` merged in, section by section; `regimes` is replaced whole."""
    out = dict(base)
    for k, v in upd.items():
        out[k] = deep_update(out.get(k, {}), v) if isinstance(v, dict) and k != "regimes" else v
    return out


def project_params() -> dict:
    """The project's params.yaml, as a raw dict (a fresh copy each call)."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_params(**overrides) -> dict:
    """params.yaml with TINY_PARAMS and then `overrides` merged in (a raw params dict)."""
    return deep_update(deep_update(project_params(), TINY_PARAMS), overrides)


def flow_params(**overrides) -> dict:
    """params.yaml with TINY_FLOW_PARAMS and then `overrides` merged in (a raw params dict)."""
    return deep_update(deep_update(project_params(), json.loads(json.dumps(TINY_FLOW_PARAMS))),
                       overrides)


def local_source(path, **fields):
    """data.hf for a local jsonl file of question/answer rows (integer answers), `fields`
    overriding any of its settings."""
    from relbudget.core.params import HFSource

    return HFSource(**{"path": str(path), "name": None, "train_split": "train", "eval_split": None,
                       "prompt_column": "question", "answer_column": "answer", "id_column": None,
                       "answer_format": "int", "prompt_template": "{prompt}", **fields})


def project_copy(dest: Path, params: dict) -> Path:
    """The project's code, dvc.yaml and .dvcignore copied into the new folder `dest`, with
    `params` (a raw params dict) as its params.yaml."""
    import shutil

    dest.mkdir()
    for name in ("relbudget", "stages", "flows"):
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def no_outside_pipeline(monkeypatch) -> None:
    """Stage runs in a test belong to no pipeline run of the shell that started pytest."""
    for var in ("RELBUDGET_PIPELINE_RUN", "DVC_STAGE", "DVC_EXP_NAME"):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------- a tiny policy, training


def pretrained(folder, after_answer: str = "", steps: int = 200):
    """A tiny policy pre-trained on one-digit sums (about 3 s), saved in HF format in folder;
    `after_answer` is text it learns to write after its answer, before EOS (a longer text needs
    more `steps` to keep the answers right)."""
    from relbudget.measure.task import trace_corpus
    from relbudget.testing import tiny_policy

    corpus = [(q, c + after_answer, eos) for q, c, eos in trace_corpus(60, [1], 2, seed=0)]
    return tiny_policy(folder, corpus, steps=steps)


def killed_at_step_3(monkeypatch, model, tok, prompts, t, H, work) -> None:
    """train_policy killed in step 3 (after the checkpoint of step 2, with checkpoint_every=2)."""
    import pytest

    from relbudget.train.grpo import HistoryCallback, train_policy

    real = HistoryCallback.on_step_end

    def crash_at_3(self, args, state, control, **kw):
        if state.global_step == 3:
            raise RuntimeError("killed")
        return real(self, args, state, control, **kw)

    monkeypatch.setattr(HistoryCallback, "on_step_end", crash_at_3)
    with pytest.raises(RuntimeError, match="killed"):
        train_policy(model, tok, prompts, t, H, work)
    monkeypatch.setattr(HistoryCallback, "on_step_end", real)


# ---------------------------------------------------------------- processes and ports


def sigint_default() -> None:
    """preexec_fn for a child that must see Ctrl-C as a terminal sends it: a suite started in
    the background (`cmd &` in a script, nohup) ignores SIGINT, and children inherit that, so
    Python would never raise KeyboardInterrupt in them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """Stop a process started in its own session, and its children, by its group id: SIGTERM,
    SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


# ---------------------------------------------------------------- DVC in a temp repo

def sh(*cmd: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def ran_stages(log: str) -> set[str]:
    """The stages a `dvc repro` log says it ran."""
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}


def git_dvc_init(project: Path) -> Path:
    """`project` made a git + DVC repo (no analytics)."""
    sh("git", "init", "-q", cwd=project)
    sh("dvc", "init", "-q", cwd=project)
    sh("dvc", "config", "core.analytics", "false", cwd=project)
    return project


def stale(repo: Path, *targets: str) -> set[str]:
    """The stages `dvc status` lists as changed (of `targets`, stage names: all when none)."""
    status = sh("dvc", "status", *targets, cwd=repo)
    return {ln[:-1] for ln in status.splitlines() if ln.endswith(":") and not ln[0].isspace()}


# ---------------------------------------------------------------- the relbudget CLI

def cli_run(*args, process: bool = False) -> subprocess.CompletedProcess:
    """`relbudget ARGS` from the project root: its exit code, stdout and stderr. In this process
    (relbudget.cli.main, what the console script calls; ~2-5 s less a call than a fresh
    interpreter's imports; a traceback is an exception that fails the test), or in a subprocess
    with `process=True` (the real entry point)."""
    import contextlib
    import io

    from relbudget.cli import main

    if process:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        return subprocess.run([sys.executable, "-m", "relbudget.cli", *map(str, args)],
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(map(str, args)))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
