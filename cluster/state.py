"""Persisted stage outputs under ``OUT/.theme-engine``: a re-run with the same inputs and settings
reuses every stage whose fingerprint is unchanged, and an interrupted stage resumes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np


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

    def __init__(self, out: Path) -> None:
        self.root = Path(out) / ".theme-engine"
        self.root.mkdir(parents=True, exist_ok=True)

    def dir(self, stage: str) -> Path:
        d = self.root / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def finished(self, stage: str, fp: str) -> dict[str, Any] | None:
        marker = self.root / stage / "done.json"
        if not marker.exists():
            return None
        record = json.loads(marker.read_text())
        return record if record.get("fingerprint") == fp else None

    def mark_done(self, stage: str, fp: str, record: dict[str, Any]) -> None:
        atomic_write_json(self.dir(stage) / "done.json", {"fingerprint": fp, **record})

    def invalidate(self, stage: str) -> None:
        marker = self.root / stage / "done.json"
        if marker.exists():
            marker.unlink()

    def save_arrays(self, stage: str, name: str, **arrays: np.ndarray) -> None:
        path = self.dir(stage) / f"{name}.npz"
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    def load_arrays(self, stage: str, name: str) -> dict[str, np.ndarray]:
        with np.load(self.dir(stage) / f"{name}.npz", allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def has(self, stage: str, name: str) -> bool:
        return (self.root / stage / f"{name}.npz").exists()

    def save_json(self, stage: str, name: str, obj: Any) -> None:
        atomic_write_json(self.dir(stage) / f"{name}.json", obj)

    def load_json(self, stage: str, name: str) -> Any:
        return json.loads((self.dir(stage) / f"{name}.json").read_text())
