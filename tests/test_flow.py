"""flows/pipeline.py: the dvc.yaml pipeline as a cached Prefect flow, on tiny params.

One project folder (a params.yaml, MLflow in SQLite) is shared by the module; the flow runs
against a temporary Prefect API (prefect_test_harness). The last test starts a real Prefect
server on 127.0.0.1, registers prefect.yaml's deployment and has a worker run it once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from flows import cache
from flows import pipeline as fp
from flows.dag import DagError, Step
from relbudget.core.params import arm_name, load_params, merged, params_with
from relbudget.core.paths import STAGES
from tests.helpers import flow_params, free_port, pretrained, stop_group

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

MEASUREMENT = ("prepare", "base_policy", "sample_t", "xi")  # the stages before training
RUN = dict(retries=1, retry_delay_s=0)


def write_params(folder: Path, name: str = "params.yaml", **override) -> Path:
    raw = flow_params()
    for section, values in override.items():
        raw[section] = {**raw[section], **values} if isinstance(values, dict) else values
    params_with(raw)  # a typo in a test fails here, not inside the flow
    # a params file names every key
    (folder / name).write_text(yaml.safe_dump(merged(raw), sort_keys=False))
    return folder / name


def run_flow(**kwargs):
    state = fp.pipeline(**{**RUN, **kwargs}, return_state=True)
    return state, (state.result() if state.is_completed() else None)


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def project(tmp_path_factory, harness):
    folder = tmp_path_factory.mktemp("project")
    write_params(folder)
    mp = pytest.MonkeyPatch()
    mp.chdir(folder)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlflow.db")
    yield folder
    mp.undo()


@pytest.fixture(scope="module")
def first_run(project):
    t0 = time.perf_counter()
    state, summary = run_flow()
    seconds = time.perf_counter() - t0
    return {"state": state, "summary": summary, "seconds": seconds,
            "data_dir_written": (project / "data").exists()}


def stage_runs(project: Path, stage: str, flow_state=None) -> list:
    """MLflow runs of a stage, oldest first; only those of one flow run when flow_state is given."""
    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db")
    exp = client.get_experiment_by_name("relbudget")
    query = f"tags.stage = '{stage}'"
    if flow_state is not None:
        query += f" and tags.`prefect.flow_run_id` = '{flow_state.state_details.flow_run_id}'"
    return client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time ASC"])


# ---------------------------------------------------------------------------- fast unit checks


def test_flow_parameters_are_validated_with_clear_errors():
    with pytest.raises(fp.FlowConfigError, match=r"timeouts.swep: unknown key; did you mean 'sweep'"):
        fp.flow_config(timeouts={"swep": 60})
    with pytest.raises(fp.FlowConfigError, match=r"retries: Input should be greater than or equal to 0"):
        fp.flow_config(retries=-1)
    with pytest.raises(fp.FlowConfigError, match=r"timeouts.sample_t: Input should be greater than 0"):
        fp.flow_config(timeouts={"sample_t": 0})
    with pytest.raises(fp.FlowConfigError, match="out_root: must not be empty"):
        fp.flow_config(out_root=" ")
    cfg = fp.flow_config(timeouts={"sweep": 5}, retries=None)
    assert cfg.timeouts.sweep == 5 and cfg.timeouts.sample_t == fp.Timeouts().sample_t
    assert cfg.retries == 2


def test_outputs_are_rerooted_and_the_dvc_paths_left_alone():
    p = fp.rooted(params_with({}), "runs/x")
    assert p.paths.rollouts == "runs/x/data/rollouts/base.parquet"
    assert p.paths.base_model == "runs/x/data/models/base"
    assert fp.rooted(params_with({}), ".").paths == params_with({}).paths
    with pytest.raises(fp.FlowConfigError, match="paths.xi is absolute"):
        fp.rooted(params_with({"paths": {"xi": "/abs/xi"}, "allow_outside_paths": True}), "runs/x")


def test_code_key_covers_the_stage_and_the_library_modules_it_imports():
    files = {f.relative_to(ROOT).as_posix() for f in cache.code_files("stages.sample_t", "stages._cli")}
    assert {"stages/sample_t.py", "stages/_cli.py", "relbudget/core/tracking.py",
            "relbudget/measure/sampling/__init__.py", "relbudget/measure/sampling/hf.py",
            "relbudget/core/schemas.py"} <= files
    assert "relbudget/cli.py" not in files and "stages/xi.py" not in files
    import importlib

    for stage in STAGES:
        assert cache.stage_sections(stage) == list(importlib.import_module(f"stages.{stage}").SECTIONS)


# ---------------------------------------------------------------------------- the DAG


def dvc_graph(root: Path) -> dict[str, tuple[str, set[str]]]:
    """{stage: (cmd, the stages it reads from)} as `dvc repro` sees the project in `root`."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph
        return {s.name: (s.cmd, {d.name for d in graph.successors(s)}) for s in repo.index.stages}


@pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")  # DVC's trie code
def test_flow_plan_is_the_dag_of_dvc_yaml():
    # the flow resolves dvc.yaml against its own params (here the project's params.yaml); DVC
    # against the project's files, as `dvc repro` does: same stages, commands and edges
    steps = fp.flow_plan(load_params(ROOT / "params.yaml"))
    dvc = dvc_graph(ROOT)
    assert sorted(s.label for s in steps) == sorted(dvc)
    placed: set[str] = set()
    for s in steps:
        cmd, upstream = dvc[s.label]
        assert cmd == " ".join(["python -m", f"stages.{s.module}", *([s.key] if s.key else [])])
        assert set(s.upstream) == upstream, s.label
        assert placed >= upstream, f"{s.label} planned before {upstream - placed}"
        placed.add(s.label)
    assert {s.module for s in steps} >= {"sweep", "arm", "fixed_best", "report"}


def test_flow_plan_fans_out_over_the_flows_params():
    # not ./params.yaml's regimes, cells and arms: those of the params file the flow was given
    params = fp.rooted(params_with(flow_params()), "runs/x")
    keys: dict[str, list] = {}
    for s in fp.flow_plan(params):
        keys.setdefault(s.module, []).append(s.key)
    assert "train" not in keys  # the regimes are sweep cells at their xi, not runs of their own
    assert keys["evaluate"] == ["base"]  # the base's reference
    assert keys["sweep"] == [cell for cell, _, _ in params.sweep.cells()]
    assert keys["arm"] == [arm_name(a, s) for a in params.arms.arms for s in params.sweep.seeds]
    assert keys["fixed_best"] == [str(s) for s in params.sweep.seeds]


def _dvc_yaml_copy(folder: Path, edit) -> Path:
    """A copy of the project's dvc.yaml, edited, with the project's params.yaml beside it."""
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    edit(raw["stages"])
    (folder / "dvc.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (folder / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return folder / "dvc.yaml"


def test_a_stage_added_to_dvc_yaml_is_planned_without_flow_code(tmp_path):
    def add_audit(stages: dict) -> None:  # reads the xi summary and every sweep cell
        stages["audit"] = {"cmd": "python -m stages.report audit",
                           "deps": ["${paths.xi}/summary.json", "${paths.sweep}"],
                           "outs": ["data/audit"]}

    params = load_params(ROOT / "params.yaml")
    before = fp.flow_plan(params)
    after = fp.flow_plan(params, _dvc_yaml_copy(tmp_path, add_audit))
    cells = tuple(s.label for s in before if s.module == "sweep")
    assert after == [*before, Step("audit", "report", "audit", ("xi", *cells))]


def test_a_dvc_yaml_the_flow_cannot_run_is_refused_before_any_stage(tmp_path):
    params = load_params(ROOT / "params.yaml")

    def shell_cmd(stages: dict) -> None:
        stages["xi"]["cmd"] = "bash xi.sh"

    with pytest.raises(DagError, match=r"stage xi: cmd 'bash xi.sh' is not `python -m stages"):
        fp.flow_plan(params, _dvc_yaml_copy(tmp_path, shell_cmd))

    def unknown_module(stages: dict) -> None:
        stages["xi"]["cmd"] = "python -m stages.xi2"

    with pytest.raises(DagError, match=r"stage xi runs stages.xi2, which the flow does not know"):
        fp.flow_plan(params, _dvc_yaml_copy(tmp_path, unknown_module))


# ---------------------------------------------------------------------------- the flow


def test_flow_completes_and_writes_only_under_out_root(project, first_run):
    state, summary = first_run["state"], first_run["summary"]
    assert state.is_completed(), state.message
    params = fp.rooted(params_with(flow_params()), fp.DEFAULT_OUT_ROOT)
    assert list(summary["states"]) == [s.label for s in fp.flow_plan(params)]  # dvc.yaml's names
    assert set(summary["states"].values()) == {"Completed"}
    assert (project / "runs/prefect/data/rollouts/base.parquet").is_file()
    assert (project / "runs/prefect/data/xi/budgets.yaml").is_file()
    assert not first_run["data_dir_written"]  # the DVC view is untouched
    assert (project / "runs/prefect/.gitignore").read_text().strip().endswith("*")
    # every stage execution is one FINISHED MLflow run, tagged with its Prefect flow run, a child
    # of the flow run's parent run; all of them carry the same pipeline_run tag
    flow_run_id = str(state.state_details.flow_run_id)
    (parent,) = stage_runs(project, "pipeline", state)
    assert parent.data.tags["pipeline_run"] == f"prefect-{flow_run_id}"
    assert parent.info.status == "FINISHED"
    for stage in MEASUREMENT:
        (run,) = stage_runs(project, stage, state)
        assert run.info.status == "FINISHED"
        assert run.data.tags["orchestrator"] == "prefect"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["pipeline_run"] == f"prefect-{flow_run_id}"
    # the report is an artifact of the flow run
    from prefect.artifacts import Artifact

    assert fp.REPORT_ARTIFACT in summary["artifacts"]
    art = Artifact.get(fp.REPORT_ARTIFACT)
    assert art.type == "markdown" and str(art.flow_run_id) == flow_run_id
    assert art.data == (project / "runs/prefect/data/report/report.md").read_text()
    # in MLflow, beside report.md, a page that renders with its plots embedded
    (report,) = stage_runs(project, "report", state)
    html = mlflow.MlflowClient().download_artifacts(report.info.run_id, "report.html")
    assert Path(html).read_text().count('src="data:image/png;base64,') >= 4


def test_second_run_executes_no_stage(project, first_run):
    t0 = time.perf_counter()
    state, summary = run_flow()
    seconds = time.perf_counter() - t0
    assert state.is_completed(), state.message
    assert set(summary["states"].values()) == {"Cached"}, summary["states"]
    assert stage_runs(project, "sample_t", state) == []  # no new MLflow run either
    print(f"\nfirst run {first_run['seconds']:.1f} s, fully cached rerun {seconds:.1f} s (in-process)")


def test_deleted_or_edited_output_reexecutes_its_stage_only(project, first_run):
    summary_json = project / "runs/prefect/data/xi/summary.json"
    before = summary_json.read_text()
    summary_json.unlink()
    state, summary = run_flow()
    assert state.is_completed(), state.message
    states = summary["states"]
    assert states["xi"] == "Completed"
    # xi rewrote the same outputs, so everything downstream is still valid
    assert {s for label, s in states.items() if label != "xi"} == {"Cached"}, states
    assert summary_json.read_text() == before

    rollouts = project / "runs/prefect/data/rollouts/base.parquet"
    table = pd.read_parquet(rollouts)
    table.head(3).to_parquet(rollouts, index=False)  # edited by hand
    state, summary = run_flow()
    assert summary["states"]["sample_t"] == "Completed"
    assert summary["states"]["base_policy"] == "Cached"
    pd.testing.assert_frame_equal(pd.read_parquet(rollouts), table)


def test_param_change_reexecutes_only_downstream_tasks(project, first_run):
    # a train param: check_params (it reads every param), the sweep cells (the regime is one),
    # the arms and report; not evaluate_base
    write_params(project, "changed.yaml", train={"max_steps": 3})
    rerun = {"check_params", "sweep@1.0-0", "arm@controller-0", "fixed_best@0", "report"}
    state, summary = run_flow(params_file="changed.yaml")
    assert state.is_completed(), state.message
    assert {lb for lb, s in summary["states"].items() if s == "Completed"} == rerun, summary["states"]
    assert {lb for lb, s in summary["states"].items() if s != "Completed"} == \
        set(summary["states"]) - rerun
    assert {s for lb, s in summary["states"].items() if lb not in rerun} == {"Cached"}

    # back to the original params: their cached results exist, but the outputs on disk now come
    # from the changed params, so exactly the same tasks execute again (check_params too: its mark
    # was last written under the changed params' key; it costs a second)
    state, summary = run_flow()
    assert {lb for lb, s in summary["states"].items() if s == "Completed"} == rerun, \
        summary["states"]


def test_failing_stage_fails_the_flow_and_its_mlflow_run(project, harness):
    # an invalid input that passes base_policy's check (a saved model folder whose config and
    # tokenizer load) but not a load of its weights (garbage in model.safetensors): base_policy
    # records the reference, sample_t fails to read the weights (SafetensorError, a wrong input,
    # so not retried) and nothing after it runs
    broken = project / "broken-model"
    pretrained(broken, steps=1)
    (broken / "model.safetensors").write_bytes(b"not weights")
    write_params(project, "broken.yaml", base_policy={"model": str(broken)})
    state, _ = run_flow(params_file="broken.yaml", out_root="runs/broken")
    assert state.is_failed()
    assert "stage sample_t failed: SafetensorError" in state.message
    assert "not run: xi" in state.message
    failed = stage_runs(project, "sample_t", state)
    assert [r.info.status for r in failed] == ["FAILED"]  # one try: the input is wrong
    assert "SafetensorError" in failed[-1].data.tags["error"]


def test_what_the_flow_retries():
    # the environment (I/O, a timeout, memory, an engine error) is retried; wrong inputs are not
    assert all(fp.is_transient(e) for e in (OSError("disk"), TimeoutError(), MemoryError(),
                                            RuntimeError("engine"), ConnectionError()))
    assert not any(fp.is_transient(e) for e in (ValueError(), FileNotFoundError(),
                                                PermissionError(), KeyError("x")))


def test_a_model_that_does_not_exist_fails_base_policy_once(project, harness):
    # a wrong input, not the environment: one line from base_policy, no retry, nothing after it
    write_params(project, "no-model.yaml", base_policy={"model": "/nonexistent/model"})
    state, _ = run_flow(params_file="no-model.yaml", out_root="runs/no-model")
    assert state.is_failed()
    assert "stage base_policy failed: ModelError: base_policy.model '/nonexistent/model'" \
        in state.message
    assert "not run: sample_t" in state.message
    assert [r.info.status for r in stage_runs(project, "base_policy", state)] == ["FAILED"]


def test_timeout_fails_the_task_and_names_the_stage(project, harness):
    state, _ = run_flow(out_root="runs/timeout", timeouts={"base_policy": 0.5})
    assert state.is_failed()
    assert "stage base_policy failed" in state.message and "timed out" in state.message
    (run,) = stage_runs(project, "base_policy", state)
    assert run.info.status == "FAILED"


def test_invalid_flow_parameters_fail_before_any_stage(project, harness, capsys):
    state, _ = run_flow(timeouts={"swep": 60})
    assert state.is_failed() and "did you mean 'sweep'" in state.message
    state, _ = run_flow(params_file="missing.yaml")
    assert state.is_failed() and "params file not found: missing.yaml" in state.message
    assert fp.main(["--timeout", "sample_t=abc"]) == 2
    assert "is not a number" in capsys.readouterr().err


@pytest.mark.slow
def test_same_outputs_as_the_dvc_stage_commands(project, first_run):
    """dvc repro runs `python -m stages.NAME` on data/, which validates the params and calls
    stages._cli.execute with the stage's run function (the stage processes' own refusals and
    exit codes are tests/test_reliability*.py's); the flow's tables are identical."""
    import importlib

    from stages._cli import execute

    params = load_params(project / "params.yaml")
    for stage in MEASUREMENT:
        mod = importlib.import_module(f"stages.{stage}")
        execute(stage, mod.run, params, mod.SECTIONS)
    flow_data = project / "runs/prefect/data"
    for rel in ("prepared/train.parquet", "prepared/eval.parquet", "rollouts/base.parquet",
                "xi/per_prompt.parquet", "xi/curves.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(project / "data" / rel),
                                      pd.read_parquet(flow_data / rel), obj=rel)
    assert (project / "data/xi/budgets.yaml").read_text() == (flow_data / "xi/budgets.yaml").read_text()


# ---------------------------------------------------------------------------- a real server


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_deployment_runs_on_a_local_server(project, first_run, tmp_path):
    httpx = pytest.importorskip("httpx")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=api,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_API_HOST="127.0.0.1",
               PWD=str(project), MLFLOW_TRACKING_URI=f"sqlite:///{project}/mlflow.db",
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    # the worker runs the entrypoint flows/pipeline.py in working_dir (the project folder)
    if not (project / "flows").exists():
        (project / "flows").symlink_to(ROOT / "flows")
    prefect = str(VENV_BIN / "prefect")
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        out = (logs / f"{name}.log").open("w")
        procs.append(subprocess.Popen([prefect, *args], cwd=project, env=env, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True))

    def cli(*args: str) -> str:
        res = subprocess.run([prefect, *args], cwd=project, env=env, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    try:
        start("server", "server", "start", "--host", "127.0.0.1", "--port", str(port))
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert procs[0].poll() is None, (logs / "server.log").read_text()[-3000:]
            assert time.time() < deadline, "server did not start"
            time.sleep(0.5)
        cli("work-pool", "create", "relbudget-local", "--type", "process", "--overwrite")
        cli("--no-prompt", "deploy", "--prefect-file", str(ROOT / "prefect.yaml"), "--name", "scheduled")

        dep = httpx.get(f"{api}/deployments/name/relbudget-pipeline/scheduled", timeout=10).json()
        assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 3 * * *"]
        assert dep["job_variables"]["working_dir"] == str(project)
        run = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run",
                         json={"parameters": {"retry_delay_s": 0}}, timeout=10).json()

        start("worker", "worker", "start", "--pool", "relbudget-local", "--type", "process")
        deadline = time.time() + 300
        while True:
            fr = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=10).json()
            if fr["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            assert time.time() < deadline, (logs / "worker.log").read_text()[-3000:]
            time.sleep(1)
        assert fr["state"]["type"] == "COMPLETED", (fr["state"], (logs / "worker.log").read_text()[-3000:])
        tasks = httpx.post(f"{api}/task_runs/filter", json={
            "flow_runs": {"id": {"any_": [run["id"]]}}}, timeout=10).json()
        assert {t["name"] for t in tasks} >= set(MEASUREMENT)
    finally:
        for proc in reversed(procs):
            stop_group(proc)
