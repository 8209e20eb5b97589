"""prepare: write the train and eval prompt tables (built-in task, or HF datasets)."""

from __future__ import annotations

import logging

import mlflow

from relbudget.core.io import output_set
from relbudget.core.params import Params
from relbudget.core.schemas import PROMPTS, write_table
from relbudget.measure.task import builtin_splits
from relbudget.core.tracking import log_dataset

log = logging.getLogger("relbudget.prepare")
SECTIONS = ["data", "paths"]


def run(params: Params) -> dict:
    d = params.data
    if d.source == "builtin":
        train, eval_ = builtin_splits(d.n_train, d.n_eval, d.levels, d.operands, d.seed, d.style)
    else:
        from relbudget.measure.datasets import load_hf_prompts

        train, eval_ = load_hf_prompts(d.hf, d.n_train, d.n_eval, d.seed)
    with output_set():  # both splits replaced together, or neither (relbudget.core.io)
        for name, table in (("train", train), ("eval", eval_)):
            write_table(table, PROMPTS, params.paths.prompts(name))
    for name, table in (("train", train), ("eval", eval_)):
        log_dataset(table, params.paths.prompts(name), name)
    stats = {"n_train": len(train), "n_eval": len(eval_)}
    mlflow.log_metrics(stats)
    log.info("wrote %d train and %d eval prompts to %s", len(train), len(eval_), params.paths.prepared)
    return stats


if __name__ == "__main__":
    from stages._cli import main

    main("prepare", run, SECTIONS)
