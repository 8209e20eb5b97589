"""HF `generate` backend with early exit at the first correct answer.

Early exit is a per-row StoppingCriteria: after each new token it asks the shared check
(`common.FirstCorrect`, the same one vLLM's logits processor uses) whether that token confirms
the row's first correct answer, and stops the row there. Finished rows are then masked by
`generate`, so the tokens counted are sum(min(T, Hmax)).
"""

from __future__ import annotations

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from relbudget.measure.sampling.common import FirstCorrect, Generation, Request, RowCheck


class StopAtFirstCorrect(StoppingCriteria):
    """Per-row stop at EOS or (when enabled) at the first correct answer; records why and when."""

    def __init__(self, tokenizer, requests: list[Request], prompt_len: int, early_exit: bool):
        self.tok = tokenizer
        self.prompt_len = prompt_len
        self.early_exit = early_exit
        self.check = FirstCorrect(tokenizer)
        self.rows = [RowCheck(r.answer, r.answer_format) for r in requests]
        self.n_tokens = [0] * len(requests)
        self.ended: list[str | None] = [None] * len(requests)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_len
        last = input_ids[:, -1].tolist()
        for i, row in enumerate(self.rows):
            if self.ended[i] is not None:
                continue
            self.n_tokens[i] = step
            if last[i] == self.tok.eos_token_id:
                self.ended[i] = "eos"
            elif self.early_exit and self.check(
                    row, lambda i=i: input_ids[i, self.prompt_len:], last[i]):
                self.ended[i] = "first_correct"
        return torch.tensor([e is not None for e in self.ended], device=input_ids.device)


@torch.no_grad()
def generate(model, tokenizer, batch: list[tuple[Request, int]], max_tokens: int,
             temperature: float, top_p: float, early_exit: bool, seed: int) -> list[Generation]:
    """Sample one attempt per (request, attempt index) in `batch`, left-padded together."""
    torch.manual_seed(seed)
    requests = [r for r, _ in batch]
    enc = tokenizer([r.prompt for r in requests], return_tensors="pt", padding=True,
                    add_special_tokens=False).to(model.device)
    prompt_len = enc["input_ids"].shape[1]
    crit = StopAtFirstCorrect(tokenizer, requests, prompt_len, early_exit)
    out = model.generate(
        **enc, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
        max_new_tokens=max_tokens, stopping_criteria=StoppingCriteriaList([crit]),
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    gens = []
    for i, (req, attempt) in enumerate(batch):
        ended = crit.ended[i] or "length"
        n = crit.n_tokens[i] if crit.ended[i] else max_tokens
        ids = out[i, prompt_len: prompt_len + n].tolist()
        gens.append(Generation(req, attempt, ids, ended, seed))
    return gens
