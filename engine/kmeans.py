"""k-means written against an array namespace (``xp``): numpy, cupy or array-api-strict.

Kernels (private, assume valid input):
  * :func:`assign` — nearest centroid and squared distance, in row blocks (GEMM-based distances);
  * :func:`segment_sums` — per-cluster sums and counts of the rows (the M-step's partial sums);
  * :func:`kmeans_plusplus` — greedy k-means++ seeding (as scikit-learn: 2 + log k local trials);
  * :func:`kmeans_parallel` — k-means|| seeding for large k (a few GEMM passes, then weighted k-means++).

Drivers:
  * :class:`Shard` — one block of rows; computes partial sums, assignments, samples. A Ray actor
    wraps it (``actors/shard.py``); :class:`LocalShards` runs it in-process.
  * :func:`fit_sharded` — Lloyd iterations over any :class:`ShardGroup`: only centroids, partial
    sums and counts move; empty clusters are repaired with the globally farthest points.
  * :func:`fit_local` — the same Lloyd iterations in one process; the scikit-learn style
    :class:`KMeans` estimator built on it lives in ``engine/estimator.py`` (importable from here too,
    lazily: scikit-learn is not imported by the kernels).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from .device import CPU, Device, to_numpy
from .events import NULL_CONTROL, StageControl
from . import seeds

log = logging.getLogger(__name__)


class ConvergenceWarning(UserWarning):
    """k-means stopped at ``max_iter`` before its centroids settled (as scikit-learn's)."""


# ----------------------------------------------------------------------------- kernels


def _row_sq_norms(X: Any, xp: Any) -> Any:
    return xp.sum(X * X, axis=1)


def _assign_block(xb: Any, Ct_m2: Any, c_sq: Any, xb_sq: Any, xp: Any) -> tuple[Any, Any]:
    """Nearest centroid and squared distance for one block of rows (one GEMM).

    ``Ct_m2`` is ``-2 C^T`` (scaled once per call, not per block); the arg-min of
    ``|c|^2 - 2 x.c`` needs no ``|x|^2``, which is added to the minimum only.
    """
    h = xb @ Ct_m2
    h += c_sq[None, :]
    lab = xp.argmin(h, axis=1)
    m = xp.take_along_axis(h, lab[:, None], axis=1)[:, 0]
    return xp.astype(lab, xp.int64), xp.clip(xb_sq + m, min=0.0)


def host_knn_available(xp: Any) -> bool:
    """Whether the E-step can use FAISS's fused nearest-centroid search: host numpy arrays and faiss
    importable. It is the same computation (exact squared L2, arg-min) ~25% faster than a GEMM and
    a separate arg-min pass on the CPU; decided once per shard."""
    if xp is not np:
        return False
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _host_knn_block(xb: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    D, idx = faiss.knn(np.ascontiguousarray(xb), C, 1)
    return idx[:, 0].astype(np.int64), np.clip(D[:, 0], 0.0, None)


def assign(
    X: Any, C: Any, xp: Any, batch_rows: int = 16_384, x_sq: Any = None, host_knn: bool = False
) -> tuple[Any, Any]:
    """Index of the nearest centroid (int64) and the squared distance to it for each row.

    ``x_sq`` (the rows' squared norms) may be passed when known, to skip recomputing them;
    ``host_knn`` (see :func:`host_knn_available`) has FAISS do each block's search.
    """
    n = X.shape[0]
    c_sq = _row_sq_norms(C, xp)
    Ct = -2.0 * C.T
    Cc = np.ascontiguousarray(C, dtype=np.float32) if host_knn else None
    labels, dists = [], []
    for start in range(0, n, batch_rows):
        end = min(start + batch_rows, n)
        xb = X[start:end, :]
        if host_knn:
            lab, d = _host_knn_block(xb, Cc)
        else:
            xb_sq = x_sq[start:end] if x_sq is not None else _row_sq_norms(xb, xp)
            lab, d = _assign_block(xb, Ct, c_sq, xb_sq, xp)
        labels.append(lab)
        dists.append(d)
    if not labels:
        return xp.zeros((0,), dtype=xp.int64), xp.zeros((0,), dtype=X.dtype)
    return xp.concat(labels), xp.concat(dists)


def lloyd_step(
    X: Any, C: Any, xp: Any, batch_rows: int = 16_384, x_sq: Any = None, host_knn: bool = False
) -> tuple[Any, Any, Any]:
    """One E+M pass over ``X`` block by block: per-cluster sums (float64), counts and inertia."""
    n, k = X.shape[0], C.shape[0]
    c_sq = _row_sq_norms(C, xp)
    Ct = -2.0 * C.T
    Cc = np.ascontiguousarray(C, dtype=np.float32) if host_knn else None
    sums = xp.zeros((k, X.shape[1]), dtype=xp.float64)
    counts = xp.zeros((k,), dtype=xp.int64)
    inertia = xp.zeros((), dtype=xp.float64)
    for start in range(0, n, batch_rows):
        end = min(start + batch_rows, n)
        xb = X[start:end, :]
        if host_knn:
            lab, d = _host_knn_block(xb, Cc)
        else:
            xb_sq = x_sq[start:end] if x_sq is not None else _row_sq_norms(xb, xp)
            lab, d = _assign_block(xb, Ct, c_sq, xb_sq, xp)
        s_b, c_b = segment_sums(xb, lab, k, xp)
        sums = sums + xp.astype(s_b, xp.float64)
        counts = counts + c_b
        inertia = inertia + xp.sum(xp.astype(d, xp.float64))
    return sums, counts, inertia


def _cumsum0(x: Any, xp: Any) -> Any:
    """Cumulative sum along axis 0 with a leading zero row."""
    if hasattr(xp, "cumulative_sum"):
        return xp.cumulative_sum(x, axis=0, include_initial=True)
    zero = xp.zeros((1,) + tuple(x.shape[1:]), dtype=x.dtype)
    return xp.concat([zero, xp.cumsum(x, axis=0)])


def segment_sums(X: Any, labels: Any, k: int, xp: Any) -> tuple[Any, Any]:
    """Per-cluster sums (float64, k x d) and counts (int64, k) of the rows of ``X``.

    Sort-based, so it needs no scatter-add (absent from the array API): rows are ordered by
    label, prefix-summed in float64, and differenced at the label boundaries.
    """
    if xp is np:  # host fast path: one sparse product, O(n d), no sort
        return _segment_sums_numpy(X, labels, k)
    order = xp.argsort(labels, stable=True)
    sorted_labels = xp.take(labels, order)
    rows = xp.astype(xp.take(X, order, axis=0), xp.float64)
    prefix = _cumsum0(rows, xp)
    ks = xp.arange(k, dtype=sorted_labels.dtype)
    starts = xp.searchsorted(sorted_labels, ks, side="left")
    ends = xp.searchsorted(sorted_labels, ks, side="right")
    sums = xp.take(prefix, ends, axis=0) - xp.take(prefix, starts, axis=0)
    return sums, xp.astype(ends - starts, xp.int64)


def _segment_sums_numpy(X: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy import sparse

    n = X.shape[0]
    # one-hot as CSC (one entry per column, no sort): a single O(n d) pass; the rows are summed
    # in their own precision, so callers keep blocks moderate and accumulate blocks in float64
    onehot = sparse.csc_matrix((np.ones(n, dtype=X.dtype), labels, np.arange(n + 1)), shape=(k, n))
    sums = np.asarray(onehot @ X, dtype=np.float64)
    counts = np.bincount(labels, minlength=k).astype(np.int64)
    return sums, counts


def kmeans_plusplus(
    X: Any, k: int, rng: np.random.Generator, xp: Any, n_local_trials: int | None = None, weights: Any = None
) -> Any:
    """Greedy k-means++ seeding on the rows of ``X`` (each row counted ``weights[i]`` times when
    given); returns ``k`` rows of ``X`` (copies)."""
    n = X.shape[0]
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(k))
    w = xp.ones((n,), dtype=xp.float64) if weights is None else xp.astype(weights, xp.float64)
    x_sq = _row_sq_norms(X, xp)
    first = int(rng.integers(n))
    centers = [X[first, :]]
    c = X[first : first + 1, :]
    closest = xp.astype(xp.clip(x_sq - 2.0 * (X @ c.T)[:, 0] + x_sq[first], min=0.0), xp.float64)
    for _ in range(1, k):
        prefix = _cumsum0(w * closest, xp)
        potential = float(prefix[-1])
        if potential <= 0.0:  # fewer distinct points than k: pick uniformly among the rest
            cand = xp.asarray(rng.integers(n, size=n_local_trials), dtype=xp.int64)
        else:
            draws = xp.asarray(rng.random(n_local_trials) * potential, dtype=xp.float64)
            cand = xp.clip(xp.searchsorted(prefix[1:], draws, side="right"), max=n - 1)
        cx = xp.take(X, cand, axis=0)
        d = xp.clip(xp.take(x_sq, cand)[:, None] - 2.0 * (cx @ X.T) + x_sq[None, :], min=0.0)
        trial = xp.minimum(closest[None, :], xp.astype(d, xp.float64))
        best = int(xp.argmin(xp.sum(trial * w[None, :], axis=1)))
        closest = trial[best, :]
        centers.append(cx[best, :])
    return xp.stack(centers)


def kmeans_parallel(
    X: Any,
    k: int,
    rng: np.random.Generator,
    xp: Any,
    rounds: int = 5,
    oversampling: float = 0.5,
    batch_rows: int = 16_384,
    local_trials: int | None = None,
) -> Any:
    """k-means|| seeding (Bahmani et al. 2012): ``rounds`` passes that each draw about
    ``oversampling * k`` candidates with probability proportional to the squared distance to the
    candidates so far (one GEMM per pass), then greedy k-means++ on the candidates weighted by how
    many rows each is nearest to. Greedy k-means++ reads all of ``X`` for each of the k centres;
    this reads it ``rounds + 2`` times, so it serves large k."""
    n = X.shape[0]
    x_sq = _row_sq_norms(X, xp)
    first = int(rng.integers(n))
    chosen = [np.asarray([first], dtype=np.int64)]
    _, d2 = assign(X, X[first : first + 1, :], xp, batch_rows, x_sq)
    per_round = oversampling * k
    for _ in range(rounds):
        d2_host = to_numpy(d2).astype(np.float64)
        potential = float(d2_host.sum())
        if potential <= 0.0:
            break
        picked = np.flatnonzero(rng.random(n) < np.minimum(1.0, per_round * d2_host / potential))
        if picked.size == 0:
            continue
        chosen.append(picked)
        _, d_new = assign(X, xp.take(X, xp.asarray(picked), axis=0), xp, batch_rows, x_sq)
        d2 = xp.minimum(d2, d_new)
    idx = np.unique(np.concatenate(chosen))
    if idx.size <= k:  # too few distinct candidates (tiny or degenerate data): seed from all rows
        return kmeans_plusplus(X, k, rng, xp)
    C = xp.take(X, xp.asarray(idx), axis=0)
    labels, _ = assign(X, C, xp, batch_rows, x_sq)
    weights = np.bincount(to_numpy(labels), minlength=idx.size)
    return kmeans_plusplus(C, k, rng, xp, n_local_trials=local_trials, weights=xp.asarray(weights))


GREEDY_MAX_K = 256  # above this, seeding uses k-means|| (greedy k-means++ costs k passes over the sample)


# ----------------------------------------------------------------------------- shards


FitRows = tuple[int, int, int] | None  # (rows in all shards, sample size, seed): see Shard.fit_rows


class Shard:
    """One block of unit vectors and the k-means work on it (held by one actor or process)."""

    def __init__(self, X: Any, offset: int = 0, device: Device = CPU, batch_rows: int = 16_384) -> None:
        self.device = device
        self.xp = device.xp
        self.X = device.asarray(X, dtype=self.xp.float32)
        self.offset = offset
        self.batch_rows = batch_rows
        self.x_sq = _row_sq_norms(self.X, self.xp)
        self.host_knn = host_knn_available(self.xp)
        self._fit: FitRows = None
        self._fit_rows = (self.X, self.x_sq)

    def fit_rows(self, fit: FitRows) -> tuple[Any, Any]:
        """The rows (and their squared norms) Lloyd's steps see: all of them for ``fit=None``, else
        this shard's part of the uniform sample ``fit = (rows in all shards, sample size, seed)``.
        Every call names the sample, so a shard restarted from its block finds the same rows."""
        if fit != self._fit:
            if fit is None:
                self._fit_rows = (self.X, self.x_sq)
            else:
                idx = self.xp.asarray(self.sample_local(fit))
                self._fit_rows = (self.xp.take(self.X, idx, axis=0), self.xp.take(self.x_sq, idx))
            self._fit = fit
        return self._fit_rows

    def sample_local(self, fit: tuple[int, int, int]) -> np.ndarray:
        """This shard's rows (local indices) of the uniform sample ``fit = (rows in all shards,
        sample size, seed)`` (:func:`sample_rows`), drawn here: the caller ships three numbers,
        not the sample's row numbers, whatever the size of the data."""
        chosen = sample_rows(*fit)
        lo, hi = np.searchsorted(chosen, [self.offset, self.offset + self.n])
        return chosen[lo:hi] - self.offset

    def take_sample(self, fit: tuple[int, int, int]) -> np.ndarray:
        """This shard's rows of the sample ``fit`` (:meth:`sample_local`)."""
        return self.take(self.sample_local(fit))

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    def moments(self, fit: FitRows = None) -> tuple[int, np.ndarray, np.ndarray]:
        """(n, column sums, column sums of squares), float64 — for the convergence tolerance."""
        xp = self.xp
        X, _ = self.fit_rows(fit)
        n, d = int(X.shape[0]), int(X.shape[1])
        s = xp.zeros((d,), dtype=xp.float64)
        ss = xp.zeros((d,), dtype=xp.float64)
        for start in range(0, n, self.batch_rows):
            xb = X[start : min(start + self.batch_rows, n), :]
            s = s + xp.sum(xb, axis=0, dtype=xp.float64)
            ss = ss + xp.sum(xb * xb, axis=0, dtype=xp.float64)
        return n, to_numpy(s), to_numpy(ss)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows at these local indices (host array)."""
        return to_numpy(self.xp.take(self.X, self.xp.asarray(np.asarray(rows, dtype=np.int64)), axis=0))

    def step(self, C: np.ndarray, fit: FitRows = None) -> tuple[np.ndarray, np.ndarray, float]:
        """Partial sums (k x d float64), counts (k) and inertia of this block under centroids ``C``."""
        xp = self.xp
        Cd = self.device.asarray(C, dtype=xp.float32)
        X, x_sq = self.fit_rows(fit)
        sums, counts, inertia = lloyd_step(X, Cd, xp, self.batch_rows, x_sq, self.host_knn)
        return to_numpy(sums), to_numpy(counts), float(inertia)

    def farthest(self, C: np.ndarray, m: int, fit: FitRows = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``m`` rows farthest from their nearest centroid: (squared distances, rows)."""
        xp = self.xp
        X, x_sq = self.fit_rows(fit)
        _, d = assign(X, self.device.asarray(C, dtype=xp.float32), xp, self.batch_rows, x_sq, self.host_knn)
        d_host = to_numpy(d)
        idx = np.argsort(-d_host, kind="stable")[:m]
        return d_host[idx], to_numpy(xp.take(X, xp.asarray(idx), axis=0))

    def assign(self, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid and Euclidean distance to it, for every row (host arrays)."""
        xp = self.xp
        labels, d = assign(self.X, self.device.asarray(C, dtype=xp.float32), xp, self.batch_rows, self.x_sq, self.host_knn)
        return to_numpy(labels), np.sqrt(to_numpy(d))


    def theme_distances(self, C: np.ndarray, mapping: np.ndarray, themes_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The label stage's distances where the rows are: each row's nearest centroid of ``C``
        (as :meth:`assign`), and its Euclidean distance to its theme's centroid
        ``themes_c[mapping[label]]`` (host arrays, float32 distances computed as
        ``numpy.linalg.norm(x - c)`` is)."""
        xp = self.xp
        labels, _ = self.assign(C)
        T = self.device.asarray(themes_c, dtype=xp.float32)
        theme = self.device.asarray(np.asarray(mapping, dtype=np.int64)[labels])
        out = np.empty(self.n, dtype=np.float32)
        for a in range(0, self.n, self.batch_rows):
            b = min(a + self.batch_rows, self.n)
            diff = self.X[a:b, :] - xp.take(T, theme[a:b], axis=0)
            out[a:b] = to_numpy(xp.sqrt(xp.sum(diff * diff, axis=1)))
        return labels, out


class ShardGroup(Protocol):
    """Shards addressed by index; calls may run in parallel (``submit``) and are gathered in order."""

    sizes: list[int]

    def submit(self, i: int, method: str, *args: Any) -> Any: ...

    def gather(self, handles: Sequence[Any]) -> list[Any]: ...

    def shared(self, args: tuple[Any, ...]) -> tuple[Any, ...]: ...


def call_all(group: ShardGroup, method: str, *args: Any) -> list[Any]:
    """``method(*args)`` on every shard, gathered in order; the arguments are shipped once for all
    of them (``ShardGroup.shared``: Ray actors get one object-store copy of the centroids, not one
    per shard and iteration)."""
    args = group.shared(args)
    return group.gather([group.submit(i, method, *args) for i in range(len(group.sizes))])


class LocalShards:
    """In-process shards (tests, the single-process estimator)."""

    def __init__(self, blocks: Sequence[Any], device: Device = CPU, batch_rows: int = 16_384) -> None:
        offsets = np.cumsum([0] + [int(b.shape[0]) for b in blocks])
        self.shards = [Shard(b, int(o), device, batch_rows) for b, o in zip(blocks, offsets)]
        self.sizes = [s.n for s in self.shards]

    def submit(self, i: int, method: str, *args: Any) -> Any:
        return getattr(self.shards[i], method)(*args)

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        return list(handles)

    def shared(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return args


# ----------------------------------------------------------------------------- Lloyd over shards


@dataclass
class KMeansState:
    """Everything Lloyd's algorithm needs to continue: persisted between iterations for resume."""

    centroids: np.ndarray
    iteration: int = 0
    inertia: float = math.inf
    converged: bool = False
    history: list[float] = field(default_factory=list)


def proportional_counts(total: int, sizes: Sequence[int]) -> list[int]:
    """Split ``total`` over shards proportionally to their sizes (largest remainder, deterministic)."""
    n = sum(sizes)
    if n == 0:
        return [0 for _ in sizes]
    total = min(total, n)
    exact = [total * s / n for s in sizes]
    base = [min(int(e), s) for e, s in zip(exact, sizes)]
    rest = total - sum(base)
    for i in sorted(range(len(sizes)), key=lambda i: (base[i] - exact[i], i)):
        if rest <= 0:
            break
        if base[i] < sizes[i]:
            base[i] += 1
            rest -= 1
    return base


def sample_rows(n: int, m: int, seed: int) -> np.ndarray:
    """``m`` global row indices drawn uniformly without replacement, sorted (all rows if m >= n)."""
    if m >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False)).astype(np.int64)


def _split_rows(group: ShardGroup, rows: np.ndarray) -> list[np.ndarray]:
    """Sorted global row indices as local indices, one array per shard."""
    bounds = np.cumsum([0] + list(group.sizes))
    cuts = np.searchsorted(rows, bounds)
    return [rows[cuts[i] : cuts[i + 1]] - bounds[i] for i in range(len(group.sizes))]


def sample_shards(group: ShardGroup, m: int, seed: int) -> np.ndarray:
    """A uniform sample of ``m`` rows across all shards: the same rows for a seed however the data
    is split into shards, so a run gives the same result on one node or many."""
    parts = group.gather(sample_handles(group, m, seed))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def sample_handles(group: ShardGroup, m: int, seed: int) -> list[Any]:
    """:func:`sample_shards`'s rows left where the shards hand them out: one handle per shard that
    holds some (``group.submit``'s), in row order, for a task to take without the caller holding
    them. Each shard draws its own rows of the sample (``Shard.take_sample``)."""
    fit = (sum(group.sizes), m, seed)
    held = _split_rows(group, sample_rows(*fit))
    return [group.submit(i, "take_sample", fit) for i, local in enumerate(held) if len(local)]


def default_init_sample(n: int, k: int) -> int:
    """Points the seeding draws from when not set: 32 per centroid, at least 10,000, at most n.

    Up to :data:`GREEDY_MAX_K` centroids, greedy k-means++ (a pass over the sample per centroid);
    above it k-means|| (a few GEMM passes, then greedy k-means++ on ~2.5 k weighted candidates). At
    k = 1000 on 100k x 384 points, k-means|| on 32,000 took 3.0 CPU-seconds and ended 20 Lloyd
    iterations at 0.993x the inertia of greedy k-means++ on 10,000, which took 8.0 (one thread)."""
    return min(n, max(10_000, 32 * k))


def init_centroids(group: ShardGroup, k: int, seed: int, sample_size: int | None, device: Device = CPU) -> np.ndarray:
    """k-means++ on a uniform sample drawn across shards (only the sample moves)."""
    if sample_size is None:
        sample_size = default_init_sample(sum(group.sizes), k)
    sample = sample_shards(group, max(sample_size, k), seeds.derive(seed, "kmeans_init_sample"))
    xp = device.xp
    seeder = kmeans_plusplus if k <= GREEDY_MAX_K else kmeans_parallel
    C = seeder(device.asarray(sample, dtype=xp.float32), k, seeds.rng(seed, "kmeans_init"), xp)
    return to_numpy(C).astype(np.float32)


def tolerance(group: ShardGroup, tol: float, fit: FitRows = None) -> float:
    """scikit-learn's tolerance: ``tol`` x the mean per-feature variance of the data."""
    n_total, s, ss = 0, None, None
    for n, s_i, ss_i in call_all(group, "moments", fit):
        n_total += n
        s = s_i if s is None else s + s_i
        ss = ss_i if ss is None else ss + ss_i
    var = ss / n_total - (s / n_total) ** 2
    return float(tol * np.mean(var))


def _repair_empty(group: ShardGroup, C_old: np.ndarray, C_new: np.ndarray, empty: np.ndarray, fit: FitRows) -> None:
    """Move each empty cluster to one of the globally farthest points (in place)."""
    m = int(empty.size)
    parts = call_all(group, "farthest", C_old, m, fit)
    d = np.concatenate([p[0] for p in parts])
    rows = np.concatenate([p[1] for p in parts])
    order = np.argsort(-d, kind="stable")[:m]
    C_new[empty[: len(order)]] = rows[order]
    log.debug("repaired %d empty clusters", m)


def fit_sharded(
    group: ShardGroup,
    k: int,
    *,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-4,
    init_sample_size: int | None = None,
    fit_fraction: float = 1.0,
    state: KMeansState | None = None,
    control: StageControl = NULL_CONTROL,
    on_iteration: Callable[[KMeansState], None] | None = None,
    device: Device = CPU,
) -> KMeansState:
    """Lloyd's algorithm over shards. Returns the final state (centroids, iterations, inertia).

    ``fit_fraction`` < 1 fits on that uniform fraction of the rows (the same rows however the data
    is sharded); assign every row afterwards with :func:`assign_sharded`. ``state`` resumes an
    interrupted fit; ``on_iteration`` is called after every iteration (for checkpoints);
    ``control.check()`` runs between iterations.
    """
    n = sum(group.sizes)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}), got {k}")
    if not 0.0 < fit_fraction <= 1.0:
        raise ValueError(f"fit_fraction must be in (0, 1], got {fit_fraction}")
    fit = (n, max(k, int(round(fit_fraction * n))), seeds.derive(seed, "kmeans_fit_rows")) if fit_fraction < 1.0 else None
    return _lloyd(group, k, seed, max_iter, tol, init_sample_size, state, control, on_iteration, device, fit)


def _lloyd(
    group: ShardGroup,
    k: int,
    seed: int,
    max_iter: int,
    tol: float,
    init_sample_size: int | None,
    state: KMeansState | None,
    control: StageControl,
    on_iteration: Callable[[KMeansState], None] | None,
    device: Device,
    fit: FitRows,
) -> KMeansState:
    tol_abs = tolerance(group, tol, fit)
    if state is None:
        state = KMeansState(centroids=init_centroids(group, k, seed, init_sample_size, device))
    control.report(state.iteration, max_iter)
    while state.iteration < max_iter and not state.converged:
        control.check()
        C = state.centroids
        results = call_all(group, "step", C, fit)
        sums = np.sum([r[0] for r in results], axis=0)
        counts = np.sum([r[1] for r in results], axis=0)
        inertia = float(sum(r[2] for r in results))
        C_new = np.zeros_like(C, dtype=np.float64)
        nonempty = counts > 0
        C_new[nonempty] = sums[nonempty] / counts[nonempty, None]
        empty = np.flatnonzero(~nonempty)
        if empty.size:
            _repair_empty(group, C, C_new, empty, fit)
        shift = float(np.sum((C_new - C) ** 2))
        state.centroids = C_new.astype(np.float32)
        # a fixed point in float32 has converged too, even when the data's variance (and so the
        # tolerance) is zero or below float32's rounding (one document, identical documents)
        fixed = np.array_equal(state.centroids, C)
        state.iteration += 1
        state.inertia = inertia
        state.history.append(inertia)
        state.converged = (shift <= tol_abs or fixed) and empty.size == 0
        control.report(state.iteration, max_iter)
        if on_iteration is not None:
            on_iteration(state)
    if state.converged:
        control.report(state.iteration, state.iteration)  # done: the bar ends full
    else:
        warnings.warn(
            f"k-means did not converge in {max_iter} iterations (k={k}); raise --max-iter or tol for a tighter fit",
            ConvergenceWarning,
            stacklevel=2,
        )
    return state


def assign_sharded(group: ShardGroup, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels and Euclidean distances for every row, in shard order, and the inertia."""
    parts = call_all(group, "assign", centroids)
    labels = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    dists = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.float32)
    return labels, dists, float(np.sum(dists.astype(np.float64) ** 2))


@dataclass
class LocalFit:
    """What :func:`fit_local` found: centroids, every row's label, inertia, iterations, convergence."""

    centroids: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    converged: bool

    def predict(self, X: Any, device: Device = CPU, batch_rows: int = 16_384) -> np.ndarray:
        """The index of the nearest centroid for each row of ``X``."""
        return Shard(X, 0, device, batch_rows).assign(self.centroids)[0]


def fit_local(
    X: Any,
    k: int,
    *,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-4,
    init_sample_size: int | None = None,
    batch_rows: int = 16_384,
    device: Device = CPU,
) -> LocalFit:
    """k-means of one in-process array (rows on ``device``): the engine's fit without the
    scikit-learn estimator around it, so Ray workers that fit small k-means (draws of the choice
    of k, dedup partitions) need not import scikit-learn. Same result as ``KMeans(...).fit(X)``
    with ``random_state=seed``. On the CPU, ``X`` is used as contiguous float32."""
    if device.xp is np:
        X = np.ascontiguousarray(X, dtype=np.float32)
    group = LocalShards([X], device, batch_rows)
    state = fit_sharded(
        group, k, seed=seed, max_iter=max_iter, tol=tol, init_sample_size=init_sample_size, device=device
    )
    labels, _, inertia = assign_sharded(group, state.centroids)
    return LocalFit(state.centroids, labels, inertia, state.iteration, state.converged)


def __getattr__(name: str) -> Any:
    # the scikit-learn estimator lives in engine/estimator.py: importing scikit-learn costs ~1.7 s,
    # which every Ray worker importing these kernels would pay
    if name == "KMeans":
        from .estimator import KMeans

        return KMeans
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
