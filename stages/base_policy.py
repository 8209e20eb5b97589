"""base_policy: train the tiny built-in policy, convert SmolLM2's GGUF, or record a named model."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import mlflow
import pandas as pd
import torch

from relbudget.core.io import atomic_dir
from relbudget.measure.models import (REFERENCE_FILE, SMOLLM2_GGUF, char_tokenizer, check_loadable,
                                      load_policy, n_params, save_policy, tiny_llama)
from relbudget.core.params import Params
from relbudget.train.pretrain import pretrain
from relbudget.measure.task import trace_corpus

log = logging.getLogger("relbudget.base_policy")
SECTIONS = ["base_policy", "data.levels", "data.operands", "data.style", "paths"]


def train_builtin(params: Params, folder: Path) -> dict:
    p, d = params.base_policy, params.data
    torch.set_num_threads(p.threads)
    torch.manual_seed(p.seed)
    tok = char_tokenizer()
    model = tiny_llama(tok, p.hidden_size, p.n_layers, p.n_heads, p.intermediate_size, p.max_position)
    # Eval prompts never appear in the traces, so evaluation measures generalisation.
    eval_prompts = set(pd.read_parquet(params.paths.prompts("eval"))["prompt"])
    pairs = trace_corpus(p.n_traces, d.levels, d.operands, p.seed, exclude=eval_prompts,
                         retry=p if d.style == "retry" else None)
    log.info("pre-training a %d-parameter Llama on %d traces for %d steps",
             n_params(model), len(pairs), p.steps)
    t0 = time.time()
    hist = pretrain(model, tok, pairs, p,
                    on_log=lambda r: mlflow.log_metric("pretrain/loss", r["loss"], step=r["step"]))
    save_policy(model, tok, folder)
    return {"n_params": n_params(model), "final_loss": hist[-1]["loss"],
            "pretrain_seconds": time.time() - t0}


def convert_gguf(params: Params, folder: Path) -> dict:
    """Dequantise SmolLM2's GGUF once into HF safetensors, so later stages load it directly."""
    model, tok = load_policy(SMOLLM2_GGUF)
    save_policy(model, tok, folder)
    return {"n_params": n_params(model)}


def record_reference(params: Params, folder: Path) -> dict:
    check_loadable(params.base_policy.model)  # here, not in sample_t after a minute of retries
    (folder / REFERENCE_FILE).write_text(json.dumps({"model": params.base_policy.model}) + "\n")
    return {}


def run(params: Params) -> dict:
    ref = params.base_policy.model
    build = train_builtin if ref == "builtin" else convert_gguf if ref == SMOLLM2_GGUF else record_reference
    with atomic_dir(params.paths.base_model) as tmp:
        stats = build(params, tmp)
    mlflow.log_metrics({k: float(v) for k, v in stats.items()})
    log.info("base policy (%s) written to %s: %s", ref, params.paths.base_model, stats)
    return stats


if __name__ == "__main__":
    from stages._cli import main

    main("base_policy", run, SECTIONS)
