"""sample_t: K attempts per train prompt at cap Hmax from the base policy -> the rollout table."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import mlflow
import pandas as pd

from relbudget.core.io import work_lock
from relbudget.measure.models import check_prompt_room, policy_context, render_prompts
from relbudget.measure.sampling import fingerprint, load_generator, requests_from, sample_table, set_threads
from relbudget.core.schemas import PROMPTS, ROLLOUTS, read_table, write_table

log = logging.getLogger("relbudget.sample_t")
SECTIONS = ["sampling", "base_policy.trust_remote_code", "base_policy.chat_template", "paths"]


def run(params) -> dict:
    s = params.sampling
    set_threads(s.threads)
    prompts = read_table(params.paths.prompts("train"), PROMPTS)
    if s.n_prompts is not None:
        prompts = prompts.head(s.n_prompts)
    out = Path(params.paths.rollouts)
    gen, tok, backend = load_generator(s.backend, params.paths.base_model, s.max_tokens,
                                       s.temperature, s.top_p, s.early_exit, s.batch_size,
                                       params.base_policy.trust_remote_code)
    prompts = render_prompts(prompts, tok, params.base_policy.chat_template)
    check_prompt_room(prompts, tok, s.max_tokens, policy_context(
        params.paths.base_model, params.base_policy.trust_remote_code), "sample_t")
    # Chunks live beside the output, hidden; they let an interrupted run resume where it stopped.
    chunk_dir = out.parent / f".{out.stem}.chunks"
    fp = fingerprint(s.model_dump(), backend, prompts[["prompt_id", "prompt"]].values.tolist(),
                     _policy_stamp(params.paths.base_model))
    t0 = time.time()
    with work_lock(chunk_dir):  # a second sample_t on these chunks is refused
        table = sample_table(gen, tok, requests_from(prompts), s.attempts, s.max_tokens, s.seed,
                             policy="base", chunk_prompts=s.chunk_prompts, chunk_dir=chunk_dir,
                             fingerprint=fp, desc="sample_t")
    seconds = time.time() - t0
    write_table(table, ROLLOUTS, out)
    _cleanup(chunk_dir)
    stats = _stats(table, seconds)
    mlflow.log_metrics(stats)
    mlflow.set_tag("backend", backend)
    log.info("wrote %d attempts to %s: %s", len(table), out, stats)
    return stats


def _policy_stamp(folder: str) -> str:
    """Changes when the base policy changes, so stale chunks are never reused."""
    files = sorted(Path(folder).glob("*"))
    return ",".join(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files)


def _cleanup(chunk_dir: Path) -> None:
    import shutil

    shutil.rmtree(chunk_dir, ignore_errors=True)


def _stats(table: pd.DataFrame, seconds: float) -> dict:
    hit = table["first_correct_token"].notna()
    tokens = int(table["n_tokens"].sum())
    return {"attempts": len(table), "generated_tokens": tokens, "hit_rate": float(hit.mean()),
            "seconds": seconds, "tokens_per_s": tokens / max(seconds, 1e-9)}


if __name__ == "__main__":
    from stages._cli import main

    main("sample_t", run, SECTIONS)
