"""HF `generate` backend with early exit at the first correct answer.

Early exit is a per-row StoppingCriteria: after each new token it checks only the rows whose last
token could complete an answer (a non-digit character, or '}' for \\boxed), runs the verifier on
the row's text so far, and stops the row at the token that confirms a correct answer. Finished
rows are then masked by `generate`, so the tokens counted are sum(min(T, Hmax)).
"""

from __future__ import annotations

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from relbudget.sampling.common import Generation, Request
from relbudget.verify import verify


# Lower-cased strings one of which every answer candidate of a format starts with (see verify.py).
# Until a row has written one, no candidate can exist, so the verifier is not run on it: on long
# free text this keeps early exit's cost per step O(1) instead of re-decoding the whole row.
ANCHORS = {"int": ("a:", "####", "answer"), "gsm8k": ("####", "answer"),
           "prose": ("####", "answer", "=", "equal", "is", "make", "give"),
           "math": ("\\boxed", "\\fbox")}
ANCHOR_WINDOW = 8  # tokens: every anchor is shorter, so one ending at the new token is inside


def _may_terminate(piece: str, fmt: str) -> bool:
    if fmt == "math":
        return "}" in piece
    return any(not ch.isdigit() for ch in piece)


class StopAtFirstCorrect(StoppingCriteria):
    """Per-row stop at EOS or (when enabled) at the first correct answer; records why and when."""

    def __init__(self, tokenizer, requests: list[Request], prompt_len: int, early_exit: bool):
        self.tok = tokenizer
        self.requests = requests
        self.prompt_len = prompt_len
        self.early_exit = early_exit
        self.n_tokens = [0] * len(requests)
        self.ended: list[str | None] = [None] * len(requests)
        self.anchored = [False] * len(requests)
        self._memo: dict[tuple[str, int, str], bool] = {}  # per (test, token id, format)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_len
        last = input_ids[:, -1].tolist()
        for i, req in enumerate(self.requests):
            if self.ended[i] is not None:
                continue
            self.n_tokens[i] = step
            if last[i] == self.tok.eos_token_id:
                self.ended[i] = "eos"
            elif not self.early_exit:
                continue
            elif not self.anchored[i] and self.may_end_anchor(last[i], req.answer_format):
                start = max(self.prompt_len, input_ids.shape[1] - ANCHOR_WINDOW)  # generated text only
                tail = self.tok.decode(input_ids[i, start:], skip_special_tokens=True)
                self.anchored[i] = any(a in tail.lower() for a in ANCHORS.get(req.answer_format, ("",)))
            if self.ended[i] is None and self.anchored[i] and \
                    self.may_terminate(last[i], req.answer_format):
                text = self.tok.decode(input_ids[i, self.prompt_len:], skip_special_tokens=True)
                if verify(text, req.answer, req.answer_format, ended=False).first_correct_chars:
                    self.ended[i] = "first_correct"
        return torch.tensor([e is not None for e in self.ended], device=input_ids.device)

    def may_end_anchor(self, token_id: int, fmt: str) -> bool:
        """Whether this token's text holds the last character of one of the format's anchors.
        An anchor is complete only once that character is written, so the window is decoded only
        then: O(1) per row and step (memoised per token id) instead of one decode per row."""
        anchors = ANCHORS.get(fmt, ("",))
        return self._per_token("anchor", token_id, fmt,
                               lambda p: any(a == "" or a[-1] in p.lower() for a in anchors))

    def may_terminate(self, token_id: int, fmt: str) -> bool:
        return self._per_token("terminate", token_id, fmt, lambda p: _may_terminate(p, fmt))

    def _per_token(self, test: str, token_id: int, fmt: str, fn) -> bool:
        key = (test, token_id, fmt)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = bool(fn(self.tok.decode([token_id])))
        return hit


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
