"""relbudget.report.study.analyse, the report's one call, on hand-made inputs (tests/synth.py's
write_report_inputs: two cells at xi 1 and 2, one seed, 36000 generated tokens each, accuracy
0.81 and 0.82 against the base's 0.77): each part of metrics.json, the histories the plots draw
and the page, against the numbers worked out by hand here and the parts' own functions.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import pytest
import yaml

from relbudget.core.params import cell_name, load_params
from relbudget.report import analysis, compare, prediction, render, study
from stages import report
from tests.helpers import deep_update
from tests.synth import write_report_inputs


def analysed(project: Path, summary: dict | None = None, edit=None, **raw_overrides) -> tuple:
    """analyse on write_report_inputs' files (params sections updated by raw_overrides, the xi
    stage's summary by `summary`, then `edit(params)` to change any file)."""
    raw = deep_update(yaml.safe_load((project / "params.yaml").read_text()), raw_overrides)
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(project / "params.yaml")
    write_report_inputs(params)
    path = Path(params.paths.xi_summary)
    path.write_text(json.dumps({**json.loads(path.read_text()), **(summary or {})}))
    if edit is not None:
        edit(params)
    inp = report.load_inputs(params)
    return params, inp, study.analyse(inp, params)


def test_analyse_by_hand(project: Path):
    params, inp, st = analysed(project)
    m = st["metrics"]
    assert m["base"] == {"E_T": 45.0312, "acc_H_eval": 0.77, "first_answer_acc": 0.6}
    # gain per 100k = (0.81 - 0.77) * 1e5 / 36000 at xi 1; (0.82 - 0.77) * 1e5 / 36000 at xi 2
    by_xi = {r["xi"]: r for r in m["sweep_by_xi"]}
    assert by_xi[1.0]["gain_per_100k"] == pytest.approx(0.04 / 0.36)
    assert by_xi[2.0]["gain_per_100k"] == pytest.approx(0.05 / 0.36)
    assert [(c["xi"], c["seed"], c["generated_tokens"]) for c in m["sweep"]] == [
        (1.0, 0, 36000), (2.0, 0, 36000)]
    # one seed: the peak is the best mean, without an interval, and says why
    assert set(m["peak"]) == {"xi", "low", "high", "withheld"}
    assert (m["peak"]["xi"], m["peak"]["low"], m["peak"]["high"]) == (2.0, None, None)
    assert m["peak_sentence"] == render.band_sentence(st["peak"], (1.5, 2.0))
    assert m["peak_sentence"].startswith("The highest mean gain in this run is at xi = 2,")
    assert st["band"] == (1.5, 2.0)
    # the regimes are the cells at their xi (tiny params: low = xi 1, high = xi 2)
    assert set(m["regimes"]) == {"low", "high"}
    assert m["regimes"]["low"]["gain_per_100k"] == by_xi[1.0]["gain_per_100k"]
    assert m["regimes"]["high"]["acc_H_eval"] == by_xi[2.0]["acc_H_eval"]
    assert [r["regime"] for r in st["rows"]] == ["low", "high"]
    # the prediction judged against the whole sweep's tokens (2 x 36000), its cost 640 of them
    pred = m["prediction"]
    assert (pred["sweep_tokens"], pred["prediction_tokens"]) == (72000, 640)
    assert pred["cost_share"] == pytest.approx(640 / 72000)
    assert [r["measured"] for r in pred["curve"]] == pytest.approx([0.8, 1.0])  # over the peak
    assert pred["predicted_peak_xi"] == 1.0 and st["prediction"] is not None
    # robustness: the cells were evaluated at H_eval only, and the summary has no within reading
    assert [(r["h_eval"], r["reading"], r["peak_xi"]) for r in m["robustness"]] == [
        ("H_eval", "restart", 2.0)]
    assert m["robustness_sentence"] == render.robustness_sentence(m["robustness"], (1.5, 2.0))
    # the arms: every arm and fixed_best at seed 0, reaching 0.78 of the target 0.785 never
    assert m["target_accuracy"] == pytest.approx(0.785)
    assert {(a["arm"], a["seed"]) for a in m["arms"]} == {
        ("fixed_best", 0), ("controller", 0), ("per_prompt", 0), ("filtered", 0)}
    assert [s["arm"] for s in m["arms_summary"]] == [
        "fixed_best", "controller", "per_prompt", "filtered"]
    assert set(m) == {"base", "regimes", "sweep", "sweep_by_xi", "peak", "peak_sentence",
                      "prediction", "robustness", "robustness_sentence", "target_accuracy",
                      "arms", "arms_summary"}


def test_analyse_hands_the_plots_each_cells_history(project: Path):
    _, _, st = analysed(project)
    # write_report_inputs starts each cell's xi_t at its own xi
    assert {x: [h["xi_t"].iloc[0] for h in hs] for x, hs in st["cell_histories"].items()} == {
        1.0: [1.0], 2.0: [2.0]}
    assert {r: [h["xi_t"].iloc[0] for h in hs] for r, hs in st["regime_histories"].items()} == {
        "low": [1.0], "high": [2.0]}
    assert list(st["agg"]["xi"]) == [1.0, 2.0] and st["peak"]["xi"] == 2.0
    assert st["arms"]["target_accuracy"] == st["metrics"]["target_accuracy"]
    assert set(st) == {"metrics", "markdown", "rows", "agg", "peak", "band", "cell_histories",
                       "regime_histories", "arms", "prediction"}


def test_analyse_page_is_the_parts_in_order(project: Path):
    params, inp, st = analysed(project)
    md, band = st["markdown"], (1.5, 2.0)
    robust = st["metrics"]["robustness"]
    tail = (render.robustness_section(robust, band) + prediction.markdown(st["prediction"], st["peak"])
            + st["arms"]["markdown"] + render.across_tasks(False, params.paths.tasks_md))
    table = analysis.sweep_table(inp["cells"], inp["base_eval"])
    assert md == render.render(inp["summary"], st["rows"], 24, analysis.by_xi(table), st["peak"],
                               band, inp["base_eval"]["at"]["H_eval"], "../xi/gamma_fit.png", tail)
    assert md.startswith("# relbudget report\n\nBase policy: E[T] = 45.03 tokens")
    order = [md.index(s) for s in ("Peak xi (interval) under each choice",
                                   "## Predicted before training against measured",
                                   "Adaptive budgets against the best fixed xi", "## Across tasks")]
    assert order == sorted(order)
    assert "the cross-task profile's" in md  # no tasks in this run


def test_analyse_points_to_this_runs_tasks_report(project: Path):
    family = {name: {"levels": [1], "carries": [c], "n_train": 8, "n_eval": 4}
              for name, c in (("plain", 0), ("carry1", 1))}
    params, _, st = analysed(project, tasks={"report": ["universality"], "family": family})
    assert f"this run's `{params.paths.tasks_md}`" in st["markdown"]
    assert "the cross-task profile's" not in st["markdown"]


def test_analyse_reads_the_arms_of_params(project: Path):
    params, _, st = analysed(project, arms={"arms": ["controller"]})
    assert {a["arm"] for a in st["metrics"]["arms"]} == {"fixed_best", "controller"}
    direct = compare.compare(params.paths, params.arms, params.sweep.seeds, 0.77)
    assert st["metrics"]["arms_summary"] == direct["arms_summary"]


def test_analyse_reads_the_within_reading_and_links_the_gamma_plot(project: Path):
    """With the within-one-completion E[T] in the summary, the robustness table reads T both
    ways; with a Gamma fit, the page shows it and links the xi stage's plot from the report's
    folder."""
    _, _, st = analysed(project, summary={"E_T_within": 30.0,
                                          "gamma": {"K": 2.5, "sup_distance": 0.01}})
    assert [(r["h_eval"], r["reading"]) for r in st["metrics"]["robustness"]] == [
        ("H_eval", "restart"), ("H_eval", "within")]
    assert "Gamma model of the base policy's T: K = 2.50" in st["markdown"]
    assert "![Gamma fit](../xi/gamma_fit.png)" in st["markdown"]


PAGES = Path(__file__).parent / "data"


def check_page(markdown: str, name: str) -> None:
    """`markdown` against tests/data/NAME, or written there with RELBUDGET_WRITE_PAGE=1."""
    if os.environ.get("RELBUDGET_WRITE_PAGE") == "1":
        (PAGES / name).write_text(markdown)
    diff = "\n".join(difflib.unified_diff((PAGES / name).read_text().splitlines(),
                                          markdown.splitlines(), "expected", "rendered",
                                          lineterm=""))
    assert not diff, diff


def test_the_whole_page_word_for_word(project: Path):
    """The report page of three xi x two seeds (a peak with its interval), both readings of T and
    a Gamma fit, against tests/data/report_page.md, read through by hand when it was written.
    After a deliberate change of wording, rewrite it with
    `RELBUDGET_WRITE_PAGE=1 pytest tests/test_exact_study.py -k whole_page` and read the diff."""
    _, _, st = analysed(project, summary={"E_T_within": 30.0,
                                          "gamma": {"K": 2.5, "sup_distance": 0.01}},
                        sweep={"xi": [0.5, 1.0, 2.0], "seeds": [0, 1]})
    check_page(st["markdown"], "report_page.md")


# per (xi, seed): a cell's accuracy at H_eval, its accuracy at 1.5 x E[T] (68 tokens), its E[T]
# (None: no E[T])
WORSE = {(0.25, 0): (0.70, 0.71, 50.0), (0.25, 1): (0.72, 0.70, 52.0),
         (0.5, 0): (0.80, 0.80, 39.0), (0.5, 1): (0.84, 0.79, 37.0),
         (1.0, 0): (0.78, 0.86, None), (1.0, 1): (0.79, 0.88, 41.0)}


def worse_cells(params) -> None:
    """Seeds that disagree, the deficient regime below the base (accuracy and E[T]), a cell
    without E[T], and a second horizon (x1.5) at which the peak moves to xi 1."""
    base = json.loads(Path(params.paths.eval_json("base")).read_text())
    base["at"]["H_eval"]["H"] = 24
    base["at"]["x1.5"] = {"H": 68, "accuracy": 0.75, "E_T": 40.0}
    Path(params.paths.eval_json("base")).write_text(json.dumps(base))
    for (x, seed), (acc, acc15, e_t) in WORSE.items():
        path = Path(params.paths.cell_eval(cell_name(x, seed)))
        ev = json.loads(path.read_text())
        ev["at"]["H_eval"].update(accuracy=acc, E_T=e_t, first_answer_accuracy=acc - 0.05)
        ev["at"]["x1.5"] = {"H": 68, "accuracy": acc15, "E_T": e_t}
        path.write_text(json.dumps(ev))


def test_the_page_of_a_run_that_went_wrong_word_for_word(project: Path):
    """The other branches of the page: a regime worse than the base, standard errors from
    seeds that disagree, n/a for a missing E[T], a peak below the paper's band that moves with
    the evaluation horizon (tests/data/report_page_worse.md, read through when written)."""
    _, _, st = analysed(project, summary={"E_T_within": 30.0}, edit=worse_cells,
                        regimes={"low": 0.25, "high": 1.0},
                        sweep={"xi": [0.25, 0.5, 1.0], "seeds": [0, 1]})
    check_page(st["markdown"], "report_page_worse.md")
