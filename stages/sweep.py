"""sweep@XI-SEED: one cell of the xi x seed grid (params `sweep`), as one DVC matrix stage; a
named regime (params `regimes`) is the cells at its xi.

    python -m stages.sweep xi1.75-s0

Reads the base policy's E[T] from the xi stage's E_T.json (computed once for every cell),
trains GRPO from the base policy at H = max(1, round(xi * E[T])) on `sweep.token_budget`
generated completion tokens with train.seed = SEED (the rest of `train` as params say), then
evaluates the trained policy on the eval prompts at H_eval and at `evaluate.h_multiples` x E[T]
(named `x0.75`, ...; one sampling pass at the largest, which also answers its own H), with
`sweep.eval_attempts` samples per prompt and early exit
(relbudget.train.training.train_and_evaluate). Writes {paths.sweep}/CELL/history.parquet,
eval.json and rollouts.parquet; the trained weights are not kept (the work folder {paths.sweep}/.CELL.work holds the trainer's
checkpoints, so an interrupted cell resumes, and is removed on success).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import mlflow

from relbudget.measure.budgets import check_token_budget
from relbudget.measure.evaluation import multiple_horizons
from relbudget.core.io import output_set, write_json
from relbudget.core.params import parse_cell
from relbudget.core.schemas import HISTORY, ROLLOUTS, write_table
from relbudget.measure.metrics import gain_metrics
from relbudget.core.tracking import eval_headline, log_metrics
from relbudget.train.training import horizon, train_and_evaluate

log = logging.getLogger("relbudget.sweep")
# what a cell reads, no more: the other cells' xi values and seeds are not in it
SECTIONS = ["sweep.token_budget", "sweep.eval_attempts", "train", "evaluate", "sampling.backend",
            "base_policy.trust_remote_code", "base_policy.chat_template", "paths"]


def run(params, cell: str) -> dict:
    xi, seed = parse_cell(cell)
    paths, s = params.paths, params.sweep
    H, E_T = horizon(paths.E_T, xi)
    t = params.train.model_copy(update={"seed": seed, "token_budget": s.token_budget})
    if t.budget != "fixed" or t.prompt_filter is not None:  # the grid is of fixed xi, all prompts
        log.warning("sweep@%s trains at a fixed H on every prompt; train.budget %r and "
                    "train.prompt_filter are ignored here (see the arm stages)", cell, t.budget)
        t = t.model_copy(update={"budget": "fixed", "prompt_filter": None})
    check_token_budget(t, H, f"sweep@{cell}")  # an unreachable budget: refused before compute
    mlflow.set_tags({"H": str(H), "target_xi": str(xi), "seed": str(seed), "reward": t.reward,
                     "after_answer": t.after_answer, "stop": t.stop})
    log.info("sweep@%s: xi %g, H=%d (E[T] %.2f), seed %d, budget %d tokens", cell, xi, H, E_T, seed,
             t.token_budget)
    work = Path(paths.cell_work(cell))
    # accuracy at several multiples of E[T] from the one evaluation pass (the report's robustness)
    more = multiple_horizons(E_T, params.evaluate.h_multiples)
    history, table, result, stats = train_and_evaluate(params, t, H, cell, work, s.eval_attempts,
                                                       more=more)
    result = {"cell": cell, "xi": xi, "seed": seed, "H": H, "E_T_base": E_T,
              "token_budget": t.token_budget, **result}
    with output_set():  # the cell's three files replaced together, or none
        write_table(history, HISTORY, paths.cell_history(cell))
        write_table(table, ROLLOUTS, paths.cell_rollouts(cell))
        write_json(result, paths.cell_eval(cell))
    shutil.rmtree(work, ignore_errors=True)

    log_metrics({f"summary/{k}": v for k, v in stats.items()})
    log_metrics(eval_headline(result["at"]))  # the same keys as every evaluate run
    log_metrics(gain_metrics(result["at"], paths.eval_json("base"), stats["generated_tokens"]))
    for name, m in result["at"].items():
        log_metrics({f"{name}/{k}": v for k, v in m.items()})
    log.info("sweep@%s: accuracy at H_eval %.3f after %d tokens", cell,
             result["at"]["H_eval"]["accuracy"], stats["generated_tokens"])
    return result


if __name__ == "__main__":
    from stages._cli import main

    main("sweep", run, SECTIONS, takes_regime=True)
