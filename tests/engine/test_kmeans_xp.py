"""The k-means kernels give the same results under numpy and array-api-strict."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from theme_engine.engine import kmeans as km
from theme_engine.engine.device import CPU, to_numpy


@pytest.fixture(scope="module")
def data():
    X, _ = make_blobs(n_samples=700, n_features=12, centers=5, cluster_std=1.5, random_state=3)
    return X.astype(np.float32)


@pytest.mark.parametrize("batch_rows", [64, 100, 700, 16_384])  # ragged, dividing, exact, larger than n
def test_assign_same_under_both_namespaces(data, strict_device, batch_rows):
    C = data[[0, 150, 300, 450, 600]]
    lab_np, d_np = km.assign(data, C, np, batch_rows)
    xps = strict_device.xp
    lab_s, d_s = km.assign(strict_device.asarray(data), strict_device.asarray(C), xps, batch_rows)
    lab_s, d_s = to_numpy(lab_s), to_numpy(d_s)

    assert lab_np.dtype == np.int64 and lab_s.dtype == np.int64
    assert lab_np.shape == (700,) and d_np.shape == (700,)
    np.testing.assert_array_equal(lab_np, lab_s)
    np.testing.assert_allclose(d_np, d_s, rtol=1e-5, atol=1e-3)

    # plain reference: the full distance matrix in float64
    ref = ((data.astype(np.float64)[:, None, :] - C.astype(np.float64)[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(lab_np, ref.argmin(1))
    np.testing.assert_allclose(d_np, ref.min(1), rtol=1e-4, atol=1e-2)
    assert (d_np >= 0).all()


def test_assign_empty_input(strict_device):
    C = np.eye(3, dtype=np.float32)
    for xp, X, Cd in [(np, np.zeros((0, 3), np.float32), C),
                      (strict_device.xp, strict_device.asarray(np.zeros((0, 3), np.float32)), strict_device.asarray(C))]:
        lab, d = km.assign(X, Cd, xp)
        assert to_numpy(lab).shape == (0,) and to_numpy(d).shape == (0,)


@pytest.mark.parametrize("k", [1, 4, 9])
def test_segment_sums_fast_path_equals_sort_path(data, strict_device, k):
    rng = np.random.default_rng(k)
    # k=9 with labels drawn from 0..6 leaves clusters 7 and 8 empty
    labels = rng.integers(0, min(k, 7), size=data.shape[0]).astype(np.int64)
    sums_np, counts_np = km.segment_sums(data, labels, k, np)  # scipy sparse fast path
    xps = strict_device.xp
    sums_s, counts_s = km.segment_sums(strict_device.asarray(data), xps.asarray(labels), k, xps)  # sort-based
    sums_s, counts_s = to_numpy(sums_s), to_numpy(counts_s)

    ref_sums = np.zeros((k, data.shape[1]))
    np.add.at(ref_sums, labels, data.astype(np.float64))
    ref_counts = np.bincount(labels, minlength=k)

    assert sums_np.shape == sums_s.shape == (k, data.shape[1])
    assert sums_np.dtype == np.float64 and sums_s.dtype == np.float64
    assert counts_np.dtype == np.int64 and counts_s.dtype == np.int64
    np.testing.assert_array_equal(counts_np, ref_counts)
    np.testing.assert_array_equal(counts_s, ref_counts)
    # the host fast path sums a block in the rows' float32 (blocks are then accumulated in float64)
    np.testing.assert_allclose(sums_np, ref_sums, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(sums_s, ref_sums, rtol=1e-10, atol=1e-8)
    if k == 9:
        assert (counts_np[7:] == 0).all() and (sums_s[7:] == 0).all()


@pytest.mark.parametrize("k", [1, 5, 12])
def test_kmeans_plusplus_same_seed_same_centers(data, strict_device, k):
    c_np = km.kmeans_plusplus(data, k, np.random.default_rng(11), np)
    xps = strict_device.xp
    c_s = to_numpy(km.kmeans_plusplus(strict_device.asarray(data), k, np.random.default_rng(11), xps))
    assert c_np.shape == c_s.shape == (k, data.shape[1])
    np.testing.assert_allclose(c_np, c_s, rtol=1e-6, atol=1e-6)
    # every center is a row of X, and they are distinct
    for row in c_np:
        assert np.any(np.all(data == row, axis=1))
    assert len({tuple(r) for r in c_np.tolist()}) == k


def test_kmeans_plusplus_fewer_distinct_points_than_k(strict_device):
    X = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 distinct points, 12 rows
    for xp, Xd in [(np, X), (strict_device.xp, strict_device.asarray(X))]:
        C = to_numpy(km.kmeans_plusplus(Xd, 5, np.random.default_rng(0), xp))
        assert C.shape == (5, 3)
        assert len({tuple(r) for r in C.tolist()}) == 3  # all distinct points were found first


def test_kmeans_parallel_same_under_both_namespaces_and_as_good_as_greedy(strict_device):
    X, _ = make_blobs(n_samples=6_000, n_features=16, centers=60, cluster_std=1.0, random_state=5)
    X = X.astype(np.float32)
    c_np = km.kmeans_parallel(X, 60, np.random.default_rng(2), np)
    xps = strict_device.xp
    c_s = to_numpy(km.kmeans_parallel(strict_device.asarray(X), 60, np.random.default_rng(2), xps))
    np.testing.assert_allclose(c_np, c_s, rtol=1e-5, atol=1e-5)
    assert len({tuple(r) for r in c_np.tolist()}) == 60  # distinct rows of X
    assert all(np.any(np.all(X == row, axis=1)) for row in c_np[:5])

    def seeded_inertia(C):
        return float(km.assign(X, C, np)[1].sum())

    greedy = km.kmeans_plusplus(X, 60, np.random.default_rng(2), np)
    assert seeded_inertia(c_np) <= 1.1 * seeded_inertia(greedy)
    # far better than 60 rows drawn at random
    random_rows = X[np.random.default_rng(2).choice(len(X), 60, replace=False)]
    assert seeded_inertia(c_np) < 0.8 * seeded_inertia(random_rows)


def test_kmeans_parallel_with_too_few_distinct_rows_still_gives_k_centers():
    X = np.repeat(np.eye(4, dtype=np.float32), 50, axis=0)  # 4 distinct points, 200 rows
    C = km.kmeans_parallel(X, 6, np.random.default_rng(0), np)
    assert C.shape == (6, 4) and len({tuple(r) for r in C.tolist()}) == 4


def test_kmeans_fit_same_under_both_namespaces(data, strict_device):
    a = km.KMeans(5, random_state=4, batch_rows=256, device=CPU).fit(data)
    b = km.KMeans(5, random_state=4, batch_rows=256, device=strict_device).fit(data)
    assert isinstance(b.cluster_centers_, np.ndarray) and isinstance(b.labels_, np.ndarray)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.n_iter_ == b.n_iter_
    assert b.inertia_ == pytest.approx(a.inertia_, rel=1e-5)
    np.testing.assert_array_equal(a.predict(data[:50]), b.predict(data[:50]))


def test_shard_methods_same_under_both_namespaces(data, strict_device):
    C = data[[1, 200, 400]]
    s_np = km.Shard(data, 0, CPU, batch_rows=128)
    s_st = km.Shard(data, 0, strict_device, batch_rows=128)
    for a, b in zip(s_np.step(C), s_st.step(C)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    for a, b in zip(s_np.moments(), s_st.moments()):
        np.testing.assert_allclose(a, b)
    rows = np.array([0, 3, 17, 250])
    np.testing.assert_array_equal(s_np.take(rows), s_st.take(rows))
    for a, b in zip(s_np.farthest(C, 7), s_st.farthest(C, 7)):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    la, da = s_np.assign(C)
    lb, db = s_st.assign(C)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_allclose(da, db, rtol=1e-5)


def test_to_numpy_round_trip(strict_device):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert to_numpy(x) is x
    np.testing.assert_array_equal(to_numpy(strict_device.asarray(x)), x)


def test_large_k_fit_seeds_with_kmeans_parallel_and_matches_sklearn():
    from sklearn.cluster import KMeans as SkKMeans

    assert km.GREEDY_MAX_K < 300
    X, _ = make_blobs(n_samples=9_000, n_features=16, centers=300, cluster_std=0.6, random_state=8)
    X = X.astype(np.float32)
    # one init of either is a draw (bench/kmeans_seeds.py: 0.91-1.10x across seeds): compare the median of five
    ours = np.median([km.KMeans(300, random_state=s, max_iter=30).fit(X).inertia_ for s in range(5)])
    ref = np.median([SkKMeans(300, n_init=1, random_state=s, max_iter=30).fit(X).inertia_ for s in range(5)])
    assert ours <= 1.03 * ref


def test_one_document_or_identical_ones_converge_without_a_warning() -> None:
    """The tolerance is zero when the data has no variance: a float32 fixed point is convergence."""
    import warnings

    from theme_engine.engine.kmeans import fit_local

    x = np.random.default_rng(0).normal(size=(1, 384)).astype(np.float32)
    x /= np.linalg.norm(x)
    for data, k in ((x, 1), (np.repeat(x, 6, axis=0), 1)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a ConvergenceWarning fails the test
            fit = fit_local(data, k, seed=0)
        assert fit.converged and fit.n_iter <= 3
