"""Where inputs live: local paths (a shared filesystem is one) and object stores (``s3://``,
``gs://``, any URL a pyarrow filesystem serves), read the same way wherever the reading runs.

A local input is a :class:`~pathlib.Path`; a remote one is its URL, a ``str``. Every process (the
driver, each Ray worker) builds its own filesystem from the URL and the standard environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` for S3-compatible stores;
``GOOGLE_APPLICATION_CREDENTIALS`` for GCS): credentials never travel with a task and never
appear in a message. Failures the user can act on (credentials refused, no such bucket or object,
the store unreachable) are :class:`InputError` in one line that names the URL.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import IO, Any, Callable

Location = Path | str  # a local path, or the URL of an object in a store

HIDDEN = (".", "_")  # names a listing leaves out: _SUCCESS, .crc and other writers' markers


class InputError(ValueError):
    """An input the user must fix (missing file, unknown format, nothing usable)."""


def is_url(raw: Any) -> bool:
    """Whether ``raw`` names an object in a store (``scheme://…``) rather than a local path."""
    s = str(raw)
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", s)) and not s.startswith("file://")


def location(raw: Any) -> Location:
    """An INPUT argument as a location: its URL, or a local path (``file://`` URLs included)."""
    s = str(raw)
    if s.startswith("file://"):
        return Path(s[len("file://") :])
    return s if is_url(s) else Path(s)


_FILESYSTEMS: dict[tuple[str, str, str], Any] = {}
_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "GOOGLE_APPLICATION_CREDENTIALS")


def _filesystem(url: str) -> tuple[Any, str]:
    """This process's pyarrow filesystem for ``url`` (one per scheme, bucket and credentials: S3
    resolves a bucket's region once) and the path within it."""
    import pyarrow.fs as pafs

    scheme, rest = url.split("://", 1)
    bucket = rest.split("/", 1)[0]
    env = hashlib.sha256("\0".join(os.environ.get(v, "") for v in _CREDENTIAL_VARS).encode()).hexdigest()
    key = (scheme.lower(), bucket, env)
    try:
        if key not in _FILESYSTEMS:
            _FILESYSTEMS[key] = pafs.FileSystem.from_uri(url)[0]
        path = pafs.FileSystem.from_uri(url)[1] if scheme.lower() not in ("s3", "gs", "gcs") else rest.rstrip("/")
    except (OSError, ValueError) as exc:
        raise InputError(explain(exc, url)) from None
    return _FILESYSTEMS[key], path


def explain(exc: BaseException, url: str) -> str:
    """One line for a failed access to ``url``: what went wrong and what to check."""
    text = str(exc)
    scheme = url.split("://", 1)[0].lower()
    creds = "GOOGLE_APPLICATION_CREDENTIALS" if scheme in ("gs", "gcs") else "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    where = f" at {endpoint}" if endpoint and scheme == "s3" else ""
    code = re.search(r"AWS Error ([A-Z_]+)", text)
    status = re.search(r"(?<![\d:.])40[13](?!\d)", text)  # an HTTP status, not a port or address holding the digits
    if status or any(s in text for s in ("ACCESS_DENIED", "SIGNATURE_DOES_NOT_MATCH", "INVALID_ACCESS_KEY_ID", "Forbidden", "Unauthorized")):
        return f"{url}: the object store{where} refused the credentials ({code.group(1) if code else 'access denied'}); check {creds}"
    if any(s in text for s in ("NETWORK_CONNECTION", "curlCode", "Couldn't connect", "Could not connect", "Connection refused", "timed out", "Timeout")):
        return f"{url}: cannot reach the object store{where} (the connection failed or dropped); check the network" + (
            " and AWS_ENDPOINT_URL" if scheme == "s3" else ""
        ) + ", then run the same command again: finished stages are kept"
    if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return f"{url}: no such bucket{where}"
    if isinstance(exc, FileNotFoundError) or "does not exist" in text or "NotFound" in text:
        return f"{url}: no such object{where}"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"{url}: cannot read it ({first})"


def _missing(url: str, fs: Any, path: str) -> str:
    """Why ``url`` was not found: its bucket is missing, or the object is."""
    import pyarrow.fs as pafs

    bucket = path.split("/", 1)[0]
    try:
        gone = fs.get_file_info(bucket).type == pafs.FileType.NotFound
    except OSError as exc:
        return explain(exc, url)
    scheme = url.split("://", 1)[0]
    return f"{scheme}://{bucket}: no such bucket (from {url})" if gone else f"{url}: no such file or directory"


def _call(url: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except (OSError, ValueError) as exc:
        raise InputError(explain(exc, url)) from None


def expand(loc: Location, keep: Any) -> tuple[str, list[Location]] | None:
    """What ``loc`` is: ``("file", [loc])``, or ``("dir", files under it)`` (recursive, in sorted
    order, names starting with ``.`` or ``_`` left out, only those ``keep(name)`` accepts); None
    when nothing is there (a missing bucket is an :class:`InputError`)."""
    if isinstance(loc, Path):
        if loc.is_dir():
            found = sorted(p for p in loc.rglob("*") if p.is_file() and keep(p.name) and not _hidden(p.relative_to(loc).parts))
            return "dir", list(found)
        return ("file", [loc]) if loc.is_file() else None
    import pyarrow.fs as pafs

    fs, path = _filesystem(loc)
    info = _call(loc, fs.get_file_info, path)
    if info.type == pafs.FileType.File:
        return "file", [loc]
    if info.type == pafs.FileType.NotFound:
        message = _missing(loc, fs, path)
        if "no such bucket" in message:
            raise InputError(message)
        return None
    scheme = loc.split("://", 1)[0]
    listed = _call(loc, fs.get_file_info, pafs.FileSelector(path, recursive=True))
    found = []
    for f in listed:
        rel = f.path[len(path) :].lstrip("/").split("/")
        if f.type == pafs.FileType.File and keep(rel[-1]) and not _hidden(rel):
            found.append(f"{scheme}://{f.path}")
    return "dir", sorted(found)


def _hidden(parts: tuple[str, ...] | list[str]) -> bool:
    return any(p.startswith(HIDDEN) for p in parts)


def name_of(loc: Location) -> str:
    return loc.name if isinstance(loc, Path) else loc.rstrip("/").rsplit("/", 1)[-1]


def relative(loc: Location, root: Location) -> str:
    """``loc``'s path below the directory ``root``, with ``/``."""
    if isinstance(loc, Path) and isinstance(root, Path):
        return str(loc.relative_to(root))
    return str(loc)[len(str(root).rstrip("/")) + 1 :]


def size(loc: Location) -> int:
    if isinstance(loc, Path):
        return loc.stat().st_size
    fs, path = _filesystem(loc)
    return int(_call(loc, fs.get_file_info, path).size)


def open_input(loc: Location) -> IO[bytes]:
    """A binary, seekable reader of ``loc`` (close it, or use it in ``with``)."""
    if isinstance(loc, Path):
        return loc.open("rb")
    fs, path = _filesystem(loc)
    return _call(loc, fs.open_input_file, path)


def read_bytes(loc: Location, start: int = 0, length: int = -1) -> bytes:
    """``length`` bytes of ``loc`` from ``start`` (all of it by default)."""
    if isinstance(loc, Path):
        with loc.open("rb") as fh:
            fh.seek(start)
            return fh.read(length)
    with open_input(loc) as fh:
        try:
            fh.seek(start)
            return bytes(fh.read(length if length >= 0 else None))
        except OSError as exc:
            raise InputError(explain(exc, loc)) from None


def parquet_source(loc: Location) -> Any:
    """What ``pyarrow.parquet`` opens: the local path, or the store's reader."""
    return loc if isinstance(loc, Path) else open_input(loc)


def load_npy(loc: Location) -> Any:
    """A ``.npy`` array: memory-mapped when local, read whole from a store."""
    import numpy as np

    if isinstance(loc, Path):
        return np.load(loc, mmap_mode="r", allow_pickle=False)
    return np.load(io.BytesIO(read_bytes(loc)), allow_pickle=False)


def identity(loc: Location) -> str:
    """What a re-run compares to know an input is unchanged: the SHA-256 of a local file; an
    object's size and modification time (hashing it would read it all through the driver)."""
    if isinstance(loc, Path):
        with loc.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    fs, path = _filesystem(loc)
    info = _call(loc, fs.get_file_info, path)
    return f"{loc}|{info.size}|{info.mtime_ns}"


# ----------------------------------------------------------------------------- results in a store
# A run whose --out is an object-store URL works in a local copy (its stage state, lock and each
# generation of outputs) and publishes every finished generation to the URL: the data files first
# (a Parquet dataset part by part), manifest.json last, so a reader that finds the new manifest
# finds its files. The copy lets a re-run reuse its stages and an update grow the run.


def working_copy(url: str, cache_dir: Path | str | None) -> Path:
    """The local folder a run published to ``url`` works in: ``CACHE/outputs/SCHEME/BUCKET/DIGEST``
    under ``cache_dir`` (the default cache folder when None; one per URL, the same for every
    command given that URL and cache folder)."""
    if not cache_dir:
        from .cache import default_cache_dir

        cache_dir = default_cache_dir()
    url = url.rstrip("/")
    scheme, rest = url.split("://", 1)
    bucket = re.sub(r"[^A-Za-z0-9._-]", "_", rest.split("/", 1)[0]) or "_"
    return Path(cache_dir) / "outputs" / scheme.lower() / bucket / hashlib.sha256(url.encode()).hexdigest()[:16]


def _written(url: str, exc: BaseException) -> str:
    line = explain(exc, url)
    return line.replace("cannot read it", "cannot write it") if "cannot read it" in line else line


PartsCopier = Callable[[list[str]], int]


def upload_files(folder: Path | str, url: str, names: list[str]) -> int:
    """The files ``names`` (paths relative to the local ``folder``) copied under ``url``, each to
    the same relative name; returns the bytes written. Failures raise :class:`InputError` in one
    line naming the URL. What ``upload_result`` does with a dataset's parts, in its own process or
    in the Ray tasks its caller hands it."""
    import pyarrow.fs as pafs

    url = url.rstrip("/")
    fs, root = _filesystem(url)
    local = pafs.LocalFileSystem()
    written = 0
    try:
        for name in names:
            src = Path(folder) / name
            pafs.copy_files(str(src), f"{root}/{name}", source_filesystem=local, destination_filesystem=fs)
            written += src.stat().st_size
    except (OSError, ValueError) as exc:
        raise InputError(_written(url, exc)) from None
    return written


def upload_result(folder: Path, url: str, names: tuple[str, ...], last: str, copy_parts: PartsCopier | None = None) -> int:
    """Publish the files ``names`` of the local result ``folder`` under ``url`` (``last`` after
    every other one); a name the result lacks, and a part of a dataset the result no longer has,
    is deleted from the store. ``copy_parts`` uploads a dataset's parts (their paths relative to
    ``folder``; it returns the bytes written): the driver spreads them over Ray tasks, so that a
    large result does not pass through one process; without it they are copied here. Returns the
    bytes written. Failures raise :class:`InputError` in one line naming the URL."""
    import pyarrow.fs as pafs

    url = url.rstrip("/")
    fs, root = _filesystem(url)
    copy = copy_parts or (lambda rels: upload_files(folder, url, rels))
    written = 0
    try:
        for name in sorted(names, key=lambda n: n == last):
            src, dst = Path(folder) / name, f"{root}/{name}"
            there = fs.get_file_info(dst).type
            if not src.exists():
                if there == pafs.FileType.File:
                    fs.delete_file(dst)
                elif there == pafs.FileType.Directory:
                    fs.delete_dir(dst)
                continue
            if src.is_dir():
                if there == pafs.FileType.File:
                    fs.delete_file(dst)
                keep = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
                written += copy([f"{name}/{k}" for k in keep])
                if there == pafs.FileType.Directory:  # then the parts it no longer has
                    kept = set(keep)
                    for info in fs.get_file_info(pafs.FileSelector(dst, recursive=True)):
                        if info.type == pafs.FileType.File and info.path[len(dst) + 1 :] not in kept:
                            fs.delete_file(info.path)
            else:
                if there == pafs.FileType.Directory:
                    fs.delete_dir(dst)
                written += upload_files(folder, url, [name])
    except InputError:  # already one line (a Ray task's arrives wrapped: its caller unwraps it)
        raise
    except (OSError, ValueError) as exc:
        raise InputError(_written(url, exc)) from None
    return written


def download_result(url: str, folder: Path, names: tuple[str, ...], first: str) -> Path:
    """The result published at ``url`` copied into the local ``folder``: ``first`` (its manifest)
    before the other ``names`` it has. Raises :class:`InputError` when ``url`` holds no result."""
    import pyarrow.fs as pafs

    url = url.rstrip("/")
    fs, root = _filesystem(url)
    local = pafs.LocalFileSystem()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if fs.get_file_info(f"{root}/{first}").type != pafs.FileType.File:
            raise InputError(f"{url} holds no finished theme-engine run (no {first})")
        for name in (first, *[n for n in names if n != first]):
            src = f"{root}/{name}"
            kind = fs.get_file_info(src).type
            if kind == pafs.FileType.File:
                files = [(src, folder / name)]
            elif kind == pafs.FileType.Directory:  # a dataset: its files, each into its own folder
                found = fs.get_file_info(pafs.FileSelector(src, recursive=True))
                files = [(f.path, folder / name / f.path[len(src) + 1 :]) for f in found if f.type == pafs.FileType.File]
            else:
                continue
            for path, target in files:
                target.parent.mkdir(parents=True, exist_ok=True)
                pafs.copy_files(path, str(target), source_filesystem=fs, destination_filesystem=local)
    except InputError:
        raise
    except (OSError, ValueError) as exc:
        raise InputError(explain(exc, url)) from None
    return folder


def published_manifest(url: str, name: str = "manifest.json") -> bytes | None:
    """The bytes of the manifest published at ``url``, or None when there is none yet."""
    import pyarrow.fs as pafs

    url = url.rstrip("/")
    fs, root = _filesystem(url)
    try:
        if fs.get_file_info(f"{root}/{name}").type != pafs.FileType.File:
            return None
        with fs.open_input_stream(f"{root}/{name}") as fh:
            return bytes(fh.read())
    except (OSError, ValueError) as exc:
        raise InputError(explain(exc, url)) from None


LEASE_NAME = ".theme-engine-publishing.json"  # beside a published result while one machine uploads it


def _pid_namespace() -> str:
    """Which process ids this process sees (its PID namespace: containers on one host, even of one
    hostname, each have their own), so that a lease's process is looked for only where it ran."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


class PublishLease:
    """Who is publishing a result to ``url`` now: an object ``LEASE_NAME`` under it that names
    the holder (host, PID namespace, process, a token) and when the lease expires, renewed by a
    thread every ``ttl / 3`` seconds while the upload runs and deleted at its end. Another
    machine whose upload would interleave with this one's finds it and stops in one line; a
    lease whose holder died expires after ``ttl`` seconds (at once on the holder's own host and
    PID namespace, where its process is seen to be gone). Object stores offer no lock: two
    machines that write their leases within ``settle`` seconds of each other both read back the
    last one written, and only its writer goes on."""

    def __init__(self, url: str, ttl: float = 120.0, settle: float = 1.0) -> None:
        import socket
        import uuid

        self.url = url.rstrip("/")
        self.ttl, self.settle = ttl, settle
        self.fs, root = _filesystem(self.url)
        self.path = f"{root}/{LEASE_NAME}"
        self.mine = {"host": socket.gethostname(), "pids": _pid_namespace(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self.since: float | None = None
        self._stop: Any = None
        self._thread: Any = None

    def _read(self) -> dict[str, Any] | None:
        import json

        import pyarrow.fs as pafs

        if self.fs.get_file_info(self.path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(self.path) as fh:
            try:
                held = json.loads(fh.read())
            except ValueError:
                return None  # a lease half-written by a writer that died: no one's
        return held if isinstance(held, dict) else None

    def _write(self) -> None:
        import json
        import time

        now = time.time()
        self.since = self.since or now
        body = {**self.mine, "since": self.since, "expires": now + self.ttl}
        with self.fs.open_output_stream(self.path) as fh:
            fh.write(json.dumps(body).encode())

    def _held_by_another(self, held: dict[str, Any] | None) -> bool:
        import time

        import psutil

        if not held or held.get("token") == self.mine["token"] or float(held.get("expires", 0)) <= time.time():
            return False
        here = held.get("host") == self.mine["host"] and held.get("pids") == self.mine["pids"]
        if here and not psutil.pid_exists(int(held.get("pid", -1))):
            return False  # its holder on this host (and in this container's process ids) is gone
        return True

    def _busy(self, held: dict[str, Any] | None) -> InputError:
        import time

        who = "its lease was removed as this one took it"
        if held:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(held.get("since", 0))))
            who = f"{held.get('host')}, pid {held.get('pid')}, since {since}"
        return InputError(f"{self.url}: another process is publishing a result there ({who}); two uploads would mix their files")

    def acquire(self) -> PublishLease:
        """Take the lease, or raise :class:`InputError` naming its holder."""
        import threading
        import time

        try:
            held = self._read()
            if self._held_by_another(held):
                raise self._busy(held)
            self._write()
            time.sleep(self.settle)
            held = self._read()
            if held is None or held.get("token") != self.mine["token"]:
                raise self._busy(held)
        except InputError:
            raise
        except (OSError, ValueError) as exc:
            raise InputError(_written(self.url, exc)) from None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="publish-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                held = self._read()
                if held is not None and held.get("token") != self.mine["token"]:
                    return  # taken over after it expired: never overwrite the new holder's
                self._write()
            except (OSError, ValueError):  # the upload itself will meet what broke this, and say so
                return

    def release(self) -> None:
        """Stop renewing and delete the lease, if it is still this one's."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
        try:
            held = self._read()
            if held is not None and held.get("token") == self.mine["token"]:
                self.fs.delete_file(self.path)
        except (OSError, ValueError):
            pass  # it expires by itself

    def __enter__(self) -> PublishLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
