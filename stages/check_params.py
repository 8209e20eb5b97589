"""check_params: check the whole params.yaml before any other stage runs.

`dvc repro` removes a stage's outputs before it runs the stage's command, so a stage that refused
its params itself would refuse them only after its old outputs were gone. Every stage of dvc.yaml
depends on this stage's mark (`paths.params_ok`), and this stage depends on every param of
params.yaml, so an edit anywhere reruns it first: invalid params stop `dvc repro` here, with the
one-line error of every stage, before DVC touches any output. The mark's bytes never change, so
rerunning this stage never reruns another one.
"""

from __future__ import annotations

from relbudget.core.io import write_text
from relbudget.core.params import Params

SECTIONS = list(Params.model_fields)  # it reads all of params.yaml (load_params, in stages._cli)
MARK = "params.yaml passed every check of relbudget.core.params\n"


def run(params: Params) -> dict:
    write_text(MARK, params.paths.params_ok)
    return {}


if __name__ == "__main__":
    from stages._cli import main

    main("check_params", run, SECTIONS)
