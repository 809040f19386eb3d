"""The theme hierarchy equals a plain recomputation of centroid linkage, nests related themes
first, and its inner nodes get keywords from their pooled documents."""

from __future__ import annotations

import numpy as np

from theme_engine.engine.hierarchy import merge_tree, parents
from theme_engine.engine.labels import ctfidf_keywords


def _reference(centroids: np.ndarray, sizes: np.ndarray) -> list[tuple[tuple[int, int], float, tuple[int, ...]]]:
    """Centroid linkage recomputed from scratch at every step: groups as sets of themes, each
    represented by its size-weighted mean; merge the most similar pair (first in id order)."""
    groups: dict[int, list[int]] = {t: [t] for t in range(len(sizes))}
    out = []
    nxt = len(sizes)
    while len(groups) > 1:
        ids = sorted(groups)
        means = {g: (centroids[groups[g]] * sizes[groups[g], None]).sum(0) for g in ids}
        best = None
        for x in range(len(ids)):
            for y in range(x + 1, len(ids)):
                a, b = means[ids[x]], means[ids[y]]
                s = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
                if best is None or s > best[0] + 1e-12:
                    best = (s, ids[x], ids[y])
        s, a, b = best
        groups[nxt] = groups.pop(a) + groups.pop(b)
        out.append(((a, b), s, tuple(sorted(groups[nxt]))))
        nxt += 1
    return out


def test_merges_equal_a_plain_recomputation() -> None:
    rng = np.random.default_rng(3)
    for k in (2, 3, 7, 20):
        c = rng.normal(size=(k, 16))
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        sizes = rng.integers(1, 500, size=k)
        got = merge_tree(c, sizes)
        ref = _reference(c, sizes)
        assert [(m.children, m.themes) for m in got] == [(r[0], r[2]) for r in ref]
        assert np.allclose([m.similarity for m in got], [r[1] for r in ref])
        assert [m.id for m in got] == list(range(k, 2 * k - 1))
        assert got[-1].size == int(sizes.sum()) and got[-1].themes == tuple(range(k))


def test_related_themes_nest_before_unrelated_ones() -> None:
    rng = np.random.default_rng(0)
    axes = np.eye(32)[:2]
    # themes 0-2 around one axis, 3-5 around another
    c = np.vstack([axes[i // 3] + 0.15 * rng.normal(size=32) for i in range(6)])
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    merges = merge_tree(c, np.full(6, 10))
    root = merges[-1]
    left, right = (set(next(m.themes for m in merges if m.id == ch)) for ch in root.children)
    assert {frozenset(left), frozenset(right)} == {frozenset({0, 1, 2}), frozenset({3, 4, 5})}
    assert root.similarity < min(m.similarity for m in merges[:-1])
    par = parents(merges, 6)
    assert par[root.id] is None and all(p is not None for p in par[: root.id])


def test_no_merges_below_two_themes() -> None:
    assert merge_tree(np.ones((1, 4)), np.array([3])) == []
    assert parents([], 1) == [None]


def test_inner_nodes_are_labelled_from_their_pooled_documents() -> None:
    sport = ["the striker scored a goal in the football match", "football fans cheered the goal", "a late goal won the football cup"]
    tennis = ["the tennis player served an ace", "tennis final on grass court", "she won the tennis match in five sets"]
    stocks = ["shares fell on the stock market", "the stock index closed lower", "investors sold stock after the report"]
    texts = sport + tennis + stocks
    themes = np.repeat([0, 1, 2], 3)
    kw = ctfidf_keywords(texts, themes, 3, top_n=5, ngram_max=1, max_df_fraction=1.0, groups=[[0, 1], [0, 1, 2]])
    assert set(kw.keywords[0][:2]) == {"football", "goal"} and kw.keywords[2][0] == "stock"
    sports = kw.groups.keywords[0]
    assert {"football", "tennis"} <= set(sports[:3]) and "stock" not in sports
    assert all(lift > 1 for lift in kw.groups.lifts[0])  # gated by the group's own lift
    assert kw.groups.keywords[1]  # the root covers every document: scored ungated, not left empty
    # the groups leave the themes' own keywords unchanged
    assert ctfidf_keywords(texts, themes, 3, top_n=5, ngram_max=1, max_df_fraction=1.0).keywords == kw.keywords
