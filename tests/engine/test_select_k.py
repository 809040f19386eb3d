"""Choice of k: the candidate grid, per-candidate scores, and the decision rule."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from theme_engine.engine.select_k import (
    K_CAP,
    CandidateScore,
    ModularityScore,
    candidate_ks,
    choose_by_modularity,
    choose_k,
    cut_merges,
    decide,
    draws_in_process,
    knn_graph,
    modularity,
    reference_sample,
    score_candidate,
    ward_merges,
    widen_grid,
    widened_range,
)


@pytest.mark.parametrize(
    "n, k_min, k_max, count",
    [(1000, 2, 50, 10), (100_000, 2, None, 10), (50, 2, None, 10), (30, 2, 100, 5), (500, 5, 6, 10), (10**6, 3, 200, 64)],
)
def test_candidate_ks_grid(n, k_min, k_max, count):
    ks = candidate_ks(n, k_min, k_max, count)
    top = k_max if k_max is not None else int(min(K_CAP, max(k_min + 1, round(np.sqrt(n / 2)))))
    top = min(top, n - 1)
    assert ks == sorted(set(ks))  # sorted, distinct
    assert ks[0] == k_min and ks[-1] == top  # both ends included
    assert all(isinstance(k, int) for k in ks)
    assert 1 <= len(ks) <= count
    ratios = np.diff(np.log(ks))
    assert (ratios > 0).all()


def test_candidate_ks_defaults_and_limits():
    assert candidate_ks(100_000, 2, None, 10)[-1] == 224  # sqrt(n/2): a few hundred themes for large corpora
    assert candidate_ks(10**7, 2, None, 10)[-1] == K_CAP
    assert candidate_ks(800, 2, None, 10)[-1] == 20  # sqrt(800/2)
    assert candidate_ks(10, 2, 50, 4)[-1] == 9  # at most n - 1
    assert candidate_ks(1000, 4, 4, 10) == [4]
    with pytest.raises(ValueError, match="too few documents"):
        candidate_ks(3, 5, None, 10)


def test_candidate_score_stats():
    s = CandidateScore(k=3, silhouettes=[0.5, 0.6, 0.7], stability=0.9)
    assert s.mean == pytest.approx(0.6)
    assert s.se == pytest.approx(0.1 / np.sqrt(3))
    assert CandidateScore(k=3, silhouettes=[0.4], stability=1.0).se == 0.0
    d = s.as_dict()
    assert d["k"] == 3 and d["silhouette"] == pytest.approx(0.6) and d["stability_ari"] == pytest.approx(0.9)


def test_choose_k_rule():
    scores = [
        CandidateScore(4, [0.53, 0.53, 0.53], 0.95),
        CandidateScore(6, [0.60, 0.50, 0.55], 0.60),  # best mean over the draws: chosen
        CandidateScore(3, [0.40, 0.40, 0.40], 1.00),
    ]
    assert choose_k(scores) == 6
    scores[0] = CandidateScore(4, [0.56, 0.56, 0.56], 0.95)
    assert choose_k(scores) == 4
    # equal means: the smaller k
    assert choose_k([CandidateScore(5, [0.5], 0.9), CandidateScore(3, [0.5], 0.9)]) == 3


def test_score_and_choose_picks_true_k_on_separated_blobs():
    X, _ = make_blobs(n_samples=600, n_features=8, centers=6, cluster_std=0.6, center_box=(-25, 25), random_state=1)
    X = X.astype(np.float32)
    ks = candidate_ks(len(X), 2, 12, 9)
    assert 6 in ks
    scores = [score_candidate(X, k, repeats=3, seed=0) for k in ks]
    assert [s.k for s in scores] == ks
    for s in scores:
        assert len(s.silhouettes) == 3 and all(-1 <= v <= 1 for v in s.silhouettes)
        assert -1 <= s.stability <= 1
    six = scores[ks.index(6)]
    assert six.mean > 0.7 and six.stability > 0.99
    assert choose_k(scores) == 6


def test_score_candidate_deterministic():
    X = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    a = score_candidate(X, 3, repeats=2, seed=5)
    b = score_candidate(X, 3, repeats=2, seed=5)
    assert a.silhouettes == b.silhouettes and a.stability == b.stability
    single = score_candidate(X, 3, repeats=1, seed=5)
    assert single.stability == 1.0


# ----------------------------------------------------------------------------- modularity


def _sphere_clusters(n_per: int, k: int, d: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` well-separated clusters of unit vectors: random directions plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    y = np.repeat(np.arange(k), n_per)
    X = centers[y] + spread * rng.normal(size=(len(y), d)) / np.sqrt(d)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32), y


def _modularity_reference(G, labels):
    """Newman's definition written out pair by pair: (1/2m) sum_ij [A_ij - k_i k_j / 2m] delta(c_i, c_j)."""
    A = G.toarray()
    deg = A.sum(axis=1)
    two_m = A.sum()
    same = labels[:, None] == labels[None, :]
    return float(((A - np.outer(deg, deg) / two_m) * same).sum() / two_m)


def test_knn_graph_is_symmetric_and_exact():
    X, _ = _sphere_clusters(30, 3, 16, 0.5, 0)
    G = knn_graph(X, 5)
    A = G.toarray()
    assert (A == A.T).all() and set(np.unique(A)) <= {0.0, 1.0} and np.diag(A).sum() == 0
    sims = X @ X.T
    np.fill_diagonal(sims, -np.inf)
    for i in range(len(X)):
        nearest = np.argsort(-sims[i])[:5]
        assert A[i, nearest].all()  # its own 5 nearest are neighbours
    assert (A.sum(axis=1) >= 5).all()


def test_modularity_matches_the_definition():
    X, y = _sphere_clusters(25, 4, 8, 0.8, 1)
    G = knn_graph(X, 6)
    rng = np.random.default_rng(0)
    for labels in (y, rng.integers(0, 4, len(y)), np.zeros(len(y), dtype=np.int64)):
        assert modularity(G, labels) == pytest.approx(_modularity_reference(G, labels), abs=1e-12)
    assert modularity(G, np.zeros(len(y), dtype=np.int64)) == pytest.approx(0.0, abs=1e-12)
    assert modularity(G, y) > 0.6  # separated clusters: most edges inside


def test_ward_merges_match_scipy_ward_on_unweighted_points():
    from scipy.cluster.hierarchy import fcluster, linkage
    from sklearn.metrics import adjusted_rand_score

    X = np.random.default_rng(3).normal(size=(40, 5))
    merges = ward_merges(X, np.ones(len(X)))
    Z = linkage(X, method="ward")
    for k in (2, 3, 5, 8, 13):
        ours = cut_merges(merges, len(X), k)
        theirs = fcluster(Z, k, criterion="maxclust")
        assert len(np.unique(ours)) == k
        assert adjusted_rand_score(ours, theirs) == pytest.approx(1.0)


def test_ward_weights_pull_merges():
    # two heavy centroids far apart and a light one between, nearer the left: the light one joins left
    C = np.array([[0.0], [4.0], [10.0]])
    merges = ward_merges(C, np.array([100.0, 1.0, 100.0]))
    assert merges[0].tolist() == [0, 1]
    assert cut_merges(merges, 3, 2).tolist() == [0, 0, 1]
    assert cut_merges(merges, 3, 3).tolist() == [0, 1, 2] and cut_merges(merges, 3, 1).tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        cut_merges(merges, 3, 4)


@pytest.mark.parametrize("true_k", [4, 9])
def test_modularity_criterion_finds_separated_clusters_on_the_sphere(true_k):
    X, _ = _sphere_clusters(120, true_k, 32, 0.6, true_k)
    ks = candidate_ks(len(X), 2, 20, 10)
    choice, record = choose_by_modularity(X, ks, repeats=3, neighbors=10, min_gain=0.05, seed=0, run_draws=draws_in_process(0))
    assert choice.structure and choice.k == true_k, record["candidates"]
    assert record["gain"] > 0.15 and not record["edge"]
    assert record["reason"].startswith("highest mean modularity")
    assert len(record["candidates"]) >= len(ks) and all(len(c["modularities"]) == 3 for c in record["candidates"])


def test_modularity_criterion_says_so_on_uniform_data():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(1200, 64))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    ks = candidate_ks(len(X), 2, 24, 8)
    choice, record = choose_by_modularity(X, ks, repeats=2, neighbors=15, min_gain=0.05, seed=1, run_draws=draws_in_process(1))
    assert not choice.structure and choice.k == 2 == record["k"]
    assert "no theme structure" in record["reason"] and record["gain"] < 0.05
    assert abs(record["gain"]) < 0.05  # the reference scores what the data scores: nothing to find


def test_reference_sample_keeps_spread_and_loses_structure():
    X, y = _sphere_clusters(100, 5, 24, 0.4, 2)
    R = reference_sample(X, 0)
    assert R.shape == X.shape and np.allclose(np.linalg.norm(R, axis=1), 1.0, atol=1e-5)
    G, GR = knn_graph(X, 10), knn_graph(R, 10)
    from theme_engine.engine.kmeans import KMeans

    q_data = modularity(G, KMeans(5, random_state=0).fit(X).labels_)
    q_ref = modularity(GR, KMeans(5, random_state=0).fit(R).labels_)
    assert q_data > 0.6 and q_ref < q_data - 0.1


def test_decide_rule_and_no_structure():
    s = [ModularityScore(3, [0.50, 0.52], 0.9), ModularityScore(5, [0.60, 0.60], 0.8), ModularityScore(8, [0.60, 0.60], 0.7)]
    c = decide(s, reference=0.3, min_gain=0.05)
    assert c.k == 5 and c.structure  # ties go to the smaller k
    c = decide(s, reference=0.58, min_gain=0.05)
    assert c.k == 3 and not c.structure and "no theme structure" in c.reason


def test_widening():
    ks = [4, 6, 9, 14, 20]
    assert widened_range(9, ks, 2, 100) is None
    assert widened_range(4, ks, 2, 100) == (2, 20)
    assert widened_range(20, ks, 2, 100) == (4, 40)
    assert widened_range(20, ks, 2, 20) is None  # nowhere to go
    assert widened_range(2, [2, 3, 5], 2, 100) is None
    wider = widen_grid(ks, 4, 40)
    assert set(ks) <= set(wider) and wider[-1] == 40 and wider == sorted(set(wider))


def test_choice_widens_once_when_best_is_on_the_edge():
    X, _ = _sphere_clusters(60, 12, 32, 0.5, 4)
    ks = [2, 3, 4, 6]  # 12 clusters: the top of this range wins, so it widens up
    choice, record = choose_by_modularity(X, ks, repeats=2, neighbors=10, min_gain=0.05, seed=0, run_draws=draws_in_process(0))
    assert record["widened"] == {"from": [2, 6], "to": [2, 12], "because": "k=6 was on the edge"}
    assert record["range"] == [2, 12] and choice.k == 12


def test_candidate_fits_do_not_warn(recwarn):
    X, _ = _sphere_clusters(50, 4, 16, 0.6, 6)
    choose_by_modularity(X, [2, 4, 8], repeats=2, neighbors=8, min_gain=0.05, seed=0, run_draws=draws_in_process(0))
    score_candidate(X, 4, repeats=1, seed=0)
    assert not [w for w in recwarn if "converge" in str(w.message)]
