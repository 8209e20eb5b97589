"""sweep@XI-SEED: one cell of the xi x seed grid (params `sweep`), as one DVC matrix stage.

    python -m stages.sweep xi1.75-s0

Reads the base policy's E[T] from the xi stage's E_T.json (computed once for every cell),
trains GRPO from the base policy at H = max(1, round(xi * E[T])) on `sweep.token_budget`
generated completion tokens with train.seed = SEED (the rest of `train` as for the regimes), then
evaluates the trained policy on the eval prompts at H_eval (and at its own H when H <= H_eval,
which the same sampling pass answers for free), with `sweep.eval_attempts` samples per prompt
and early exit. Writes {paths.sweep}/CELL/history.parquet, eval.json and rollouts.parquet; the
trained weights are not kept (the work folder {paths.sweep}/.CELL.work holds the trainer's
checkpoints, so an interrupted cell resumes, and is removed on success).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import mlflow

from relbudget.budgets import check_token_budget
from relbudget.evaluation import evaluate_policy
from relbudget.grpo import train_policy
from relbudget.io import work_lock, write_json
from relbudget.models import load_saved, render_prompts, save_policy
from relbudget.params import parse_cell
from relbudget.schemas import HISTORY, PROMPTS, ROLLOUTS, read_table, write_table
from relbudget.tracking import log_metrics
from stages.train import check_length, summary

log = logging.getLogger("relbudget.sweep")
# what a cell reads, no more: the other cells' xi values and seeds are not in it
SECTIONS = ["sweep.token_budget", "sweep.eval_attempts", "train", "evaluate", "sampling.backend",
            "base_policy.trust_remote_code", "base_policy.chat_template", "paths"]


def horizon(paths, xi: float) -> tuple[int, float]:
    """(H = max(1, round(xi * E[T])), E[T]) from the xi stage's E[T] of the base policy
    (rounded half up, as the regimes' budgets are)."""
    path = Path(paths.E_T)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the xi stage first")
    E_T = json.loads(path.read_text()).get("E_T")
    if not isinstance(E_T, (int, float)) or not math.isfinite(E_T) or E_T <= 0:
        raise ValueError(f"{path}: E_T is {E_T!r}; the base policy solved nothing, so no H = xi E[T]")
    return max(1, int(math.floor(xi * E_T + 0.5))), float(E_T)


def run(params, cell: str) -> dict:
    xi, seed = parse_cell(cell)
    paths, e = params.paths, params.evaluate
    H, E_T = horizon(paths, xi)
    t = params.train.model_copy(update={"seed": seed, "token_budget": params.sweep.token_budget})
    if t.budget != "fixed":  # the sweep is the grid of fixed xi: an adaptive H would void its cells
        log.warning("sweep@%s trains at a fixed H; train.budget %r is ignored here", cell, t.budget)
        t = t.model_copy(update={"budget": "fixed"})
    check_token_budget(t, H, f"sweep@{cell}")  # an unreachable budget: refused before compute
    mlflow.set_tags({"H": str(H), "target_xi": str(xi), "seed": str(seed), "reward": t.reward,
                     "after_answer": t.after_answer, "stop": t.stop})
    model, tok = load_saved(paths.base_model, params.base_policy.trust_remote_code)
    prompts = render_prompts(read_table(paths.prompts("train"), PROMPTS), tok,
                             params.base_policy.chat_template)
    work = Path(paths.cell_work(cell))
    log.info("sweep@%s: xi %g, H=%d (E[T] %.2f), seed %d, budget %d tokens", cell, xi, H, E_T, seed,
             t.token_budget)
    t0 = time.time()
    with work_lock(work):  # a second sweep@CELL is refused: it never shares a live checkpoint
        model, history = train_policy(model, tok, prompts, t, H, work / "trainer",
                                      check_length(model, tok, prompts, H, t))
    seconds = time.time() - t0
    save_policy(model, tok, work / "policy")  # evaluated the way evaluate@REGIME is, then dropped

    # H_own comes free only when it is within the H_eval pass; a larger cap would cost every miss
    horizons = {"H_eval": e.h_eval, **({"H_own": H} if H <= e.h_eval else {})}
    eval_prompts = read_table(paths.prompts("eval"), PROMPTS)
    table, result = evaluate_policy(work / "policy", eval_prompts, horizons, e, params.base_policy,
                                    params.sampling.backend, cell, params.sweep.eval_attempts)
    write_table(history, HISTORY, paths.cell_history(cell))
    write_table(table, ROLLOUTS, paths.cell_rollouts(cell))
    result = {"cell": cell, "xi": xi, "seed": seed, "H": H, "E_T_base": E_T,
              "token_budget": t.token_budget, **result}
    write_json(result, paths.cell_eval(cell))
    shutil.rmtree(work, ignore_errors=True)

    stats = summary(history, seconds, H, None)
    log_metrics({f"summary/{k}": v for k, v in stats.items()})
    for name, m in result["at"].items():
        log_metrics({f"{name}/{k}": v for k, v in m.items()})
    log.info("sweep@%s: accuracy at H_eval %.3f after %d tokens", cell,
             result["at"]["H_eval"]["accuracy"], stats["generated_tokens"])
    return result


if __name__ == "__main__":
    from stages._cli import main

    main("sweep", run, SECTIONS, takes_regime=True)
