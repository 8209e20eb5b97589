"""The budget arms against the best fixed xi: generated tokens to reach a target accuracy.

Every arm run (stages.arm, stages.fixed_best) trains on the same token budget and seeds and is
evaluated at H_eval on the same prompts along training (history column acc_H_eval) and at the
end (arm.json). Its accuracy curve starts at the base policy's accuracy at 0 tokens. The target
accuracy is `arms.target_accuracy`, or by default halfway from the base accuracy to the best final
accuracy any arm reaches (mean over seeds). Tokens to target: the first point of the curve at or
above the target, linearly interpolated from the point before it; None when the run never gets
there within its budget.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from relbudget.core import params as P
from relbudget.core.params import arm_name
from relbudget.core.schemas import HISTORY, read_table

GOAL_RATIO = 0.8  # an adaptive arm "wins" when it needs <= 0.8x the tokens of the best fixed xi


def load_runs(paths, arms: list[str], seeds: list[int]) -> list[tuple[dict, pd.DataFrame]]:
    """(arm.json, history) of fixed_best and every arm of `arms`, for every seed."""
    runs, missing = [], []
    for arm in ["fixed_best", *arms]:
        for seed in seeds:
            name = arm_name(arm, seed)
            f = Path(paths.arm_json(name))
            if not f.exists():
                missing.append(name)
                continue
            runs.append((json.loads(f.read_text()), read_table(paths.arm_history(name), HISTORY)))
    if missing:
        raise FileNotFoundError(f"arm runs without results under {paths.arms}: "
                                f"{', '.join(missing)}; run their arm / fixed_best stages first")
    return runs


def curve(ev: dict, history: pd.DataFrame, base_acc: float) -> pd.DataFrame:
    """(tokens, accuracy at H_eval) from 0 tokens (the base policy) to the end of training."""
    pts = [(0, base_acc)]
    if "acc_H_eval" in history:
        h = history.loc[history["acc_H_eval"].notna(), ["cum_generated_tokens", "acc_H_eval"]]
        pts += [(int(t), float(a)) for t, a in h.itertuples(index=False)]
    tokens = int(history["cum_generated_tokens"].iloc[-1]) if len(history) else 0
    pts.append((tokens, float(ev["at"]["H_eval"]["accuracy"])))
    return pd.DataFrame(pts, columns=["tokens", "accuracy"])


def tokens_to_target(c: pd.DataFrame, target: float) -> float | None:
    """Tokens at which the curve first reaches `target` (linear between evaluations)."""
    acc, tok = c["accuracy"].to_numpy(float), c["tokens"].to_numpy(float)
    hit = np.flatnonzero(acc >= target)
    if not len(hit):
        return None
    i = int(hit[0])
    if i == 0:
        return 0.0
    frac = (target - acc[i - 1]) / (acc[i] - acc[i - 1])
    return float(tok[i - 1] + frac * (tok[i] - tok[i - 1]))


def default_target(base_acc: float, runs: list[tuple[dict, pd.DataFrame]]) -> float:
    """Halfway from the base accuracy to the best arm's mean final accuracy."""
    finals: dict[str, list[float]] = {}
    for ev, _ in runs:
        finals.setdefault(ev["arm"], []).append(float(ev["at"]["H_eval"]["accuracy"]))
    best = max(float(np.mean(v)) for v in finals.values())
    return base_acc + 0.5 * (best - base_acc)


def arm_rows(runs: list[tuple[dict, pd.DataFrame]], base_acc: float, target: float) -> list[dict]:
    """metrics.json `arms`: one row per run."""
    rows = []
    for ev, h in runs:
        c = curve(ev, h, base_acc)
        rows.append({"arm": ev["arm"], "seed": int(ev["seed"]), "xi": float(ev["target_xi"]),
                     "H0": int(ev["H0"]), "tokens_to_target": tokens_to_target(c, target),
                     "acc_H_eval": float(ev["at"]["H_eval"]["accuracy"]),
                     "generated_tokens": int(c["tokens"].iloc[-1]),
                     "n_evaluations": int(len(c) - 1)})
    return rows


def _mean_se(v: list[float]) -> tuple[float | None, float | None]:
    if not v:
        return None, None
    a = np.asarray(v, float)
    return float(a.mean()), (float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else None)


def summarize(rows: list[dict]) -> list[dict]:
    """Per arm: tokens to target (mean +- s.e. over the seeds that reached it, and how many did),
    its ratio to fixed_best's mean, final accuracy (mean +- s.e.)."""
    by_arm: dict[str, list[dict]] = {}
    for r in rows:
        by_arm.setdefault(r["arm"], []).append(r)
    out = []
    for arm, rs in by_arm.items():
        reached = [r["tokens_to_target"] for r in rs if r["tokens_to_target"] is not None]
        t_mean, t_se = _mean_se(reached)
        a_mean, a_se = _mean_se([r["acc_H_eval"] for r in rs])
        out.append({"arm": arm, "xi": rs[0]["xi"], "H0": rs[0]["H0"], "n_seeds": len(rs),
                    "n_reached": len(reached), "tokens_to_target": t_mean,
                    "tokens_to_target_se": t_se, "acc_H_eval": a_mean, "acc_H_eval_se": a_se})
    ref = next((s for s in out if s["arm"] == "fixed_best"), None)
    for s in out:
        ok = (ref is not None and ref["tokens_to_target"] and s["tokens_to_target"] is not None
              and s["n_reached"] == s["n_seeds"] and ref["n_reached"] == ref["n_seeds"])
        s["ratio_to_fixed_best"] = s["tokens_to_target"] / ref["tokens_to_target"] if ok else None
    return out


def sentence(summary: list[dict], target: float) -> str:
    """The result in plain words, whichever way it went."""
    ref = next((s for s in summary if s["arm"] == "fixed_best"), None)
    if ref is None or ref["tokens_to_target"] is None:
        return f"The best fixed xi never reached the target accuracy {target:.3f}; no ratio."
    parts = []
    for s in summary:
        if s["arm"] == "fixed_best":
            continue
        if s["ratio_to_fixed_best"] is None:
            parts.append(f"{s['arm']} reached it in {s['n_reached']} of {s['n_seeds']} seeds")
        else:
            parts.append(f"{s['arm']} needed {s['ratio_to_fixed_best']:.2f}x its tokens")
    wins = [s["arm"] for s in summary if s["ratio_to_fixed_best"] is not None
            and s["arm"] != "fixed_best" and s["ratio_to_fixed_best"] <= GOAL_RATIO]
    verdict = (f"{', '.join(wins)} met the goal of <= {GOAL_RATIO}x" if wins else
               f"no adaptive arm met the goal of <= {GOAL_RATIO}x the best fixed xi's tokens")
    return (f"To reach accuracy {target:.3f} at H_eval, the best fixed xi ({ref['xi']:g}) needed "
            f"{ref['tokens_to_target']:,.0f} generated tokens on mean; " + "; ".join(parts)
            + f": {verdict}.")


def budget_notes(runs: list[tuple[dict, pd.DataFrame]]) -> dict[str, dict]:
    """Per arm, what its budget did in its first seed's run: the H_t range of the controller,
    the H_x quantiles of per_prompt, the prompts the filter kept."""
    notes: dict[str, dict] = {}
    for ev, h in runs:
        if ev["arm"] in notes:
            continue
        b = dict(ev.get("budget") or {})
        keep = {k: b[k] for k in ("filter_n_kept", "filter_n_prompts", "per_prompt_H_x_q10",
                                  "per_prompt_H_x_q50", "per_prompt_H_x_q90") if k in b}
        if ev["arm"] == "controller" and len(h):
            keep.update({"H_t_min": int(h["H"].min()), "H_t_max": int(h["H"].max()),
                         "H_t_last": int(h["H"].iloc[-1])})
        notes[ev["arm"]] = {**keep, "seed": int(ev["seed"])}
    return notes


def render(summary: list[dict], target: float, budget: dict[str, dict]) -> list[str]:
    """The report's section (Markdown lines)."""
    def pm(m, e, fmt):
        if m is None:
            return "never"
        return format(m, fmt) + (f" +- {format(e, fmt)}" if e is not None else "")

    lines = ["## Adaptive budgets against the best fixed xi (compute-matched)", "",
             sentence(summary, target), "",
             "| arm | xi | H (start) | tokens to target | reached | x best fixed | acc@H_eval |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        ratio = "n/a" if s["ratio_to_fixed_best"] is None else f"{s['ratio_to_fixed_best']:.2f}"
        lines.append(f"| {s['arm']} | {s['xi']:g} | {s['H0']} | "
                     f"{pm(s['tokens_to_target'], s['tokens_to_target_se'], ',.0f')} | "
                     f"{s['n_reached']}/{s['n_seeds']} | {ratio} | "
                     f"{pm(s['acc_H_eval'], s['acc_H_eval_se'], '.3f')} |")
    lines += ["", "Tokens to target: the first evaluation at or above the target, linear between "
              "evaluations (at 0 tokens: the base policy), mean +- s.e. over the seeds that "
              "reached it. controller: H_t = xi * E_t[T] re-estimated from the policy's own "
              "rollouts; per_prompt: H_x = xi * E[T|x] from the base rollouts; filtered: fixed H "
              "on the prompts whose xi_x is in the band; fixed_best: the sweep's best xi."]
    for arm, b in budget.items():
        what = {k: v for k, v in b.items() if k != "seed"}
        if what:
            lines.append(f"- {arm} (seed {b['seed']}): " + ", ".join(
                f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in what.items()))
    lines += ["", f"![tokens to target]({P.TOKENS_TO_TARGET_PNG})", ""]
    return lines


def compare(paths, arms, seeds: list[int], base_acc: float) -> dict:
    """The whole comparison from the arm runs' files: metrics.json's `target_accuracy`, `arms`
    (one row per run) and `arms_summary`; the report's section (`markdown`, lines); the curves
    for the plot (`curves`: arm -> one frame per seed)."""
    runs = load_runs(paths, arms.arms, seeds)
    target = arms.target_accuracy if arms.target_accuracy is not None else default_target(base_acc, runs)
    rows = arm_rows(runs, base_acc, target)
    summary = summarize(rows)
    curves: dict[str, list[pd.DataFrame]] = {}
    for ev, h in runs:
        curves.setdefault(ev["arm"], []).append(curve(ev, h, base_acc))
    return {"target_accuracy": float(target), "arms": rows, "arms_summary": summary,
            "markdown": render(summary, target, budget_notes(runs)), "curves": curves}
