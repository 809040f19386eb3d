"""The whole-text rule for pairs with a long text, and the fuzzy candidates' confirmation."""

from __future__ import annotations

import numpy as np

from theme_engine.engine.dedup import KIND_FUZZY, KIND_LEXICAL, KIND_NEAR, HybridPairs
from theme_engine.engine.fuzzy import (
    WholeTextRule,
    check_long_pairs,
    confirm_candidates,
    fetched_verdicts,
    link_jaccard,
    long_pair_jaccard,
    merge_fuzzy,
)
from theme_engine.engine.minhash import MinHashParams, jaccard

OPENING = "Terms of use: this archive is provided as is, without warranty of any kind, by its keepers. " * 6
BODIES = [
    " ".join(f"{w}{i}" for i in range(k, k + 300) for w in ("river", "stone")) for k in range(0, 3000, 500)
]
TEXTS = {
    0: OPENING + BODIES[0],
    1: OPENING + BODIES[1],  # shares the opening only
    2: "Mirrored copy. " + BODIES[2],
    3: "Another header entirely. " + BODIES[2] + " footer",  # the same body
    4: "a short text",
    5: "a short text!",
}


def fetch(docs):
    return {int(d): TEXTS[int(d)] for d in docs}


def is_long(texts):
    return np.array([len(t) > 200 for t in texts])


VERDICTS = fetched_verdicts(fetch, is_long, MinHashParams())


def _pairs(i, j, cos, kind):
    return HybridPairs(np.array(i), np.array(j), np.array(cos, np.float32), np.array(kind, np.int8), len(i), 0, 0)


def test_a_shared_opening_is_not_evidence_but_a_shared_body_is() -> None:
    hp = _pairs([0, 2, 4, 0], [1, 3, 5, 4], [1.0, 0.97, 0.99, 0.7], [KIND_NEAR, KIND_NEAR, KIND_NEAR, KIND_LEXICAL])
    out, check = check_long_pairs(hp, WholeTextRule(), VERDICTS)
    assert list(zip(out.i.tolist(), out.j.tolist())) == [(2, 3), (4, 5), (0, 4)]
    assert out.kind.tolist() == [KIND_FUZZY, KIND_NEAR, KIND_LEXICAL]  # short pairs and light edits keep their rule
    assert (check.checked, check.confirmed, check.rejected) == (2, 1, 1)


def test_candidates_are_confirmed_by_exact_jaccard_with_a_long_text() -> None:
    fz = confirm_candidates(np.array([0, 2, 4]), np.array([1, 3, 5]), WholeTextRule(), VERDICTS)
    assert fz.i.tolist() == [2] and fz.j.tolist() == [3] and fz.jaccard[0] >= 0.8
    assert fz.candidates == 3 and fz.confirmed == 1  # (4, 5): two short texts are not the fuzzy rule's


def test_merge_adds_only_new_pairs_and_link_jaccard() -> None:
    hp = _pairs([2], [3], [0.97], [KIND_FUZZY])
    fz = confirm_candidates(np.array([2, 0]), np.array([3, 2]), WholeTextRule(threshold=0.0), VERDICTS)
    out = merge_fuzzy(hp, fz, cos=lambda i, j: np.full(i.size, 0.5))
    assert list(zip(out.i.tolist(), out.j.tolist(), out.kind.tolist())) == [(2, 3, KIND_FUZZY), (0, 2, KIND_FUZZY)]
    assert out.cos.tolist() == [np.float32(0.97), 0.5]
    lj = link_jaccard(np.array([-1, -1, -1, 2]), lambda a, b: jaccard([TEXTS[int(x)] for x in a], [TEXTS[int(x)] for x in b]))
    assert np.isnan(lj[:3]).all() and lj[3] >= 0.8


def test_long_pair_jaccard_asks_each_text_once_and_skips_short_pairs() -> None:
    asked: list[str] = []

    def counting(texts):
        asked.extend(texts)
        return is_long(texts)

    a, b = [TEXTS[0], TEXTS[4], TEXTS[2]], [TEXTS[1], TEXTS[5], TEXTS[0]]
    with_long, jac = long_pair_jaccard(a, b, counting, MinHashParams())
    assert with_long.tolist() == [True, False, True]
    assert np.isnan(jac[1]) and jac[0] == jaccard([a[0]], [b[0]])[0] and jac[2] == jaccard([a[2]], [b[2]])[0]
    assert sorted(asked) == sorted(set(a + b))  # TEXTS[0] appears twice, tokenized once
