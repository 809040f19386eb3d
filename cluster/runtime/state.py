"""Persisted stage outputs under ``OUT/.theme-engine``: a re-run with the same inputs and settings
reuses every stage whose fingerprint is unchanged, and an interrupted stage resumes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from theme_engine.engine.vectors import save_npz

STATE_DIR = ".theme-engine"  # under --out: marks a theme-engine output and holds the stages


def fingerprint(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:24]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


class StageStore:
    """One folder per stage; ``done.json`` marks a finished stage and holds its fingerprint and record."""

    def __init__(self, out: Path, root: Path | None = None) -> None:
        # ``root``: another folder than OUT/.theme-engine (an update's own stages)
        self.root = Path(root) if root is not None else Path(out) / STATE_DIR
        self.root.mkdir(parents=True, exist_ok=True)

    def dir(self, stage: str) -> Path:
        d = self.root / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def finished(self, stage: str, fp: str) -> dict[str, Any] | None:
        """The record of ``stage`` when it finished with fingerprint ``fp``, else None (an
        unreadable marker counts as not finished)."""
        marker = self.root / stage / "done.json"
        if not marker.exists():
            return None
        try:
            record = json.loads(marker.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("fingerprint") == fp else None

    def mark_done(self, stage: str, fp: str, record: dict[str, Any]) -> None:
        """Mark ``stage`` finished: its record, fingerprint and the content digests of the files
        it left in its folder (checked by :meth:`damaged` before the stage is reused)."""
        outputs = {p.name: file_digest(p) for p in self._outputs(stage)}
        atomic_write_json(self.dir(stage) / "done.json", {"fingerprint": fp, **record, "outputs": outputs})

    def damaged(self, stage: str, record: dict[str, Any]) -> str | None:
        """Why the files of a finished stage no longer match what it wrote, or None."""
        for name, digest in (record.get("outputs") or {}).items():
            path = self.root / stage / name
            if not path.is_file():
                return f"{path} is missing"
            if file_digest(path) != digest:
                return f"{path} changed since the stage wrote it"
        return None

    def _outputs(self, stage: str) -> list[Path]:
        # the k-means checkpoint is rewritten while a stage runs and carries its own fingerprint
        skip = {"done.json", "checkpoint.npz"}
        return sorted(p for p in self.dir(stage).iterdir() if p.is_file() and p.name not in skip and ".tmp" not in p.name)

    def invalidate(self, stage: str) -> None:
        marker = self.root / stage / "done.json"
        if marker.exists():
            marker.unlink()

    def save_arrays(self, stage: str, name: str, **arrays: np.ndarray) -> None:
        save_npz(self.dir(stage) / f"{name}.npz", **arrays)

    def load_arrays(self, stage: str, name: str) -> dict[str, np.ndarray]:
        with np.load(self.dir(stage) / f"{name}.npz", allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def has(self, stage: str, name: str) -> bool:
        return (self.root / stage / f"{name}.npz").exists()

    def save_json(self, stage: str, name: str, obj: Any) -> None:
        atomic_write_json(self.dir(stage) / f"{name}.json", obj)

    def load_json(self, stage: str, name: str) -> Any:
        return json.loads((self.dir(stage) / f"{name}.json").read_text())


UPDATES_DIR = "updates"  # under OUT/.theme-engine: one folder per update (its documents, vectors, stages)
CURRENT_FILE = "current.json"  # folders of before generations: the committed updates
COMMIT_FILE = "commit.json"  # folders of before generations: an update's journal while its outputs moved

# A result is a generation: a folder of its own under OUT/.theme-engine/results/, written whole,
# then published by one atomic rename of the symlink OUT/result. The names readers know
# (OUT/manifest.json, OUT/documents.parquet, …) are fixed symlinks through OUT/result, so any
# reader — pandas, DuckDB, Ray Data, `cp -r` — finds every file of one generation or of the
# next, never a mix; pinning OUT/result's target (os.path.realpath) reads one generation
# whatever is published meanwhile. The generation also holds the record of the updates it
# includes, so an update's outputs and its state commit together.
RESULTS_DIR = "results"
RESULT_LINK = "result"
RESULT_FILES = ("manifest.json", "themes.json", "documents.parquet", "duplicates.parquet", "model.npz", "report.html")
UPDATES_RECORD = "updates.json"  # in a generation: the updates committed on top of the run


def updates_root(out: Path) -> Path:
    return Path(out) / STATE_DIR / UPDATES_DIR


def results_root(out: Path) -> Path:
    return Path(out) / STATE_DIR / RESULTS_DIR


def current_result(out: Path) -> Path | None:
    """The published generation's folder (OUT/result's target; OUT/result itself in a copy that
    followed the links), or None: no result yet, or a folder written before generations (its
    outputs are plain files in OUT)."""
    link = Path(out) / RESULT_LINK
    if not link.is_symlink():
        return link if link.is_dir() else None
    target = link.resolve()
    return target if target.is_dir() else None


def reading_base(out: Path) -> Path:
    """Where a reader that wants one consistent result reads every output: the published
    generation, pinned now, or OUT itself for a folder of before generations."""
    return current_result(out) or Path(out)


def new_result(out: Path) -> Path:
    """A new, empty generation folder (published later by :func:`publish`)."""
    root = results_root(out)
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
    folder = root / f"{max(taken, default=0) + 1:06d}"
    folder.mkdir()
    return folder


def _swap_link(path: Path, target: str) -> None:
    """``path`` becomes a symlink to ``target`` in one rename (whatever it was before)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def publish(out: Path, folder: Path) -> None:
    """Make generation ``folder`` the result of ``out``: OUT/result switches to it in one rename.
    The fixed names in OUT point through OUT/result (a folder of before generations has its plain
    files replaced, once); a name the generation lacks goes. Older generations are removed, but the
    one just replaced (a reader may hold it)."""
    out, folder = Path(out), Path(folder)
    prev = current_result(out)
    link = out / RESULT_LINK
    if link.is_dir() and not link.is_symlink():  # a copy that followed the links (cp -rL): a plain folder now
        shutil.rmtree(link)
    _swap_link(link, os.path.relpath(folder, out))
    for name in RESULT_FILES:
        if (folder / name).exists():
            link_output(out, name)
        elif (out / name).is_symlink() or (out / name).is_file():
            (out / name).unlink()  # an output this result has not (a report it did not render)
    for old in results_root(out).iterdir():
        if old.is_dir() and old not in (folder, prev):
            shutil.rmtree(old, ignore_errors=True)
    for stale in out.glob(".*.tmp"):  # a link a stopped publish made and never renamed
        if stale.is_symlink():
            stale.unlink(missing_ok=True)


def link_output(out: Path, name: str) -> None:
    """OUT/name points at the published generation's file ``name`` (once: a link already there
    stays; ``theme-engine report`` calls it for a page the run did not render)."""
    if current_result(out) is not None:
        target = f"{RESULT_LINK}/{name}"
        path = Path(out) / name
        if not (path.is_symlink() and os.readlink(path) == target):
            _swap_link(path, target)


def remove(path: Path) -> None:
    """The file or folder at ``path`` gone (nothing there is fine): a stage's output of either form."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def unpublish(out: Path) -> None:
    """``out`` holds no finished result any more (its outputs' names go; the state stays)."""
    out = Path(out)
    for name in (RESULT_LINK, *RESULT_FILES):
        path = out / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():  # a copy that followed the links
            shutil.rmtree(path)


def result_file(out: Path, name: str) -> Path:
    """The published generation's own file ``name`` (to rewrite it in place, as the search index's
    record after indexing), or OUT/name in a folder of before generations."""
    return reading_base(out) / name


def committed_updates(out: Path) -> dict[str, Any] | None:
    """The record of the updates committed on top of ``out``'s run (``folders``, ``generation``):
    the published generation's; in a folder of before generations, its ``current.json`` as a
    pending commit leaves it once rolled forward. None when the run has no update."""
    cur = current_result(out)
    if cur is not None:
        path = cur / UPDATES_RECORD
        return json.loads(path.read_text()) if path.is_file() else None
    journal = pending_commit(out)
    if journal is not None:
        return journal["current"]
    path = updates_root(out) / CURRENT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def save_committed_updates(out: Path, record: dict[str, Any]) -> None:
    """Rewrite the record :func:`committed_updates` reads (in place, atomically): the published
    generation's, or ``current.json`` in a folder of before generations."""
    cur = current_result(out)
    atomic_write_json(cur / UPDATES_RECORD if cur is not None else updates_root(out) / CURRENT_FILE, record)


def pending_commit(out: Path) -> dict[str, Any] | None:
    """The journal of an update (of before generations) whose outputs were being moved into
    ``out`` when it stopped."""
    path = updates_root(out) / COMMIT_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:  # written atomically, so never half there; unreadable means damaged
        return None


class DamagedOutput(ValueError):
    """An output file of a finished run that cannot be read (truncated, edited, not what it should be)."""


def remake_advice(out: Path) -> str:
    """How to get a whole result in ``out`` again: a run's finished stages are reused; a grown
    folder (updates on top) is remade from every input with ``--force``, or restored from a copy."""
    try:
        grown = committed_updates(out)
    except (OSError, ValueError):
        grown = {"updates": ["?"]}
    if grown and grown.get("updates"):
        return (
            f"restore {out} from a copy, or make it again from every input (the run's and its updates') with "
            f"theme-engine run INPUT... --out {out} --force"
        )
    return f"run theme-engine run again with the same inputs into {out} (its finished stages are reused)"


def read_output(out: Path, name: str, reader: Callable[[Path], Any], base: Path | None = None) -> Any:
    """``reader`` applied to output ``name`` of ``out`` (see :func:`output_path`; in ``base``, a
    generation pinned by :func:`reading_base`, when given); a file that is missing or cannot be
    read raises :class:`DamagedOutput` (a FileNotFoundError for a missing one) naming it and what
    to run, never a raw JSON, Unicode, Arrow or OS error."""
    path = Path(base) / name if base is not None else output_path(Path(out), name)
    if not path.exists():  # a file, or a folder of parts
        raise FileNotFoundError(f"{out} is not a finished theme-engine output (missing {name}); {remake_advice(Path(out))}")
    try:
        return reader(path)
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as exc:  # pyarrow's errors are OSError/ValueError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DamagedOutput(f"{path} cannot be read ({type(exc).__name__}: {first[:200]}); {remake_advice(Path(out))}") from None


def output_path(out: Path, name: str) -> Path:
    """Where output ``name`` of ``out`` is read: in the published generation; in a folder of
    before generations whose update's commit stopped mid-way, still in that update's staging
    folder when it has not moved yet (the result after the update, whole)."""
    journal = pending_commit(out) if current_result(out) is None else None
    if journal is not None:
        for src, dst in journal["moves"]:
            if dst == name and src is not None and (Path(out) / src).exists():
                return Path(out) / src
    return reading_base(out) / name


def roll_forward(out: Path) -> bool:
    """Finish the commit of an update of before generations that stopped mid-way (its journal
    lists the moves); True when there was one. Updates now publish a generation instead."""
    journal = pending_commit(out)
    if journal is None:
        return False
    out = Path(out)
    for src, dst in journal["moves"]:
        if src is None:  # an output the update leaves out (a report it did not render): the old one goes
            (out / dst).unlink(missing_ok=True)
        elif (out / src).exists():
            if (out / dst).is_dir() and not (out / dst).is_symlink():
                shutil.rmtree(out / dst)
            os.replace(out / src, out / dst)
    atomic_write_json(updates_root(out) / CURRENT_FILE, journal["current"])
    (updates_root(out) / COMMIT_FILE).unlink()
    return True


def foreign_entries(out: Path) -> list[str]:
    """The entries of ``out`` when it is a non-empty directory that is not a theme-engine output
    (no ``.theme-engine`` folder in it), else []."""
    if not out.is_dir():
        return []
    entries = sorted(p.name for p in out.iterdir())
    return [] if STATE_DIR in entries else entries


def foreign_out_message(out: Path, entries: list[str]) -> str:
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    return (
        f"--out {out} is not empty and is not a theme-engine output (it holds {shown}): pass a new or empty directory, "
        "or --force to write into it (manifest.json, themes.json, documents.parquet, duplicates.parquet, model.npz, "
        "report.html, metrics.prom, index/ and .theme-engine/ there are created or replaced)"
    )


class OutputBusy(RuntimeError):
    """Another process holds the lock of an output directory."""


class OutLock:
    """An exclusive lock on ``OUT/.theme-engine/lock`` for one run (``flock``: the kernel drops it
    when the holder exits, even by kill -9, so a stale lock never blocks). The file names the
    holder (pid, host, start time, command) for the message a second run gets."""

    def __init__(self, out: Path, advice: str = "or pass another --out") -> None:
        self.out = Path(out)
        self.advice = advice  # what the refused caller can do besides waiting
        self.path = self.out / STATE_DIR / "lock"
        self._fd: int | None = None

    def acquire(self) -> "OutLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise OutputBusy(
                f"{self.out} is in use by another theme-engine run or update ({holder}); wait for it to finish, {self.advice}"
            ) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.ftruncate(fd, 0)  # the file stays: unlinking it could let two runs lock different files
            os.close(fd)

    def __enter__(self) -> "OutLock":
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 65_536, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown"
    command = " ".join(str(a) for a in info.get("command", []))[:200]
    return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}" + (f": {command}" if command else "")
