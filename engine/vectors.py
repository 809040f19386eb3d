"""Checks on embedding vectors before they are used or persisted.

Every stage downstream of embed assumes float32 rows of one dimension, finite and of unit length
(cosine = dot product). A vector that is not — read back from a damaged cache, returned by a
server, or left over from an earlier run — would otherwise surface far away (NaN inertia, a
crash in a sparse product) with nothing naming its source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
