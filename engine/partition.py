"""Near-duplicate pairs at scale: partition by nearest centroid, spill rows near a boundary, search
exactly inside each partition — no n x n work, no n x n matrix.

The scheme (IVF-style owners and guests)
---------------------------------------
``P`` centroids are fitted by k-means on a sample (:func:`partition_centroids`). Every row ``x`` is

  * **owned** by its *primary* partition ``p(x)``, its nearest centroid — exactly one per row; and
  * a **guest** (a query only, never indexed) in each partition ``q != p(x)`` whose boundary with
    ``p(x)`` lies within ``margin`` of ``x`` (:func:`route`), at most ``spill`` of them, nearest
    boundaries first.

Inside a partition, the owners are indexed (FAISS ``IndexFlatIP``) and queried by the owners
(upper triangle only) and by the guests: :func:`pairs_in_partition` returns every pair at or
above the threshold there. A pair is therefore found when both rows have the same owner, or when
one row is a guest in the other's owner partition. Pairs found in two partitions (each row a
guest in the other's) are deduplicated by :func:`merge_pairs`.

Why owners + guests rather than SemDeDup-style copies (every placement indexed): with copies a
partition of ``m`` owners and ``g`` spilled rows costs ``(m + g)^2 / 2`` dot products; with guests
``m^2 / 2 + g m`` — linear, not quadratic, in the spill — and the recall argument below needs no
more than guests.

Recall guarantee (why the margin is what it is)
-----------------------------------------------
Unit rows ``x, y`` with ``x . y >= t`` are within chord ``|x - y| <= delta = sqrt(2 - 2t)``. Cells
are Euclidean Voronoi cells: ``p(z) = argmax_k f_k(z)``, ``f_k(z) = z . c_k - |c_k|^2 / 2`` (any
affine scores would do). Say ``p = p(x) != q = p(y)``; the ``p|q`` boundary ``{f_p = f_q}`` is a
hyperplane with unit normal ``n = (c_p - c_q) / |c_p - c_q|``, and ``h(z) = (f_p(z) - f_q(z)) /
|c_p - c_q|`` is the signed distance to it: ``h(x) >= 0`` (``x`` prefers ``p``), ``h(y) <= 0``
(``y`` prefers ``q``). Then

    h(x) + (-h(y)) = (x - y) . n <= |x - y| <= delta,

so ``min(h(x), -h(y)) <= delta / 2``: either ``x`` lies within ``delta/2`` of the ``p|q`` boundary
— so :func:`route` makes it a guest of ``q``, where ``y`` is an owner — or ``y`` lies within
``delta/2`` of it and becomes a guest of ``p``, where ``x`` is an owner. Either way the pair is
found. Hence, with ``margin >= safe_margin(t) = sqrt(2 - 2t) / 2`` and no cap (``spill=None``),
the partitioned search returns **exactly** the brute-force pair set (up to float32 rounding of
the scores, which :func:`route` absorbs with a small slack). The partitions do not have to be
good for this: bad centroids cost time (more guests, bigger partitions), never pairs. The
boundary used is the pairwise ``p|q`` bisector, which contains cell ``q``: a conservative test.

Only two things can lose a pair: a cap ``spill`` below a row's number of boundaries within the
margin (:class:`Routes` counts such rows in ``n_capped``; with ``n_capped == 0`` the result is
exact), or a ``margin`` below ``safe_margin`` (a speed/recall trade: in high dimensions the
displacement ``x - y`` of a near-duplicate is nearly orthogonal to any one boundary normal, so a
fraction of the safe margin often keeps recall near 1 — measure it, ``bench/dedup.py`` does).

How it maps onto shards (the Ray step wires it)
-----------------------------------------------
1. a sample drawn across shards → :func:`partition_centroids` (driver; only the sample moves);
2. every shard calls :func:`route` on its own rows (``offset`` = its first global id) with the
   broadcast centroids — per-row, so the result does not depend on how rows are sharded;
3. shuffle: each shard sends, per bucket of partitions, its placements (row ids, partition,
   owner flag; no vectors) to the task searching that bucket (:func:`group_routes` does the
   grouping locally);
4. each task reads the placed rows' vectors from the shard blocks (a node fetches each block
   once, however many placements a row has) and calls :func:`pairs_in_partition` per partition;
5. :func:`merge_pairs` deduplicates the union (or a reduce by key range does, at larger scale).

Rows on different shards/nodes meet because placement depends on the vector, not the shard.
Memory: :func:`route` holds ``batch_rows x P`` scores at a time; :func:`pairs_in_partition` holds
one partition's vectors, its index and one ``batch_rows`` block's results.

On GPU (``device`` of kind cuda)
--------------------------------
FAISS GPU indexes have no range search, so the exact threshold search is emulated with k-NN
(:func:`knn_range_search`): each query asks for ``k`` neighbours; a query whose ``k``-th
similarity is still ``>= threshold`` may have more, so it asks again with ``2k`` (up to the
index size); past FAISS GPU's largest ``k`` (2048) the few queries left get exact similarities
to every indexed vector on the host. Neighbours come sorted, so no pair is lost. The emulation
is pure: :class:`KnnRangeIndex` runs it over any FAISS index with ``search`` — a
``GpuIndexFlatIP`` on GPU, a CPU ``IndexFlatIP`` in the tests. Query batches are sized from the
free GPU memory and the ``k`` of the round. GPU errors surface as ``GpuUnavailable``, for the
caller's ``run_with_fallback`` to rerun on CPU.

:func:`partitioned_pairs` runs the whole scheme in one process (tests, benchmarks, small corpora).
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np

from .deps import require
from . import seeds
from .device import (
    CPU,
    FAISS_GPU_MAX_K,
    Device,
    GpuUnavailable,
    gpu_errors,
    gpu_flat_ip,
    gpu_free_bytes,
)

_EMPTY = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))

# float32 scores carry absolute errors of ~1e-7 per unit of norm; a boundary test is loosened by
# this much so that rounding never drops a placement the guarantee needs.
_SCORE_SLACK = 1e-5


def _faiss() -> Any:
    # heavy import, only where needed; a clear MissingDependency when neither extra is installed
    return require("faiss")


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not -1.0 <= t <= 1.0 or math.isnan(t):
        raise ValueError(f"threshold must be a cosine in [-1, 1], got {threshold!r}")
    return t


def safe_margin(threshold: float) -> float:
    """The boundary distance within which a row must spill for an exact result: ``sqrt(2 - 2t) / 2``.

    Half the largest chord between unit vectors with cosine ``>= threshold`` (see the module
    docstring for the proof)."""
    t = _check_threshold(threshold)
    return 0.5 * math.sqrt(max(2.0 - 2.0 * t, 0.0))


def default_n_partitions(n: int) -> int:
    """``max(sqrt(n), min(1000, n / 100))`` partitions.

    Routing costs ``n P d`` and, with balanced partitions, the search about ``n (n / P) d``, which
    ``sqrt(n)`` balances. But when the data has more natural clusters than partitions, k-means
    leaves "hub" partitions holding several clusters — and guests from all around — whose
    quadratic cost dominates (bench/README.md, "Choices measured in the code"). So lean to more,
    smaller partitions: up to 1,000 while that keeps routing at <= 1% of a brute-force search
    (n / P >= 100)."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    return max(1, int(round(math.sqrt(n))), min(1000, n // 100))


# ----------------------------------------------------------------------------- centroids


def partition_centroids(
    sample: np.ndarray, n_partitions: int, seed: int = 0, max_iter: int = 5, *, normalise: bool = False
) -> np.ndarray:
    """``n_partitions`` centroids (float32, ``P x d``) from k-means++ and ``max_iter`` Lloyd
    iterations on ``sample`` (unit rows drawn uniformly across the corpus).

    Kept as k-means left them by default: :func:`route` assigns rows to the nearest centroid
    (Euclidean), the partition k-means optimised. ``normalise=True`` returns unit centroids, which
    makes the cells cosine cells instead; raw centroids need fewer placements for the exact
    guarantee (low-norm "mixture" centroids become hubs once normalised; bench/README.md, "Choices
    measured in the code"). Their quality only affects speed (partition sizes, spilled rows), never the
    recall guarantee; a few iterations on ~32 rows per partition are plenty."""
    from .kmeans import ConvergenceWarning, fit_local  # noqa: PLC0415 - keeps this module's import light

    sample = np.asarray(sample)
    if sample.ndim != 2 or sample.shape[0] == 0:
        raise ValueError(f"sample must be a non-empty 2-D array, got shape {sample.shape}")
    if not isinstance(n_partitions, numbers.Integral) or isinstance(n_partitions, bool) or n_partitions < 1:
        raise ValueError(f"n_partitions must be a positive integer, got {n_partitions!r}")
    if n_partitions > sample.shape[0]:
        raise ValueError(f"n_partitions={n_partitions} exceeds the sample size {sample.shape[0]}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if n_partitions == 1:
        C = sample.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
    else:
        with warnings.catch_warnings():  # a few Lloyd iterations are intended here
            warnings.simplefilter("ignore", ConvergenceWarning)
            # k-means++ (greedy, the costly part) on 16 rows per centroid, Lloyd on the whole sample
            init = min(sample.shape[0], max(10_000, 16 * n_partitions))
            C = np.asarray(
                fit_local(sample, n_partitions, max_iter=max_iter, seed=seeds.derive(seed, "partition_fit"), init_sample_size=init).centroids,
                dtype=np.float32,
            )
    return _normalise_centroids(C, seed) if normalise else np.ascontiguousarray(C, dtype=np.float32)


def _normalise_centroids(C: np.ndarray, seed: int = 0) -> np.ndarray:
    C = np.array(C, dtype=np.float32, copy=True)
    norms = np.linalg.norm(C, axis=1)
    bad = ~(norms > 1e-12)
    if bad.any():  # a centroid at the origin (opposite rows cancelled): any direction will do
        C[bad] = seeds.rng(seed, "partition_fit", 1).standard_normal((int(bad.sum()), C.shape[1])).astype(np.float32)
        norms[bad] = np.linalg.norm(C[bad], axis=1)
    C /= norms[:, None]
    return np.ascontiguousarray(C, dtype=np.float32)


# ----------------------------------------------------------------------------- routing


@dataclass
class Routes:
    """Placements of rows into partitions, sorted by row id, the primary placement first.

    ``row_ids[k]`` (int64, global) is placed in ``part_ids[k]`` (int32) as its owner when
    ``is_primary[k]`` (one per row) and as a guest otherwise. ``n_capped`` counts the rows that
    had more than ``spill`` boundaries within the margin (the only rows whose pairs may be lost)."""

    row_ids: np.ndarray
    part_ids: np.ndarray
    is_primary: np.ndarray
    n_rows: int
    n_partitions: int
    n_capped: int = 0
    margin: float = 0.0
    spill: int | None = None

    @property
    def n_spilled(self) -> int:
        """Guest placements (the placements beyond one per row)."""
        return int(self.row_ids.size - self.n_rows)

    def concat(self, other: "Routes") -> "Routes":
        """Routes of two disjoint blocks of rows (e.g. two shards) as one."""
        if other.n_partitions != self.n_partitions:
            raise ValueError("routes over different centroids cannot be combined")
        row_ids = np.concatenate([self.row_ids, other.row_ids])
        part_ids = np.concatenate([self.part_ids, other.part_ids])
        is_primary = np.concatenate([self.is_primary, other.is_primary])
        order = np.lexsort((~is_primary, row_ids))
        return Routes(
            row_ids[order],
            part_ids[order],
            is_primary[order],
            self.n_rows + other.n_rows,
            self.n_partitions,
            self.n_capped + other.n_capped,
            self.margin,
            self.spill,
        )

    def partition_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """(owners, guests) per partition."""
        owners = np.bincount(self.part_ids[self.is_primary], minlength=self.n_partitions)
        guests = np.bincount(self.part_ids[~self.is_primary], minlength=self.n_partitions)
        return owners, guests


def route(
    X: np.ndarray,
    centroids: np.ndarray,
    spill: int | None = 8,
    *,
    threshold: float | None = None,
    margin: float | None = None,
    offset: int = 0,
    batch_rows: int = 4096,
) -> Routes:
    """Each row's primary partition (nearest centroid, Euclidean) and its guest partitions.

    A row ``x`` with primary ``p`` becomes a guest of ``q`` when its distance to the ``p|q``
    bisector, ``(f_p(x) - f_q(x)) / |c_p - c_q|`` with ``f_k(x) = x.c_k - |c_k|^2 / 2``, is at
    most ``margin``; at most ``spill`` of them, nearest boundaries first (``None``: no cap).
    ``margin`` defaults to ``safe_margin(threshold)``, the value that makes the search exact when
    nothing is capped — pass one of the two. Rows are global ids ``offset + i``. Work and memory
    are ``batch_rows x P`` per block; the result is per-row, so it does not depend on how rows are
    chunked. ``X`` rows must be unit vectors; centroids may have any norms."""
    if margin is None:
        if threshold is None:
            raise ValueError("route needs a threshold (for the safe margin) or an explicit margin")
        margin = safe_margin(threshold)
    margin = float(margin)
    if not margin >= 0.0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    if spill is not None and (not isinstance(spill, numbers.Integral) or isinstance(spill, bool) or spill < 0):
        raise ValueError(f"spill must be a non-negative integer or None, got {spill!r}")
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    X = np.asarray(X)
    C = np.asarray(centroids)
    if X.ndim != 2 or C.ndim != 2 or C.shape[0] == 0:
        raise ValueError(f"X and centroids must be 2-D and non-empty centroids, got {X.shape} and {C.shape}")
    if X.shape[1] != C.shape[1]:
        raise ValueError(f"X has {X.shape[1]} columns, centroids {C.shape[1]}")
    C = np.ascontiguousarray(C, dtype=np.float32)
    n, P = X.shape[0], C.shape[0]
    # Euclidean Voronoi cells: p(x) = argmax_k f_k(x), f_k(x) = x.c_k - |c_k|^2 / 2; the p|q
    # boundary has normal c_p - c_q, so a score gap f_p - f_q is a distance times |c_p - c_q|
    C64 = C.astype(np.float64)
    sq = np.einsum("ij,ij->i", C64, C64)
    chord = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2.0 * (C64 @ C64.T), 0.0, None)).astype(np.float32)
    reach = margin * chord + np.float32(_SCORE_SLACK)  # score gap allowed, per (p, q)
    reach_max = reach.max(axis=1)
    bias = (-0.5 * sq).astype(np.float32)
    Ct = np.ascontiguousarray(C.T)

    rows_out, parts_out, prim_out = [], [], []
    n_capped = 0
    for start in range(0, n, batch_rows):
        xb = np.ascontiguousarray(X[start : start + batch_rows], dtype=np.float32)
        b = xb.shape[0]
        norms = np.einsum("ij,ij->i", xb, xb)
        if np.abs(norms - 1.0).max(initial=0.0) > 2e-3:
            raise ValueError("rows must be L2-normalised (unit) vectors")
        local = np.arange(b)
        S = xb @ Ct  # b x P
        S += bias
        p = np.argmax(S, axis=1)
        sp = S[local, p]
        # one pass over the block with a per-row bound (the widest reach from p), then the exact
        # per-(p, q) test on the few candidates left
        cand = S >= (sp - reach_max[p])[:, None]
        cand[local, p] = False
        r, q = np.nonzero(cand)
        gap = sp[r] - S[r, q]
        ok = gap <= reach[p[r], q]
        r, q, gap = r[ok], q[ok], gap[ok]
        if spill is not None and r.size:
            counts = np.bincount(r, minlength=b)
            over = counts > spill
            if over.any():
                n_capped += int(over.sum())
                # nearest boundaries first (distance = gap / chord); r is sorted, so is the result
                dist = gap / np.maximum(chord[p[r], q], np.float32(1e-12))
                order = np.lexsort((q, dist, r))
                r, q = r[order], q[order]
                rank = np.arange(r.size) - np.searchsorted(r, r)  # position within its row
                keep = rank < spill
                r, q = r[keep], q[keep]
        rows_out.append(local + start + offset)
        parts_out.append(p)
        prim_out.append(np.ones(b, dtype=bool))
        rows_out.append(r.astype(np.int64) + start + offset)
        parts_out.append(q)
        prim_out.append(np.zeros(r.size, dtype=bool))
    if not rows_out:
        return Routes(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool), 0, P, 0, margin, spill)
    row_ids = np.concatenate(rows_out).astype(np.int64)
    part_ids = np.concatenate(parts_out).astype(np.int32)
    is_primary = np.concatenate(prim_out)
    order = np.lexsort((part_ids, ~is_primary, row_ids))
    return Routes(row_ids[order], part_ids[order], is_primary[order], n, P, n_capped, margin, spill)


def group_routes(routes: Routes) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(partition, row_ids, is_owner)`` for every non-empty partition, rows in id order — the
    shuffle, done locally (a shard actor would send each group to the partition's actor)."""
    order = np.lexsort((routes.row_ids, routes.part_ids))
    parts = routes.part_ids[order]
    bounds = np.flatnonzero(np.diff(parts)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, parts.size]):
        if hi > lo:
            idx = order[lo:hi]
            yield int(parts[lo]), routes.row_ids[idx], routes.is_primary[idx]


# ----------------------------------------------------------------------------- range search


def _radius(t: float) -> float:
    # FAISS keeps similarities strictly above the radius: go a hair lower, then filter exactly
    return float(np.nextafter(np.float32(t), np.float32(-np.inf))) - 1e-6


def knn_range_search(
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    queries: np.ndarray,
    ntotal: int,
    threshold: float,
    *,
    k0: int = 32,
    max_k: int | None = None,
    batch_rows: int | Callable[[int], int] | None = None,
    dense: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Range search by k-NN: for each query, every indexed vector with similarity ``>= threshold``.

    ``search(q, k)`` is a FAISS-style k-NN search over ``ntotal`` indexed vectors (similarities
    sorted in decreasing order, labels ``-1`` past the end). Each query starts with ``k0``
    neighbours; while its ``k``-th similarity is still ``>= threshold`` (so more may follow) and
    ``k < ntotal``, it searches again with ``2k``. Queries still open at ``max_k`` (the searcher's
    limit) get ``dense(q)``, their similarities to all ``ntotal`` vectors in index order (without
    ``dense`` they raise :class:`GpuUnavailable`). ``batch_rows`` bounds the queries per search,
    as a number or as a function of the round's ``k``.

    Returns ``(lims, sims, labels)`` as FAISS's ``range_search`` does: query ``i``'s results are
    ``sims[lims[i]:lims[i+1]]`` (float32) and ``labels[...]`` (int64), in no particular order."""
    queries = np.asarray(queries)
    nq = int(queries.shape[0])
    t = float(threshold)
    if nq == 0 or ntotal <= 0:
        return np.zeros(nq + 1, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
    if k0 < 1 or (max_k is not None and max_k < 1):
        raise ValueError(f"k0 and max_k must be >= 1, got {k0} and {max_k}")
    limit = ntotal if max_k is None else min(ntotal, max_k)

    def rows_for(k: int) -> int:
        if batch_rows is None:
            return nq
        return max(1, int(batch_rows(k) if callable(batch_rows) else batch_rows))

    found_q: list[np.ndarray] = []
    found_s: list[np.ndarray] = []
    found_l: list[np.ndarray] = []
    pending = np.arange(nq, dtype=np.int64)
    k = min(k0, limit)
    while pending.size:
        step = rows_for(k)
        still: list[np.ndarray] = []
        for start in range(0, pending.size, step):
            qi = pending[start : start + step]
            D, I = search(np.ascontiguousarray(queries[qi], dtype=np.float32), k)
            D = np.asarray(D, dtype=np.float32).reshape(qi.size, k)
            I = np.asarray(I, dtype=np.int64).reshape(qi.size, k)
            hit = (I >= 0) & (D >= t)
            # sorted: the k-th at or above the threshold means more may follow (unless k covers all)
            more = hit[:, k - 1] if k < ntotal else np.zeros(qi.size, dtype=bool)
            r, c = np.nonzero(hit & ~more[:, None])
            found_q.append(qi[r])
            found_s.append(D[r, c])
            found_l.append(I[r, c])
            still.append(qi[more])
        pending = np.concatenate(still) if still else pending[:0]
        if not pending.size:
            break
        if k >= limit:  # k < ntotal here, so limit is max_k: the searcher can give no more
            if dense is None:
                raise GpuUnavailable(f"{pending.size} queries have more than {k} neighbours above {t} and no dense fallback")
            step = max(1, (1 << 26) // max(ntotal, 1))  # ~256 MiB of float32 similarities at a time
            for start in range(0, pending.size, step):
                qi = pending[start : start + step]
                S = np.asarray(dense(np.ascontiguousarray(queries[qi], dtype=np.float32)), dtype=np.float32)
                r, c = np.nonzero(S >= t)
                found_q.append(qi[r])
                found_s.append(S[r, c])
                found_l.append(c.astype(np.int64))
            break
        k = min(2 * k, limit)
    q = np.concatenate(found_q)
    order = np.argsort(q, kind="stable")
    lims = np.zeros(nq + 1, dtype=np.int64)
    np.cumsum(np.bincount(q, minlength=nq), out=lims[1:])
    return lims, np.concatenate(found_s)[order].astype(np.float32), np.concatenate(found_l)[order]


class RangeIndex(Protocol):
    """A growing set of vectors that answers exact inner-product range searches."""

    @property
    def ntotal(self) -> int: ...

    def add(self, x: np.ndarray) -> None: ...

    def range(self, q: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(lims, sims, labels)`` with at least every similarity ``>= threshold`` (filter exactly)."""
        ...


class FlatRangeIndex:
    """CPU: a FAISS ``IndexFlatIP`` and its range search."""

    def __init__(self, dim: int) -> None:
        self.index = _faiss().IndexFlatIP(int(dim))

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, x: np.ndarray) -> None:
        self.index.add(x)

    def range(self, q: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lims, sims, labels = self.index.range_search(q, _radius(threshold))
        return lims.astype(np.int64), sims, labels.astype(np.int64)


class KnnRangeIndex:
    """Range search emulated by k-NN (:func:`knn_range_search`) over any FAISS index with
    ``search`` and ``ntotal``: a ``GpuIndexFlatIP`` on GPU, where FAISS has no range search; a CPU
    ``IndexFlatIP`` runs the very same code (tests). The added vectors are also kept on the host
    (references to the caller's blocks) for the rare query with more than ``max_k`` neighbours."""

    def __init__(
        self,
        index: Any,
        *,
        k0: int = 32,
        max_k: int | None = None,
        batch_rows: int | Callable[[int], int] | None = None,
    ) -> None:
        self.index = index
        self.k0 = k0
        self.max_k = max_k
        self.batch_rows = batch_rows
        self._blocks: list[np.ndarray] = []
        self._host: np.ndarray | None = None

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, x: np.ndarray) -> None:
        self.index.add(x)
        self._blocks.append(x)
        self._host = None

    def _dense(self, q: np.ndarray) -> np.ndarray:
        if self._host is None:
            self._host = np.ascontiguousarray(np.concatenate(self._blocks), dtype=np.float32)
            self._blocks = [self._host]
        return q @ self._host.T

    def range(self, q: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return knn_range_search(
            self.index.search,
            q,
            self.ntotal,
            threshold,
            k0=self.k0,
            max_k=self.max_k,
            batch_rows=self.batch_rows,
            dense=self._dense,
        )


def gpu_query_rows(device: Device, dim: int, cap: int, fraction: float = 0.25) -> Callable[[int], int]:
    """Queries per GPU k-NN search for a round's ``k``: what ``fraction`` of the free GPU memory
    holds at ``k`` results (float32 similarity + int64 label each) and one query vector per row,
    doubled for FAISS's own copies; at most ``cap``. FAISS tiles the query x database distances
    in its own temporary memory."""

    def rows(k: int) -> int:
        free = gpu_free_bytes(device) or 0
        per_row = 2 * (12 * k + 4 * dim)
        return max(1, min(cap, int(fraction * free) // per_row))

    return rows


def range_index(dim: int, device: Device = CPU, batch_rows: int = 4096) -> RangeIndex:
    """An empty exact range-search index on ``device``: FAISS ``IndexFlatIP`` on CPU; on GPU a
    ``GpuIndexFlatIP`` searched by k-NN (:class:`KnnRangeIndex`), queries batched from the free
    GPU memory (at most ``batch_rows``). A GPU that cannot serve raises ``GpuUnavailable``."""
    if device.kind != "cuda":
        return FlatRangeIndex(dim)
    with gpu_errors("near-duplicate search on GPU"):
        return KnnRangeIndex(
            gpu_flat_ip(device, dim), max_k=FAISS_GPU_MAX_K, batch_rows=gpu_query_rows(device, dim, batch_rows)
        )


# ----------------------------------------------------------------------------- search


def pairs_in_partition(
    vectors: np.ndarray,
    row_ids: np.ndarray,
    is_owner: np.ndarray,
    threshold: float,
    batch_rows: int = 4096,
    device: Device = CPU,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i, j, cos), ``i < j`` global ids, with cos >= threshold, among one partition's rows
    that has at least one owner: owner-owner pairs and guest-owner pairs (guest-guest pairs are
    found in an owner's partition). Exact (FAISS ``IndexFlatIP`` range search over the owners, or
    on a cuda ``device`` its k-NN emulation on ``GpuIndexFlatIP``: see :func:`range_index`),
    unique, sorted by (i, j); rows may come in any order.

    Owners are added to the index block by block from the last, and each block queries what is
    indexed so far, so every owner-owner pair is computed once (the upper triangle). Memory: the
    partition, its index, and one ``batch_rows`` block's results at a time."""
    t = _check_threshold(threshold)
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    V = np.asarray(vectors)
    ids = np.asarray(row_ids).astype(np.int64, copy=False)
    own = np.asarray(is_owner, dtype=bool)
    if V.ndim != 2 or ids.ndim != 1 or own.ndim != 1 or not (V.shape[0] == ids.size == own.size):
        raise ValueError(f"vectors (m x d), row_ids (m) and is_owner (m) disagree: {V.shape}, {ids.shape}, {own.shape}")
    if ids.size and np.unique(ids).size != ids.size:
        raise ValueError("a row appears twice in one partition")
    owners = np.flatnonzero(own)
    guests = np.flatnonzero(~own)
    if owners.size == 0 or ids.size < 2:
        return _EMPTY
    V = np.ascontiguousarray(V, dtype=np.float32)
    if device.kind != "cuda":
        return _search_flat(V, ids, owners, guests, t, batch_rows, range_index(V.shape[1]))
    with gpu_errors("near-duplicate search on GPU"):
        return _search_flat(V, ids, owners, guests, t, batch_rows, range_index(V.shape[1], device, batch_rows))


def _search_flat(
    V: np.ndarray, ids: np.ndarray, owners: np.ndarray, guests: np.ndarray, t: float, batch_rows: int, index: RangeIndex
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = owners.size
    # owners first (as the Ray path orders them): blocks are slices of V, not copies
    prefix = bool(owners[-1] == m - 1)
    pos_to_ord = np.empty(m, dtype=np.int64)  # index position -> owner ordinal
    added = 0
    out_a, out_b, out_s = [], [], []
    for start in reversed(range(0, m, batch_rows)):
        stop = min(start + batch_rows, m)
        block = V[start:stop] if prefix else np.ascontiguousarray(V[owners[start:stop]])
        index.add(block)
        pos_to_ord[added : added + stop - start] = np.arange(start, stop)
        added += stop - start
        lims, sims, labels = index.range(block, t)
        q_ord = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(lims.astype(np.int64)))
        o_ord = pos_to_ord[labels.astype(np.int64)]
        keep = (q_ord < o_ord) & (sims >= t)
        out_a.append(ids[owners[q_ord[keep]]])
        out_b.append(ids[owners[o_ord[keep]]])
        out_s.append(sims[keep])
    for start in range(0, guests.size, batch_rows):
        g = guests[start : start + batch_rows]
        lims, sims, labels = index.range(V[g[0] : g[-1] + 1] if prefix else np.ascontiguousarray(V[g]), t)
        q = np.repeat(g, np.diff(lims.astype(np.int64)))
        o_ord = pos_to_ord[labels.astype(np.int64)]
        keep = sims >= t
        out_a.append(ids[q[keep]])
        out_b.append(ids[owners[o_ord[keep]]])
        out_s.append(sims[keep])
    a = np.concatenate(out_a)
    b = np.concatenate(out_b)
    s = np.concatenate(out_s).astype(np.float32)
    i, j = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((j, i))
    return i[order], j[order], s[order]


def merge_pairs(parts: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The union of pair lists (i, j, cos) from several partitions: each (i, j) once, sorted, with
    the largest cos reported for it (copies differ at most in float rounding). Pairs with
    ``i > j`` are swapped; ``i == j`` are dropped."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return _EMPTY
    a = np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts])
    b = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts])
    s = np.concatenate([np.asarray(p[2], dtype=np.float32) for p in parts])
    i, j = np.minimum(a, b), np.maximum(a, b)
    ok = i != j
    i, j, s = i[ok], j[ok], s[ok]
    if i.size and i.min() >= 0 and j.max() < 2**32:
        # one argsort of a 64-bit pair key, each pair's largest cos by a segmented max (several
        # times faster than a three-key lexsort on millions of pairs)
        key = (i.astype(np.uint64) << np.uint64(32)) | j.astype(np.uint64)
        order = np.argsort(key)
        key = key[order]
        start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        return i[order[start]], j[order[start]], np.maximum.reduceat(s[order], start)
    order = np.lexsort((-s, j, i))  # per (i, j), the largest cos first
    i, j, s = i[order], j[order], s[order]
    first = np.ones(i.size, dtype=bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return i[first], j[first], s[first]


# ----------------------------------------------------------------------------- one process


@dataclass
class PartitionedPairs:
    """Result of :func:`partitioned_pairs`: pairs and what the partitioning did."""

    i: np.ndarray
    j: np.ndarray
    cos: np.ndarray
    n_partitions: int
    margin: float
    spill: int | None
    n_capped: int
    n_spilled: int
    owners_max: int
    seconds: dict[str, float] = field(default_factory=dict)


def partitioned_pairs(
    X: np.ndarray,
    threshold: float,
    *,
    n_partitions: int | None = None,
    spill: int | None = 8,
    margin: float | None = None,
    centroids: np.ndarray | None = None,
    sample_size: int | None = None,
    kmeans_iter: int = 5,
    seed: int = 0,
    batch_rows: int = 4096,
    n_jobs: int | None = None,
    device: Device = CPU,
) -> PartitionedPairs:
    """The whole scheme in one process: centroids on a sample, route, search each partition, merge.

    ``n_partitions`` defaults to :func:`default_n_partitions`; ``sample_size`` to 32 rows per
    partition; ``margin`` to ``safe_margin(threshold)``. Pass ``centroids`` to skip fitting them.

    Partitions are searched ``n_jobs`` at a time (default: FAISS's OpenMP thread count) in
    threads that each run FAISS on one OpenMP thread (the setting is per calling thread) — as
    partition actors would — rather than one at a time on all threads: partitions are small, and
    many short parallel regions cost more than they gain (bench/README.md, "Choices measured in the code").
    ``n_jobs=1`` searches in the calling thread with its OpenMP setting. On a cuda ``device`` the
    partitions are searched on the GPU one after the other (FAISS GPU resources are not
    thread-safe); a GPU that cannot serve raises ``GpuUnavailable``."""
    import time  # noqa: PLC0415

    t = _check_threshold(threshold)
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be a non-empty 2-D array, got shape {X.shape}")
    n = X.shape[0]
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if centroids is None:
        P = n_partitions or default_n_partitions(n)
        P = min(P, n)
        m = min(n, sample_size or 32 * P)
        if m < P:
            raise ValueError(f"sample_size={m} is smaller than n_partitions={P}")
        idx = np.sort(seeds.rng(seed, "partition_sample").choice(n, size=m, replace=False))
        centroids = partition_centroids(X[idx], P, seed=seed, max_iter=kmeans_iter)
    seconds["centroids"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    routes = route(X, centroids, spill, threshold=t, margin=margin, batch_rows=batch_rows)
    seconds["route"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    groups = list(group_routes(routes))
    owners_max = max((int(own.sum()) for _, _, own in groups), default=0)

    def search(group: tuple[int, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        _, rows, own = group
        return pairs_in_partition(X[rows], rows, own, t, batch_rows, device)

    if device.kind == "cuda":
        n_jobs = 1
    if n_jobs is None:
        n_jobs = int(_faiss().omp_get_max_threads())
    if n_jobs > 1 and len(groups) > 1:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        with ThreadPoolExecutor(n_jobs, initializer=lambda: _faiss().omp_set_num_threads(1)) as pool:
            # biggest first, so that no large partition starts last
            order = sorted(range(len(groups)), key=lambda k: -groups[k][1].size)
            results = dict(zip(order, pool.map(search, [groups[k] for k in order])))
        found = [results[k] for k in range(len(groups))]
    else:
        found = [search(g) for g in groups]
    seconds["search"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    i, j, s = merge_pairs(found)
    seconds["merge"] = time.perf_counter() - t0
    return PartitionedPairs(
        i, j, s, routes.n_partitions, routes.margin, spill, routes.n_capped, routes.n_spilled, owners_max, seconds
    )
