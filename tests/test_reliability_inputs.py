"""Round three of docs/failures.md, inputs, limits and interrupts: each case on the real thing (a
slow HTTP server on 127.0.0.1, a real SIGINT, a real file-size limit, a real immutable file)
gives one `error:` line with its exit code, and leaves existing outputs as they were."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from relbudget.core.params import ParamsError, load_params, read_yaml
from tests.helpers import ROOT, local_source, sigint_default, tiny_params
from tests.synth import make_rollouts


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            **extra}


def _one_error_line(r: subprocess.CompletedProcess, code: int = 2) -> str:
    """The stage's last stderr line, after checking it failed cleanly with `code`."""
    assert r.returncode == code, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), r.stderr[-3000:]
    return last


def _stage(name: str, cwd: Path, *args: str, timeout: float = 180, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"stages.{name}", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, **kw)


def _stage_here(name: str, cwd: Path, monkeypatch, capsys, *args: str) -> subprocess.CompletedProcess:
    """`python -m stages.NAME ARGS` in this process (runpy runs the module as __main__: the same
    argument parsing, refusal and exit code, without a fresh interpreter's ~5 s of imports), for
    refusals that happen before any work; MLflow in cwd's mlflow.db."""
    import runpy
    import signal
    import warnings

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{cwd}/mlflow.db")
    monkeypatch.setattr(sys, "argv", [f"stages/{name}.py", *args])
    handler = signal.getsignal(signal.SIGTERM)  # the stage's main installs its own
    try:
        with pytest.raises(SystemExit) as exit_, warnings.catch_warnings():
            # the module ran as __main__ in a fresh namespace, beside its imported copy (which
            # other tests use): runpy says so; the stage's own code is the same either way
            warnings.filterwarnings("ignore", "'stages\\.", RuntimeWarning)
            runpy.run_module(f"stages.{name}", run_name="__main__", alter_sys=True)
    finally:
        signal.signal(signal.SIGTERM, handler)
    return subprocess.CompletedProcess(sys.argv, exit_.value.code, "", capsys.readouterr().err)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def xi_project(tmp_path) -> Path:
    """A folder with tiny params and a synthetic rollout table: what the xi stage reads."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    (tmp_path / "data" / "rollouts").mkdir(parents=True)
    make_rollouts(40, 8, seed=3).to_parquet(tmp_path / "data" / "rollouts" / "base.parquet",
                                            index=False)
    return tmp_path


# ---------------------------------------------------------------- params: YAML limits, merge keys


def test_yaml_merge_keys_are_accepted_and_may_be_overridden(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("common: &c {lr: 0.1, beta: 0.0}\ntrain:\n  <<: *c\n  lr: 0.2\n")
    assert read_yaml(path, ParamsError, "missing")["train"] == {"lr": 0.2, "beta": 0.0}
    path.write_text("train:\n  lr: 0.1\n  lr: 0.2\n")  # a plain key twice is still refused
    with pytest.raises(ParamsError, match="duplicate key 'lr'"):
        read_yaml(path, ParamsError, "missing")


def test_params_with_a_merge_key_run_a_stage(xi_project):
    """The project's own params, with one section written through a merge key: a stage reads it
    as DVC does (it used to be refused as not valid YAML)."""
    raw = yaml.safe_load((xi_project / "params.yaml").read_text())
    xi = raw.pop("xi")
    text = yaml.safe_dump(raw, sort_keys=False)
    text += "xi:\n  <<: &xi_defaults " + yaml.safe_dump(xi, default_flow_style=True).strip() + "\n"
    (xi_project / "params.yaml").write_text(text)
    assert load_params(xi_project / "params.yaml").xi.n_bootstrap == xi["n_bootstrap"]


BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}' if p else 'x'] * 10)}]\n"
               for p, c in zip(["", *"abcdefgh"], "abcdefghi"))


@pytest.mark.parametrize("text,needle", [
    (BOMB, "alias bomb"),  # 10^9 values once expanded, 9 lines of text
    ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested more than 64 levels"),
    ("".join("  " * i + f"k{i}:\n" for i in range(2000)), "nested more than 64 levels"),
])
def test_alias_bombs_and_deep_nesting_are_one_line(xi_project, text, needle, monkeypatch, capsys):
    (xi_project / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match=needle):
        load_params(xi_project / "params.yaml")
    r = _stage_here("xi", xi_project, monkeypatch, capsys)
    assert needle in _one_error_line(r) and "params.yaml" in r.stderr
    assert not (xi_project / "data" / "xi").exists()


# ---------------------------------------------------------------- a tracking server that hangs


class _HealthOnly(http.server.BaseHTTPRequestHandler):
    """/health answers at once; every other path (the MLflow API) hangs until the test ends."""
    release = threading.Event()

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path == "/health":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")
        else:
            self.release.wait(600)

    do_POST = do_GET

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def hanging_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HealthOnly)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _HealthOnly.release.set()
    server.shutdown()
    server.server_close()


def test_a_server_whose_api_hangs_is_one_line_in_bounded_time(xi_project, hanging_server):
    # was: silent past 300 s (only /health was checked, then MLflow's 120 s requests x 7
    # retries); now 10 s per probe. The bound here leaves room for imports on a loaded machine.
    r = _stage("xi", xi_project, env=_env(MLFLOW_TRACKING_URI=hanging_server), timeout=240)
    line = _one_error_line(r)
    assert hanging_server in line and "its API does not" in line and "timed out" in line
    assert not (xi_project / "data" / "xi").exists()


# ---------------------------------------------------------------- the MLflow store cannot be written


def test_an_immutable_mlflow_db_is_one_line(xi_project):
    db = xi_project / "mlflow.db"
    env = _env(MLFLOW_TRACKING_URI=f"sqlite:///{db}")
    assert _stage("xi", xi_project, env=env).returncode == 0  # the store exists and has a run
    before = _digests(xi_project / "data" / "xi"), db.read_bytes()
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this filesystem")
    try:
        r = _stage("xi", xi_project, env=env)
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    line = _one_error_line(r)
    assert str(db) in line and "read-only" in line and "chattr -i" in line
    assert (_digests(xi_project / "data" / "xi"), db.read_bytes()) == before


# ---------------------------------------------------------------- a full disk (a file-size limit)


def test_a_write_past_the_file_size_limit_keeps_the_old_outputs(xi_project):
    """RLIMIT_FSIZE at 20 kB: the xi stage's plots (about 45 kB) cannot be written. MLflow's file
    store keeps its own files small, so only the outputs hit the limit."""
    env = _env(MLFLOW_TRACKING_URI=(xi_project / "mlruns").as_uri(), MLFLOW_ALLOW_FILE_STORE="true")
    assert _stage("xi", xi_project, env=env).returncode == 0
    before = _digests(xi_project / "data" / "xi")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    r = _stage("xi", xi_project, env=env, preexec_fn=limit)
    line = _one_error_line(r)
    assert "File too large" in line and "data/xi" in line and "previous outputs are kept" in line
    assert _digests(xi_project / "data" / "xi") == before
    assert not list((xi_project / "data" / "xi").glob(".*"))  # no temp file left


# ---------------------------------------------------------------- Ctrl-C


def _runs(uri: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["relbudget"])


def test_ctrl_c_mid_stage_is_exit_130_and_a_killed_run(project):
    """A real SIGINT to a stage process while it pre-trains: exit 130, one line, the MLflow run
    KILLED with the reason, no policy written."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["base_policy"]["steps"] = 10**6
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = _env(MLFLOW_TRACKING_URI=os.environ["MLFLOW_TRACKING_URI"])
    assert _stage("prepare", project, env=env).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "stages.base_policy"], cwd=project, env=env,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    seen = []
    for line in proc.stderr:  # wait until it trains
        seen.append(line)
        if "pre-training a" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[1]
    r = subprocess.CompletedProcess(proc.args, proc.returncode, "", "".join(seen) + rest)
    line = _one_error_line(r, code=130)
    assert "Ctrl-C" in line and "KILLED" in line and "previous outputs are kept" in line
    run = _runs(os.environ["MLFLOW_TRACKING_URI"]).query("`tags.stage` == 'base_policy'").iloc[0]
    assert run["status"] == "KILLED" and "Ctrl-C" in run["tags.error"]
    assert not (project / "data" / "models" / "base").exists()
    assert not [p for p in (project / "data" / "models").iterdir()]  # no temp folder left


def test_ctrl_c_after_the_outputs_are_written_leaves_the_run_finished(project, monkeypatch):
    """A stage whose outputs are all renamed into place when a real SIGINT arrives (logging
    artifacts, say): its run ends FINISHED with a note, not FAILED."""
    from relbudget.core.io import output_set, write_text
    from relbudget.core.params import load_params as load
    from relbudget.core.paths import stage_files
    from stages._cli import execute

    params = load(project / "params.yaml")
    outputs = stage_files(params.paths, "xi").outputs

    def stage(params):
        with output_set():
            for out in outputs:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                write_text("new\n", out)
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C while the stage logs its artifacts
        time.sleep(5)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        with pytest.raises(KeyboardInterrupt) as err:
            execute("xi", stage, params, ["xi"])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "complete" in err.value.outcome
    run = _runs(os.environ["MLFLOW_TRACKING_URI"]).iloc[0]
    assert run["status"] == "FINISHED" and "Ctrl-C" in run["tags.note"]
    assert all(Path(o).read_text() == "new\n" for o in outputs)


# ---------------------------------------------------------------- prompts, models, templates


def test_a_looping_chat_template_is_stopped_in_bounded_time(tmp_path):
    """A model folder's chat template is a program: one that loops 10^10 times is stopped at
    RENDER_SECONDS with one line, instead of hanging every stage that renders prompts."""
    from relbudget.core.errors import ModelError
    from relbudget.measure.models import char_tokenizer, load_tokenizer, render_prompt

    tok = char_tokenizer()
    tok.chat_template = ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                         "{% endfor %}{{ messages[0]['content'] }}")
    tok.save_pretrained(tmp_path / "policy")
    loaded = load_tokenizer(tmp_path / "policy")
    with pytest.raises(ModelError, match="did not render a prompt within 10 s"):
        render_prompt(loaded, "1+2=")
    loaded.chat_template = "{{ messages[0]['content'] }}!"  # a sane template still renders
    assert render_prompt(loaded, "1+2=") == "1+2=!"


@pytest.mark.parametrize("template,needle", [
    ("{{ raise_exception('no user role here') }}", "no user role here"),
    ("{% for %}", "TemplateSyntaxError"),
])
def test_a_chat_template_that_fails_is_one_line(template, needle):
    from relbudget.core.errors import ModelError
    from relbudget.measure.models import char_tokenizer, render_prompt

    tok = char_tokenizer()
    tok.chat_template = template
    with pytest.raises(ModelError, match="fails on a user turn") as err:
        render_prompt(tok, "1+2=")
    assert needle in str(err.value) and "chat_template: off" in str(err.value)


def test_prompts_longer_than_the_context_minus_H_are_refused_with_the_numbers():
    from relbudget.core.errors import ModelError
    from relbudget.measure.models import char_tokenizer, check_prompt_room

    tok = char_tokenizer()
    prompts = pd.DataFrame({"prompt_id": ["a", "long"], "prompt": ["1+2=", "1+" * 300 + "2="]})
    check_prompt_room(prompts.head(1), tok, 24, 128, "sample_t")  # 4 + 24 <= 128
    with pytest.raises(ModelError) as err:
        check_prompt_room(prompts, tok, 24, 128, "sample_t")
    msg = str(err.value)
    assert "prompt 'long' is 602 tokens" in msg and "626 positions" in msg and "holds 128" in msg
    assert "1 prompt(s) too long" in msg


def test_h_eval_beyond_max_position_is_refused():
    from relbudget.core.params import params_with

    with pytest.raises(ParamsError, match=r"evaluate.h_eval \(600\) must be below "
                                          r"base_policy.max_position \(512\)"):
        params_with({"evaluate": {"h_eval": 600}, "sampling": {"max_tokens": 256}})


def test_eval_at_past_the_token_budget_is_refused():
    from relbudget.core.params import params_with

    with pytest.raises(ParamsError, match=r"arms.eval_at points \[50000\] are at or past "
                                          r"sweep.token_budget \(40000\)"):
        params_with({"arms": {"eval_at": [2500, 50000]}})


def test_a_folder_without_weights_is_refused_before_loading(tmp_path):
    from relbudget.core.errors import ModelError
    from relbudget.measure.models import load_policy

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelError, match="holds no model weights"):
        load_policy(tmp_path)


def test_a_weights_folder_with_only_a_pickle_is_refused_before_loading(tmp_path):
    from relbudget.core.errors import ModelError
    from relbudget.measure.models import load_policy

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ModelError, match=re.escape("only as a pickle (pytorch_model.bin)")) as err:
        load_policy(tmp_path)
    assert "safetensors" in str(err.value) and "weights_only" not in str(err.value)


def test_a_model_name_that_is_not_local_offline_fails_in_base_policy(xi_project):
    params = yaml.safe_load((xi_project / "params.yaml").read_text())
    params["base_policy"]["model"] = "no-such-org/no-such-model-relbudget"
    (xi_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    r = _stage("base_policy", xi_project, env=_env(
        MLFLOW_TRACKING_URI=f"sqlite:///{xi_project}/m.db", HF_HUB_OFFLINE="1"))
    line = _one_error_line(r)
    assert "no-such-org/no-such-model-relbudget" in line and "hf download" in line
    assert not [f for f in (xi_project / "data").rglob("*") if f.is_file() and "models" in f.parts]


def test_vllm_backend_without_vllm_is_one_line_before_any_load():
    from relbudget.core.errors import ModelError
    from relbudget.measure.sampling import resolve_backend

    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    with pytest.raises(ModelError, match="vLLM cannot be imported"):
        resolve_backend("vllm")
    assert resolve_backend("auto") == "hf"


# ---------------------------------------------------------------- local prompt files


@pytest.mark.parametrize("data,needle", [
    (b'{"question": "1+1=", "answer": "2"}\n\x00\x00\n', "line 2 holds a NUL byte"),
    (b'{"question": "1+1=", "answer": "2"}\n{"question": "2\xff+2=", "answer": "4"}\n',
     "line 2 is not UTF-8 (byte 0xff"),
    (b'{"question": "1+1=", "answer": "2"}\n{"question": "2+2="}\n', "train row 1 (id 'train-1'): missing answer"),
    (b"\n \n", "is empty: it holds no prompt rows"),
])
def test_a_bad_local_jsonl_names_the_file_and_line(tmp_path, data, needle):
    from relbudget.core.errors import DataError
    from relbudget.measure.datasets import load_hf_prompts

    path = tmp_path / "prompts.jsonl"
    path.write_bytes(data)
    with pytest.raises(DataError, match=re.escape(needle)) as err:
        load_hf_prompts(local_source(path), 8, 1, 0)
    assert str(path) in str(err.value)


def test_measure_uses_every_row_of_a_local_file(tmp_path, capsys):
    """`relbudget measure` on a 4-row file measures 4 prompts (it used to carve one out as an
    eval row it never used)."""
    from relbudget.cli import main
    from tests.helpers import pretrained

    pretrained(tmp_path / "policy")
    path = tmp_path / "four.jsonl"
    path.write_text("".join(f'{{"question": "{i}+1=", "answer": "{i + 1}"}}\n' for i in range(4)))
    out = tmp_path / "r.parquet"
    # the table is written before the plan; a plan without a hit (a tiny policy, 8 tokens)
    # exits 2 after it, which is not what this checks
    main(["measure", "--model", str(tmp_path / "policy"), "--dataset", str(path),
          "--answer-format", "int", "--attempts", "2", "--max-tokens", "8", "--out", str(out),
          "--json"])
    assert pd.read_parquet(out)["prompt_id"].nunique() == 4


def test_the_p_inf_estimator_used_is_named():
    """G = 8 with 2 attempts per prompt: the plug-in is used, and said (it used to be called the
    unbiased estimate); with 8 attempts, the unbiased one."""
    from relbudget.measure import estimators as est

    few, many = make_rollouts(20, 2, seed=1), make_rollouts(20, 8, seed=1)
    out = est.plan(few, 1.5, 8)
    assert out["p_informative_estimator"] == "plug-in" and "20 of 20 prompts" in out["warning"]
    s = est.summarize(few, None, 8, n_bootstrap=50)
    assert s["p_informative_estimator"] == "plug-in" and "min 2" in s["p_informative_warning"]
    mixed = pd.concat([few, many[many["prompt_id"] == many["prompt_id"].iloc[0]].assign(
        prompt_id="extra")], ignore_index=True)
    assert est.p_inf_estimator(mixed, 8)[0] == "mixed"
    assert est.plan(many, 1.5, 8)["p_informative_estimator"] == "unbiased"
    assert est.summarize(many, None, 8, n_bootstrap=50)["p_informative_warning"] is None


# ---------------------------------------------------------------- found by the round-four probe


def test_a_stage_run_from_another_folder_is_refused(xi_project):
    """Before: `cd data && python -m stages.check_params --params ../params.yaml` wrote the mark
    to data/data/params_ok.txt (and, from outside the project, mlflow.db and data/ there)."""
    data = xi_project / "data"
    r = _stage("check_params", data, "--params", "../params.yaml", env=_env())
    line = _one_error_line(r)
    assert "../params.yaml lies outside" in line and "from the project folder" in line
    assert not (data / "data").exists() and not (data / "mlflow.db").exists()


@pytest.mark.parametrize("stage,key,needle", [
    ("sweep", "xi-s0", "sweep: sweep cell 'xi-s0' is not of the form xi<XI>-s<SEED>"),
    ("sweep", "xi1.0-s0; rm -rf x", "is not of the form"),
    ("arm", "bandit-s0", "arm: arm run 'bandit-s0' is not of the form ARM-s<SEED>"),
    ("fixed_best", "zero", "fixed_best: 'zero' is not a seed of params sweep.seeds"),
])
def test_a_malformed_stage_key_is_one_line(xi_project, stage, key, needle, monkeypatch, capsys):
    """Before: a ValueError traceback from inside the stage's MLflow run."""
    assert needle in _one_error_line(_stage_here(stage, xi_project, monkeypatch, capsys, key))
    assert not (xi_project / "mlflow.db").exists()  # refused before its MLflow run


def test_a_fractional_token_count_is_a_schema_failure_not_a_traceback(xi_project, capsys):
    """Before: `TypeError: cannot safely cast non-equivalent object to int64` (the cast to the
    nullable int), in `relbudget xi` and the xi stage; a fractional n_tokens was truncated."""
    from relbudget.cli import main

    table = xi_project / "data" / "rollouts" / "base.parquet"
    df = pd.read_parquet(table)
    df["first_correct_token"] = df["first_correct_token"].astype(float) + 0.5
    df.to_parquet(table, index=False)
    assert main(["xi", "--rollouts", str(table)]) == 2
    assert "schema failure(s)" in capsys.readouterr().err
    r = _stage("xi", xi_project, env=_env())  # the schema's message: its failures, by row
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "error: rollouts table data/rollouts/base.parquet:" in r.stderr


def test_a_fifo_as_the_rollout_table_is_refused_not_read(tmp_path, capsys):
    """Before: `relbudget xi --rollouts FIFO` blocked forever, waiting for a writer."""
    from relbudget.cli import main

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main(["xi", "--rollouts", str(fifo)]) == 2
    assert "is not a regular file; give one parquet file" in capsys.readouterr().err


def test_predict_refuses_a_grid_without_any_signal(xi_project, capsys):
    """Before: every predicted value 0, then "predicted best xi = 0.001"."""
    from relbudget.cli import main

    table = xi_project / "data" / "rollouts" / "base.parquet"
    assert main(["plan", "--rollouts", str(table), "--predict", "--xi", "0.001", "--xi", "0.002"]) == 2
    assert "predicts any learning signal" in capsys.readouterr().err


@pytest.mark.parametrize("uri", ["foo://bar", "/tmp/some/mlflow.db"])
def test_a_tracking_uri_that_is_no_store_names_the_form(xi_project, uri):
    """Before: `make it writable (chmod u+w, chattr -i)` for a typo in the scheme or a bare path."""
    line = _one_error_line(_stage("check_params", xi_project, env=_env(MLFLOW_TRACKING_URI=uri)))
    assert f"MLFLOW_TRACKING_URI={uri!r} is not a store" in line and "sqlite:///" in line
    assert "chmod" not in line


def test_the_flow_refuses_bad_runner_variables_before_prefect(project):
    """Before: a traceback at import for the variables, even for --help. A fresh process: the
    flow reads them when it makes its task runner, and --help must never reach that."""
    env = _env(RELBUDGET_MAX_WORKERS="abc")
    r = subprocess.run([sys.executable, "-m", "flows.pipeline"], cwd=project, env=env,
                       capture_output=True, text=True, timeout=120)
    assert "RELBUDGET_MAX_WORKERS must be a positive integer" in _one_error_line(r)
    help_ = subprocess.run([sys.executable, "-m", "flows.pipeline", "--help"], cwd=project,
                           env=env, capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0 and "Traceback" not in help_.stderr


@pytest.mark.parametrize("env,args,needle", [
    ({"RELBUDGET_TASK_RUNNER": "ray"}, [], "unknown task runner 'ray'"),
    ({}, ["--out-root", "afile"], "--out-root afile is a file"),
    ({}, ["--out-root", "../escape"], "--out-root ../escape lies outside the project"),
])
def test_the_flow_refuses_a_bad_runner_or_out_root_before_prefect(project, env, args, needle,
                                                                  monkeypatch, capsys):
    """Before: FileExistsError for a file, and for a folder outside the project 7 tracebacks
    with the flow's lock and results written there. (The flow's command line in this process:
    flows.pipeline.main is what `python -m flows.pipeline` runs.)"""
    from flows import pipeline as fp

    for var, value in env.items():
        monkeypatch.setenv(var, value)
    (project / "afile").write_text("x")
    r = subprocess.CompletedProcess(args, fp.main(args), "", capsys.readouterr().err)
    assert needle in _one_error_line(r)
    assert not (project.parent / "escape").exists()


def test_a_model_folder_whose_config_or_tokenizer_does_not_load_is_refused_first(tmp_path):
    """Before: base_policy passed (exit 0) with a local model folder whose config.json was not
    JSON, or that had no tokenizer files; sample_t then failed in a 41-95 line traceback."""
    from relbudget.core.errors import ModelError
    from relbudget.measure.models import check_loadable
    from tests.helpers import pretrained

    good = tmp_path / "good"
    pretrained(good, steps=1)
    check_loadable(str(good))  # a saved model folder passes
    bad_config = tmp_path / "bad_config"
    no_tokenizer = tmp_path / "no_tokenizer"
    for folder in (bad_config, no_tokenizer):
        folder.mkdir()
        for f in good.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
    (bad_config / "config.json").write_text("{not json")
    for f in no_tokenizer.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(ModelError, match=r"bad_config: its config does not load \(.*not a valid "
                                         r"JSON file.*save_pretrained"):
        check_loadable(str(bad_config))
    with pytest.raises(ModelError, match="no_tokenizer: its tokenizer does not load"):
        check_loadable(str(no_tokenizer))
