"""theme_engine.engine.kmeans.KMeans against scikit-learn, and the scikit-learn estimator contract
(``sklearn.utils.estimator_checks``)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from theme_engine.engine import kmeans as km
from theme_engine.engine.kmeans import ConvergenceWarning, KMeans, KMeansState, LocalShards, fit_sharded


@pytest.fixture(scope="module")
def blobs():
    # well separated: a single k-means++ init (ours or scikit-learn's) finds all 8 blobs
    X, y = make_blobs(n_samples=3000, n_features=32, centers=8, cluster_std=1.0, random_state=42)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def fitted(blobs):
    X, _ = blobs
    return KMeans(8, random_state=0).fit(X)


def test_matches_sklearn_on_separable_blobs(blobs, fitted):
    X, y = blobs
    sk = SkKMeans(n_clusters=8, n_init=1, random_state=0).fit(X)
    assert adjusted_rand_score(y, fitted.labels_) >= 0.95
    assert adjusted_rand_score(sk.labels_, fitted.labels_) >= 0.95
    assert abs(fitted.inertia_ - sk.inertia_) / sk.inertia_ <= 0.01


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_inertia_close_to_sklearn_for_several_seeds(blobs, seed):
    X, y = blobs
    ours = KMeans(8, random_state=seed).fit(X)
    sk = SkKMeans(n_clusters=8, n_init=1, random_state=seed).fit(X)
    assert adjusted_rand_score(y, ours.labels_) >= 0.95
    assert abs(ours.inertia_ - sk.inertia_) / sk.inertia_ <= 0.01


def test_fitted_attributes(blobs, fitted):
    X, _ = blobs
    assert fitted.cluster_centers_.shape == (8, 32)
    assert fitted.cluster_centers_.dtype == np.float32
    assert fitted.labels_.shape == (3000,)
    assert set(np.unique(fitted.labels_)) == set(range(8))
    assert isinstance(fitted.inertia_, float) and fitted.inertia_ > 0
    assert isinstance(fitted.n_iter_, int) and 1 <= fitted.n_iter_ <= fitted.max_iter
    assert fitted.converged_ is True
    # inertia_ is the sum of squared distances to the assigned centers
    d = ((X.astype(np.float64) - fitted.cluster_centers_[fitted.labels_]) ** 2).sum()
    assert fitted.inertia_ == pytest.approx(d, rel=1e-4)
    # centers are the means of their points (converged Lloyd fixed point, up to tol)
    for j in range(8):
        np.testing.assert_allclose(fitted.cluster_centers_[j], X[fitted.labels_ == j].mean(0), atol=1e-2)
    np.testing.assert_array_equal(fitted.predict(X), fitted.labels_)


def test_fit_returns_self_and_fit_predict():
    X = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    est = KMeans(3, random_state=1)
    assert est.fit(X) is est
    np.testing.assert_array_equal(KMeans(3, random_state=1).fit_predict(X), est.labels_)
    assert not hasattr(KMeans(3), "labels_")  # nothing fitted in __init__


def test_params_stored_as_given():
    est = KMeans(4, max_iter=7, tol=0.5, random_state=9)
    assert (est.n_clusters, est.max_iter, est.tol, est.random_state) == (4, 7, 0.5, 9)
    with pytest.raises(TypeError):
        KMeans(4, 7)  # keyword-only after n_clusters


@pytest.mark.parametrize(
    "params, X, match",
    [
        ({"n_clusters": 11}, np.zeros((10, 2), np.float32), "n_clusters"),
        ({"n_clusters": 0}, np.zeros((10, 2), np.float32), "n_clusters"),
        ({"n_clusters": 2.5}, np.zeros((10, 2), np.float32), "n_clusters"),
        ({"n_clusters": True}, np.zeros((10, 2), np.float32), "n_clusters"),
        ({"n_clusters": 2}, np.zeros(10, np.float32), "Expected 2D array"),  # scikit-learn's validation
        ({"n_clusters": 2}, np.zeros((10, 2, 2), np.float32), "dim 3, while dim <= 2"),
        ({"n_clusters": 2, "max_iter": 0}, np.zeros((10, 2), np.float32), "max_iter"),
        ({"n_clusters": 2, "tol": -1.0}, np.zeros((10, 2), np.float32), "tol"),
    ],
)
def test_invalid_params_raise_value_error(params, X, match):
    with pytest.raises(ValueError, match=match):
        KMeans(**params).fit(X)


def test_numpy_integer_n_clusters_accepted():
    X = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    est = KMeans(np.int64(3), random_state=0).fit(X)
    assert est.cluster_centers_.shape == (3, 3)


def test_predict_before_fit_raises():
    with pytest.raises(ValueError, match="not fitted"):
        KMeans(2).predict(np.zeros((3, 2), np.float32))


def test_fit_sharded_rejects_bad_k():
    group = LocalShards([np.zeros((5, 2), np.float32)])
    for k in (0, 6):
        with pytest.raises(ValueError, match="k must be"):
            fit_sharded(group, k)


def test_deterministic_for_a_seed(blobs):
    X, _ = blobs
    a = KMeans(8, random_state=5).fit(X[:1000])
    b = KMeans(8, random_state=5).fit(X[:1000])
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.inertia_ == b.inertia_ and a.n_iter_ == b.n_iter_


def test_many_duplicates_k_equals_distinct_points():
    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(15, 4)).astype(np.float32)
    X = np.repeat(distinct, 4, axis=0)
    rng.shuffle(X)
    est = KMeans(15, random_state=0).fit(X)
    assert np.bincount(est.labels_, minlength=15).min() == 4  # every cluster is one distinct point
    assert est.inertia_ == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("k_minus", [0, 1, 3])
def test_k_close_to_n_yields_k_nonempty_clusters(k_minus):
    X = np.random.default_rng(1).normal(size=(30, 5)).astype(np.float32)
    k = 30 - k_minus
    est = KMeans(k, random_state=0).fit(X)
    assert len(np.unique(est.labels_)) == k


def test_empty_cluster_is_repaired(caplog):
    """Two identical initial centroids: the second gets no points and must be moved."""
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.normal(c, 0.1, size=(40, 2)) for c in ([0, 0], [5, 5], [0, 5])]).astype(np.float32)
    C0 = np.array([[0, 0], [0, 0], [5, 5]], dtype=np.float32)
    group = LocalShards([X[:50], X[50:]])
    with caplog.at_level(logging.DEBUG, logger="theme_engine.engine.kmeans"):
        state = fit_sharded(group, 3, state=KMeansState(centroids=C0.copy()), max_iter=50)
    assert any("repaired 1 empty" in r.getMessage() for r in caplog.records)
    labels, _, _ = km.assign_sharded(group, state.centroids)
    assert np.bincount(labels, minlength=3).min() > 0
    assert state.converged
    # the three true groups are recovered
    truth = np.repeat([0, 1, 2], 40)
    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)


def test_not_converged_warns(blobs):
    X, _ = blobs
    with pytest.warns(ConvergenceWarning, match="did not converge in 1 iterations") as record:
        est = KMeans(8, max_iter=1, random_state=0).fit(X[:500])
    assert est.n_iter_ == 1 and est.converged_ is False
    assert len([w for w in record if issubclass(w.category, ConvergenceWarning)]) == 1


def test_converged_fit_warns_nothing(blobs, caplog):
    X, _ = blobs
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        with caplog.at_level(logging.WARNING, logger="theme_engine.engine.kmeans"):
            KMeans(8, random_state=0).fit(X[:500])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@parametrize_with_checks([KMeans()])
@pytest.mark.filterwarnings("ignore::theme_engine.engine.kmeans.ConvergenceWarning")
def test_scikit_learn_estimator_checks(estimator, check):
    """Every check of ``sklearn.utils.estimator_checks`` applies and passes, but one that
    scikit-learn itself skips: ``check_array_api_input`` runs only with ``SCIPY_ARRAY_API=1``
    (the array-namespace path is tested with array-api-strict in test_kmeans_xp.py)."""
    check(estimator)


def test_fit_local_is_the_estimators_fit(blobs):
    """``fit_local`` (what Ray workers call) gives the estimator's centroids, labels and inertia."""
    X, _ = blobs
    est = KMeans(8, random_state=3, max_iter=20).fit(X)
    fit = km.fit_local(X, 8, seed=3, max_iter=20)
    np.testing.assert_array_equal(fit.centroids, est.cluster_centers_)
    np.testing.assert_array_equal(fit.labels, est.labels_)
    assert (fit.inertia, fit.n_iter, fit.converged) == (est.inertia_, est.n_iter_, est.converged_)
    np.testing.assert_array_equal(fit.predict(X[:500]), est.predict(X[:500]))


def test_worker_modules_do_not_import_scikit_learn():
    """The modules Ray workers load for the engine's tasks and shard actors stay free of
    scikit-learn, whose import (~1.7 s) every worker would otherwise pay."""
    import subprocess
    import sys

    code = (
        "import sys; import theme_engine.actors.tasks, theme_engine.actors.shard, theme_engine.actors.embed; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
