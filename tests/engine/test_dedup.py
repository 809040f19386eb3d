"""Near-duplicate pairs (FAISS range search over blocks) vs brute force; grouping and keep policies."""

from __future__ import annotations

import numpy as np
import pytest

from theme_engine.engine.dedup import brute_force_pairs, group_duplicates, keep_rank, range_pairs

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
    for m, _r in zip(removed.tolist(), reps.tolist()):
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


# ----------------------------------------------------------------------------- hybrid rule


def _hybrid_data(seed: int = 0):
    """Random texts and unit vectors; planted copies of some texts with 1-3 light edits (or a
    replaced word: a "template sibling") whose vectors sit at cosines spread over 0.5..1."""
    import random

    from test_lexical import VOCAB, edited

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    words = VOCAB + [f"w{k}" for k in range(40)]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 14))) for _ in range(160)]
    X = list(unit_rows(nrng.normal(size=(160, 24))))
    for src in nrng.choice(160, size=90, replace=False).tolist():
        base = texts[src].split()
        if rng.random() < 0.2 and base:  # one word replaced: not a light edit
            k = rng.randrange(len(base))
            base[k] = rng.choice(words)
            texts.append(" ".join(base))
        else:
            texts.append(" ".join(edited(rng, base, rng.randint(1, 3))).title())  # case folds away
        u = nrng.normal(size=24)
        u -= (u @ X[src]) * X[src]
        c = rng.uniform(0.5, 1.0)
        X.append(c * X[src] + np.sqrt(1 - c * c) * u / np.linalg.norm(u))
    X = np.ascontiguousarray(unit_rows(np.array(X)), dtype=np.float32)
    return texts, X


def _brute_force_hybrid(X, texts, t, c, max_edits, min_words, neighbors):
    """The rule from scratch: the full n x n product, each document's nearest below-threshold
    partners by sorting, light edits by the naive reference of tests/engine/test_lexical.py."""
    from test_lexical import light_edit_ref

    S = X.astype(np.float64) @ X.astype(np.float64).T
    n = len(X)
    below = {}
    for i in range(n):
        part = [(-S[i, j], j) for j in range(n) if j != i and c <= S[i, j] < t]
        below[i] = {j for _, j in sorted(part)[:neighbors]}
    out = {}
    for i in range(n):
        for j in range(i + 1, n):
            if S[i, j] >= t:
                out[(i, j)] = "near"
            elif S[i, j] >= c and (j in below[i] or i in below[j]):
                if light_edit_ref(texts[i], texts[j], max_edits, min_words) >= 0:
                    out[(i, j)] = "lexical"
    return out


@pytest.mark.parametrize("neighbors", [2, 16])
@pytest.mark.parametrize("min_words", [1, 8])
def test_hybrid_pairs_equal_a_brute_force_reference(neighbors, min_words):
    from theme_engine.engine.dedup import KIND_NAMES, cap_candidates, hybrid_pairs
    from theme_engine.engine.lexical import WordIndex, light_edits

    texts, X = _hybrid_data(neighbors + min_words)
    t, c = 0.9, 0.55
    pi, pj, ps = range_pairs(X, 0, X, 0, c)
    fetched = []

    def fetch(rows):
        fetched.append(rows)
        return {r: texts[r] for r in rows.tolist()}

    words = WordIndex.from_texts(np.arange(len(texts)), texts)
    hp = hybrid_pairs(pi, pj, ps, t, c, words, fetch, 3, min_words, neighbors)
    got = {(i, j): KIND_NAMES[k] for i, j, k in zip(hp.i.tolist(), hp.j.tolist(), hp.kind.tolist())}
    ref = _brute_force_hybrid(X, texts, t, c, 3, min_words, neighbors)
    assert got == ref
    assert sum(v == "lexical" for v in ref.values()) >= 10 and sum(v == "near" for v in ref.values()) >= 5
    assert len(fetched) == 1 and hp.lexical_compared < hp.lexical_checked  # the screen ruled some out
    assert hp.counts["lexical_pairs"] == sum(v == "lexical" for v in ref.values())

    # a stand-in comparer (what the cluster passes to spread the pairs over tasks) gets exactly
    # the pairs the screen left, already screened, and its answers decide
    calls = []

    def edits(a, b, max_edits, min_words_, screened):
        calls.append((len(a), max_edits, min_words_, screened))
        return light_edits(a, b, max_edits, min_words_, screened)

    hp2 = hybrid_pairs(pi, pj, ps, t, c, words, fetch, 3, min_words, neighbors, edits)
    assert calls == [(hp.lexical_compared, 3, min_words, True)]
    assert {(i, j): KIND_NAMES[k] for i, j, k in zip(hp2.i.tolist(), hp2.j.tolist(), hp2.kind.tolist())} == ref
    none = hybrid_pairs(pi, pj, ps, t, c, words, fetch, 3, min_words, neighbors, lambda a, *_: np.full(len(a), -1, np.int8))
    # or a comparer of document pairs that reads the texts itself (the cluster's tasks): no fetch
    asked = []

    def edits_at(a, b):
        asked.append(len(a))
        return light_edits([texts[x] for x in a.tolist()], [texts[x] for x in b.tolist()], 3, min_words, True)

    at = hybrid_pairs(pi, pj, ps, t, c, words, None, 3, min_words, neighbors, None, None, edits_at)
    assert asked == [hp.lexical_compared] and (at.i.tolist(), at.kind.tolist()) == (hp.i.tolist(), hp.kind.tolist())
    assert none.counts["lexical_pairs"] == 0 and none.counts["near_pairs"] == hp.counts["near_pairs"]

    # the caller's own cap mask (the stage computes it once for this and for an update's record)
    # gives the same pairs; a mask that keeps no below-threshold pair leaves the cosine pairs only
    mask = cap_candidates(pi, pj, ps, t, neighbors)
    given = hybrid_pairs(pi, pj, ps, t, c, words, fetch, 3, min_words, neighbors, None, mask)
    assert (given.i.tolist(), given.j.tolist(), given.kind.tolist()) == (hp.i.tolist(), hp.j.tolist(), hp.kind.tolist())
    cut = hybrid_pairs(pi, pj, ps, t, c, words, fetch, 3, min_words, neighbors, None, ps >= t)
    assert cut.counts["lexical_pairs"] == 0 and cut.counts["near_pairs"] == hp.counts["near_pairs"]


def test_hybrid_pairs_without_lexical_evidence_are_the_cosine_pairs():
    from theme_engine.engine.dedup import KIND_NEAR, hybrid_pairs, search_threshold
    from theme_engine.engine.lexical import WordIndex

    texts, X = _hybrid_data(3)
    assert search_threshold(0.9, None) == 0.9 and search_threshold(0.9, 0.6) == 0.6 and search_threshold(0.8, 0.95) == 0.8
    pi, pj, ps = range_pairs(X, 0, X, 0, 0.9)
    words = WordIndex.from_texts(np.arange(len(texts)), texts)
    for hp in (hybrid_pairs(pi, pj, ps, 0.9), hybrid_pairs(pi, pj, ps, 0.9, None, words, lambda r: {}), hybrid_pairs(pi, pj, ps, 0.9, 0.6)):
        np.testing.assert_array_equal(hp.i, pi)
        np.testing.assert_array_equal(hp.j, pj)
        np.testing.assert_array_equal(hp.cos, ps)
        assert (hp.kind == KIND_NEAR).all() and hp.lexical_checked == 0
    assert {(i, j) for i, j in zip(pi.tolist(), pj.tolist())} == brute_force_pairs(X, 0.9)


def test_cap_candidates_keeps_each_documents_nearest_below_threshold():
    from theme_engine.engine.dedup import cap_candidates

    pi = np.array([0, 0, 0, 0, 1, 2, 3])
    pj = np.array([1, 2, 3, 4, 2, 3, 4])
    cos = np.array([0.95, 0.8, 0.7, 0.6, 0.79, 0.65, 0.5], np.float32)
    keep = cap_candidates(pi, pj, cos, 0.9, 1)
    # 0's nearest below 0.9: (0,2); 1's: (1,2); 2's: (0,2); 3's: (0,3); 4's: (0,4); (0,1) is above
    assert keep.tolist() == [True, True, True, True, True, False, False]
    assert cap_candidates(pi, pj, cos, 0.9, 10).all()
    # a subset keeps what the whole keeps (what lets the partitions cap before the merge)
    sub = np.array([1, 2, 4, 6])
    whole = cap_candidates(pi, pj, cos, 0.9, 1)
    assert (cap_candidates(pi[sub], pj[sub], cos[sub], 0.9, 1) >= whole[sub]).all()
    with pytest.raises(ValueError, match="neighbors"):
        cap_candidates(pi, pj, cos, 0.9, 0)


def test_duplicate_evidence_names_the_kind_and_both_similarities():
    from theme_engine.engine.dedup import KIND_LEXICAL, KIND_NEAR, HybridPairs, duplicate_evidence

    texts = {0: "the cat sat on the mat", 1: "the cat sat on teh mat", 2: "a dog", 3: "a dog barks", 4: "x"}
    hp = HybridPairs(np.array([0, 2]), np.array([1, 3]), np.array([0.8, 0.95], np.float32),
                     np.array([KIND_LEXICAL, KIND_NEAR], np.int8), 2, 1, 1)  # fmt: skip
    dup = np.array([-1, 0, -1, 2, -1])
    ev = duplicate_evidence(dup, hp, lambda rows: texts)
    assert ev["kind"].tolist() == [0, KIND_LEXICAL, 0, KIND_NEAR, 0]
    assert ev["edits"].tolist() == [-1, 1, -1, -1, -1]  # "a dog" + "barks": too short for an insertion
    assert 0 < ev["lexical_similarity"][1] < 1 and np.isnan(ev["lexical_similarity"][[0, 2, 4]]).all()
    # a stand-in (what the cluster passes to spread the pairs over tasks) gets each duplicate's
    # texts and its kept document's, and its answers are the record
    seen = []

    def evidence(a, b, max_edits, min_words):
        seen.append((list(a), list(b), max_edits, min_words))
        return np.full(len(a), 0.5, np.float32), np.full(len(a), 2, np.int8)

    other = duplicate_evidence(dup, hp, lambda rows: texts, 3, 8, evidence)
    assert seen == [([texts[1], texts[3]], [texts[0], texts[2]], 3, 8)]
    assert other["edits"].tolist() == [-1, 2, -1, 2, -1] and other["lexical_similarity"][[1, 3]].tolist() == [0.5, 0.5]
    bare = duplicate_evidence(dup, hp)  # no texts: the kinds only
    assert bare["kind"].tolist() == ev["kind"].tolist() and np.isnan(bare["lexical_similarity"]).all()


def test_order_by_doc_then_cos_is_the_three_key_lexsort():
    """The 64-bit key sort gives lexsort's order exactly: ties of document and cosine (frequent
    here) by the other document, -0.0 as 0.0, negative cosines; lexsort itself past 32-bit ids."""
    from theme_engine.engine.dedup import order_by_doc_then_cos

    rng = np.random.default_rng(3)
    m = 20_000
    a = rng.integers(0, 300, m)
    b = rng.integers(0, 300, m)
    s = rng.choice(np.float32([-0.5, -0.0, 0.0, 0.25, 0.6, 0.61, 0.9]), m)
    s[:50] = rng.uniform(-1, 1, 50).astype(np.float32)
    np.testing.assert_array_equal(order_by_doc_then_cos(a, s, b), np.lexsort((b, -s, a)))
    got = order_by_doc_then_cos(a, s)  # without b: any order among ties, the same keys in sequence
    np.testing.assert_array_equal(a[got], a[np.lexsort((-s, a))])
    np.testing.assert_array_equal(s[got] + np.float32(0), s[np.lexsort((-s, a))] + np.float32(0))
    big = a + 2**32
    np.testing.assert_array_equal(order_by_doc_then_cos(big, s, b), np.lexsort((b, -s, big)))
    assert order_by_doc_then_cos(a[:0], s[:0], b[:0]).size == 0


def test_the_dedup_rule_is_derived_once_from_the_settings() -> None:
    from theme_engine.engine.config import DedupConfig
    from theme_engine.engine.dedup import DedupRule
    from theme_engine.engine.partition import safe_margin

    dc = DedupConfig()
    on = DedupRule.from_settings(dc, has_texts=True)
    assert on.lexical and on.candidate == dc.candidate_threshold < on.threshold == dc.threshold
    assert on.search == dc.candidate_threshold and on.cap == (dc.threshold, dc.lexical_neighbors)
    assert on.margin == safe_margin(dc.threshold) and on.words_needed == dc.lexical_min_words + dc.lexical_max_edits
    assert on.exact(0) and not on.exact(3) and not on.exact(0, on.search)  # safe for the threshold, not the candidates
    assert on.record()["candidate_threshold"] == dc.candidate_threshold and on.record()["lexical"] is True
    vectors_only = DedupRule.from_settings(dc, has_texts=False)
    assert not vectors_only.lexical and vectors_only.search == dc.threshold and vectors_only.cap is None
    assert "no texts" in vectors_only.record()["lexical_note"]
    off = DedupRule.from_settings(dc.model_copy(update={"lexical": False, "margin": 0.5}), has_texts=True)
    assert "dedup.lexical = false" in off.record()["lexical_note"] and off.margin == 0.5 and off.exact(0, 0.6)
