"""`relbudget measure`: which `max_completion_length` for my model and my data?

    relbudget measure --model Qwen/Qwen2.5-0.5B-Instruct --dataset openai/gsm8k --config main \
        --split train --column-map prompt=question,answer=answer --answer-format gsm8k \
        --attempts 8 --max-tokens 1024 --target-xi 1.75 --out gsm8k_rollouts.parquet

Samples K attempts per prompt at cap HMAX with the same code as the pipeline's sample_t stage
(`relbudget.measure.sampling.sample_table`: early exit at the first correct answer, resumable chunks in
`.<out>.chunks/` beside --out, a progress bar), writes the rollout table to --out, then prints what
`relbudget plan` prints for --target-xi and the line to paste into a TRL script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from relbudget.core.params import HFSource


def _column_map(text: str | None) -> dict[str, str]:
    out = {"prompt": "question", "answer": "answer"}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, col = part.partition("=")
        key = key.strip()
        if not sep or key not in ("prompt", "answer", "id") or not col.strip():
            raise ValueError(f"--column-map: expected prompt=COL,answer=COL[,id=COL], got {part!r}")
        out[key] = col.strip()
    return out


def source_of(args: argparse.Namespace) -> HFSource:
    cols = _column_map(args.column_map)
    return HFSource(path=args.dataset, name=args.config, train_split=args.split,
                    prompt_column=cols["prompt"], answer_column=cols["answer"],
                    id_column=cols.get("id"), answer_format=args.answer_format,
                    prompt_template=args.prompt_template)


def sample(args: argparse.Namespace):
    """The rollout table of --model on --dataset (written to --out), resumable."""
    import torch

    from relbudget.measure.datasets import load_hf_prompts
    from relbudget.measure.models import check_prompt_room, context_of, load_policy, render_prompts
    from relbudget.measure.sampling import (fingerprint, hf_generate_fn, requests_from,
                                            resolve_backend, sample_table, set_threads)
    from relbudget.core.schemas import ROLLOUTS, write_table

    set_threads(args.threads)
    # every row (up to --n-prompts) is measured: no eval rows are carved out of the file
    prompts, _ = load_hf_prompts(source_of(args), args.n_prompts, 0, args.seed)
    if resolve_backend(args.backend) == "vllm":  # not installed: one line before any load
        from relbudget.measure.sampling.vllm_backend import vllm_generate_fn

        gen, tok = vllm_generate_fn(args.model, args.max_tokens, args.temperature, 1.0, True,
                                    args.trust_remote_code)
    else:
        model, tok = load_policy(args.model, trust_remote_code=args.trust_remote_code)
        model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        gen = hf_generate_fn(model, tok, args.max_tokens, args.temperature, 1.0, True,
                             args.batch_size)
    prompts = render_prompts(prompts, tok, args.chat_template)
    if args.backend != "vllm":  # vLLM checks the length against its own engine
        check_prompt_room(prompts, tok, args.max_tokens, context_of(model), "measure")
    out = Path(args.out)
    chunk_dir = out.parent / f".{out.stem}.chunks"
    fp = fingerprint(args.model, args.backend, args.attempts, args.max_tokens, args.temperature,
                     args.seed, prompts[["prompt_id", "prompt", "answer"]].values.tolist())
    table = sample_table(gen, tok, requests_from(prompts), args.attempts, args.max_tokens,
                         args.seed, policy=str(args.model), chunk_prompts=args.chunk_prompts,
                         chunk_dir=chunk_dir, fingerprint=fp, desc="measure")
    write_table(table, ROLLOUTS, out)
    import shutil

    shutil.rmtree(chunk_dir, ignore_errors=True)
    return table


def add_parser(sub, plan_printer) -> None:
    p = sub.add_parser("measure", help="sample a rollout table for any HF model and dataset, then "
                       "plan max_completion_length for a target xi")
    p.add_argument("--model", required=True, metavar="NAME_OR_PATH", help="HF causal LM")
    p.add_argument("--dataset", required=True, metavar="SOURCE",
                   help="HF hub dataset name, or a local .jsonl/.json/.parquet/.csv file")
    p.add_argument("--config", default=None, help="dataset config name (e.g. main for gsm8k)")
    p.add_argument("--split", default="train", help="dataset split (hub datasets; default train)")
    p.add_argument("--column-map", dest="column_map", default=None, metavar="prompt=COL,answer=COL",
                   help="dataset columns of the prompt and the gold answer (default "
                   "prompt=question,answer=answer; id=COL optional)")
    p.add_argument("--answer-format", dest="answer_format", default="gsm8k",
                   choices=["gsm8k", "math", "int", "prose"], help="how answers are verified")
    p.add_argument("--prompt-template", dest="prompt_template", default="{prompt}",
                   help="format string around each prompt, with {prompt}")
    p.add_argument("--chat-template", dest="chat_template", default="auto",
                   choices=["auto", "on", "off"], help="give prompts through the chat template")
    p.add_argument("--attempts", type=int, required=True, metavar="K")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, required=True, metavar="HMAX")
    p.add_argument("--n-prompts", dest="n_prompts", type=int, default=64, metavar="N",
                   help="prompts drawn at random from the split (default 64)")
    p.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    p.add_argument("--target-xi", dest="target_xi", type=float, default=1.75, metavar="X",
                   help="target relative budget (default 1.75, inside the paper's [1.5, 2.0])")
    p.add_argument("--group-size", dest="group_size", type=int, default=None, metavar="G",
                   help="GRPO group size (num_generations) for P_inf (default 8)")
    p.add_argument("--reward", choices=["within", "final", "budget"], default="within")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    p.add_argument("--chunk-prompts", dest="chunk_prompts", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--trust-remote-code", dest="trust_remote_code", action="store_true")
    p.add_argument("--out", required=True, metavar="FILE", help="rollout table to write (parquet)")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")

    def run(args: argparse.Namespace) -> int:
        check_flags(args)  # before the model loads or anything is sampled
        sample(args)
        print(f"rollout table: {args.out}", file=sys.stderr if args.json else sys.stdout)
        args.rollouts = args.out
        args.allow_mixed = False  # one policy, one cap: what plan expects
        return plan_printer(args, extra=_grpo_line)

    p.set_defaults(func=run)


def check_flags(args: argparse.Namespace) -> None:
    """Every numeric flag in the bounds params.yaml has for the same knob, and --out a file that
    can be written, before any compute (a hostile probe found --threads 0 a traceback,
    --attempts 10^8 growing memory without a check, and a folder --out refused after sampling)."""
    import math

    from relbudget.core.io import check_writable
    from relbudget.core.params import MAX_ATTEMPTS, MAX_BATCH, MAX_THREADS, MAX_TOKENS, check_xi

    for flag, v, top in (("--attempts", args.attempts, MAX_ATTEMPTS), ("--max-tokens", args.max_tokens,
                          MAX_TOKENS), ("--n-prompts", args.n_prompts, 10**7),
                         ("--batch-size", args.batch_size, MAX_BATCH),
                         ("--chunk-prompts", args.chunk_prompts, 10**7),
                         ("--threads", args.threads, MAX_THREADS)):
        if not 1 <= v <= top:
            raise ValueError(f"{flag} must be in 1..{top}, got {v}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ValueError(f"--temperature must be a finite number > 0, got {args.temperature}")
    check_xi(args.target_xi, "--target-xi")
    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a folder; give the path of a parquet file")
    check_writable([args.out])


def _grpo_line(out: dict) -> str:
    return f"GRPOConfig(max_completion_length={int(out['H'])})"
