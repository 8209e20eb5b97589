"""Atomic writes: every stage output is written to a temporary name beside its target and renamed.

A rename within one filesystem is atomic, so an interrupted stage (even SIGKILL) leaves either the
old output or the new one, never a half-written file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import yaml


log = logging.getLogger("relbudget.io")
KEEP_STALE = 3  # work folders of other configurations kept per stage (the newest)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path, is_dir: bool = False) -> Path:
    # mkstemp/mkdtemp create 0600/0700 whatever the umask; outputs get the user's umask instead
    # (shared filesystems for Dask/Ray workers), as a plain open() or mkdir() would give them.
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        tmp.chmod(0o777 & ~_umask())
        return tmp
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return Path(name)


class WorkLocked(RuntimeError):
    """Another live process works in the same stage work folder."""


@contextmanager
def work_lock(folder: str | Path) -> Iterator[Path]:
    """Hold `{folder}.lock` (it holds our PID) while working in `folder`: a second process on the
    same folder is refused (WorkLocked) instead of sharing a live checkpoint; a lock left by a
    dead process is taken over."""
    lock = Path(folder).with_name(Path(folder).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            pid = _pid_in(lock)
            if pid is not None and pid != os.getpid() and _alive(pid):
                raise WorkLocked(f"{folder} is in use by process {pid} (lock {lock}); wait for it "
                                 "or stop it first") from None
            log.warning("taking over the stale lock %s (process %s is gone)", lock, pid)
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    else:
        raise WorkLocked(f"cannot take the lock {lock}")
    try:
        yield lock
    finally:
        if _pid_in(lock) == os.getpid():
            lock.unlink(missing_ok=True)


def _pid_in(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def switch_work_dir(folder: str | Path, stamp_name: str, fp: str, keep: int = KEEP_STALE) -> None:
    """Make `folder` hold the resumable work of configuration `fp`; nothing is discarded silently.

    Work of another configuration moves to `{folder}.kept/<its fingerprint>` (a warning says
    where); work kept earlier for `fp` moves back and resumes. Of the kept folders only the `keep`
    most recently set aside stay; older ones are removed with a warning naming them."""
    folder = Path(folder)
    kept = folder.with_name(folder.name + ".kept")
    stamp = folder / stamp_name
    old = stamp.read_text().strip() if stamp.exists() else None
    if folder.exists() and old != fp:
        if any(p.name != stamp_name for p in folder.iterdir()):
            dest = kept / (old or f"unknown-{time.strftime('%Y%m%d-%H%M%S')}")
            kept.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(folder, dest)
            os.utime(dest)
            log.warning("work of another configuration in %s kept in %s (the %d newest such "
                        "folders are kept)", folder, dest, keep)
        else:
            shutil.rmtree(folder)
    if not folder.exists() and (kept / fp).exists():
        os.replace(kept / fp, folder)
        log.warning("resuming work of this configuration kept earlier in %s", kept / fp)
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fp)
    if kept.exists():
        older = sorted(kept.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)[keep:]
        for p in older:
            shutil.rmtree(p, ignore_errors=True)
            log.warning("removed %s: more than %d kept work folders", p, keep)
        if not any(kept.iterdir()):
            kept.rmdir()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path; on success rename it over `path`, on error delete it."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `path` (old content removed after)."""
    path = Path(path)
    tmp = _tmp_sibling(path, is_dir=True)
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_json_safe(obj), indent=2, sort_keys=True) + "\n")


def write_yaml(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(obj, sort_keys=False))


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def to_json_safe(obj: Any) -> Any:
    """numpy scalars to Python, paths to str, inf/nan to None (JSON has neither), recursively."""
    if isinstance(obj, dict):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def remove_stale_temps(outputs) -> list[Path]:
    """Remove what an interrupted (even SIGKILLed) earlier write of these outputs left beside them:
    `.NAME.*.tmp` temp files or folders and `.NAME.old.*` folders. Called when a stage starts."""
    gone = []
    for out in map(Path, outputs):
        if not out.parent.is_dir():
            continue
        for p in [*out.parent.glob(f".{out.name}.*.tmp"), *out.parent.glob(f".{out.name}.old.*")]:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            gone.append(p)
    if gone:
        log.warning("removed %d stale temporary file(s) of an interrupted run: %s", len(gone),
                    ", ".join(map(str, gone[:5])))
    return gone
