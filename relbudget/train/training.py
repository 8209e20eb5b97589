"""One training run from the base policy, as the stages need it: checks before compute, the
adaptive budgets, an accuracy curve along training, and the summary of the run.

`train_from_base` is the one training path of a sweep cell (a named regime is the cells at its
xi) and an arm run; `train_and_evaluate` is the whole of a sweep cell or an arm (the trained
policy is evaluated in the same process, then dropped):

1. H: max(1, round(xi * E[T])) from the xi stage's E_T.json (`horizon`);
2. the prompts: `train.prompt_filter` and `train.budget = per_prompt` (`adaptive_budgets`);
3. GRPO until the token budget (`relbudget.train.grpo.train_policy`), evaluating the policy at H_eval
   when the generated tokens pass each of `eval_at` (`EvalCurve`): the tokens-to-target curve;
4. evaluation of the trained policy at H_eval and any further named horizons (a sweep cell's
   multiples of E[T]), with its own H when that is within the pass's cap.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import TrainerCallback

from relbudget.measure.metrics import FINAL_STEPS, final_xi_t

log = logging.getLogger(__name__)


def horizon(E_T_path: str | Path, xi: float) -> tuple[int, float]:
    """(H = max(1, round(xi * E[T])), E[T]) from the xi stage's E[T] of the base policy
    (rounded half up, as the regimes' budgets are)."""
    from relbudget.measure.budgets import read_E_T
    from relbudget.measure.estimators import horizon_for

    E_T = read_E_T(E_T_path)
    return horizon_for(xi, E_T), E_T


def check_length(model, tokenizer, prompts, H: int, train) -> int:
    """The context a rollout needs (longest prompt + H), refused before training when the model or
    TRL's colocated vLLM engine (`train.vllm_max_model_len`) cannot hold it. Returns the engine's
    context to use."""
    from relbudget.measure.models import check_prompt_room, context_of

    check_prompt_room(prompts, tokenizer, H, context_of(model), "train")
    longest = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts["prompt"])
    need = longest + H
    if train.use_vllm and train.vllm_max_model_len is not None and train.vllm_max_model_len < need:
        raise ValueError(f"train.vllm_max_model_len = {train.vllm_max_model_len} cannot hold the "
                         f"longest prompt ({longest} tokens) plus H = {H}; set it to at least {need} "
                         "or leave it unset (null) to size it automatically")
    first = str(prompts["prompt"].iloc[0])
    with_specials = tokenizer(first)["input_ids"]
    if with_specials != tokenizer(first, add_special_tokens=False)["input_ids"]:
        # TRL tokenizes string prompts with the tokenizer's special tokens (e.g. a BOS); the
        # rollout table was sampled without them, so T would describe a slightly other prompt.
        log.warning("this tokenizer adds special tokens to a prompt (%s); TRL will add them, the "
                    "sampler did not", tokenizer.convert_ids_to_tokens(with_specials[:2]))
    return train.vllm_max_model_len or need


def adaptive_budgets(train, rollouts_path: str | Path, prompts: pd.DataFrame, H: int):
    """train.prompt_filter and train.budget = per_prompt, from the base rollouts:
    (prompts to train on, the H to configure TRL with, their counts and the H_x quantiles).
    per_prompt: H becomes the largest H_x (TRL's own cap; each request has its own)."""
    from relbudget.train.prompt_budgets import filter_prompts, per_prompt_caps
    from relbudget.core.schemas import ROLLOUTS, read_table

    out: dict = {}
    if train.prompt_filter is None and train.budget != "per_prompt":
        return prompts, H, out
    rollouts = read_table(rollouts_path, ROLLOUTS, schema_columns_only=True)
    if train.prompt_filter is not None:
        prompts, counts = filter_prompts(rollouts, prompts, train.prompt_filter, H)
        out.update({f"filter_{k}" if not k.startswith("filter_") else k: v
                    for k, v in counts.items()})
    if train.budget == "per_prompt":
        prompts, hx = per_prompt_caps(rollouts, prompts, train.per_prompt)
        H = int(prompts["H_x"].max())
        out.update({f"per_prompt_{k}": v for k, v in hx.items()})
    return prompts, H, out


def context_H(train, H: int) -> int:
    """The longest completion the run may generate (the controller may raise H up to h_max)."""
    return max(H, train.controller.h_max) if train.budget == "controller" else H


def _nan_if_none(v: float | None) -> float:
    return math.nan if v is None else v


def summary(history: pd.DataFrame, seconds: float, H: int) -> dict:
    """Final metrics of the run (MLflow and the stage's return value)."""
    last = history.tail(FINAL_STEPS)  # the end of training, smoothed over a few steps
    steps = int(history["step"].max()) if len(history) else 0
    tokens = int(history["cum_generated_tokens"].iloc[-1]) if len(history) else 0

    def final(col: str) -> float:
        return float(last[col].mean()) if len(last) else math.nan

    return {
        "H": H,
        "steps": steps,
        "generated_tokens": tokens,
        "train_seconds": seconds,
        "seconds_per_step": seconds / max(steps, 1),
        "ms_per_generated_token": 1000 * seconds / max(tokens, 1),
        "final_reward_mean": final("reward_mean"),
        "final_frac_informative": final("frac_informative"),
        "final_mean_length": final("mean_length"),
        "final_tokens_after_correct": final("tokens_after_correct"),
        "final_xi_t": _nan_if_none(final_xi_t(history)),  # the report's definition
        "first_E_T": float(history["E_T"].iloc[0]) if len(history) else math.nan,
        "final_E_T": final("E_T"),
    }


# ---------------------------------------------------------------- the accuracy curve


class EvalCurve(TrainerCallback):
    """Accuracy at H_eval along training, for the tokens-to-target comparison.

    Each time the run's generated tokens pass a point of `at` (below the budget: the last point is
    the final evaluation, made by the stage after training), the policy as it is at that step is
    evaluated (the same sampling as the final evaluation: `evaluate` = callable(model) ->
    accuracy), and the value goes into that step's history row as `acc_H_eval` (so a resumed run
    keeps its curve). The random state is saved and restored around the evaluation: the training
    trajectory is the same with or without the curve.
    """

    def __init__(self, history_cb, evaluate, at: list[int], budget: int):
        self.history, self.evaluate = history_cb, evaluate
        self.at, self.budget = [int(x) for x in at], int(budget)

    def _due(self, row: dict) -> bool:
        done = row["cum_generated_tokens"]
        before = done - row["generated_tokens"]
        passed = [x for x in self.at if before < x <= done]
        if len(passed) > 1:  # one policy state, so one evaluation: said, never silent
            log.warning("eval_at points %s all fall in step %d (%d..%d tokens): one evaluation "
                        "stands for them; space arms.eval_at wider than one step's tokens",
                        passed, row["step"], before, done)
        return done < self.budget and bool(passed)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        rows = self.history.rows
        if not rows or rows[-1]["step"] != state.global_step or not self._due(rows[-1]):
            return control
        state_before = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        was_training = model.training
        model.eval()
        try:
            acc = float(self.evaluate(model))
        finally:
            model.train(was_training)
            torch.set_rng_state(state_before[0])
            np.random.set_state(state_before[1])
            random.setstate(state_before[2])
        self.history.annotate(state.global_step, "acc_H_eval", acc)
        log.info("step %d: accuracy at H_eval %.3f after %d tokens", rows[-1]["step"], acc,
                 rows[-1]["cum_generated_tokens"])
        return control


def curve_evaluator(tok, prompts: pd.DataFrame, e, h_eval: int, attempts: int, policy: str):
    """model -> accuracy within H_eval on the eval prompts, sampled as `evaluate_policy` samples
    (HF generation of the in-memory model, early exit, evaluate.seed)."""
    from relbudget.measure import estimators as est
    from relbudget.measure.sampling import hf_generate_fn, requests_from, sample_table

    requests = requests_from(prompts)

    def evaluate(model) -> float:
        gen = hf_generate_fn(model, tok, h_eval, e.temperature, 1.0, True, e.batch_size)
        table = sample_table(gen, tok, requests, attempts, h_eval, e.seed, policy=policy,
                             chunk_prompts=max(1, len(prompts)), desc=f"curve@{policy}")
        return float(est.hit_within(table, h_eval).mean())

    return evaluate


# ---------------------------------------------------------------- a regime, a cell or an arm


@dataclass
class Trained:
    """A policy trained from the base policy, and what a stage writes and logs about the run."""

    model: Any
    tokenizer: Any
    history: pd.DataFrame
    H: int  # the H TRL ran with (per_prompt: the largest H_x)
    stats: dict  # `summary` of the run and the adaptive budgets' counts


def train_from_base(params, t, H: int, name: str, work: Path, checkpoints: Path | None = None,
                    eval_at: list[int] | None = None, eval_prompts: pd.DataFrame | None = None,
                    eval_attempts: int | None = None,
                    log_inputs: bool = False) -> Trained:
    """GRPO from the base policy with train params `t` at H, the same path for a sweep cell (a
    regime is the cells at its xi) and an arm: the training prompts (rendered, `adaptive_budgets` applied), the
    context check before compute, then `train_policy` while holding `work`'s lock, with the
    trainer's checkpoints in `checkpoints` (default `work`/trainer), so an interrupted run resumes.

    eval_at: the accuracy curve at H_eval along training (`EvalCurve`) on `eval_prompts`, with
    `eval_attempts` samples each. log_inputs: the training
    prompts as an MLflow dataset input and the adaptive budgets' counts as budget/ metrics."""
    from relbudget.core.io import work_lock
    from relbudget.core.schemas import PROMPTS, read_table
    from relbudget.measure.models import load_saved, render_prompts
    from relbudget.train.grpo import train_policy

    paths, e, bp = params.paths, params.evaluate, params.base_policy
    model, tok = load_saved(paths.base_model, bp.trust_remote_code)
    prompts = read_table(paths.prompts("train"), PROMPTS)
    if log_inputs:
        from relbudget.core.tracking import log_dataset

        log_dataset(prompts, paths.prompts("train"), "training")
    prompts = render_prompts(prompts, tok, bp.chat_template)
    prompts, H, budget_stats = adaptive_budgets(t, paths.rollouts, prompts, H)
    if log_inputs and budget_stats:
        import mlflow

        mlflow.log_metrics({f"budget/{k}": float(v) for k, v in budget_stats.items()})
    log.info("%s: H=%d, %d prompts, stop=%s (budget %d tokens, max %d steps)", name, H,
             len(prompts), t.stop, t.token_budget, t.max_steps)
    max_model_len = check_length(model, tok, prompts, context_H(t, H), t)

    curve = None
    if eval_at:
        rendered = render_prompts(eval_prompts, tok, bp.chat_template)
        evaluate = curve_evaluator(tok, rendered, e, e.h_eval, eval_attempts, name)
        curve = lambda hist: EvalCurve(hist, evaluate, eval_at, t.token_budget)  # noqa: E731
    t0 = time.time()
    with work_lock(work):  # a second run on the same work folder is refused: no shared checkpoint
        model, history = train_policy(model, tok, prompts, t, H,
                                      work / "trainer" if checkpoints is None else checkpoints,
                                      max_model_len, extra_callback=curve)
    seconds = time.time() - t0
    stats = {**summary(history, seconds, H), **budget_stats}
    return Trained(model, tok, history, H, stats)


def eval_horizons(h_eval: int, more: dict[str, int] | None, H: int) -> dict[str, int]:
    """The named horizons of a trained policy's evaluation: H_eval, `more` (e.g. multiples of
    E[T]), and its own H when that is within the pass's cap (free there; a larger cap would cost
    every miss)."""
    horizons = {"H_eval": h_eval, **(more or {})}
    return {**horizons, **({"H_own": H} if H <= max(horizons.values()) else {})}


def evaluate_trained(params, trained: Trained, name: str, work: Path, eval_prompts: pd.DataFrame,
                     eval_attempts: int, more: dict[str, int] | None = None
                     ) -> tuple[pd.DataFrame, dict]:
    """The trained policy evaluated at `eval_horizons` the way `evaluate base` evaluates the base
    policy: saved to `work`/policy first, then dropped with the work folder. Returns (eval rollouts,
    eval result)."""
    from relbudget.measure.evaluation import evaluate_policy
    from relbudget.measure.models import save_policy

    e = params.evaluate
    save_policy(trained.model, trained.tokenizer, work / "policy")
    return evaluate_policy(work / "policy", eval_prompts, eval_horizons(e.h_eval, more, trained.H),
                           e, params.base_policy, params.sampling.backend, name, eval_attempts)


def train_and_evaluate(params, t, H: int, name: str, work: Path, eval_attempts: int,
                       eval_at: list[int] | None = None, more: dict[str, int] | None = None
                       ) -> tuple[pd.DataFrame, pd.DataFrame, dict, dict]:
    """GRPO from the base policy with train params `t` at H, then evaluation at H_eval and the
    named horizons `more` (one sampling pass at the largest, whose context is checked first).
    Returns (history, eval rollouts, eval result, run summary); the result holds no timings."""
    from relbudget.core.schemas import PROMPTS, read_table
    from relbudget.measure.evaluation import check_cap

    eval_prompts = read_table(params.paths.prompts("eval"), PROMPTS)  # missing: before compute
    cap = max(eval_horizons(params.evaluate.h_eval, more, H).values())
    check_cap(params.paths.base_model, eval_prompts, cap, params.base_policy)  # before compute
    trained = train_from_base(params, t, H, name, work, eval_at=eval_at,
                              eval_prompts=eval_prompts, eval_attempts=eval_attempts,
                              log_inputs=True)
    table, result = evaluate_trained(params, trained, name, work, eval_prompts, eval_attempts,
                                     more)
    return trained.history, table, result, trained.stats
