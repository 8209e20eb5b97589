"""The `relbudget` command line (docs/pipeline.md, "The command line"), usable on any rollout
table.

    relbudget xi   --rollouts FILE [--horizon H ...] [--group-size G] [--reward R] [--json]
    relbudget plan --rollouts FILE --target-xi X [--group-size G] [--reward R] [--json]
    relbudget plan --rollouts FILE --predict [--xi X ...] [--prompts-per-step N] [--json]

`--reward within|final|budget` (default within) chooses the reward whose mean, variance and share
of informative groups are reported per horizon (`reward_mean`, `reward_var`, `p_informative`);
`p` = P(T <= H) is always there.

`plan --predict` prints the predicted learning efficiency over a grid of xi (default: the sweep's)
and the predicted best xi, from the rollout table alone (relbudget.measure.predict).

Defaults come from the xi section of the project's params.yaml, the one source of values. `--json` prints
exactly one JSON object on stdout. Any error (missing file, schema failure, a bad number, a horizon
above the cap) is a short message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from relbudget.measure import estimators as est
from relbudget.measure import predict as pred
from relbudget.core.errors import DatasetLoadError
from relbudget.core.params import XiParams, check_xi, defaults, error_lines
from relbudget.core.schemas import ROLLOUTS, normalise_rollouts, read_rollouts, read_table, validate

EXIT_ERROR = 2  # the same code argparse uses for a usage error

# XiParams field -> the flag that sets it, so a validation error names what the user typed.
_FLAGS = {"group_size": "--group-size", "n_bootstrap": "--n-bootstrap", "ci_level": "--ci-level",
          "seed": "--seed", "deficient_below": "--deficient-below", "ample_above": "--ample-above"}


class CLIError(ValueError):
    """A user error worth one line on stderr."""


def _xi_params(args: argparse.Namespace) -> XiParams:
    # Only flags the user gave override the xi section of params.yaml (the one source of its
    # values); XiParams' checks stay the only ones.
    given = {k: getattr(args, k) for k in _FLAGS if getattr(args, k, None) is not None}
    try:
        return XiParams.model_validate({**defaults().xi.model_dump(), **given})
    except ValidationError as err:
        raise CLIError("; ".join(error_lines(err, XiParams, _FLAGS))) from None


def _num(x: Any, fmt: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a" if x is None else str(x)
    return format(x, fmt)


def _read_folder(folder: Path, allow_mixed: bool):
    """Every `*.parquet` file directly in `folder` (sorted; hidden names skipped) pooled into one
    table: only under --allow-mixed (a folder usually holds several policies or caps, the case
    --allow-mixed exists for). Each file is checked, then the pooled table: a (prompt_id,
    attempt) found in two files is a schema failure, as in one file."""
    import pandas as pd

    if not allow_mixed:
        raise CLIError(f"rollouts table {folder} is a directory; give one parquet file, or pass "
                       "--allow-mixed to pool every *.parquet file in it")
    files = sorted(f for f in folder.glob("*.parquet") if not f.name.startswith("."))
    if not files:
        raise CLIError(f"rollouts folder {folder} holds no *.parquet file")
    parts = [read_table(f, ROLLOUTS, schema_columns_only=True) for f in files]
    for part in parts:  # categories differ between files: pool them as plain strings
        for col in part.columns:
            if isinstance(part[col].dtype, pd.CategoricalDtype):
                part[col] = part[col].astype(str)
    df = normalise_rollouts(pd.concat(parts, ignore_index=True))
    del parts
    df = validate(df, ROLLOUTS, f"rollouts folder {folder} ({len(files)} files pooled)")
    return df.drop(columns=["attempt", "seed", "policy"])  # as a single table's read


def _read_rollouts(args: argparse.Namespace):
    """The rollout table, refused when it mixes policies or caps unless --allow-mixed: one E[T]
    over two policies' attempts describes neither. A folder: see _read_folder."""
    if Path(args.rollouts).is_dir():
        return _read_folder(Path(args.rollouts), args.allow_mixed)
    # Checked in full; attempt and seed, needed by no estimator, are dropped as they are checked.
    df = read_rollouts(args.rollouts, [c for c in ROLLOUTS.columns if c not in ("attempt", "seed")])
    mixed = {c: sorted(map(str, df[c].unique()))[:5] for c in ("policy", "max_tokens")
             if df[c].nunique() > 1}
    if mixed and not args.allow_mixed:
        what = "; ".join(f"{c}: {', '.join(v)}" for c, v in mixed.items())
        raise CLIError(f"{args.rollouts} mixes several {' and '.join(mixed)} values ({what}); "
                       "pass --allow-mixed to pool them into one estimate")
    return df.drop(columns=["policy"])  # no estimator reads it


# ---------------------------------------------------------------- xi


def cmd_xi(args: argparse.Namespace) -> int:
    xp = _xi_params(args)
    df = _read_rollouts(args)
    cap = est.table_cap(df)
    horizons = args.horizon if args.horizon else est.summary_horizons(cap)
    s = est.summarize(df, horizons, group_size=xp.group_size, n_bootstrap=xp.n_bootstrap,
                      ci_level=xp.ci_level, seed=xp.seed, deficient_below=xp.deficient_below,
                      ample_above=xp.ample_above, reward=args.reward)
    if s["p_informative_warning"]:
        print(f"relbudget xi: warning: {s['p_informative_warning']}", file=sys.stderr)
    if args.json:
        print(json.dumps(s, allow_nan=False))
        return 0

    low, high = s["E_T_ci"]
    print(f"rollouts: {args.rollouts}  ({s['n_prompts']} prompts, {s['n_attempts']} attempts, "
          f"{s['n_hits']} correct, cap max_tokens={cap})")
    if s["E_T"] is None:
        print("E[T] = inf: no attempt is correct, so every xi is 0")
    else:
        print(f"E[T] = {s['E_T']:.2f} tokens per correct solution  ({xp.ci_level:.0%} CI "
              f"{_num(low, '.2f')} .. {_num(high, '.2f')}, bootstrap over prompts, {s['ci_method']})")
    print(f"mean per-prompt E[T|x] over solved prompts = {_num(s['E_T_prompt_mean'], '.2f')}; "
          f"unsolved prompts: {s['unsolved_share']:.1%}")
    wl, wh = s["E_T_within_ci"]
    print(f"within one completion (no restart): E[T] = {_num(s['E_T_within'], '.2f')} tokens "
          f"({xp.ci_level:.0%} CI {_num(wl, '.2f')} .. {_num(wh, '.2f')}) over the completions "
          f"that reach a correct answer; {s['unsolved_share_within']:.1%} of completions do not "
          "within the cap")
    print(f"group size G = {xp.group_size}; regimes: deficient xi < {xp.deficient_below:g}, "
          f"ample xi > {xp.ample_above:g}; reward: {args.reward}")
    print()
    head = (f"{'H':>7} {'xi':>8} {'xi_wthn':>8} {'p(H)':>8} {'E[R]':>8} {'Var[R]':>8} "
            f"{'P_inf':>8} {'P_inf(p)':>9}  regime")
    print(head)
    for r in s["horizons"]:
        print(f"{r['H']:>7d} {r['xi']:>8.3f} {r['xi_within']:>8.3f} {r['p']:>8.4f} "
              f"{r['reward_mean']:>8.4f} "
              f"{r['reward_var']:>8.4f} {r['p_informative']:>8.4f} "
              f"{r['p_informative_pooled']:>9.4f}  {r['regime']}")
    print(f"\nxi = H / E[T] (restart); xi_wthn = H / E[T] within one completion; "
          f"E[R], Var[R]: mean and variance of the {args.reward} reward over attempts; "
          f"P_inf ({s['p_informative_estimator']} estimator): per-prompt share of GRPO groups "
          "whose rewards are not all equal; "
          "P_inf(p): 1 - p^G - (1-p)^G from pooled p")
    return 0


# ---------------------------------------------------------------- plan


def cmd_plan(args: argparse.Namespace, extra=None) -> int:
    """`extra(out)`: one more line to print (and key `grpo_config` in JSON); used by measure."""
    if getattr(args, "predict", False):
        return cmd_predict(args)
    if args.target_xi is None:
        raise CLIError("--target-xi is required (or pass --predict for the efficiency curve)")
    check_xi(args.target_xi, "--target-xi")  # finite, in XI_RANGE: no overflow, no silent H = 1
    xp = _xi_params(args)
    df = _read_rollouts(args)
    out = est.to_json_safe(est.plan(df, args.target_xi, xp.group_size, args.reward))
    if out["warning"]:
        print(f"relbudget plan: warning: {out['warning']}", file=sys.stderr)
    if extra is not None:
        out["grpo_config"] = extra(out)
    if args.json:
        print(json.dumps(out, allow_nan=False))
        return 0

    print(f"target xi = {out['target_xi']:g} -> H = {out['H']} tokens  "
          f"(E[T] = {out['E_T']:.2f}, achieved xi = {out['xi']:.3f}, cap max_tokens={out['max_tokens']})")
    if out["extrapolated"]:
        print("p(H), reward variance and P_inf: not measurable above the cap (see warning)")
    else:
        print(f"predicted at H: p = {out['p']:.4f}; {out['reward']} reward: mean "
              f"{out['reward_mean']:.4f}, variance {out['reward_var']:.4f}, "
              f"P_inf(G={out['group_size']}, {out['p_informative_estimator']}) = "
              f"{out['p_informative']:.4f} "
              f"(pooled-p formula {out['p_informative_pooled']:.4f})")
    if extra is not None:
        print(out["grpo_config"])
    return 0


def _grid(args: argparse.Namespace) -> list[float]:
    """The xi grid of --predict: --xi values, else the sweep's grid in params.yaml."""
    grid = args.xi if args.xi else defaults().sweep.xi
    for x in grid:
        check_xi(x, "--xi")
    return grid


def _prompts_per_step(args: argparse.Namespace) -> int:
    n = args.prompts_per_step if args.prompts_per_step is not None else \
        defaults().train.prompts_per_step
    if n < 1:
        raise CLIError(f"--prompts-per-step must be a whole number >= 1, got {n}")
    return n


def cmd_predict(args: argparse.Namespace) -> int:
    """`plan --predict`: the predicted efficiency over xi and its best xi (every check first)."""
    grid, n = _grid(args), _prompts_per_step(args)
    xp = _xi_params(args)
    df = _read_rollouts(args)
    out = est.to_json_safe({**pred.predict(df, grid, xp.group_size, n),
                            "group_size": xp.group_size, "prompts_per_step": n})
    if args.json:
        print(json.dumps(out, allow_nan=False))
        return 0
    print(f"E[T] = {out['E_T']:.2f}; G = {xp.group_size}, {n} prompts per step; the rollouts "
          f"generated {out['prediction_tokens']:,} tokens")
    print(f"{'xi':>7} {'H':>6} {'P_inf':>7} {'tokens':>7} {'predicted':>10} {'static':>7}")
    for r in out["curve"]:
        print(f"{r['xi']:>7g} {r['H']:>6d} {r['p_informative']:>7.3f} {r['tokens']:>7.1f} "
              f"{r['predicted']:>10.3f} {r['static']:>7.3f}")
    print(f"predicted best xi = {out['best_xi']:g} (static baseline: {out['static_best_xi']:g}); "
          "both curves are normalised to their maximum")
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    d, d_train = defaults().xi, defaults().train
    parser = argparse.ArgumentParser(
        prog="relbudget", description="Relative budget xi = H / E[T] of a rollout table.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--rollouts", required=True, metavar="FILE",
                       help="rollout table (parquet); a folder of them with --allow-mixed")
        p.add_argument("--group-size", dest="group_size", type=int, default=None, metavar="G",
                       help=f"GRPO group size for P_inf (default {d.group_size})")
        p.add_argument("--reward", choices=est.REWARDS, default="within",
                       help="reward for reward_mean, reward_var and P_inf: within (1 if a correct "
                       "answer within H), final (ended within H, last answer correct) or budget "
                       "((H - T + 1) / H if T <= H, else 0) (default within)")
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.add_argument("--allow-mixed", dest="allow_mixed", action="store_true",
                       help="pool a table holding several policies or caps, or every *.parquet "
                       "of a --rollouts folder (refused by default; the cap is then the smallest)")

    p = sub.add_parser("xi", help="E[T] with CI, and xi, p, P_inf, regime for each horizon")
    common(p)
    p.add_argument("--horizon", type=int, action="append", metavar="H",
                   help="a horizon in tokens, repeatable (default: the cap and round fractions of it)")
    p.add_argument("--n-bootstrap", dest="n_bootstrap", type=int, default=None, metavar="N",
                   help=f"bootstrap resamples over prompts (default {d.n_bootstrap})")
    p.add_argument("--ci-level", dest="ci_level", type=float, default=None, metavar="L",
                   help=f"confidence level (default {d.ci_level})")
    p.add_argument("--seed", type=int, default=None, help=f"bootstrap seed (default {d.seed})")
    p.add_argument("--deficient-below", dest="deficient_below", type=float, default=None,
                   metavar="X", help=f"xi below this is deficient (default {d.deficient_below})")
    p.add_argument("--ample-above", dest="ample_above", type=float, default=None, metavar="X",
                   help=f"xi above this is ample (default {d.ample_above})")
    p.set_defaults(func=cmd_xi)

    p = sub.add_parser("plan", help="the H for a target xi, with predicted p, p(1-p), P_inf")
    common(p)
    p.add_argument("--target-xi", dest="target_xi", type=float, default=None, metavar="X",
                   help="the xi to plan H for (required unless --predict)")
    p.add_argument("--predict", action="store_true",
                   help="predict learning efficiency over a grid of xi and the best xi, from the "
                   "rollouts alone (docs/definitions.md)")
    p.add_argument("--xi", type=float, action="append", metavar="X",
                   help="a xi of the --predict grid, repeatable (default: sweep.xi of params.yaml)")
    p.add_argument("--prompts-per-step", dest="prompts_per_step", type=int, default=None,
                   metavar="N", help="GRPO prompts per optimizer step for --predict (default "
                   f"train.prompts_per_step, {d_train.prompts_per_step})")
    p.set_defaults(func=cmd_plan)

    from relbudget.cli_measure import add_parser as add_measure

    add_measure(sub, cmd_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors: argparse exits 2 itself
    try:
        return _run(args)
    except KeyboardInterrupt:  # one line and 130, as the stages (a measure's chunks are kept)
        pass
    # Out of the except block the interrupted frames are freed, and with them a progress bar
    # they hold, which draws itself once more as it closes: the error must come after it.
    gc.collect()
    kept = ("; the finished chunks are kept, so the same command resumes"
            if args.command == "measure" else "")
    print(f"relbudget {args.command}: error: interrupted by Ctrl-C (SIGINT){kept}", file=sys.stderr)
    return 128 + signal.SIGINT


def _run(args) -> int:
    """The subcommand, its expected failures as one line and exit 2."""
    try:
        return args.func(args)
    except (ValueError, OSError, DatasetLoadError) as err:
        # ValueError covers TableError (its message lists failing checks and rows), bad numbers,
        # H above the cap and unreadable parquet; OSError a missing or unreadable file.
        msg = str(err).strip() or type(err).__name__
        print(f"relbudget {args.command}: error: {msg}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
