"""Tracked outputs are byte-reproducible: the same inputs give the same bytes, in any process.

Each writer runs twice, in two fresh processes with different hash seeds, so process-level
randomness (hash order, ids, clocks) would show as a byte difference.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from relbudget.train.grpo import history_frame

ROOT = Path(__file__).resolve().parents[1]

PLOT = """
import sys
import numpy as np, pandas as pd
from relbudget.report import plots
rng = np.random.default_rng(0)
h = pd.DataFrame({"cum_generated_tokens": np.arange(1, 30) * 100,
                  "xi_t": np.linspace(1, 2, 29) + rng.random(29) * 0.1,
                  "reward_mean": rng.random(29)})
plots.learning_curves({"balanced": [h, h * 1.05], "ample": [h * 1.1]}, sys.argv[1])
"""

PARQUET = """
import sys
import numpy as np, pandas as pd
from relbudget.core.io import write_parquet
write_parquet(pd.DataFrame({"prompt_id": ["a", "b", None], "n": np.arange(3),
                            "fct": pd.array([1, None, 3], dtype="Int64"),
                            "x": np.linspace(0, 1, 3)}), sys.argv[1])
"""


def _twice(code: str, tmp_path: Path, name: str) -> tuple[bytes, bytes]:
    out = []
    for seed in ("1", "2"):
        path = tmp_path / seed / name
        path.parent.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": seed, "MPLBACKEND": "Agg"}
        subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, env=env, check=True,
                       timeout=120)
        out.append(path.read_bytes())
    return out[0], out[1]


def test_plot_png_is_byte_identical_across_processes(tmp_path):
    a, b = _twice(PLOT, tmp_path, "plot.png")
    assert a[:8] == b"\x89PNG\r\n\x1a\n"
    assert a == b
    assert b"Software" not in a and b"Matplotlib" not in a  # no version text in the file


def test_parquet_is_byte_identical_across_processes(tmp_path):
    a, b = _twice(PARQUET, tmp_path, "t.parquet")
    assert a == b


def test_history_holds_no_timings():
    rows = [{"step": 1, "generated_tokens": 10, "cum_generated_tokens": 10, "reward_mean": 0.5,
             "frac_informative": 1.0, "frac_reward_zero_std": 0.0, "clipped_ratio": 0.0,
             "mean_length": 5.0, "tokens_after_correct": 0.0, "E_T": 4.0, "xi_t": 2.0, "H": 8,
             "wall_seconds": 1.25}]  # as a checkpoint of an older version holds it
    df = history_frame(rows)
    assert "wall_seconds" not in df
    pd.testing.assert_frame_equal(df, history_frame([{k: v for k, v in rows[0].items()
                                                       if k != "wall_seconds"}]))


def test_a_saved_policy_does_not_record_how_it_was_loaded(tmp_path):
    # A policy loaded offline (HF_HUB_OFFLINE=1 forces local_files_only) and saved again must
    # have the bytes of the same policy saved from memory: dvc.lock may not depend on the shell.
    from transformers import AutoTokenizer

    from relbudget.measure.models import char_tokenizer, save_policy, tiny_llama

    tok = char_tokenizer()
    model = tiny_llama(tok, hidden=16, layers=1, heads=2, intermediate=32, max_position=32)
    save_policy(model, tok, tmp_path / "first")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "first", local_files_only=True)
    assert loaded.init_kwargs["local_files_only"] is True  # what transformers would write back
    save_policy(model, loaded, tmp_path / "second")
    first = (tmp_path / "first" / "tokenizer_config.json").read_bytes()
    assert (tmp_path / "second" / "tokenizer_config.json").read_bytes() == first
    assert loaded.init_kwargs["local_files_only"] is True  # the caller's tokenizer is unchanged
