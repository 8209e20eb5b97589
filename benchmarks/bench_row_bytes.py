"""Benchmark: the real memory of one rollout-table row, against the cost check's estimate.

    python benchmarks/bench_row_bytes.py [--rows 20000 80000] [--attempts 8] [--cap 256]
                                         [--early-exit]

relbudget.core.params estimated a rollout table at `rows x (ROW_BYTES + cap)` bytes (ROW_BYTES for
the columns, about one byte of completion text per token) and refuses params above MEMORY_LIMIT.
This prints, per table size, measured in a child process each (so no figure counts another's):

* `deep_B/row`: pandas `memory_usage(deep=True)` of the table sample_table returns (all columns,
  completion text included), per row; `cols_B/row` the same without the completion column;
  `text_B/token` the completion column's bytes per generated token;
* `peak_B/row`: the growth of the child's peak RSS (ru_maxrss) while `sample_table` builds that
  table, per row: what the process really needs, transient copies (the per-chunk row dicts, the
  concat, the schema check) included;
* `est_B/row`: the estimate, ROW_BYTES + TOKEN_BYTES x cap (set from these figures).

The generations are not sampled from a model (that would take hours for these sizes on a CPU
and adds nothing per row): a stand-in generate_fn returns the built-in task's self-correcting
completions (relbudget.measure.task.retry_completion, the traces the base policy imitates) cut at the
cap, tokenized with the built-in character tokenizer; everything after that, scoring each
generation (decode, verify, first correct token), the chunks, the concat, normalise and the
pandera check, is the production path of stages/sample_t.py. `--early-exit` cuts each completion
at its first correct answer, as sampling.early_exit does (shorter texts); by default completions
run to the cap or their end, the largest table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def build_table(rows: int, attempts: int, cap: int, early: bool = False):
    """The rollout table of `rows // attempts` built-in prompts, through sample_table with the
    stand-in generate_fn of the module docstring."""
    import numpy as np

    from relbudget.measure.models import char_tokenizer
    from relbudget.measure.sampling import sample_table
    from relbudget.measure.sampling.common import Generation, Request
    from relbudget.measure.task import builtin_splits, retry_completion
    from relbudget.measure.verify import verify

    tok = char_tokenizer()
    train, _ = builtin_splits(rows // attempts, 0, [1, 2, 3], 2, seed=0, style="retry")
    reqs = [Request(r.prompt_id, r.prompt, r.answer, r.answer_format) for r in train.itertuples()]
    operands = {r.prompt_id: [int(x) for x in r.prompt.rstrip("=").split("+")]
                for r in train.itertuples()}

    def generate(items, seed):
        rng = np.random.default_rng(seed)
        out = []
        for req, attempt in items:
            text, ended = retry_completion(operands[req.prompt_id], rng, 0.5, 0.1, 0.99, cap)
            stop = "eos" if ended else "length"
            if early:
                v = verify(text, req.answer, req.answer_format, ended=ended)
                if v.first_correct_chars is not None and not v.at_eos:
                    text, stop = text[: v.first_correct_chars], "first_correct"
            ids = tok.encode(text, add_special_tokens=False)[:cap]
            out.append(Generation(req, attempt, ids, "length" if len(ids) >= cap else stop, seed))
        return out

    return sample_table(generate, tok, reqs, attempts, cap, 0, policy="base", chunk_prompts=32,
                        desc="bench")


CHILD = r"""
import gc, json, resource, sys
from benchmarks.bench_row_bytes import build_table
import relbudget.measure.sampling, relbudget.measure.models, relbudget.measure.task  # imported before the baseline

rows, attempts, cap = map(int, sys.argv[1:4])
early = sys.argv[4] == "1"
gc.collect()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
table = build_table(rows, attempts, cap, early)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
deep = table.memory_usage(deep=True, index=False)
print(json.dumps({"rows": len(table), "peak_growth": peak - before, "deep": int(deep.sum()),
                  "text": int(deep["completion"]), "tokens": int(table["n_tokens"].sum()),
                  "dtypes": {c: str(t) for c, t in table.dtypes.items()}}))
"""


def measure(rows: int, attempts: int, cap: int, early: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(rows), str(attempts), str(cap),
                          "1" if early else "0"], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from relbudget.core.params import TOKEN_BYTES, rollout_bytes

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[20000, 80000])
    ap.add_argument("--attempts", type=int, default=8)
    ap.add_argument("--cap", type=int, default=256)
    ap.add_argument("--early-exit", action="store_true")
    args = ap.parse_args()
    est = rollout_bytes(1, 1, args.cap)
    print(f"cap {args.cap}, {args.attempts} attempts per prompt, early exit {args.early_exit}; "
          f"estimate (relbudget.core.params.rollout_bytes: ROW_BYTES + {TOKEN_BYTES} x cap) = {est} B/row")
    print(f"{'rows':>8} {'tokens/row':>10} {'deep_B/row':>10} {'cols_B/row':>10} "
          f"{'text_B/token':>12} {'peak_B/row':>10} {'est_B/row':>9}")
    results = []
    for rows in args.rows:
        r = measure(rows, args.attempts, args.cap, args.early_exit)
        n = r["rows"]
        results.append(r)
        print(f"{n:>8} {r['tokens'] / n:>10.1f} {r['deep'] / n:>10.1f} "
              f"{(r['deep'] - r['text']) / n:>10.1f} {r['text'] / max(r['tokens'], 1):>12.2f} "
              f"{r['peak_growth'] / n:>10.1f} {est:>9}")
    if len(results) >= 2:  # the fixed costs (imports, first allocations) cancel in the slope
        a, b = results[0], results[-1]
        slope = (b["peak_growth"] - a["peak_growth"]) / (b["rows"] - a["rows"])
        print(f"marginal peak RSS per row between {a['rows']} and {b['rows']} rows: "
              f"{slope:.1f} B/row (estimate {est})")
    print("dtypes:", json.dumps(results[-1]["dtypes"]))


if __name__ == "__main__":
    main()
