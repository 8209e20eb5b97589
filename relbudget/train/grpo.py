"""TRL wiring for budgeted GRPO: config, reward, per-step history, token-budget stop, resume.

The theory's quantities come from each step's own rollouts, so the reward function that scores
them is also where they are measured (`BudgetReward.pending`), and a callback turns them into one
history row per optimizer step, logs it to MLflow, and stops training once the regime has spent
its share of generated completion tokens (compute-matched: every regime stops at the same
number). TRL's own `num_tokens` counts prompt tokens too, so completion tokens are counted here.

Text after the first correct answer (`train.after_answer`):
- `keep`: TRL generates as usual up to EOS or H; the text after the answer is generated, counted
  and trained on. With the `within` reward it is never penalised, so a policy may learn to keep
  writing after the answer; `tokens_after_correct` in the history measures that.
- `stop`: generation of a completion ends at the token that confirms its first correct answer
  (the same early exit the rollout table uses, `relbudget.measure.sampling.hf`), through TRL's
  `rollout_func`. No token is spent or trained on after the answer. HF generation only: vLLM has
  no per-row verifier hook, so `use_vllm` is ignored in this mode (with a warning).

The horizon (`train.budget`):
- `fixed`: H of the regime for the whole run.
- `controller`: `relbudget.train.controller.XiController`, fed by BudgetReward (`observer`), sets
  H_t = target_xi * E_t[T] every `controller.every` steps where TRL reads the cap (and the
  early-exit rollout reads `trainer.max_completion_length`); history columns `E_T_est`, `H_next`.
- `per_prompt`: the prompts carry `H_x` (relbudget.train.prompt_budgets); every request is generated
  through the rollout_func with its own cap (HF only), and scored at it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import PrinterCallback, TrainerCallback

from relbudget.core.io import switch_work_dir
from relbudget.core.params import TrainParams
from relbudget.measure.estimators import budget_value, renewal_E_T
from relbudget.measure.sampling.common import Generation, Request, score

log = logging.getLogger(__name__)

HISTORY_FILE = "relbudget_history.json"  # beside each Trainer checkpoint, so history survives resume
FINGERPRINT_FILE = "relbudget_fingerprint.txt"
NOT_TRAJECTORY = {"stop", "token_budget", "max_steps", "checkpoint_every", "threads"}
LOG_EVERY = 10  # steps between progress lines in the log (every step goes to MLflow)
HISTORY_COLUMNS = ["step", "generated_tokens", "cum_generated_tokens", "reward_mean", "frac_informative",
                   "frac_reward_zero_std", "clipped_ratio", "mean_length", "tokens_after_correct", "E_T",
                   "xi_t", "H"]


# ---------------------------------------------------------------- config


def _cuda() -> bool:
    return torch.cuda.is_available()


def _no_checkpointing(config_cls) -> dict:
    """Activation checkpointing off, under whichever name this transformers version uses
    (5.24 renamed gradient_checkpointing to activation_checkpointing; 5.17 knows only the old)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_cls)}
    key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {key: False}


def grpo_config(train: TrainParams, H: int, output_dir: str | Path, max_model_len: int | None = None):
    """GRPOConfig for one regime: completions capped at H, one generation per optimizer step.
    `max_model_len` sizes the colocated vLLM engine (see stages/train.check_length)."""
    from trl import GRPOConfig

    use_vllm = bool(train.use_vllm and _cuda())
    if use_vllm and train.after_answer == "stop":
        log.warning("after_answer=stop generates with HF early exit; use_vllm is ignored")
        use_vllm = False
    if use_vllm and train.budget == "per_prompt":  # one cap per request: the HF rollout_func
        use_vllm = False
    extra = {}
    if use_vllm:
        extra = dict(vllm_mode="colocate", vllm_gpu_memory_utilization=train.vllm_gpu_memory_utilization,
                     vllm_max_model_length=max_model_len)
    return GRPOConfig(
        output_dir=str(output_dir),
        max_completion_length=H,  # the horizon H of the theory
        num_generations=train.num_generations,
        # One batch of prompts_per_step groups is generated and used for exactly one optimizer step,
        # so a step's rollouts are on-policy and its history row describes the policy that made them.
        per_device_train_batch_size=train.prompts_per_step * train.num_generations,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        learning_rate=train.lr,  # ~1e-4 for a sub-million-parameter model; TRL's 1e-6 learns nothing
        # A constant schedule: a decaying one is tied to max_steps, which the token-budget stop
        # never reaches, so every regime would see a different schedule.
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=train.beta,
        temperature=train.temperature,
        top_k=0,  # pure sampling from the policy, as in the measurement of T
        top_p=1.0,
        max_grad_norm=train.max_grad_norm,
        max_steps=train.max_steps,  # the stop in 'steps' mode, a safety cap in 'tokens' mode
        # Measured to work on CPU with trl 1.16: fp32, no activation checkpointing (TRL defaults
        # to both bf16 and checkpointing, which only slow down and perturb a tiny model).
        use_cpu=not _cuda(),
        bf16=False,
        **_no_checkpointing(GRPOConfig),
        report_to="none",  # MLflow is logged by HistoryCallback, into the stage's own run
        logging_steps=1,
        save_strategy="steps",
        save_steps=train.checkpoint_every,
        save_total_limit=2,  # the newest may be cut short by a kill; the one before still resumes
        seed=train.seed,
        data_seed=train.seed,
        disable_tqdm=True,  # HistoryCallback logs a short progress line instead
        use_vllm=use_vllm,
        **extra,
    )


# ---------------------------------------------------------------- reward and per-step statistics


def score_completion(tokenizer, ids: list[int], gold: str, fmt: str, H: int,
                     stop_reason: str | None = None) -> dict:
    """n_tokens, first_correct_token, final_correct, stop_reason of one completion.

    Scored by the same function as the rollout table (`sampling.common.score`), so T means the same
    thing in measurement and in training. `stop_reason` 'first_correct' marks an early exit.
    """
    eos = tokenizer.eos_token_id
    ended = stop_reason or ("eos" if ids and ids[-1] == eos else "length")
    gen = Generation(Request("", "", str(gold), str(fmt)), 0, list(ids), ended, 0)
    return score(tokenizer, gen, H, policy="train", keep_text=False)


def _miss(ids: list[int], H: int) -> dict:
    """The row of a completion the verifier could not score: counted, never rewarded."""
    return {"n_tokens": len(ids), "first_correct_token": None, "final_correct": False,
            "stop_reason": "length" if len(ids) >= H else "eos"}


def reward_of(row: dict, mode: str, H: int | None = None) -> float:
    """within: 1 if a correct answer appears in the completion (capped at H, so within H);
    final: 1 if the last complete answer is correct (also in a completion cut at H; the table-level
    `estimators.final_within` is stricter and scores a cut completion 0); budget: (H - T + 1) / H
    if T <= H else 0, with T the completion's first_correct_token (this length-aware form is taken
    from a summary of the paper, Wachi et al. 2026, arXiv 2602.01523, and was not checked against
    the PDF). H defaults to the row's max_tokens (the horizon the completion was scored at).
    (`after_answer` acts at generation time, not here.)"""
    fct = row["first_correct_token"]
    if mode == "within":
        return 1.0 if fct is not None else 0.0
    if mode == "budget":
        if fct is None:
            return 0.0
        return float(budget_value(fct, int(H if H is not None else row["max_tokens"])))
    return 1.0 if row["final_correct"] else 0.0


def step_stats(rows: list[dict], rewards: list[float], H: int, G: int) -> dict:
    """History statistics of one step's rollouts (groups = G consecutive completions)."""
    n = np.array([r["n_tokens"] for r in rows], dtype=float)
    fct = np.array([np.nan if r["first_correct_token"] is None else r["first_correct_token"]
                    for r in rows], dtype=float)
    hit = ~np.isnan(fct)
    rw = np.asarray(rewards, dtype=float)
    groups = rw.reshape(-1, G)
    informative = float(np.mean(groups.max(axis=1) > groups.min(axis=1)))
    clipped = np.array([r["stop_reason"] == "length" for r in rows])
    # Restart semantics, censored at H: a hit costs its tokens up to the answer, a miss all of its.
    consumed = np.where(hit, fct, n)
    E_T = renewal_E_T(consumed, hit) if hit.any() else math.nan
    return {
        "generated_tokens": int(n.sum()),
        "reward_mean": float(rw.mean()),
        "frac_informative": informative,
        "frac_reward_zero_std": 1.0 - informative,
        "clipped_ratio": float(clipped.mean()),
        "mean_length": float(n.mean()),
        "max_length": int(n.max()),  # a generate call runs as long as its longest completion
        # 0.0 on a step without a hit (the table needs a number; n_hits tells the two apart)
        "tokens_after_correct": float((n[hit] - fct[hit]).mean()) if hit.any() else 0.0,
        "E_T": E_T,
        "xi_t": H / E_T if hit.any() else math.nan,
        "n_hits": int(hit.sum()),
        "hit_rate": float(hit.mean()),
        "final_correct_rate": float(np.mean([bool(r["final_correct"]) for r in rows])),
        # answer candidates per completion (an unscorable completion counts 0)
        "attempts_per_completion": float(np.mean([r.get("n_answers", 0) for r in rows])),
        "first_answer_correct_rate": float(np.mean([bool(r.get("first_answer_correct", False))
                                                    for r in rows])),
    }


class BudgetReward:
    """TRL reward function (one float per completion) that also measures the step's rollouts.

    TRL calls it once per generation batch, which is once per optimizer step here; the stats
    wait in `pending` until HistoryCallback takes them at the step's end. It never raises: a
    completion the verifier fails on gets reward 0 and a warning.
    """

    def __init__(self, tokenizer, H: int, num_generations: int, mode: str = "within"):
        if mode not in ("within", "final", "budget"):
            raise ValueError(f"reward mode must be 'within', 'final' or 'budget', got {mode!r}")
        self.tokenizer, self.H, self.G = tokenizer, int(H), int(num_generations)
        self.mode = mode
        self.__name__ = f"reward_{mode}"  # TRL names its reward metrics after this
        self.pending: dict | None = None
        self.caps: dict[str, int] | None = None  # per_prompt: prompt text -> its own H_x
        self.observer = None  # controller: called with (tokens to the answer or all, hits)

    def __call__(self, prompts, completions, completion_ids, answer, answer_format,
                 stop_reason=None, **kwargs) -> list[float]:
        rows, failed = [], 0
        caps = ([self.caps.get(p, self.H) for p in prompts] if self.caps is not None
                else [self.H] * len(completion_ids))
        for i, ids in enumerate(completion_ids):
            reason = stop_reason[i] if stop_reason is not None else None
            try:
                rows.append(score_completion(self.tokenizer, ids, answer[i], answer_format[i], caps[i],
                                             reason))
            except BaseException as err:  # a verifier bug must not kill a long training run
                if isinstance(err, (KeyboardInterrupt, SystemExit)):
                    raise
                failed += 1
                rows.append(_miss(ids, caps[i]))
                if failed == 1:
                    log.warning("verifier failed on a completion (reward 0): %s: %s",
                                type(err).__name__, err)
        rewards = [reward_of(r, self.mode, h) for r, h in zip(rows, caps)]
        if self.observer is not None:
            hits = [r["first_correct_token"] is not None for r in rows]
            self.observer([r["first_correct_token"] if h else r["n_tokens"] for r, h in zip(rows, hits)],
                          hits)
        try:
            self.pending = step_stats(rows, rewards, self.H, self.G)
            if self.caps is not None:  # per_prompt: xi_t and the H column use the batch's mean H_x
                self.pending["H_mean"] = float(np.mean(caps))
                if self.pending["n_hits"]:
                    self.pending["xi_t"] = self.pending["H_mean"] / self.pending["E_T"]
            self.pending["verifier_failures"] = failed
        except Exception as err:
            log.warning("could not compute step statistics: %s", err)
            self.pending = None
        return rewards

    def take(self) -> dict | None:
        stats, self.pending = self.pending, None
        return stats


# ---------------------------------------------------------------- early exit (after_answer=stop)


def early_exit_rollout(tokenizer, prompts_df: pd.DataFrame, H: int, temperature: float, seed: int,
                       caps: dict[str, int] | None = None, early_exit: bool = True):
    """A TRL rollout_func that stops each completion at its first correct answer.

    TRL hands it only prompt texts, so the gold answer is looked up by prompt text. The cap is
    read from `trainer.max_completion_length` at each call, so a controller that changes it
    (relbudget.train.controller.set_max_completion_length) changes this generation too. `caps` (per_prompt):
    prompt text -> its own cap; rows are generated in groups of equal cap. `early_exit=False`
    generates to EOS or the cap (after_answer keep with per-prompt caps).
    """
    from relbudget.measure.sampling import hf

    gold = _gold_by_prompt(prompts_df)

    def rollout(prompts: list[str], trainer) -> dict[str, Any]:
        requests = [Request("", p, *gold[p]) for p in prompts]
        model = trainer.accelerator.unwrap_model(trainer.model)
        H_now = int(getattr(trainer, "max_completion_length", None) or H)
        limits = [caps.get(p, H_now) for p in prompts] if caps is not None else [H_now] * len(prompts)
        # Seeded by step, so a resumed run draws what an uninterrupted one would have.
        base = seed * 1_000_003 + trainer.state.global_step
        gens: list = [None] * len(prompts)
        for cap in sorted(set(limits)):
            idx = [i for i, c in enumerate(limits) if c == cap]
            out = hf.generate(model, tokenizer, [(requests[i], i) for i in idx], cap, temperature,
                              1.0, early_exit, base if caps is None else base + 7919 * cap)
            for i, g in zip(idx, out):
                gens[i] = g
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        return {"prompt_ids": prompt_ids, "completion_ids": [g.token_ids for g in gens],
                "logprobs": None, "stop_reason": [g.ended for g in gens]}

    return rollout


def _gold_by_prompt(prompts_df: pd.DataFrame) -> dict[str, tuple[str, str]]:
    gold: dict[str, tuple[str, str]] = {}
    for p, a, f in zip(prompts_df["prompt"], prompts_df["answer"], prompts_df["answer_format"]):
        if p in gold and gold[p] != (str(a), str(f)):
            raise ValueError(f"prompt {p[:60]!r} appears twice with different answers; "
                             "after_answer=stop looks answers up by prompt text")
        gold[p] = (str(a), str(f))
    return gold


# ---------------------------------------------------------------- history, MLflow, budget stop


def _mlflow_log(metrics: dict[str, Any], step: int) -> None:
    import mlflow

    from relbudget.core.tracking import log_metrics

    if mlflow.active_run() is not None:  # a bare train_policy call (tests, sweeps) logs nothing
        log_metrics(metrics, step=step)


class HistoryCallback(TrainerCallback):
    """One history row per optimizer step; MLflow logging; the token-budget stop; resume state."""

    def __init__(self, reward: BudgetReward, train: TrainParams, H: int,
                 rows: list[dict] | None = None, controller=None):
        self.reward, self.train, self.H = reward, train, int(H)
        self.controller = controller  # relbudget.train.controller.XiController (train.budget = controller)
        self.rows: list[dict] = list(rows or [])
        self.unlogged: dict = {}
        self.t0 = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0 = time.perf_counter()  # wall_seconds counts training, not model loading
        return control

    @property
    def cum_tokens(self) -> int:
        return int(self.rows[-1]["cum_generated_tokens"]) if self.rows else 0

    def annotate(self, step: int, key: str, value: float) -> bool:
        """Add `key` to the history row of `step` (if it is the newest) and to the MLflow metrics
        sent for that step; False when that step has no row yet (another callback's figure, such
        as the accuracy curve's acc_H_eval)."""
        if not self.rows or self.rows[-1]["step"] != step:
            return False
        self.rows[-1][key] = value
        self.unlogged[key] = value
        return True

    def on_step_end(self, args, state, control, **kwargs):
        stats = self.reward.take()
        if stats is None:
            log.warning("step %d: no rollout statistics were recorded", state.global_step)
            return control
        row = {"step": int(state.global_step), **stats,
               "cum_generated_tokens": self.cum_tokens + stats["generated_tokens"], "H": self.H}
        if "H_mean" in stats:  # per_prompt: the H column is the batch's mean H_x, rounded
            row["H"] = int(round(stats["H_mean"]))
        if self.controller is not None:  # after the row took the H it ran at; may change H
            c = self.controller.step_row(row["step"]) or {}
            row["E_T_est"], row["H_next"] = c.get("E_T_est", math.nan), int(c.get("H_next", self.H))
        self.rows.append(row)
        # sent with TRL's metrics of the same step in on_log: one MLflow call per step (~30 ms each).
        # The wall clock (of this process) goes to MLflow only: the history is a tracked output
        # and holds no timings, so an unchanged rerun writes the same bytes.
        self.unlogged = {**{k: v for k, v in row.items() if k != "step"},
                         "wall_seconds": time.perf_counter() - self.t0}
        if row["step"] % LOG_EVERY == 0:
            log.info("step %d: %d tokens, reward %.3f, informative %.2f, length %.1f, xi_t %.2f",
                     row["step"], row["cum_generated_tokens"], row["reward_mean"],
                     row["frac_informative"], row["mean_length"], row["xi_t"])
        if self.train.stop == "tokens" and row["cum_generated_tokens"] >= self.train.token_budget:
            log.info("token budget reached: %d >= %d generated tokens at step %d",
                     row["cum_generated_tokens"], self.train.token_budget, row["step"])
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        # TRL's own metrics (loss, entropy, clip ratios, ...), under trl/ so they never clash
        metrics = {f"trl/{k}": v for k, v in (logs or {}).items()}
        metrics.update(self.unlogged)
        self.unlogged = {}
        _mlflow_log(metrics, step=int(state.global_step))
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.unlogged:
            _mlflow_log(self.unlogged, step=int(state.global_step))
            self.unlogged = {}
        return control

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            (folder / HISTORY_FILE).write_text(json.dumps(self.rows, allow_nan=True))
        return control


def history_frame(rows: list[dict]) -> pd.DataFrame:
    """The HISTORY table (extra columns after the schema's, in a fixed order)."""
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame({c: pd.Series(dtype=float) for c in HISTORY_COLUMNS})
    for c in ("step", "generated_tokens", "cum_generated_tokens", "H"):
        df[c] = df[c].astype("int64")
    for c in ("reward_mean", "frac_informative", "frac_reward_zero_std", "clipped_ratio",
              "mean_length", "tokens_after_correct", "E_T", "xi_t"):
        df[c] = df[c].astype(float)
    # no timings (a checkpoint from an older version may still carry wall_seconds)
    extra = [c for c in df.columns if c not in HISTORY_COLUMNS and c != "wall_seconds"]
    return df[HISTORY_COLUMNS + extra]


# ---------------------------------------------------------------- resume


def fingerprint(model, prompts_df: pd.DataFrame, train: TrainParams, H: int) -> str:
    """Identifies a training run: params, H, prompts and the starting weights."""
    h = hashlib.sha256()
    # Fields that do not change the trajectory stay out, so a run killed before its budget can
    # resume with a larger budget or a new checkpoint interval.
    knobs = train.model_dump(mode="json", exclude=NOT_TRAJECTORY)
    h.update(json.dumps([knobs, int(H)], sort_keys=True).encode())
    cols = ["prompt", "answer", "answer_format"] + (["H_x"] if "H_x" in prompts_df else [])
    h.update(pd.util.hash_pandas_object(prompts_df[cols], index=False).to_numpy().tobytes())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def resumable_checkpoint(output_dir: Path, fp: str) -> Path | None:
    """The newest complete checkpoint of the same run in output_dir; checkpoints of another
    configuration are kept aside in {output_dir}.kept/<fingerprint> (relbudget.core.io.switch_work_dir)."""
    switch_work_dir(output_dir, FINGERPRINT_FILE, fp)
    ckpts = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]),
                   reverse=True)
    for c in ckpts:  # a kill between Trainer's save and ours leaves a checkpoint without history
        if (c / HISTORY_FILE).exists() and (c / "trainer_state.json").exists():
            return c
    return None


def load_history(checkpoint: Path) -> list[dict]:
    step = int(checkpoint.name.split("-")[-1])
    rows = json.loads((checkpoint / HISTORY_FILE).read_text())
    return [r for r in rows if r["step"] <= step]


def _finished(rows: list[dict], train: TrainParams) -> bool:
    if not rows:
        return False
    if train.stop == "tokens":
        return rows[-1]["cum_generated_tokens"] >= train.token_budget
    return rows[-1]["step"] >= train.max_steps


# ---------------------------------------------------------------- training


def train_dataset(prompts_df: pd.DataFrame):
    """HF Dataset of the prompts as the policy is given them (plain strings, so TRL applies no
    chat template of its own) with the columns the reward reads."""
    from datasets import Dataset

    cols = prompts_df[["prompt", "answer", "answer_format"]].astype(str).reset_index(drop=True)
    return Dataset.from_pandas(cols, preserve_index=False)


def train_policy(model, tokenizer, prompts_df: pd.DataFrame, train: TrainParams, H: int,
                 output_dir: str | Path, max_model_len: int | None = None,
                 extra_callback=None) -> tuple[Any, pd.DataFrame]:
    """GRPO at horizon H until the token budget (or max_steps); returns (model, history).

    `prompts_df["prompt"]` is what the policy is given (`models.render_prompts`: chat template
    applied for instruct models), the same text the rollout table was sampled from.

    output_dir holds the Trainer's checkpoints; a rerun of the same configuration resumes from
    the newest one, history included. `extra_callback(history_callback)` makes one more
    TrainerCallback that runs after the history's (e.g. relbudget.train.training.EvalCurve).
    """
    from trl import GRPOTrainer

    torch.set_num_threads(train.threads)  # one thread: 2-4x faster than two for tiny models
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is documented above
    output_dir = Path(output_dir)
    checkpoint = resumable_checkpoint(output_dir, fingerprint(model, prompts_df, train, H))
    rows = load_history(checkpoint) if checkpoint is not None else []
    if checkpoint is not None:
        log.info("resuming from %s (step %d, %d tokens)", checkpoint, rows[-1]["step"] if rows else 0,
                 rows[-1]["cum_generated_tokens"] if rows else 0)
        for r in rows:  # the new MLflow run gets the whole curve
            _mlflow_log({k: v for k, v in r.items() if k != "step"}, step=r["step"])

    if checkpoint is not None and _finished(rows, train):
        # Killed after the last step was saved: training one more step would overshoot the budget.
        log.info("the checkpoint already reached the stop; loading its weights")
        model = type(model).from_pretrained(checkpoint).eval()
        return model, history_frame(rows)

    reward = BudgetReward(tokenizer, H, train.num_generations, train.reward)
    caps = _per_prompt_caps(prompts_df, train)
    if caps is not None:
        reward.caps = caps
    controller = _controller(train, reward, rows, H)
    H0 = controller.H if controller is not None else H
    history = HistoryCallback(reward, train, H0, rows, controller)
    if controller is not None:
        reward.H = H0
        controller.on_change = lambda h: (setattr(reward, "H", h), setattr(history, "H", h))
    rollout = (early_exit_rollout(tokenizer, prompts_df, H, train.temperature, train.seed, caps,
                                  early_exit=train.after_answer == "stop")
               if train.after_answer == "stop" or caps is not None else None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        args = grpo_config(train, H, output_dir, max_model_len)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args,
                              train_dataset=train_dataset(prompts_df), processing_class=tokenizer,
                              callbacks=[history] + ([extra_callback(history)] if extra_callback
                                                     else []),
                              rollout_func=rollout)
        trainer.remove_callback(PrinterCallback)  # it prints every step's full log dict
        if controller is not None:
            controller.attach(trainer)  # sets the cap where TRL reads it (resumed: the saved H)
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    if train.stop == "tokens" and history.cum_tokens < train.token_budget:
        log.warning("max_steps=%d reached after %d of %d budget tokens: this regime is NOT "
                    "compute-matched; raise train.max_steps", train.max_steps, history.cum_tokens,
                    train.token_budget)
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.eval()
    return model, history_frame(history.rows)


def _per_prompt_caps(prompts_df: pd.DataFrame, train: TrainParams) -> dict[str, int] | None:
    """train.budget = per_prompt: prompt text -> H_x (column H_x, from prompt_budgets)."""
    if train.budget != "per_prompt":
        return None
    if "H_x" not in prompts_df:
        raise ValueError("train.budget is per_prompt but the prompts have no H_x column "
                         "(relbudget.train.prompt_budgets.per_prompt_caps adds it)")
    if train.use_vllm:
        log.warning("per_prompt budgets generate with HF (one cap per row); use_vllm is ignored")
    return {str(p): int(h) for p, h in zip(prompts_df["prompt"], prompts_df["H_x"])}


def _controller(train: TrainParams, reward: BudgetReward, rows: list[dict], H: int):
    """train.budget = controller: an XiController fed by the reward; resumed at the saved H."""
    if train.budget != "controller":
        return None
    from relbudget.train.controller import XiController

    c = train.controller
    ctrl = XiController(target_xi=c.target_xi, every=c.every, h_min=c.h_min, h_max=c.h_max,
                        smoothing=c.smoothing, method=c.estimator)
    ctrl.H = int(min(max(H, c.h_min), c.h_max))
    if rows and "H_next" in rows[-1]:
        ctrl.resume(int(rows[-1]["H_next"]))
    reward.observer = ctrl.record
    return ctrl
