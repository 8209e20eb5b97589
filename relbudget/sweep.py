"""A sweep over xi values and seeds, with the efficiency curve drawn with error bars.

    python -m relbudget.sweep --xi 0.25 0.5 1 1.75 3 6 --seeds 0 1 2

Reuses the pipeline's prepared data, base policy and base rollouts (run `dvc repro xi` first),
and runs the very same stage functions (xi, train, evaluate, report) once per seed with the swept
regimes, each under its own output root `data/sweep/seedN/` and each as MLflow runs. Then it
aggregates every seed's report metrics into `data/sweep/report.md`, `efficiency.png` (mean and
standard error over seeds) and `metrics.json`.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from relbudget.io import write_json, write_text
from relbudget.params import Params, load_params
from relbudget.plots import efficiency

log = logging.getLogger("relbudget.sweep")


def regime_name(xi: float) -> str:
    return "xi_" + f"{xi:g}".replace(".", "_")


def seed_params(base: Params, xis: list[float], seed: int, root: Path,
                token_budget: int | None) -> Params:
    """The pipeline's params with the swept regimes, this seed, and outputs under root."""
    paths = base.paths.model_copy(update={
        "xi": str(root / "xi"), "models": str(root / "models"), "train": str(root / "train"),
        "eval": str(root / "eval"), "report": str(root / "report")})
    train = base.train.model_copy(update={"seed": seed, **({"token_budget": token_budget}
                                                           if token_budget else {})})
    return base.model_copy(update={
        "paths": paths, "regimes": {regime_name(x): x for x in xis}, "train": train,
        "evaluate": base.evaluate.model_copy(update={"seed": base.evaluate.seed + 1000 * seed})})


def run_seed(params: Params) -> dict:
    from stages import evaluate, report, train, xi
    from stages._cli import execute

    execute("xi", xi.run, params, xi.SECTIONS)
    for regime in params.regimes:
        execute("train", train.run, params, train.SECTIONS, regime)
        execute("evaluate", evaluate.run, params, evaluate.SECTIONS, regime)
    execute("evaluate", evaluate.run, params, evaluate.SECTIONS, "base")
    return execute("report", report.run, params, report.SECTIONS)


def aggregate(per_seed: dict[int, dict]) -> pd.DataFrame:
    """Mean and standard error over seeds of each regime's efficiency figures."""
    rows = [{"seed": s, **r} for s, m in per_seed.items() for r in m["regimes"].values()]
    df = pd.DataFrame(rows)
    cols = ["gain_per_100k", "E_T_fall_per_100k", "acc_H_eval", "gain"]
    g = df.groupby(["regime", "xi"], as_index=False)[cols]
    mean = g.mean()
    err = g.sem(ddof=1).rename(columns={c: f"{c}_err" for c in cols})
    out = mean.merge(err, on=["regime", "xi"]).sort_values("xi")
    out["n_seeds"] = df.groupby("regime")["seed"].nunique().reindex(out["regime"]).to_numpy()
    return out


def render(table: pd.DataFrame, seconds: float, seeds: list[int]) -> str:
    lines = ["# relbudget sweep", "",
             f"Seeds {seeds}; run time {seconds / 60:.1f} min. Mean +- standard error over seeds.",
             "", "| regime | xi | accuracy gain per 100k tokens | fall in E[T] per 100k tokens | "
             "acc@H_eval |", "|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.regime} | {r.xi:.2f} | {r.gain_per_100k:+.3f} +- "
                     f"{np.nan_to_num(r.gain_per_100k_err):.3f} | {r.E_T_fall_per_100k:+.2f} +- "
                     f"{np.nan_to_num(r.E_T_fall_per_100k_err):.2f} | {r.acc_H_eval:.3f} |")
    lines += ["", "![efficiency](efficiency.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from stages._cli import setup_logging

    setup_logging()
    ap = argparse.ArgumentParser(prog="python -m relbudget.sweep")
    ap.add_argument("--xi", type=float, nargs="+", default=[0.25, 0.5, 1.0, 1.75, 3.0, 6.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="data/sweep")
    ap.add_argument("--token-budget", type=int, default=None)
    args = ap.parse_args(argv)
    if any(x <= 0 for x in args.xi):
        ap.error("--xi values must be > 0")
    base = load_params(args.params)
    if not Path(base.paths.rollouts).exists():
        ap.error(f"{base.paths.rollouts} not found: run `dvc repro xi` first")
    out, t0, per_seed = Path(args.out), time.time(), {}
    for seed in args.seeds:
        log.info("sweep seed %d: regimes %s", seed, args.xi)
        per_seed[seed] = run_seed(seed_params(base, args.xi, seed, out / f"seed{seed}",
                                              args.token_budget))
    table = aggregate(per_seed)
    seconds = time.time() - t0
    efficiency(table, out / "efficiency.png", tuple(base.report.paper_band))
    write_json({"seeds": args.seeds, "seconds": seconds,
                "regimes": table.to_dict(orient="records")}, out / "metrics.json")
    report = render(table, seconds, args.seeds)
    write_text(report, out / "report.md")
    print(report)


if __name__ == "__main__":
    main()
