"""train@REGIME: budgeted GRPO from the base policy at that regime's horizon H (from budgets.yaml).

Writes the trained policy to {paths.models}/REGIME/ and the per-step history to
{paths.train}/REGIME/history.parquet. Trainer checkpoints live in {paths.train}/.REGIME.work,
so an interrupted run resumes where it stopped; the folder is removed on success.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import mlflow

from relbudget.budgets import budget_of, check_token_budget
from relbudget.grpo import preflight, train_policy
from relbudget.io import atomic_dir, work_lock
from relbudget.models import load_saved, render_prompts, save_policy
from relbudget.report import FINAL_STEPS, final_xi_t
from relbudget.schemas import HISTORY, PROMPTS, read_table, write_table
from relbudget.tracking import log_dataset, log_policy

log = logging.getLogger("relbudget.train")
# the regime's H comes from budgets.yaml (a data dep), not from params `regimes`
SECTIONS = ["train", "base_policy.trust_remote_code", "base_policy.chat_template", "paths"]


def budget_entry(xi_dir: str | Path, regime: str) -> dict:
    """The regime's validated entry in budgets.yaml (H, predicted p, P_inf, ...)."""
    return budget_of(xi_dir, regime).model_dump()


def _nan_if_none(v: float | None) -> float:
    return math.nan if v is None else v


def summary(history, seconds: float, H: int, warning: str | None) -> dict:
    """Final metrics of the run (MLflow and the stage's return value)."""
    last = history.tail(FINAL_STEPS)  # the end of training, smoothed over a few steps
    steps = int(history["step"].max()) if len(history) else 0
    tokens = int(history["cum_generated_tokens"].iloc[-1]) if len(history) else 0
    out = {
        "H": H,
        "steps": steps,
        "generated_tokens": tokens,
        "train_seconds": seconds,
        "seconds_per_step": seconds / max(steps, 1),
        "ms_per_generated_token": 1000 * seconds / max(tokens, 1),
        "final_reward_mean": float(last["reward_mean"].mean()) if len(last) else math.nan,
        "final_frac_informative": float(last["frac_informative"].mean()) if len(last) else math.nan,
        "final_mean_length": float(last["mean_length"].mean()) if len(last) else math.nan,
        "final_tokens_after_correct": float(last["tokens_after_correct"].mean()) if len(last) else math.nan,
        "final_xi_t": _nan_if_none(final_xi_t(history)),  # the report's definition
        "first_E_T": float(history["E_T"].iloc[0]) if len(history) else math.nan,
        "final_E_T": float(last["E_T"].mean()) if len(last) else math.nan,
        "preflight_warning": warning is not None,
    }
    return out


def check_length(model, tokenizer, prompts, H: int, train) -> int:
    """The context a rollout needs (longest prompt + H), refused before training when the model or
    TRL's colocated vLLM engine (`train.vllm_max_model_len`) cannot hold it. Returns the engine's
    context to use."""
    longest = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts["prompt"])
    need = longest + H
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and need > limit:
        raise ValueError(f"H = {H} plus the longest prompt ({longest} tokens) exceeds the model's "
                         f"max_position_embeddings ({limit}); lower the regime's xi or the prompts")
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


def adaptive_budgets(params, prompts, H: int):
    """train.prompt_filter and train.budget = per_prompt, from the base rollouts:
    (prompts to train on, the H to configure TRL with, their counts and the H_x quantiles).
    per_prompt: H becomes the largest H_x (TRL's own cap; each request has its own)."""
    from relbudget.prompt_budgets import filter_prompts, per_prompt_caps
    from relbudget.schemas import ROLLOUTS

    t, out = params.train, {}
    if t.prompt_filter is None and t.budget != "per_prompt":
        return prompts, H, out
    rollouts = read_table(params.paths.rollouts, ROLLOUTS, schema_columns_only=True)
    if t.prompt_filter is not None:
        prompts, counts = filter_prompts(rollouts, prompts, t.prompt_filter, H)
        out.update({f"filter_{k}" if not k.startswith("filter_") else k: v
                    for k, v in counts.items()})
    if t.budget == "per_prompt":
        prompts, hx = per_prompt_caps(rollouts, prompts, t.per_prompt)
        H = int(prompts["H_x"].max())
        out.update({f"per_prompt_{k}": v for k, v in hx.items()})
    if mlflow.active_run() is not None:
        mlflow.log_metrics({f"budget/{k}": float(v) for k, v in out.items()})
    return prompts, H, out


def run(params, regime: str) -> dict:
    t, paths = params.train, params.paths
    entry = budget_entry(paths.xi, regime)
    H = int(entry["H"])
    mlflow.set_tags({"H": str(H), "target_xi": str(entry.get("target_xi")),
                     "reward": t.reward, "after_answer": t.after_answer, "stop": t.stop,
                     "budget": t.budget})
    check_token_budget(t, H, f"train@{regime}")  # an unreachable budget: refused before compute
    warning = preflight(entry, t, regime)  # before any compute; raises if asked to refuse

    model, tok = load_saved(paths.base_model, params.base_policy.trust_remote_code)
    prompts = read_table(paths.prompts("train"), PROMPTS)
    log_dataset(prompts, paths.prompts("train"), "training")
    prompts = render_prompts(prompts, tok, params.base_policy.chat_template)
    prompts, H, budget_stats = adaptive_budgets(params, prompts, H)
    work = Path(paths.train_work(regime))
    log.info("train@%s: H=%d, %d prompts, stop=%s (budget %d tokens, max %d steps)", regime, H,
             len(prompts), t.stop, t.token_budget, t.max_steps)

    H_ctx = max(H, t.controller.h_max) if t.budget == "controller" else H
    max_model_len = check_length(model, tok, prompts, H_ctx, t)
    t0 = time.time()
    with work_lock(work):  # a second train@REGIME is refused: it never shares a live checkpoint
        model, history = train_policy(model, tok, prompts, t, H, work, max_model_len)
    seconds = time.time() - t0

    with atomic_dir(paths.policy(regime)) as tmp:
        save_policy(model, tok, tmp)
    hist_path = paths.history(regime)
    write_table(history, HISTORY, hist_path)
    shutil.rmtree(work, ignore_errors=True)

    stats = {**summary(history, seconds, H, warning), **budget_stats}
    # under summary/ so they never mix with the per-step metrics of the same name
    mlflow.log_metrics({f"summary/{k}": float(v) for k, v in stats.items()
                        if isinstance(v, (int, float)) and math.isfinite(float(v))})
    mlflow.log_artifact(hist_path)
    log_policy(model, tok, Path(paths.policy(regime)))
    log.info("train@%s done: %s", regime, stats)
    return stats


if __name__ == "__main__":
    from stages._cli import main

    main("train", run, SECTIONS, takes_regime=True)
