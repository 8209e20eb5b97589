"""Exact values of the estimators (relbudget.measure.estimators) on tiny hand-made tables.

What the other estimator tests leave open: the per-attempt Series (their index, name and dtype),
the refusals word for word, the defaults of the public functions (a call with them equals one
that spells them out), the dictionaries of plan, summarize and fit_gamma_T key by key, the
boundaries (H exactly at the cap and one above, a completion that ends exactly at H, K exactly
G, two prompts for a bootstrap interval) and the silence of the divisions by zero that the
estimators define (no hit -> inf, K < G), which must not warn.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from relbudget.measure import estimators as est
from tests.synth import HAND_ROWS, make_rollouts, tiny_table

CAP = 10
# as tests/test_estimators.py: per prompt consumed_sum / hits = a 19/2, b 17/0, c 16/3, d 10/1;
# pooled E_T = 62/6 = 31/3; first correct tokens 4, 3, 5, 1, 10, 2
ROWS = HAND_ROWS
E_T = 31 / 3


@pytest.fixture
def tiny() -> pd.DataFrame:
    df = tiny_table(ROWS, CAP)
    df.index = range(100, 100 + len(df))  # not 0..n-1: the Series must keep the table's index
    return df


def silent(fn, *args, **kwargs):
    """fn(*args, **kwargs) with every warning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def _scipy_ci(c, h, n_resamples, level, seed, method):
    """scipy.stats.bootstrap on the same pairs and the same generator (the reference of
    test_estimators.py, without its fallback)."""
    res = stats.bootstrap((np.asarray(c, float), np.asarray(h, float)), est._ratio, paired=True,
                          vectorized=True, n_resamples=n_resamples, confidence_level=level,
                          method=method, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


# ---------------------------------------------------------------- per attempt


def test_per_attempt_series_keep_the_index_and_have_their_names(tiny):
    idx = list(range(100, 111))
    hit = est.is_hit(tiny)
    assert (hit.name, hit.index.tolist()) == ("hit", idx)
    assert hit.tolist() == [True, False, True, False, False, False, True, True, True, True, False]
    c = est.consumed(tiny)
    assert (c.name, c.index.tolist(), c.dtype) == ("consumed", idx, np.int64)
    w = est.hit_within(tiny, 3)
    assert (w.name, w.index.tolist()) == ("hit_within", idx)
    b = est.budget_reward(tiny, 4)
    assert (b.name, b.index.tolist()) == ("budget_reward", idx)
    # (4 - T + 1) / 4 for T <= 4: T = 4 -> 1/4, 3 -> 1/2, 1 -> 1, 2 -> 3/4; 0 otherwise
    assert b.tolist() == [0.25, 0, 0.5, 0, 0, 0, 0, 1.0, 0, 0.75, 0]
    f = est.final_within(tiny, 6)
    assert (f.name, f.index.tolist()) == ("final_within", idx)


def test_final_within_at_exactly_the_end_of_a_completion(tiny):
    # ended on its own (eos / first_correct) with n_tokens <= H, and its final answer right:
    # row 2 (6 tokens, eos, right) counts at H = 6, not at H = 5; row 0 (4, first_correct) at 4
    assert est.final_within(tiny, 6).tolist() == [True, False, True, False, False, False, True,
                                                  True, False, True, False]
    assert est.final_within(tiny, 5).tolist() == [True, False, False, False, False, False, True,
                                                  True, False, True, False]
    assert est.final_within(tiny, 3).tolist() == [False] * 7 + [True, False, True, False]
    # a completion cut at the cap has no final answer, even a right one, even at H = cap
    cut = tiny_table([("x", 10, 7), ("x", 10, 10)], CAP)
    assert cut["stop_reason"].tolist() == ["length", "first_correct"]
    assert est.final_within(cut, CAP).tolist() == [False, True]


def test_reward_at_each_reward_by_name(tiny):
    within = est.reward_at(tiny, 3, "within")
    assert within.name == "within" and within.index.tolist() == list(range(100, 111))
    assert within.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    final = est.reward_at(tiny, 4, "final")
    assert final.name == "final"
    assert final.tolist() == [1.0] + [0.0] * 6 + [1.0, 0.0, 1.0, 0.0]
    assert est.reward_at(tiny, 4, "budget").name == "budget_reward"
    with pytest.raises(ValueError) as err:
        est.reward_at(tiny, 4, "best")
    assert str(err.value) == "reward must be one of within, final, budget, got 'best'"


def test_renewal_E_T_by_hand():
    assert est.renewal_E_T([3, 5, 4], [True, False, True]) == 6.0  # 12 tokens / 2 hits
    assert est.renewal_E_T(np.array([7.0]), np.array([True])) == 7.0
    assert silent(est.renewal_E_T, [3, 5], [False, False]) == math.inf


# ---------------------------------------------------------------- refusals, word for word


def test_refusals_word_for_word(tiny):
    empty = tiny.iloc[:0]
    for fn in (est.table_cap, est.pooled_E_T):
        with pytest.raises(ValueError) as err:
            fn(empty)
        assert str(err.value) == "the rollout table has no rows"
    assert est.table_cap(tiny.iloc[:1]) == CAP  # one row is a table
    with pytest.raises(ValueError) as err:
        est.check_horizons(tiny, [])
    assert str(err.value) == "no horizons given"
    with pytest.raises(ValueError) as err:
        est.curves(tiny, [5], 2.5)
    assert str(err.value) == "group size G=2.5 must be a whole number >= 2"
    with pytest.raises(ValueError) as err:
        est.ratio_ci([1.0, 2.0], [1.0, 1.0], method="bootstrap")
    assert str(err.value) == "CI method must be 'BCa', 'percentile' or 'basic', got 'bootstrap'"
    with pytest.raises(ValueError) as err:
        est.plan(tiny_table([("a", 10, None)], CAP), 1.0, 2)
    assert str(err.value) == ("no attempt in the rollout table is correct, so E[T] is infinite "
                              "and no finite horizon reaches the target xi")
    with pytest.raises(ValueError) as err:
        est.fit_gamma_T(np.array([]), np.array([3.0]))
    assert str(err.value) == ("no correct answer in the rollout table, so no T is observed and "
                              "the Gamma model of T cannot be fitted")


def test_regime_of_refusals():
    with pytest.raises(ValueError) as err:
        est.regime_of(1.0, 1.0, 1.0)  # equal bounds leave no balanced band
    assert str(err.value) == "deficient_below (1.0) must be below ample_above (1.0)"
    for xi in (math.nan, None):
        with pytest.raises(ValueError) as err:
            est.regime_of(xi, 0.5, 3.0)
        assert str(err.value) == f"xi must be a number, got {xi!r}"


# ---------------------------------------------------------------- no warning where inf is meant


def test_divisions_by_zero_that_define_inf_do_not_warn():
    no_hit = tiny_table([("a", 10, None), ("b", 3, None)], CAP)
    assert silent(est.pooled_E_T, no_hit) == math.inf  # 13 / 0
    assert silent(est.within_E_T, no_hit) == math.inf  # 0 / 0
    # a prompt whose only attempt generated 0 tokens and missed: 0 / 0 in per_prompt
    zero = tiny_table([("a", 4, 4), ("z", 0, None), ("y", 5, None)], CAP)
    pp = silent(est.per_prompt, zero).set_index("prompt_id")
    assert pp["E_T"].tolist() == [4.0, math.inf, math.inf]
    assert pp["E_T_lower"].tolist() == [4.0, 5.0, 0.0]
    assert pp[["n_attempts", "hits", "consumed_sum"]].dtypes.tolist() == [np.int64] * 3
    # K = 2 < G = 3: the unbiased products divide by K - 2 = 0 before the plug-in is chosen
    assert silent(est.p_mixed, 1, 2, 3) == pytest.approx(0.75)  # 1 - 1/8 - 1/8
    assert silent(est.p_all_equal, np.array([1.0]), np.array([2.0]), 3).tolist() == [0.125]
    # a bootstrap with resamples and leave-one-outs without a hit (inf - inf in the jackknife)
    rows = [("s", 3, 3)] + [(f"u{i}", 10, None) for i in range(12)]
    pp = est.per_prompt(tiny_table(rows, CAP))
    silent(est.ratio_ci, pp["consumed_sum"], pp["hits"], 199)
    # an explicit E_T of 0 gives xi = inf, silently
    assert silent(est.curves, tiny_table(ROWS, CAP), [5], 2, E_T=0.0)["xi"].tolist() == [math.inf]


def test_p_all_equal_at_K_equal_G_is_the_unbiased_one():
    # K = G = 2: C(c,2)/C(2,2) = 0 for c = 1 and 1 for c = 2 (the plug-in would say 1/4 and 1)
    assert est.p_all_equal(np.array([1.0, 2.0]), np.array([2.0, 2.0]), 2).tolist() == [0.0, 1.0]
    assert est.p_all_equal(np.array([1.0]), np.array([1.0]), 2).tolist() == [1.0]  # K < G


@pytest.mark.parametrize("G, name, short", [(2, "unbiased", 0), (3, "mixed", 2),
                                            (5, "plug-in", 4)])
def test_p_inf_estimator_names_and_warning(tiny, G, name, short):
    # attempts per prompt: a 4, b 2, c 3, d 2 (K = G = 2 is enough for the unbiased one)
    got = est.p_inf_estimator(tiny, G)
    if short == 0:
        assert got == ("unbiased", None)
        return
    assert got == (name, f"P_inf uses the plug-in 1 - p^G - (1-p)^G for {short} of 4 prompts: "
                         f"they have fewer attempts (min 2) than the group size G = {G}, so P_inf "
                         f"is understated there; sample at least {G} attempts per prompt for the "
                         "unbiased estimate")


# ---------------------------------------------------------------- bootstrap intervals


def test_bootstrap_defaults_and_arguments_are_passed_on(tiny):
    pp = est.per_prompt(tiny)
    c, h = pp["consumed_sum"].to_numpy(), pp["hits"].to_numpy()
    default = est.ratio_ci(c, h, 999, 0.95, 0, "BCa")
    assert est.ratio_ci(c, h) == default
    assert est.bootstrap_ci(tiny) == default
    other = est.ratio_ci(c, h, 199, 0.8, 3, "percentile")
    assert other != default
    assert est.bootstrap_ci(tiny, 199, 0.8, 3, "percentile") == other
    assert est.bootstrap_ci(tiny, 199, 0.8, 3, "BCa") == est.ratio_ci(c, h, 199, 0.8, 3, "BCa")
    fct_sum, fct_hits = est.within_sums(tiny)
    assert fct_sum.tolist() == [7.0, 0.0, 16.0, 2.0] and fct_hits.tolist() == [2, 0, 3, 1]
    assert est.within_summary(tiny) == est.within_summary(tiny, 999, 0.95, 0)
    w = est.within_summary(tiny, 199, 0.8, 3)
    assert w == {"E_T_within": pytest.approx(25 / 6),
                 "E_T_within_ci": list(est.ratio_ci(fct_sum, fct_hits, 199, 0.8, 3)),
                 "unsolved_share_within": pytest.approx(5 / 11)}
    assert w["E_T_within_ci"] != est.within_summary(tiny)["E_T_within_ci"]


def test_bootstrap_defaults_on_a_table_where_they_matter():
    # 20 prompts x 4: a bootstrap distribution fine enough that 1000 resamples or seed 1 give
    # another interval than the defaults 999 and 0 (on `tiny` they land on the same atoms)
    df = make_rollouts(20, 4, seed=1)
    pp = est.per_prompt(df)
    c, h = pp["consumed_sum"].to_numpy(), pp["hits"].to_numpy()
    default = est.ratio_ci(c, h, 999, 0.95, 0, "BCa")
    assert default != est.ratio_ci(c, h, 1000, 0.95, 0, "BCa")
    assert default != est.ratio_ci(c, h, 999, 0.95, 1, "BCa")
    assert est.ratio_ci(c, h) == default and est.bootstrap_ci(df) == default
    s = est.summarize(df, [64], n_bootstrap=199, ci_level=0.8, seed=3)
    assert s["E_T_ci"] == list(est.ratio_ci(c, h, 199, 0.8, 3))
    assert s["E_T_ci"] != list(est.ratio_ci(c, h, 999, 0.8, 3))
    assert est.summarize(df, [64])["E_T_ci"] == list(est.ratio_ci(c, h, 1000, 0.95, 0))
    assert est.summarize(df, [64])["E_T_ci"] != list(est.ratio_ci(c, h, 1000, 0.95, 1))


def test_bca_on_two_prompts_is_scipys():
    # two prompts are enough for an interval (one is not); at level 0.5, seed 0 the BCa interval
    # differs from the percentile one, and equals scipy's on the same resamples
    c, h = [10.0, 30.0], [2.0, 1.0]
    got = est.ratio_ci(c, h, 999, 0.5, 0, "BCa")
    assert got == pytest.approx(_scipy_ci(c, h, 999, 0.5, 0, "BCa"), rel=1e-9)
    assert got != pytest.approx(est.ratio_ci(c, h, 999, 0.5, 0, "percentile"))
    assert all(math.isfinite(x) for x in got)
    assert all(math.isnan(x) for x in est.ratio_ci([10.0], [2.0]))


# ---------------------------------------------------------------- curves, plan, summarize


def test_reward_curves_default_is_within_with_its_columns(tiny):
    rc = est.reward_curves(tiny, [3, 5], 2)
    assert list(rc.columns) == ["H", "reward_mean", "reward_var", "p_informative"]
    assert rc["H"].tolist() == [3, 5]
    assert rc["reward_mean"].tolist() == pytest.approx([3 / 11, 5 / 11])
    pd.testing.assert_frame_equal(rc, est.reward_curves(tiny, [3, 5], 2, "within"))


def test_plan_by_hand_key_by_key(tiny):
    # H = floor(0.5 * 31/3 + 0.5) = 5; p = 5/11 (T = 4, 3, 5, 1, 2); P_inf, G = 2, per prompt:
    # a 1 - 2 * C(2,2)/C(4,2) = 2/3, b 0, c 1 - C(2,2)/C(3,2) = 2/3, d 1 -> 7/12
    assert est.plan(tiny, 0.5, 2) == {
        "target_xi": 0.5, "H": 5, "xi": pytest.approx(15 / 31), "E_T": pytest.approx(E_T),
        "group_size": 2, "reward": "within", "max_tokens": CAP, "extrapolated": False,
        "warning": None, "p": pytest.approx(5 / 11), "reward_mean": pytest.approx(5 / 11),
        "reward_var": pytest.approx(30 / 121), "p_informative": pytest.approx(7 / 12),
        "p_informative_pooled": pytest.approx(60 / 121), "p_informative_estimator": "unbiased"}
    # exactly at the cap (floor(31/3 + 0.5) = 10): measured; all 6 hits are within 10
    at_cap = est.plan(tiny, 1.0, 2)
    assert (at_cap["H"], at_cap["extrapolated"], at_cap["p"]) == (10, False, pytest.approx(6 / 11))
    # one above it (floor(1.05 * 31/3 + 0.5) = 11): not measured
    assert est.plan(tiny, 1.05, 3) == {
        "target_xi": 1.05, "H": 11, "xi": pytest.approx(33 / 31), "E_T": pytest.approx(E_T),
        "group_size": 3, "reward": "within", "max_tokens": CAP, "extrapolated": True,
        "warning": "H=11 is above the table's cap max_tokens=10; p(H), reward variance and P_inf "
                   "cannot be measured there (sample with max_tokens >= 11)",
        "p": None, "reward_mean": None, "reward_var": None, "p_informative": None,
        "p_informative_pooled": None}
    # K < G on some prompts: the warning is p_inf_estimator's
    assert est.plan(tiny, 0.5, 3)["warning"] == est.p_inf_estimator(tiny, 3)[1]


SUMMARY_KEYS = ["E_T", "E_T_ci", "E_T_prompt_mean", "unsolved_share", "E_T_within",
                "E_T_within_ci", "unsolved_share_within", "n_prompts", "n_attempts", "n_hits",
                "horizons", "max_tokens", "group_size", "p_informative_estimator",
                "p_informative_warning", "reward", "ci_level", "ci_method", "n_bootstrap"]


def test_summarize_key_by_key_and_its_arguments(tiny):
    s = est.summarize(tiny, [5], group_size=3, n_bootstrap=199, ci_level=0.8, seed=3)
    assert list(s) == SUMMARY_KEYS
    pp = est.per_prompt(tiny)
    assert s["E_T_ci"] == list(est.ratio_ci(pp["consumed_sum"], pp["hits"], 199, 0.8, 3))
    assert s["E_T_within_ci"] == est.within_summary(tiny, 199, 0.8, 3)["E_T_within_ci"]
    assert (s["n_hits"], s["group_size"], s["reward"]) == (6, 3, "within")
    assert (s["ci_level"], s["ci_method"], s["n_bootstrap"]) == (0.8, "BCa", 199)
    assert (s["p_informative_estimator"], s["p_informative_warning"]) == \
        est.p_inf_estimator(tiny, 3)


def test_summarize_defaults_equal_the_spelled_out_call():
    # E_T = 8 tokens / 4 hits = 2, cap 10: the default horizons 1, 3, 5, 8, 10 give xi 0.5 (the
    # lower bound itself: balanced), 1.5, 2.5, 4 and 5 (above 3: ample)
    fast = tiny_table([("a", 2, 2), ("a", 2, 2), ("b", 1, 1), ("b", 3, 3)], CAP)
    s = est.summarize(fast)
    assert s == est.summarize(fast, [1, 3, 5, 8, 10], 8, 1000, 0.95, 0, 0.5, 3.0, "within")
    assert [h["xi"] for h in s["horizons"]] == [0.5, 1.5, 2.5, 4.0, 5.0]
    assert [h["regime"] for h in s["horizons"]] == ["balanced"] * 3 + ["ample"] * 2
    assert (s["group_size"], s["n_bootstrap"], s["p_informative_estimator"]) == (8, 1000,
                                                                                 "plug-in")


# ---------------------------------------------------------------- the Gamma model of T


def test_restart_T_of_an_empty_table_and_its_dtypes(tiny):
    observed, censored = est.restart_T(tiny)
    assert observed.dtype == np.int64 and censored.dtype == np.int64
    # a: 4, then 10 + 3; b: censored 17; c: 5, 1, 10; d: 2, censored 8
    assert observed.tolist() == [4, 13, 5, 1, 10, 2] and censored.tolist() == [2, 17, 8]
    observed, censored = est.restart_T(tiny.iloc[:0])
    assert (observed.tolist(), censored.tolist()) == ([], [])
    assert observed.dtype == np.int64 and censored.dtype == np.int64


def test_fit_gamma_T_key_by_key():
    # no censoring: the Gamma MLE (loc fixed at 0) has mean = the sample mean, 12 / 4 = 3
    fit = est.fit_gamma_T(np.array([1, 2, 3, 6]), np.array([], dtype=np.int64))
    assert list(fit) == ["K", "rate", "mean", "n_observed", "n_censored", "sup_distance",
                         "expon_rate", "expon_mean", "expon_sup_distance"]
    assert fit["mean"] == pytest.approx(3.0, rel=1e-4)
    assert fit["rate"] == pytest.approx(fit["K"] / fit["mean"])
    assert (fit["expon_mean"], fit["expon_rate"]) == (pytest.approx(3.0), pytest.approx(1 / 3))
    # censored at 4 and 8: the exponential mean is (12 + 12) / 4 observed = 6
    fit = est.fit_gamma_T(np.array([1, 2, 3, 6]), np.array([4, 8]))
    assert (fit["n_observed"], fit["n_censored"]) == (4, 2)
    assert (fit["expon_mean"], fit["expon_rate"]) == (pytest.approx(6.0), pytest.approx(1 / 6))


def test_sup_distance_reads_just_before_each_jump():
    # cdf(x) = x / 10; KM jumps to 0.1 at 2 and to 0.8 at 8. At the jumps |0.2 - 0.1| = 0.1 and
    # |0.8 - 0.8| = 0; just before them |cdf(1) - 0| = 0.1 and |cdf(7) - 0.1| = 0.6: sup 0.6
    def cdf(x):
        return np.clip(np.asarray(x, float) / 10, 0, 1)

    assert est._sup_distance(cdf, np.array([2.0, 8.0]), np.array([0.1, 0.8])) == \
        pytest.approx(0.6)
