"""The 2-D map layout (engine.layout): t-SNE on a sample, the extension to the other rows, and the
10-NN preservation score it is measured with."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("openTSNE")

from theme_engine.engine import layout, seeds
from theme_engine.engine.layout import Layout, fit_layout, knn_preservation


def unit(X: np.ndarray) -> np.ndarray:
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def blobs(n: int = 3000, d: int = 50, k: int = 5, noise: float = 0.08, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` well-separated clusters on the unit sphere: random directions plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    centers = unit(rng.normal(size=(k, d)))
    labels = rng.integers(0, k, n)
    return unit(centers[labels] + rng.normal(0, noise, (n, d))), labels


def label_agreement(coords: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each point's ``k`` nearest map neighbours that share its label."""
    from scipy.spatial import cKDTree

    _, idx = cKDTree(coords).query(coords, k=k + 1)
    return float((labels[idx[:, 1:]] == labels[:, None]).mean())


@pytest.fixture(scope="module")
def blob_data():
    return blobs()


@pytest.fixture(scope="module")
def blob_layout(blob_data):
    X, _ = blob_data
    return fit_layout(X, sample_size=1000, seed=0, threads=1)


# ----------------------------------------------------------------------------- the layout


def test_blobs_beat_pca_and_stay_together(blob_data, blob_layout):
    X, labels = blob_data
    lay = blob_layout
    assert isinstance(lay, Layout)
    assert lay.coords.shape == (len(X), 2) and lay.coords.dtype == np.float32
    assert np.all(np.isfinite(lay.coords))
    q = lay.info["quality"]
    assert q["evaluated"] == 2000
    assert q["knn10_preserved"] > q["pca_knn10_preserved"]
    # the same rows as the layout's own measure (its run seed 0, the layout_eval stream)
    assert q["knn10_preserved"] == pytest.approx(knn_preservation(X, lay.coords, k=10, n_eval=2000, seed=seeds.derive(0, "layout_eval")), abs=1e-4)
    assert label_agreement(lay.coords, labels) >= 0.95


def test_info_is_json_and_says_what_ran(blob_layout):
    info = json.loads(json.dumps(blob_layout.info))
    assert info["library"] == "openTSNE" and info["library_version"]
    assert info["sample_size"] == 1000 and info["rows"] == 3000
    for key in ("method", "fit_seconds", "extend_seconds"):
        assert key in info
    assert set(info["quality"]) == {"knn10_preserved", "pca_knn10_preserved", "evaluated"}


def test_extended_duplicate_lands_on_its_sample_row(blob_data):
    X, _ = blob_data
    n, S = 2000, 500
    sampled = layout.layout_sample(n, S, 0)  # the rows fit_layout will fit (same n, size, seed)
    rest = np.setdiff1d(np.arange(n), sampled)
    src, dst = sampled[:50], rest[:50]  # each dst row becomes a copy of a sample row
    Xd = X[:n].copy()
    Xd[dst] = Xd[src]
    lay = fit_layout(Xd, sample_size=S, seed=0)
    extent = float(np.ptp(lay.coords, axis=0).max())
    gap = np.linalg.norm(lay.coords[dst] - lay.coords[src], axis=1)
    assert gap.max() < 1e-3 * extent

    # a lightly perturbed copy lands nearer its source than the typical map neighbour distance
    from scipy.spatial import cKDTree

    Xp = X[:n].copy()
    Xp[dst] = unit(Xp[src] + np.random.default_rng(1).normal(0, 0.01, Xp[src].shape))
    lay = fit_layout(Xp, sample_size=S, seed=0)
    nn = cKDTree(lay.coords).query(lay.coords, k=2)[0][:, 1]
    assert np.median(np.linalg.norm(lay.coords[dst] - lay.coords[src], axis=1)) < np.median(nn)


def test_deterministic_for_a_seed(blob_data):
    X = blob_data[0][:1500]
    a = fit_layout(X, sample_size=600, seed=3)
    b = fit_layout(X, sample_size=600, seed=3)
    c = fit_layout(X, sample_size=600, seed=4)
    np.testing.assert_array_equal(a.coords, b.coords)
    assert a.info["quality"] == b.info["quality"]
    assert not np.allclose(a.coords, c.coords)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_tiny_inputs(n):
    X = unit(np.random.default_rng(n).normal(size=(n, 8)))
    a = fit_layout(X, seed=0)
    b = fit_layout(X, seed=0)
    assert a.coords.shape == (n, 2) and a.coords.dtype == np.float32
    assert np.all(np.isfinite(a.coords))
    np.testing.assert_array_equal(a.coords, b.coords)
    if n >= 2:
        assert len({tuple(r) for r in a.coords.tolist()}) == n  # distinct rows, distinct points
    json.dumps(a.info)
    assert 0.0 <= a.info["quality"]["knn10_preserved"] <= 1.0


def test_fewer_rows_than_perplexity_needs():
    X = unit(np.random.default_rng(0).normal(size=(40, 8)))  # t-SNE with perplexity lowered to 13
    lay = fit_layout(X, seed=0)
    assert lay.info["library"] == "openTSNE" and lay.info["perplexity"] == pytest.approx(13.0)
    assert lay.coords.shape == (40, 2) and np.all(np.isfinite(lay.coords))


def test_all_rows_identical():
    X = np.tile(unit(np.ones((1, 8))), (30, 1))
    lay = fit_layout(X, seed=0)
    assert lay.coords.shape == (30, 2) and np.all(np.isfinite(lay.coords))


def test_memmap_input_in_blocks(blob_data, tmp_path, monkeypatch):
    X = blob_data[0][:1200]
    ref = fit_layout(X, sample_size=400, seed=0)
    path = tmp_path / "v.npy"
    np.save(path, X)
    mm = np.load(path, mmap_mode="r")
    assert isinstance(mm, np.memmap) and not mm.flags.writeable
    monkeypatch.setattr(layout, "BLOCK_ROWS", 300)  # several blocks, a short last one
    lay = fit_layout(mm, sample_size=400, seed=0)
    np.testing.assert_allclose(lay.coords, ref.coords, atol=1e-4)
    assert lay.info["quality"]["evaluated"] == 1200


def test_progress_and_check():
    X = unit(np.random.default_rng(0).normal(size=(600, 16)))
    seen: list[tuple[int, int]] = []
    fit_layout(X, sample_size=200, progress=lambda done, total: seen.append((done, total)))
    assert seen and len({t for _, t in seen}) == 1
    dones = [d for d, _ in seen]
    assert dones == sorted(dones) and dones[-1] == seen[-1][1]

    class Stop(Exception):
        pass

    calls = 0

    def check() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise Stop

    with pytest.raises(Stop):
        fit_layout(X, sample_size=200, check=check)
    assert calls == 3


# ----------------------------------------------------------------------------- knn_preservation


def brute_force_preservation(high: np.ndarray, low: np.ndarray, k: int) -> float:
    """Plainly: for every row, its k most similar other rows by inner product, its k nearest other
    rows by Euclidean distance, and the fraction they share; the mean over rows."""
    n = len(high)
    total = 0.0
    for i in range(n):
        sims = [(float(np.dot(high[i], high[j])), j) for j in range(n) if j != i]
        near_high = {j for _, j in sorted(sims, reverse=True)[:k]}
        dists = [(float(np.sum((low[i] - low[j]) ** 2)), j) for j in range(n) if j != i]
        near_low = {j for _, j in sorted(dists)[:k]}
        total += len(near_high & near_low) / k
    return total / n


def test_knn_preservation_matches_brute_force():
    rng = np.random.default_rng(0)
    high = unit(rng.normal(size=(150, 12)))
    low = rng.normal(size=(150, 2))
    for k in (1, 5, 10):
        assert knn_preservation(high, low, k=k, n_eval=1000) == pytest.approx(brute_force_preservation(high, low, k), abs=1e-12)
    # the map of a PCA projection of the same data scores between
    proj = high[:, :2].astype(np.float64)
    assert knn_preservation(high, proj, k=10, n_eval=150) == pytest.approx(brute_force_preservation(high, proj, 10), abs=1e-12)


def test_knn_preservation_identity_is_one():
    angles = np.random.default_rng(0).uniform(0, 2 * np.pi, 500)
    circle = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)  # unit 2-D rows
    assert knn_preservation(circle, circle, k=10, n_eval=200) == 1.0


def test_knn_preservation_searches_all_rows():
    """Twins: each row's nearest neighbour is its twin, which a seeded subset of 20 of the 400 rows
    rarely holds: a score computed within the subset could not be exactly 1.0 / 0.0."""
    rng = np.random.default_rng(0)
    centers = unit(rng.normal(size=(200, 16)))
    high = unit(np.repeat(centers, 2, axis=0) + rng.normal(0, 0.01, (400, 16)))
    spots = rng.uniform(-100, 100, (200, 2))
    together = np.repeat(spots, 2, axis=0) + rng.normal(0, 0.001, (400, 2))
    swapped = together.copy()  # every row sits on another pair's twin
    swapped[0::2] = np.roll(together[0::2], 1, axis=0)
    assert knn_preservation(high, together, k=1, n_eval=20, seed=5) == 1.0
    assert knn_preservation(high, swapped, k=1, n_eval=20, seed=5) == 0.0


def test_knn_preservation_small_and_checks():
    one = unit(np.ones((1, 4)))
    assert knn_preservation(one, np.zeros((1, 2))) == 1.0
    two = unit(np.eye(2, 4) + 0.1)
    assert knn_preservation(two, np.array([[0.0, 0.0], [1.0, 0.0]])) == 1.0
    with pytest.raises(ValueError):
        knn_preservation(two, np.zeros((3, 2)))


def test_numpy_search_without_faiss(blob_data, monkeypatch):
    """Without faiss the same exact search runs on numpy: the same neighbours, a map as good (not the
    same map: t-SNE amplifies last-bit differences in the similarities)."""
    rng = np.random.default_rng(2)
    high = unit(rng.normal(size=(150, 12)))
    low = rng.normal(size=(150, 2))
    X, labels = blob_data[0][:800], blob_data[1][:800]
    s_faiss, i_faiss = layout._InnerProduct(X[:300]).search(X, 12)
    ref = fit_layout(X, sample_size=300, seed=0)
    monkeypatch.setattr(layout, "_faiss", lambda: None)
    s_np, i_np = layout._InnerProduct(X[:300]).search(X, 12)
    np.testing.assert_array_equal(i_np, i_faiss)
    np.testing.assert_allclose(s_np, s_faiss, atol=1e-5)
    assert knn_preservation(high, low, k=5, n_eval=1000) == pytest.approx(brute_force_preservation(high, low, 5), abs=1e-12)
    lay = fit_layout(X, sample_size=300, seed=0)
    assert lay.info["quality"]["pca_knn10_preserved"] == ref.info["quality"]["pca_knn10_preserved"]
    assert lay.info["quality"]["knn10_preserved"] > lay.info["quality"]["pca_knn10_preserved"]
    assert label_agreement(lay.coords, labels) >= 0.95


def test_new_groups_get_a_place_of_their_own() -> None:
    """An update's new themes: each one group outside the map, toward where its rows point, apart."""
    rng = np.random.default_rng(0)
    angle, r = rng.uniform(0, 2 * np.pi, 400), np.sqrt(rng.uniform(0, 1, 400)) * 10
    M = np.c_[r * np.cos(angle), r * np.sin(angle)] + 3.0
    X = np.r_[rng.normal(0, 1, (30, 8)) + 5, rng.normal(0, 1, (20, 8)) - 5, rng.normal(0, 1, (1, 8))]
    groups = np.r_[np.full(30, 7), np.full(20, 9), [11]]
    near = np.r_[np.tile([[12.0, 3.0]], (30, 1)), np.tile([[12.5, 3.5]], (20, 1)), [[3.0, -6.0]]]  # two point the same way
    xy = layout.place_groups(M, X, groups, near)
    assert np.array_equal(xy, layout.place_groups(M, X, groups, near))  # deterministic
    everything = np.r_[M, xy]
    owner = np.r_[np.full(len(M), -1), groups]
    d = np.linalg.norm(xy[:, None, :] - everything[None, :, :], axis=2)
    d[np.arange(len(xy)), len(M) + np.arange(len(xy))] = np.inf
    assert (owner[d[:50].argmin(axis=1)] == groups[:50]).all()  # each row's nearest point is of its own group
    centre = np.median(M, axis=0)
    assert (np.linalg.norm(xy - centre, axis=1) > np.quantile(np.linalg.norm(M - centre, axis=1), 0.95)).all()  # outside the map
    g7, g9 = xy[groups == 7].mean(axis=0), xy[groups == 9].mean(axis=0)
    assert np.linalg.norm(g7 - g9) > 2.0 and g7[0] > 10  # apart, and on the side their rows point to
    assert xy[-1, 1] < -7  # a group of one goes where it points
