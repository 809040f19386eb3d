"""The duplicate search's pairs merged as the partitions land, capped along the way, equal the
pairs merged at once and capped at the end (the driver never holds every partition's pairs)."""

from __future__ import annotations

import numpy as np
import pytest

from theme_engine.cluster.runtime.stages.dedup import _CappedMerge
from theme_engine.engine.dedup import cap_candidates
from theme_engine.engine.partition import merge_pairs


@pytest.mark.parametrize("seed", range(5))
def test_folding_along_the_way_equals_capping_at_the_end(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, m = 300, 6_000
    i, j = rng.integers(0, n, m), rng.integers(0, n, m)
    # a pair's cosine is the same wherever it is found (copies of it in several partitions: the
    # premise of capping inside each partition, which this merge shares), with ties among pairs
    grid = rng.permutation(np.linspace(0.5, 1.0, 40)).astype(np.float32)
    cos = grid[(np.minimum(i, j) * 7919 + np.maximum(i, j)) % 40]
    pieces = []
    for piece in np.array_split(rng.permutation(m), 12):
        pick = np.concatenate([piece, rng.choice(m, 50)])  # pairs in several partitions, in either order
        flip = rng.random(pick.size) < 0.5
        pieces.append((np.where(flip, j[pick], i[pick]), np.where(flip, i[pick], j[pick]), cos[pick]))
    cap = (0.9, 4)
    merged = _CappedMerge(cap, fold_rows=700)
    for p in pieces:
        merged.add(p)
    got = merged.result()
    a, b, s = merge_pairs(pieces)
    keep = cap_candidates(a, b, s, *cap)
    want = (a[keep], b[keep], s[keep])
    assert all(np.array_equal(x, y) for x, y in zip(got, want))
    assert len(want[0]) < len(a)  # the cap dropped pairs
    # without a cap: the plain union
    plain = _CappedMerge(None, fold_rows=700)
    for p in pieces:
        plain.add(p)
    assert all(np.array_equal(x, y) for x, y in zip(plain.result(), (a, b, s)))
