"""Near-duplicates: every pair with cosine >= threshold (exact, FAISS range search), then groups
and one kept document per duplicate set by a named policy.

Grouping (``DedupConfig.grouping``):
  * ``ranked`` (default) — documents are walked in keep order (the policy's ranking); each one
    that matches an already-kept document at or above the threshold becomes a duplicate of the
    best such match, otherwise it is kept. Every removed document is within the threshold of its
    kept representative, so natural near-neighbours cannot chain distinct documents together
    (the SemDeDup / NeMo Curator scheme).
  * ``components`` — union-find connected components of the pair graph; one kept per component.
    Simple, but chains of near-neighbours can merge distinct documents into one group.

Groups (reported in ``duplicates.parquet``) are always the connected components.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .deps import require
from .device import CPU, Device, gpu_errors
from .events import NULL_CONTROL, StageControl
from .partition import range_index


def _faiss() -> Any:
    # heavy import, only where needed; a clear MissingDependency when neither extra is installed
    return require("faiss")


def range_pairs(
    Q: np.ndarray,
    q_offset: int,
    B: np.ndarray,
    b_offset: int,
    threshold: float,
    batch_rows: int = 4096,
    control: StageControl = NULL_CONTROL,
    device: Device = CPU,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j, cos) with cos >= threshold between rows of ``Q`` and ``B`` (global ids
    ``q_offset + row``, ``b_offset + row``), keeping only ``i < j``. Exact (flat inner product:
    FAISS range search on CPU, its k-NN emulation on a cuda ``device``, which raises
    ``GpuUnavailable`` when the GPU cannot serve — see ``engine.partition.range_index``)."""
    if device.kind != "cuda":
        return _range_pairs(Q, q_offset, B, b_offset, threshold, batch_rows, control, device)
    with gpu_errors("near-duplicate search on GPU"):
        return _range_pairs(Q, q_offset, B, b_offset, threshold, batch_rows, control, device)


def _range_pairs(
    Q: np.ndarray,
    q_offset: int,
    B: np.ndarray,
    b_offset: int,
    threshold: float,
    batch_rows: int,
    control: StageControl,
    device: Device,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _faiss()  # a clear MissingDependency when neither extra is installed
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    B = np.ascontiguousarray(B, dtype=np.float32)
    index = range_index(B.shape[1], device, batch_rows)
    index.add(B)
    out_i, out_j, out_s = [], [], []
    for start in range(0, Q.shape[0], batch_rows):
        control.check()
        lims, sims, ids = index.range(Q[start : start + batch_rows], threshold)
        rows = np.repeat(np.arange(len(lims) - 1, dtype=np.int64), np.diff(lims.astype(np.int64))) + start + q_offset
        cols = ids.astype(np.int64) + b_offset
        keep = (rows < cols) & (sims >= threshold)
        out_i.append(rows[keep])
        out_j.append(cols[keep])
        out_s.append(sims[keep])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(out_i).astype(np.int64), np.concatenate(out_j), np.concatenate(out_s).astype(np.float32)


def brute_force_pairs(X: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Reference: every (i, j), i < j, with x_i . x_j >= threshold, from the full n x n product."""
    S = X.astype(np.float32) @ X.astype(np.float32).T
    i, j = np.nonzero(np.triu(S >= threshold, k=1))
    return set(zip(i.tolist(), j.tolist()))


@dataclass
class DedupResult:
    duplicate_of: np.ndarray  # int64, -1 where the document is kept
    similarity: np.ndarray  # float32 cosine to the kept representative, nan where kept
    group: np.ndarray  # int64 connected-component id, -1 for documents in no pair
    n_pairs: int
    n_groups: int


def keep_rank(policy: str, n: int, lengths: Sequence[int] | None = None, distances: np.ndarray | None = None) -> np.ndarray:
    """Position of each document in keep order (0 is kept first) for a named policy."""
    order_idx = np.arange(n)
    if policy == "first":
        order = order_idx
    elif policy == "longest":
        if lengths is None:
            raise ValueError("keep='longest' needs the document texts")
        order = np.lexsort((order_idx, -np.asarray(lengths)))
    elif policy == "central":
        if distances is None:
            raise ValueError("keep='central' needs the distances to the theme centroids")
        order = np.lexsort((order_idx, np.asarray(distances)))
    else:
        raise ValueError(f"unknown keep policy {policy!r}; use first, longest or central")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return rank


def group_duplicates(
    n: int,
    pi: np.ndarray,
    pj: np.ndarray,
    sims: np.ndarray,
    rank: np.ndarray,
    grouping: str = "ranked",
    vectors: np.ndarray | None = None,
) -> DedupResult:
    """Decide which documents are kept, given all pairs at or above the threshold."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    duplicate_of = np.full(n, -1, dtype=np.int64)
    similarity = np.full(n, np.nan, dtype=np.float32)
    group = np.full(n, -1, dtype=np.int64)
    if len(pi) == 0:
        return DedupResult(duplicate_of, similarity, group, 0, 0)
    graph = coo_matrix((np.ones(len(pi), dtype=np.int8), (pi, pj)), shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=False)
    in_pair = np.zeros(n, dtype=bool)
    in_pair[pi] = True
    in_pair[pj] = True
    # number the groups by their best-ranked member, so ids are stable and dense
    members = np.flatnonzero(in_pair)
    comps = comp[members]
    firsts = {}
    for m in members[np.argsort(rank[members], kind="stable")]:
        firsts.setdefault(int(comp[m]), len(firsts))
    group[members] = np.array([firsts[int(c)] for c in comps], dtype=np.int64)

    if grouping == "components":
        best = {}
        for m in members:
            c = int(comp[m])
            if c not in best or rank[m] < rank[best[c]]:
                best[c] = m
        reps = np.array([best[int(comp[m])] for m in members], dtype=np.int64)
        dup = members != reps
        duplicate_of[members[dup]] = reps[dup]
        if vectors is not None:
            similarity[members[dup]] = np.einsum("ij,ij->i", vectors[members[dup]], vectors[reps[dup]])
        else:
            sim_of = {(min(a, b), max(a, b)): s for a, b, s in zip(pi.tolist(), pj.tolist(), sims.tolist())}
            for m, r in zip(members[dup].tolist(), reps[dup].tolist()):
                similarity[m] = sim_of.get((min(m, r), max(m, r)), np.nan)
    elif grouping == "ranked":
        # adjacency (both directions) with similarities, walked in keep order
        a = np.concatenate([pi, pj])
        b = np.concatenate([pj, pi])
        s = np.concatenate([sims, sims])
        order = np.lexsort((b, a))
        a, b, s = a[order], b[order], s[order]
        bounds = np.searchsorted(a, np.arange(n + 1))
        kept = np.zeros(n, dtype=bool)
        for m in members[np.argsort(rank[members], kind="stable")]:
            lo, hi = bounds[m], bounds[m + 1]
            nb, ns = b[lo:hi], s[lo:hi]
            ok = kept[nb] & (rank[nb] < rank[m])
            if ok.any():
                best = int(np.argmax(np.where(ok, ns, -np.inf)))
                duplicate_of[m] = nb[best]
                similarity[m] = ns[best]
            else:
                kept[m] = True
    else:
        raise ValueError(f"unknown grouping {grouping!r}; use ranked or components")
    return DedupResult(duplicate_of, similarity, group, int(len(pi)), int(len(firsts)))
