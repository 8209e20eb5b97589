"""The headline metrics DVC compares across revisions (relbudget.report.headline, docs/tracking.md).

- `headline(metrics)`: a few finite numbers (no strings, None, NaN or inf) under METRIC.ENTITY
  keys that params.yaml does not use, the same bytes when written twice; parts whose input is
  absent are left out.
- The real report stage, run on hand-made inputs in a project copy, writes metrics/headline.json
  and metrics/efficiency.csv beside data/report/metrics.json.
- The DVC wiring of a git-tracked metrics file (`cache: false`, committed): in a temporary
  git + DVC repo, two commits with different params, `dvc metrics diff HEAD~1 HEAD` shows the
  change, `dvc plots diff` renders both revisions, and the `dvc exp show` recipe of
  docs/tracking.md keeps the table within 120 columns.
- The project's real dvc.yaml and params.yaml in a temporary repo with two commits of the
  headline and no data/: plain `dvc metrics show`, `dvc metrics diff HEAD` and
  `dvc metrics diff HEAD~1` succeed, load every metrics file (none is a per-run file under the
  git-ignored data/) and `show` fits a terminal (SHOW_ROWS x SHOW_COLUMNS).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from relbudget.report import headline as hl
from relbudget.report import analysis, render
from relbudget.core.io import to_json_safe
from relbudget.core.params import cell_name, load_params
from tests.synth import REPORT_BASE as BASE
from tests.synth import cell_eval, history, make_rollouts, write_report_inputs

ROOT = Path(__file__).resolve().parents[1]
PATHS = load_params(ROOT / "params.yaml").paths
HEADLINE_JSON, EFFICIENCY_CSV = PATHS.headline_json, PATHS.efficiency_csv
SHOW_ROWS, SHOW_COLUMNS = 40, 160  # a terminal: what plain `dvc metrics show` must fit
SWEEP_XI = [0.25, 0.5, 1.0, 1.75, 3.0, 6.0]


def realistic_metrics(seeds: int = 3) -> dict:
    """A metrics dict as stages/report.py builds it (the same analysis functions), default grid."""
    rng = np.random.default_rng(0)
    cells = [(cell_eval(x, s, float(0.77 + rng.normal(0, 0.05))), history(xi0=x))
             for x in SWEEP_XI for s in range(seeds)]
    table = analysis.sweep_table(cells, BASE)
    agg, peak = analysis.by_xi(table), analysis.peak_xi(table)
    regimes = {"deficient": 0.25, "balanced": 1.75, "ample": 6.0}
    budgets = {n: {"target_xi": t, "xi": t * 1.013, "H": round(45 * t)} for n, t in regimes.items()}
    rows = analysis.regime_rows(regimes, budgets, table, BASE, make_rollouts(8, 4, cap=64))
    return to_json_safe({
        "base": {"E_T": 45.0312, "acc_H_eval": 0.77, "first_answer_acc": None},
        "regimes": {r["regime"]: r for r in rows},
        "sweep": table.to_dict(orient="records"),
        "sweep_by_xi": agg.to_dict(orient="records"),
        "peak": {k: peak[k] for k in ("xi", "low", "high")},
        "peak_sentence": render.band_sentence(peak, (1.5, 2.0)),
        "target_accuracy": 0.8359,
        "arms_summary": [  # as relbudget.report.compare.summary writes them (some keys)
            {"arm": "fixed_best", "xi": 1.0, "tokens_to_target": 7515.0,
             "ratio_to_fixed_best": 1.0, "acc_H_eval": 0.8893},
            {"arm": "controller", "xi": 1.75, "tokens_to_target": 6929.0,
             "ratio_to_fixed_best": 6929.0 / 7515.0, "acc_H_eval": 0.9023},
            {"arm": "per_prompt", "xi": 1.75, "tokens_to_target": None,  # a seed never got there
             "ratio_to_fixed_best": None, "acc_H_eval": 0.8659}]})


def leaves(d: dict, prefix: str = "") -> dict:
    """d flattened as DVC flattens a metrics or params file: nested dict keys joined with dots,
    lists kept as values."""
    out = {}
    for k, v in d.items():
        out.update(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def assert_numeric_headline(h: dict) -> None:
    flat = leaves(h)
    assert flat
    for key, v in flat.items():
        assert type(v) in (int, float) and math.isfinite(v), (key, v)
        assert key.count(".") == 1, key  # METRIC.ENTITY; no dot inside a name


def test_headline_is_a_few_numbers_rounded_and_byte_stable(tmp_path):
    metrics = realistic_metrics()
    h = hl.headline(metrics)
    assert_numeric_headline(h)
    assert list(h) == ["xi", "gain_per_100k", "ratio", "E_T"]
    peak = metrics["peak"]
    assert h["xi"] == {"peak": peak["xi"], "peak_low": peak["low"], "peak_high": peak["high"]}
    assert h["xi"]["peak"] in SWEEP_XI
    best = max(r["gain_per_100k"] for r in metrics["sweep_by_xi"])  # the peak's mean gain
    assert h["gain_per_100k"] == {"peak": pytest.approx(best, rel=1e-3)}
    # the reference arm (1 by definition) and an arm that never reached the target left out
    assert h["ratio"] == {"controller": 0.922}  # 4 significant digits
    assert h["E_T"] == {"base": 45.03}
    assert len(leaves(h)) <= 10  # one column each in `dvc metrics show`

    # the same metrics give the same bytes, written twice
    pa = PATHS.model_copy(update={"metrics": str(tmp_path / "a")})
    pb = PATHS.model_copy(update={"metrics": str(tmp_path / "b")})
    hl.write(metrics, pa)
    hl.write(json.loads(json.dumps(metrics)), pb)
    a, b = Path(pa.headline_json), Path(pb.headline_json)
    assert a.read_bytes() == b.read_bytes()
    assert Path(pa.efficiency_csv).read_bytes() == Path(pb.efficiency_csv).read_bytes()
    assert json.loads(a.read_text(), parse_constant=pytest.fail) == h  # no NaN / Infinity
    csv = pd.read_csv(pa.efficiency_csv)
    assert list(csv.columns) == ["xi", "gain_per_100k", "acc_H_eval"]
    assert list(csv["xi"]) == SWEEP_XI


def test_headline_skips_absent_parts_and_non_finite_numbers():
    assert hl.headline({}) == {}
    assert hl.headline({"base": {"E_T": None, "acc_H_eval": 0.5}}) == {}
    one_seed = realistic_metrics(seeds=1)
    h = hl.headline({k: one_seed[k] for k in ("sweep_by_xi", "peak")})
    assert list(h) == ["xi", "gain_per_100k"]
    assert_numeric_headline(h)
    nan_gain = [{**r, "gain_per_100k": None} for r in one_seed["sweep_by_xi"]]
    assert list(hl.headline({**one_seed, "sweep_by_xi": nan_gain})) == ["xi", "ratio", "E_T"]
    assert hl.number(float("nan")) is None and hl.number(True) is None
    assert hl.number("0.5") is None and hl.number(np.float32(0.1234567)) == 0.1235
    assert hl.number(-0.00001) == -1e-05 and hl.number(-1e-300) == -1e-300


def test_headline_keys_repeat_no_key_of_params():
    """`dvc exp show` names a column whose key a params file and a metrics file share PATH:KEY
    (wider, and missed by a --keep KEY pattern): the headline's keys are its own."""
    taken = set(leaves(yaml.safe_load((ROOT / "params.yaml").read_text())))
    h = hl.headline(realistic_metrics())
    assert not set(leaves(h)) & taken


def test_report_stage_writes_the_headline_files(project: Path):
    from relbudget.core.params import load_params
    from stages import report
    from stages._cli import execute

    params = load_params(project / "params.yaml")
    write_report_inputs(params)
    execute("report", report.run, params, report.SECTIONS)
    first = {f: (project / f).read_bytes()
             for f in (HEADLINE_JSON, EFFICIENCY_CSV, params.paths.report_metrics)}
    h = json.loads(first[HEADLINE_JSON])
    assert_numeric_headline(h)
    assert list(h) == ["xi", "gain_per_100k", "ratio", "E_T"]
    assert set(h["ratio"]) == set(params.arms.arms)  # every adaptive arm, not the reference
    assert h["E_T"] == {"base": 45.03}
    assert h["xi"]["peak"] in params.sweep.xi
    assert hl.headline(json.loads(first[params.paths.report_metrics])) == h
    assert len(first[EFFICIENCY_CSV].decode().splitlines()) == 1 + len(params.sweep.xi)
    # a rerun on the same inputs writes the same bytes
    execute("report", report.run, params, report.SECTIONS)
    assert {f: (project / f).read_bytes() for f in first} == first
    # an xi dropped from the grid: its cell stays on disk (DVC leaves old outputs) but the report
    # reads the grid of params, not the folder
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["sweep"]["xi"], raw["regimes"] = [1.0], {"low": 1.0}
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert (project / params.paths.cell_eval(cell_name(2.0, 0))).exists()
    params = load_params(project / "params.yaml")
    execute("report", report.run, params, report.SECTIONS)
    metrics = json.loads((project / params.paths.report_metrics).read_text())
    assert [c["xi"] for c in metrics["sweep"]] == [1.0]
    assert [r["xi"] for r in metrics["sweep_by_xi"]] == [1.0]


# --- the DVC wiring, in a temporary git + DVC repo ------------------------------------------------

# Stands for the report stage: writes the headline and the efficiency table with relbudget.report.headline
# from params, and a metrics.json under the git-ignored data/ (nested by entity, as the real one).
MAKE_METRICS = """\
import json, os, yaml
from relbudget.report import headline as hl
from relbudget.core.params import load_params

p = yaml.safe_load(open("params.yaml"))
gain = 12000 / p["sweep"]["token_budget"]
rows = [{"xi": x, "H": round(45 * x), "gain_per_100k": gain / (1 + abs(x - 1)),
         "gain_per_100k_err": 0.01, "acc_H_eval": 0.8} for x in p["sweep"]["xi"]]
metrics = {"base": {"E_T": 45.03, "acc_H_eval": 0.77, "first_answer_acc": 0.6},
           "regimes": {r: {"regime": r, "xi": x, "H": round(45 * x), "acc_H_eval": 0.8,
                           "gain_per_100k": gain} for r, x in p["regimes"].items()},
           "sweep_by_xi": rows, "peak": {"xi": 1.0, "low": 0.5, "high": 1.75}, "peak_sentence": ".",
           "arms_summary": [{"arm": "fixed_best", "ratio_to_fixed_best": 1.0},
                            {"arm": "controller", "ratio_to_fixed_best": 0.9}]}
os.makedirs("data/report", exist_ok=True)
with open("data/report/metrics.json", "w") as f:
    json.dump(metrics, f)
hl.write(metrics, load_params("params.yaml").paths)
"""
# the report block of the real dvc.yaml: its metrics (the headline) as they are there, and
# metrics.json as an ordinary (cached) out
REAL_REPORT = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]
DVC_YAML = {"stages": {"report": {
    "cmd": "python make_metrics.py", "deps": ["make_metrics.py"], "params": ["sweep", "regimes"],
    "outs": ["data/report/metrics.json"],
    "metrics": REAL_REPORT["metrics"],
    "plots": [p for p in REAL_REPORT["plots"] if "/efficiency.csv" in next(iter(p))]}}}


def run(*cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1", "COLUMNS": "1000",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n"
                                 f"{out.stderr[-3000:]}")
    return out


def sh(*cmd: str, cwd: Path) -> str:
    return run(*cmd, cwd=cwd).stdout


def set_token_budget(repo: Path, value: int) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sweep"]["token_budget"] = value
    # the arms are evaluated below their budget (the sweep's): drop the points a smaller one cuts
    params["arms"]["eval_at"] = [t for t in params["arms"]["eval_at"] if t < value]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def recipe(doc: str) -> list[str]:
    """The `dvc exp show --drop ... --keep ...` command of docs/tracking.md, as argv."""
    m = re.search(r"^dvc exp show --drop '([^']+)' --keep '([^']+)'$", doc, re.M)
    assert m, "docs/tracking.md has no line `dvc exp show --drop '...' --keep '...'`"
    return ["dvc", "exp", "show", "--no-pager", "--drop", m.group(1), "--keep", m.group(2)]


@pytest.mark.slow
def test_dvc_compares_the_headline_across_commits_and_experiments(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    sh("git", "init", "-q", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "config", "core.analytics", "false", cwd=repo)
    (repo / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    (repo / "make_metrics.py").write_text(MAKE_METRICS)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (repo / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    sh("dvc", "repro", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "first", cwd=repo)
    tracked = sh("git", "ls-files", cwd=repo).split()
    assert HEADLINE_JSON in tracked and EFFICIENCY_CSV in tracked  # in git, not the cache
    assert "data/report/metrics.json" not in tracked  # in the DVC cache

    set_token_budget(repo, 20000)
    sh("dvc", "repro", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "second", cwd=repo)

    diff = json.loads(sh("dvc", "metrics", "diff", "HEAD~1", "HEAD", "--targets",
                         HEADLINE_JSON, "--json", cwd=repo))
    changed = diff[HEADLINE_JSON]
    assert changed == {"gain_per_100k.peak": {"old": 0.3, "new": 0.6, "diff": pytest.approx(0.3)}}
    table = sh("dvc", "metrics", "diff", "HEAD~1", cwd=repo)  # the headline: no --targets needed
    assert re.search(r"gain_per_100k\.peak +0\.3 +0\.6 +0\.3", table), table
    # metrics.json, an out in the DVC cache: also compared across commits when named
    full = json.loads(sh("dvc", "metrics", "diff", "HEAD~1", "HEAD", "--targets",
                         "data/report/metrics.json", "--json", cwd=repo))
    assert full["data/report/metrics.json"]["regimes.balanced.gain_per_100k"]["new"] == 0.6

    plots = json.loads(sh("dvc", "plots", "diff", "HEAD~1", "HEAD", "--targets",
                          EFFICIENCY_CSV, "--json", cwd=repo))
    [plot] = plots["data"][EFFICIENCY_CSV]
    values = plot["content"]["data"]["values"]
    assert {v["rev"] for v in values} == {"HEAD~1", "HEAD"} and len(values) == 2 * 6
    assert plot["content"]["encoding"]["x"]["field"] == "xi"

    # an experiment, then the documented `dvc exp show` recipe: the headline's columns by their
    # own names (no PATH: prefix: no key is also a param's), within 120
    sh("dvc", "exp", "run", "-q", "-S", "sweep.token_budget=80000", "-n", "budget-80k", cwd=repo)
    out = sh(*recipe((ROOT / "docs/tracking.md").read_text()), cwd=repo)
    lines = out.splitlines()
    header = next(ln for ln in lines if "Experiment" in ln).split()
    assert "xi.peak" in header and "gain_per_100k.peak" in header, out
    assert not any(":" in h for h in header), out
    exp = next(ln for ln in lines if "budget-80k" in ln).split()
    assert "0.15" in exp and "80000" in exp, out  # gain 12000 / 80000 per 100k tokens
    width = max(len(ln) for ln in lines)
    assert width <= 120, f"{width} columns:\n{out}"


def commit_headline(repo: Path, metrics: dict, message: str) -> None:
    """The report stage's git-tracked files (relbudget.report.headline) of `metrics`, committed."""
    paths = load_params(repo / "params.yaml").paths
    hl.write_headline(hl.headline(metrics), repo / paths.headline_json)
    hl.write_efficiency(hl.efficiency_rows(metrics), repo / paths.efficiency_csv)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", message, cwd=repo)


def test_plain_dvc_metrics_show_and_diff_on_the_real_dag(tmp_path):
    """The project's dvc.yaml and params.yaml, two commits of the headline, no data/ (as in a
    fresh clone): every metrics file the DAG declares loads in every revision, and the table of
    plain `dvc metrics show` fits a terminal. A per-run JSON under data/ declared as metrics
    again fails it ("failed to load"), and a headline grown wide or tall fails the size check."""
    repo = tmp_path / "repo"
    (repo / "metrics").mkdir(parents=True)
    sh("git", "init", "-q", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "config", "core.analytics", "false", cwd=repo)
    for name in (".gitignore", "dvc.yaml", "params.yaml"):
        (repo / name).write_text((ROOT / name).read_text())
    metrics = realistic_metrics()
    commit_headline(repo, metrics, "first")
    better = {**metrics, "base": {**metrics["base"], "E_T": 46.5},
              "arms_summary": [{**r, "ratio_to_fixed_best": 0.8} if r["arm"] == "controller"
                               else r for r in metrics["arms_summary"]]}
    commit_headline(repo, better, "second")

    outs = {cmd: run("dvc", "metrics", *cmd, cwd=repo)
            for cmd in (("show",), ("diff", "HEAD"), ("diff", "HEAD~1"))}
    for cmd, out in outs.items():
        assert "failed to load" not in (out.stdout + out.stderr).lower(), (cmd, out.stdout,
                                                                           out.stderr)
    shown = outs["show",].stdout.splitlines()
    assert shown[0].split()[0] == "Path" and shown[1].split()[0] == HEADLINE_JSON, shown
    assert len(shown) <= SHOW_ROWS, f"{len(shown)} rows:\n" + "\n".join(shown)
    width = max(map(len, shown))
    assert width <= SHOW_COLUMNS, f"{width} columns:\n" + "\n".join(shown)
    assert "xi.peak" in shown[0] and "gain_per_100k.peak" in shown[0], shown
    assert outs["diff", "HEAD"].stdout.strip() in ("", "No changes."), outs["diff", "HEAD"].stdout
    changed = [ln.split()[1] for ln in outs["diff", "HEAD~1"].stdout.splitlines()[1:]]
    assert changed == ["E_T.base", "ratio.controller"], outs["diff", "HEAD~1"].stdout
