"""Choice of k on a sample: modularity of k-means partitions on the sample's k-NN graph.

On sentence embeddings the silhouette is nearly flat over k and lands on whichever end of its grid
the corpus pushes it to; inertia and gap-style statistics fall monotonically. What has a real
optimum is the **modularity** of a partition on the sample's symmetric k-nearest-neighbour graph
(cosine, ``neighbors`` per row): too few themes lump together regions the graph separates, too
many cut through regions it holds together. Modularity compares each theme's internal edges with
what a random graph of the same degrees gives, so it is scale-free across corpora and models.

How the candidates are scored, cheaply:

1. one k-NN graph of the sample (exact inner-product search);
2. per draw (``repeats`` 80% subsamples, own seeds, one Ray task each): k-means with the largest
   candidate k (the "micro" themes), the whole sample assigned to them, and Ward's agglomeration
   of the micro centroids (weighted by their sizes) — so one fit per draw yields a partition for
   every k below it;
3. each candidate's modularity, averaged over the draws (and its standard error); the highest mean
   wins, ties to the smaller k; the agreement of the draws (mean adjusted Rand index) is recorded;
4. the same procedure on a reference without themes (a Gaussian with the sample's mean and
   covariance, SigClust's null: every direction keeps its spread, none has modes): if the
   chosen k's modularity is not ``min_gain`` above the reference's, the sample has no theme
   structure, and the smallest candidate is chosen with that reason.

When the chosen k is the smallest or largest candidate, the caller widens the range once
(:func:`widened_range`). ``criterion = "silhouette"`` keeps the earlier rule (the highest mean
silhouette over draws, one k-means per candidate and draw) for comparison.

On a cuda device the k-means fits run on the GPU (``xp`` kernels); the graph, the agglomeration
and the modularity are small host computations. GPU errors surface as ``GpuUnavailable`` for the
caller's ``run_with_fallback``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Callable

import numpy as np

from .device import CPU, Device, cuml_silhouette, gpu_errors
from .kmeans import ConvergenceWarning, fit_local
from . import seeds

CRITERIA = {
    "modularity": (
        "modularity of the k-means partition on the sample's k-NN graph, mean over draws (80% subsamples, "
        "own seeds; Ward's merges of one fit per draw); highest wins, ties to the smaller k; no structure "
        "(no gain over a Gaussian reference with the same covariance): the smallest k"
    ),
    "silhouette": "silhouette, mean over draws (80% subsamples, own seeds); highest wins, ties to the smaller k",
}
K_CAP = 500  # the default top of the range never exceeds this (a few hundred themes at most)


def default_k_max(n: int, k_min: int) -> int:
    """The top of the default range: about sqrt(n/2) (a handful for hundreds of documents, a few
    hundred for a million), at most ``K_CAP``."""
    return int(min(K_CAP, max(k_min + 1, round(math.sqrt(n / 2)))))


def candidate_ks(n: int, k_min: int, k_max: int | None, count: int) -> list[int]:
    """A geometric grid of distinct k values in [k_min, k_max]."""
    if k_max is None:
        k_max = default_k_max(n, k_min)
    k_max = min(k_max, n - 1)
    if k_max < k_min:
        raise ValueError(f"too few documents ({n}) to choose k between {k_min} and {k_max}; pass --k")
    grid = np.geomspace(k_min, k_max, num=count)
    return sorted({int(round(g)) for g in grid})


def standard_error(values: list[float]) -> float:
    """Standard error of the mean over the draws (0 for a single draw)."""
    if len(values) < 2:
        return 0.0
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


@dataclass
class CandidateScore:
    k: int
    silhouettes: list[float]
    stability: float
    device: str = "cpu"  # the device that computed it
    fallback: str | None = None  # why it ran on CPU although a GPU was asked for, when it did
    not_converged: int = 0  # candidate fits that stopped at max_iter

    @property
    def mean(self) -> float:
        return float(np.mean(self.silhouettes))

    @property
    def se(self) -> float:
        return standard_error(self.silhouettes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "silhouette": round(self.mean, 6),
            "silhouette_se": round(self.se, 6),
            "silhouettes": [round(s, 6) for s in self.silhouettes],
            "stability_ari": round(self.stability, 6),
            "not_converged": self.not_converged,
        }


def silhouette_xp(X: Any, labels: Any, xp: Any, *, batch_rows: int = 2048) -> float:
    """Mean silhouette coefficient (Euclidean), as scikit-learn's ``silhouette_score`` without
    sampling, on any array namespace (numpy, cupy, array-api-strict).

    ``labels`` must be ``0 .. L-1`` with every label used (``2 <= L <= n - 1``). Per block of
    ``batch_rows`` rows: distances to every row by one GEMM (float64, self-distance exactly 0),
    per-cluster sums of them by a second GEMM with the one-hot label matrix. Memory: ``n x L``
    plus ``batch_rows x n`` at a time."""
    n = int(X.shape[0])
    Xf = xp.astype(X, xp.float64)
    sq = xp.sum(Xf * Xf, axis=1)
    n_labels = int(xp.max(labels)) + 1
    ks = xp.arange(n_labels, dtype=labels.dtype)
    onehot = xp.astype(labels[:, None] == ks[None, :], xp.float64)
    counts = xp.sum(onehot, axis=0)
    if not 2 <= n_labels <= n - 1:
        raise ValueError(f"silhouette needs 2 <= labels <= n_samples - 1, got {n_labels} labels for {n} samples")
    cols = xp.arange(n)
    total = xp.zeros((), dtype=xp.float64)
    for start in range(0, n, batch_rows):
        end = min(start + batch_rows, n)
        xb, lb = Xf[start:end, :], labels[start:end]
        d2 = sq[start:end][:, None] + sq[None, :] - 2.0 * (xb @ Xf.T)
        rows = xp.arange(start, end)
        D = xp.where(rows[:, None] == cols[None, :], 0.0, xp.sqrt(xp.clip(d2, min=0.0)))
        sums = D @ onehot  # block x L: distance sums to each cluster
        own = xp.take(counts, lb)
        a = xp.take_along_axis(sums, lb[:, None], axis=1)[:, 0] / xp.maximum(own - 1.0, 1.0)
        other = xp.where(ks[None, :] == lb[:, None], xp.inf, sums / counts[None, :])
        b = xp.min(other, axis=1)
        denom = xp.maximum(a, b)
        ok = (own > 1.0) & (denom > 0.0)  # a singleton cluster's rows score 0, as in scikit-learn
        s = xp.where(ok, (b - a) / xp.where(ok, denom, 1.0), 0.0)
        total = total + xp.sum(s)
    return float(total) / n


def silhouette(
    X: np.ndarray,
    labels: np.ndarray,
    *,
    device: Device = CPU,
    sample_size: int | None = None,
    random_state: int | None = None,
    batch_rows: int = 2048,
) -> float:
    """scikit-learn's ``silhouette_score`` (Euclidean) on ``device``, on the same subsample of
    ``sample_size`` rows for a ``random_state``. CPU: scikit-learn itself. GPU: cuML when it imports,
    else :func:`silhouette_xp` on the device's ``xp``; GPU errors raise ``GpuUnavailable``."""
    if device.kind != "cuda":
        from sklearn.metrics import silhouette_score  # noqa: PLC0415 - heavy, only here

        return float(silhouette_score(X, labels, sample_size=sample_size, random_state=random_state))
    X = np.asarray(X)
    labels = np.asarray(labels)
    if sample_size is not None:  # the rows scikit-learn would draw
        idx = np.random.RandomState(random_state).permutation(X.shape[0])[:sample_size]
        X, labels = X[idx], labels[idx]
    _, dense_labels = np.unique(labels, return_inverse=True)  # 0 .. L-1, every one used
    xp = device.xp
    with gpu_errors("silhouette on GPU"):
        Xd = device.asarray(np.ascontiguousarray(X, dtype=np.float32))
        ld = device.asarray(dense_labels.astype(np.int32).reshape(-1))
        cu = cuml_silhouette()
        if cu is not None:
            return float(cu(Xd, ld, chunksize=batch_rows))
        return silhouette_xp(Xd, ld, xp, batch_rows=batch_rows)


def score_candidate(
    sample: np.ndarray,
    k: int,
    repeats: int,
    seed: int,
    device: Device = CPU,
    n_init: int = 3,
    batch_rows: int = 16_384,
) -> CandidateScore:
    """Fit k-means on ``repeats`` 80% draws of ``sample`` (best of ``n_init`` seeds each, so one
    poor local optimum does not sink a good k); silhouettes and cross-draw ARI. On a cuda
    ``device`` k-means and the silhouette run on the GPU (``batch_rows`` rows per block; the
    silhouette's blocks are at most 2,048 rows)."""
    from sklearn.metrics import adjusted_rand_score

    n = sample.shape[0]
    draw_size = max(k + 1, int(0.8 * n))
    sils, full_labels = [], []
    not_converged = 0
    for r in range(repeats):
        rng = seeds.rng(seed, "select_k_silhouette", k, r)
        idx = np.sort(rng.choice(n, size=min(draw_size, n), replace=False))
        X = sample[idx]
        with warnings.catch_warnings():  # a candidate's fit is internal: counted, not shown
            warnings.simplefilter("ignore", ConvergenceWarning)
            fits = [
                fit_local(X, k, max_iter=50, tol=1e-4, seed=int(rng.integers(2**31)), batch_rows=batch_rows, device=device)
                for _ in range(n_init)
            ]
        not_converged += sum(not f.converged for f in fits)
        model = min(fits, key=lambda m: m.inertia)
        labels = model.labels
        if len(np.unique(labels)) < 2:
            sils.append(-1.0)
        else:
            sample_size = min(len(X), 5000)
            sils.append(silhouette(X, labels, device=device, sample_size=sample_size, random_state=r, batch_rows=min(batch_rows, 2048)))
        full_labels.append(model.predict(sample, device, batch_rows))
    pairs = list(combinations(range(repeats), 2))
    stability = float(np.mean([adjusted_rand_score(full_labels[a], full_labels[b]) for a, b in pairs])) if pairs else 1.0
    return CandidateScore(k=k, silhouettes=sils, stability=stability, device=device.name, not_converged=not_converged)


def choose_k(scores: list[CandidateScore]) -> int:
    """The silhouette rule: the highest mean silhouette over the draws, ties to the smaller k."""
    return max(scores, key=lambda s: (round(s.mean, 12), -s.k)).k


# ----------------------------------------------------------------------------- modularity


def knn_graph(X: np.ndarray, neighbors: int) -> Any:
    """The symmetric k-nearest-neighbour graph of the rows of ``X`` by cosine similarity, as a
    scipy CSR matrix with unit weights (an edge where either row is among the other's
    ``neighbors`` nearest). Exact search (FAISS flat inner product on the normalised rows)."""
    from scipy import sparse

    from .deps import require

    n = X.shape[0]
    nb = min(neighbors, n - 1)
    if nb < 1:
        raise ValueError(f"a k-NN graph needs at least 2 rows, got {n}")
    U = np.ascontiguousarray(X, dtype=np.float32)
    norms = np.linalg.norm(U, axis=1, keepdims=True)
    U = U / np.where(norms > 0, norms, 1.0)
    faiss = require("faiss")
    index = faiss.IndexFlatIP(U.shape[1])
    index.add(U)
    _, idx = index.search(U, nb + 1)
    rows = np.repeat(np.arange(n), nb + 1)
    cols = idx.ravel()
    keep = (cols >= 0) & (cols != rows)  # drop the row itself (and FAISS's -1 padding)
    G = sparse.csr_matrix((np.ones(int(keep.sum())), (rows[keep], cols[keep])), shape=(n, n))
    G = G.maximum(G.T)
    G.sum_duplicates()
    return G.tocsr()


def modularity(G: Any, labels: np.ndarray) -> float:
    """Newman's modularity of the partition ``labels`` (0 .. L-1) of the undirected graph ``G``:
    the fraction of edge weight inside the parts minus what random edges with the same degrees
    would put there."""
    from scipy import sparse

    labels = np.asarray(labels, dtype=np.int64)
    n_parts = int(labels.max()) + 1 if labels.size else 0
    two_m = float(G.sum())
    if two_m == 0 or n_parts == 0:
        return 0.0
    H = sparse.csr_matrix((np.ones(len(labels)), (np.arange(len(labels)), labels)), shape=(len(labels), n_parts))
    inside = np.asarray((H.T @ G @ H).diagonal()).ravel()
    degree = H.T @ np.asarray(G.sum(axis=1)).ravel()
    return float(np.sum(inside / two_m - (degree / two_m) ** 2))


def ward_merges(centroids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Ward's agglomeration of weighted centroids: ``(m - 1, 2)`` merges ``(a, b)`` in order, each
    joining cluster ``b`` into ``a`` (ids of the original centroids; a merged cluster keeps the id
    ``a``). The merge cost of two clusters is the rise in within-cluster sum of squares,
    ``wa wb / (wa + wb) |ca - cb|^2``; one row of the cost matrix is updated per merge
    (O(m^2 d) in all)."""
    C = np.asarray(centroids, dtype=np.float64).copy()
    w = np.maximum(np.asarray(weights, dtype=np.float64), 1e-12).copy()
    m = C.shape[0]
    sq = np.sum(C * C, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (C @ C.T), 0.0)
    cost = (w[:, None] * w[None, :] / (w[:, None] + w[None, :])) * d2
    np.fill_diagonal(cost, np.inf)
    merges = np.zeros((max(m - 1, 0), 2), dtype=np.int64)
    active = np.ones(m, dtype=bool)
    for step in range(m - 1):
        a, b = divmod(int(np.argmin(cost)), m)
        a, b = min(a, b), max(a, b)
        C[a] = (w[a] * C[a] + w[b] * C[b]) / (w[a] + w[b])
        w[a] += w[b]
        merges[step] = (a, b)
        active[b] = False
        cost[b, :] = np.inf
        cost[:, b] = np.inf
        others = np.flatnonzero(active)
        others = others[others != a]
        if others.size:
            row = (w[a] * w[others] / (w[a] + w[others])) * np.sum((C[others] - C[a]) ** 2, axis=1)
            cost[a, others] = row
            cost[others, a] = row
    return merges


def cut_merges(merges: np.ndarray, m: int, k: int) -> np.ndarray:
    """Group number (0 .. k-1) of each of ``m`` original clusters after the first ``m - k`` merges."""
    if not 1 <= k <= m:
        raise ValueError(f"cannot cut {m} clusters into {k}")
    parent = np.arange(m)
    for a, b in merges[: m - k]:
        parent[parent == b] = a
    _, groups = np.unique(parent, return_inverse=True)
    return groups


@dataclass
class DrawResult:
    """One draw: the sample's micro-theme per row, and Ward's merges of the micro centroids."""

    micro: np.ndarray  # (n_sample,) micro-theme of each sample row
    merges: np.ndarray  # (m - 1, 2)
    m: int  # micro themes
    converged: bool
    device: str = "cpu"
    fallback: str | None = None

    def labels(self, k: int) -> np.ndarray:
        return cut_merges(self.merges, self.m, k)[self.micro]


def fit_draw(
    sample: np.ndarray,
    k_top: int,
    draw: int,
    seed: int,
    device: Device = CPU,
    batch_rows: int = 16_384,
    fraction: float = 0.8,
    max_iter: int = 50,
) -> DrawResult:
    """One draw of the modularity criterion: k-means with ``k_top`` themes on a seeded ``fraction``
    of the sample (the whole sample when ``fraction`` is 1), every sample row assigned to its
    nearest micro centroid, and Ward's merges of those centroids weighted by their rows."""
    n = sample.shape[0]
    rng = seeds.rng(seed, "select_k_draw", draw, k_top)
    size = n if fraction >= 1 else max(k_top + 1, int(fraction * n))
    idx = np.sort(rng.choice(n, size=min(size, n), replace=False))
    with warnings.catch_warnings():  # an internal fit: its convergence is recorded, not shown
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = fit_local(sample[idx], k_top, max_iter=max_iter, tol=1e-4, seed=int(rng.integers(2**31)), batch_rows=batch_rows, device=device)
    micro = model.predict(sample, device, batch_rows)
    counts = np.bincount(micro, minlength=k_top)
    merges = ward_merges(model.centroids, counts)
    return DrawResult(micro=micro.astype(np.int32), merges=merges, m=k_top, converged=bool(model.converged), device=device.name)


def reference_sample(sample: np.ndarray, seed: int) -> np.ndarray:
    """A reference with no theme structure: a Gaussian with the sample's mean and covariance (the
    unimodal null of SigClust: every principal direction keeps its spread, no direction has
    modes), drawn as many rows as the sample and normalised like the embeddings."""
    X = np.asarray(sample, dtype=np.float64)
    n = X.shape[0]
    mu = X.mean(axis=0)
    eigvals, V = np.linalg.eigh((X - mu).T @ (X - mu) / max(n - 1, 1))  # d x d: cheaper than an SVD of X
    rng = seeds.rng(seed, "select_k_reference")
    R = (rng.standard_normal((n, len(eigvals))) * np.sqrt(np.clip(eigvals, 0.0, None))) @ V.T + mu
    norms = np.linalg.norm(R, axis=1, keepdims=True)
    return (R / np.where(norms > 0, norms, 1.0)).astype(np.float32)


@dataclass
class ModularityScore:
    k: int
    modularities: list[float]
    stability: float

    @property
    def mean(self) -> float:
        return float(np.mean(self.modularities))

    @property
    def se(self) -> float:
        return standard_error(self.modularities)

    def as_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "modularity": round(self.mean, 6),
            "modularity_se": round(self.se, 6),
            "modularities": [round(q, 6) for q in self.modularities],
            "stability_ari": round(self.stability, 6),
        }


def score_modularity(G: Any, draws: list[DrawResult], ks: list[int]) -> list[ModularityScore]:
    """Each candidate's modularity in every draw, and the draws' agreement (mean pairwise ARI)."""
    from sklearn.metrics import adjusted_rand_score

    out = []
    for k in ks:
        labels = [d.labels(k) for d in draws]
        qs = [modularity(G, lab) for lab in labels]
        pairs = list(combinations(range(len(labels)), 2))
        stab = float(np.mean([adjusted_rand_score(labels[a], labels[b]) for a, b in pairs])) if pairs else 1.0
        out.append(ModularityScore(k=k, modularities=qs, stability=stab))
    return out


@dataclass
class Choice:
    k: int
    structure: bool
    reason: str
    reference_modularity: float | None = None
    gain: float | None = None


def best_modularity(scores: list[ModularityScore]) -> ModularityScore:
    """The highest mean modularity over the draws, ties to the smaller k."""
    return max(scores, key=lambda s: (round(s.mean, 12), -s.k))


def decide(scores: list[ModularityScore], reference: float, min_gain: float) -> Choice:
    """The chosen k: the best mean modularity, unless it is not ``min_gain`` above the reference
    (the same k on a sample without themes): then no structure, and the smallest candidate."""
    best = best_modularity(scores)
    gain = best.mean - reference
    smallest = min(s.k for s in scores)
    if gain < min_gain:
        return Choice(
            smallest,
            False,
            f"no theme structure: the best modularity ({best.mean:.4f} at k={best.k}) is only {gain:.4f} above a "
            f"reference without themes ({reference:.4f}; at least {min_gain:g} needed), so the smallest k",
            reference,
            gain,
        )
    return Choice(
        best.k,
        True,
        f"highest mean modularity {best.mean:.4f} (± {best.se:.4f}) at k={best.k}, {gain:.4f} above a reference without themes",
        reference,
        gain,
    )


def widened_range(k: int, ks: list[int], k_floor: int, k_ceiling: int) -> tuple[int, int] | None:
    """When ``k`` is the smallest or largest candidate, the range widened once: down to
    ``k_floor`` (halving the bottom), or up to at most ``k_ceiling`` (doubling the top); ``None``
    when ``k`` lies inside the range or the range cannot widen that way."""
    lo, hi = min(ks), max(ks)
    if k == lo and lo > k_floor:
        return max(k_floor, lo // 2), hi
    if k == hi and hi < k_ceiling:
        return lo, min(k_ceiling, 2 * hi)
    return None


def widen_grid(ks: list[int], lo: int, hi: int) -> list[int]:
    """``ks`` extended to [lo, hi] with the grid's own geometric step (its candidates kept)."""
    ratio = math.exp(np.mean(np.diff(np.log(ks)))) if len(ks) > 1 else 2.0
    extra: set[int] = set()
    g = float(min(ks))
    while g > lo:
        g /= ratio
        extra.add(max(lo, int(round(g))))
    g = float(max(ks))
    while g < hi:
        g *= ratio
        extra.add(min(hi, int(round(g))))
    return sorted(set(ks) | extra | {lo, hi})


DrawJob = tuple[np.ndarray, int, int, float]  # (rows, k_top, draw, fraction)


def modularity_sample_size(n: int, sample_size: int, ks: list[int]) -> int:
    """Rows the modularity criterion scores on: ``sample_size``, raised to 20 per micro theme of
    the largest candidate (at most 20,000), never more than the ``n`` documents."""
    return min(n, max(sample_size, min(20_000, 20 * max(ks))))


def k_ceiling(n_sample: int, ks: list[int]) -> int:
    """The most a range may widen to: 10 sample rows per theme, at most twice ``K_CAP``."""
    return max(max(ks), min(n_sample // 10, 2 * K_CAP, n_sample - 1))


def draws_in_process(seed: int, device: Device = CPU) -> Callable[[list[DrawJob]], list[DrawResult]]:
    """A ``run_draws`` for :func:`choose_by_modularity` that fits the draws here, one after another."""
    return lambda jobs: [fit_draw(rows, k_top, draw, seed, device, fraction=fraction) for rows, k_top, draw, fraction in jobs]


def choose_by_modularity(
    sample: np.ndarray,
    ks: list[int],
    *,
    repeats: int,
    neighbors: int,
    min_gain: float,
    seed: int,
    run_draws: Callable[[list[DrawJob]], list[DrawResult]],
    k_floor: int = 2,
) -> tuple[Choice, dict[str, Any]]:
    """The modularity criterion over the candidates ``ks`` on ``sample``, widening the range once
    when the best k is on its edge. ``run_draws(jobs)`` runs :func:`fit_draw` for each
    ``(rows, k_top, draw, fraction)`` job — the caller decides where (Ray tasks, or in process) —
    and returns the :class:`DrawResult` list in job order. Returns the choice and what the
    manifest records about it."""
    n = sample.shape[0]
    G = knn_graph(sample, neighbors)
    reference = reference_sample(sample, seed)
    k_top = max(ks)
    results = run_draws([(sample, k_top, r, 0.8) for r in range(repeats)] + [(reference, k_top, 0, 1.0)])
    draws, ref_draw = results[:-1], results[-1]
    scores = score_modularity(G, draws, ks)
    widened = None
    edge_k = best_modularity(scores).k
    span = widened_range(edge_k, ks, k_floor, k_ceiling(n, ks))
    if span is not None:
        lo, hi = span
        wider = widen_grid(ks, lo, hi)
        if hi > k_top:  # finer micro themes are needed: new fits
            results = run_draws([(sample, hi, r, 0.8) for r in range(repeats)] + [(reference, hi, 0, 1.0)])
            draws, ref_draw = results[:-1], results[-1]
        widened = {"from": [min(ks), max(ks)], "to": [lo, hi], "because": f"k={edge_k} was on the edge"}
        ks = wider
        scores = score_modularity(G, draws, ks)
    best = best_modularity(scores)
    ref_graph = knn_graph(reference, neighbors)
    ref_q = modularity(ref_graph, ref_draw.labels(best.k))
    choice = decide(scores, ref_q, min_gain)
    record = {
        "k": choice.k,
        "criterion": CRITERIA["modularity"],
        "reason": choice.reason,
        "structure": choice.structure,
        "reference_modularity": round(ref_q, 6),
        "gain": round(choice.gain, 6),
        "range": [min(ks), max(ks)],
        "widened": widened,
        "edge": choice.k in (min(ks), max(ks)),
        "sample_size": int(n),
        "repeats": repeats,
        "neighbors": neighbors,
        "not_converged": int(sum(not d.converged for d in draws)),
        "candidates": [s.as_dict() for s in scores],
    }
    device = sorted({d.device for d in [*draws, ref_draw]})
    fallbacks = [{"stage": "select_k", "reason": d.fallback} for d in [*draws, ref_draw] if d.fallback]
    record["device"] = ",".join(device)
    record["_fallbacks"] = fallbacks
    return choice, record
