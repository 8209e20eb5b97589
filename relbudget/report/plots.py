"""matplotlib figures for the xi stage and the report (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from relbudget.measure import estimators as est  # noqa: E402
from relbudget.core.io import atomic_path  # noqa: E402

REGIME_COLORS = {"deficient": "tab:red", "balanced": "tab:green", "ample": "tab:blue"}


def _save(fig, path: str | Path) -> None:
    """Write a PNG deterministically: the same figure gives the same bytes (the plots are DVC
    outputs). Agg's PNG holds no date; the "Software" text chunk (matplotlib's version) is
    dropped too, so only what is drawn decides the bytes."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def xi_curves(curves: pd.DataFrame, budgets: dict, path: str | Path,
              band: tuple[float, float] | None = (1.5, 2.0)) -> None:
    """p(H), reward variance p(1-p) and P_inf(H, G) against xi, the regimes' budgets marked."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(curves["xi"], curves["p"], label="p(H) = P(T <= H)")
    ax.plot(curves["xi"], curves["reward_var"], label="reward variance p(1-p)")
    ax.plot(curves["xi"], curves["p_informative"], label="P_inf(H, G) (share of informative groups)")
    if band:
        ax.axvspan(*band, color="grey", alpha=0.15, label=f"paper's band xi in [{band[0]}, {band[1]}]")
    for name, b in budgets.items():
        color = REGIME_COLORS.get(b.get("regime", ""), "black")
        ax.axvline(b["xi"], color=color, ls="--", lw=1)
        ax.text(b["xi"], 1.02, f"{name}\nH={b['H']}", color=color, ha="center", va="bottom",
                fontsize=8, transform=ax.get_xaxis_transform())
    ax.set_xlabel("xi = H / E[T]")
    ax.set_ylim(0, 1.0)
    ax.legend(fontsize=8, loc="center right")
    ax.grid(alpha=0.3)
    _save(fig, path)


def learning_curves(histories: dict[str, list[pd.DataFrame]], path: str | Path) -> None:
    """Reward and xi_t = H / E_t[T] against generated completion tokens: one colour per regime,
    one line per seed (the regime's sweep cells)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, runs) in enumerate(histories.items()):
        for j, h in enumerate(runs):
            x, style = h["cum_generated_tokens"] / 1e3, {"color": f"C{i}", "lw": 1.2, "alpha": 0.8,
                                                        "label": name if j == 0 else None}
            a.plot(x, h["reward_mean"].rolling(3, min_periods=1).mean(), **style)
            b.plot(x, h["xi_t"], **style)
    a.set(xlabel="generated completion tokens (thousands)", ylabel="reward mean (rolling 3)",
          title="reward")
    b.set(xlabel="generated completion tokens (thousands)", ylabel="xi_t = H / E_t[T]",
          title="xi over training (from each step's own rollouts)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def efficiency(rows: pd.DataFrame, path: str | Path, band: tuple[float, float] = (1.5, 2.0),
               regimes: pd.DataFrame | None = None, peak: dict | None = None) -> None:
    """Gain in accuracy at H_eval and fall in E[T], per 100k generated tokens, against xi (log).

    `rows` has columns xi, gain_per_100k, E_T_fall_per_100k and optional *_err columns
    (standard errors over seeds) drawn as error bars; `regimes` (same columns, `regime` and
    `target_xi`) are drawn as labelled markers at their grid xi (on the sweep's own point);
    `peak` ({xi, low, high}) as a line with its interval shaded.
    """
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, col, label in ((a, "gain_per_100k", "accuracy gain at H_eval per 100k tokens"),
                           (b, "E_T_fall_per_100k", "fall in E[T] per 100k tokens")):
        ax.axvspan(*band, color="grey", alpha=0.15, label=f"paper's band [{band[0]}, {band[1]}]")
        err = rows[f"{col}_err"].fillna(0) if f"{col}_err" in rows else None
        ax.errorbar(rows["xi"], rows[col], yerr=err, marker="o", capsize=3, lw=1.5,
                    label="mean +- s.e. over seeds" if err is not None else None)
        if regimes is not None and len(regimes):
            y = pd.to_numeric(regimes[col], errors="coerce")  # None (no rate) -> NaN, not drawn
            ax.scatter(regimes["target_xi"], y, marker="x", color="tab:red", zorder=3,
                       label="named regimes")
            for name, x, v in zip(regimes["regime"], regimes["target_xi"], y):
                if np.isfinite(v):
                    ax.annotate(str(name), (x, v), fontsize=8, xytext=(4, 4),
                                textcoords="offset points")
        if peak is not None and ax is a:
            ax.axvline(peak["xi"], color="tab:green", lw=1, label=f"peak xi = {peak['xi']:g}")
            if peak["high"] is not None and peak["high"] > peak["low"]:
                ax.axvspan(peak["low"], peak["high"], color="tab:green", alpha=0.08)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(sorted(rows["xi"]))
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set(xlabel="xi = H / E[T] (base policy)", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def predicted(curve: pd.DataFrame, peak: dict, path: str | Path) -> None:
    """Measured efficiency against xi (log) with the curves predicted before training, each
    normalised to its own maximum; the measured peak's interval shaded."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if peak["high"] is not None and peak["low"] is not None and peak["high"] > peak["low"]:
        ax.axvspan(peak["low"], peak["high"], color="tab:green", alpha=0.08,
                   label=f"measured peak interval [{peak['low']:g}, {peak['high']:g}]")
    for col, style, label in (("measured", "o-", "measured (sweep mean over seeds)"),
                              ("predicted", "s--", "predicted (sqrt informative groups / token)"),
                              ("static", "^:", "static baseline (P_inf / token)")):
        ax.plot(curve["xi"], curve[col], style, lw=1.5, label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks(sorted(curve["xi"]))
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set(xlabel="xi = H / E[T] (base policy)", ylabel="efficiency / its maximum")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def xi_t_sweep(histories: dict[float, list[pd.DataFrame]], slopes: dict[float, float | None],
               path: str | Path) -> None:
    """xi_t = H / E_t[T] over training, one colour per swept xi (one line per seed), with the
    mean fitted slope per 10k tokens in the legend."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    cmap = plt.get_cmap("viridis")
    for i, (xi, hs) in enumerate(sorted(histories.items())):
        color = cmap(i / max(len(histories) - 1, 1))
        slope = slopes.get(xi)
        for j, h in enumerate(hs):
            label = None if j else (f"xi = {xi:g}" + (f" (slope {slope:+.3f} / 10k tok)"
                                                      if slope is not None else ""))
            ax.plot(h["cum_generated_tokens"] / 1e3, h["xi_t"], color=color, lw=1, alpha=0.8,
                    label=label)
    ax.set(xlabel="generated completion tokens (thousands)", ylabel="xi_t = H / E_t[T]",
           title="xi over training, per swept xi", yscale="log")
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def gamma_fit(df: pd.DataFrame, path: str | Path, fit: dict | None = None) -> None:
    """Kaplan-Meier CDF of T (restart semantics, censoring handled) against the fitted Gamma(K,
    rate) CDF and the Exponential (dashed); the title gives K and both sup-distances. `fit` is
    estimators.fit_gamma(df) when the caller has it already."""
    observed, censored = est.restart_T(df)
    fit = fit or est.fit_gamma_T(observed, censored)
    t, km = est.km_cdf(observed, censored)
    grid = np.linspace(0.0, float(t.max()), 400)
    gamma = stats.gamma(fit["K"], scale=1.0 / fit["rate"])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.step(t, km, where="post", color="black", lw=1.5,
            label=f"Kaplan-Meier ({fit['n_observed']} observed, {fit['n_censored']} censored)")
    ax.plot(grid, gamma.cdf(grid), color="tab:orange",
            label=f"Gamma fit: K = {fit['K']:.2f}, rate = {fit['rate']:.4g}")
    ax.plot(grid, stats.expon(scale=fit["expon_mean"]).cdf(grid), color="tab:blue", ls="--",
            label=f"Exponential fit (K = 1), sup-distance {fit['expon_sup_distance']:.3f}")
    ax.set(xlabel="T (tokens to the first correct answer, restart semantics)",
           ylabel="P(T <= t)", ylim=(0, 1.0),
           title=f"T ~ Gamma: K = {fit['K']:.2f}, sup |fit - KM| = {fit['sup_distance']:.3f}")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)


ARM_COLORS = {"fixed_best": "black", "controller": "tab:green", "per_prompt": "tab:purple",
              "filtered": "tab:orange"}


def tokens_to_target(curves: dict[str, list[pd.DataFrame]], target: float, path: str | Path) -> None:
    """Accuracy at H_eval against generated tokens, one line per arm run, the target marked."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm, cs in curves.items():
        for i, c in enumerate(cs):
            ax.plot(c["tokens"] / 1e3, c["accuracy"], marker="o", ms=3, lw=1, alpha=0.8,
                    color=ARM_COLORS.get(arm), label=arm if i == 0 else None)
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:.3f}")
    ax.set(xlabel="generated completion tokens (thousands)", ylabel="accuracy at H_eval",
           title="tokens to target: budget arms (one line per seed)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)


def tasks_efficiency(tasks: list[dict], x: str, path: str | Path) -> None:
    """Mean gain per 100k tokens of every task on one axis, against `x` ('xi' or 'H', log), each
    task's peak marked."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for t in tasks:
        rows = pd.DataFrame(t["sweep"])
        line, = ax.plot(rows[x], rows["gain_per_100k"], marker="o",
                        label=f"{t['task']} (E[T] {t['E_T']:.1f})")
        peak = t["peak"] if x == "xi" else t["peak_H"]
        if peak["low"] is not None and peak["high"] is not None:  # no interval: nothing shaded
            if peak["high"] > peak["low"]:
                ax.axvspan(peak["low"], peak["high"], color=line.get_color(), alpha=0.08)
            else:  # every resample agreed: a line, since a span of width 0 would not show
                ax.axvline(peak["low"], color=line.get_color(), alpha=0.5, lw=1, ls="--")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    if x == "xi":  # the tasks share one xi grid: a tick at each of its values
        ax.set_xticks(sorted({r["xi"] for t in tasks for r in t["sweep"]}))
    else:  # each task has its own H: 1-2-5 ticks (10, 20, 50, 100, ...)
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())  # no labels between the ticks
    ax.set(xlabel="xi = H / E[T] of the task's base policy" if x == "xi" else "H (tokens)",
           ylabel="accuracy gain at the task's H_eval per 100k tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="shaded (or dashed): peak interval")
    _save(fig, path)
