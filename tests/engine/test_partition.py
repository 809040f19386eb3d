"""Partitioned near-duplicate search (engine.partition) vs brute force, without Ray."""

from __future__ import annotations

import numpy as np
import pytest

from theme_engine.engine.dedup import brute_force_pairs
from theme_engine.engine.partition import (
    Routes,
    group_routes,
    merge_pairs,
    pairs_in_partition,
    partition_centroids,
    partitioned_pairs,
    route,
    safe_margin,
)

pytest.importorskip("faiss")

T = 0.9


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted_copies(rng: np.random.Generator, X: np.ndarray, src: np.ndarray, cos: np.ndarray, toward: np.ndarray | None) -> np.ndarray:
    """Rows at exactly cosine ``cos`` from ``X[src]``: ``cos x + sqrt(1 - cos^2) u`` with ``u`` a unit
    vector orthogonal to ``x`` — random, or (``toward``) the direction of another row, which pushes
    the copy toward a neighbouring cluster, across partition boundaries."""
    x = X[src].astype(np.float64)
    u = rng.standard_normal(x.shape) if toward is None else toward.astype(np.float64)
    u -= np.sum(u * x, axis=1, keepdims=True) * x
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return unit_rows(cos[:, None] * x + np.sqrt(1.0 - cos**2)[:, None] * u)


def make_data(n: int = 20_000, d: int = 64, seed: int = 0) -> np.ndarray:
    """Natural clusters (60 topics, noise levels that give within-topic cosines ~0.4-0.83, so a few
    natural pairs cross 0.9), uniform background rows, and 2,000 planted near-duplicates with cosines
    spread over [T, 1): half with random noise, half displaced toward another topic. Shuffled."""
    rng = np.random.default_rng(seed)
    n_copies, n_uniform = 2_000, 4_000
    n_clustered = n - n_copies - n_uniform
    centers = unit_rows(rng.standard_normal((60, d)))
    lab = rng.integers(60, size=n_clustered)
    sigma = rng.uniform(0.45, 1.2, size=60)[lab]
    clustered = unit_rows(centers[lab] + rng.standard_normal((n_clustered, d)) * (sigma / np.sqrt(d))[:, None])
    base = np.concatenate([clustered, unit_rows(rng.standard_normal((n_uniform, d)))])
    src = rng.choice(base.shape[0], size=n_copies, replace=False)
    cos = rng.uniform(T, 1.0, size=n_copies)
    half = n_copies // 2
    iso = planted_copies(rng, base, src[:half], cos[:half], None)
    other = centers[rng.integers(60, size=n_copies - half)]
    tow = planted_copies(rng, base, src[half:], cos[half:], other)
    X = np.concatenate([base, iso, tow])
    return np.ascontiguousarray(X[rng.permutation(n)], dtype=np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, set[tuple[int, int]]]:
    X = make_data()
    return X, brute_force_pairs(X, T)


@pytest.fixture(scope="module")
def centroids(data) -> np.ndarray:
    X, _ = data
    rng = np.random.default_rng(1)
    return partition_centroids(X[rng.choice(len(X), 4_000, replace=False)], 100, seed=1)


def pair_set(i: np.ndarray, j: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(i.tolist(), j.tolist()))


def check_pairs(X, i, j, s, threshold=T):
    assert i.dtype == np.int64 and j.dtype == np.int64 and s.dtype == np.float32
    assert (i < j).all()
    assert len(pair_set(i, j)) == len(i)  # unique
    keys = i * len(X) + j
    assert (np.diff(keys) > 0).all()  # sorted by (i, j)
    assert (s >= threshold).all()
    np.testing.assert_allclose(s, np.einsum("ij,ij->i", X[i], X[j]), atol=2e-6)


# ----------------------------------------------------------------------------- vs brute force


def test_default_settings_recall_and_precision(data):
    X, ref = data
    assert len(ref) > 2_000  # the planted pairs plus some natural ones
    r = partitioned_pairs(X, T, seed=0)  # sqrt(n) partitions, spill <= 8, safe margin
    check_pairs(X, r.i, r.j, r.cos)
    got = pair_set(r.i, r.j)
    assert got <= ref  # precision 1.0: nothing below the threshold
    assert len(got & ref) / len(ref) >= 0.995
    assert r.n_partitions == 200 and r.n_spilled > 0


def test_uncapped_safe_margin_is_exact(data, centroids):
    X, ref = data
    r = partitioned_pairs(X, T, centroids=centroids, spill=None)
    assert r.n_capped == 0
    assert pair_set(r.i, r.j) == ref


@pytest.mark.parametrize("d,threshold", [(4, 0.9), (8, 0.95), (16, 0.8)])
def test_guarantee_in_low_dimensions(d, threshold):
    """Few dimensions put many pairs right across boundaries (the displacement is not orthogonal to
    the boundary normals): the safe margin with no cap must still give exactly the brute-force set."""
    rng = np.random.default_rng(d)
    X = unit_rows(rng.standard_normal((3_000, d)))
    ref = brute_force_pairs(X, threshold)
    assert len(ref) > 100
    C = partition_centroids(X[:1_000], 40, seed=d)
    r = partitioned_pairs(X, threshold, centroids=C, spill=None)
    assert pair_set(r.i, r.j) == ref
    # a quarter of the safe margin loses pairs here: the margin is what makes it exact
    r4 = partitioned_pairs(X, threshold, centroids=C, spill=None, margin=safe_margin(threshold) / 4)
    assert pair_set(r4.i, r4.j) < ref


def test_unit_centroids_route_by_cosine_and_stay_exact(data):
    X, ref = data
    rng = np.random.default_rng(2)
    C = partition_centroids(X[rng.choice(len(X), 4_000, replace=False)], 100, seed=2, normalise=True)
    r = route(X[:2_000], C, 0, threshold=T)
    np.testing.assert_array_equal(r.part_ids, np.argmax(X[:2_000] @ C.T, axis=1))
    got = partitioned_pairs(X, T, centroids=C, spill=None)
    assert pair_set(got.i, got.j) == ref


def test_without_spill_pairs_are_lost(data, centroids):
    X, ref = data
    r0 = partitioned_pairs(X, T, centroids=centroids, spill=0)
    got0 = pair_set(r0.i, r0.j)
    assert got0 <= ref
    assert len(got0) / len(ref) < 0.98  # pairs across boundaries need the spill
    assert r0.n_spilled == 0


def test_small_batches_same_result(data, centroids):
    X, ref = data
    a = partitioned_pairs(X[:6_000], T, centroids=centroids, batch_rows=4096)
    b = partitioned_pairs(X[:6_000], T, centroids=centroids, batch_rows=7)
    assert pair_set(a.i, a.j) == pair_set(b.i, b.j)
    np.testing.assert_allclose(a.cos, b.cos, atol=1e-6)


def test_threads_same_result(data, centroids):
    X, _ = data
    one = partitioned_pairs(X, T, centroids=centroids, n_jobs=1)
    two = partitioned_pairs(X, T, centroids=centroids, n_jobs=2)
    np.testing.assert_array_equal(one.i, two.i)
    np.testing.assert_array_equal(one.j, two.j)
    np.testing.assert_allclose(one.cos, two.cos, atol=1e-6)


# ----------------------------------------------------------------------------- order / chunking


def test_independent_of_row_order(data, centroids):
    X, _ = data
    base = partitioned_pairs(X, T, centroids=centroids)
    perm = np.random.default_rng(5).permutation(len(X))
    r = partitioned_pairs(X[perm], T, centroids=centroids)
    i, j = perm[r.i], perm[r.j]
    got = pair_set(np.minimum(i, j), np.maximum(i, j))
    assert got == pair_set(base.i, base.j)


def test_route_per_chunk_equals_route_whole(data, centroids):
    X, _ = data
    whole = route(X, centroids, 8, threshold=T)
    cuts = [0, 3_001, 3_002, 11_111, len(X)]
    parts = [route(X[a:b], centroids, 8, threshold=T, offset=a, batch_rows=999) for a, b in zip(cuts[:-1], cuts[1:])]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.concat(p)
    np.testing.assert_array_equal(whole.row_ids, merged.row_ids)
    np.testing.assert_array_equal(whole.part_ids, merged.part_ids)
    np.testing.assert_array_equal(whole.is_primary, merged.is_primary)
    assert whole.n_capped == merged.n_capped and merged.n_rows == len(X)


def test_shards_routed_apart_and_partitions_assembled_in_any_order(data, centroids):
    """The sharded flow: each shard routes its rows; each partition receives pieces from every
    shard in arbitrary order; the merged pairs equal the one-process result."""
    X, _ = data
    ref = partitioned_pairs(X, T, centroids=centroids)
    rng = np.random.default_rng(9)
    cuts = [0, 5_000, 12_500, len(X)]
    pieces: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for a, b in zip(cuts[:-1], cuts[1:]):
        for part, rows, own in group_routes(route(X[a:b], centroids, 8, threshold=T, offset=a)):
            pieces.setdefault(part, []).append((rows, own))
    found = []
    for part in rng.permutation(list(pieces)):
        got = pieces[int(part)]
        rows = np.concatenate([g[0] for g in got])
        own = np.concatenate([g[1] for g in got])
        order = rng.permutation(len(rows))  # arrival order is arbitrary
        found.append(pairs_in_partition(X[rows[order]], rows[order], own[order], T, batch_rows=64))
    i, j, s = merge_pairs(found)
    assert pair_set(i, j) == pair_set(ref.i, ref.j)
    np.testing.assert_allclose(s, ref.cos, atol=1e-6)


# ----------------------------------------------------------------------------- routing


def test_route_structure(data, centroids):
    X, _ = data
    r = route(X[:5_000], centroids, 3, threshold=T, batch_rows=777)
    assert isinstance(r, Routes)
    assert r.row_ids.dtype == np.int64 and r.part_ids.dtype == np.int32 and r.is_primary.dtype == bool
    np.testing.assert_array_equal(np.bincount(r.row_ids[r.is_primary], minlength=5_000), np.ones(5_000))
    nearest = np.argmin(((X[:5_000, None, :] - centroids[None, :, :]) ** 2).sum(axis=2), axis=1)
    np.testing.assert_array_equal(r.part_ids[r.is_primary], nearest)  # Euclidean nearest centroid
    placements = r.row_ids * 1_000 + r.part_ids
    assert np.unique(placements).size == placements.size  # a row sits once in a partition
    assert np.bincount(r.row_ids, minlength=5_000).max() <= 1 + 3
    owners, guests = r.partition_sizes()
    assert owners.sum() == 5_000 and guests.sum() == r.n_spilled
    # the margin is monotone: a wider margin places every row where a narrower one does, and more
    narrow = route(X[:5_000], centroids, None, margin=0.05)
    wide = route(X[:5_000], centroids, None, margin=0.2)
    assert set(zip(narrow.row_ids.tolist(), narrow.part_ids.tolist())) < set(zip(wide.row_ids.tolist(), wide.part_ids.tolist()))


def test_cap_keeps_nearest_boundaries(data, centroids):
    X, _ = data
    full = route(X[:3_000], centroids, None, margin=0.5)
    capped = route(X[:3_000], centroids, 2, margin=0.5)
    S = X[:3_000].astype(np.float64) @ centroids.T - 0.5 * (centroids.astype(np.float64) ** 2).sum(axis=1)
    p = np.argmax(S, axis=1)
    chord = np.linalg.norm(centroids[p][:, None, :] - centroids[None, :, :], axis=2)
    dist = (S[np.arange(3_000), p][:, None] - S) / np.maximum(chord, 1e-12)
    for row in np.unique(full.row_ids[~full.is_primary])[:200]:
        allq = full.part_ids[(full.row_ids == row) & ~full.is_primary]
        keptq = capped.part_ids[(capped.row_ids == row) & ~capped.is_primary]
        assert set(keptq) <= set(allq) and len(keptq) == min(2, len(allq))
        if len(allq) > 2:
            assert dist[row, keptq].max() <= np.sort(dist[row, allq])[1] + 1e-6
    assert capped.n_capped == int(np.sum(np.bincount(full.row_ids, minlength=3_000) - 1 > 2))


def test_spill_is_needed_for_a_pair_across_a_boundary():
    """Two cells split by the plane x0 = x1; x sits just on one side, y just on the other."""
    C = unit_rows(np.array([[1.0, 0.0, 0.2], [0.0, 1.0, 0.2]]))
    a = np.deg2rad(44.0)
    b = np.deg2rad(46.5)
    X = unit_rows(np.array([[np.cos(a), np.sin(a), 0.3], [np.cos(b), np.sin(b), 0.3]]))
    cos = float(X[0] @ X[1])
    assert cos > 0.99
    prim = route(X, C, 0, threshold=0.99)
    assert prim.part_ids[prim.is_primary].tolist() == [0, 1]  # the pair straddles the boundary
    r0 = partitioned_pairs(X, 0.99, centroids=C, spill=0)
    assert len(r0.i) == 0
    r1 = partitioned_pairs(X, 0.99, centroids=C, spill=1)
    assert (r1.i.tolist(), r1.j.tolist()) == ([0], [1])
    np.testing.assert_allclose(r1.cos, [cos], atol=1e-6)
    # each row is a guest of the other's partition; the merge reports the pair once
    assert r1.n_spilled == 2


# ----------------------------------------------------------------------------- search and merge


def test_pairs_in_partition_owner_and_guest_rules():
    rng = np.random.default_rng(3)
    x = unit_rows(rng.standard_normal((1, 16)))
    close = planted_copies(rng, np.repeat(x, 5, axis=0), np.arange(5), np.array([0.99, 0.98, 0.97, 0.96, 0.95]), None)
    V = np.concatenate([x, close, unit_rows(rng.standard_normal((20, 16)))])
    ids = np.arange(100, 100 + len(V))[::-1].copy()  # global ids in decreasing order
    own = np.ones(len(V), bool)
    own[[4, 5]] = False  # two guests: pairs between them are not this partition's to find
    i, j, s = pairs_in_partition(V, ids, own, 0.9, batch_rows=2)
    assert (i < j).all() and len(pair_set(i, j)) == len(i)
    sims = V @ V.T
    expect = {
        (min(ids[a], ids[b]), max(ids[a], ids[b]))
        for a in range(len(V))
        for b in range(a + 1, len(V))
        if sims[a, b] >= 0.9 and (own[a] or own[b])
    }
    assert pair_set(i, j) == expect
    assert len(expect) >= 6
    with pytest.raises(ValueError, match="twice"):
        pairs_in_partition(V[:3], np.array([1, 2, 1]), np.ones(3, bool), 0.9)
    assert len(pairs_in_partition(V[:3], np.arange(3), np.zeros(3, bool), 0.9)[0]) == 0  # no owner


def test_merge_pairs_deduplicates_and_keeps_largest():
    a = (np.array([1, 5, 2]), np.array([2, 3, 9]), np.array([0.95, 0.91, 0.97], np.float32))
    b = (np.array([2, 3, 7]), np.array([1, 5, 7]), np.array([0.96, 0.91, 1.0], np.float32))
    i, j, s = merge_pairs([a, b, merge_pairs([])])
    assert list(zip(i.tolist(), j.tolist())) == [(1, 2), (2, 9), (3, 5)]
    np.testing.assert_allclose(s, [0.96, 0.97, 0.91])


def test_merge_pairs_equals_a_reference_on_many_copies():
    """Many copies of each pair in both orders (as partitions report them): each pair once, in
    (i, j) order, with its largest cosine; ids past 32 bits take the lexsort path, same answer."""
    rng = np.random.default_rng(5)
    m = 30_000
    a, b = rng.integers(0, 200, m), rng.integers(0, 200, m)
    s = rng.uniform(0.5, 1.0, m).astype(np.float32)
    ref: dict[tuple[int, int], float] = {}
    for x, y, c in zip(a.tolist(), b.tolist(), s.tolist()):
        if x != y:
            key = (min(x, y), max(x, y))
            ref[key] = max(ref.get(key, -1.0), c)
    for offset in (0, 2**32):
        parts = [(a[:m // 2] + offset, b[:m // 2] + offset, s[:m // 2]), (a[m // 2:] + offset, b[m // 2:] + offset, s[m // 2:])]
        i, j, got = merge_pairs(parts)
        assert list(zip((i - offset).tolist(), (j - offset).tolist())) == sorted(ref)
        np.testing.assert_array_equal(got, np.float32([ref[k] for k in sorted(ref)]))


# ----------------------------------------------------------------------------- validation


def test_validation():
    rng = np.random.default_rng(0)
    X = unit_rows(rng.standard_normal((50, 8)))
    C = partition_centroids(X, 4, seed=0, normalise=True)
    np.testing.assert_allclose(np.linalg.norm(C, axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="threshold"):
        route(X, C, 2)
    with pytest.raises(ValueError, match="unit"):
        route(X * 2, C, 2, threshold=0.9)
    with pytest.raises(ValueError, match="spill"):
        route(X, C, -1, threshold=0.9)
    with pytest.raises(ValueError, match="columns"):
        route(X[:, :4], C, 2, threshold=0.9)
    with pytest.raises(ValueError, match="n_partitions"):
        partition_centroids(X, 51)
    with pytest.raises(ValueError, match="threshold"):
        pairs_in_partition(X, np.arange(50), np.ones(50, bool), 1.5)
    assert safe_margin(1.0) == 0.0
    assert abs(safe_margin(0.9) - 0.5 * np.sqrt(0.2)) < 1e-12
