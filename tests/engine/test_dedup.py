"""Near-duplicate pairs (FAISS range search over blocks) vs brute force; grouping and keep policies."""

from __future__ import annotations

import numpy as np
import pytest

from engine.dedup import brute_force_pairs, group_duplicates, keep_rank, range_pairs

pytest.importorskip("faiss")


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def planted():
    """Random unit vectors plus noisy copies of some of them (similarities spread over 0.75..1)."""
    rng = np.random.default_rng(0)
    base = unit_rows(rng.normal(size=(300, 32)))
    src = rng.choice(300, size=60, replace=False)
    noise = rng.normal(size=(60, 32)) * rng.uniform(0.02, 0.9, size=(60, 1)) / np.sqrt(32)
    copies = unit_rows(base[src] + noise)
    # a second copy of a few, so groups of three exist
    copies2 = unit_rows(base[src[:10]] + rng.normal(size=(10, 32)) * 0.05 / np.sqrt(32))
    X = np.concatenate([base, copies, copies2])
    X = X[rng.permutation(len(X))]  # copies scattered across the blocks
    return np.ascontiguousarray(X, dtype=np.float32)


def _blocked_pairs(X, cuts, threshold, all_block_pairs, batch_rows=37):
    bounds = [0, *cuts, len(X)]
    blocks = [(bounds[i], X[bounds[i] : bounds[i + 1]]) for i in range(len(bounds) - 1)]
    out = []
    for a, (qa, Q) in enumerate(blocks):
        for b, (ob, B) in enumerate(blocks):
            if b < a and not all_block_pairs:
                continue
            out.append(range_pairs(Q, qa, B, ob, threshold, batch_rows=batch_rows))
    pi = np.concatenate([o[0] for o in out])
    pj = np.concatenate([o[1] for o in out])
    ps = np.concatenate([o[2] for o in out])
    return pi, pj, ps


@pytest.mark.parametrize("threshold", [0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("all_block_pairs", [False, True])
def test_range_pairs_over_blocks_equal_brute_force(planted, threshold, all_block_pairs):
    X = planted
    pi, pj, ps = _blocked_pairs(X, [101, 250], threshold, all_block_pairs)
    ref = brute_force_pairs(X, threshold)
    got = list(zip(pi.tolist(), pj.tolist()))
    assert len(got) == len(set(got))  # every pair reported once, even with both block orders
    assert set(got) == ref
    assert len(ref) > 5  # the planted copies are found
    assert (pi < pj).all()
    assert pi.dtype == np.int64 and pj.dtype == np.int64 and ps.dtype == np.float32
    assert (ps >= threshold).all()
    np.testing.assert_allclose(ps, np.einsum("ij,ij->i", X[pi], X[pj]), atol=1e-5)


def test_range_pairs_thresholds_nest(planted):
    loose = brute_force_pairs(planted, 0.8)
    strict = brute_force_pairs(planted, 0.95)
    assert strict < loose


def test_range_pairs_single_block_with_offset(planted):
    X = planted
    pi, pj, _ = range_pairs(X, 1000, X, 1000, 0.9)
    assert {(i - 1000, j - 1000) for i, j in zip(pi.tolist(), pj.tolist())} == brute_force_pairs(X, 0.9)


def test_range_pairs_exact_duplicates_and_empty_query():
    X = unit_rows(np.random.default_rng(1).normal(size=(20, 8)))
    X = np.concatenate([X, X[:3]])  # rows 20..22 are exact copies of 0..2
    pi, pj, ps = range_pairs(X, 0, X, 0, 0.999)
    assert set(zip(pi.tolist(), pj.tolist())) == {(0, 20), (1, 21), (2, 22)}
    np.testing.assert_allclose(ps, 1.0, atol=1e-6)
    e = range_pairs(X[:0], 0, X, 0, 0.9)
    assert all(len(a) == 0 for a in e)


# ----------------------------------------------------------------------------- grouping


@pytest.mark.parametrize("policy", ["first", "longest", "central"])
def test_ranked_grouping_invariants(planted, policy):
    X = planted
    n = len(X)
    thr = 0.9
    pi, pj, ps = range_pairs(X, 0, X, 0, thr)
    rng = np.random.default_rng(3)
    rank = keep_rank(policy, n, lengths=rng.integers(10, 500, n), distances=rng.random(n))
    res = group_duplicates(n, pi, pj, ps, rank, "ranked")
    removed = np.flatnonzero(res.duplicate_of >= 0)
    assert removed.size > 0
    reps = res.duplicate_of[removed]
    assert (res.duplicate_of[reps] == -1).all()  # every representative is kept
    assert (rank[reps] < rank[removed]).all()  # and comes earlier in keep order
    direct = np.einsum("ij,ij->i", X[removed], X[reps])
    assert (direct >= thr - 1e-6).all()  # within the threshold of its representative
    np.testing.assert_allclose(res.similarity[removed], direct, atol=1e-5)
    assert np.isnan(res.similarity[res.duplicate_of < 0]).all()
    # no two kept documents are near-duplicates of each other
    kept = res.duplicate_of < 0
    assert not any(kept[i] and kept[j] for i, j in zip(pi.tolist(), pj.tolist()))
    # a removed document's representative is its best kept match
    for m, r in zip(removed.tolist(), reps.tolist()):
        partners = [(s, b) for a, b, s in zip(pi.tolist(), pj.tolist(), ps.tolist()) if a == m] + [
            (s, a) for a, b, s in zip(pi.tolist(), pj.tolist(), ps.tolist()) if b == m
        ]
        best = max(s for s, o in partners if kept[o] and rank[o] < rank[m])
        assert res.similarity[m] == pytest.approx(best)
    # groups: dense ids over documents in pairs, -1 elsewhere
    in_pair = np.zeros(n, bool)
    in_pair[pi] = in_pair[pj] = True
    assert (res.group[~in_pair] == -1).all()
    assert set(res.group[in_pair].tolist()) == set(range(res.n_groups))
    assert (res.group[pi] == res.group[pj]).all()
    assert res.n_pairs == len(pi)


def test_components_grouping_keeps_one_per_component(planted):
    X = planted
    n = len(X)
    pi, pj, ps = range_pairs(X, 0, X, 0, 0.85)
    rank = keep_rank("first", n)
    res = group_duplicates(n, pi, pj, ps, rank, "components", vectors=X)
    for g in range(res.n_groups):
        members = np.flatnonzero(res.group == g)
        kept = members[res.duplicate_of[members] < 0]
        assert kept.tolist() == [members.min()]  # the best-ranked ("first") one
        assert (res.duplicate_of[members[members != kept[0]]] == kept[0]).all()
    removed = res.duplicate_of >= 0
    np.testing.assert_allclose(
        res.similarity[removed], np.einsum("ij,ij->i", X[removed], X[res.duplicate_of[removed]]), atol=1e-5
    )


def _chain():
    # A~B and B~C above the threshold, A~C not
    return 3, np.array([0, 1]), np.array([1, 2]), np.array([0.95, 0.93], np.float32)


def test_chain_ranked_keeps_both_ends():
    n, pi, pj, ps = _chain()
    res = group_duplicates(n, pi, pj, ps, keep_rank("first", n), "ranked")
    assert res.duplicate_of.tolist() == [-1, 0, -1]
    assert res.similarity[1] == pytest.approx(0.95)
    assert res.group.tolist() == [0, 0, 0] and res.n_groups == 1 and res.n_pairs == 2


def test_chain_components_keeps_only_first():
    n, pi, pj, ps = _chain()
    res = group_duplicates(n, pi, pj, ps, keep_rank("first", n), "components")
    assert res.duplicate_of.tolist() == [-1, 0, 0]
    assert res.group.tolist() == [0, 0, 0] and res.n_groups == 1


def test_chain_ranked_follows_keep_order():
    n, pi, pj, ps = _chain()
    # keep order C, A, B: C kept; A's only partner B is not kept yet -> A kept; B matches both
    # kept ends and joins the more similar one, A (0.95 > 0.93)
    res = group_duplicates(n, pi, pj, ps, keep_rank("longest", n, lengths=[50, 10, 90]), "ranked")
    assert res.duplicate_of.tolist() == [-1, 0, -1]
    assert res.similarity[1] == pytest.approx(0.95)
    # keep order B first: B kept, A and C both join it
    res = group_duplicates(n, pi, pj, ps, keep_rank("longest", n, lengths=[50, 90, 10]), "ranked")
    assert res.duplicate_of.tolist() == [1, -1, 1]


def test_ranked_picks_most_similar_kept_partner():
    # 0 and 1 are kept (no pair between them); 2 matches both, 1 more closely
    res = group_duplicates(3, np.array([0, 1]), np.array([2, 2]), np.array([0.91, 0.97], np.float32),
                           keep_rank("first", 3), "ranked")
    assert res.duplicate_of.tolist() == [-1, -1, 1]


def test_no_pairs():
    res = group_duplicates(4, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), keep_rank("first", 4))
    assert (res.duplicate_of == -1).all() and (res.group == -1).all()
    assert res.n_pairs == 0 and res.n_groups == 0


def test_unknown_grouping_raises():
    n, pi, pj, ps = _chain()
    with pytest.raises(ValueError, match="grouping"):
        group_duplicates(n, pi, pj, ps, keep_rank("first", n), "bogus")


@pytest.mark.parametrize(
    "policy, kwargs, expected",
    [
        ("first", {}, [0, 1, 2, 3]),
        ("longest", {"lengths": [3, 10, 10, 1]}, [2, 0, 1, 3]),  # ties keep input order
        ("central", {"distances": np.array([0.5, 0.1, 0.5, 0.2])}, [2, 0, 3, 1]),
    ],
)
def test_keep_rank_policies(policy, kwargs, expected):
    assert keep_rank(policy, 4, **kwargs).tolist() == expected


@pytest.mark.parametrize("policy, match", [("longest", "texts"), ("central", "distances"), ("random", "unknown")])
def test_keep_rank_errors(policy, match):
    with pytest.raises(ValueError, match=match):
        keep_rank(policy, 3)
