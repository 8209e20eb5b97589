"""HF generate vs vLLM (CPU build) on SmolLM2-135M-Instruct, and early exit with vLLM.

Figures, not a test (no asserts). Run in the vLLM virtualenv:

    .venv-vllm/bin/python benchmarks/bench_vllm.py            # ~10 min on 2 cores
    .venv-vllm/bin/python benchmarks/bench_vllm.py --json out.json

1. Throughput: the same model (the GGUF dequantised to float32 safetensors), the same prompts
   (the built-in task in natural language), the same sampling, early exit off. tokens/s =
   recorded tokens (the rollout table's n_tokens) / wall seconds of sampling; engine start and
   model load are reported apart.
2. Early exit on SmolLM2 and on a "chatty" tiny policy (the built-in architecture trained to
   write its answer and keep going, so a hit happens mid-text): none vs the logits processor.
   Recorded tokens are what the table counts (the same semantics as the HF backend); generated
   tokens are what the engine sampled (a forced EOS per hit); prefilled tokens count prompts.
   (A chunked early-exit mode was measured and removed: docs/benchmarks.md.)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def natural_requests(n: int, seed: int, chat_tok=None):
    """The built-in task in English, through the chat template (as sample_t gives it) when
    `chat_tok` is given."""
    from relbudget.measure.models import render_prompts
    from relbudget.measure.sampling import requests_from
    from relbudget.measure.task import builtin_splits

    train, _ = builtin_splits(n, 4, [1, 2], 2, seed=seed, style="natural")
    return requests_from(train if chat_tok is None else render_prompts(train, chat_tok))


def table_figures(table, seconds: float, extra: dict | None = None) -> dict:
    tokens = int(table["n_tokens"].sum())
    out = {"attempts": len(table), "tokens": tokens, "seconds": round(seconds, 2),
           "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
           "hit_rate": round(float(table["first_correct_token"].notna().mean()), 3),
           "stop_reasons": table["stop_reason"].value_counts().to_dict()}
    out.update(extra or {})
    return out


def run_sampling(fn, tok, reqs, args, policy: str):
    from relbudget.measure.sampling import sample_table

    t0 = time.time()
    table = sample_table(fn, tok, reqs, args.attempts, args.max_tokens, seed=0, policy=policy,
                         chunk_prompts=args.chunk_prompts, desc=policy)
    return table, time.time() - t0


def raw_rows(reqs, args):
    """The raw-decode batch: the prompts cycled to args.raw_rows rows."""
    return [reqs[i % len(reqs)] for i in range(args.raw_rows)]


def hf_raw_decode(model, tok, reqs, args) -> dict:
    """Every row generates exactly raw_tokens tokens (no EOS, no padding waste)."""
    import torch

    prompts = [r.prompt for r in raw_rows(reqs, args)]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    t0 = time.time()
    with torch.no_grad():
        model.generate(**enc, do_sample=True, temperature=args.temperature, top_k=0,
                       min_new_tokens=args.raw_tokens, max_new_tokens=args.raw_tokens,
                       pad_token_id=tok.pad_token_id)
    raw_s = time.time() - t0
    n = len(prompts) * args.raw_tokens
    return {"rows": len(prompts), "tokens": n, "seconds": round(raw_s, 2),
            "tokens_per_s": round(n / raw_s, 1)}


def bench_hf(folder: str, reqs, args) -> dict:
    import torch

    from relbudget.measure.models import load_policy
    from relbudget.measure.sampling import hf_generate_fn

    torch.set_num_threads(args.threads)
    t0 = time.time()
    model, tok = load_policy(folder)
    model.eval()
    load_s = time.time() - t0
    fn = hf_generate_fn(model, tok, args.max_tokens, args.temperature, 1.0, False,
                        args.chunk_prompts * args.attempts)
    if args.raw_only:
        out = {"load_s": round(load_s, 1), "raw_decode": hf_raw_decode(model, tok, reqs, args)}
        del model
        return out
    table, secs = run_sampling(fn, tok, reqs, args, "hf")
    out = table_figures(table, secs, {"load_s": round(load_s, 1), "dtype": "float32",
                                      "torch_threads": args.threads})
    out["raw_decode"] = hf_raw_decode(model, tok, reqs, args)
    del model
    return out


def vllm_raw_decode(ref: str, reqs, args, opts) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from relbudget.measure.sampling import vllm_backend as vb

    llm, tok_src = vb.get_engine(ref, opts)
    from relbudget.measure.models import load_tokenizer

    tok = load_tokenizer(tok_src)
    prompts = [TokensPrompt(prompt_token_ids=tok(r.prompt, add_special_tokens=False)["input_ids"])
               for r in raw_rows(reqs, args)]
    sp = SamplingParams(max_tokens=args.raw_tokens, min_tokens=args.raw_tokens, ignore_eos=True,
                        temperature=args.temperature, top_k=0, seed=0, detokenize=False)
    t0 = time.time()
    outs = llm.generate(prompts, sp, use_tqdm=False)
    secs = time.time() - t0
    n = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"rows": len(prompts), "tokens": n, "seconds": round(secs, 2),
            "tokens_per_s": round(n / secs, 1)}


def bench_vllm_modes(ref: str, reqs, args, label: str, opts) -> dict:
    from relbudget.measure.sampling import vllm_backend as vb

    out = {}
    t0 = time.time()
    vb.get_engine(ref, opts)
    out["engine_start_s"] = round(time.time() - t0, 1)
    for mode in ("none", "logits"):
        stats = vb.RunStats()
        fn, tok = vb.vllm_generate_fn(ref, args.max_tokens, args.temperature, 1.0, mode != "none",
                                      options=opts, stats=stats)
        table, secs = run_sampling(fn, tok, reqs, args, f"{label}:{mode}")
        out[mode] = table_figures(table, secs, {
            "generated": stats.generated, "prefilled": stats.prefilled,
            "rounds": stats.rounds, "engine_tokens_per_s":
                round(stats.generated / max(stats.seconds, 1e-9), 1)})
        print(f"  {label:8s} {mode:12s} {json.dumps(out[mode])}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--attempts", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--chunk-prompts", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1,
                    help="HF torch threads (1: vLLM's CPU worker also computes on one core, the "
                         "other is reserved for its engine; 2 threads were 10x slower here)")
    ap.add_argument("--dtype", default="float32", help="vLLM dtype (HF always runs float32)")
    ap.add_argument("--block-size", type=int, default=32, help="vLLM KV block")
    ap.add_argument("--raw-prompts", action="store_true",
                    help="no chat template (SmolLM2 then mostly answers with an immediate EOS)")
    ap.add_argument("--raw-rows", type=int, default=16, help="raw decode: rows in one batch")
    ap.add_argument("--raw-tokens", type=int, default=128, help="raw decode: tokens per row")
    ap.add_argument("--raw-only", action="store_true",
                    help="only the raw-decode comparison (implies --skip-tiny)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--tiny-steps", type=int, default=200)
    ap.add_argument("--tiny-prompts", type=int, default=128)
    ap.add_argument("--tiny-attempts", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from relbudget.measure.models import load_tokenizer

    from relbudget.measure.sampling import vllm_backend as vb

    results: dict = {"args": {k: str(v) for k, v in vars(args).items()},
                     "load_average_at_start": os.getloadavg()}
    folder = str(vb.smollm2_hf_folder())
    tok = load_tokenizer(folder)
    reqs = natural_requests(args.prompts, 0, None if args.raw_prompts else tok)
    print(f"SmolLM2-135M-Instruct ({folder}), {len(reqs)} prompts x {args.attempts} attempts, "
          f"cap {args.max_tokens}, T={args.temperature}, "
          f"{'raw' if args.raw_prompts else 'chat-template'} prompts", flush=True)

    if not args.skip_hf:
        results["smollm2_hf"] = bench_hf(folder, reqs, args)
        print(f"  hf       none         {json.dumps(results['smollm2_hf'])}", flush=True)
    opts = vb.EngineOptions(dtype=args.dtype, block_size=args.block_size, max_model_len=1024)
    results["smollm2_vllm"] = {} if args.raw_only else bench_vllm_modes(
        folder, reqs, args, "smollm2", opts)
    results["smollm2_vllm"]["raw_decode"] = vllm_raw_decode(folder, reqs, args, opts)
    print(f"  smollm2  raw_decode   {json.dumps(results['smollm2_vllm']['raw_decode'])}")
    vb.shutdown_engines()

    if not (args.skip_tiny or args.raw_only):
        from relbudget.measure.sampling import requests_from
        from relbudget.measure.task import builtin_splits
        from relbudget.testing import build_chatty_policy

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            tiny = build_chatty_policy(Path(tmp) / "tiny", args.tiny_steps)
            results["tiny_pretrain_s"] = round(time.time() - t0, 1)
            train, _ = builtin_splits(args.tiny_prompts, 4, [1, 2], 2, seed=1)
            treqs = requests_from(train)
            targs = argparse.Namespace(**{**vars(args), "max_tokens": 96, "temperature": 1.0,
                                          "attempts": args.tiny_attempts, "chunk_prompts": 32})
            topts = vb.EngineOptions(block_size=args.block_size)
            print(f"tiny chatty policy: {len(treqs)} prompts x {args.tiny_attempts}, cap 96, T=1",
                  flush=True)
            results["tiny_vllm"] = bench_vllm_modes(str(tiny), treqs, targs, "tiny", topts)
            vb.shutdown_engines()

    summary = {}
    if "smollm2_hf" in results and not args.raw_only:
        hf_tps = results["smollm2_hf"]["tokens_per_s"]
        v_tps = results["smollm2_vllm"]["none"]["tokens_per_s"]
        summary["vllm_over_hf_tokens_per_s"] = round(v_tps / hf_tps, 2)
        print(f"\nthroughput (sampling workload)  HF {hf_tps} tok/s  vLLM {v_tps} tok/s  ratio "
              f"{summary['vllm_over_hf_tokens_per_s']}x (goal >= 2.5x)")
    if "smollm2_hf" in results:
        hr = results["smollm2_hf"]["raw_decode"]["tokens_per_s"]
        vr = results["smollm2_vllm"]["raw_decode"]["tokens_per_s"]
        summary["vllm_over_hf_raw_decode"] = round(vr / hr, 2)
        print(f"throughput (raw decode, {args.raw_rows} rows x {args.raw_tokens} tokens)  HF {hr} "
              f"tok/s  vLLM {vr} tok/s  ratio {summary['vllm_over_hf_raw_decode']}x")
    for key in ("smollm2_vllm", "tiny_vllm"):
        if not results.get(key):
            continue
        r = results[key]
        base = r["none"]
        for name, fig in r.items():
            if not isinstance(fig, dict) or name in ("none", "raw_decode"):
                continue
            summary[f"{key}:{name}"] = {
                "recorded_tokens_vs_none": round(fig["tokens"] / max(base["tokens"], 1), 3),
                "generated_tokens_vs_none": round(fig["generated"] / max(base["generated"], 1), 3),
                "seconds_vs_none": round(fig["seconds"] / max(base["seconds"], 1e-9), 3)}
            print(f"{key:13s} {name:12s} recorded {fig['tokens']:6d} generated "
                  f"{fig['generated']:6d} prefilled {fig['prefilled']:6d} "
                  f"{fig['seconds']:6.1f}s  (no early exit: {base['tokens']} tokens, "
                  f"{base['seconds']:.1f}s)")
    results["summary"] = summary
    results["load_average_at_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
