"""The flow's DAG, read from dvc.yaml through DVC's own loader: the edges are written once.

DVC expands foreach/matrix, resolves `${...}` and links each stage to the stages whose outs its
deps read (`Repo.index.graph`). It resolves against the flow's params, not ./params.yaml: the
regimes, xi values, seeds and arms that fan stages out are the flow's, and the flow may be given
another params file. The flow takes only the shape from DVC (each stage's name, the module and key
of its `cmd`, its upstream stages); the files a task reads and writes still come from
relbudget.core.paths, re-rooted under the flow's out_root.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import yaml

from relbudget.core.params import Params

PROJECT = Path(__file__).resolve().parent.parent
DVC_YAML = PROJECT / "dvc.yaml"  # the DAG of the stage code beside it
CMD = re.compile(r"^python -m stages\.(\w+)(?: (\S+))?$")  # how every stage is entered (_cli)


class DagError(ValueError):
    """dvc.yaml cannot be read as the flow's DAG; the message names the file or the stage."""


class Step(NamedTuple):
    """One stage execution of the flow."""

    label: str  # DVC's stage name: evaluate_base, sweep@0.25-0, arm@controller-0
    module: str  # stages.<module> runs it
    key: str | None  # the module's argument: 'base', a sweep cell, an arm run, a seed, a task
    upstream: tuple[str, ...]  # labels of the stages whose outs its deps read


def parse_cmd(name: str, cmd: object) -> tuple[str, str | None]:
    """(module, key) of a stage's `python -m stages.NAME [KEY]`."""
    m = CMD.match(cmd) if isinstance(cmd, str) else None
    if not m:
        raise DagError(f"dvc.yaml stage {name}: cmd {cmd!r} is not `python -m stages.NAME [KEY]`")
    return m.group(1), m.group(2)


def dvc_stages(params: Params, dvc_yaml: Path = DVC_YAML) -> tuple[list[tuple[str, str]],
                                                                      dict[str, set[str]]]:
    """[(name, cmd)] in dvc.yaml's order and {name: the names it reads from}, as DVC loads
    dvc_yaml with `params` as its params.yaml (in a scratch folder: nothing is written beside
    dvc.yaml, and no .dvc/ is needed)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.scm import SCM

    if not Path(dvc_yaml).is_file():
        raise DagError(f"no DAG: {dvc_yaml} not found")
    with tempfile.TemporaryDirectory(prefix="relbudget-dag-") as tmp:
        shutil.copyfile(dvc_yaml, Path(tmp, "dvc.yaml"))
        # the validated params, complete: what the stages will run on
        Path(tmp, "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
        try:
            with Repo(tmp, uninitialized=True, scm=SCM(tmp, no_scm=True)) as repo:
                if Path(repo.root_dir).resolve() != Path(tmp).resolve():  # TMPDIR in a DVC repo
                    raise DagError(f"{tmp} lies inside the DVC repository {repo.root_dir}; "
                                   "set TMPDIR elsewhere")
                with warnings.catch_warnings():  # pygtrie's deprecation, once per out, in DVC
                    warnings.simplefilter("ignore", DeprecationWarning)
                    graph = repo.index.graph  # edges: stage -> the stages it depends on
                stages = [(s.name, s.cmd) for s in repo.index.stages]
                needs = {s.name: {d.name for d in graph.successors(s)} for s in graph}
        except DvcException as err:
            raise DagError(f"{dvc_yaml}: {err}") from None
    return stages, needs


def plan(params: Params, dvc_yaml: Path = DVC_YAML) -> list[Step]:
    """The flow's stage executions, each after its upstream; otherwise in dvc.yaml's order, so
    the flow's summary reads like the file."""
    stages, needs = dvc_stages(params, dvc_yaml)
    cmds, order = dict(stages), {name: i for i, (name, _) in enumerate(stages)}
    steps, placed, todo = [], set(), list(cmds)
    while todo:  # DVC refused cycles, so some stage is always ready
        name = next(n for n in todo if needs[n] <= placed)
        todo.remove(name)
        placed.add(name)
        steps.append(Step(name, *parse_cmd(name, cmds[name]),
                          tuple(sorted(needs[name], key=order.get))))
    return steps
