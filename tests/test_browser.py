"""Browser check: the MLflow UI and the Prefect UI show a small pipeline run (issue 13).

One Prefect flow run of flows/pipeline.py (tests/helpers.py's TINY_FLOW_PARAMS; two regimes
`low` and `high`, i.e. two sweep cells) runs in a subprocess against a real `prefect server start` on 127.0.0.1, whose API
database lives in a temporary PREFECT_HOME, with MLflow in the project's SQLite `mlflow.db`;
`mlflow server` serves that store. No shared fixture leaves such stores behind (conftest.py has
none that runs the flow; test_flow.py's flow runs against prefect_test_harness, a temporary API
whose database is gone at its teardown), so this module runs its own flow. Measured on 2 shared
cores: the fixture ~38 s (server 12 s, flow 25 s), the six pages ~15 s, the module ~60 s; about
2 minutes when the machine is heavily loaded. The report artifact checked in Prefect is the one
the flow itself publishes (`relbudget-report`, report.md as Markdown), not a stand-in.

Both UIs are JavaScript single-page apps, so each page is loaded in headless Chromium (Debian's
`chromium`) with a virtual-time budget and its rendered DOM dumped (`--dump-dom`); the checks
read the page's visible text. Every page is also saved as a screenshot (1400 pixels wide) in
the module's temporary folder (`screenshots0/`); a failing check names its screenshot, and each
test prints all of them.
The module skips where no `chromium` (or `chromium-browser`) is on PATH, and fails there instead
when RELBUDGET_REQUIRE_BROWSER=1 (.ci/run sets it: CI must run these tests).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest
import yaml

from relbudget.core.params import merged, params_with
from tests.helpers import flow_params, free_port, stop_group

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

VENV_BIN = Path(sys.executable).parent
REGIMES = {"low": 0.5, "high": 1.0}  # each regime is the sweep's cell at its xi (one seed)
CELL_RUNS = {r: f"sweep@xi{x}-s0" for r, x in REGIMES.items()}  # MLflow: stage@KEY
CELL_TASKS = {r: f"sweep@{x}-0" for r, x in REGIMES.items()}  # Prefect: dvc.yaml's stage name
HEADLINE = "acc_H_eval"  # relbudget.core.tracking.eval_headline: every evaluation logs it
REPORT_ARTIFACT = "relbudget-report"  # flows.pipeline.REPORT_ARTIFACT
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--no-first-run", "--virtual-time-budget=15000"]


def _get(url: str, timeout: float = 5.0, body: dict | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (127.0.0.1 only)
        return resp.status, resp.read()


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, deadline: float) -> None:
    while True:
        try:
            if _get(url, timeout=2)[0] == 200:
                return
        except (urllib.error.URLError, OSError):
            pass
        assert proc.poll() is None, f"{url}: server exited:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"{url}: no answer in time:\n{log.read_text()[-3000:]}"
        time.sleep(0.3)


def js_number(value: float) -> str:
    """How the MLflow UI prints a metric: JavaScript's Number toString (40, not 40.0)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def visible_text(dom: str) -> str:
    """The text of a dumped DOM, without scripts and styles, whitespace collapsed."""
    dom = re.sub(r"<(script|style|noscript)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom))).strip()


@dataclass
class Browser:
    exe: str
    folder: Path
    shots: list[Path] = field(default_factory=list)

    def page(self, url: str, name: str, expect: list[str] = (),
             height: int = 900) -> tuple[str, Path]:
        """Render url; return its visible text and screenshot. A page that lacks an expected
        string is loaded again (up to 3 times: the app may still have been fetching)."""
        shot = self.folder / f"{name}.png"
        for _ in range(3):
            res = subprocess.run(
                [self.exe, *BROWSER_FLAGS, f"--window-size=1400,{height}",
                 f"--user-data-dir={self.folder / 'profile'}", f"--screenshot={shot}",
                 "--dump-dom", url],
                capture_output=True, text=True, timeout=90)
            text = visible_text(res.stdout)
            if res.returncode:
                text += f" [chromium exited {res.returncode}: {res.stderr[-800:]}]"
            if all(s in text for s in expect):
                break
        if shot not in self.shots:
            self.shots.append(shot)
        return text, shot


def check(text: str, shot: Path, *expected: str) -> None:
    for s in expected:
        assert s in text, f"{s!r} is not on the page (screenshot {shot}); page text: {text[:1500]}"


@dataclass
class Stack:
    project: Path
    mlflow_url: str
    prefect_url: str
    flow_run: dict
    experiment_id: str
    runs: dict[str, mlflow.entities.Run]  # run name -> run, the stage runs of this flow run
    n_runs: int  # stage runs of this flow run (a retried stage has more than one)
    parent: mlflow.entities.Run


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Browser:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        why = ("headless Chromium not found: neither `chromium` nor `chromium-browser` is on PATH "
               "(Debian: apt-get install chromium)")
        if os.environ.get("RELBUDGET_REQUIRE_BROWSER") == "1":  # CI: a skip here is a failure
            pytest.fail(why)
        pytest.skip(why)
    return Browser(exe, tmp_path_factory.mktemp("screenshots"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, browser) -> Stack:
    """Both servers on free ports, one completed flow run recorded by them; stopped at the end."""
    t0 = time.perf_counter()
    project = tmp_path_factory.mktemp("browser-project")
    logs = project / "logs"
    logs.mkdir()
    raw = flow_params()
    raw["regimes"] = dict(REGIMES)
    raw["sweep"]["xi"] = list(REGIMES.values())
    raw["arms"]["arms"] = []  # the UIs show stage runs alike: fixed_best stands for the arms
    params_with(raw)
    (project / "params.yaml").write_text(yaml.safe_dump(merged(raw), sort_keys=False))
    store = f"sqlite:///{project / 'mlflow.db'}"
    mport, pport = free_port(), free_port()
    mlflow_url, prefect_url = f"http://127.0.0.1:{mport}", f"http://127.0.0.1:{pport}"
    drop = ("RELBUDGET_PIPELINE_RUN", "DVC_STAGE", "DVC_EXP_NAME", "MLFLOW_TRACKING_URI")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k not in drop}
    # PREFECT_API_URL also tells the server's UI where its API is (else it calls port 4200)
    env.update(PREFECT_HOME=str(project / "prefect-home"), PREFECT_API_URL=f"{prefect_url}/api",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true",
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    procs: list[subprocess.Popen] = []
    outs = []

    def start(name: str, *cmd: str) -> subprocess.Popen:
        out = (logs / f"{name}.log").open("w")
        outs.append(out)
        procs.append(subprocess.Popen(list(cmd), cwd=project, env=env, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        return procs[-1]

    try:
        # the tables first, so that the server and the flow's first stage never both create them
        mlflow.MlflowClient(store).search_experiments()
        mserver = start("mlflow", str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", store,
                        "--host", "127.0.0.1", "--port", str(mport), "--workers", "1")
        pserver = start("prefect", str(VENV_BIN / "prefect"), "server", "start",
                        "--host", "127.0.0.1", "--port", str(pport))
        deadline = time.time() + 120
        _wait_healthy(f"{prefect_url}/api/health", pserver, logs / "prefect.log", deadline)
        t_prefect = time.perf_counter() - t0

        # the MLflow server (slow to import) comes up while the flow runs: the flow writes to
        # the SQLite store itself
        flow = subprocess.run(
            [sys.executable, "-m", "flows.pipeline", "--retries", "1", "--retry-delay", "0"],
            cwd=project, env={**env, "MLFLOW_TRACKING_URI": store}, capture_output=True,
            text=True, timeout=240)
        (logs / "flow.log").write_text(flow.stdout + flow.stderr)
        assert flow.returncode == 0, f"the flow failed:\n{(flow.stdout + flow.stderr)[-4000:]}"
        t_flow = time.perf_counter() - t0 - t_prefect
        _wait_healthy(f"{mlflow_url}/health", mserver, logs / "mlflow.log", time.time() + 120)

        (flow_run,) = json.loads(_get(f"{prefect_url}/api/flow_runs/filter", body={})[1])
        client = mlflow.MlflowClient(store)
        exp = client.get_experiment_by_name("relbudget")
        found = client.search_runs([exp.experiment_id],
                                   f"tags.pipeline_run = 'prefect-{flow_run['id']}'")
        (parent,) = [r for r in found if r.data.tags.get("stage") == "pipeline"]
        runs = {r.info.run_name: r for r in found if r is not parent}
        t_mlflow = time.perf_counter() - t0 - t_prefect - t_flow
        print(f"\nprefect server up in {t_prefect:.1f} s, flow run {t_flow:.1f} s, "
              f"mlflow server up {t_mlflow:.1f} s after it")
        yield Stack(project, mlflow_url, prefect_url, flow_run, exp.experiment_id, runs,
                    len(found) - 1, parent)
    finally:
        stopped = []
        for proc in reversed(procs):
            t1 = time.perf_counter()
            stop_group(proc, grace=3.0)  # throwaway servers: no graceful shutdown
            stopped.append(f"{Path(proc.args[0]).name} {time.perf_counter() - t1:.1f} s")
        for out in outs:
            out.close()
        print(f"servers stopped ({', '.join(stopped)}); logs in {logs}")


def report_rows(md: str) -> list[str]:
    """How report.md's Regimes table starts each regime's row once rendered: 'low 0.50 13'."""
    rows = []
    for r in REGIMES:
        m = re.search(rf"^\|\s*{re.escape(r)}\s*\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|", md, re.M)
        assert m, f"no row for regime {r} in report.md:\n{md}"
        rows.append(f"{r} {m[1]} {m[2]}")
    return rows


def report_head(md: str) -> list[str]:
    """report.md's title and first paragraph, as the rendered page shows them."""
    heading, first = [ln.lstrip("# ").strip() for ln in md.splitlines() if ln.strip()][:2]
    return [heading, first]


def test_mlflow_ui_shows_regime_runs_metrics_and_report(stack, browser):
    base = f"{stack.mlflow_url}/#/experiments/{stack.experiment_id}"
    regime_runs = list(CELL_RUNS.values())
    assert set(regime_runs) | {"evaluate@base", "report"} <= set(stack.runs), sorted(stack.runs)
    try:
        # the runs table: this flow run's stage runs (filtered on its pipeline_run tag, so they
        # are listed flat, not folded under the parent), sorted by the headline metric
        query = urllib.parse.urlencode({
            "searchFilter": f"tags.pipeline_run = '{stack.parent.data.tags['pipeline_run']}' "
                            "and tags.stage != 'pipeline'",
            "orderByKey": f"metrics.`{HEADLINE}`", "orderByAsc": "false"},
            quote_via=urllib.parse.quote)
        expect = [*regime_runs, "evaluate@base", "report", f"{stack.n_runs} matching runs",
                  f"Sort: {HEADLINE}"]
        text, shot = browser.page(f"{base}/runs?{query}", "mlflow-runs", expect)
        check(text, shot, *expect)

        # each regime's cell run: its page lists the headline metric with its value (a tall
        # window, so that the screenshot reaches the metrics table)
        for r, name in CELL_RUNS.items():
            run = stack.runs[name]
            row = f"{HEADLINE} {js_number(run.data.metrics[HEADLINE])}"
            expect = [name, "Metrics (", row, f"Parent run {stack.parent.info.run_name}"]
            text, shot = browser.page(f"{base}/runs/{run.info.run_id}", f"mlflow-{name}",
                                      expect, height=2000)
            check(text, shot, *expect)

        # the report run's artifacts, report.md open in the preview (rendered Markdown)
        report = stack.runs["report"]
        md = Path(report.info.artifact_uri.removeprefix("file://"), "report.md").read_text()
        expect = ["report.md", "report.html", "metrics.json", *report_head(md), *report_rows(md)]
        text, shot = browser.page(f"{base}/runs/{report.info.run_id}/artifacts/report.md",
                                  "mlflow-report-artifacts", expect)
        check(text, shot, *expect)
    finally:
        print("screenshots:", *map(str, browser.shots), sep="\n  ")


def test_prefect_ui_shows_flow_run_and_report_artifact(stack, browser):
    fr = stack.flow_run
    (art,) = json.loads(_get(f"{stack.prefect_url}/api/artifacts/filter",
                             body={"artifacts": {"key": {"any_": [REPORT_ARTIFACT]}}})[1])
    assert art["flow_run_id"] == fr["id"] and art["type"] == "markdown"
    n_tasks = int(_get(f"{stack.prefect_url}/api/task_runs/count",
                       body={"flow_runs": {"id": {"any_": [fr["id"]]}}})[1])
    assert n_tasks >= len(stack.runs)  # one task run per stage run (more if one was retried)
    try:
        # the flow run: completed, its task runs counted, each regime's cell task in the log
        # rows (the task graph is a canvas: no text to read)
        expect = [fr["name"], "Completed", "relbudget-pipeline", f"{n_tasks} Task runs",
                  *CELL_TASKS.values()]
        text, shot = browser.page(f"{stack.prefect_url}/runs/flow-run/{fr['id']}",
                                  "prefect-flow-run", expect)
        check(text, shot, *expect)

        # the report artifact: report.md rendered as Markdown, and the flow run it belongs to
        expect = [REPORT_ARTIFACT, art["description"], f"Flow Run {fr['name']}",
                  *report_head(art["data"]), *report_rows(art["data"])]
        text, shot = browser.page(f"{stack.prefect_url}/artifacts/artifact/{art['id']}",
                                  "prefect-report", expect)
        check(text, shot, *expect)
    finally:
        print("screenshots:", *map(str, browser.shots), sep="\n  ")
