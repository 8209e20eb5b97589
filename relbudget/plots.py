"""matplotlib figures for the xi stage and the report (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from relbudget.io import atomic_path  # noqa: E402

REGIME_COLORS = {"deficient": "tab:red", "balanced": "tab:green", "ample": "tab:blue"}


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
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


def learning_curves(histories: dict[str, pd.DataFrame], path: str | Path) -> None:
    """Reward and xi_t = H / E_t[T] against generated completion tokens, one line per regime."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, h in histories.items():
        x = h["cum_generated_tokens"] / 1e3
        a.plot(x, h["reward_mean"].rolling(3, min_periods=1).mean(), label=name)
        b.plot(x, h["xi_t"], label=name)
    a.set(xlabel="generated completion tokens (thousands)", ylabel="reward mean (rolling 3)",
          title="reward")
    b.set(xlabel="generated completion tokens (thousands)", ylabel="xi_t = H / E_t[T]",
          title="xi over training (from each step's own rollouts)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def efficiency(rows: pd.DataFrame, path: str | Path, band: tuple[float, float] = (1.5, 2.0)) -> None:
    """Gain in accuracy at H_eval and fall in E[T], per 100k generated tokens, against xi.

    `rows` has columns xi, gain_per_100k, E_T_fall_per_100k and optional *_err columns
    (standard errors over seeds) drawn as error bars.
    """
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, col, label in ((a, "gain_per_100k", "accuracy gain at H_eval per 100k tokens"),
                           (b, "E_T_fall_per_100k", "fall in E[T] per 100k tokens")):
        ax.axvspan(*band, color="grey", alpha=0.15, label=f"paper's band [{band[0]}, {band[1]}]")
        err = rows[f"{col}_err"] if f"{col}_err" in rows else None
        ax.errorbar(rows["xi"], rows[col], yerr=err, marker="o", capsize=3, lw=1.5)
        for r in rows.itertuples(index=False):
            ax.annotate(str(r.regime), (r.xi, getattr(r, col)), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set(xlabel="xi = H / E[T] (base policy)", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)
