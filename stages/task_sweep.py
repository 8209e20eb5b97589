"""task_sweep@TASK-XI-SEED: one cell of one task's sweep, as sweep@XI-SEED is for the study.

    python -m stages.task_sweep easy-xi1.75-s0

The same cell as stages.sweep (GRPO from the base policy at H = max(1, round(xi * E[T])) on
`sweep.token_budget` tokens, then evaluation), on the task's prompts with the task's E[T]
(task_xi@TASK), evaluated at the task's H_eval = tasks.h_eval_xi x E[T]. Writes the cell's
files under {tasks}/TASK/sweep/.
"""

from __future__ import annotations

from relbudget.core.params import parse_task_cell
from relbudget.train.training import horizon
from stages import sweep

SECTIONS = ["tasks.family.{task}", "tasks.h_eval_xi", *sweep.SECTIONS]


def run(params, name: str) -> dict:
    task, cell = parse_task_cell(name)
    tp = params.for_task(task)
    h_eval, _ = horizon(tp.paths.E_T, params.tasks.h_eval_xi)  # as task_xi@TASK evaluated the base
    tp = tp.model_copy(update={"evaluate": tp.evaluate.model_copy(update={"h_eval": h_eval})})
    return {"task": task, **sweep.run(tp, cell)}


if __name__ == "__main__":
    from stages._cli import main

    main("task_sweep", run, SECTIONS, takes_regime=True)
