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
import yaml

from relbudget.grpo import preflight, train_policy
from relbudget.io import atomic_dir
from relbudget.models import load_saved, render_prompts, save_policy
from relbudget.report import FINAL_STEPS, final_xi_t
from relbudget.schemas import HISTORY, PROMPTS, read_table, write_table
from relbudget.tracking import log_dataset, log_policy

log = logging.getLogger("relbudget.train")
SECTIONS = ["train", "base_policy", "regimes", "paths"]


def budget_entry(xi_dir: str | Path, regime: str) -> dict:
    """The regime's entry in budgets.yaml (H, predicted p, P_inf, ...); clear errors if absent."""
    path = Path(xi_dir) / "budgets.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the xi stage first")
    budgets = yaml.safe_load(path.read_text()) or {}
    if regime not in budgets:
        raise KeyError(f"regime {regime!r} is not in {path} (it has: {', '.join(budgets) or 'none'}); "
                       "rerun the xi stage after changing params.yaml regimes")
    entry = budgets[regime]
    if not isinstance(entry, dict) or not isinstance(entry.get("H"), int) or entry["H"] < 1:
        raise ValueError(f"{path}: regime {regime!r} has no valid horizon H: {entry!r}")
    return entry


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


def run(params, regime: str) -> dict:
    t, paths = params.train, params.paths
    entry = budget_entry(paths.xi, regime)
    H = int(entry["H"])
    mlflow.set_tags({"H": str(H), "target_xi": str(entry.get("target_xi")),
                     "reward": t.reward, "after_answer": t.after_answer, "stop": t.stop})
    warning = preflight(entry, t, regime)  # before any compute; raises if asked to refuse

    model, tok = load_saved(paths.base_model, params.base_policy.trust_remote_code)
    prompts = read_table(Path(paths.prepared) / "train.parquet", PROMPTS)
    log_dataset(prompts, Path(paths.prepared) / "train.parquet", "training")
    prompts = render_prompts(prompts, tok, params.base_policy.chat_template)
    work = Path(paths.train) / f".{regime}.work"
    log.info("train@%s: H=%d, %d prompts, stop=%s (budget %d tokens, max %d steps)", regime, H,
             len(prompts), t.stop, t.token_budget, t.max_steps)

    max_model_len = check_length(model, tok, prompts, H, t)
    t0 = time.time()
    model, history = train_policy(model, tok, prompts, t, H, work, max_model_len)
    seconds = time.time() - t0

    with atomic_dir(Path(paths.models) / regime) as tmp:
        save_policy(model, tok, tmp)
    hist_path = Path(paths.train) / regime / "history.parquet"
    write_table(history, HISTORY, hist_path)
    shutil.rmtree(work, ignore_errors=True)

    stats = summary(history, seconds, H, warning)
    # under summary/ so they never mix with the per-step metrics of the same name
    mlflow.log_metrics({f"summary/{k}": float(v) for k, v in stats.items()
                        if isinstance(v, (int, float)) and math.isfinite(float(v))})
    mlflow.log_artifact(str(hist_path))
    log_policy(model, tok, Path(paths.models) / regime)
    log.info("train@%s done: %s", regime, stats)
    return stats


if __name__ == "__main__":
    from stages._cli import main

    main("train", run, SECTIONS, takes_regime=True)
