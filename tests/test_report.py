"""relbudget.report.tables on hand-made inputs: per-cell efficiency, mean +- s.e. over seeds, the peak
xi with its bootstrap interval over seeds, the sentence about the paper's band, the flags."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from relbudget.measure.metrics import final_xi_t
from relbudget.report import analysis, render

BASE = {"at": {"H_eval": {"accuracy": 0.5, "E_T": 40.0, "first_answer_accuracy": 0.3}}}


def history(tokens: list[int], xi_t: list[float], **cols) -> pd.DataFrame:
    n = len(tokens)
    return pd.DataFrame({"step": range(1, n + 1), "cum_generated_tokens": tokens, "xi_t": xi_t,
                         "frac_informative": cols.get("inf", [0.5] * n),
                         "clipped_ratio": cols.get("clip", [0.1] * n),
                         "attempts_per_completion": cols.get("att", [2.0] * n),
                         "tokens_after_correct": [0.0] * n})


def cell(xi: float, seed: int, acc: float, E_T: float, first: float) -> dict:
    return {"xi": xi, "seed": seed, "H": round(40 * xi),
            "at": {"H_eval": {"accuracy": acc, "E_T": E_T, "first_answer_accuracy": first}}}


def test_cell_row_efficiency_and_xi_t_slope():
    h = history([10_000, 20_000, 30_000, 40_000], [1.0, 1.2, 1.4, 1.6], inf=[0.2, 0.4, 0.6, 0.8])
    row = analysis.cell_row(cell(1.0, 0, 0.58, 36.0, 0.35), h, BASE)
    assert row["generated_tokens"] == 40_000
    assert row["gain"] == pytest.approx(0.08)
    assert row["gain_per_100k"] == pytest.approx(0.08 * 100_000 / 40_000)
    assert row["E_T_fall_per_100k"] == pytest.approx(4.0 * 2.5)
    assert row["first_answer_gain"] == pytest.approx(0.05)
    assert row["frac_informative_mean"] == pytest.approx(0.5)
    assert row["xi_t_slope_per_10k"] == pytest.approx(0.2)  # xi_t rises 0.2 per 10k tokens
    unsolved = analysis.cell_row({**cell(1.0, 0, 0.0, None, 0.0)}, h, BASE)
    assert unsolved["E_T_fall_per_100k"] is None  # E[T] infinite after training: no fall


def grid() -> pd.DataFrame:
    """gain_per_100k by xi (3 seeds): peak at 2 (mean 0.15), with 1 close behind (0.14)."""
    values = {0.5: [0.00, 0.02, -0.01], 1.0: [0.12, 0.16, 0.14], 2.0: [0.13, 0.15, 0.17],
              4.0: [0.05, 0.06, 0.04]}
    rows = [{"xi": x, "seed": s, "H": round(40 * x), "gain_per_100k": v, "gain": v / 2.5,
             "first_answer_gain": 0.01}
            for x, vs in values.items() for s, v in enumerate(vs)]
    return pd.DataFrame(rows)


def test_mean_and_standard_error_over_seeds():
    agg = analysis.by_xi(grid())
    assert list(agg["xi"]) == [0.5, 1.0, 2.0, 4.0]
    r = agg.set_index("xi").loc[2.0]
    assert r["gain_per_100k"] == pytest.approx(0.15)
    assert r["gain_per_100k_err"] == pytest.approx(np.std([0.13, 0.15, 0.17], ddof=1) / np.sqrt(3))
    assert r["n_seeds"] == 3 and r["H"] == 80


def test_peak_with_bootstrap_interval_over_seeds():
    t = grid()
    peak = analysis.peak_xi(t)
    assert peak["xi"] == 2.0
    assert peak["low"] in (0.5, 1.0, 2.0, 4.0) and peak["high"] in (0.5, 1.0, 2.0, 4.0)
    # xi = 1 wins many resamples, xi = 4 and 0.5 never can
    assert peak["low"] == 1.0 and peak["high"] == 2.0
    assert 0.5 < peak["share_at_peak"] < 1.0
    assert analysis.peak_xi(t) == peak  # fixed seed: the same table, the same interval

    # the resampling is over seeds within each xi: by hand, with a brute-force count
    rng = np.random.default_rng(0)
    vals = [g["gain_per_100k"].to_numpy() for _, g in t.groupby("xi")]
    means = np.stack([v[rng.integers(0, 3, size=(2000, 3))].mean(axis=1) for v in vals], axis=1)
    assert peak["share_at_peak"] == pytest.approx(np.mean(np.argmax(means, axis=1) == 2))

    # separated xi values: the interval is the peak itself
    far = t.assign(gain_per_100k=t["gain_per_100k"] + np.where(t["xi"] == 2.0, 1.0, 0.0))
    p = analysis.peak_xi(far)
    assert (p["xi"], p["low"], p["high"]) == (2.0, 2.0, 2.0)
    # one seed per xi resamples to itself, two xi values bound nothing: no interval (it used to
    # print "95% interval [2, 2]") and no verdict on the paper's band
    for few, needle in ((t[t["seed"] == 0], "1 seed(s) and 4 xi"),
                        (t[t["xi"].isin([1.0, 2.0])], "3 seed(s) and 2 xi")):
        p = analysis.peak_xi(few)
        assert p["xi"] == 2.0 and (p["low"], p["high"]) == (None, None) and needle in p["withheld"]
        sentence = render.band_sentence(p, (1.5, 2.0))
        assert "no interval can be given" in sentence and "says nothing about the paper's band" in sentence
        assert "inside" not in sentence and "[2, 2]" not in sentence


def test_cells_that_are_not_compute_matched_get_no_peak_verdict():
    """Cells trained on 8k and 300k tokens (one stopped early by max_steps) cannot be compared
    per token: the report says so, with the numbers, instead of naming an interval."""
    t = grid().assign(generated_tokens=40_000)
    assert analysis.not_compute_matched(t) is None and analysis.peak_xi(t)["low"] is not None
    t.loc[(t["xi"] == 4.0) & (t["seed"] == 1), "generated_tokens"] = 300_000
    t.loc[(t["xi"] == 0.5) & (t["seed"] == 2), "generated_tokens"] = 8_000
    p = analysis.peak_xi(t)
    assert p["low"] is None and p["withheld"].startswith("NOT COMPUTE-MATCHED")
    assert "8,000 (xi 0.5, seed 2) to 300,000" in p["withheld"]
    assert "NOT COMPUTE-MATCHED" in render.band_sentence(p, (1.5, 2.0))


@pytest.mark.parametrize("peak,where,overlap", [
    ({"xi": 1.75, "low": 1.0, "high": 3.0}, "inside", "overlaps"),
    ({"xi": 1.0, "low": 0.5, "high": 1.75}, "below", "overlaps"),
    ({"xi": 1.0, "low": 0.5, "high": 1.0}, "below", "does not overlap"),
    ({"xi": 3.0, "low": 3.0, "high": 6.0}, "above", "does not overlap"),
])
def test_band_sentence_whatever_the_result(peak, where, overlap):
    s = render.band_sentence({**peak, "level": 0.95}, (1.5, 2.0))
    assert f"{where} the paper's band [1.5, 2]" in s and f"interval {overlap} the band" in s
    assert f"most efficient xi in this run is {peak['xi']:g}" in s


def test_flag_when_within_accuracy_rises_but_first_answer_does_not():
    t = grid()
    t["first_answer_gain"] = np.where(t["xi"] == 4.0, -0.02, 0.03)
    t["attempts_per_completion"] = 3.0
    flags = render.candidate_flags(analysis.by_xi(t))
    assert len(flags) == 1 and flags[0].startswith("xi = 4:")
    assert "first-answer accuracy did not" in flags[0]


def test_render_shows_the_peak_the_sweep_table_and_gamma():
    h = history([10_000, 20_000, 30_000], [1.0, 1.1, 1.3])
    cells = [(cell(x, s, 0.5 + 0.01 * x + 0.01 * s, 38.0, 0.3), h) for x in (1.0, 2.0) for s in (0, 1)]
    table = analysis.sweep_table(cells, BASE)
    agg, peak = analysis.by_xi(table), analysis.peak_xi(table)
    budgets = {"balanced": {"target_xi": 1.0, "xi": 1.0, "H": 40}}
    rows = analysis.regime_rows({"balanced": 1.0}, budgets, table, BASE, pd.DataFrame())
    summary = {"E_T": 40.0, "E_T_ci": [38.0, 42.0], "unsolved_share": 0.1, "n_prompts": 10,
               "n_attempts": 80, "max_tokens": 200, "gamma": {"K": 2.5, "sup_distance": 0.04}}
    md = render.render(summary, rows, 64, agg, peak, (1.5, 2.0), BASE["at"]["H_eval"])
    assert md.count(render.band_sentence(peak, (1.5, 2.0))) == 1
    assert "| balanced | 1.00 | 40 |" in md
    assert "| 2 | 80 | " in md and "K = 2.50" in md and "No claim beyond what is measured" in md


def test_final_xi_t_is_one_definition_for_report_and_train_summary():
    from relbudget.train.training import summary

    xi_t = [float(i) for i in range(1, 13)] + [np.nan]  # the last step had no hit
    h = history(list(range(1000, 14_000, 1000)), xi_t).assign(
        reward_mean=0.5, mean_length=5.0, E_T=4.0, H=8, generated_tokens=1000)
    expected = float(np.mean(range(4, 13)))  # the finite values among the last 10 steps
    assert final_xi_t(h) == pytest.approx(expected)
    assert analysis._training(h)["xi_t_final"] == pytest.approx(expected)
    assert summary(h, 1.0, 8)["final_xi_t"] == pytest.approx(expected)
    assert final_xi_t(history([1, 2], [np.nan, np.nan])) is None


def test_html_page_renders_tables_and_embeds_the_plots(tmp_path):
    import base64

    png = b"\x89PNG\r\n\x1a\nfake"
    (tmp_path / "a.png").write_bytes(png)
    (tmp_path / "xi").mkdir()
    (tmp_path / "xi" / "b.png").write_bytes(png)
    md = "# R\n\n| x | y |\n|---|---|\n| 1 | 2 |\n\n![one](a.png)\n\n![two](xi/b.png)\n\n![gone](c.png)\n"
    page = render.html_page(md, tmp_path)
    assert "<table>" in page and "<td>2</td>" in page
    assert page.count(f'src="data:image/png;base64,{base64.b64encode(png).decode()}"') == 2
    assert 'src="c.png"' in page  # a missing file stays a link


# ---------------------------------------------------------------- the peak under each choice


def read_at(short: float, long: float) -> dict:
    """A named-horizon readout: accuracy at H_eval (H 32) and at x3 (3 x E[T], H 120)."""
    return {"H_eval": {"accuracy": short, "E_T": 30.0, "H": 32},
            "x3": {"accuracy": long, "E_T": 30.0, "H": 120}}


def choice_cells(acc: dict[float, tuple[float, float]]) -> list[tuple[dict, pd.DataFrame]]:
    """Three seeds per xi around the given (short, long) accuracies, each on 40k tokens."""
    return [({"xi": xi, "seed": seed, "H": round(40 * xi), "at": read_at(s + d, l + d)},
             history([40_000], [1.0]))
            for xi, (s, l) in acc.items() for seed, d in enumerate((-0.01, 0.0, 0.01))]


BASE_AT = {"at": {**read_at(0.5, 0.8), "H_low": {"accuracy": 0.4, "E_T": 30.0, "H": 16}}}


def test_the_peak_under_each_horizon_and_reading_and_when_it_moves():
    # read at H_eval the smallest xi gains most; read at 3 x E[T], the largest
    cells = choice_cells({0.5: (0.70, 0.80), 1.0: (0.65, 0.85), 2.0: (0.60, 0.95)})
    assert analysis.horizon_choices(BASE_AT, cells) == ["H_eval", "x3"]  # not H_low: no cell has it
    rows = analysis.robustness(cells, BASE_AT, E_T_within=20.0)
    got = {(r["h_eval"], r["reading"]): (r["peak_xi"], r["low"], r["high"]) for r in rows}
    assert got == {("H_eval", "restart"): (0.5, 0.5, 0.5), ("x3", "restart"): (2.0, 2.0, 2.0),
                   # within one completion a cell's xi is its H (20, 80) over E_T_within 20
                   ("H_eval", "within"): (1.0, 1.0, 1.0), ("x3", "within"): (4.0, 4.0, 4.0)}
    assert {r["H_eval"] for r in rows} == {32, 120}
    sentence = render.robustness_sentence(rows, (1.5, 2.0))
    assert "The peak moves with the evaluation horizon: xi = 0.5 at H_eval (H 32), 2 at x3" \
        in sentence
    assert "Under all 4 choices: none of these conclusions." in sentence
    assert "no xi lies in the interval of every horizon" in sentence
    assert ("below: H_eval / restart, H_eval / within; inside: x3 / restart; above: x3 / within"
            in sentence)
    lines = render.robustness_section(rows, (1.5, 2.0))
    assert "| x3 | 120 | 2 [2, 2] | 4 [4, 4] |" in lines


def test_a_peak_that_holds_under_every_choice_is_said_to():
    cells = choice_cells({0.5: (0.60, 0.85), 1.0: (0.70, 0.95), 2.0: (0.55, 0.81)})
    rows = analysis.robustness(cells, BASE_AT, E_T_within=None)  # an xi stage without it
    assert [r["reading"] for r in rows] == ["restart", "restart"]
    sentence = render.robustness_sentence(rows, (1.5, 2.0))
    assert "The peak is xi = 1 at every evaluation horizon read (H_eval, x3)." in sentence
    assert ("Under all 2 choices: the xi range [1, 1] lies in the interval of every horizon; the "
            "peak is below the paper's band [1.5, 2]." in sentence)
    assert "Not under all" not in sentence


def test_one_seed_per_xi_gives_peaks_without_intervals_and_no_range_claim():
    cells = [c for c in choice_cells({0.5: (0.70, 0.80), 1.0: (0.65, 0.85), 2.0: (0.60, 0.95)})
             if c[0]["seed"] == 0]
    rows = analysis.robustness(cells, BASE_AT, E_T_within=20.0)
    assert {(r["h_eval"], r["reading"]): (r["peak_xi"], r["low"], r["high"]) for r in rows} == {
        ("H_eval", "restart"): (0.5, None, None), ("x3", "restart"): (2.0, None, None),
        ("H_eval", "within"): (1.0, None, None), ("x3", "within"): (4.0, None, None)}
    assert "No xi range is claimed" in render.robustness_sentence(rows, (1.5, 2.0))
    assert "| x3 | 120 | 2 [no interval] | 4 [no interval] |" in render.robustness_section(
        rows, (1.5, 2.0))
