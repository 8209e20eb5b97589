"""The xi controller behind the TRL plug-in `relbudget.trl` (import it from there): per-step xi_t
logging and an optional xi controller for a plain `GRPOTrainer`.

Its usage example is in relbudget.trl's docstring.

What it measures. `watch(reward)` wraps one of your reward functions: TRL calls it with the
completions' token ids, and the wrapper records each completion's length and whether it is correct
(`is_correct(reward)`, default reward > 0). T, the tokens to the first correct answer, is read as
the length of a correct completion (exact when generation stops at the answer or at EOS right
after it; an upper bound otherwise) and a wrong completion is right-censored at its length (T >=
its length). Per step: E_T = sum(lengths) / #correct (the renewal ratio) and xi_t = H / E_T.

How it controls. With `target_xi`, every `every` steps it estimates E_t[T] from the completions of
the last `every` steps with a right-censored Gamma maximum-likelihood fit (scipy), sets
H_t = target_xi * E_t[T], smooths it (EMA in log space, weight `smoothing` on the old value),
clamps it to [h_min, h_max] and writes it where TRL reads the cap (`set_max_completion_length`).
Why Gamma and not the ratio: on-policy completions are cut at H_t, and the ratio
sum(min(T, H)) / #(T <= H) is exact only for an exponential T; for a Gamma(K >= 2) T it is biased
high (+8% at xi = 1.75, +25% to +44% at xi = 1, K = 2..4, 256 completions), the censored Gamma
MLE within 2% (tests/test_trl_plugin.py checks < 5%).

Where the cap lives in TRL 1.x (checked against trl 1.16's source):
- transformers generation: `trainer.generation_config.max_new_tokens` and
  `trainer.generation_kwargs` (used by `unwrap_model_for_generation`); also continuous batching.
- vLLM, colocate and server mode: `trainer.vllm_generation.max_completion_length`, read at every
  generate call and sent as SamplingParams `max_tokens` (in server mode with each request), so H_t
  reaches vLLM too. The engine's context (`vllm_max_model_length`, or the server's
  `--max-model-len`) is fixed at start: keep h_max + the longest prompt within it.
- `trainer.max_completion_length` (padding, truncation of tool calls, and the `dr_grpo` loss,
  which divides by it: with that loss type a changing H_t also rescales the loss).

Where it cannot work:
- a `rollout_func` of your own generates with whatever cap it chooses: read
  `trainer.max_completion_length` there (relbudget's own rollout_func does).
- `steps_per_generation > 1` (or num_iterations > 1): TRL generates once for several optimizer
  steps, so a new H_t applies from the next generation, and a "step" row covers the steps that
  share one generation batch.
- TRL's separate async / experimental trainers that generate in another process with their own
  config, and a vLLM server whose `--max-model-len` is below h_max + prompt (vLLM rejects it).
- several processes (multi-GPU): each process measures its own slice of completions; the cap is
  set in each process, the estimate is per process (not gathered).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Callable

import numpy as np
from transformers import TrainerCallback

from relbudget.measure.estimators import renewal_E_T

log = logging.getLogger(__name__)

MIN_HITS = 5  # below this many correct completions in the window, the Gamma fit is not tried


def censored_mean_T(lengths, hits, method: str = "gamma") -> float:
    """E[T] from completions cut at a cap: `lengths` = tokens of each completion (for a correct
    one: its tokens to the first correct answer), `hits` = correct or not (a miss is censored:
    T >= its length). method 'gamma': right-censored Gamma MLE mean K / rate (falls back to the
    ratio below MIN_HITS hits or when the fit fails); 'ratio': sum(lengths) / #hits, the renewal
    estimator (the exponential censored MLE). nan without any hit."""
    n = np.asarray(lengths, dtype=float)
    h = np.asarray(hits, dtype=bool)
    if not h.any():
        return math.nan
    ratio = renewal_E_T(n, h)
    if method == "ratio" or h.sum() < MIN_HITS or (h.all() and np.ptp(n[h]) == 0):
        return ratio
    if method != "gamma":
        raise ValueError(f"method must be 'gamma' or 'ratio', got {method!r}")
    from scipy import stats

    obs, cens = np.maximum(n[h], 0.5), n[~h]
    cens = cens[cens > 0]
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            K, _, scale = stats.gamma.fit(stats.CensoredData(uncensored=obs, right=cens), floc=0)
        mean = float(K * scale)
    except Exception as err:  # a degenerate window must not stop training
        log.warning("censored Gamma fit failed (%s); using the ratio estimator", err)
        return ratio
    return mean if math.isfinite(mean) and mean > 0 else ratio


def set_max_completion_length(trainer, H: int) -> None:
    """Set the generation cap of a TRL GRPOTrainer everywhere TRL 1.x reads it (see module doc)."""
    H = int(H)
    trainer.max_completion_length = H
    gc = getattr(trainer, "generation_config", None)
    if gc is not None:
        gc.max_new_tokens = H
    kw = getattr(trainer, "generation_kwargs", None)
    if isinstance(kw, dict) and "max_new_tokens" in kw:
        kw["max_new_tokens"] = H
    vg = getattr(trainer, "vllm_generation", None)
    if vg is not None and hasattr(vg, "max_completion_length"):
        vg.max_completion_length = H
    try:
        trainer.args.max_completion_length = H  # for anything that reads the config later
    except Exception:  # a frozen config: the trainer's own fields above are what TRL reads
        pass


class XiController(TrainerCallback):
    """Per-step xi_t of a GRPOTrainer's rollouts and, with `target_xi`, a controller of H.

    See the module docstring for the estimator, where the cap is set and where it cannot work.
    `record(lengths, hits)` feeds it directly (relbudget's own reward does); `watch(reward_fn)`
    wraps a TRL reward function to feed it. `on_change(H)` is called after every change of H.
    """

    def __init__(self, target_xi: float | None = None, every: int = 1, h_min: int = 1,
                 h_max: int | None = None, smoothing: float = 0.5,
                 is_correct: Callable[[float], bool] = lambda r: r is not None and r > 0,
                 method: str = "gamma", on_change: Callable[[int], None] | None = None):
        if target_xi is not None and not (math.isfinite(target_xi) and target_xi > 0):
            raise ValueError(f"target_xi must be a finite number > 0 or None, got {target_xi}")
        if every < 1 or h_min < 1 or (h_max is not None and h_max < h_min):
            raise ValueError(f"need every >= 1 and 1 <= h_min <= h_max, got every={every}, "
                             f"h_min={h_min}, h_max={h_max}")
        if not 0 <= smoothing < 1:
            raise ValueError(f"smoothing must lie in [0, 1), got {smoothing}")
        self.target_xi, self.every, self.h_min, self.h_max = target_xi, int(every), int(h_min), h_max
        self.smoothing, self.is_correct, self.method = smoothing, is_correct, method
        self.on_change = on_change
        self.trainer = None
        self.H: int | None = None
        self._log_H: float | None = None
        self._step: list[tuple[np.ndarray, np.ndarray]] = []  # this step's batches
        self._window: list[tuple[np.ndarray, np.ndarray]] = []  # since the last update
        self.E_T_est: float = math.nan
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------ wiring

    def attach(self, trainer) -> "XiController":
        """Give the controller the trainer whose cap it sets (a callback is not handed it)."""
        self.trainer = trainer
        if self.H is None:
            self.H = int(trainer.max_completion_length)
        else:
            set_max_completion_length(trainer, self.H)
        return self

    def watch(self, reward_fn: Callable) -> Callable:
        """A TRL reward function that returns `reward_fn`'s rewards and records each completion."""
        def watched(prompts=None, completions=None, completion_ids=None, **kwargs):
            rewards = reward_fn(prompts=prompts, completions=completions,
                                completion_ids=completion_ids, **kwargs)
            if completion_ids is not None:
                self.record([len(c) for c in completion_ids],
                            [bool(self.is_correct(r)) for r in rewards])
            return rewards

        watched.__name__ = getattr(reward_fn, "__name__", "reward")
        return watched

    def record(self, lengths, hits) -> None:
        self._step.append((np.asarray(lengths, dtype=float), np.asarray(hits, dtype=bool)))

    # ------------------------------------------------------------ per step

    def resume(self, H: int) -> None:
        """Continue from a checkpoint whose last update chose H: the cap and the smoothing state
        (log H) both start there, so a resumed run updates as the uninterrupted one would."""
        self.H = int(H)
        self._log_H = math.log(self.H)

    def set_H(self, H: int) -> None:
        self.H = int(H)
        if self.trainer is not None:
            set_max_completion_length(self.trainer, self.H)
        if self.on_change is not None:
            self.on_change(self.H)

    def _update(self) -> None:
        n = np.concatenate([b[0] for b in self._window]) if self._window else np.zeros(0)
        h = np.concatenate([b[1] for b in self._window]) if self._window else np.zeros(0, bool)
        self._window = []
        est = censored_mean_T(n, h, self.method)
        if not math.isfinite(est):
            return  # no correct completion: keep H (raising it blindly could run away)
        self.E_T_est = est
        if self.target_xi is None:
            return
        new = math.log(max(self.target_xi * est, 1.0))
        self._log_H = new if self._log_H is None else (
            self.smoothing * self._log_H + (1 - self.smoothing) * new)
        H = int(round(math.exp(self._log_H)))
        H = max(self.h_min, H if self.h_max is None else min(self.h_max, H))
        if H != self.H:
            self.set_H(H)

    def step_row(self, step: int) -> dict[str, Any] | None:
        """Close one optimizer step: its row (H it ran at, E_T, xi_t, E_T_est after the update)."""
        if not self._step:
            return None
        n = np.concatenate([b[0] for b in self._step])
        h = np.concatenate([b[1] for b in self._step])
        self._window.append((n, h))
        self._step = []
        H_run = self.H
        e_t = renewal_E_T(n, h) if h.any() else math.nan
        if step % self.every == 0:
            self._update()
        row = {"step": int(step), "H": H_run, "E_T": e_t,
               "xi_t": H_run / e_t if H_run and e_t > 0 else math.nan,  # nan: no hit or T = 0
               "E_T_est": self.E_T_est, "H_next": self.H, "hit_rate": float(h.mean()),
               "max_length": int(n.max()), "n_completions": int(len(n))}
        self.history.append(row)
        return row

    def on_step_end(self, args, state, control, **kwargs):
        row = self.step_row(int(state.global_step))
        metrics = getattr(self.trainer, "_metrics", None)
        if row is not None and isinstance(metrics, dict) and "train" in metrics:
            # TRL averages these into its next log, so every report_to backend (MLflow, W&B) gets them
            for k in ("H", "E_T", "xi_t", "E_T_est"):
                if row[k] is not None and math.isfinite(row[k]):
                    metrics["train"][f"relbudget/{k}"].append(float(row[k]))
        return control


def xi_controller(trainer, reward_index: int = 0, **kw) -> XiController:
    """Wrap `trainer`'s reward function number `reward_index` and attach a new controller to it:
    the two-line form for a trainer that already exists (kw: XiController's arguments)."""
    ctrl = XiController(**kw)
    trainer.reward_funcs[reward_index] = ctrl.watch(trainer.reward_funcs[reward_index])
    trainer.add_callback(ctrl)
    return ctrl.attach(trainer)
