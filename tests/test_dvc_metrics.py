"""The headline metrics DVC compares across revisions (relbudget.report.headline, docs/tracking.md).

- `headline(metrics)`: finite numbers only (no strings, None, NaN or inf) under METRIC.ENTITY
  keys that no other metrics file or params.yaml uses, the same bytes when written twice; parts
  whose input is absent are left out.
- The real report stage, run on hand-made inputs in a project copy, writes metrics/headline.json
  and metrics/efficiency.csv beside data/report/metrics.json.
- The DVC wiring of a git-tracked metrics file (`cache: false`, committed): in a temporary
  git + DVC repo, two commits with different params, `dvc metrics diff HEAD~1 HEAD` shows the
  change, `dvc plots diff` renders both revisions, and the `dvc exp show` recipe of
  docs/tracking.md keeps the table within 120 columns.
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
from relbudget.core.params import Paths, cell_name

HEADLINE_JSON, EFFICIENCY_CSV = Paths.of_project().headline_json, Paths.of_project().efficiency_csv  # the defaults

ROOT = Path(__file__).resolve().parents[1]
BASE = {"at": {"H_eval": {"accuracy": 0.77, "E_T": 40.0, "first_answer_accuracy": 0.6},
               "H_balanced": {"accuracy": 0.7}}}
SWEEP_XI = [0.25, 0.5, 1.0, 1.75, 3.0, 6.0]


def history(n: int = 12, xi0: float = 1.0) -> pd.DataFrame:
    """A training history with the HISTORY schema's columns."""
    tokens = [3000 * (i + 1) for i in range(n)]
    return pd.DataFrame({
        "step": range(1, n + 1), "generated_tokens": [3000] * n, "cum_generated_tokens": tokens,
        "reward_mean": [0.5] * n, "frac_informative": [0.5] * n, "frac_reward_zero_std": [0.5] * n,
        "clipped_ratio": [0.1] * n, "mean_length": [20.0] * n, "tokens_after_correct": [0.0] * n,
        "attempts_per_completion": [1.5] * n, "E_T": [40.0] * n,
        "xi_t": [xi0 + 0.01 * i for i in range(n)], "H": [45] * n})


def cell_eval(xi: float, seed: int, acc: float) -> dict:
    return {"xi": xi, "seed": seed, "H": max(1, round(45 * xi)),
            "at": {"H_eval": {"accuracy": acc, "E_T": 38.0 if acc > 0.2 else None,
                              "first_answer_accuracy": acc - 0.1}}}


def regime_eval(acc: float) -> dict:
    return {"at": {"H_own": {"accuracy": acc},
                   "H_eval": {"accuracy": acc, "E_T": 37.5, "first_answer_accuracy": acc - 0.1,
                              "pass@1": acc, "pass@4": min(1.0, acc + 0.1)}}}


def realistic_metrics(seeds: int = 3) -> dict:
    """A metrics dict as stages/report.py builds it (the same analysis functions), default grid."""
    rng = np.random.default_rng(0)
    cells = [(cell_eval(x, s, float(0.77 + rng.normal(0, 0.05))), history(xi0=x))
             for x in SWEEP_XI for s in range(seeds)]
    table = analysis.sweep_table(cells, BASE)
    agg, peak = analysis.by_xi(table), analysis.peak_xi(table)
    rows = [analysis.regime_row(name, {"target_xi": t, "xi": t * 1.013, "H": round(45 * t)},
                           regime_eval(acc), history(), BASE)
            for name, t, acc in (("deficient", 0.4, 0.7), ("balanced", 1.75, 0.82),
                                 ("ample", 5.0, 0.8))]
    return to_json_safe({
        "base": {"E_T": 45.0312, "acc_H_eval": 0.77, "first_answer_acc": None},
        "regimes": {r["regime"]: r for r in rows},
        "sweep": table.to_dict(orient="records"),
        "sweep_by_xi": agg.to_dict(orient="records"),
        "peak": {k: peak[k] for k in ("xi", "low", "high")},
        "peak_sentence": render.band_sentence(peak, (1.5, 2.0))})


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


def test_headline_is_numbers_only_rounded_and_byte_stable(tmp_path):
    metrics = realistic_metrics()
    metrics["regimes"]["ample"]["gain_per_100k"] = None  # NaN/inf become None in metrics.json
    summary = {"E_T": 45.0312, "E_T_ci": [42.123456, 48.1]}
    h = hl.headline(metrics, summary)
    assert_numeric_headline(h)
    assert list(h) == ["gain_per_100k", "gain_per_100k_err", "acc_H_eval", "xi", "H", "E_T"]
    assert h["E_T"] == {"base": 45.03, "base_low": 42.12, "base_high": 48.1}  # 4 significant
    assert list(h["xi"])[:3] == ["peak", "peak_low", "peak_high"]
    assert h["xi"]["peak"] in SWEEP_XI and h["xi"]["balanced"] == 1.773
    assert h["acc_H_eval"]["base"] == 0.77 and "first_answer_acc" not in h
    sweep = ["xi0_25", "xi0_5", "xi1", "xi1_75", "xi3", "xi6"]
    assert list(h["gain_per_100k"]) == ["deficient", "balanced", *sweep]  # ample's None left out
    assert list(h["gain_per_100k_err"]) == sweep
    assert h["H"]["balanced"] == 79 and type(h["H"]["balanced"]) is int
    for row in metrics["sweep_by_xi"]:
        assert h["gain_per_100k"][hl.xi_key(row["xi"])] == pytest.approx(row["gain_per_100k"],
                                                                         rel=1e-3)

    # the same metrics give the same bytes, written twice
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    pa = Paths.of_project(metrics=str(tmp_path / "a"))
    pb = Paths.of_project(metrics=str(tmp_path / "b"))
    hl.write(metrics, summary, pa)
    hl.write(json.loads(json.dumps(metrics)), summary, pb)
    a, b = Path(pa.headline_json), Path(pb.headline_json)
    assert a.read_bytes() == b.read_bytes()
    assert Path(pa.efficiency_csv).read_bytes() == Path(pb.efficiency_csv).read_bytes()
    assert json.loads(a.read_text(), parse_constant=pytest.fail) == h  # no NaN / Infinity
    csv = pd.read_csv(pa.efficiency_csv)
    assert list(csv.columns) == ["xi", "gain_per_100k", "acc_H_eval"]
    assert list(csv["xi"]) == SWEEP_XI


def test_headline_skips_absent_parts_and_single_seed_errors():
    assert hl.headline({}) == {}
    assert hl.headline({"base": {"E_T": None, "acc_H_eval": 0.5}}) == {"acc_H_eval": {"base": 0.5}}
    one_seed = realistic_metrics(seeds=1)
    h = hl.headline({k: one_seed[k] for k in ("sweep_by_xi", "peak")})
    assert list(h) == ["gain_per_100k", "acc_H_eval", "xi", "H"]  # no _err: NaN with one seed
    assert_numeric_headline(h)
    assert hl.xi_key(1.0) == "xi1" and hl.xi_key(0.25) == "xi0_25" and hl.xi_key(1.75) == "xi1_75"
    assert hl.number(float("nan")) is None and hl.number(True) is None
    assert hl.number("0.5") is None and hl.number(np.float32(0.1234567)) == 0.1235
    assert hl.number(-0.00001) == -1e-05 and hl.number(-1e-300) == -1e-300
    with pytest.raises(ValueError, match="'peak_low' is named twice"):
        hl.headline({**one_seed, "regimes": {"peak_low": {"xi": 1.0}}})


def test_headline_keys_repeat_no_key_of_the_other_metrics_and_params():
    """`dvc exp show` names a column whose key two files share PATH:KEY (wider, and missed by a
    --keep KEY pattern): the headline's keys are its own."""
    from relbudget.measure import estimators as est
    from tests.synth import make_rollouts

    summary = est.summarize(make_rollouts(40, 4), None, 4, 20)
    summary["budgets"] = {"balanced": {"H": 79, "target_xi": 1.75, "regime": "balanced"}}
    run = {"regime": "balanced", "cell": "xi1.75-s0", "arm": "controller", "target_xi": 1.0,
           "H0": 45, "E_T_base": 45.0, "token_budget": 40000, "budget": {"filter_n_kept": 3}}
    others = [realistic_metrics(), summary, {**regime_eval(0.8), **run}, cell_eval(1.75, 0, 0.8),
              yaml.safe_load((ROOT / "params.yaml").read_text())]
    taken = {k for d in others for k in leaves(d)}
    h = hl.headline(realistic_metrics(), {"E_T_ci": [42.1, 48.1]})
    assert not set(leaves(h)) & taken


def write_report_inputs(params) -> None:
    """Hand-made outputs of the xi, evaluate, train and sweep stages for the tiny params."""
    p = params.paths
    Path(p.xi).mkdir(parents=True, exist_ok=True)
    summary = {"E_T": 45.0312, "E_T_ci": [42.1, 48.1], "unsolved_share": 0.0, "n_prompts": 8,
               "n_attempts": 32, "max_tokens": 24, "gamma": None}
    Path(p.xi_summary).write_text(json.dumps(summary))
    budgets = {name: {"target_xi": t, "H": round(45 * t), "xi": round(45 * t) / 45.0312,
                      "E_T": 45.0312, "regime": "balanced"}
               for name, t in params.regimes.items()}
    Path(p.budgets).write_text(yaml.safe_dump(budgets))
    xi = np.linspace(0.1, 4, 20)
    pd.DataFrame({"xi": xi, "p": 1 - np.exp(-xi), "reward_var": np.exp(-xi) * (1 - np.exp(-xi)),
                  "p_informative": 0.5 + 0 * xi}).to_parquet(p.curves)
    Path(p.eval).mkdir(parents=True, exist_ok=True)
    Path(p.eval_json("base")).write_text(json.dumps(BASE))
    for name in params.regimes:
        Path(p.eval_json(name)).write_text(json.dumps(regime_eval(0.8)))
        Path(p.history(name)).parent.mkdir(parents=True, exist_ok=True)
        history().to_parquet(p.history(name))
    for _, x, s in params.sweep.cells():
        folder = Path(p.cell_eval(cell_name(x, s))).parent
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "eval.json").write_text(json.dumps(cell_eval(x, s, 0.8 + 0.01 * x)))
        history(xi0=x).to_parquet(p.cell_history(folder.name))
    if hasattr(params, "arms"):  # the budget arms' runs (stages.arm, stages.fixed_best)
        from relbudget.core.params import arm_name

        for arm in ["fixed_best", *params.arms.arms]:
            for seed in params.sweep.seeds:
                name = arm_name(arm, seed)
                Path(p.arm_json(name)).parent.mkdir(parents=True, exist_ok=True)
                Path(p.arm_json(name)).write_text(json.dumps(
                    {"arm": arm, "seed": seed, "target_xi": 1.0, "H0": 45,
                     "at": {"H_eval": {"accuracy": 0.8}}}))
                history().assign(acc_H_eval=0.78).to_parquet(p.arm_history(name))


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
    # 1 seed: no _err; METRIC_ORDER, the arms' metrics among them
    assert [m for m in h if m != "ratio_to_fixed_best"] == [
        "gain_per_100k", "tokens_to_target", "acc_H_eval", "xi", "H", "E_T"]
    assert {"arm_fixed_best", "arm_controller", "target"} <= set(h["acc_H_eval"])
    entities = [*params.regimes, *map(hl.xi_key, params.sweep.xi)]
    assert list(h["gain_per_100k"])[:len(entities)] == entities
    assert h["E_T"] == {"base": 45.03, "base_low": 42.1, "base_high": 48.1}
    assert h["acc_H_eval"]["base"] == 0.77 and h["xi"]["peak"] in params.sweep.xi
    assert hl.headline(json.loads(first[params.paths.report_metrics]),
                       {"E_T_ci": [42.1, 48.1]}) == h
    assert len(first[EFFICIENCY_CSV].decode().splitlines()) == 1 + len(params.sweep.xi)
    # a rerun on the same inputs writes the same bytes
    execute("report", report.run, params, report.SECTIONS)
    assert {f: (project / f).read_bytes() for f in first} == first


# --- the DVC wiring, in a temporary git + DVC repo ------------------------------------------------

# Stands for the report stage: writes the headline and the efficiency table with relbudget.report.headline
# from params, and a metrics.json under the git-ignored data/ (nested by entity, as the real one).
MAKE_METRICS = """\
import json, os, yaml
from relbudget.report import headline as hl
from relbudget.core.params import Paths

p = yaml.safe_load(open("params.yaml"))
gain = 12000 / p["sweep"]["token_budget"]
rows = [{"xi": x, "H": round(45 * x), "gain_per_100k": gain / (1 + abs(x - 1)),
         "gain_per_100k_err": 0.01, "acc_H_eval": 0.8} for x in p["sweep"]["xi"]]
metrics = {"base": {"E_T": 45.03, "acc_H_eval": 0.77, "first_answer_acc": 0.6},
           "regimes": {r: {"regime": r, "xi": x, "H": round(45 * x), "acc_H_eval": 0.8,
                           "gain_per_100k": gain} for r, x in p["regimes"].items()},
           "sweep_by_xi": rows, "peak": {"xi": 1.0, "low": 0.5, "high": 1.75}, "peak_sentence": "."}
os.makedirs("data/report", exist_ok=True)
with open("data/report/metrics.json", "w") as f:
    json.dump(metrics, f)
hl.write(metrics, {"E_T": 45.03, "E_T_ci": [42.1, 48.1]}, Paths.of_project())
"""
# the report block of the real dvc.yaml, its headline entries as they are there
REAL_REPORT = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]
DVC_YAML = {"stages": {"report": {
    "cmd": "python make_metrics.py", "deps": ["make_metrics.py"], "params": ["sweep", "regimes"],
    "metrics": [{"data/report/metrics.json": {"cache": False}},
                *[m for m in REAL_REPORT["metrics"] if "/headline.json" in next(iter(m))]],
    "plots": [p for p in REAL_REPORT["plots"] if "/efficiency.csv" in next(iter(p))]}}}


def sh(*cmd: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1", "COLUMNS": "1000",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n"
                                 f"{out.stderr[-3000:]}")
    return out.stdout


def set_token_budget(repo: Path, value: int) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sweep"]["token_budget"] = value
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
    assert "data/report/metrics.json" not in tracked

    set_token_budget(repo, 20000)
    sh("dvc", "repro", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "second", cwd=repo)

    diff = json.loads(sh("dvc", "metrics", "diff", "HEAD~1", "HEAD", "--targets",
                         HEADLINE_JSON, "--json", cwd=repo))
    changed = diff[HEADLINE_JSON]
    assert changed["gain_per_100k.balanced"] == {"old": 0.3, "new": 0.6, "diff": pytest.approx(0.3)}
    assert changed["gain_per_100k.xi1_75"] == {"old": 0.1714, "new": 0.3429,
                                               "diff": pytest.approx(0.1715)}
    assert "xi.peak" not in changed and "E_T.base" not in changed  # unchanged: not listed
    table = sh("dvc", "metrics", "diff", "HEAD~1", "--targets", HEADLINE_JSON, cwd=repo)
    assert re.search(r"gain_per_100k\.xi1_75 +0\.1714 +0\.3429 +0\.1715", table), table

    plots = json.loads(sh("dvc", "plots", "diff", "HEAD~1", "HEAD", "--targets",
                          EFFICIENCY_CSV, "--json", cwd=repo))
    [plot] = plots["data"][EFFICIENCY_CSV]
    values = plot["content"]["data"]["values"]
    assert {v["rev"] for v in values} == {"HEAD~1", "HEAD"} and len(values) == 2 * 6
    assert plot["content"]["encoding"]["x"]["field"] == "xi"

    # an experiment, then the documented `dvc exp show` recipe: the headline's columns by their
    # own names (no PATH: prefix though data/report/metrics.json has peak.xi too), within 120
    sh("dvc", "exp", "run", "-q", "-S", "sweep.token_budget=80000", "-n", "budget-80k", cwd=repo)
    out = sh(*recipe((ROOT / "docs/tracking.md").read_text()), cwd=repo)
    lines = out.splitlines()
    header = next(ln for ln in lines if "Experiment" in ln).split()
    assert "xi.peak" in header and "gain_per_100k.balanced" in header, out
    assert not any(":" in h for h in header), out
    exp = next(ln for ln in lines if "budget-80k" in ln).split()
    assert "0.15" in exp and "80000" in exp, out  # gain 12000 / 80000 per 100k tokens
    width = max(len(ln) for ln in lines)
    assert width <= 120, f"{width} columns:\n{out}"
