"""Atomic writes: every stage output is written to a temporary name beside its target and renamed.

A rename within one filesystem is atomic, so an interrupted stage (even SIGKILL) leaves either the
old output or the new one, never a half-written file. A stage with several outputs writes them
inside `output_set()`, so they are replaced together: all old or all new (see its docstring).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import yaml


log = logging.getLogger("relbudget.core.io")
KEEP_STALE = 3  # work folders of other configurations kept per stage (the newest)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path, is_dir: bool = False) -> Path:
    # mkstemp/mkdtemp create 0600/0700 whatever the umask; outputs get the user's umask instead
    # (shared filesystems for Dask/Ray workers), as a plain open() or mkdir() would give them.
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        tmp.chmod(0o777 & ~umask())
        return tmp
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~umask())
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
def _atomic(path: str | Path, is_dir: bool) -> Iterator[Path]:
    """A temporary sibling of `path` (a file or a folder); on success it replaces `path`, or,
    inside `output_set()`, is staged to replace it at the end of the set; on error it is deleted."""
    path = Path(path)
    tmp = _tmp_sibling(path, is_dir=is_dir)
    staged = False
    try:
        yield tmp
        pending = _OUTPUT_SET.get()
        if pending is not None:
            pending.stage(tmp, path)
            staged = True
        elif is_dir:
            _replace(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if not staged and is_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        elif not staged:
            tmp.unlink(missing_ok=True)


def atomic_path(path: str | Path):
    """Yield a temporary file path; on success rename it over `path`, on error delete it.
    Inside `output_set()` the rename waits for the end of the set."""
    return _atomic(path, is_dir=False)


# ---------------------------------------------------------------- outputs replaced as a set

JOURNAL = ".{name}.journal.tmp"  # beside the first file of a set; `.*.tmp`: in .dvcignore


class _PendingSet:
    def __init__(self) -> None:
        self.files: dict[Path, Path] = {}  # target -> its staged temp sibling

    def stage(self, tmp: Path, target: Path) -> None:
        earlier = self.files.pop(target, None)
        if earlier is not None:  # written twice in one set: the last write wins
            _remove(earlier)
        self.files[target] = tmp

    def discard(self) -> None:
        for tmp in self.files.values():
            _remove(tmp)


_OUTPUT_SET: ContextVar[_PendingSet | None] = ContextVar("relbudget_output_set", default=None)


def _journal_of(target: Path) -> Path:
    return target.with_name(JOURNAL.format(name=target.name))


def _rename(src: Path, dst: Path) -> None:  # one place, so a test can kill the process mid-set
    os.replace(src, dst)


def _remove(path: Path) -> None:
    """Delete a staged temp file or folder (gone already: nothing to do)."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _replace(src: Path, dst: Path) -> None:
    """Rename `src` over `dst`. A folder cannot be renamed over a non-empty one, so an existing
    folder `dst` is first moved aside to `.NAME.old.PID` and removed once `src` is in place; a
    kill in between leaves `dst` missing and `src` complete, which a set's journal finishes
    (`_finish`) and `remove_stale_temps` cleans up after. FileNotFoundError: `src` is gone."""
    if src.is_dir() and dst.exists():
        old = dst.with_name(f".{dst.name}.old.{os.getpid()}")
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        os.replace(dst, old)
        _rename(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        _rename(src, dst)


def _fsync(path: Path) -> None:
    """Flush a file, or a folder with every file and folder in it, to disk."""
    for p in ([*sorted(path.rglob("*")), path] if path.is_dir() else [path]):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def output_set() -> Iterator[None]:
    """Replace a stage's outputs as one set: every `atomic_path` write (write_json, write_parquet,
    write_yaml, write_text, the plots) inside the block goes to its temp sibling
    `.NAME.XXXXXXXX.tmp`, and only when the block ends without an error are they all renamed over
    their targets. Why a reader never sees new files beside old ones:

    * an exception (or SIGTERM, which raises StageKilled) inside the block: the temp files are
      deleted, no target was touched;
    * SIGKILL while the block runs: no target was touched; the temp files are removed by
      `remove_stale_temps` when the stage starts again;
    * the commit: the temp files are fsynced, then a journal listing (temp, target) pairs is
      written atomically (temp + rename) beside the first target, `.NAME.journal.tmp`. From that
      moment the set counts as written: the renames follow (SIGTERM/SIGINT blocked meanwhile; an
      exception raised into the thread finishes them first), then the journal is deleted. A
      SIGKILL between the journal and its deletion leaves some targets renamed and the rest
      still complete in their temp files; the next start of the stage (`remove_stale_temps`,
      through `finish_output_sets`) renames the rest from the journal before removing any temp
      file. So after a kill the set is the old one (no journal yet) or the new one (journal
      completed), never a mix, and each file keeps exactly the bytes it was written with.

    Only the targets change names; what files exist and their bytes are what the stage wrote.
    A folder written with `atomic_dir` inside the block (train@REGIME's policy) joins the set the
    same way: its temp folder is renamed over the target at the commit (`_replace`: the old folder
    is moved aside first, then removed). Nested sets join the outer one. The set is per thread (a
    ContextVar): the flow's threads each have their own."""
    if _OUTPUT_SET.get() is not None:
        yield
        return
    pending = _PendingSet()
    token = _OUTPUT_SET.set(pending)
    try:
        yield
    except BaseException:
        pending.discard()
        raise
    finally:
        _OUTPUT_SET.reset(token)
    _commit(pending.files)


def _commit(files: dict[Path, Path]) -> None:
    if not files:
        return
    jtmp = None
    try:
        for tmp in files.values():
            _fsync(tmp)
        first = next(iter(files))  # the stage's first write: one of its declared outputs
        journal = _journal_of(first)
        pairs = [[os.path.relpath(tmp, first.parent), os.path.relpath(dst, first.parent)]
                 for dst, tmp in files.items()]
        jtmp = _tmp_sibling(first)
        jtmp.write_text(json.dumps({"files": pairs}) + "\n")
        _fsync(jtmp)
        os.replace(jtmp, journal)  # the set is written from here on
    except BaseException:
        for tmp in files.values():
            _remove(tmp)
        if jtmp is not None:
            jtmp.unlink(missing_ok=True)
        raise
    blocked = {signal.SIGTERM, signal.SIGINT}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        try:
            for dst, tmp in files.items():
                try:
                    _replace(tmp, dst)
                except FileNotFoundError:  # a stage starting meanwhile finished this journal
                    if not dst.exists():
                        raise
        except BaseException:  # raised into this thread (the flow's SIGTERM): finish first
            _finish(journal)
            raise
        journal.unlink(missing_ok=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)  # a pending SIGTERM lands here


def _finish(journal: Path) -> list[Path]:
    """Complete the renames of a journal (those already done are skipped), then delete it."""
    done = []
    try:
        pairs = json.loads(journal.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("unreadable output journal %s (%s); removed", journal, err)
        pairs = []
    for tmp_rel, dst_rel in pairs:
        tmp, dst = journal.parent / tmp_rel, journal.parent / dst_rel
        try:
            _replace(tmp, dst)
            done.append(dst)
        except FileNotFoundError:  # renamed before the interruption
            pass
    journal.unlink(missing_ok=True)
    return done


def finish_output_sets(outputs) -> list[Path]:
    """Complete every output set whose commit was interrupted (its journal is left in the folder
    of one of these outputs): the renames it lists are done now. Called when a stage starts,
    before its temp files are removed."""
    done = []
    folders = [d for d in dict.fromkeys(Path(out).parent for out in outputs) if d.is_dir()]
    for journal in sorted(j for d in folders for j in d.glob(JOURNAL.format(name="*"))):
        if journal.exists():
            finished = _finish(journal)
            log.warning("completed the interrupted replacement of a set of outputs (%s): %s",
                        journal, ", ".join(map(str, finished)) or "nothing left to rename")
            done += finished
    return done


def atomic_dir(path: str | Path):
    """Yield a temporary directory; on success it replaces `path` (old content removed after).
    Inside `output_set()` the replacement waits for the end of the set."""
    return _atomic(path, is_dir=True)


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


class NotWritable(PermissionError):
    """An output's folder cannot be written: found before any compute, not after it."""


def check_writable(outputs) -> None:
    """Refuse (NotWritable, one line) when the folder of an output, or the nearest existing
    folder above it, cannot take a new file: a write probe (a `.relbudget-probe.*.tmp` file
    created and deleted), so a read-only mount, permissions and a full quota all count, as the
    real write would see them. Only the folders matter: outputs are renamed into them."""
    seen: set[Path] = set()
    for out in map(Path, outputs):
        folder = out.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if folder in seen:
            continue
        seen.add(folder)
        try:
            fd, probe = tempfile.mkstemp(prefix=".relbudget-probe.", suffix=".tmp", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise NotWritable(f"cannot write {out}: {folder} is not writable "
                              f"({err.strerror or err}); make it writable, or point paths.* "
                              "to a writable folder") from None


def remove_stale_temps(outputs) -> list[Path]:
    """Remove what an interrupted (even SIGKILLed) earlier write of these outputs left beside them:
    `.NAME.*.tmp` temp files or folders and `.NAME.old.*` folders. Called when a stage starts.
    An output set whose commit was interrupted is completed first (`finish_output_sets`)."""
    finish_output_sets(outputs)
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
