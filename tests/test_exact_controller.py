"""Exact values of the xi controller (relbudget.train.controller) by hand: a cadence other than 1
(the window spans the steps since the last update), the EMA in log space, the clamp exactly at,
one below and one above h_min and h_max; the censored Gamma estimate against scipy's own fit and
each of its fallbacks to the ratio at its edge; every refusal word for word; and the wiring into
a real TRL GRPOTrainer (built, not trained: a fraction of a second after TRL's import): the cap
set everywhere TRL reads it, the per-step metrics in TRL's own log, the two-line form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from relbudget.train.controller import XiController


def test_cadence_two_pools_the_window_and_smooths_in_log_space():
    changes = []
    ctrl = XiController(target_xi=2.0, every=2, h_min=10, h_max=100, smoothing=0.5,
                        method="ratio", on_change=changes.append)
    ctrl.resume(40)
    ctrl.record([10, 20], [True, False])
    row = ctrl.step_row(1)  # step 1: no update (every 2)
    assert row["H"] == 40 and row["H_next"] == 40 and math.isnan(row["E_T_est"])
    assert row["E_T"] == 30.0 and row["xi_t"] == pytest.approx(40 / 30)
    ctrl.record([5, 5], [True, True])
    row = ctrl.step_row(2)
    # the window holds both steps: (10 + 20 + 5 + 5) / 3 hits = 40/3; target H = 80/3;
    # EMA in log space with weight 0.5: sqrt(40 * 80/3) = 32.66 -> 33
    assert row["E_T_est"] == pytest.approx(40 / 3)
    assert row["E_T"] == 5.0 and row["xi_t"] == 8.0  # this step alone, at the H it ran at
    assert (row["H"], row["H_next"], ctrl.H) == (40, 33, 33)
    assert changes == [33]
    assert (row["hit_rate"], row["max_length"], row["n_completions"]) == (1.0, 5, 2)
    assert ctrl.step_row(3) is None  # nothing recorded: no row


@pytest.mark.parametrize("E_T, H", [(9, 10), (10, 10), (11, 11), (19, 19), (20, 20), (21, 20)])
def test_the_clamp_at_its_edges(E_T, H):
    ctrl = XiController(target_xi=1.0, every=1, h_min=10, h_max=20, smoothing=0.0, method="ratio")
    ctrl.resume(15)
    ctrl.record([E_T], [True])
    assert ctrl.step_row(1)["H_next"] == H


def test_no_hit_keeps_H_and_the_estimate():
    ctrl = XiController(target_xi=1.0, h_min=1, h_max=100, smoothing=0.0, method="ratio")
    ctrl.resume(50)
    ctrl.record([30], [True])
    assert ctrl.step_row(1)["H_next"] == 30
    ctrl.record([30, 30], [False, False])
    row = ctrl.step_row(2)
    assert row["H_next"] == 30 and row["E_T_est"] == 30.0 and math.isnan(row["xi_t"])


# ---------------------------------------------------------------- the censored estimator


def _scipy_gamma_mean(obs, cens) -> float:
    """The right-censored Gamma MLE mean, straight from scipy (loc fixed at 0)."""
    from scipy import stats

    K, _, scale = stats.gamma.fit(stats.CensoredData(uncensored=obs, right=cens), floc=0)
    return K * scale


def test_censored_mean_T_gamma_is_scipys_censored_fit():
    from relbudget.train.controller import censored_mean_T

    # a hit at 0 tokens is read as 0.5 (a Gamma has no mass at 0); a miss at 0 tokens says
    # nothing (T >= 0) and is dropped; the other misses are right-censored at their lengths
    n, h = [0, 4, 6, 9, 12, 0, 20, 20], [True] * 5 + [False] * 3
    want = _scipy_gamma_mean([0.5, 4, 6, 9, 12], [20, 20])
    assert censored_mean_T(n, h) == pytest.approx(want, rel=1e-12)
    assert want == pytest.approx(14.842, abs=1e-3) and censored_mean_T(n, h, "ratio") == 14.2
    # hits and misses given in any order, as lists of ints or arrays of floats
    order = [7, 0, 1, 2, 6, 3, 5, 4]
    assert censored_mean_T(np.array(n, float)[order], np.array(h)[order]) == \
        pytest.approx(want, rel=1e-12)


def test_censored_mean_T_falls_back_to_the_ratio():
    from relbudget.train.controller import MIN_HITS, censored_mean_T

    assert MIN_HITS == 5
    # 4 hits (one below MIN_HITS): the ratio (4 + 6 + 9 + 12 + 20) / 4, not the fit
    assert censored_mean_T([4, 6, 9, 12, 20], [True] * 4 + [False]) == 12.75
    # exactly 5 hits: the fit
    five = [4, 6, 9, 12, 13], [True] * 5 + [False]
    assert censored_mean_T(five[0] + [20], five[1]) == pytest.approx(
        _scipy_gamma_mean([4, 6, 9, 12, 13], [20]), rel=1e-12)
    # every completion a hit of the same length: no spread to fit, the ratio (5)
    assert censored_mean_T([5] * 6, [True] * 6) == 5.0
    # the same lengths with one miss, or one hit longer: the fit
    assert censored_mean_T([5] * 6 + [9], [True] * 6 + [False]) == pytest.approx(
        _scipy_gamma_mean([5] * 6, [9]), rel=1e-12)
    assert censored_mean_T([5] * 5 + [6], [True] * 6) == pytest.approx(
        _scipy_gamma_mean([5] * 5 + [6], []), rel=1e-12)
    assert censored_mean_T([5] * 5 + [6], [True] * 6, "ratio") == 31 / 6
    # hits given as 0/1 flags are read as booleans, not as indices
    assert censored_mean_T([4, 6, 9, 12, 13, 20], [1, 1, 1, 1, 1, 0]) == pytest.approx(
        _scipy_gamma_mean([4, 6, 9, 12, 13], [20]), rel=1e-12)
    # a miss after 1 token is censored at 1 (only a miss at 0 says nothing)
    one = censored_mean_T([4, 6, 9, 12, 13, 1, 20], [True] * 5 + [False] * 2)
    assert one == pytest.approx(_scipy_gamma_mean([4, 6, 9, 12, 13], [1, 20]), rel=1e-12)
    assert one != pytest.approx(_scipy_gamma_mean([4, 6, 9, 12, 13], [20]), rel=1e-6)
    # a fitted mean below one token is kept (hits at 0, 0, 0, 0, 1: the ratio would say 0.2)
    assert censored_mean_T([0, 0, 0, 0, 1], [True] * 5) == pytest.approx(
        _scipy_gamma_mean([0.5] * 4 + [1], []), rel=1e-12)
    assert censored_mean_T([0, 0, 0, 0, 1], [True] * 5) > 0.5


def test_censored_mean_T_refusals_and_a_failed_fit(caplog):
    import logging

    from relbudget.train.controller import censored_mean_T

    with pytest.raises(ValueError) as err:
        censored_mean_T([4, 6, 9, 12, 13], [True] * 5, "mle")
    assert str(err.value) == "method must be 'gamma' or 'ratio', got 'mle'"
    with caplog.at_level(logging.WARNING, logger="relbudget.train.controller"):
        got = censored_mean_T([math.inf, 4, 6, 9, 12], [True] * 5)
    assert got == math.inf  # the ratio, which an infinite length makes infinite
    assert [r.getMessage() for r in caplog.records] == [
        "censored Gamma fit failed (`uncensored` must contain only finite values.); using the "
        "ratio estimator"]


# ---------------------------------------------------------------- the controller's own rules


@pytest.mark.parametrize("kw, message", [
    ({"target_xi": 0.0}, "target_xi must be a finite number > 0 or None, got 0.0"),
    ({"target_xi": -1.0}, "target_xi must be a finite number > 0 or None, got -1.0"),
    ({"target_xi": math.inf}, "target_xi must be a finite number > 0 or None, got inf"),
    ({"target_xi": math.nan}, "target_xi must be a finite number > 0 or None, got nan"),
    ({"every": 0}, "need every >= 1 and 1 <= h_min <= h_max, got every=0, h_min=1, h_max=None"),
    ({"h_min": 0}, "need every >= 1 and 1 <= h_min <= h_max, got every=1, h_min=0, h_max=None"),
    ({"h_min": 5, "h_max": 4},
     "need every >= 1 and 1 <= h_min <= h_max, got every=1, h_min=5, h_max=4"),
    ({"smoothing": 1.0}, "smoothing must lie in [0, 1), got 1.0"),
    ({"smoothing": -0.01}, "smoothing must lie in [0, 1), got -0.01"),
])
def test_controller_arguments_refused_word_for_word(kw, message):
    with pytest.raises(ValueError) as err:
        XiController(**kw)
    assert str(err.value) == message


def test_controller_defaults_and_the_edges_it_accepts():
    c = XiController()
    assert (c.target_xi, c.every, c.h_min, c.h_max, c.smoothing, c.method) == (
        None, 1, 1, None, 0.5, "gamma")
    assert (c.trainer, c.H, c.on_change, c.history) == (None, None, None, [])
    assert math.isnan(c.E_T_est)
    # a reward counts as correct when it is a number above 0
    assert [c.is_correct(r) for r in (None, 0.0, -1.0, 1e-9, 1.0)] == [
        False, False, False, True, True]
    edge = XiController(target_xi=1e-9, every=1, h_min=1, h_max=1, smoothing=0.0)
    assert (edge.h_min, edge.h_max, edge.smoothing) == (1, 1, 0.0)
    assert type(XiController(every=2.0).every) is int


def test_record_and_step_row_fields():
    c = XiController(method="ratio")  # target_xi None: measure only, never move H
    c.H = 30
    c.record([3, 0], [1, 1])  # ints and 0/1 flags are read as floats and booleans
    c.record(np.array([10]), np.array([0]))
    row = c.step_row(4)
    # the step's 3 completions: 2 hits in 13 tokens (renewal E[T] 6.5), xi_t 30 / 6.5
    assert row == {"step": 4, "H": 30, "E_T": 6.5, "xi_t": pytest.approx(30 / 6.5),
                   "E_T_est": 6.5, "H_next": 30, "hit_rate": pytest.approx(2 / 3),
                   "max_length": 10, "n_completions": 3}
    assert type(row["max_length"]) is int and type(row["hit_rate"]) is float
    assert c.history == [row] and c.H == 30
    c.record([0, 0], [True, True])  # hits at token 0: E[T] = 0, so xi_t is not a number
    row = c.step_row(5)
    assert row["E_T"] == 0.0 and math.isnan(row["xi_t"])
    c.record([0, 1], [True, True])  # E[T] 0.5 tokens: xi_t is H / 0.5
    assert c.step_row(5)["xi_t"] == 60.0
    c.H = None  # no cap known yet (not attached): no xi_t
    c.record([4], [True])
    assert math.isnan(c.step_row(6)["xi_t"])


def test_update_uses_the_controllers_estimator():
    # five hits and a miss at 20: the censored fit and the ratio (64 / 5) differ (without a miss
    # the Gamma MLE's mean is the sample mean, the ratio itself)
    n, h = [4, 6, 9, 12, 13, 20], [True] * 5 + [False]
    ratio = XiController(target_xi=1.0, smoothing=0.0, method="ratio")
    ratio.record(n, h)
    assert ratio.step_row(1)["E_T_est"] == 64 / 5
    gamma = XiController(target_xi=1.0, smoothing=0.0, method="gamma")
    gamma.record(n, h)
    assert gamma.step_row(1)["E_T_est"] == pytest.approx(_scipy_gamma_mean(n[:5], [20]),
                                                         rel=1e-12)
    assert gamma.E_T_est != pytest.approx(64 / 5, rel=1e-3)


def test_update_lifts_H_to_one_token_and_leaves_h_max_open():
    c = XiController(target_xi=0.01, h_min=1, smoothing=0.0, method="ratio")
    c.resume(50)
    c.record([10], [True])  # 0.01 x 10 = 0.1 token: H = 1, not 0
    assert c.step_row(1)["H_next"] == 1
    c.record([10_000], [True])  # no h_max: 0.01 x 10000 = 100, unclamped
    assert c.step_row(2)["H_next"] == 100
    up = XiController(target_xi=3.0, h_min=1, smoothing=0.0, method="ratio")
    up.resume(50)
    up.record([1000], [True])
    assert up.step_row(1)["H_next"] == 3000


def test_set_H_calls_on_change_and_works_unattached():
    seen = []
    c = XiController(on_change=seen.append)
    c.set_H(12.0)
    assert c.H == 12 and type(c.H) is int and seen == [12]
    XiController().set_H(7)  # no trainer, no callback: only the number changes


def test_watch_wraps_a_trl_reward_function():
    def correct(prompts=None, completions=None, completion_ids=None, answer=None, **kw):
        # every argument TRL passes reaches the wrapped function
        assert prompts == ["p", "q"][:len(completions)] and completion_ids is not None
        return [1.0 if c.endswith(a) else 0.0 for c, a in zip(completions, answer)]

    c = XiController(is_correct=lambda r: r >= 1.0)
    watched = c.watch(correct)
    assert watched.__name__ == "correct"  # TRL names the reward's metrics after it
    got = watched(prompts=["p", "q"], completions=["A:3", "A:5"], completion_ids=[[1, 2, 3], [4]],
                  answer=["3", "7"])
    assert got == [1.0, 0.0]  # the rewards, unchanged
    (lengths, hits), = c._step
    assert lengths.tolist() == [3.0, 1.0] and hits.tolist() == [True, False]
    c.watch(lambda completions, completion_ids=None, **kw: [0.0])(
        prompts=["p"], completions=["A:3"], completion_ids=None, answer=["3"])
    assert len(c._step) == 1  # no token ids: nothing to record
    anonymous = c.watch(lambda **kw: [0.0])
    assert anonymous.__name__ == "<lambda>"

    class Scorer:  # a callable without a __name__
        def __call__(self, **kw):
            return [0.0]

    assert c.watch(Scorer()).__name__ == "reward"


# ---------------------------------------------------------------- on a real GRPOTrainer


def _trainer(reward_funcs=None, H: int = 40):
    """A real TRL GRPOTrainer around an untrained one-layer policy (nothing is generated)."""
    import tempfile

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from relbudget.measure.models import char_tokenizer, tiny_llama

    def correct(completions, answer, **kw):
        return [1.0 if c.endswith(a) else 0.0 for c, a in zip(completions, answer)]

    tok = char_tokenizer()
    model = tiny_llama(tok, hidden=16, layers=1, heads=2, intermediate=32, max_position=64)
    data = Dataset.from_dict({"prompt": ["1+2=", "3+4="], "answer": ["3", "7"]})
    return GRPOTrainer(
        model=model, processing_class=tok, train_dataset=data,
        reward_funcs=reward_funcs or correct,
        args=GRPOConfig(output_dir=tempfile.mkdtemp(), max_completion_length=H, num_generations=2,
                        per_device_train_batch_size=2, max_steps=1, use_cpu=True, bf16=False,
                        report_to="none", save_strategy="no", disable_tqdm=True))


def _caps(t) -> tuple:
    return (t.max_completion_length, t.generation_config.max_new_tokens,
            t.generation_kwargs["max_new_tokens"], t.args.max_completion_length)


def test_the_cap_is_set_everywhere_trl_reads_it():
    from types import SimpleNamespace

    from relbudget.train.controller import set_max_completion_length

    t = _trainer()
    assert _caps(t) == (40, 40, 40, 40)
    set_max_completion_length(t, 25.0)
    assert _caps(t) == (25, 25, 25, 25) and type(t.max_completion_length) is int
    # TRL's vLLM path keeps its own copy (vllm_generation, built only with use_vllm): a stand-in
    # with that field gets it; generation kwargs without max_new_tokens do not gain one
    t.vllm_generation = SimpleNamespace(max_completion_length=40)
    t.generation_kwargs = {"do_sample": True}
    t.generation_config = None
    set_max_completion_length(t, 17)
    assert t.vllm_generation.max_completion_length == 17 and t.generation_kwargs == {
        "do_sample": True}
    assert t.max_completion_length == t.args.max_completion_length == 17
    t.vllm_generation = SimpleNamespace()  # no such field: left alone
    set_max_completion_length(t, 9)
    assert not hasattr(t.vllm_generation, "max_completion_length") and t.max_completion_length == 9
    # a trainer without a generation config or generation kwargs (other TRL versions)
    del t.generation_config, t.generation_kwargs
    set_max_completion_length(t, 8)
    assert t.max_completion_length == t.args.max_completion_length == 8


def test_attach_reads_or_sets_the_cap():
    t = _trainer(H=40)
    c = XiController()
    assert c.attach(t) is c and c.trainer is t and c.H == 40 and type(c.H) is int
    resumed = XiController()
    resumed.resume(30)  # a checkpoint's H wins over the trainer's
    resumed.attach(t)
    assert resumed.H == 30 and _caps(t) == (30, 30, 30, 30)


def test_on_step_end_puts_the_step_into_trls_log():
    from transformers import TrainerControl, TrainerState

    t = _trainer(H=40)
    c = XiController(target_xi=1.0, every=2, smoothing=0.0, method="ratio").attach(t)
    control = TrainerControl()
    alone = XiController()  # a callback that was never attached: its row, no metrics store
    alone.record([3], [True])
    assert alone.on_step_end(t.args, TrainerState(global_step=1), control) is control
    assert alone.history[0]["E_T"] == 3.0
    assert c.on_step_end(t.args, TrainerState(global_step=1), control) is control  # no row
    assert "relbudget/H" not in t._metrics["train"]
    c.record([10, 20], [True, False])
    c.on_step_end(t.args, TrainerState(global_step=1), control)  # no update at step 1 of 2
    train = t._metrics["train"]
    assert (train["relbudget/H"], train["relbudget/E_T"], train["relbudget/xi_t"]) == (
        [40.0], [30.0], [pytest.approx(40 / 30)])
    assert "relbudget/E_T_est" not in train  # NaN before the first update: not logged
    c.record([8], [True])
    c.on_step_end(t.args, TrainerState(global_step=2), control)
    # the window of both steps: 38 tokens / 2 hits = 19 -> H 19, the cap set on the trainer
    assert train["relbudget/E_T_est"] == [19.0] and train["relbudget/H"] == [40.0, 40.0]
    assert c.H == 19 and _caps(t) == (19, 19, 19, 19)
    c.record([5], [False])  # no hit: E_T and xi_t are not numbers, so not logged
    c.on_step_end(t.args, TrainerState(global_step=3), control)
    assert train["relbudget/E_T"] == [30.0, 8.0] and train["relbudget/H"] == [40.0, 40.0, 19.0]
    t._metrics = {}  # a trainer without TRL's metric store: the row is still kept
    c.record([5], [True])
    c.on_step_end(t.args, TrainerState(global_step=4), control)
    assert [r["step"] for r in c.history] == [1, 2, 3, 4]


def test_xi_controller_is_the_two_line_form():
    from relbudget.train.controller import xi_controller

    def first(completions, **kw):
        return [0.0] * len(completions)

    def second(completions, **kw):
        return [1.0] * len(completions)

    t = _trainer(reward_funcs=[first, second], H=32)
    c = xi_controller(t, reward_index=1, target_xi=2.0, every=3, h_max=64)
    assert (c.target_xi, c.every, c.h_max, c.trainer, c.H) == (2.0, 3, 64, t, 32)
    assert t.reward_funcs[0] is first and t.reward_funcs[1].__name__ == "second"
    assert c in t.callback_handler.callbacks
    t.reward_funcs[1](completions=["a", "b"], completion_ids=[[1], [2, 3]])
    assert [b[0].tolist() for b in c._step] == [[1.0, 2.0]]  # the wrapped one records
    d = xi_controller(_trainer(H=24))  # reward 0 by default
    assert d.H == 24 and d.trainer.reward_funcs[0].__name__ == "correct"
