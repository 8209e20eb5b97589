"""Each pipeline stage's data interface, declared once from the typed `Paths`.

`stage_files(paths, stage, key)` names the files a stage execution reads (data deps) and writes
(outs, metrics, plots), as dvc.yaml lists them; the Prefect flow derives its inputs and outputs
from it, and tests/test_interfaces.py checks dvc.yaml against it (and the stages' code deps and
params sections against their imports and SECTIONS). File names inside the folders live on
`Paths` (relbudget.core.params).

Only the git-tracked headline is a metrics file (a handful of numbers, so plain `dvc metrics show`
fits a terminal and `dvc metrics diff REV` finds it in every revision); the per-run JSONs (an
evaluation, a sweep cell, an arm, the xi summary, the report's metrics.json) are ordinary outs,
cached by DVC.
"""

from __future__ import annotations

from dataclasses import dataclass

from relbudget.core.params import REPORT_PLOTS, TASKS_PLOTS, XI_PLOTS, Paths, arm_name, parse_task_cell

STAGES = ("check_params", "prepare", "base_policy", "sample_t", "xi", "evaluate", "sweep",
          "arm", "fixed_best", "report", "task_t", "task_xi", "task_sweep", "tasks_report")


@dataclass(frozen=True)
class StageFiles:
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()

    @property
    def outputs(self) -> tuple[str, ...]:
        """Everything the stage writes."""
        return self.outs + self.metrics + self.plots


def _task_t(t: Paths, _) -> StageFiles:
    return StageFiles((t.base_model,), (t.prepared, t.rollouts))


def _task_xi(t: Paths, _) -> StageFiles:
    return StageFiles((t.base_model, t.rollouts, t.prompts("eval")),
                      (t.xi_summary, t.E_T, t.eval_rollouts("base"), t.eval_json("base")))


def _task_sweep(t: Paths, cell: str) -> StageFiles:
    return StageFiles((t.base_model, t.prepared, t.E_T, t.eval_json("base")),
                      (t.cell_history(cell), t.cell_rollouts(cell), t.cell_eval(cell)))


TASK_STAGES = {"task_t": _task_t, "task_xi": _task_xi, "task_sweep": _task_sweep}


def stage_files(paths: Paths, stage: str, key: str | None = None) -> StageFiles:
    """The data files of one stage execution; `key` is 'base' (evaluate), the sweep cell, the arm
    run, the seed (fixed_best) or the task."""
    files = _stage_files(paths, stage, key)
    if stage == "check_params":
        return files
    # Every stage waits for check_params: DVC removes a stage's outputs before it runs it, so params
    # must be refused before any stage that could be rerun starts, not inside it.
    return StageFiles((paths.params_ok, *files.deps), files.outs, files.metrics, files.plots)


def _stage_files(paths: Paths, stage: str, key: str | None) -> StageFiles:
    p = paths
    if stage == "check_params":
        return StageFiles((), (p.params_ok,))
    if stage == "prepare":
        return StageFiles((), (p.prepared,))
    if stage == "base_policy":
        return StageFiles((p.prepared,), (p.base_model,))
    if stage == "sample_t":
        return StageFiles((p.base_model, p.prompts("train")), (p.rollouts,))
    if stage == "xi":
        return StageFiles((p.rollouts,), (p.per_prompt, p.curves, p.budgets, p.E_T, p.xi_summary,
                                          *(p.xi_plot(n) for n in XI_PLOTS)))
    if stage == "evaluate":  # `key` is 'base': the reference every cell's gain is against
        return StageFiles((p.base_model, p.prompts("eval"), p.E_T),
                          (p.eval_rollouts(key), p.eval_json(key)))
    if stage == "sweep":
        return StageFiles((p.base_model, p.prepared, p.E_T, p.eval_json("base")),
                          (p.cell_history(key), p.cell_rollouts(key), p.cell_eval(key)))
    if stage == "arm":
        return StageFiles((p.base_model, p.prepared, p.E_T, p.rollouts, p.eval_json("base")),
                          (p.arm_history(key), p.arm_json(key)))
    if stage == "fixed_best":  # `key` is the seed; it also reads the sweep (for its best xi)
        name = arm_name("fixed_best", key)
        return StageFiles((p.base_model, p.prepared, p.E_T, p.rollouts, p.sweep,
                           p.eval_json("base")), (p.arm_history(name), p.arm_json(name)))
    if stage in TASK_STAGES:  # `key` is the task, or for task_sweep the task's cell
        task, cell = parse_task_cell(key) if stage == "task_sweep" else (key, None)
        return TASK_STAGES[stage](p.task(task), cell)
    if stage == "tasks_report":
        return StageFiles((p.tasks,), (p.tasks_md, p.tasks_metrics), (p.tasks_headline,),
                          tuple(p.tasks_plot(n) for n in TASKS_PLOTS))
    if stage == "report":
        return StageFiles((p.xi, p.eval, p.sweep, p.arms),
                          (p.report_md, p.report_metrics), (p.headline_json,),
                          (*(p.report_plot(n) for n in REPORT_PLOTS), p.efficiency_csv))
    raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
