"""Lloyd over several shards equals Lloyd over one block; shard bookkeeping."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from theme_engine.engine.events import Interrupted, StageControl
from theme_engine.engine.kmeans import (
    KMeans,
    LocalShards,
    assign_sharded,
    fit_sharded,
    proportional_counts,
    sample_shards,
    tolerance,
)


@pytest.fixture(scope="module")
def X():
    X, _ = make_blobs(n_samples=900, n_features=16, centers=6, cluster_std=2.5, random_state=7)
    return X.astype(np.float32)


@pytest.mark.parametrize("cuts", [(200, 550), (1, 899), (300, 300)])  # incl. a one-row and an empty shard
def test_sharded_fit_equals_single_block(X, cuts):
    a, b = cuts
    blocks = [X[:a], X[a:b], X[b:]]
    many = LocalShards(blocks, batch_rows=128)
    one = LocalShards([X], batch_rows=128)
    assert many.sizes == [a, b - a, 900 - b]
    assert [s.offset for s in many.shards] == [0, a, b]

    s_many = fit_sharded(many, 6, seed=3, init_sample_size=len(X))
    s_one = fit_sharded(one, 6, seed=3, init_sample_size=len(X))
    np.testing.assert_allclose(s_many.centroids, s_one.centroids, rtol=1e-5, atol=1e-5)
    assert s_many.iteration == s_one.iteration
    assert s_many.inertia == pytest.approx(s_one.inertia, rel=1e-6)
    assert s_many.converged and s_one.converged

    l_many, d_many, in_many = assign_sharded(many, s_many.centroids)
    l_one, d_one, in_one = assign_sharded(one, s_one.centroids)
    np.testing.assert_array_equal(l_many, l_one)
    np.testing.assert_allclose(d_many, d_one, rtol=1e-5, atol=1e-5)
    assert in_many == pytest.approx(in_one, rel=1e-6)


def test_estimator_is_a_single_shard_fit(X):
    est = KMeans(6, random_state=3).fit(X)
    state = fit_sharded(LocalShards([X]), 6, seed=3, init_sample_size=len(X))
    np.testing.assert_array_equal(est.cluster_centers_, state.centroids)
    assert est.n_iter_ == state.iteration


def test_sample_covering_all_points_is_the_data_in_order(X):
    group = LocalShards([X[:100], X[100:400], X[400:]])
    np.testing.assert_array_equal(sample_shards(group, 10_000, seed=1), X)
    part = sample_shards(group, 90, seed=1)
    assert part.shape == (90, 16)
    np.testing.assert_array_equal(part, sample_shards(group, 90, seed=1))  # deterministic


def test_tolerance_matches_numpy_variance(X):
    group = LocalShards([X[:123], X[123:]])
    assert tolerance(group, 1e-4) == pytest.approx(1e-4 * np.var(X.astype(np.float64), axis=0).mean(), rel=1e-9)


@pytest.fixture(scope="module")
def X_slow():
    """Unclustered data: Lloyd needs many iterations."""
    return np.random.default_rng(0).normal(size=(900, 8)).astype(np.float32)


def test_resume_from_saved_state_equals_uninterrupted(X_slow):
    X = X_slow
    group = LocalShards([X[:450], X[450:]])
    full = fit_sharded(group, 6, seed=5, init_sample_size=len(X), max_iter=100)
    assert full.iteration >= 3  # so that stopping after 2 interrupts it
    seen = []
    partial = fit_sharded(group, 6, seed=5, init_sample_size=len(X), max_iter=2, on_iteration=lambda s: seen.append(s.iteration))
    assert seen == [1, 2] and not partial.converged
    resumed = fit_sharded(group, 6, seed=5, init_sample_size=len(X), max_iter=100, state=partial)
    np.testing.assert_array_equal(resumed.centroids, full.centroids)
    assert resumed.iteration == full.iteration
    assert resumed.history == full.history


def test_stop_request_interrupts_between_iterations(X_slow):
    X = X_slow
    stop = threading.Event()
    reports = []

    def sink(stage, done, total):
        reports.append((stage, done, total))
        if done == 2:
            stop.set()

    with pytest.raises(Interrupted):
        fit_sharded(LocalShards([X]), 6, seed=0, control=StageControl("kmeans", sink, stop))
    assert reports[:3] == [("kmeans", 0, 100), ("kmeans", 1, 100), ("kmeans", 2, 100)]
    assert len(reports) == 3


@pytest.mark.parametrize(
    "total, sizes",
    [
        (10, [5, 5]),
        (7, [3, 3, 3]),
        (100, [1, 2, 3]),  # more than there are: everything
        (5, [0, 10, 0, 7]),
        (1, [4, 4, 4]),
        (0, [4, 4]),
        (13, [1, 1000, 2, 37]),
        (5, []),
        (5, [0, 0]),
    ],
)
def test_proportional_counts(total, sizes):
    counts = proportional_counts(total, sizes)
    assert len(counts) == len(sizes)
    assert sum(counts) == min(total, sum(sizes))
    assert all(0 <= c <= s for c, s in zip(counts, sizes))
    n = sum(sizes)
    for c, s in zip(counts, sizes):
        if n:
            assert abs(c - min(total, n) * s / n) < 1 + 1e-9  # within one of the exact share
    assert counts == proportional_counts(total, sizes)  # deterministic


def test_proportional_counts_exact_values():
    assert proportional_counts(7, [3, 3, 3]) == [3, 2, 2]  # remainder to the lowest index on ties
    assert proportional_counts(10, [6, 3, 1]) == [6, 3, 1]
    assert proportional_counts(3, [5, 4, 1]) == [2, 1, 0]  # exact 1.5, 1.2, 0.3: the largest remainder gets it


def test_sample_and_fit_do_not_depend_on_the_shard_layout(X):
    """The same rows are sampled (and so the same fit results) for 1, 2 or 5 shards."""
    one = LocalShards([X])
    two = LocalShards([X[:300], X[300:]])
    five = LocalShards(np.array_split(X, 5))
    np.testing.assert_array_equal(sample_shards(one, 100, seed=4), sample_shards(five, 100, seed=4))
    a = fit_sharded(one, 6, seed=4, init_sample_size=200)
    b = fit_sharded(two, 6, seed=4, init_sample_size=200)
    c = fit_sharded(five, 6, seed=4, init_sample_size=200)
    np.testing.assert_allclose(a.centroids, b.centroids, atol=1e-5)
    np.testing.assert_allclose(a.centroids, c.centroids, atol=1e-5)
    assert a.iteration == b.iteration == c.iteration


def test_fit_fraction_fits_on_a_subset_then_assigns_all(X):
    from sklearn.metrics import adjusted_rand_score

    from theme_engine.engine.kmeans import assign_sharded

    group = LocalShards(np.array_split(X, 3))
    full = fit_sharded(group, 6, seed=2)
    part = fit_sharded(group, 6, seed=2, fit_fraction=0.3)
    other_layout = fit_sharded(LocalShards([X[:100], X[100:]]), 6, seed=2, fit_fraction=0.3)
    np.testing.assert_allclose(part.centroids, other_layout.centroids, rtol=1e-5, atol=1e-5)
    assert part.inertia < 0.4 * full.inertia  # the inertia of the fitted 30% only
    labels_full, _, _ = assign_sharded(group, full.centroids)
    labels_part, _, _ = assign_sharded(group, part.centroids)
    assert len(labels_part) == len(X)
    assert adjusted_rand_score(labels_full, labels_part) > 0.9
    with pytest.raises(ValueError, match="fit_fraction"):
        fit_sharded(group, 6, fit_fraction=0.0)


def test_a_shard_restarted_mid_fit_finds_the_same_fraction(X):
    """A restarted shard actor is rebuilt from its block and holds no state: every call names the
    fitted sample, so the rebuilt shard fits on the same rows and the result is unchanged."""
    from theme_engine.engine.kmeans import Shard

    def fit(restart_at: int | None):
        group = LocalShards(np.array_split(X, 3))

        def on_iteration(state):
            if state.iteration == restart_at:
                old = group.shards[1]
                group.shards[1] = Shard(X[old.offset : old.offset + old.n], old.offset)

        return fit_sharded(group, 6, seed=4, tol=0.0, max_iter=8, fit_fraction=0.25, on_iteration=on_iteration)

    undisturbed, restarted = fit(None), fit(3)
    np.testing.assert_array_equal(undisturbed.centroids, restarted.centroids)
    assert undisturbed.history == restarted.history


@pytest.mark.parametrize("namespace", ["numpy", "array-api-strict"])
def test_theme_distances_where_the_rows_are(X, namespace, request):
    """``Shard.theme_distances`` (the label stage's, run by each shard actor) gives the k-means
    clusters ``assign`` gives and, per row, exactly the distance the driver computed from the
    vectors, ``numpy.linalg.norm(x - c)`` to the row's merged theme's centroid."""
    from theme_engine.engine.device import CPU
    from theme_engine.engine.labels import merged_centroids

    device = CPU if namespace == "numpy" else request.getfixturevalue("strict_device")
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    shards = LocalShards([X[:250], X[250:700], X[700:]], device=device, batch_rows=64)
    state = fit_sharded(shards, 6, seed=3, init_sample_size=len(X))
    labels, _, _ = assign_sharded(shards, state.centroids)
    mapping = np.array([0, 1, 1, 2, 3, 3])  # two pairs of clusters merged into one theme each
    themes_c = merged_centroids(state.centroids, np.bincount(labels, minlength=6), mapping)
    parts = [s.theme_distances(state.centroids, mapping, themes_c) for s in shards.shards]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), labels)
    want = np.linalg.norm(X - themes_c[mapping[labels]], axis=1)
    got = np.concatenate([p[1] for p in parts])
    if namespace == "numpy":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
