"""task_t@TASK: one task's prompts and the base policy's rollouts on them.

    python -m stages.task_t TASK

A task (params tasks.family.TASK) is a prompt distribution of the built-in family: its levels
and carry counts (relbudget.measure.task.make_problems). Its train and eval prompts go to
{tasks}/TASK/prepared/; the base policy, the one every task shares, is then sampled on the
train prompts exactly as sample_t samples the study's (params `sampling`), into
{tasks}/TASK/rollouts.parquet, which task_xi@TASK reads for the task's E[T].
"""

from __future__ import annotations

import logging

from relbudget.core.schemas import PROMPTS, write_table
from relbudget.measure.task import task_splits
from stages import sample_t

log = logging.getLogger("relbudget.task_t")
# {task}: the task's own entry, so editing one task reruns only its stages
SECTIONS = ["tasks.family.{task}", "data.operands", "data.style", "data.seed",
            *sample_t.SECTIONS]


def run(params, task: str) -> dict:
    tp, t, d = params.for_task(task), params.tasks.family[task], params.data
    train, eval_ = task_splits(t.n_train, t.n_eval, t.levels, t.carries, d.operands, d.seed,
                               d.style)
    for name, table in (("train", train), ("eval", eval_)):
        write_table(table, PROMPTS, tp.paths.prompts(name))
    log.info("task %s: %d train and %d eval prompts (levels %s, carries %s)", task, len(train),
             len(eval_), t.levels, t.carries)
    sampling = tp.sampling.model_copy(update={"n_prompts": None})  # every prompt of the task
    return sample_t.run(tp.model_copy(update={"sampling": sampling}))


if __name__ == "__main__":
    from stages._cli import main

    main("task_t", run, SECTIONS, takes_regime=True)
