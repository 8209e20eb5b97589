"""Sampling K attempts per prompt at a cap, in resumable chunks, into a rollout table.

Prompts are split into chunks of `chunk_prompts`; each chunk is generated with its own seed
(derived from the base seed and the chunk index) and saved as it completes. A rerun after an
interruption loads the finished chunks and generates only the rest, so a resumed run writes the
same table as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

from relbudget.core.errors import ModelError
from relbudget.core.io import switch_work_dir, write_parquet
from relbudget.measure.sampling.common import Generation, Request, score
from relbudget.core.schemas import ROLLOUTS, normalise_rollouts, validate

log = logging.getLogger(__name__)

GenerateFn = Callable[[list[tuple[Request, int]], int], list[Generation]]


def requests_from(prompts: pd.DataFrame) -> list[Request]:
    return [Request(str(r.prompt_id), str(r.prompt), str(r.answer), str(r.answer_format))
            for r in prompts.itertuples(index=False)]


def chunk_seed(seed: int, chunk: int) -> int:
    return seed * 1_000_003 + chunk


def resolve_backend(name: str) -> str:
    """auto: vLLM when it is importable (the GPU build with CUDA, or the CPU build)."""
    if name == "hf":
        return name
    try:
        import vllm  # noqa: F401
    except Exception as err:
        if name == "vllm":  # asked for: refused before any model loads
            raise ModelError(f"sampling backend 'vllm' was asked for (sampling.backend or "
                             f"--backend) but vLLM cannot be imported ({type(err).__name__}: "
                             f"{str(err)[:200]}); install it (docs/vllm.md) or use 'hf' or "
                             "'auto'") from None
        return "hf"
    return "vllm"


def hf_generate_fn(model, tokenizer, max_tokens: int, temperature: float, top_p: float,
                   early_exit: bool, batch_size: int) -> GenerateFn:
    from relbudget.measure.sampling import hf

    def run(items: list[tuple[Request, int]], seed: int) -> list[Generation]:
        gens: list[Generation] = []
        for start in range(0, len(items), batch_size):
            gens += hf.generate(model, tokenizer, items[start: start + batch_size], max_tokens,
                                temperature, top_p, early_exit, seed * 7919 + start)
        return gens

    return run


def sample_table(generate_fn: GenerateFn, tokenizer, requests: list[Request], attempts: int,
                 max_tokens: int, seed: int, policy: str, chunk_prompts: int,
                 chunk_dir: Path | None = None, fingerprint: str = "", keep_text: bool = True,
                 desc: str = "sample") -> pd.DataFrame:
    """The rollout table for K attempts per request; chunks are cached in chunk_dir to resume."""
    if chunk_dir is not None:
        _prepare_chunk_dir(chunk_dir, fingerprint)
    chunks = [requests[i: i + chunk_prompts] for i in range(0, len(requests), chunk_prompts)]
    frames = []
    # closed as the block ends, also on Ctrl-C: the bar draws nothing after the caller's error line
    with tqdm(total=len(requests) * attempts, desc=desc, unit="attempt") as bar:
        for c, chunk in enumerate(chunks):
            done = chunk_dir / f"chunk-{c:05d}.parquet" if chunk_dir else None
            if done is not None and done.exists():
                frames.append(pd.read_parquet(done))
                bar.update(len(chunk) * attempts)
                continue
            items = [(r, a) for r in chunk for a in range(attempts)]
            gens = generate_fn(items, chunk_seed(seed, c))
            df = pd.DataFrame([score(tokenizer, g, max_tokens, policy, keep_text) for g in gens])
            if done is not None:
                write_parquet(df, done)
            frames.append(df)
            bar.update(len(items))
            bar.set_postfix(tokens=int(sum(f["n_tokens"].sum() for f in frames)))
    table = normalise_rollouts(pd.concat(frames, ignore_index=True))
    return validate(table, ROLLOUTS, f"rollouts sampled by {policy}")


def _prepare_chunk_dir(chunk_dir: Path, fingerprint: str) -> None:
    """Reuse chunks only if they came from the same configuration; chunks of another one are kept
    aside in {chunk_dir}.kept/<fingerprint> (the newest few, see relbudget.core.io.switch_work_dir)."""
    switch_work_dir(chunk_dir, "fingerprint.txt", fingerprint)
    if any(chunk_dir.glob("chunk-*.parquet")):
        log.info("resuming from %d finished chunk(s) in %s",
                 len(list(chunk_dir.glob("chunk-*.parquet"))), chunk_dir)


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def set_threads(n: int) -> None:
    # For sub-million-parameter models one thread beats two: the work per op is too small to split.
    torch.set_num_threads(n)


def load_generator(backend: str, policy_folder: str | Path, max_tokens: int, temperature: float,
                   top_p: float, early_exit: bool, batch_size: int, trust_remote_code: bool = False):
    """(generate_fn, tokenizer, backend name) for a saved policy folder. The seed comes with each
    call of generate_fn (one per chunk of prompts), so the result never depends on the backend's
    history."""
    from relbudget.measure.models import load_saved, policy_ref

    backend = resolve_backend(backend)
    if backend == "vllm":
        from relbudget.measure.sampling.vllm_backend import vllm_generate_fn

        fn, tok = vllm_generate_fn(policy_ref(policy_folder), max_tokens, temperature, top_p,
                                   early_exit, trust_remote_code)
        return fn, tok, backend
    model, tok = load_saved(policy_folder, trust_remote_code)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    fn = hf_generate_fn(model, tok, max_tokens, temperature, top_p, early_exit, batch_size)
    return fn, tok, backend
