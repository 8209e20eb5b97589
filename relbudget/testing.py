"""Tiny real policies for tests and benchmarks: the built-in char-level Llama, pre-trained for a
few seconds on one-digit sums, so sampling, early exit and training run on a real model.

    chatty_corpus(n, seed)    the answer, then the same trace twice more (keeps going after a hit)
    rambling_corpus(n, seed)  the answer, then wrong guesses (as RL-ed policies ramble)
    tiny_policy(folder, corpus, ...)  pre-train and save in HF format; deterministic for a seed
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from relbudget.measure.models import char_tokenizer, save_policy, tiny_llama
from relbudget.core.params import defaults
from relbudget.train.pretrain import pretrain
from relbudget.measure.task import column_trace, make_problems, prompt_text


def _one_digit_traces(n: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    return [(prompt_text(xs, "trace"), column_trace(xs)) for _, xs in make_problems(n, [1], 2, rng)]


def chatty_corpus(n: int, seed: int) -> list[tuple[str, str]]:
    """One-digit sums whose completion repeats the trace three times: the policy writes a correct
    'A:8|' early and keeps going, so early exit has tokens to save (like a chatty LLM)."""
    return [(q, f"{t}|{t}|{t}") for q, t in _one_digit_traces(n, seed)]


def rambling_corpus(n: int, seed: int) -> list[tuple[str, str]]:
    """One-digit sums whose completion goes on with wrong guesses after the answer."""
    return [(q, t + "|A:0|A:0|A:0|A:0|A:0") for q, t in _one_digit_traces(n, seed)]


def tiny_policy(folder: str | Path, corpus: list[tuple], *, hidden: int = 32, layers: int = 2,
                heads: int = 4, intermediate: int = 64, max_position: int = 128, steps: int = 200,
                batch_size: int = 64, lr: float = 3e-3, seed: int = 0) -> Path:
    """A tiny Llama pre-trained on `corpus` ((prompt, completion[, eos]) tuples) and saved in HF
    format in `folder`, on one torch thread (fastest at this size); the same bytes for a seed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        p = defaults().base_policy.model_copy(update=dict(
            hidden_size=hidden, n_layers=layers, n_heads=heads, intermediate_size=intermediate,
            max_position=max_position, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
            threads=1))
        torch.manual_seed(seed)
        tok = char_tokenizer()
        model = tiny_llama(tok, hidden, layers, heads, intermediate, max_position)
        pretrain(model, tok, corpus, p, log_every=10**9)
        save_policy(model, tok, folder)
    finally:
        torch.set_num_threads(threads)
    return Path(folder)


def build_chatty_policy(folder: str | Path, steps: int = 200, seed: int = 0) -> Path:
    """The built-in architecture at its default size (head_dim 24, which vLLM's CPU attention
    pads), pre-trained on the chatty corpus: the vLLM tests' and benchmark's policy."""
    d = defaults().base_policy
    return tiny_policy(folder, chatty_corpus(90, seed), hidden=d.hidden_size, layers=d.n_layers,
                       heads=d.n_heads, intermediate=d.intermediate_size,
                       max_position=d.max_position, steps=steps, batch_size=32, seed=seed)
