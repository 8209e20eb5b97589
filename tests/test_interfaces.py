"""Each dvc.yaml stage against the code it runs: the one place a stage's interface can drift.

For every stage DVC loads from dvc.yaml (its own loader: foreach/matrix expanded, ${paths.*}
resolved), with its `cmd` module `stages.NAME`:
  (a) every module of the import closure within relbudget/ and stages/ is a dep (a folder dep
      such as relbudget/measure/sampling covers its modules), else `dvc repro` keeps stale results when
      that module changes;
  (b) the params it depends on are exactly the sections and keys the stage module reads (its
      SECTIONS, the same list behind the MLflow params and the flow's cache key; `paths` aside:
      where files go, not what is computed);
  (c) its data deps, outs, metrics and plots are those relbudget.core.paths declares for it.
"""

from __future__ import annotations

import functools
import importlib
import shutil
import tempfile
import os
from pathlib import Path

import pytest

from flows.cache import code_files
from flows.dag import parse_cmd
from relbudget.core.params import NOT_SCIENCE, key_sections, load_params
from relbudget.core.paths import stage_files

ROOT = Path(__file__).resolve().parent.parent

# Modules in a stage's import closure that cannot change its outputs, so dvc.yaml leaves them out
# (editing them must not rerun the pipeline). What they import is still followed: that code runs
# in the stage's process (io's temp-file cleanup, budgets' error types), so it is a dep.
EXEMPT = {
    "stages/__init__.py": "a docstring",
    "relbudget/__init__.py": "a docstring and the version string",
    **{f"relbudget/{layer}/__init__.py": "a docstring (test_layer_packages_hold_no_code)"
       for layer in ("core", "measure", "train", "report")},
    "stages/_cli.py": "argument parsing, error messages, the MLflow run around the stage",
    "relbudget/core/tracking.py": "MLflow logging only; tracked outputs hold no run-dependent values",
}
# Every stage runs on params validated and completed with defaults by relbudget/core/params.py (through
# stages/_cli.py), so each one depends on it.
ALWAYS = ("relbudget/core/params.py",)


def _module(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


# The tasks' stages exist only where params list tasks: they are checked as params/tasks.yaml
# resolves them (PARAMS_OF: the params file each checked stage was resolved with).
TASKS_PROFILE = ROOT / "params" / "tasks.yaml"


def _dvc_stages(params_file: Path) -> list:
    from dvc.repo import Repo
    from dvc.scm import SCM

    with tempfile.TemporaryDirectory(prefix="relbudget-ifaces-") as tmp:
        shutil.copy(ROOT / "dvc.yaml", Path(tmp, "dvc.yaml"))
        shutil.copy(params_file, Path(tmp, "params.yaml"))
        with Repo(tmp, uninitialized=True, scm=SCM(tmp, no_scm=True)) as repo:
            return list(repo.index.stages)


_DEFAULT = _dvc_stages(ROOT / "params.yaml")
_TASKS = [s for s in _dvc_stages(TASKS_PROFILE)
          if s.name not in {d.name for d in _DEFAULT}]
STAGES = _DEFAULT + _TASKS
PARAMS_OF = {s.name: TASKS_PROFILE for s in _TASKS}


def _module_and_key(stage) -> tuple[str, str | None]:
    return parse_cmd(stage.name, stage.cmd)  # the flow's own reading of a cmd


def _rel(path: str) -> str:
    return Path(os.path.normpath(ROOT / path)).relative_to(ROOT).as_posix()


def _is_code(path: str) -> bool:
    return path.split("/")[0] in ("relbudget", "stages", "flows")


def _code_deps(stage) -> list[str]:
    return [_rel(d.def_path) for d in stage.deps if not hasattr(d, "params") and _is_code(_rel(d.def_path))]


def _covered(module: str, deps: list[str]) -> bool:
    return any(module == d or module.startswith(d.rstrip("/") + "/") for d in deps)


@functools.cache
def stage_closure(name: str) -> frozenset[str]:
    """The project files stages/NAME.py imports, transitively (one parse per stage module: the
    ~150 stage instances of dvc.yaml share 14 modules)."""
    return frozenset(f.relative_to(ROOT).as_posix() for f in code_files(f"stages.{name}"))


def missing_code_deps(stage) -> list[str]:
    name, _ = _module_and_key(stage)
    closure = sorted(stage_closure(name) | set(ALWAYS))
    deps = _code_deps(stage)
    return [m for m in closure if m not in EXEMPT and not _covered(m, deps)]


def _params(stage) -> set[str]:
    """The params a stage depends on; `- params.yaml:` with no keys (the check_params stage) is every
    section of the file but `paths` (NOT_SCIENCE)."""
    from relbudget.core.params import Params

    return {p for d in stage.deps if hasattr(d, "params")
            for p in (d.params or set(Params.model_fields) - NOT_SCIENCE)}


def _ids(stages) -> list[str]:
    return [s.name for s in stages]  # not addressing: it holds the scratch folder's path


@pytest.mark.parametrize("stage", STAGES, ids=_ids(STAGES))
def test_code_deps_cover_the_import_closure(stage):
    missing = missing_code_deps(stage)
    assert not missing, (f"dvc.yaml stage {stage.name} runs code it does not depend on: "
                         f"{', '.join(missing)} (add them to its deps, or to EXEMPT with a reason)")


def extra_code_deps(stage) -> list[str]:
    """Code deps the stage does not run: editing them would rerun it for nothing."""
    name, _ = _module_and_key(stage)
    closure = stage_closure(name) | set(ALWAYS)
    return [d for d in _code_deps(stage)
            if not any(m == d or m.startswith(d.rstrip("/") + "/") for m in closure - set(EXEMPT))]


@pytest.mark.parametrize("stage", STAGES, ids=_ids(STAGES))
def test_code_deps_are_only_code_the_stage_runs(stage):
    extra = extra_code_deps(stage)
    assert not extra, (f"dvc.yaml stage {stage.name} depends on code it never imports: "
                       f"{', '.join(extra)} (a change there would rerun it for nothing)")


@pytest.mark.parametrize("stage", STAGES, ids=_ids(STAGES))
def test_params_are_the_sections_the_stage_reads(stage):
    name, _ = _module_and_key(stage)
    sections = set(key_sections(importlib.import_module(f"stages.{name}").SECTIONS,
                                _module_and_key(stage)[1])) - NOT_SCIENCE
    assert _params(stage) == sections, (
        f"dvc.yaml stage {stage.name}: params {sorted(_params(stage))}, "
        f"but stages/{name}.py reads {sorted(sections)} (SECTIONS)")


@pytest.mark.parametrize("stage", STAGES, ids=_ids(STAGES))
def test_data_files_are_those_paths_declares(stage):
    name, key = _module_and_key(stage)
    files = stage_files(load_params(PARAMS_OF.get(stage.name, ROOT / "params.yaml")).paths,
                        name, key)
    data_deps = {_rel(d.def_path) for d in stage.deps
                 if not hasattr(d, "params") and not _is_code(_rel(d.def_path))}
    outs = {_rel(o.def_path) for o in stage.outs if not o.metric and not o.plot}
    metrics = {_rel(o.def_path) for o in stage.outs if o.metric}
    plots = {_rel(o.def_path) for o in stage.outs if o.plot}
    assert data_deps == set(files.deps), (stage.name, "deps")
    assert outs == set(files.outs), (stage.name, "outs")
    assert metrics == set(files.metrics), (stage.name, "metrics")
    assert plots == set(files.plots), (stage.name, "plots")


def test_every_stage_module_is_in_the_dag():
    assert {_module_and_key(s)[0] for s in STAGES} == {
        p.stem for p in (ROOT / "stages").glob("*.py") if not p.stem.startswith("_")}


def test_layer_packages_hold_no_code():
    """The layers' __init__ files are EXEMPT from deps: they must stay docstrings."""
    import ast

    for layer in ("core", "measure", "train", "report"):
        body = ast.parse((ROOT / "relbudget" / layer / "__init__.py").read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), f"relbudget/{layer}/__init__.py"
