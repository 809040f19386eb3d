"""A 2-D map of the document embeddings: t-SNE (openTSNE) on a sample, extended to every row.

t-SNE's cost grows with the rows it optimises, so :func:`fit_layout` fits it on a seeded uniform
sample of at most ``sample_size`` rows (exact cosine neighbours for its affinities, PCA
initialisation, FFT-accelerated gradients) and places every other row at the similarity-weighted
mean of the map positions of its nearest sample rows (exact inner product: FAISS ``IndexFlatIP``
when ``faiss`` imports, numpy otherwise). That is one pass over the vectors in blocks, so a
read-only ``np.memmap`` of millions of rows is never copied whole.

The same pass measures the map: :func:`knn_preservation` (how many of a row's 10 nearest
neighbours by cosine in the embedding space are among its 10 nearest on the map, over all rows)
for the layout and for a PCA-to-2-D baseline, on a seeded subset of rows; both go into
:attr:`Layout.info` so a run records how faithful its map is.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterator

import numpy as np

from . import seeds

log = logging.getLogger(__name__)

BLOCK_ROWS = 65_536  # rows of the input read, searched and placed at a time
PERPLEXITY = 30.0
# the optimisation schedule: early exaggeration (12), then the plain phase. openTSNE's defaults
# (250 + 500) gain nothing measurable on bench/layout.py at almost twice the cost
EXAGGERATION_ITER = 125
N_ITER = 250
ITER_CHUNK = 50  # optimisation iterations between progress/check calls
EXTEND_NEIGHBORS = 10  # sample rows whose map positions a remaining row is averaged over
EXTEND_TEMPERATURE = 0.005  # weights exp((s - s_max) / T) of cosine similarities s: see _extend_weights
FFT_ROWS = 10_000  # FFT-interpolated gradients from this many sample rows, Barnes-Hut below (openTSNE's rule)
# interpolation points per FFT grid box (openTSNE's default 3): the plain phase's cost grows with the
# map's extent; 2 cost a little 10-NN preservation for much less optimisation time (bench/README.md)
FFT_INTERPOLATION_POINTS = 2
MIN_TSNE_ROWS = 16  # below this many sample rows the map is the PCA projection
QUALITY_K = 10
QUALITY_ROWS = 2_000


@dataclass
class Layout:
    """Map coordinates, one ``(x, y)`` row per input row in input order, and how they were made."""

    coords: np.ndarray  # (n, 2) float32
    info: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable


# ----------------------------------------------------------------------------- neighbours


def _faiss() -> Any:
    try:
        import faiss  # noqa: PLC0415
    except ImportError:
        return None
    return faiss


class _InnerProduct:
    """Exact top-k by inner product against a fixed set of rows: FAISS flat index, or numpy GEMM."""

    def __init__(self, base: np.ndarray) -> None:
        self.base = np.ascontiguousarray(base, dtype=np.float32)
        faiss = _faiss()
        self.index = None
        if faiss is not None and len(self.base):
            self.index = faiss.IndexFlatIP(self.base.shape[1])
            self.index.add(self.base)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Similarities (descending) and row indices of the ``k`` most similar base rows per query."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, len(self.base))
        if self.index is not None:
            sims, idx = self.index.search(q, k)
            return sims, idx.astype(np.int64)
        out_s = np.empty((len(q), k), dtype=np.float32)
        out_i = np.empty((len(q), k), dtype=np.int64)
        step = max(1, (1 << 24) // max(1, len(self.base)))  # ~64 MB of float32 scores at a time
        for a in range(0, len(q), step):
            h = q[a : a + step] @ self.base.T
            if k < h.shape[1]:
                part = np.argpartition(-h, k - 1, axis=1)[:, :k]
            else:
                part = np.broadcast_to(np.arange(h.shape[1]), h.shape)
            ps = np.take_along_axis(h, part, axis=1)
            order = np.argsort(-ps, axis=1, kind="stable")
            out_i[a : a + step] = np.take_along_axis(part, order, axis=1)
            out_s[a : a + step] = np.take_along_axis(ps, order, axis=1)
        return out_s, out_i


def _merge_topk(
    s: np.ndarray, i: np.ndarray, s_new: np.ndarray, i_new: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest of two candidate lists per row (ties: the earlier rows first)."""
    S = np.concatenate([s, s_new], axis=1)
    I = np.concatenate([i, i_new], axis=1)
    order = np.lexsort((I, -S), axis=1)[:, :k]
    return np.take_along_axis(S, order, axis=1), np.take_along_axis(I, order, axis=1)


def _keep(idx: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mask of ``k`` of ``k + 1`` candidate neighbours per row: all but the row itself where it is
    among them, else all but the last (exact duplicates outranked it; they are as near)."""
    drop = idx == rows[:, None]
    drop[~drop.any(axis=1), -1] = True
    drop &= np.cumsum(drop, axis=1) == 1  # one column per row
    return ~drop


def _drop_self(idx: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``k`` neighbours per row out of ``k + 1`` candidates, without the row itself (:func:`_keep`)."""
    return idx[_keep(idx, rows)].reshape(len(idx), idx.shape[1] - 1)


class _HighNeighbours:
    """The ``k`` nearest rows by inner product of some query rows of the input, over all its rows,
    accumulated block by block (so the input is read once, alongside the extension)."""

    def __init__(self, queries: np.ndarray, rows: np.ndarray, k: int) -> None:
        self.q = np.ascontiguousarray(queries, dtype=np.float32)
        self.rows = rows
        self.k = k
        self.s = np.full((len(rows), 0), -np.inf, dtype=np.float32)
        self.i = np.full((len(rows), 0), -1, dtype=np.int64)

    def add(self, block: np.ndarray, start: int) -> None:
        if len(self.rows) == 0 or len(block) == 0:
            return
        s, i = _InnerProduct(block).search(self.q, self.k + 1)
        self.s, self.i = _merge_topk(self.s, self.i, s, i + start, self.k + 1)

    def result(self) -> np.ndarray:
        return _drop_self(self.i, self.rows)


def _low_neighbours(low: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` nearest rows by Euclidean distance on the map (exact: a k-d tree), without self."""
    from scipy.spatial import cKDTree  # noqa: PLC0415

    pts = np.asarray(low, dtype=np.float64)
    _, idx = cKDTree(pts).query(pts[rows], k=k + 1)
    idx = np.asarray(idx, dtype=np.int64).reshape(len(rows), k + 1)
    return _drop_self(idx, rows)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of the fraction of ``a``'s neighbours that are also in ``b``'s."""
    if a.size == 0:
        return 1.0
    hits = (a[:, :, None] == b[:, None, :]).any(axis=2)
    return float(hits.mean())


def _eval_rows(n: int, n_eval: int, seed: int) -> np.ndarray:
    m = min(n, max(0, n_eval))
    return np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False)).astype(np.int64)


def knn_preservation(high: np.ndarray, low: np.ndarray, k: int = 10, n_eval: int = 2000, seed: int = 0) -> float:
    """Mean fraction of a row's ``k`` nearest neighbours by inner product in ``high`` (over all rows,
    itself excluded) that are also among its ``k`` nearest by Euclidean distance in ``low``, over a
    seeded subset of ``n_eval`` rows. Exact; ``high`` is read in blocks. 1.0 with fewer than 2 rows."""
    n = len(high)
    if len(low) != n:
        raise ValueError(f"high has {n} rows, low {len(low)}")
    k = min(k, n - 1)
    if k < 1:
        return 1.0
    rows = _eval_rows(n, n_eval, seed)
    hn = _HighNeighbours(np.asarray(high[rows], dtype=np.float32), rows, k)
    for start in range(0, n, BLOCK_ROWS):
        hn.add(np.asarray(high[start : start + BLOCK_ROWS], dtype=np.float32), start)
    return _overlap(hn.result(), _low_neighbours(low, rows, k))


# ----------------------------------------------------------------------------- the map


def _pca(sample: np.ndarray, seed: int) -> Any:
    """scikit-learn PCA to (at most) 2 components, fitted on the sample."""
    import warnings  # noqa: PLC0415

    from sklearn.decomposition import PCA  # noqa: PLC0415

    comps = min(2, sample.shape[0], sample.shape[1])
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return PCA(n_components=comps, random_state=seed).fit(sample)


def _project(pca: Any, X: np.ndarray) -> np.ndarray:
    """PCA coordinates of ``X`` as (m, 2) float32 (a zero column where fewer components exist)."""
    out = np.zeros((len(X), 2), dtype=np.float32)
    if len(X):
        out[:, : pca.n_components_] = pca.transform(X)
    return out


def _extend_weights(sims: np.ndarray) -> np.ndarray:
    """Row-normalised weights of a row's nearest sample rows from their cosine similarities:
    ``exp((s - s_max) / T)``. The nearest gets weight 1 and a sample row ``T`` less similar 1/e,
    so a row about as similar to several sample rows lands amid them, and a (near-)duplicate of one
    sample row lands (almost) on it."""
    w = np.exp((sims - sims[:, :1]) / EXTEND_TEMPERATURE, dtype=np.float64)
    return w / w.sum(axis=1, keepdims=True)


def _place(index: _InnerProduct, sample_coords: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Map positions of rows ``X``: the weighted mean of the positions of their nearest sample rows."""
    sims, nbr = index.search(X, min(EXTEND_NEIGHBORS, len(sample_coords)))
    return np.einsum("ij,ijk->ik", _extend_weights(sims), sample_coords[nbr]).astype(np.float32)


def place(sample_vectors: np.ndarray, sample_coords: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Map positions for new rows ``X`` on a map whose fitted sample rows (``sample_vectors``)
    sit at ``sample_coords``: each at the weighted mean of its nearest sample rows, as
    :func:`fit_layout` places the rows outside its sample."""
    index = _InnerProduct(np.ascontiguousarray(sample_vectors, dtype=np.float32))
    S = np.asarray(sample_coords, dtype=np.float64)
    out = np.zeros((len(X), 2), dtype=np.float32)
    for start in range(0, len(X), BLOCK_ROWS):
        out[start : start + BLOCK_ROWS] = _place(index, S, np.ascontiguousarray(X[start : start + BLOCK_ROWS], dtype=np.float32))
    return out


def place_groups(map_coords: np.ndarray, X: np.ndarray, groups: np.ndarray, near: np.ndarray) -> np.ndarray:
    """Map positions for rows ``X`` that form new groups (``groups``: a group id per row) on a map
    whose points sit at ``map_coords``, so that a reader sees each group as one: the group gets a
    place of its own just outside the map, in the direction of ``near`` (per row: where it would
    sit among the map's points, :func:`place`; a group goes where most of it points), and its rows
    are spread around that place along the first two principal components of their vectors, as
    wide as a theme of the map typically is."""
    M = np.asarray(map_coords, dtype=np.float64)
    M = M[np.isfinite(M).all(axis=1)]
    out = np.zeros((len(X), 2), dtype=np.float32)
    if len(X) == 0:
        return out
    center = np.median(M, axis=0) if len(M) else np.zeros(2)
    radius = float(np.quantile(np.linalg.norm(M - center, axis=1), 0.95)) if len(M) else 1.0
    radius = radius if radius > 0 else 1.0
    spread = 0.12 * radius  # a group's half-width
    ids = np.unique(groups)
    taken: list[np.ndarray] = []
    for n_group, g in enumerate(ids):
        rows = np.flatnonzero(groups == g)
        toward = np.asarray(near, dtype=np.float64)[rows].mean(axis=0) - center
        norm = float(np.linalg.norm(toward))
        angle = math.atan2(toward[1], toward[0]) if norm > 1e-9 else 2 * math.pi * n_group / len(ids)
        at = radius + 2.5 * spread
        anchor = center + at * np.array([math.cos(angle), math.sin(angle)])
        while any(np.linalg.norm(anchor - t) < 4 * spread for t in taken):  # clear of a group placed before
            at += 4 * spread
            anchor = center + at * np.array([math.cos(angle), math.sin(angle)])
        taken.append(anchor)
        V = np.asarray(X[rows], dtype=np.float64)
        V = V - V.mean(axis=0)
        if len(rows) > 2 and np.abs(V).sum() > 0:
            _, _, vt = np.linalg.svd(V, full_matrices=False)
            P = V @ vt[:2].T
            if P.shape[1] < 2:
                P = np.pad(P, ((0, 0), (0, 2 - P.shape[1])))
            scale = float(np.quantile(np.linalg.norm(P, axis=1), 0.9))
            P = P * (spread / scale) if scale > 0 else P * 0
            far = np.linalg.norm(P, axis=1, keepdims=True)
            P = np.where(far > 1.5 * spread, P * (1.5 * spread / np.maximum(far, 1e-12)), P)  # the outliers pulled in
        else:
            P = np.zeros((len(rows), 2))
        out[rows] = (anchor + P).astype(np.float32)
    return out


def extend(
    vectors: np.ndarray,
    sample_rows: np.ndarray,
    sample_coords: np.ndarray,
    *,
    check: Callable[[], None] | None = None,
) -> np.ndarray:
    """Map coordinates for every row of ``vectors`` given a map of some of them (``sample_rows``,
    sorted, at ``sample_coords``): the sample rows keep theirs, the others are placed as in
    :func:`fit_layout`. For another embedding of the same sample (``bench/layout.py`` runs UMAP
    through it)."""
    rows = np.asarray(sample_rows, dtype=np.int64)
    n = len(vectors)
    coords = np.zeros((n, 2), dtype=np.float32)
    S = np.asarray(sample_coords, dtype=np.float64)
    index = _InnerProduct(np.asarray(vectors[rows], dtype=np.float32))
    in_sample = np.zeros(n, dtype=bool)
    in_sample[rows] = True
    for start in range(0, n, BLOCK_ROWS):
        if check is not None:
            check()
        stop = min(n, start + BLOCK_ROWS)
        own = in_sample[start:stop]
        out = coords[start:stop]
        out[own] = S[np.searchsorted(rows, np.arange(start, stop)[own])]
        if not own.all():
            out[~own] = _place(index, S, np.ascontiguousarray(vectors[start:stop][~own], dtype=np.float32))
    return coords


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """A library's logger at WARNING for a while (openTSNE logs every optimize() call at INFO)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _fit_tsne(
    sample: np.ndarray,
    init: np.ndarray,
    *,
    seed: int,
    threads: int,
    n_iter: int,
    exaggeration_iter: int,
    interpolation_points: int,
    step: Callable[[int], None],
) -> np.ndarray:
    """openTSNE on the sample rows: exact cosine neighbours (Euclidean on the unit sphere) for the
    perplexity-based affinities, the given initialisation, early exaggeration (12), then the plain
    phase (openTSNE's momentum 0.8 and learning rate n / exaggeration), FFT gradients with
    ``interpolation_points`` per grid box from :data:`FFT_ROWS` rows; ``step(iterations)`` between
    chunks of :data:`ITER_CHUNK` iterations."""
    from openTSNE import TSNEEmbedding  # noqa: PLC0415
    from openTSNE.affinity import PerplexityBasedNN  # noqa: PLC0415
    from openTSNE.nearest_neighbors import PrecomputedNeighbors  # noqa: PLC0415

    m = len(sample)
    perplexity = min(PERPLEXITY, (m - 1) / 3.0)
    k = min(m - 1, int(3 * perplexity))
    sims, idx = _InnerProduct(sample).search(sample, k + 1)
    keep = _keep(idx, np.arange(m))
    nbr = idx[keep].reshape(m, k)
    dist = np.sqrt(np.clip(2.0 - 2.0 * sims[keep].reshape(m, k).astype(np.float64), 0.0, None))
    with _quiet("openTSNE"):
        affinities = PerplexityBasedNN(
            knn_index=PrecomputedNeighbors(nbr, dist), perplexity=perplexity, n_jobs=threads, verbose=False
        )
        fft = m >= FFT_ROWS
        emb = TSNEEmbedding(
            init,
            affinities,
            negative_gradient_method="fft" if fft else "bh",
            **({"n_interpolation_points": interpolation_points} if fft else {}),
            n_jobs=threads,
            random_state=seed,
            verbose=False,
        )
        done = 0
        for phase_iter, exaggeration in ((exaggeration_iter, 12.0), (n_iter, None)):
            left = phase_iter
            while left > 0:
                it = min(ITER_CHUNK, left)
                emb = emb.optimize(it, exaggeration=exaggeration, momentum=0.8, inplace=True)
                left -= it
                done += it
                step(done)
    return np.asarray(emb, dtype=np.float64)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """A seeded uniform sample of ``min(n, size)`` row indices, sorted (memmap reads go forward)."""
    m = min(n, max(1, size))
    if m >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False)).astype(np.int64)


def layout_sample(n: int, size: int, seed: int) -> np.ndarray:
    """The rows the map of a run with seed ``seed`` is fitted on (an update places its new
    documents beside them)."""
    return sample_rows(n, size, seeds.derive(seed, "layout_sample"))


def _tsne_init(pca_coords: np.ndarray, seed: int) -> np.ndarray:
    """openTSNE's PCA initialisation: the PCA coordinates scaled to a standard deviation of 1e-4 on
    the first axis, with a seeded jitter of 1% of it (exact duplicates start apart)."""
    init = np.array(pca_coords, dtype=np.float64)
    sd = float(np.std(init[:, 0]))
    rng = np.random.default_rng(seed)
    if not np.isfinite(sd) or sd <= 0:
        return rng.normal(0.0, 1e-4, init.shape)
    init *= 1e-4 / sd
    init += rng.normal(0.0, 1e-6, init.shape)
    return np.ascontiguousarray(init)


def fit_layout(
    vectors: np.ndarray,
    *,
    sample_size: int = 30_000,
    seed: int = 0,
    threads: int = 1,
    progress: Callable[[int, int], None] | None = None,
    check: Callable[[], None] | None = None,
    exaggeration_iter: int = EXAGGERATION_ITER,
    n_iter: int = N_ITER,
    interpolation_points: int = FFT_INTERPOLATION_POINTS,
) -> Layout:
    """A 2-D map of ``vectors`` ((n, d) unit rows, a memmap is fine): t-SNE on a seeded sample of at
    most ``sample_size`` rows, every other row at the similarity-weighted mean of the map positions
    of its :data:`EXTEND_NEIGHBORS` nearest sample rows, and the map's quality against PCA.

    ``progress(done, total)`` counts optimisation iterations, then rows passed over; ``check()`` is
    called between chunks of iterations and between blocks of rows, and whatever it raises
    propagates (a stopped run). Deterministic for a seed and a thread count. Fewer than
    :data:`MIN_TSNE_ROWS` sample rows give the PCA projection. ``exaggeration_iter`` and
    ``n_iter``: the optimisation schedule (early-exaggeration, then plain iterations);
    ``interpolation_points``: per FFT grid box (samples of :data:`FFT_ROWS` rows or more)."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D (n, d), got shape {vectors.shape}")
    n, d = int(vectors.shape[0]), int(vectors.shape[1])
    tick = progress or (lambda done, total: None)
    poll = check or (lambda: None)
    threads = max(1, int(threads))
    t0 = time.perf_counter()
    _faiss()  # loaded before the limits are set, so that they cover its OpenMP pool too
    from sklearn.decomposition import PCA  # noqa: F401, PLC0415  (and scipy's BLAS)

    with threadpool_limits(limits=threads):
        rows = layout_sample(n, sample_size, seed) if n else np.zeros(0, dtype=np.int64)
        fit_seed = seeds.derive(seed, "layout_fit")
        m = len(rows)
        sample = np.ascontiguousarray(vectors[rows], dtype=np.float32) if m < n else None
        if sample is None:  # all rows are the sample: read them once, in blocks
            sample = np.empty((n, d), dtype=np.float32)
            for a in range(0, n, BLOCK_ROWS):
                sample[a : a + BLOCK_ROWS] = vectors[a : a + BLOCK_ROWS]
        pca = _pca(sample, fit_seed) if m >= 2 else None
        use_tsne = m >= MIN_TSNE_ROWS
        iterations = exaggeration_iter + n_iter if use_tsne else 0
        total = iterations + n
        sample_coords = np.zeros((m, 2), dtype=np.float64)
        if pca is not None:
            sample_coords = _project(pca, sample).astype(np.float64)
        if use_tsne:
            poll()

            def step(done: int) -> None:
                tick(done, total)
                poll()

            fitted = _fit_tsne(
                sample,
                _tsne_init(sample_coords, fit_seed),
                seed=fit_seed,
                threads=threads,
                n_iter=n_iter,
                exaggeration_iter=exaggeration_iter,
                interpolation_points=interpolation_points,
                step=step,
            )
            if np.all(np.isfinite(fitted)):
                sample_coords = fitted
            else:  # never seen; a map of NaNs would be worse than PCA
                log.warning("t-SNE gave non-finite coordinates; the map is the PCA projection")
                use_tsne = False
        fit_seconds = time.perf_counter() - t0

        # one pass over the rows: place them, project them with PCA, collect the quality neighbours
        k = min(QUALITY_K, n - 1)
        eval_rows = _eval_rows(n, QUALITY_ROWS, seeds.derive(seed, "layout_eval")) if k >= 1 else np.zeros(0, dtype=np.int64)
        high = _HighNeighbours(np.asarray(vectors[eval_rows], dtype=np.float32), eval_rows, max(k, 0))
        coords = np.zeros((n, 2), dtype=np.float32)
        pca_coords = np.zeros((n, 2), dtype=np.float32)
        in_sample = np.zeros(n, dtype=bool)
        in_sample[rows] = True
        index = _InnerProduct(sample) if use_tsne and m < n else None
        extend_seconds = quality_seconds = 0.0
        for start in range(0, n, BLOCK_ROWS):
            poll()
            stop = min(n, start + BLOCK_ROWS)
            X = np.ascontiguousarray(vectors[start:stop], dtype=np.float32)
            t1 = time.perf_counter()
            P = _project(pca, X) if pca is not None else np.zeros((len(X), 2), dtype=np.float32)
            pca_coords[start:stop] = P
            if use_tsne:
                own = in_sample[start:stop]
                out = coords[start:stop]
                out[own] = sample_coords[np.searchsorted(rows, np.arange(start, stop)[own])]
                if index is not None and not own.all():
                    out[~own] = _place(index, sample_coords, X[~own])
            else:
                coords[start:stop] = P
            t2 = time.perf_counter()
            extend_seconds += t2 - t1
            high.add(X, start)
            quality_seconds += time.perf_counter() - t2
            tick(iterations + stop, total)
        t3 = time.perf_counter()
        if k >= 1:
            hn = high.result()
            knn = _overlap(hn, _low_neighbours(coords, eval_rows, k))
            knn_pca = _overlap(hn, _low_neighbours(pca_coords, eval_rows, k))
        else:
            knn = knn_pca = 1.0
        quality_seconds += time.perf_counter() - t3
    if use_tsne:
        method, library = "openTSNE t-SNE on a sample, other rows at their nearest sample rows", "openTSNE"
    else:
        method, library = "pca", "scikit-learn"
    info: dict[str, Any] = {
        "method": method,
        "library": library,
        "library_version": _version(library),
        "rows": n,
        "sample_size": m,
        "seed": seed,
        "threads": threads,
        "perplexity": min(PERPLEXITY, (m - 1) / 3.0) if use_tsne else None,
        "iterations": iterations if use_tsne else 0,
        "fft_interpolation_points": interpolation_points if use_tsne and m >= FFT_ROWS else None,
        "extend_neighbors": min(EXTEND_NEIGHBORS, m) if use_tsne and m < n else 0,
        "fit_seconds": round(fit_seconds, 3),
        "extend_seconds": round(extend_seconds, 3),
        "quality_seconds": round(quality_seconds, 3),
        "quality": {
            "knn10_preserved": round(knn, 4),
            "pca_knn10_preserved": round(knn_pca, 4),
            "evaluated": int(len(eval_rows)),
        },
    }
    log.info(
        "layout of %d rows (%s, sample %d): fit %.1f s, extend %.1f s; 10-NN preserved %.3f (PCA %.3f)",
        n, method, m, fit_seconds, extend_seconds, knn, knn_pca,
    )  # fmt: skip
    return Layout(coords, info)
