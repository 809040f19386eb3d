"""Choice of k: the candidate grid, per-candidate scores, and the decision rule."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from engine.select_k import CandidateScore, candidate_ks, choose_k, score_candidate


@pytest.mark.parametrize(
    "n, k_min, k_max, count",
    [(1000, 2, 50, 10), (100_000, 2, None, 10), (50, 2, None, 10), (30, 2, 100, 5), (500, 5, 6, 10), (10**6, 3, 200, 64)],
)
def test_candidate_ks_grid(n, k_min, k_max, count):
    ks = candidate_ks(n, k_min, k_max, count)
    top = k_max if k_max is not None else int(min(100, max(k_min + 1, round(np.sqrt(n / 2)))))
    top = min(top, n - 1)
    assert ks == sorted(set(ks))  # sorted, distinct
    assert ks[0] == k_min and ks[-1] == top  # both ends included
    assert all(isinstance(k, int) for k in ks)
    assert 1 <= len(ks) <= count
    ratios = np.diff(np.log(ks))
    assert (ratios > 0).all()


def test_candidate_ks_defaults_and_limits():
    assert candidate_ks(100_000, 2, None, 10)[-1] == 100  # sqrt(n/2) capped at 100
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
