"""Growing a finished run by new documents without recomputing the corpus: which new documents sit
far from every theme (drift), new themes proposed from them, the near-duplicate pairs that involve
a new document, and the kept/duplicate decisions extended to the new documents.

The guarantees, against a full run over the grown corpus:

* **Pairs.** Every pair with cosine >= the threshold that involves a new document is found
  exactly (:func:`new_pairs` routes the new rows into the existing rows' partitions with the safe
  margin, the scheme of ``engine/partition.py``); pairs among existing documents are the run's own.
* **Keep.** New documents rank after every existing one (an existing kept document stays kept, a
  new copy of it becomes its duplicate) and among themselves by the run's keep policy; with
  ``keep = "first"`` that is a full run's order, so :func:`extend_ranked` gives a full run's
  ``ranked`` grouping exactly.
* **Lexical candidates.** A pair below the threshold is compared as text when it is among the
  ``neighbors`` most similar below-threshold pairs of either document — counted over the
  existing pairs too, kept per document by :func:`top_candidates` and passed to
  :func:`engine.dedup.cap_candidates` as ``existing_top``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .dedup import cap_candidates, order_by_doc_then_cos, walk_ranked
from .partition import group_routes, merge_pairs, range_index, route

_EMPTY = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


# ----------------------------------------------------------------------------- drift


def far_cutoffs(distances: np.ndarray, themes: np.ndarray, n_themes: int, quantile: float, min_members: int = 20) -> np.ndarray:
    """Per theme, the distance to its centroid that a fraction ``quantile`` of its documents stay
    within; a theme with fewer than ``min_members`` documents (or none) takes the quantile over all
    documents. A new document beyond its nearest theme's cut-off is *far*."""
    d = np.asarray(distances, dtype=np.float64)
    t = np.asarray(themes, dtype=np.int64)
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    overall = float(np.quantile(d, quantile)) if d.size else math.inf
    cut = np.full(n_themes, overall, dtype=np.float64)
    if d.size == 0:
        return cut.astype(np.float32)
    order = np.argsort(t, kind="stable")
    bounds = np.searchsorted(t[order], np.arange(n_themes + 1))
    for k in range(n_themes):
        members = d[order[bounds[k] : bounds[k + 1]]]
        if members.size >= min_members:
            cut[k] = float(np.quantile(members, quantile))
    return cut.astype(np.float32)


DRIFT_ALPHA = 0.01  # how unlikely the far share must be among documents like the existing ones


def drift_test(far: int, n: int, expected: float, share_threshold: float, alpha: float = DRIFT_ALPHA) -> dict[str, Any]:
    """Whether ``far`` of ``n`` new documents beyond their theme's cut-off is drift: the share is
    above ``share_threshold`` *and* unlikely among documents like the existing ones, of which a
    share ``expected`` (1 - the cut-off quantile) is far: the one-sided binomial p-value of seeing
    ``far`` or more of ``n`` under it is below ``alpha``. ``verdict``: ``yes``, ``no``, or ``too few
    to tell`` (the share is above the threshold, but so few documents are no evidence: one far
    document of one is as likely as 1 in 20)."""
    from scipy.stats import binom  # noqa: PLC0415

    share = far / n if n else 0.0
    p = float(binom.sf(far - 1, n, expected)) if n and far else 1.0
    above = n > 0 and share > share_threshold
    verdict = ("yes" if p < alpha else "too few to tell") if above else "no"
    return {
        "far": int(far),
        "new": int(n),
        "far_share": round(share, 6),
        "expected_share": round(expected, 6),
        "share_threshold": share_threshold,
        "p_value": p,
        "alpha": alpha,
        "verdict": verdict,
        "drift": verdict == "yes",
    }


# ----------------------------------------------------------------------------- new themes


def nearest(X: np.ndarray, C: np.ndarray, batch_rows: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest row of ``C`` (Euclidean) and the distance to it, for each row of ``X``."""
    C = np.ascontiguousarray(C, dtype=np.float32)
    c2 = (C.astype(np.float64) ** 2).sum(axis=1)
    idx = np.empty(len(X), dtype=np.int64)
    dist = np.empty(len(X), dtype=np.float32)
    for a in range(0, len(X), batch_rows):
        xb = np.ascontiguousarray(X[a : a + batch_rows], dtype=np.float32)
        d2 = (xb.astype(np.float64) ** 2).sum(axis=1)[:, None] - 2.0 * (xb @ C.T) + c2[None, :]
        best = np.argmin(d2, axis=1)
        idx[a : a + len(xb)] = best
        dist[a : a + len(xb)] = np.sqrt(np.maximum(d2[np.arange(len(xb)), best], 0.0))
    return idx, dist


def constrained_kmeans(
    X: np.ndarray, fixed: np.ndarray, m: int, seed: int, max_iter: int = 50, min_size: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``m`` new centroids for the rows ``X`` beside the ``fixed`` ones, which do not move: seeded
    by k-means++ continued from the fixed centroids (a row is drawn with probability proportional
    to its squared distance to the nearest centroid chosen so far), then Lloyd iterations that
    update only the new centroids. A new centroid left with fewer than ``min_size`` rows is
    dropped. Returns (new centroids (m' x d), each row's centroid among fixed + new)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    fixed = np.ascontiguousarray(fixed, dtype=np.float32)
    k = len(fixed)
    rng = np.random.default_rng(seed)
    _, d = nearest(X, fixed) if k else (None, np.full(len(X), 1.0, np.float32))
    closest = d.astype(np.float64) ** 2
    new: list[np.ndarray] = []
    for _ in range(min(m, len(X))):
        total = closest.sum()
        pick = int(rng.integers(len(X))) if total <= 0 else int(np.searchsorted(np.cumsum(closest), rng.random() * total, side="right"))
        pick = min(pick, len(X) - 1)
        new.append(X[pick].copy())
        closest = np.minimum(closest, ((X - X[pick]) ** 2).sum(axis=1, dtype=np.float64))
    C_new = np.asarray(new, dtype=np.float32).reshape(-1, X.shape[1])
    labels = np.zeros(len(X), dtype=np.int64)
    for _ in range(max_iter):
        labels, _ = nearest(X, np.concatenate([fixed, C_new]) if len(C_new) else fixed)
        sizes = np.bincount(labels[labels >= k] - k, minlength=len(C_new))
        keep = sizes >= max(1, min_size)
        moved = 0.0
        updated = C_new.copy()
        for j in np.flatnonzero(keep):
            mean = X[labels == k + j].mean(axis=0)
            moved = max(moved, float(np.abs(mean - C_new[j]).max()))
            updated[j] = mean
        if not keep.all():
            C_new = updated[keep]
            continue
        C_new = updated
        if moved < 1e-6:
            break
    labels, _ = nearest(X, np.concatenate([fixed, C_new]) if len(C_new) else fixed)
    return C_new, labels


@dataclass
class Proposal:
    """New themes proposed for far documents (:func:`propose_themes`)."""

    centroids: np.ndarray  # (m, d), new themes only
    labels: np.ndarray  # per far row: its theme among existing (0 .. k-1) and new (k ..)
    info: dict[str, Any] = field(default_factory=dict)


def propose_themes(
    X: np.ndarray,
    fixed: np.ndarray,
    spread: float,
    *,
    min_size: int,
    max_new: int,
    seed: int,
    neighbors: int = 15,
    min_gain: float = 0.01,
) -> Proposal:
    """New themes among the far rows ``X``, beside the ``fixed`` existing centroids.

    For each candidate count m of new themes (1, 2, 3, 4, 6, 8, … up to ``max_new`` and what
    ``min_size`` allows), :func:`constrained_kmeans` fits them; each is scored by the modularity
    of the rows' partition (existing themes and new) on the rows' k-NN graph, against the
    partition with no new theme. The best m is taken when it gains at least ``min_gain``; of its
    themes those with ``min_size`` rows or more whose median distance to their centroid is
    within ``spread`` (the existing themes' typical median distance: as tight as a theme) are
    kept, and the rows of the others go back to their nearest existing theme."""
    from .select_k import knn_graph, modularity  # noqa: PLC0415

    X = np.ascontiguousarray(X, dtype=np.float32)
    k = len(fixed)
    base, _ = nearest(X, fixed)
    info: dict[str, Any] = {"rows": int(len(X)), "min_size": min_size, "spread": round(float(spread), 6), "candidates": []}
    limit = min(max_new, len(X) // max(min_size, 1))
    if limit < 1 or len(X) < 3:
        info["decision"] = f"too few far documents for a new theme of at least {min_size}"
        return Proposal(np.zeros((0, X.shape[1]), np.float32), base, info)
    G = knn_graph(X, neighbors)

    def score(labels: np.ndarray) -> float:
        _, dense = np.unique(labels, return_inverse=True)
        return modularity(G, dense)

    reference = score(base)
    grid = sorted({m for m in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if m <= limit} | {limit})
    best: tuple[float, int, np.ndarray, np.ndarray] | None = None
    for m in grid:
        C_new, labels = constrained_kmeans(X, fixed, m, seed + m, min_size=min_size)
        q = score(labels)
        info["candidates"].append({"new": int(m), "kept": int(len(C_new)), "modularity": round(q, 6)})
        if len(C_new) and (best is None or q > best[0]):
            best = (q, m, C_new, labels)
    info["reference_modularity"] = round(reference, 6)
    if best is None or best[0] - reference < min_gain:
        info["decision"] = f"no gain of {min_gain} in modularity over the existing themes"
        return Proposal(np.zeros((0, X.shape[1]), np.float32), base, info)
    q, m, C_new, labels = best
    keep = []
    for j in range(len(C_new)):
        members = labels == k + j
        med = float(np.median(np.linalg.norm(X[members] - C_new[j], axis=1))) if members.any() else math.inf
        keep.append(bool(members.sum() >= min_size and med <= spread))
    keep_arr = np.asarray(keep, dtype=bool)
    C_new = C_new[keep_arr]
    if len(C_new):
        labels, _ = nearest(X, np.concatenate([fixed, C_new]))
        # a row nearest a new theme it was not fitted to, or an existing one: as assigned now
    else:
        labels = base
    info.update({"chosen": int(m), "modularity": round(q, 6), "accepted": int(len(C_new)), "rejected_loose_or_small": int((~keep_arr).sum())})
    info["decision"] = f"{len(C_new)} new theme(s)" if len(C_new) else "the proposed themes are looser than the existing ones"
    return Proposal(C_new, labels, info)


# ----------------------------------------------------------------------------- pairs


def top_candidates(pi: np.ndarray, pj: np.ndarray, cos: np.ndarray, threshold: float, n: int, neighbors: int) -> np.ndarray:
    """(n, neighbors) float32: each document's most similar below-``threshold`` candidate pairs'
    cosines, best first, padded with -inf — what ``cap_candidates(existing_top=)`` needs of the
    pairs among existing documents."""
    top = np.full((n, neighbors), -np.inf, dtype=np.float32)
    cos = np.asarray(cos, dtype=np.float32)
    below = np.flatnonzero(cos < np.float32(threshold))
    if below.size == 0:
        return top
    a = np.concatenate([pi[below], pj[below]]).astype(np.int64)
    s = np.concatenate([cos[below], cos[below]])
    order = order_by_doc_then_cos(a, s)
    a, s = a[order], s[order]
    start = np.searchsorted(a, a)  # first position of each document's run (a is sorted)
    rank = np.arange(a.size) - start
    ok = rank < neighbors
    top[a[ok], rank[ok]] = s[ok]
    return top


def merge_top(top: np.ndarray, n: int, pi: np.ndarray, pj: np.ndarray, cos: np.ndarray, threshold: float) -> np.ndarray:
    """``top`` (for the first rows) grown to ``n`` rows with the below-threshold pairs
    ``(pi, pj, cos)`` added to both documents' lists."""
    neighbors = top.shape[1]
    grown = np.full((n, neighbors), -np.inf, dtype=np.float32)
    grown[: len(top)] = top
    new = top_candidates(pi, pj, cos, threshold, n, neighbors)
    both = np.concatenate([grown, new], axis=1)
    both = -np.sort(-both, axis=1)
    return np.ascontiguousarray(both[:, :neighbors])


def new_pairs(
    vectors: Callable[[np.ndarray], np.ndarray],
    existing_routes: Any,
    X_new: np.ndarray,
    offset: int,
    centroids: np.ndarray,
    threshold: float,
    margin: float,
    spill: int | None,
    *,
    batch_rows: int = 4096,
    n_jobs: int = 1,
    check: Callable[[], None] | None = None,
    cap: tuple[float, int] | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], Any]:
    """Every pair (i, j, cos), ``i < j``, with cos >= ``threshold`` that involves a new row: the new
    rows ``X_new`` (global ids ``offset`` + i, after every existing row) are routed into the
    partitions of ``centroids`` as the existing rows were (``existing_routes``, the same margin and
    spill), and in each partition a new row meets the existing rows there: new owners every
    existing row, new guests the existing owners (the pairs a full run's search of that partition
    finds), and the new rows each other. ``vectors(sorted existing ids)`` reads existing rows.
    ``cap`` (threshold, neighbors): below that threshold each partition keeps only each row's
    nearest pairs (:func:`engine.dedup.cap_candidates`, as a run's partitions do; a row's rank
    among a partition's pairs is never worse than among all, so no pair a cap over all keeps is
    lost). Returns the pairs and the new rows' routes."""
    R = route(X_new, centroids, spill, margin=margin, offset=offset, batch_rows=batch_rows)
    own_at = {p: (rows, own) for p, rows, own in group_routes(existing_routes)} if existing_routes.row_ids.size else {}
    groups = list(group_routes(R))
    X_new = np.ascontiguousarray(X_new, dtype=np.float32)
    dim = X_new.shape[1]

    def search(group: tuple[int, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p, rows, own = group
        if check is not None:
            check()
        parts = []
        nv = X_new[rows - offset]
        # the new rows among themselves: owner-owner and guest-owner, as a partition search does
        owners = np.flatnonzero(own)
        if owners.size:
            parts.append(_range(nv[owners], rows[owners], nv, rows, threshold, dim, batch_rows, lambda q, b: rows[q] != rows[owners[b]]))
        if p in own_at:
            e_rows, e_own = own_at[p]
            ev = vectors(e_rows)
            parts.append(_range(ev, e_rows, nv, rows, threshold, dim, batch_rows, lambda q, b: own[q] | e_own[b]))
        if not parts:
            return _EMPTY
        i, j, c = merge_pairs(parts)
        if cap is not None:
            keep = cap_candidates(i, j, c, cap[0], cap[1])
            i, j, c = i[keep], j[keep], c[keep]
        return i, j, c

    if n_jobs > 1 and len(groups) > 1:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        from .deps import require  # noqa: PLC0415

        faiss = require("faiss")
        with ThreadPoolExecutor(n_jobs, initializer=lambda: faiss.omp_set_num_threads(1)) as pool:
            found = list(pool.map(search, groups))
    else:
        found = [search(g) for g in groups]
    return merge_pairs(found), R


def _range(
    base: np.ndarray,
    base_ids: np.ndarray,
    queries: np.ndarray,
    query_ids: np.ndarray,
    threshold: float,
    dim: int,
    batch_rows: int,
    allowed: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (query, base) with cos >= ``threshold`` where ``allowed(query positions, base
    positions)`` holds, as (min id, max id, cos)."""
    index = range_index(dim)
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    out_a, out_b, out_s = [], [], []
    for start in range(0, len(queries), batch_rows):
        lims, sims, labels = index.range(np.ascontiguousarray(queries[start : start + batch_rows]), threshold)
        q = np.repeat(np.arange(len(lims) - 1, dtype=np.int64), np.diff(lims.astype(np.int64))) + start
        b = labels.astype(np.int64)
        ok = (sims >= threshold) & allowed(q, b)
        out_a.append(query_ids[q[ok]])
        out_b.append(base_ids[b[ok]])
        out_s.append(sims[ok])
    a, b, s = np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_s).astype(np.float32)
    return np.minimum(a, b), np.maximum(a, b), s


# ----------------------------------------------------------------------------- keep decisions


def extend_ranked(
    duplicate_of: np.ndarray,
    similarity: np.ndarray,
    n_old: int,
    pi: np.ndarray,
    pj: np.ndarray,
    cos: np.ndarray,
    new_order: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``ranked`` grouping extended to new documents ``n_old ..``: the existing documents'
    decisions (``duplicate_of``, ``similarity``, first ``n_old`` rows) stay; the new ones are
    walked in ``new_order`` (their keep order, after every existing document), and each that
    matches a kept document walked before it (any kept existing one, or a new one earlier in the
    order) by a pair ``(pi, pj, cos)`` is a duplicate of the best such match, else kept."""
    n = n_old + len(new_order)
    dup = np.full(n, -1, dtype=np.int64)
    sim = np.full(n, np.nan, dtype=np.float32)
    dup[:n_old] = duplicate_of[:n_old]
    sim[:n_old] = similarity[:n_old]
    rank = np.empty(n, dtype=np.int64)
    rank[:n_old] = np.arange(n_old)  # existing: any order before the new ones
    rank[np.asarray(new_order, dtype=np.int64)] = n_old + np.arange(len(new_order))
    kept = dup < 0
    kept[n_old:] = False
    a = np.concatenate([pi, pj]).astype(np.int64)
    b = np.concatenate([pj, pi]).astype(np.int64)
    s = np.concatenate([cos, cos]).astype(np.float32)
    sel = a >= n_old
    a, b, s = a[sel], b[sel], s[sel]
    order = np.lexsort((b, a))
    a, b, s = a[order], b[order], s[order]
    bounds = np.searchsorted(a, np.arange(n + 1))
    walk_ranked(new_order, bounds, b, s, rank, kept, dup, sim)
    return dup, sim


def pair_groups(n: int, pi: np.ndarray, pj: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of the pair graph (-1 for documents in no pair), numbered by their
    best-ranked member, and how many there are."""
    from scipy.sparse import coo_matrix  # noqa: PLC0415
    from scipy.sparse.csgraph import connected_components  # noqa: PLC0415

    group = np.full(n, -1, dtype=np.int64)
    if len(pi) == 0:
        return group, 0
    graph = coo_matrix((np.ones(len(pi), dtype=np.int8), (pi, pj)), shape=(n, n)).tocsr()
    n_comp, comp = connected_components(graph, directed=False)
    members = np.unique(np.concatenate([pi, pj]))
    best = np.full(n_comp, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, comp[members], rank[members])
    used = np.unique(comp[members])
    number = np.full(n_comp, -1, dtype=np.int64)
    number[used[np.argsort(best[used], kind="stable")]] = np.arange(len(used))
    group[members] = number[comp[members]]
    return group, int(len(used))
