"""Supervised pre-training of the built-in base policy on column-sum traces.

The goal is an *imperfect* policy with a spread of T, which is what RL under a budget needs to
have something to learn. With self-correcting traces (`data.style: retry`) the imperfection is
in the data (slip rates, see relbudget/measure/task.py) and pre-training runs until the policy imitates
it; with single-attempt traces (`trace`) it comes from stopping pre-training early. Loss is on
completion tokens only; a trace cut before its end gets no EOS.
"""

from __future__ import annotations

import math
import random

import torch
from tqdm.auto import tqdm

from relbudget.core.params import BasePolicyParams


def encode_pairs(tokenizer, pairs: list[tuple]) -> list[tuple[list[int], int]]:
    """(ids of prompt+completion[+eos], prompt length) per (prompt, completion[, ends]) pair;
    EOS is appended unless `ends` is given and false (a trace cut short)."""
    out = []
    for prompt, completion, *ends in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        eos = [tokenizer.eos_token_id] if (not ends or ends[0]) else []
        out.append((p + c + eos, len(p)))
    return out


def collate(batch: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded inputs and labels with prompt and padding masked to -100."""
    width = max(len(ids) for ids, _ in batch)
    x = torch.full((len(batch), width), pad_id, dtype=torch.long)
    y = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, (ids, plen) in enumerate(batch):
        x[i, : len(ids)] = torch.tensor(ids)
        y[i, plen: len(ids)] = torch.tensor(ids[plen:])
    return x, y


def lr_at(step: int, total: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(model, tokenizer, pairs: list[tuple], p: BasePolicyParams,
             log_every: int = 50, on_log=None) -> list[dict]:
    """Train in place; returns the loss history (one dict per logged step)."""
    torch.manual_seed(p.seed)
    rng = random.Random(p.seed)
    data = encode_pairs(tokenizer, pairs)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=0.01, betas=(0.9, 0.98))
    model.train()
    history = []
    bar = tqdm(range(p.steps), desc="base_policy", unit="step")
    for step in bar:
        batch = rng.sample(data, min(p.batch_size, len(data)))
        x, y = collate(batch, tokenizer.pad_token_id)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, p.steps, p.lr)
        loss = model(input_ids=x, attention_mask=(x != tokenizer.pad_token_id).long(), labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == p.steps - 1:
            rec = {"step": step, "loss": loss.item()}
            history.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}")
            if on_log:
                on_log(rec)
    model.eval()
    return history
