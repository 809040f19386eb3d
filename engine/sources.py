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
from typing import IO, Any

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
    if any(s in text for s in ("ACCESS_DENIED", "SIGNATURE_DOES_NOT_MATCH", "INVALID_ACCESS_KEY_ID", "Forbidden", "403", "Unauthorized", "401")):
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
