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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from . import seeds
from .corpus import clean_text, dedup_key
from .dedup import cap_candidates, order_by_doc_then_cos, walk_ranked
from .kmeans import sample_rows
from .partition import Routes, default_n_partitions, group_routes, merge_pairs, partition_centroids, range_index, route
from .vectors import part_files, save_npz

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
        C_new, labels = constrained_kmeans(X, fixed, m, seeds.derive(seed, "update_new_themes", m), min_size=min_size)
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


def save_top_part(path: Path, docs: np.ndarray, top: np.ndarray) -> None:
    """Rows ``docs`` of the candidate cosines (``top``, one row each, as :func:`top_candidates`
    makes them) as one part (whole or absent)."""
    save_npz(path, docs=np.asarray(docs, dtype=np.int64), top=np.asarray(top, dtype=np.float32))


def load_top_parts(folder: Path, n: int) -> np.ndarray:
    """(n, neighbors) float32 from the parts :func:`save_top_part` wrote under ``folder``; the
    documents no part lists have none (-inf)."""
    top: np.ndarray | None = None
    for path in part_files(Path(folder), ".npz"):
        with np.load(path, allow_pickle=False) as data:
            docs, rows = data["docs"], data["top"]
        if top is None:
            top = np.full((n, rows.shape[1]), -np.inf, dtype=np.float32)
        if docs.size and (docs.min() < 0 or docs.max() >= n):
            raise ValueError(f"{path} lists documents outside 0..{n - 1}")
        top[docs] = rows
    if top is None:
        raise ValueError(f"{folder} holds no candidate parts")
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


@dataclass(frozen=True)
class NewGroup:
    """One partition's share of an update's search: the new rows routed there (global ids, whether
    each owns the partition, their vectors) and the existing rows routed there (ids and ownership,
    None when none)."""

    part: int
    rows: np.ndarray
    own: np.ndarray
    existing: tuple[np.ndarray, np.ndarray] | None
    vectors: np.ndarray | None = None  # filled (:meth:`filled`) just before the group is searched

    @property
    def work(self) -> int:
        """Rows the search of this group reads."""
        return len(self.rows) + (len(self.existing[0]) if self.existing is not None else 0)

    def filled(self, X_new: np.ndarray, offset: int) -> NewGroup:
        """This group with its new rows' vectors (``X_new`` holds the new rows from ``offset`` on)."""
        return replace(self, vectors=np.ascontiguousarray(X_new[self.rows - offset], dtype=np.float32))


# searches the groups elsewhere: (groups without their vectors, what fills one) -> pair lists
GroupSearch = Callable[[list[NewGroup], Callable[[NewGroup], NewGroup]], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]


def search_new_groups(
    groups: list[NewGroup],
    vectors: Callable[[np.ndarray], np.ndarray],
    threshold: float,
    *,
    batch_rows: int = 4096,
    cap: tuple[float, int] | None = None,
    check: Callable[[], None] | None = None,
    fill: Callable[[NewGroup], NewGroup] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs of ``groups`` (:func:`new_pairs`), merged; ``vectors(sorted existing ids)`` reads
    the existing rows, where this runs (the driver, or a Ray task over some of the groups);
    ``fill`` gives each group its new rows' vectors just before it is searched (a group that
    arrives filled needs none)."""
    found = []
    for g in groups:
        if check is not None:
            check()
        found.append(_search_group(fill(g) if fill is not None else g, vectors, threshold, batch_rows, cap))
    return merge_pairs(found)


def _search_group(
    g: NewGroup, vectors: Callable[[np.ndarray], np.ndarray], threshold: float, batch_rows: int, cap: tuple[float, int] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, own, nv = g.rows, g.own, g.vectors
    if nv is None:
        raise ValueError(f"partition {g.part}: the group was not filled with its new rows' vectors")
    dim = nv.shape[1]
    parts = []
    # the new rows among themselves: owner-owner and guest-owner, as a partition search does
    owners = np.flatnonzero(own)
    if owners.size:
        parts.append(_range(nv[owners], rows[owners], nv, rows, threshold, dim, batch_rows, lambda q, b: rows[q] != rows[owners[b]]))
    if g.existing is not None:
        e_rows, e_own = g.existing
        parts.append(_range(vectors(e_rows), e_rows, nv, rows, threshold, dim, batch_rows, lambda q, b: own[q] | e_own[b]))
    if not parts:
        return _EMPTY
    i, j, c = merge_pairs(parts)
    if cap is not None:
        keep = cap_candidates(i, j, c, cap[0], cap[1])
        i, j, c = i[keep], j[keep], c[keep]
    return i, j, c


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
    spread: GroupSearch | None = None,
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
    lost). ``spread``: searches the partitions' groups elsewhere (Ray tasks that read the existing
    rows themselves) and returns their pairs; without it ``n_jobs`` threads search them here.
    Returns the pairs and the new rows' routes."""
    R = route(X_new, centroids, spill, margin=margin, offset=offset, batch_rows=batch_rows)
    own_at = {p: (rows, own) for p, rows, own in group_routes(existing_routes)} if existing_routes.row_ids.size else {}
    X_new = np.ascontiguousarray(X_new, dtype=np.float32)
    groups = [NewGroup(p, rows, own, own_at.get(p)) for p, rows, own in group_routes(R)]

    def fill(g: NewGroup) -> NewGroup:
        return g.filled(X_new, offset)

    if spread is not None:
        found = spread(groups, fill)
    elif n_jobs > 1 and len(groups) > 1:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        from .deps import require  # noqa: PLC0415

        faiss = require("faiss")

        def search(g: NewGroup) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            if check is not None:
                check()
            return _search_group(fill(g), vectors, threshold, batch_rows, cap)

        with ThreadPoolExecutor(n_jobs, initializer=lambda: faiss.omp_set_num_threads(1)) as pool:
            found = list(pool.map(search, groups))
    else:
        found = [search_new_groups(groups, vectors, threshold, batch_rows=batch_rows, cap=cap, check=check, fill=fill)]
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


def typical_spread(distances: np.ndarray, themes: np.ndarray, k: int) -> float:
    """The median, over the themes, of the median distance of a theme's documents to its centroid."""
    order = np.argsort(themes, kind="stable")
    bounds = np.searchsorted(themes[order], np.arange(k + 1))
    meds = [float(np.median(distances[order[bounds[t] : bounds[t + 1]]])) for t in range(k) if bounds[t + 1] > bounds[t]]
    return float(np.median(meds)) if meds else float("inf")


def refit_centroids(
    blocks: Callable[[], Iterator[tuple[int, np.ndarray]]], n: int, C: np.ndarray, max_iter: int, tol: float, check: Callable[[], None] = lambda: None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """``--refit always``: Lloyd iterations over every one of the ``n`` documents (``blocks()``
    yields (first row, vectors) over all of them: the run's, the updates', the new ones) from the
    centroids ``C`` (the existing themes', then the new ones), so theme t stays theme t; costs a
    pass over the corpus per iteration. Returns the centroids, each document's theme and distance,
    and the iterations' record."""
    it = 0
    shift = float("inf")
    for it in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        sums = np.zeros(C.shape, dtype=np.float64)
        counts = np.zeros(len(C), dtype=np.int64)
        for _, block in blocks():
            lab, _ = nearest(block, C)
            np.add.at(sums, lab, block)
            counts += np.bincount(lab, minlength=len(C))
            check()
        C_next = C.copy()
        filled = counts > 0
        C_next[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
        shift = float(np.abs(C_next - C).max())
        C = C_next
        if shift <= tol:
            break
    themes = np.empty(n, dtype=np.int64)
    distances = np.empty(n, dtype=np.float32)
    for start, block in blocks():
        themes[start : start + len(block)], distances[start : start + len(block)] = nearest(block, C)
    return C, themes, distances, {"refit_iterations": it, "refit_converged": shift <= tol}


def extend_components(
    duplicate_of: np.ndarray, similarity: np.ndarray, n_old: int, group: np.ndarray, rank: np.ndarray,
    old_vectors: Callable[[np.ndarray], np.ndarray], X: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``components`` grouping for new documents: each new document in a group is a duplicate of
    the group's best-ranked kept document (an existing one when the group has one, the first in
    input order; existing decisions stay, so a group a new document joins may keep two).
    ``old_vectors(sorted rows)``: the existing documents' vectors; ``X``: the new ones'."""
    n = len(group)
    dup = np.full(n, -1, dtype=np.int64)
    sim = np.full(n, np.nan, dtype=np.float32)
    dup[:n_old], sim[:n_old] = duplicate_of[:n_old], similarity[:n_old]
    kept_old = np.flatnonzero((group[:n_old] >= 0) & (duplicate_of[:n_old] < 0))
    best: dict[int, int] = {}
    for r in kept_old[np.argsort(rank[kept_old], kind="stable")].tolist():
        best.setdefault(int(group[r]), r)
    new_rows = np.flatnonzero(group[n_old:] >= 0) + n_old
    for r in new_rows[np.argsort(rank[new_rows], kind="stable")].tolist():
        g = int(group[r])
        if g not in best:
            best[g] = r
        elif best[g] != r:
            dup[r] = best[g]
    linked = np.flatnonzero(dup[n_old:] >= 0) + n_old
    if linked.size:
        a = X[linked - n_old]
        reps = dup[linked]
        b = np.empty_like(a)
        old = reps < n_old
        if old.any():
            order = np.argsort(reps[old])
            got = old_vectors(reps[old][order])
            b[np.flatnonzero(old)[order]] = got
        b[~old] = X[reps[~old] - n_old]
        sim[linked] = np.einsum("ij,ij->i", a, b)
    return dup, sim


@dataclass
class Matched:
    """What :class:`NewDocuments` made of one new document: ``keep`` it (with its ``status`` and
    ``exact_of``, a corpus row or -1), or leave it out as already present or as a bad record."""

    keep: bool
    status: str = ""
    exact_of: int = -1
    bad: str | None = None


def rows_by_id(existing_ids: Any, ids: Any) -> dict[str, int]:
    """The row in ``existing_ids`` of each of ``ids`` found there (both
    :class:`engine.corpus.Strings`, or Arrow string arrays). Only ``ids`` are hashed: the lookup
    holds one small integer per existing row for a moment, not a dictionary of the corpus."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.compute as pc  # noqa: PLC0415

    existing = getattr(existing_ids, "arrow", existing_ids)
    wanted = getattr(ids, "arrow", ids)
    if len(existing) == 0 or len(wanted) == 0:
        return {}
    pos = pc.index_in(existing, value_set=wanted.cast(existing.type) if wanted.type != existing.type else wanted)
    rows = np.flatnonzero(pos.is_valid().to_numpy(zero_copy_only=False))
    which = pos.take(pa.array(rows)).to_numpy(zero_copy_only=False)
    found = wanted.take(pa.array(which)).to_pylist()
    return dict(zip(found, rows.tolist()))  # a repeated existing id: its last row, as a dict built row by row


class NewDocuments:
    """Sets an update's documents against the corpus, one at a time in input order: one whose id
    is already there with the same text is *already present* (left out); one whose id is there
    with another text is a bad record (left out); one whose text is already there (its
    exact-duplicate key, in ``keys`` or among the new documents kept so far) is an exact duplicate
    of the first such document. ``old_texts`` holds the texts of the existing documents whose ids
    recur, by corpus row, and ``sources`` the corpus's sources (named in a conflict's message); new
    documents take corpus rows from ``offset`` on. ``counts``: present,
    id_conflicts, exact_of_existing; ``statuses``: the kept documents' statuses; ``new_keys``: the
    new documents' own keys (their first document's row)."""

    def __init__(self, rows_by_id: dict[str, int], old_texts: dict[int, str], sources: list[str], keys: dict[str, int], offset: int) -> None:
        self.rows_by_id, self.old_texts, self.sources, self.keys, self.offset = rows_by_id, old_texts, sources, keys, offset
        self.counts = {"present": 0, "id_conflicts": 0, "exact_of_existing": 0}
        self.statuses: dict[str, int] = {}
        self.new_keys: dict[str, int] = {}
        self.kept = 0

    def match(self, doc_id: str, text: str, status: str) -> Matched:
        first = self.rows_by_id.get(doc_id)
        if first is not None:
            old = self.old_texts.get(first, "")
            if clean_text(old) == clean_text(text) or (status.startswith("filtered_") and not old):
                self.counts["present"] += 1
                return Matched(False)
            self.counts["id_conflicts"] += 1
            return Matched(False, bad=f"id {doc_id!r} is already in the run ({self.sources[first]}) with another text; "
                           "give new documents ids of their own (updating a document is not supported)")  # fmt: skip
        exact = -1
        if not status.startswith("filtered_"):
            key = dedup_key(text)
            if key in self.keys:
                exact = self.keys[key]
                self.counts["exact_of_existing"] += 1
            elif key in self.new_keys:
                exact = self.new_keys[key]
            else:
                self.new_keys[key] = self.offset + self.kept
            status = "ok" if exact < 0 else "exact_duplicate"
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.kept += 1
        return Matched(True, status, exact)


def extend_groups(
    duplicate_of: np.ndarray,
    similarity: np.ndarray,
    old_i: np.ndarray,
    old_j: np.ndarray,
    new_i: np.ndarray,
    new_j: np.ndarray,
    new_cos: np.ndarray,
    new_rank: np.ndarray,
    grouping: str,
    old_vectors: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The duplicate decisions and groups over the grown corpus: the existing documents' decisions
    (``duplicate_of``, ``similarity``) stay and they keep first; the new ones (``X``, ranked among
    themselves by ``new_rank``, the run's keep policy) follow, with the new pairs ``new_i, new_j,
    new_cos`` added to the existing ones. ``grouping`` is the run's (``ranked`` or
    ``components``). Returns duplicate_of, similarity, group and the number of groups."""
    n_old, m = len(duplicate_of), len(X)
    n = n_old + m
    new_order = n_old + np.argsort(new_rank, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[:n_old] = np.arange(n_old)
    rank[new_order] = n_old + np.arange(m)
    if grouping == "ranked":
        dup, sim = extend_ranked(duplicate_of, similarity, n_old, new_i, new_j, new_cos, new_order)
    group, n_groups = pair_groups(n, np.concatenate([old_i, new_i]), np.concatenate([old_j, new_j]), rank)
    if grouping == "components":
        dup, sim = extend_components(duplicate_of, similarity, n_old, group, rank, old_vectors, X)
    return dup, sim, group, n_groups


def partition_existing(
    vectors: Callable[[np.ndarray], np.ndarray],
    blocks: Callable[[], Iterator[tuple[int, np.ndarray]]],
    n: int,
    partitions: int | None,
    spill: int | None,
    margin: float,
    seed: int,
    check: Callable[[], None] = lambda: None,
) -> tuple[np.ndarray, Routes]:
    """The first update's partitions of the ``n`` existing rows, for the search of the new rows
    against them: centroids fitted on a sample (``vectors(sorted rows)``), then every row routed
    with the safe ``margin`` in one pass over ``blocks()`` ((first row, vectors) in order)."""
    P = min(partitions or default_n_partitions(n), n)
    sample = sample_rows(n, min(n, max(32 * P, 10_000)), seeds.derive(seed, "partition_sample"))  # as the run's dedup stage
    centroids = partition_centroids(vectors(sample), P, seed=seed)
    routes: Routes | None = None
    for start, block in blocks():
        r = route(block, centroids, spill, margin=margin, offset=start)
        routes = r if routes is None else routes.concat(r)
        check()
    if routes is None:
        raise ValueError(f"partition_existing: blocks() yielded no rows (expected {n}): a finished run has documents")
    return centroids, routes
