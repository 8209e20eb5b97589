"""Atomic writes: every stage output is written to a temporary name beside its target and renamed.

A rename within one filesystem is atomic, so an interrupted stage (even SIGKILL) leaves either the
old output or the new one, never a half-written file. A stage with several outputs writes them
inside `output_set()`, so they are replaced together: all old or all new (see its docstring).
"""

from __future__ import annotations

import errno
import fcntl
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
    """`.NAME.PID-XXXXXXXX.tmp` beside `path`: the writer's PID in the name, so a clean-up at
    another stage's start (remove_stale_temps) leaves the temp files of a live writer alone."""
    # mkstemp/mkdtemp create 0600/0700 whatever the umask; outputs get the user's umask instead
    # (shared filesystems for Dask/Ray workers), as a plain open() or mkdir() would give them.
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{os.getpid()}-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
        tmp.chmod(0o777 & ~umask())
        return tmp
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
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
            return
        _check_kinds({path: tmp})  # a folder where a file goes: one line, the folder untouched
        if is_dir:
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


class OutputSetError(OSError):
    """A set of outputs could not be replaced; the message says what is on disk and the fix."""


class SetUndone(OutputSetError):
    """The set could not be completed and every old output was put back."""


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


def _aside(dst: Path) -> Path:
    """Where the old `dst` waits while a set is replaced: `.NAME.old.PID` (PID: the writer)."""
    return dst.with_name(f".{dst.name}.old.{os.getpid()}")


def _rename(src: Path, dst: Path) -> None:  # one place, so a test can kill the process mid-set
    os.replace(src, dst)


def _remove(path: Path) -> None:
    """Delete a staged temp file or folder (gone already: nothing to do)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _replace(src: Path, dst: Path) -> None:
    """Rename `src` over `dst` outside a set. A folder cannot be renamed over a non-empty one,
    so an existing folder `dst` is first moved aside (`_aside`) and removed once `src` is in
    place. FileNotFoundError: `src` is gone."""
    if src.is_dir() and dst.exists():
        old = _aside(dst)
        _remove(old)
        os.replace(dst, old)
        _rename(src, dst)
        _remove(old)
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
def _folder_lock(folder: Path) -> Iterator[None]:
    """flock on the folder of a set's journal: one commit (or completion of a journal) at a time
    in that folder, across processes and threads; the kernel drops it when its holder dies."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def output_set() -> Iterator[None]:
    """Replace a stage's outputs as one set: every `atomic_path` write (write_json, write_parquet,
    write_yaml, write_text, the plots) inside the block goes to its temp sibling
    `.NAME.PID-XXXXXXXX.tmp`, and only when the block ends without an error are they all renamed
    over their targets. Why a reader never sees new files beside old ones:

    * an exception (or SIGTERM, which raises StageKilled) inside the block: the temp files are
      deleted, no target was touched;
    * SIGKILL while the block runs: no target was touched; the temp files are removed by
      `remove_stale_temps` when the stage starts again (once their writer is dead);
    * a target that cannot take its new file (a folder where a file goes, or the reverse): found
      before any rename, OutputSetError naming it, every target old;
    * the commit, under a lock on the folder of the set's first target (one commit there at a
      time): the temp files are fsynced, then a journal listing (temp, target, old) is written
      atomically (temp + rename) beside the first target, `.NAME.journal.tmp`. Each old target is
      moved aside to `.NAME.old.PID`, its new file renamed in; then the journal and the old
      files are deleted. A rename that fails (a permission, a full or read-only disk) puts every
      old target back: OutputSetError, all old. A SIGKILL in between leaves the journal; the next
      start of the stage (`remove_stale_temps`, through `finish_output_sets`) completes it, or
      if that fails puts the old set back. SIGTERM/SIGINT are blocked during the renames; an
      exception raised into the thread completes them first.

    So after any failure the set is the old one or the new one, never a mix, and each file keeps
    exactly the bytes it was written with. A journal that can be neither completed nor undone
    (the folder made read-only meanwhile) stops every start with one line naming it and the fix.
    A folder written with `atomic_dir` inside the block (the base policy's folder) joins the set the
    same way. Nested sets join the outer one. The set is per thread (a ContextVar): the flow's
    threads each have their own."""
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


def _check_kinds(files: dict[Path, Path]) -> None:
    """Every target can take its new file: a folder is replaced by a folder, a file by a file."""
    for dst, tmp in files.items():
        if (dst.exists() or dst.is_symlink()) and dst.is_dir() != tmp.is_dir():
            have, want = ("a folder", "a file") if dst.is_dir() else ("a file", "a folder")
            raise OutputSetError(f"cannot replace {dst}: it is {have}, but the stage writes {want} "
                                 f"there; move it away (mv {dst} {dst}.bak) and run the stage "
                                 "again; no output was changed")


def _commit(files: dict[Path, Path]) -> None:
    if not files:
        return
    first = next(iter(files))  # the stage's first write: one of its declared outputs
    journal = _journal_of(first)
    with _folder_lock(first.parent):
        try:
            targets = {os.path.abspath(dst) for dst in files}
            _finish_journals(first.parent, targets)  # a killed writer's commit: completed/undone
            _check_kinds(files)
            for tmp in files.values():
                _fsync(tmp)
            rel = lambda q: os.path.relpath(q, first.parent)  # noqa: E731
            rows = [[rel(tmp), rel(dst), rel(_aside(dst)), _exists(dst)]
                    for dst, tmp in files.items()]
            _write_journal(journal, rows, undo=False)  # the set is written from here on
        except BaseException:
            for tmp in files.values():
                _remove(tmp)
            raise
        blocked = {signal.SIGTERM, signal.SIGINT}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            try:
                _finish(journal, targets)
            except OutputSetError:
                raise
            except BaseException:  # raised into this thread (the flow's SIGTERM): finish first
                _finish(journal, targets)
                raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)  # a pending SIGTERM lands here


def _write_journal(journal: Path, rows: list, undo: bool) -> None:
    """Write the journal atomically (temp sibling, fsync, rename): rows of (temp, target, old
    name, whether the target existed), relative to its folder; `undo`: the set is being put
    back, so an interrupted completion goes on backward, never forward again."""
    jtmp = _tmp_sibling(journal)
    try:
        jtmp.write_text(json.dumps({"files": rows, "undo": undo}) + "\n")
        _fsync(jtmp)
        os.replace(jtmp, journal)
    finally:
        jtmp.unlink(missing_ok=True)


def _read_journal(journal: Path) -> tuple[list, bool]:
    try:
        data = json.loads(journal.read_text())
        rows, undo = data["files"], bool(data.get("undo"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        log.warning("unreadable output journal %s (%s); removed", journal, err)
        return [], False
    return rows, undo


class _Foreign(ValueError):
    """A journal row that names something other than these outputs and their temp siblings."""


def _entries(journal: Path, rows: list, targets: set[str]) -> list:
    """The journal's rows as (temp, target, old, existed): every target one of `targets` (the
    outputs of the stage finishing it), every temp and old name a hidden sibling of its target,
    so a hand-made or hostile journal can never rename or delete anything else (_Foreign)."""
    d, out = journal.parent, []
    for row in rows:
        if not isinstance(row, list) or len(row) < 2 or not all(isinstance(x, str) for x in row[:3]):
            raise _Foreign(f"row {row!r} is not (temp, target, old, existed)")
        tmp, dst = Path(os.path.normpath(d / row[0])), Path(os.path.normpath(d / row[1]))
        old = Path(os.path.normpath(d / row[2])) if len(row) > 2 else None
        sibling = lambda q: q.parent == dst.parent and q.name.startswith(f".{dst.name}.")  # noqa: E731
        if os.path.abspath(dst) not in targets or not sibling(tmp) or (old and not sibling(old)):
            raise _Foreign(f"{row[1]!r} is not an output of this stage")
        out.append((tmp, dst, old, row[3] if len(row) > 3 else None))
    return out


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _forward(entries) -> list[Path]:
    """Put every new file in place (those already there are skipped); the targets renamed. A
    temp file is gone only once renamed in (until an undo starts), so the steps resume."""
    done = []
    for tmp, dst, old, _ in entries:
        if not _exists(tmp):
            continue  # renamed before
        if _exists(dst) and dst.is_dir() != tmp.is_dir():  # made a folder meanwhile (or a file)
            raise IsADirectoryError(errno.EISDIR, "a folder stands where a file goes, or the "
                                    "reverse", str(dst))
        if old is not None and _exists(dst):
            _remove(old)  # a leftover of an earlier writer with the same PID
            os.replace(dst, old)
        elif old is None and dst.is_dir():  # a journal of the earlier format: no old names
            _remove(dst)
        _rename(tmp, dst)
        done.append(dst)
    return done


def _backward(entries) -> None:
    """Put every old target back, and remove a new one where there was none; each step can be
    repeated after an interruption (the old file is restored before its temp file goes)."""
    for tmp, dst, old, had_old in reversed(entries):
        if old is None:  # a journal of the earlier format: nothing to put back
            continue
        if had_old and _exists(old):
            if not _exists(tmp) and _exists(dst):
                _remove(dst)  # the new file, renamed in
            os.replace(old, dst)
        elif not had_old and not _exists(tmp) and _exists(dst):
            _remove(dst)  # a new file where there was none
        _remove(tmp)


def _finish(journal: Path, targets: set[str]) -> list[Path]:
    """Complete the set a journal lists, then delete the old targets and the journal. A rename
    that fails undoes the set instead (every old target back): SetUndone. Neither possible:
    OutputSetError naming the journal and how to clear it, the journal left in place. A journal
    of other outputs than `targets` is left alone (_Foreign)."""
    rows, undo = _read_journal(journal)
    entries = _entries(journal, rows, targets)
    err = None
    if not undo:
        try:
            done = _forward(entries)
        except OSError as e:
            err = e
            _write_journal(journal, rows, undo=True)
    if undo or err is not None:
        try:
            _backward(entries)
        except OSError as err2:
            raise OutputSetError(
                f"stuck output journal {journal}: putting its set of old outputs back failed "
                f"({err2.strerror or err2}: {err2.filename}); fix that and run the stage again "
                "(it finishes the undo), or delete the journal and the .*.tmp and .*.old.* files "
                "beside it and restore the outputs (`dvc checkout`)") from None
        journal.unlink(missing_ok=True)
        why = f"{err.strerror or err}" if err is not None else "an undo was interrupted"
        raise SetUndone(f"cannot replace {getattr(err, 'filename', None) or journal}: {why}; "
                             "every output of the set is the old one (nothing changed)")
    for _, _, old, _ in entries:
        if old is not None:
            _remove(old)
    journal.unlink(missing_ok=True)
    return done


def finish_output_sets(outputs) -> list[Path]:
    """Complete every output set whose commit was interrupted (its journal is left in the folder
    of one of these outputs), each under its folder's lock, so never one a live writer is still
    committing. Called when a stage starts, before its temp files are removed."""
    done, targets = [], {os.path.abspath(out) for out in outputs}
    for folder in dict.fromkeys(Path(out).parent for out in outputs):
        if folder.is_dir():
            with _folder_lock(folder):
                done += _finish_journals(folder, targets)
    return done


def _finish_journals(folder: Path, targets: set[str]) -> list[Path]:
    """`_finish` every journal in `folder` (its lock held) that lists some of `targets`; a set
    that was undone instead (the old set whole again) is a warning: the stage may go on."""
    done = []
    for journal in sorted(folder.glob(JOURNAL.format(name="*"))):
        try:
            finished = _finish(journal, targets)
        except _Foreign as err:
            log.warning("output journal %s left alone: %s", journal, err)
            continue
        except SetUndone as err:
            log.warning("an interrupted replacement of a set of outputs was undone: %s", err)
            continue
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
        if out.suffix and out.is_dir():  # every output named NAME.EXT is a file
            raise NotWritable(f"cannot write {out}: it is a folder, but the stage writes a file "
                              f"there; move it away (mv {out} {out}.bak) and run the stage again")
        folder = _existing_folder(out)
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


def _writer_pid(name: str, out_name: str) -> int | None:
    """The PID in a temp name `.OUT.PID-XXXX.tmp` or `.OUT.old.PID` (None: a name without one,
    left by an earlier version)."""
    rest = name[len(out_name) + 2:]
    digits = rest.removeprefix("old.").split("-")[0]
    return int(digits) if digits.isdigit() else None


def _existing_folder(out: Path) -> Path:
    """The folder an output goes to, or the nearest existing folder above it."""
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_inside(outputs, root: str | Path) -> None:
    """Refuse (NotWritable, one line) an output whose folder, symlinks resolved, lies outside
    `root`: `paths.*` are checked as text when params load; this catches a folder replaced by a
    symlink (a pulled commit can turn the git-tracked metrics/ into one)."""
    root = Path(root).resolve()
    for out in map(Path, outputs):
        folder = _existing_folder(out)
        real = folder.resolve()
        if not real.is_relative_to(root):
            raise NotWritable(f"cannot write {out}: {folder} resolves to {real}, outside the "
                              f"project {root} (a symlink); make {folder} a plain folder, or set "
                              "allow_outside_paths: true")


def remove_stale_temps(outputs) -> list[Path]:
    """Remove what an interrupted (even SIGKILLed) earlier write of these outputs left beside them:
    `.NAME.PID-*.tmp` temp files or folders and `.NAME.old.PID` folders whose writer (PID) is no
    longer alive; a live writer's files stay (two runs of a stage at once, the flow beside
    `dvc repro`). Called when a stage starts. An output set whose commit was interrupted is
    completed first (`finish_output_sets`); journals are only ever finished, never removed here."""
    finish_output_sets(outputs)
    gone = []
    for out in map(Path, outputs):
        if not out.parent.is_dir():
            continue
        for p in [*out.parent.glob(f".{out.name}.*.tmp"), *out.parent.glob(f".{out.name}.old.*")]:
            pid = _writer_pid(p.name, out.name)
            if p.name.endswith(".journal.tmp") or (pid is not None and _alive(pid)):
                continue
            _remove(p)
            gone.append(p)
    if gone:
        log.warning("removed %d stale temporary file(s) of an interrupted run: %s", len(gone),
                    ", ".join(map(str, gone[:5])))
    return gone


# ---------------------------------------------------------------- the project lock

PROJECT_LOCK = ".relbudget.lock"  # in the folder the outputs are rooted at; `.*.lock`: .dvcignore


class ProjectBusy(RuntimeError):
    """Another pipeline execution (the Prefect flow, or `dvc repro` and its stages) works on the
    same outputs."""


@contextmanager
def project_lock(root: str | Path, exclusive: bool, holder: str = "") -> Iterator[None]:
    """flock on `root/.relbudget.lock` for as long as the block runs; the kernel drops it when the
    process dies, so it is never stale. A stage process takes it shared (stages may run side by
    side: their temp files carry their PID, their output sets commit one at a time); the flow
    takes it exclusive and writes `holder` (who it is) into the file, so a stage started beside
    it, under `dvc repro` or by hand, refuses naming it. Refused: ProjectBusy, one line."""
    path = Path(root) / PROJECT_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise ProjectBusy(f"cannot open the project lock {path} ({err.strerror or err}); remove "
                          "or fix it (it is an empty file that only relbudget writes)") from None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            who = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            raise ProjectBusy(
                f"{who or 'a stage process (python -m stages.*, maybe under dvc repro)'} is "
                f"running on {Path(root).resolve()} (lock {path}); wait for it to end or stop "
                "it, or give the flow another --out-root") from None
        if exclusive:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
        try:
            yield
        finally:
            if exclusive:
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)
