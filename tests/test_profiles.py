"""The params profiles under params/: complete files, run the documented way, in their own tree.

A profile is run by copying it over params.yaml (`cp params/NAME.yaml params.yaml && dvc repro`).
So each one is loaded here through DVC's own loader, in a temp repo holding the project's dvc.yaml
and the profile as params.yaml: DVC must resolve every stage (a `${sweep.xi}` missing from the
profile fails here, as it would for the user), relbudget must validate it (no key may be missing:
the code holds no defaults), and every file the profile's stages read or write must lie under
profiles/NAME/ and be none of the default study's, the git-tracked metrics included.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relbudget.core.params import load_params

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted((ROOT / "params").glob("*.yaml"))


def dvc_files(tmp: Path, params_file: Path) -> tuple[set[str], set[str]]:
    """(outputs, data deps) of every stage DVC resolves from dvc.yaml with `params_file` as
    params.yaml: outs, metrics and plots; deps other than code."""
    from dvc.repo import Repo

    tmp.mkdir()
    shutil.copy(ROOT / "dvc.yaml", tmp / "dvc.yaml")
    shutil.copy(params_file, tmp / "params.yaml")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp, check=True)
    with Repo(str(tmp)) as repo:
        stages = list(repo.index.stages)
    rel = lambda p: Path(p).resolve().relative_to(tmp.resolve()).as_posix()  # noqa: E731
    outs = {rel(o.fs_path) for s in stages for o in s.outs}
    deps = {rel(d.fs_path) for s in stages for d in s.deps
            if not hasattr(d, "params") and rel(d.fs_path).split("/")[0] not in ("relbudget", "stages")}
    assert stages and outs
    return outs, deps


@pytest.fixture(scope="module")
def default_files(tmp_path_factory) -> tuple[set[str], set[str]]:
    return dvc_files(tmp_path_factory.mktemp("default") / "repo", ROOT / "params.yaml")


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_profile_is_complete_and_runs_in_its_own_tree(profile, tmp_path, default_files):
    load_params(profile)  # every key present and valid (the models hold no defaults)
    outs, deps = dvc_files(tmp_path / "repo", profile)
    root = f"profiles/{profile.stem}/"
    outside = sorted(p for p in outs | deps if not p.startswith(root))
    assert not outside, f"{profile.name}: files outside {root}: {outside}"
    default_outs, _ = default_files
    assert not (outs & default_outs), sorted(outs & default_outs)
    assert f"{root}metrics/headline.json" in outs  # its own git-tracked headline


def test_a_profile_missing_a_section_is_refused_by_dvc_and_by_relbudget(tmp_path):
    """What the profiles looked like before: no sweep section. DVC cannot resolve the sweep
    matrix, and relbudget names the missing key; both before any stage runs."""
    from dvc.exceptions import DvcException

    from relbudget.core.params import ParamsError

    text = (ROOT / "params.yaml").read_text()
    head, _, tail = text.partition("\nsweep:")
    cut = head + "\n" + tail[tail.index("\narms:"):]
    bad = tmp_path / "bad.yaml"
    bad.write_text(cut)
    with pytest.raises(ParamsError, match=r"sweep: missing"):
        load_params(bad)
    with pytest.raises(DvcException, match="sweep"):
        dvc_files(tmp_path / "repo", bad)


def test_the_default_study_writes_under_data_and_metrics(default_files):
    outs, _ = default_files
    assert all(p.startswith(("data/", "metrics/")) for p in outs), sorted(outs)
