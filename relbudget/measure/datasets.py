"""Prompts from HF `datasets`: a hub dataset, or a local .jsonl/.json/.parquet/.csv file.

`load_hf_prompts` returns (train, eval) frames in the PROMPTS schema: prompt_id (str), prompt
(str, the source's prompt_template applied), answer (the gold, `relbudget.measure.verify.extract_gold`),
answer_format, level (0 for external data), and optionally raw_prompt / raw_answer.

- A local file holds one split: all its rows are the train split (train_split names a hub split
  and is ignored, with a warning unless it is "train"). eval_split is then None (carve eval rows
  out of the file) or the path of a second local file with the eval rows.
- Any other path goes to `datasets.load_dataset(path, name, split=...)` (the hub, or a local
  dataset folder); when that fails the error says how to work offline.
- Every row of every split read is checked, before subsampling (so the outcome does not depend on
  the seed or on n_train): missing or empty prompt, wrong types, missing or unparseable answer,
  missing or duplicate id. Any bad row raises `DataError`, naming the first 10 rows with their
  reasons and the total count.
- Subsampling is a seeded shuffle: train and eval splits use independent streams of `seed`; a
  carved eval set takes the first n_eval rows of one seeded permutation (so it does not depend on
  n_train) and train the next n_train. The output keeps the shuffled order.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relbudget.core.errors import DataError, DatasetLoadError
from relbudget.core.params import HFSource
from relbudget.core.schemas import PROMPTS, validate
from relbudget.measure.verify import extract_gold

logger = logging.getLogger(__name__)

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
MAX_LISTED = 10
NL = b"\n"
OFFLINE_HINT = (
    "hint: this machine may not reach the HF hub. Download the dataset where it can be reached "
    "and point data.hf.path at a local .jsonl/.json/.parquet/.csv file (or a saved dataset "
    "folder), or set HF_DATASETS_OFFLINE=1 / HF_HUB_OFFLINE=1 to use the local HF cache only "
    "(and fail fast instead of retrying).")


def load_hf_prompts(src: HFSource, n_train: int, n_eval: int, seed: int, *,
                    keep_raw: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, eval) prompt frames from `src`, n_train / n_eval rows each (fewer, with a warning,
    when the data has fewer). keep_raw adds the raw_prompt / raw_answer columns."""
    if n_train < 1 or n_eval < 0:
        raise ValueError(f"n_train must be >= 1 and n_eval >= 0, got {n_train} and {n_eval}")
    _check_template(src.prompt_template)
    builder = LOCAL_BUILDERS.get(Path(src.path).suffix.lower())
    if builder is not None:
        if src.train_split != "train":
            logger.warning("data.hf.train_split %r ignored: a local file is one split",
                           src.train_split)
        train_ds = _load_local(src.path, "path")
        eval_ds = None
        if src.eval_split is not None:
            if LOCAL_BUILDERS.get(Path(src.eval_split).suffix.lower()) is None:
                raise ValueError(
                    f"data.hf.eval_split {src.eval_split!r}: for a local file, eval_split must "
                    f"be null (carve eval rows out of the file) or the path of a second local "
                    f"file ({', '.join(LOCAL_BUILDERS)})")
            eval_ds = _load_local(src.eval_split, "eval_split")
        train_name, eval_name = "train", "eval"
        where = src.path
    else:
        train_ds = _load_hub(src, src.train_split)
        eval_ds = _load_hub(src, src.eval_split) if src.eval_split is not None else None
        train_name, eval_name = src.train_split, src.eval_split
        where = src.path + (f" ({src.name})" if src.name else "")

    train_rows = _rows(train_ds, src, train_name, where)
    if eval_ds is None:
        if n_eval and len(train_rows) < 2:
            raise DataError(f"{where}: {len(train_rows)} row(s); carving an eval set out of the "
                            f"train split needs at least 2", [])
        if not train_rows:
            raise DataError(f"{where}: the file has no rows", [])
        perm = np.random.default_rng([seed, 2]).permutation(len(train_rows))
        k = min(n_eval, len(train_rows) - 1)
        eval_idx, train_idx = perm[:k], perm[k:k + n_train]
        eval_rows = train_rows
    else:
        eval_rows = _rows(eval_ds, src, eval_name, where)
        if not eval_rows:
            raise DataError(f"{where}: the eval split {eval_name!r} has no rows", [])
        train_idx = np.random.default_rng([seed, 0]).permutation(len(train_rows))[:n_train]
        eval_idx = np.random.default_rng([seed, 1]).permutation(len(eval_rows))[:n_eval]
        if not train_rows:
            raise DataError(f"{where}: the train split {train_name!r} has no rows", [])
    for what, got, want in (("train", len(train_idx), n_train), ("eval", len(eval_idx), n_eval)):
        if got < want:
            logger.warning("%s: only %d %s prompts available (asked for %d)", where, got, what,
                           want)
    train = _frame([train_rows[i] for i in train_idx], src, keep_raw)
    evals = _frame([eval_rows[i] for i in eval_idx], src, keep_raw)
    train = validate(train, PROMPTS, f"train prompts from {where}")
    if n_eval:  # n_eval = 0 (relbudget measure): no eval rows, an empty frame
        evals = validate(evals, PROMPTS, f"eval prompts from {where}")
    return train, evals


# ------------------------------------------------------------------------------------- loading

def _load_local(path: str, field: str) -> Any:
    import datasets

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"data.hf.{field}: local dataset file not found: {p}")
    builder = LOCAL_BUILDERS[p.suffix.lower()]
    if builder != "parquet":
        _check_text(p)
    try:
        # HF datasets would keep an Arrow copy (and lock files) of every local file under
        # ~/.cache/huggingface, outside the project: a temporary cache, read into memory
        with tempfile.TemporaryDirectory(prefix="relbudget-hf-") as cache:
            return datasets.load_dataset(builder, data_files=str(p), split="train",
                                         cache_dir=cache, keep_in_memory=True)
    except Exception as err:  # noqa: BLE001 - a malformed file: say which one
        raise DataError(f"cannot read {p} as {builder}: {type(err).__name__}: {err}", []) from err


def _check_text(path: Path) -> None:
    """A local text file (JSON lines, JSON, CSV) is UTF-8 without NUL bytes: else one line that
    names its line and byte, instead of a parse error deep in Arrow that names neither."""
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{path} is empty: it holds no prompt rows", [])
    if (nul := data.find(b"\x00")) >= 0:
        raise DataError(f"{path}: line {data.count(NL, 0, nul) + 1} holds a NUL byte (offset "
                        f"{nul}); a damaged or binary file? Remove the NUL bytes "
                        "(tr -d '\\000' < IN > OUT)", [])
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: line {data.count(NL, 0, err.start) + 1} is not UTF-8 (byte "
                        f"0x{data[err.start]:02x} at offset {err.start}); re-encode the file as "
                        "UTF-8, e.g. iconv -f latin1 -t utf-8", []) from None


def _load_hub(src: HFSource, split: str) -> Any:
    import datasets

    try:
        return datasets.load_dataset(src.path, src.name, split=split)
    except Exception as err:  # noqa: BLE001 - surface it with the offline hint
        raise DatasetLoadError(
            f"could not load dataset {src.path!r} (config {src.name!r}, split {split!r}) through "
            f"HF datasets: {type(err).__name__}: {err}\n{OFFLINE_HINT}") from err


# ---------------------------------------------------------------------------------------- rows

def _check_template(template: str) -> None:
    sentinel = "\x00relbudget-prompt\x00"
    try:
        out = template.format(prompt=sentinel)
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"data.hf.prompt_template {template!r} is not a valid format string "
                         f"with only {{prompt}} ({type(err).__name__}: {err}); write literal "
                         f"braces as {{{{ and }}}}") from None
    if sentinel not in out:
        raise ValueError(f"data.hf.prompt_template {template!r} does not contain {{prompt}}")


def _columns(ds: Any, src: HFSource, split: str, where: str) -> dict[str, list]:
    cols = list(ds.column_names)
    wanted = {"prompt_column": src.prompt_column, "answer_column": src.answer_column}
    if src.id_column is not None:
        wanted["id_column"] = src.id_column
    for field, col in wanted.items():
        if col not in cols:
            raise ValueError(f"data.hf.{field}: column {col!r} is not in the {split!r} split of "
                             f"{where}; available columns: {', '.join(cols) or '(none)'}")
    data = ds.select_columns(list(dict.fromkeys(wanted.values()))).to_dict()
    return {field: data[col] for field, col in wanted.items()}


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _id_of(v: Any) -> tuple[str | None, str | None]:
    """(id, problem)."""
    if _is_missing(v):
        return None, "missing id"
    if isinstance(v, bool):
        return None, f"id is bool ({v!r})"
    if isinstance(v, (int, np.integer)):
        return str(int(v)), None
    if isinstance(v, float) and v.is_integer():
        return str(int(v)), None
    if isinstance(v, str):
        return (v.strip(), None) if v.strip() else (None, "empty id")
    return None, f"id is {type(v).__name__}, expected str or int"


def _rows(ds: Any, src: HFSource, split: str, where: str) -> list[dict]:
    cols = _columns(ds, src, split, where)
    prompts, answers = cols["prompt_column"], cols["answer_column"]
    ids = cols.get("id_column")
    rows: list[dict] = []
    problems: list[tuple[str, int, str | None, str]] = []
    first_at: dict[str, int] = {}
    for i in range(len(prompts)):
        reasons = []
        if ids is not None:
            pid, why = _id_of(ids[i])
            if why:
                reasons.append(why)
        else:
            pid = f"{split}-{i}"
        if pid is not None:
            if pid in first_at:
                reasons.append(f"duplicate id {pid!r} (first at row {first_at[pid]})")
            else:
                first_at[pid] = i
        p = prompts[i]
        if _is_missing(p):
            reasons.append("missing prompt")
        elif not isinstance(p, str):
            reasons.append(f"prompt is {type(p).__name__}, expected str")
        elif not p.strip():
            reasons.append("empty prompt")
        a = answers[i]
        gold = None
        if _is_missing(a):
            reasons.append("missing answer")
        elif isinstance(a, (np.integer, np.floating)):
            a = a.item()
        if not _is_missing(a):
            try:
                gold = extract_gold(a, src.answer_format)
            except ValueError as err:
                reasons.append(f"unparseable {src.answer_format} answer: {err}")
        if reasons:
            problems.append((split, i, pid, "; ".join(reasons)))
            continue
        rows.append({"prompt_id": pid, "prompt": src.prompt_template.format(prompt=p),
                     "answer": gold, "raw_prompt": p, "raw_answer": str(a)})
    if problems:
        raise DataError(_describe(problems, where), problems)
    return rows


def _describe(problems: list[tuple[str, int, str | None, str]], where: str) -> str:
    lines = [f"{len(problems)} bad row(s) in {where} (fix or remove them; rows count from 0):"]
    for split, i, pid, why in problems[:MAX_LISTED]:
        name = f"{split} row {i}" + (f" (id {pid!r})" if pid is not None else "")
        lines.append(f"  {name}: {why}")
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more ({len(problems)} in total)")
    return "\n".join(lines)


def _frame(rows: list[dict], src: HFSource, keep_raw: bool) -> pd.DataFrame:
    df = pd.DataFrame({
        "prompt_id": pd.Series([r["prompt_id"] for r in rows], dtype=object),
        "prompt": pd.Series([r["prompt"] for r in rows], dtype=object),
        "answer": pd.Series([r["answer"] for r in rows], dtype=object),
        "answer_format": pd.Series([src.answer_format] * len(rows), dtype=object),
        "level": pd.Series([0] * len(rows), dtype="int64"),
    })
    if keep_raw:
        df["raw_prompt"] = pd.Series([r["raw_prompt"] for r in rows], dtype=object)
        df["raw_answer"] = pd.Series([r["raw_answer"] for r in rows], dtype=object)
    return df
