"""Benchmark: wall time and peak memory of `relbudget xi --json` by table size (figures only).

    python benchmarks/bench_xi.py [--prompts 20000 100000] [--attempts 64] [--n-bootstrap N]

For each size a child process builds a synthetic rollout table (tests/synth.py, 4 difficulty
types, cap 128) into a temporary parquet; then `relbudget xi --rollouts FILE --json` runs as
another child, so the figures cover the whole path a user pays for (read, schema check, E[T] with
its BCa interval, curves) and the peak resident memory is that child's alone (os.wait4 returns
its rusage; this process never holds a table, which a forked child's peak would count).
The defaults are the 1.28M-row (20k prompts x 64) and 6.4M-row (100k prompts x 64) tables.
`--code DIR` runs the command line from another checkout (e.g. `git archive HEAD` unpacked), to
compare before and after a change on the same tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WRITE = ("import sys; from tests.synth import make_rollouts; "
         "make_rollouts(int(sys.argv[1]), int(sys.argv[2]), seed=0, validated=False)"
         ".to_parquet(sys.argv[3])")


def run_xi(path: Path, n_bootstrap: int | None, code: Path) -> dict:
    """Run `relbudget xi --rollouts path --json` in a child; its time, peak RSS and output."""
    cmd = [sys.executable, "-m", "relbudget.cli", "xi", "--rollouts", str(path), "--json"]
    if n_bootstrap is not None:
        cmd += ["--n-bootstrap", str(n_bootstrap)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=code)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read()}")
        summary = json.loads(out.read())
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "E_T": summary["E_T"], "E_T_ci": summary["E_T_ci"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--attempts", type=int, default=64)
    ap.add_argument("--n-bootstrap", type=int, default=None,
                    help="resamples (default: the CLI's, from XiParams)")
    ap.add_argument("--code", type=Path, default=ROOT,
                    help="checkout whose relbudget runs (default: this one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.prompts:
            path = Path(tmp) / f"rollouts_{n}.parquet"
            subprocess.run([sys.executable, "-c", WRITE, str(n), str(args.attempts), str(path)],
                           cwd=ROOT, check=True)
            row = {"rows": n * args.attempts, "prompts": n, "attempts": args.attempts,
                   **run_xi(path, args.n_bootstrap, args.code.resolve())}
            print(json.dumps(row), flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
