"""task_xi@TASK: one task's E[T] (with its bootstrap interval) from its base rollouts, and the
base policy evaluated on the task's eval prompts at the task's H_eval; and the task's learning
efficiency predicted over the sweep's grid before any training (summary key `predicted`).

    python -m stages.task_xi TASK

Every task is evaluated at the same relative cap, H_eval = tasks.h_eval_xi x its E[T], so a gain
means the same on an easy task as on a hard one. Writes {tasks}/TASK/xi/summary.json (the xi
stage's summary of the task), E_T.json (what its sweep cells read) and {tasks}/TASK/eval/base.json
with base_rollouts.parquet (the reference of every gain of the task).
"""

from __future__ import annotations

import logging

from relbudget.core.io import output_set, write_json
from relbudget.core.schemas import ROLLOUTS, PROMPTS, read_table, write_table
from relbudget.core.tracking import log_metrics
from relbudget.measure import estimators as est
from relbudget.measure import predict as pred
from relbudget.measure.evaluation import evaluate_policy

log = logging.getLogger("relbudget.task_xi")
SECTIONS = ["tasks.family.{task}", "tasks.h_eval_xi", "xi", "evaluate", "sampling.backend",
            "base_policy.trust_remote_code", "base_policy.chat_template", "sweep.xi",
            "train.num_generations", "train.prompts_per_step", "paths"]


def run(params, task: str) -> dict:
    tp = params.for_task(task)
    p, x = tp.paths, tp.xi
    df = read_table(p.rollouts, ROLLOUTS)
    summary = est.summarize(df, None, x.group_size, x.n_bootstrap, x.ci_level, x.seed,
                            x.deficient_below, x.ample_above)
    if not summary["E_T"]:
        raise ValueError(f"task {task}: the base policy solved none of its prompts, so it has no "
                         "E[T]; make the task easier (fewer levels or carries)")
    h_eval = est.horizon_for(params.tasks.h_eval_xi, summary["E_T"])
    summary = {"task": task, "H_eval": h_eval, **summary}
    # the task's efficiency predicted over the sweep's grid from its base rollouts alone, as the
    # xi stage does for the study: tasks_report lays it over the task's measured sweep
    summary["predicted"] = est.to_json_safe(pred.predict(
        df, params.sweep.xi, params.train.num_generations, params.train.prompts_per_step))
    prompts = read_table(p.prompts("eval"), PROMPTS)
    table, base = evaluate_policy(p.base_model, prompts, {"H_eval": h_eval}, tp.evaluate,
                                  tp.base_policy, tp.sampling.backend, "base")
    with output_set():  # the task's four files replaced together, or none
        write_json(summary, p.xi_summary)
        write_json({k: summary[k] for k in ("E_T", "n_attempts", "n_hits", "H_eval")}, p.E_T)
        write_table(table, ROLLOUTS, p.eval_rollouts("base"))
        write_json({"regime": "base", **base}, p.eval_json("base"))
    log_metrics({"E_T": summary["E_T"], "H_eval": h_eval,
                 "acc_H_eval": base["at"]["H_eval"]["accuracy"]})
    log.info("task %s: E[T] = %.2f (CI %s), H_eval %d, base accuracy %.3f", task, summary["E_T"],
             summary["E_T_ci"], h_eval, base["at"]["H_eval"]["accuracy"])
    return summary


if __name__ == "__main__":
    from stages._cli import main

    main("task_xi", run, SECTIONS, takes_regime=True)
