"""The Prefect flow's cache key: a stage execution's inputs, params and code, hashed.

Cache key of a task = hash of (stage, regime, the params hash of the sections the stage declares
in its SECTIONS (relbudget.core.params.params_hash, the MLflow tag's: no paths), the content of its
input files, the source of the stage module and of every `relbudget`/`stages` module it imports,
transitively). Before a cached result is used, the outputs on disk are checked against the
manifest the task wrote when it last executed under that key; outputs that were deleted, edited,
or written by a run with other params make the task execute again.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import threading
import uuid
from pathlib import Path
from typing import Any, Iterable

from prefect.context import TaskRunContext
from prefect.filesystems import LocalFileSystem

from relbudget.core.params import Params, key_sections, params_hash
from relbudget.core.paths import stage_files
from relbudget.core.tracking import run_label

PROJECT = Path(__file__).resolve().parent.parent
OWN_PACKAGES = ("relbudget", "stages")  # the code whose source enters a cache key
KEY_VERSION = "2"  # 2: outputs are the files of relbudget.core.paths
MISSING = "missing"


def label_of(stage: str, regime: str | None) -> str:
    return run_label(stage, regime)  # the MLflow run's name too


def stage_io(stage: str, regime: str | None, params: Params) -> tuple[list[str], list[str]]:
    """(inputs, outputs) of one stage execution: its files of relbudget.core.paths (as dvc.yaml lists
    them), plus a local dataset file that `prepare` reads."""
    files = stage_files(params.paths, stage, regime)
    ins = list(files.deps)
    hf = params.data.hf
    if stage == "prepare" and params.data.source == "hf" and hf and Path(hf.path).exists():
        ins.append(hf.path)
    return ins, list(files.outputs)


# --------------------------------------------------------------------------- content hashing

_file_memo: dict[tuple, str] = {}
_memo_lock = threading.Lock()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, memoised per (path, inode, size, mtime) within the process."""
    st = path.stat()
    stamp = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    with _memo_lock:
        if stamp in _file_memo:
            return _file_memo[stamp]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _memo_lock:
        _file_memo[stamp] = digest
    return digest


def tree_digest(path: str | Path) -> str:
    """Content hash of a file or a folder (names and bytes, hidden entries skipped); MISSING."""
    p = Path(path)
    if p.is_file():
        return file_digest(p)
    if not p.is_dir():
        return MISSING
    files = sorted(f for f in p.rglob("*") if f.is_file()
                   and not any(part.startswith(".") for part in f.relative_to(p).parts))
    if not files:
        return MISSING  # an empty folder is no output
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(p).as_posix()}\0{file_digest(f)}\n".encode())
    return h.hexdigest()


def _module_file(name: str) -> Path | None:
    base = PROJECT.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _own_imports(path: Path, module: str) -> set[str]:
    """Project modules a source file imports anywhere (top level or inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                full = f"{base}.{node.module}" if node.module else base
            else:
                full = node.module or ""
            names.add(full)
            names.update(f"{full}.{a.name}" for a in node.names)  # may name a submodule
    return {n for n in names if n.split(".")[0] in OWN_PACKAGES}


def code_files(*roots: str, leaves: Iterable[str] = ()) -> list[Path]:
    """The files of the given modules and of every project module they import, transitively;
    the modules named in `leaves` are listed but their imports not followed."""
    leaves = set(leaves)
    seen: dict[str, Path | None] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            mod = ".".join(parts[:i])
            if mod in seen:
                continue
            seen[mod] = f = _module_file(mod)
            if f is not None and mod not in leaves:
                todo.extend(_own_imports(f, mod))
    return sorted({f for f in seen.values() if f is not None})


def code_digest(stage: str) -> str:
    h = hashlib.sha256()
    for f in code_files(f"stages.{stage}", "stages._cli"):
        h.update(f"{f.relative_to(PROJECT).as_posix()}\0{file_digest(f)}\n".encode())
    return h.hexdigest()


def stage_sections(stage: str) -> list[str]:
    """The stage module's SECTIONS, read from its source so a cache hit never imports torch."""
    path = _module_file(f"stages.{stage}")
    if path is not None:
        for node in ast.parse(path.read_text()).body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "SECTIONS"):
                try:
                    return list(ast.literal_eval(node.value))
                except ValueError:
                    break
    return list(importlib.import_module(f"stages.{stage}").SECTIONS)


# --------------------------------------------------------------------------- cache key


def base_key(stage: str, regime: str | None, params: Params) -> str:
    inputs, _ = stage_io(stage, regime, params)
    sections = key_sections(stage_sections(stage), regime)
    blob = json.dumps({
        "v": KEY_VERSION,
        "stage": stage,
        "regime": regime,
        "params": params_hash(params, sections),  # the MLflow tag's hash: no paths
        "inputs": {i: tree_digest(i) for i in inputs},
        "code": code_digest(stage),
    }, sort_keys=True)
    return f"relbudget-{label_of(stage, regime).replace('@', '-at-')}-{hashlib.sha256(blob.encode()).hexdigest()[:40]}"


def manifest(state_dir: str, label: str) -> Path:
    return Path(state_dir) / f"{label}.json"


def outputs_current(stage: str, regime: str | None, params: Params, state_dir: str, key: str) -> bool:
    """True if the outputs on disk are those the task wrote when it last executed under `key`."""
    f = manifest(state_dir, label_of(stage, regime))
    try:
        recorded = json.loads(f.read_text())
    except (OSError, ValueError):
        return False
    _, outs = stage_io(stage, regime, params)
    now = {o: tree_digest(o) for o in outs}
    return recorded.get("key") == key and recorded.get("outputs") == now and MISSING not in now.values()


def stage_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Prefect cache_key_fn: inputs' content + params sections + code; outputs validated.

    When the outputs on disk do not belong to this key (deleted, edited, or written under another
    key), the stored result for the key is dropped so the task executes and records afresh.
    """
    stage, regime, params = parameters["stage"], parameters["regime"], parameters["params"]
    key = base_key(stage, regime, params)
    if not outputs_current(stage, regime, params, parameters["state_dir"], key):
        storage = getattr(context.result_store, "result_storage", None)
        if isinstance(storage, LocalFileSystem) and storage.basepath:
            Path(storage.basepath, key).unlink(missing_ok=True)
        else:  # cannot drop the record: use a one-off key (the next run converges)
            key = f"{key}-rebuild-{uuid.uuid4().hex[:8]}"
    return key
