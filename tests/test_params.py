"""Params are validated before any compute; every error names the field (and the allowed values)."""

from __future__ import annotations

import pytest
import yaml

from relbudget.core.params import ParamsError, load_params, params_hash, params_with, section_hash

# (params override, text the error must contain). The list of bad inputs lives here, not in prose.
BAD = [
    ({"sampling": {"max_tokns": 10}}, "did you mean 'max_tokens'"),
    ({"samplng": {}}, "did you mean 'sampling'"),
    ({"train": {"rewrd": "within"}}, "did you mean 'reward'"),
    ({"sampling": {"attempts": 0}}, "sampling.attempts"),
    ({"sampling": {"temperature": -1}}, "sampling.temperature"),
    ({"sampling": {"backend": "tgi"}}, "'hf', 'vllm' or 'auto'"),
    ({"sampling": {"max_tokens": "many"}}, "sampling.max_tokens"),
    ({"regimes": {}}, "regimes must name at least one regime"),
    ({"regimes": {"balanced": 0}}, "target xi must be a finite number in"),
    ({"regimes": {"balanced": -2.0}}, "target xi must be a finite number in"),
    ({"regimes": {"base": 1.0}}, "other than 'base'"),
    ({"regimes": {"two words": 1.0}}, "identifier"),
    ({"xi": {"group_size": 1}}, "xi.group_size"),
    ({"xi": {"deficient_below": 4.0, "ample_above": 3.0}}, "deficient_below must be smaller"),
    ({"xi": {"ci_level": 1.5}}, "xi.ci_level"),
    ({"data": {"levels": []}}, "levels must be a non-empty list"),
    ({"data": {"levels": [9]}}, "levels must be a non-empty list"),
    ({"data": {"source": "hf"}}, "needs the 'hf' subsection"),
    ({"data": {"source": "web"}}, "'builtin' or 'hf'"),
    ({"base_policy": {"hidden_size": 30, "n_heads": 4}}, "not divisible by n_heads"),
    ({"sampling": {"max_tokens": 600}}, "must be below base_policy.max_position"),
    ({"train": {"reward": "sparse"}}, "'within', 'final' or 'budget'"),
    ({"train": {"num_generations": 1}}, "train.num_generations"),
    ({"train": {"lr": "fast"}}, "train.lr"),
    ({"evaluate": {"pass_k": [1, 16], "attempts": 8}}, "pass_k values [16]"),
    ({"base_policy": {"slip_carry": 1.0}}, "base_policy.slip_carry"),
    ({"base_policy": {"continue_rate": 1.5}}, "base_policy.continue_rate"),
    # YAML booleans are not numbers (pydantic alone would read `steps: true` as 1 step)
    ({"base_policy": {"steps": True}}, "steps = True: a boolean where a number is expected"),
    ({"data": {"n_train": False}}, "n_train = False: a boolean"),
    ({"regimes": {"balanced": True}}, "a boolean where a number is expected"),
    ({"sweep": {"seeds": [0, True]}}, "a boolean where a number is expected"),
    # DVC names the cells by the values as written: xi 1 would be folder xi1-s0, seed 0.0 s0.0
    ({"sweep": {"xi": [0.5, 1]}}, "sweep.xi: write each value as a decimal (1.0, not 1), got 1"),
    ({"sweep": {"seeds": [0.0, 1.0]}}, "sweep.seeds: write each value as an integer (0, not 0.0)"),
    ({"base_policy": {"trace_tokens": 100}, "sampling": {"max_tokens": 200}},
     "trace_tokens (100) is below sampling.max_tokens (200)"),
    ({"base_policy": {"trace_tokens": 510, "max_position": 512}}, "must be below base_policy.max_position"),
    ({"data": {"style": "chain"}}, "'retry', 'trace' or 'natural'"),
]


@pytest.mark.parametrize("override,expected", BAD, ids=[str(o) for o, _ in BAD])
def test_bad_params_name_the_field(override, expected):
    with pytest.raises(ParamsError) as err:
        params_with(override)
    assert expected in str(err.value)


def test_defaults_and_repo_params_validate():
    params_with({})
    p = load_params("params.yaml")
    assert p.regimes and p.sampling.max_tokens > 0


def test_file_errors(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ParamsError, match="mapping of sections"):
        load_params(bad)


def test_section_hash_tracks_only_its_section():
    a, b = params_with({}), params_with({"train": {"lr": 0.5}})
    assert section_hash(a.sampling) == section_hash(b.sampling)
    assert section_hash(a.train) != section_hash(b.train)


def test_params_hash_is_over_the_science_only():
    """The MLflow tag and the flow's cache key: the same science under DVC's paths and the flow's
    re-rooted ones hashes the same; any science knob changes it."""
    from flows.pipeline import rooted

    a = params_with({})
    sections = ["train", "regimes", "paths"]
    assert params_hash(a, sections) == params_hash(rooted(a, "runs/prefect"), sections)
    assert params_hash(a, sections) == params_hash(a, ["train", "regimes"])
    assert params_hash(a, sections) == params_hash(a, ["regimes", "paths", "train"])
    assert params_hash(params_with({"train": {"lr": 0.5}}), sections) != params_hash(a, sections)
    assert params_hash(params_with({"regimes": {"x": 1.0}}), sections) != params_hash(a, sections)
