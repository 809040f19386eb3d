"""Choice of k on a sample.

Each candidate k is fitted ``repeats`` times, each on its own draw (80% of the sample) with its
own seed, and scored by the silhouette on that draw (scikit-learn). On sentence embeddings the
silhouette is nearly flat over k and its arg-max moves with the draw, so the choice is:

the candidate with the highest silhouette averaged over the draws (ties: the smaller k). Averaging
over draws and seeds is what makes the choice stable: a k that wins on one lucky draw does not win
on average. (The one-standard-error rule — smallest k within one standard error of the best — was
tried and dropped: with a few draws one unlucky k-means run inflates the best candidate's error
and the rule then falls to a smaller k; on BBC news it chose 4 of 5 true topics.) The agreement of
each candidate's clusterings across draws (mean adjusted Rand index on the whole sample) and the
standard error are recorded beside the scores.

:func:`score_candidate` is one candidate's work (a Ray task in the cluster layer). On a cuda device
it runs k-means with the ``xp`` kernels on the GPU and the silhouette with cuML when it imports,
else with :func:`silhouette_xp` (two GEMMs per block of rows, on any array namespace); GPU errors
surface as ``GpuUnavailable`` for the caller's ``run_with_fallback``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from .device import CPU, Device, cuml_silhouette, gpu_errors
from .kmeans import KMeans

CRITERION = "silhouette, mean over draws (80% subsamples, own seeds); highest wins, ties to the smaller k"


def candidate_ks(n: int, k_min: int, k_max: int | None, count: int) -> list[int]:
    """A geometric grid of distinct k values in [k_min, k_max]."""
    if k_max is None:
        k_max = int(min(100, max(k_min + 1, round(math.sqrt(n / 2)))))
    k_max = min(k_max, n - 1)
    if k_max < k_min:
        raise ValueError(f"too few documents ({n}) to choose k between {k_min} and {k_max}; pass --k")
    grid = np.geomspace(k_min, k_max, num=count)
    return sorted({int(round(g)) for g in grid})


@dataclass
class CandidateScore:
    k: int
    silhouettes: list[float]
    stability: float
    device: str = "cpu"  # the device that computed it
    fallback: str | None = None  # why it ran on CPU although a GPU was asked for, when it did

    @property
    def mean(self) -> float:
        return float(np.mean(self.silhouettes))

    @property
    def se(self) -> float:
        if len(self.silhouettes) < 2:
            return 0.0
        return float(np.std(self.silhouettes, ddof=1) / math.sqrt(len(self.silhouettes)))

    def as_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "silhouette": round(self.mean, 6),
            "silhouette_se": round(self.se, 6),
            "silhouettes": [round(s, 6) for s in self.silhouettes],
            "stability_ari": round(self.stability, 6),
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
    for r in range(repeats):
        rng = np.random.default_rng([seed, k, r])
        idx = np.sort(rng.choice(n, size=min(draw_size, n), replace=False))
        X = sample[idx]
        fits = [
            KMeans(k, max_iter=50, tol=1e-4, random_state=int(rng.integers(2**31)), batch_rows=batch_rows, device=device).fit(X)
            for _ in range(n_init)
        ]
        model = min(fits, key=lambda m: m.inertia_)
        labels = model.labels_
        if len(np.unique(labels)) < 2:
            sils.append(-1.0)
        else:
            sample_size = min(len(X), 5000)
            sils.append(silhouette(X, labels, device=device, sample_size=sample_size, random_state=r, batch_rows=min(batch_rows, 2048)))
        full_labels.append(model.predict(sample))
    pairs = list(combinations(range(repeats), 2))
    stability = float(np.mean([adjusted_rand_score(full_labels[a], full_labels[b]) for a, b in pairs])) if pairs else 1.0
    return CandidateScore(k=k, silhouettes=sils, stability=stability, device=device.name)


def choose_k(scores: list[CandidateScore]) -> int:
    return max(scores, key=lambda s: (round(s.mean, 12), -s.k)).k
