"""relbudget.core.paths: a stage it does not know is named, with the list of those it does."""

from __future__ import annotations

import pytest

from relbudget.core.params import params_with
from relbudget.core.paths import STAGES, stage_files


def test_an_unknown_stage_is_named_with_every_known_one():
    with pytest.raises(ValueError) as err:
        stage_files(params_with({}).paths, "sweeep")
    assert str(err.value) == "unknown stage 'sweeep'; stages: " + ", ".join(STAGES)
    assert ", sweep, " in str(err.value)
