"""Estimators against hand-made tables (exact values) and synthetic tables with known E[T]."""

from __future__ import annotations

import itertools
import json
import math
import time
import warnings

import numpy as np
import pandas as pd
import pytest

from relbudget.measure import estimators as est
from tests.synth import HAND_ROWS, make_rollouts, tiny_table, true_E_T

CAP = 10
# (prompt_id, n_tokens, first_correct_token); cap 10.
#   a: hit at 4 (early exit), miss cut at the cap, hit at 3 then more text to 6, miss EOS at 2
#   b: never correct (unsolved)
#   c: three hits, one exactly at the cap
#   d: K=2 < G=3 (the plug-in branch of P_inf)
ROWS = HAND_ROWS
FCT = [4, 3, 5, 1, 10, 2]  # every first_correct_token above
CONSUMED = {"a": 4 + 10 + 3 + 2, "b": 10 + 7, "c": 5 + 1 + 10, "d": 2 + 8}
HITS = {"a": 2, "b": 0, "c": 3, "d": 1}


@pytest.fixture
def tiny() -> pd.DataFrame:
    return tiny_table(ROWS, CAP)


# ---------------------------------------------------------------- per attempt, per prompt


def test_consumed_and_hit_within(tiny):
    assert est.consumed(tiny).tolist() == [4, 10, 3, 2, 10, 7, 5, 1, 10, 2, 8]
    assert est.hit_within(tiny, 3).tolist() == [False, False, True, False, False, False,
                                                 False, True, False, True, False]
    assert est.hit_within(tiny, CAP).sum() == len(FCT)


def test_per_prompt_exact(tiny):
    pp = est.per_prompt(tiny).set_index("prompt_id")
    assert pp["n_attempts"].to_dict() == {"a": 4, "b": 2, "c": 3, "d": 2}
    assert pp["hits"].to_dict() == HITS
    assert pp["consumed_sum"].to_dict() == CONSUMED
    assert pp.loc["a", "E_T"] == pytest.approx(19 / 2)
    assert pp.loc["c", "E_T"] == pytest.approx(16 / 3)
    assert pp.loc["b", "E_T"] == math.inf and not pp.loc["b", "solved"]
    assert pp.loc["b", "E_T_lower"] == 17  # the tokens that went by without a correct answer
    assert pp.loc["a", "E_T_lower"] == pp.loc["a", "E_T"]
    assert est.pooled_E_T(tiny) == pytest.approx(sum(CONSUMED.values()) / sum(HITS.values()))


def test_no_hit_at_all_gives_inf():
    df = tiny_table([("a", 10, None), ("b", 3, None)], CAP)
    assert est.pooled_E_T(df) == math.inf
    assert est.bootstrap_ci(df, 99) == (math.inf, math.inf)
    assert est.per_prompt(df)["E_T"].tolist() == [math.inf, math.inf]


# ---------------------------------------------------------------- E[T] on synthetic tables


def test_truth_matches_big_monte_carlo():
    # Guards the closed form in synth.true_E_T itself (1e6 attempts: standard error ~0.7%).
    big = make_rollouts(20_000, 50, seed=123, validated=False)
    assert est.pooled_E_T(big) == pytest.approx(true_E_T(), rel=0.02)


@pytest.mark.parametrize("early_exit", [True, False])
def test_pooled_E_T_within_5_percent(early_exit):
    # 200 prompts x 8 = 1,600 attempts in their exact type shares. Relative standard error here
    # is ~2.1%; with types drawn at random it is ~7%, the prompt mix then dominates (that case
    # is what the coverage test checks). Text after the first correct answer (early_exit=False)
    # must not change the estimate: consumed stops at first_correct_token.
    df = make_rollouts(200, 8, seed=0, stratified=True, early_exit=early_exit)
    assert est.pooled_E_T(df) == pytest.approx(true_E_T(), rel=0.05)


def test_unsolved_prompts_and_share():
    df = make_rollouts(200, 8, seed=1)
    pp = est.per_prompt(df).merge(df.groupby("prompt_id")["type"].first().reset_index())
    never = pp["type"] == "never"
    assert never.sum() > 10
    assert (pp.loc[never, "E_T"] == math.inf).all() and not pp.loc[never, "solved"].any()
    no_hit = df.groupby("prompt_id")["first_correct_token"].apply(lambda s: s.isna().all())
    s = est.summarize(df, [64], n_bootstrap=99)
    assert s["unsolved_share"] == pytest.approx(no_hit.mean())
    assert s["E_T_prompt_mean"] == pytest.approx(pp.loc[pp["solved"], "E_T"].mean())


def test_bootstrap_ci_coverage_and_runtime():
    # Prompts drawn i.i.d. from the type mix: exactly the sampling the bootstrap over prompts
    # mimics. 300 replicates: if the true coverage were 0.95, seeing < 0.93 has prob ~5%.
    truth = true_E_T()
    t0 = time.perf_counter()
    covered, estimates = [], []
    for r in range(300):
        df = make_rollouts(200, 8, seed=10_000 + r, validated=False)
        low, high = est.bootstrap_ci(df, n_resamples=999, level=0.95, seed=r)
        covered.append(low <= truth <= high)
        estimates.append(est.pooled_E_T(df))
    elapsed = time.perf_counter() - t0
    assert np.mean(covered) >= 0.93
    # The ratio estimator is consistent and nearly unbiased at this size (SE of this mean ~0.4%).
    assert np.mean(estimates) == pytest.approx(truth, rel=0.015)
    assert elapsed < 40, f"coverage loop took {elapsed:.1f}s"


def test_bootstrap_degenerate_and_deterministic(tiny):
    one = tiny_table([("a", 4, 4), ("a", 10, None)], CAP)
    low, high = est.bootstrap_ci(one, 99)
    assert math.isnan(low) and math.isnan(high)  # one prompt: no spread between prompts
    # a single solved prompt among many: BCa's jackknife breaks; a finite low end, no crash
    rows = [("s", 3, 3)] + [(f"u{i}", 10, None) for i in range(30)]
    low, high = est.bootstrap_ci(tiny_table(rows, CAP), 199)
    assert 0 < low <= est.pooled_E_T(tiny_table(rows, CAP)) <= high
    # every prompt alike: every resample equal
    same = tiny_table([(p, 4, 4) for p in "abcde"], CAP)
    assert est.bootstrap_ci(same, 99) == pytest.approx((4.0, 4.0))
    assert est.bootstrap_ci(tiny, 199, seed=3) == est.bootstrap_ci(tiny, 199, seed=3)


def _scipy_ratio_ci(c, h, n_resamples, level, seed, method):
    """The reference: scipy.stats.bootstrap on the same pairs, with ratio_ci's batch size and a
    generator with the same seed, so it draws the very same resamples (ratio_ci reproduces
    scipy's rng.integers calls); where BCa is undefined, ratio_ci's percentile fallback."""
    from scipy import stats

    def run(m):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            res = stats.bootstrap((c, h), est._ratio, paired=True, vectorized=True,
                                  n_resamples=n_resamples, confidence_level=level, method=m,
                                  batch=max(1, est._BOOTSTRAP_CELLS // len(c)),
                                  rng=np.random.default_rng(seed))
        return float(res.confidence_interval.low), float(res.confidence_interval.high)

    low, high = run(method)
    if method == "BCa" and (math.isnan(low) or math.isnan(high)):
        low, high = run("percentile")
    return low, high


@pytest.mark.parametrize("cells", [est._BOOTSTRAP_CELLS, 97])  # one batch; many odd-sized ones
def test_ratio_ci_equals_scipy_bootstrap_on_the_same_resamples(monkeypatch, cells):
    # ratio_ci computes the BCa jackknife in closed form (O(prompts)); scipy re-evaluates the
    # statistic on every leave-one-out sample (O(prompts^2)). Same resamples, same interval.
    monkeypatch.setattr(est, "_BOOTSTRAP_CELLS", cells)
    tables = [make_rollouts(n, k, seed=n) for n, k in ((3, 2), (20, 4), (57, 8), (150, 3))]
    tables.append(tiny_table([("s", 3, 3)] + [(f"u{i}", 10, None) for i in range(12)], CAP))
    tables.append(tiny_table([(p, 4, 4) for p in "abcde"], CAP))  # every resample equal
    for df in tables:
        pp = est.per_prompt(df)
        c, h = pp["consumed_sum"].to_numpy(float), pp["hits"].to_numpy(float)
        for method, level, seed in (("BCa", 0.95, 0), ("BCa", 0.8, 5), ("percentile", 0.9, 1),
                                    ("basic", 0.95, 2)):
            got = est.ratio_ci(c, h, 299, level, seed, method)
            want = _scipy_ratio_ci(c, h, 299, level, seed, method)
            assert got == pytest.approx(want, rel=1e-6, abs=1e-6), (len(c), method)


# ---------------------------------------------------------------- curves over H


def _informative_by_hand(h: int, k: int, G: int) -> float:
    if k >= G:
        return 1 - math.comb(h, G) / math.comb(k, G) - math.comb(k - h, G) / math.comb(k, G)
    p = h / k
    return 1 - p**G - (1 - p) ** G


@pytest.mark.parametrize("G", [2, 3])
def test_curves_exact_on_tiny_table(tiny, G):
    horizons = [1, 3, 4, 9, 10, 2]  # unsorted on purpose: output keeps the caller's order
    cv = est.curves(tiny, horizons, G)
    assert cv["H"].tolist() == horizons
    K = {"a": 4, "b": 2, "c": 3, "d": 2}
    per_prompt_fct = {"a": [4, 3], "b": [], "c": [5, 1, 10], "d": [2]}
    E_T = sum(CONSUMED.values()) / sum(HITS.values())
    for row in cv.itertuples():
        H = row.H
        p = sum(f <= H for f in FCT) / len(ROWS)
        assert row.p == pytest.approx(p)
        assert row.reward_var == pytest.approx(p * (1 - p))
        inf = np.mean([_informative_by_hand(sum(f <= H for f in per_prompt_fct[x]), K[x], G) for x in K])
        assert row.p_informative == pytest.approx(inf)
        assert row.p_informative_pooled == pytest.approx(1 - p**G - (1 - p) ** G)
        assert row.xi == pytest.approx(H / E_T)
    # spot values worked out on paper: H=4, G=2 -> (2/3 + 0 + 2/3 + 1) / 4; G=3 -> (1+0+1+3/4)/4
    at4 = cv.set_index("H").loc[4, "p_informative"]
    assert at4 == pytest.approx(7 / 12 if G == 2 else 11 / 16)


def test_unbiased_p_informative_matches_enumeration():
    # Every G-subset of a prompt's K attempts is a possible group; the estimator must equal the
    # share of subsets with both rewards, exactly.
    rng = np.random.default_rng(0)
    for _ in range(40):
        K = int(rng.integers(2, 9))
        G = int(rng.integers(2, K + 1))
        rewards = rng.random(K) < rng.random()
        groups = list(itertools.combinations(rewards, G))
        brute = np.mean([0 < sum(g) < G for g in groups])
        assert est.p_mixed(rewards.sum(), K, G) == pytest.approx(brute, abs=1e-12)


def test_curves_incremental_equals_direct():
    # The O(attempts + horizons) accumulation against a plain loop over H.
    df = make_rollouts(60, 5, seed=7)
    hs = est.default_horizons(est.table_cap(df))
    cv = est.curves(df, hs, 4)
    k = df.groupby("prompt_id").size()
    for H in (1, 17, 40, 99, 128):
        h = est.hit_within(df, H).groupby(df["prompt_id"]).sum()
        direct = est.p_mixed(h.to_numpy(), k.to_numpy(), 4).mean()
        assert cv.loc[cv["H"] == H, "p_informative"].item() == pytest.approx(direct)
        assert cv.loc[cv["H"] == H, "p"].item() == pytest.approx(est.hit_within(df, H).mean())


def test_p_informative_is_unbiased_where_plug_in_is_not():
    # K=8 attempts per prompt at true p=0.3, G=8: the unbiased mean hits 1-p^G-(1-p)^G, the
    # plug-in falls short (E[p_hat^G] > p^G).
    rng = np.random.default_rng(1)
    p, K, G = 0.3, 8, 8
    h = rng.binomial(K, p, size=200_000)
    target = 1 - p**G - (1 - p) ** G
    assert est.p_mixed(h, K, G).mean() == pytest.approx(target, abs=3e-3)
    plug = 1 - (h / K) ** G - (1 - h / K) ** G
    assert plug.mean() < target - 0.02


@pytest.mark.parametrize("bad", [11, 1000])
def test_horizon_above_cap_raises(tiny, bad):
    with pytest.raises(ValueError, match=rf"H={bad}.*max_tokens={CAP}"):
        est.curves(tiny, [5, bad], 2)
    with pytest.raises(ValueError, match=f"H={bad}"):
        est.summarize(tiny, [bad], n_bootstrap=99)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_horizon_raises(tiny, bad):
    with pytest.raises(ValueError, match="horizon"):
        est.check_horizons(tiny, [bad])


def test_bad_group_size_raises(tiny):
    with pytest.raises(ValueError, match="group size"):
        est.curves(tiny, [5], 1)


# ---------------------------------------------------------------- regimes, horizons, plan


def test_regime_of():
    assert est.regime_of(0.0, 0.5, 3.0) == "deficient"
    assert est.regime_of(0.49, 0.5, 3.0) == "deficient"
    assert est.regime_of(0.5, 0.5, 3.0) == "balanced"
    assert est.regime_of(1.75, 0.5, 3.0) == "balanced"
    assert est.regime_of(3.0, 0.5, 3.0) == "balanced"
    assert est.regime_of(3.01, 0.5, 3.0) == "ample"
    assert est.regime_of(math.inf, 0.5, 3.0) == "ample"
    with pytest.raises(ValueError):
        est.regime_of(1.0, 3.0, 0.5)


def test_horizon_grids():
    assert est.default_horizons(4) == [1, 2, 3, 4]
    assert est.summary_horizons(128) == [16, 32, 64, 96, 128]
    assert est.summary_horizons(3) == [1, 2, 3]


def test_plan(tiny):
    E_T = sum(CONSUMED.values()) / sum(HITS.values())  # 62/6
    out = est.plan(tiny, 0.5, 2)
    assert out["H"] == round(0.5 * E_T) == 5
    assert out["E_T"] == pytest.approx(E_T) and out["target_xi"] == 0.5
    assert not out["extrapolated"] and out["warning"] is None
    row = est.curves(tiny, [5], 2).iloc[0]
    assert out["p"] == pytest.approx(5 / 11) == row["p"]
    assert out["reward_var"] == pytest.approx(row["reward_var"])
    assert out["p_informative"] == pytest.approx(row["p_informative"])
    assert est.plan(tiny, 0.01, 2)["H"] == 1  # never below one token
    assert est.plan(tiny, 1.0, 2)["H"] == CAP and not est.plan(tiny, 1.0, 2)["extrapolated"]


def test_plan_beyond_cap_and_errors(tiny):
    out = est.plan(tiny, 3.0, 2)
    assert out["H"] == 31 and out["extrapolated"]
    assert out["p"] is None and out["p_informative"] is None and "max_tokens=10" in out["warning"]
    with pytest.raises(ValueError, match="infinite"):
        est.plan(tiny_table([("a", 10, None)], CAP), 1.0, 2)
    for bad in (0, -1, math.nan, math.inf):
        with pytest.raises(ValueError, match="target xi"):
            est.plan(tiny, bad, 2)


# ---------------------------------------------------------------- summary


SUMMARY_KEYS = {"E_T", "E_T_ci", "E_T_prompt_mean", "unsolved_share", "n_prompts", "n_attempts",
               "horizons"}
HORIZON_KEYS = {"H", "xi", "p", "reward_var", "p_informative", "regime"}


def test_summarize_keys_and_json_safe(tiny):
    s = est.summarize(tiny, [2, 5, 10], group_size=2, n_bootstrap=99, deficient_below=0.3,
                      ample_above=0.8)
    assert SUMMARY_KEYS <= set(s) and {"max_tokens", "group_size"} <= set(s)
    json.dumps(s, allow_nan=False)  # strict JSON: no inf / nan anywhere
    assert s["n_prompts"] == 4 and s["n_attempts"] == len(ROWS) and s["max_tokens"] == CAP
    assert s["unsolved_share"] == 0.25
    assert s["E_T_prompt_mean"] == pytest.approx(np.mean([19 / 2, 16 / 3, 10]))
    assert len(s["E_T_ci"]) == 2
    assert [h["regime"] for h in s["horizons"]] == ["deficient", "balanced", "ample"]
    for h in s["horizons"]:
        assert HORIZON_KEYS | {"p_informative_pooled"} <= set(h)


def test_within_one_completion_reading_exact(tiny):
    """T within one completion: the mean first correct token over the completions that hit, no
    restart; the restart E_T is it plus the misses' tokens per hit, so never smaller."""
    within = sum(FCT) / len(FCT)
    misses = sum(n for _, n, fct in ROWS if fct is None)
    assert est.within_E_T(tiny) == pytest.approx(within)
    assert est.pooled_E_T(tiny) == pytest.approx(within + misses / len(FCT))
    s = est.summarize(tiny, [2, 5, 10], group_size=2, n_bootstrap=99)
    assert s["E_T_within"] == pytest.approx(within)
    assert s["unsolved_share_within"] == pytest.approx(1 - len(FCT) / len(ROWS))
    assert [h["xi_within"] for h in s["horizons"]] == pytest.approx([2 / within, 5 / within,
                                                                     10 / within])
    assert [h["xi"] for h in s["horizons"]] == pytest.approx(
        [H / est.pooled_E_T(tiny) for H in (2, 5, 10)])  # the restart reading is unchanged


def test_within_reading_interval_brackets_its_estimate():
    s = est.summarize(make_rollouts(60, 8, seed=4), None, n_bootstrap=300)
    low, high = s["E_T_within_ci"]
    assert low < s["E_T_within"] < high < s["E_T"]


def test_summarize_all_unsolved_is_json_safe():
    s = est.summarize(tiny_table([("a", 10, None), ("b", 4, None)], CAP), [CAP], n_bootstrap=99)
    json.dumps(s, allow_nan=False)
    assert s["E_T"] is None and s["E_T_ci"] == [None, None] and s["E_T_prompt_mean"] is None
    assert s["unsolved_share"] == 1.0
    assert s["horizons"][0]["xi"] == 0.0 and s["horizons"][0]["regime"] == "deficient"
    assert s["E_T_within"] is None and s["unsolved_share_within"] == 1.0
    assert s["horizons"][0]["xi_within"] == 0.0


def test_summarize_default_horizons():
    s = est.summarize(make_rollouts(30, 4, seed=2), n_bootstrap=99)
    assert [h["H"] for h in s["horizons"]] == est.summary_horizons(128)


# ---------------------------------------------------------------- categorical ids, lean read


@pytest.mark.parametrize("reward", ["within", "final", "budget"])
def test_categorical_prompt_ids_give_the_same_numbers(reward):
    """factorize orders a categorical by its categories; the estimators order prompt ids as
    strings whatever the categories' order, so a categorical table gives the same numbers."""
    df = make_rollouts(60, 8, seed=4)
    cat = df.assign(prompt_id=pd.Categorical(df["prompt_id"],
                                             categories=sorted(set(df["prompt_id"]), reverse=True)
                                             + ["unused"]),
                    stop_reason=df["stop_reason"].astype("category"))
    assert est.summarize(cat, None, n_bootstrap=200, reward=reward) == \
        est.summarize(df, None, n_bootstrap=200, reward=reward)
    pd.testing.assert_frame_equal(est.per_prompt(cat), est.per_prompt(df))
    for a, b in zip(est.restart_T(cat), est.restart_T(df)):
        np.testing.assert_array_equal(a, b)


def test_read_rollouts_matches_read_table(tmp_path):
    """The lean read gives read_table's table (categoricals aside) and, for a bad table, its
    exact error message."""
    from relbudget.core.schemas import ROLLOUTS, TableError, read_rollouts, read_table

    df = make_rollouts(50, 6, seed=2, validated=False)
    path = tmp_path / "r.parquet"
    df.to_parquet(path)
    cols = ["prompt_id", "n_tokens", "first_correct_token", "stop_reason", "policy"]
    lean = read_rollouts(path, cols)
    assert list(lean.columns) == cols and isinstance(lean["prompt_id"].dtype, pd.CategoricalDtype)
    full = read_table(path, ROLLOUTS, schema_columns_only=True)
    pd.testing.assert_frame_equal(lean.astype({c: full[c].dtype for c in cols}), full[cols])
    pd.testing.assert_frame_equal(read_rollouts(path).astype(full.dtypes.to_dict()), full)

    for col, value in [("attempt", -1), ("first_correct_token", 0), ("stop_reason", "stop")]:
        bad = df.copy()
        bad.loc[7, col] = value
        bad.to_parquet(path)
        with pytest.raises(TableError) as want:
            read_table(path, ROLLOUTS, schema_columns_only=True)
        with pytest.raises(TableError) as got:
            read_rollouts(path, cols)
        assert str(got.value) == str(want.value) and "row 7" in str(got.value)
