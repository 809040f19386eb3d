"""Checks on embedding vectors before they are used or persisted.

Every stage downstream of embed assumes float32 rows of one dimension, finite and of unit length
(cosine = dot product). A vector that is not — read back from a damaged cache, returned by a
server, or left over from an earlier run — would otherwise surface far away (NaN inertia, a
crash in a sparse product) with nothing naming its source.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NORM_TOLERANCE = 1e-3  # |‖v‖ − 1| allowed: float32 rounding of a normalised row is ~1e-7
CHECK_BLOCK = 65_536  # rows checked at a time (memory-mapped files are never read whole)


def invalid_rows(vectors: np.ndarray, dim: int, tol: float = NORM_TOLERANCE) -> np.ndarray:
    """Mask of the rows of ``vectors`` (n, ``dim``) that are not finite or not of unit length;
    every row is invalid when the array is not 2-D with ``dim`` columns."""
    v = np.asarray(vectors)
    if v.ndim != 2 or v.shape[1] != dim:
        return np.ones(v.shape[0] if v.ndim else 0, dtype=bool)
    if v.dtype not in (np.float32, np.float64):
        v = v.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        # squared norms in the rows' own precision: float32 rounding over a few thousand terms is
        # far below ``tol``, and an overflow (inf) or a NaN fails the check as it should
        norms = np.sqrt(np.einsum("ij,ij->i", v, v))
    return ~(np.isfinite(norms) & (np.abs(norms - 1.0) <= tol))


@dataclass(frozen=True)
class VectorProblem:
    """What is wrong with a stored array of vectors, for a message."""

    rows: int  # rows that fail the check (or every row when the shape is wrong)
    first: int  # index of the first such row, -1 for a shape problem
    detail: str

    def __str__(self) -> str:
        return self.detail


def check_stored(vectors: np.ndarray, rows: int, dim: int | None = None, tol: float = NORM_TOLERANCE) -> VectorProblem | None:
    """None when ``vectors`` holds ``rows`` finite unit-length float32 rows (of ``dim`` columns
    when given), else what is wrong; checked a block at a time."""
    v = vectors
    if v.ndim != 2 or v.shape[0] != rows or (dim is not None and v.shape[1] != dim) or v.dtype != np.float32:
        want = f"({rows}, {dim if dim is not None else 'd'}) float32"
        return VectorProblem(rows, -1, f"shape {tuple(v.shape)} {v.dtype}, expected {want}")
    bad, first = 0, -1
    for a in range(0, rows, CHECK_BLOCK):
        mask = invalid_rows(v[a : a + CHECK_BLOCK], v.shape[1], tol)
        if mask.any():
            if first < 0:
                first = a + int(np.flatnonzero(mask)[0])
            bad += int(mask.sum())
    if bad:
        return VectorProblem(bad, first, f"{bad} of {rows} vectors are not finite or not of unit length (first: row {first})")
    return None


def check_file(path: Path, rows: int | None = None, dim: int | None = None) -> str | None:
    """What is wrong with a stored ``vectors.npy`` (missing, unreadable, or rows that are not
    finite unit vectors of ``dim`` columns, ``rows`` of them when given), or None; memory-mapped."""
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        return f"{path} is not readable ({exc})"
    expected = rows if rows is not None else (vectors.shape[0] if vectors.ndim else 0)
    problem = check_stored(vectors, expected, dim)
    return None if problem is None else f"{path}: {problem}"


PART_NAME = "part-{:05d}.npy"


class VectorParts:
    """A stage's vectors as one array read in pieces: ``vectors.npy``, or the ``part-NNNNN.npy``
    files of a folder in order (as workers write them), each (rows, d) float32. Rows are read a
    range or a selection at a time, each part memory-mapped only while it is read, so whoever
    reads (the driver, a shard actor) holds what it asked for and nothing else."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = [Path(p) for p in paths]
        shapes = [_npy_shape(p) for p in self.paths]
        dims = {s[1] for s in shapes if s[0]}
        if len(dims) > 1:
            raise ValueError(f"vector parts of different dimensions {sorted(dims)} in {self.paths[0].parent}")
        self.dim = dims.pop() if dims else (shapes[0][1] if shapes else 0)
        self.offsets = np.concatenate([[0], np.cumsum([s[0] for s in shapes])]).astype(np.int64)

    @classmethod
    def open(cls, path: Path) -> VectorParts:
        """``path``: a ``.npy`` file, or a folder of parts."""
        path = Path(path)
        return cls(part_files(path, ".npy")) if path.is_dir() else cls([path])

    @staticmethod
    def write(folder: Path, blocks: list[np.ndarray]) -> VectorParts:
        """``blocks`` as the parts of ``folder`` (for tests and benchmarks; workers write their own)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for i, block in enumerate(blocks):
            np.save(folder / PART_NAME.format(i), np.ascontiguousarray(block, dtype=np.float32))
        return VectorParts.open(folder)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.offsets[-1]), int(self.dim)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    ndim = 2
    dtype = np.dtype(np.float32)

    def rows(self, a: int, b: int) -> np.ndarray:
        """A copy of rows ``[a, b)``."""
        a, b = max(0, int(a)), min(len(self), int(b))
        out = np.empty((max(0, b - a), self.dim), dtype=np.float32)
        first = int(np.searchsorted(self.offsets, a, side="right")) - 1
        for p in range(max(first, 0), len(self.paths)):
            lo, hi = int(self.offsets[p]), int(self.offsets[p + 1])
            if lo >= b:
                break
            s, e = max(a, lo), min(b, hi)
            if e > s:
                m = np.load(self.paths[p], mmap_mode="r")
                out[s - a : e - a] = m[s - lo : e - lo]
                del m
        return out

    def take(self, rows: np.ndarray) -> np.ndarray:
        """A copy of the rows ``rows`` (any order)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((rows.size, self.dim), dtype=np.float32)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows out of range 0..{len(self) - 1}")
        part = np.searchsorted(self.offsets, rows, side="right") - 1
        for p in np.unique(part).tolist():
            sel = np.flatnonzero(part == p)
            m = np.load(self.paths[p], mmap_mode="r")
            out[sel] = m[rows[sel] - self.offsets[p]]
            del m
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            a, b, step = key.indices(len(self))
            return self.rows(a, b)[::step] if step != 1 else self.rows(a, b)
        if isinstance(key, (int, np.integer)):
            return self.take(np.asarray([key]))[0]
        key = np.asarray(key)
        if key.dtype == bool:
            key = np.flatnonzero(key)
        return self.take(key)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self.rows(0, len(self))
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, copy of the block) for blocks of ``rows`` rows."""
        for a in range(0, len(self), rows):
            yield a, self.rows(a, a + rows)

    def check(self, rows: int | None = None, dim: int | None = None) -> str | None:
        """What is wrong with the parts (not ``rows`` rows of ``dim`` columns when given, or a part
        that :func:`check_file` finds wrong), or None; a part memory-mapped at a time."""
        if rows is not None and len(self) != rows or dim is not None and self.dim != dim:
            return f"{self.where}: shape {self.shape}, expected ({rows}, {dim if dim is not None else 'd'})"
        return next((problem for p in self.paths if (problem := check_file(p, dim=dim)) is not None), None)

    @property
    def where(self) -> str:
        return str(self.paths[0]) if len(self.paths) == 1 else str(self.paths[0].parent)


def rows_of_parts(blocks: list[VectorParts], rows: np.ndarray) -> np.ndarray:
    """The vectors of the sorted rows ``rows`` of ``blocks`` read as one array, block after block
    (each read where this runs: the driver, or a Ray task handed the blocks, which are paths)."""
    out = np.empty((len(rows), blocks[0].dim if blocks else 0), dtype=np.float32)
    lo = 0
    for block in blocks:
        a, b = np.searchsorted(rows, [lo, lo + len(block)])
        if b > a:
            out[a:b] = block[rows[a:b] - lo]
        lo += len(block)
    return out


def _npy_shape(path: Path) -> tuple[int, int]:
    """The (rows, d) of a float32 ``.npy`` file, from its header alone."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
    if len(shape) != 2 or dtype != np.float32:
        raise ValueError(f"{path}: expected a (rows, d) float32 array, got {shape} {dtype}")
    return int(shape[0]), int(shape[1])


def save_npz(path: Path, **arrays: Any) -> None:
    """``arrays`` as the ``.npz`` file ``path``, written to a temporary name and renamed: a reader
    finds the whole file or none."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def part_files(folder: Path, suffix: str) -> list[Path]:
    """The ``part-N<suffix>`` files of ``folder`` in the order of N (a number of any width)."""
    found = [p for p in Path(folder).glob(f"part-*{suffix}") if p.name[5 : -len(suffix)].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5 : -len(suffix)]))
