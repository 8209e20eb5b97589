"""tasks_report@universality: every task's sweep on one axis, in xi and in H, each task's peak
with its bootstrap interval, and whether one xi (the theory) or one H lies in every interval
(relbudget.report.tasks).

Reads {tasks}/TASK/ of every task of params tasks.family (its E[T] summary, base evaluation and
sweep cells); writes {report}/tasks/tasks.md, metrics.json (`tasks`, `universality`), the two
plots and the git-tracked headline {metrics}/tasks.json. No timings: the same inputs give the
same bytes.
"""

from __future__ import annotations

import logging
import os

from relbudget.core.io import output_set, write_json, write_text
from relbudget.core.params import TASKS_PLOTS
from relbudget.report import analysis, headline, plots
from relbudget.report import tasks as T

log = logging.getLogger("relbudget.tasks_report")
SECTIONS = ["tasks", "sweep.xi", "sweep.seeds", "paths"]


def run(params, _name: str) -> dict:
    p = params.paths
    results = []
    for name in params.tasks.family:
        inp = T.load_task(p.task(name), params.sweep)
        table = analysis.sweep_table(inp["cells"], inp["base_eval"])
        results.append(T.task_result(name, inp["summary"]["E_T"], table,
                                     inp["summary"].get("predicted")))
    u = T.universality(results)
    pngs = [p.tasks_plot(n) for n in TASKS_PLOTS]
    with output_set():  # the cross-task files replaced together, or none
        for x, png in zip(("xi", "H"), pngs):
            plots.tasks_efficiency(results, x, png)
        write_json({"tasks": results, "universality": u}, p.tasks_metrics)
        headline.write_headline(T.headline(results, u), p.tasks_headline)
        write_text(T.markdown(results, u, *(os.path.basename(f) for f in pngs)), p.tasks_md)
    log.info(T.verdict(results, u))
    return {"tasks": results, "universality": u}


if __name__ == "__main__":
    from stages._cli import main

    main("tasks_report", run, SECTIONS, takes_regime=True)
