"""The candidate pairs' cap and screen as a shuffle by document bucket (engine/candidates.py) give
what capping and screening all the pairs at once gives (engine.dedup.cap_candidates, the screen
of hybrid_pairs, engine.update.top_candidates)."""

from __future__ import annotations

import numpy as np
import pytest

from theme_engine.engine.candidates import cap_bucket, screen_bucket, split_for_cap
from theme_engine.engine.dedup import cap_candidates
from theme_engine.engine.lexical import WordIndex
from theme_engine.engine.partition import merge_pairs
from theme_engine.engine.update import load_top_parts, save_top_part, top_candidates

T = 0.9


def _pairs(rng: np.random.Generator, n: int, m: int):
    """m pairs among n documents at cosines in [0.6, 1) on a coarse grid (many ties), some found
    in several partitions (copies, in either order, one a rounding lower), and self pairs."""
    i, j = rng.integers(0, n, m), rng.integers(0, n, m)
    s = (0.6 + 0.4 * rng.integers(0, 40, m) / 40).astype(np.float32)
    copy = rng.random(m) < 0.3
    ci, cj = j[copy], i[copy]
    cs = np.nextafter(s[copy], np.float32(0))
    parts = np.array_split(np.arange(m), 4)
    return [(i[p], j[p], s[p]) for p in parts] + [(ci, cj, cs)]


def _texts(n: int, rng: np.random.Generator) -> list[str]:
    base = [" ".join(f"w{rng.integers(0, 30)}" for _ in range(rng.integers(1, 14))) for _ in range(n // 3 + 1)]
    return [base[k % len(base)] + ("" if rng.random() < 0.5 else f" extra{k % 3}") for k in range(n)]


@pytest.mark.parametrize("seed, buckets, neighbors", [(0, 1, 4), (1, 3, 2), (2, 7, 16), (3, 4, 1)])
def test_shuffle_equals_capping_and_screening_at_once(seed: int, buckets: int, neighbors: int, tmp_path) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    found = _pairs(rng, n, 4000)
    texts = _texts(n, rng)
    words = WordIndex.from_texts(np.arange(n), texts, 11)

    # at once, as the driver did
    i, j, s = merge_pairs(found)
    keep = cap_candidates(i, j, s, T, neighbors)
    i, j, s = i[keep], j[keep], s[keep]
    below = s < np.float32(T)
    cand = np.flatnonzero(below)
    passed = cand[words.screen(i[cand], j[cand], 3, 8)]
    top = top_candidates(i, j, s, T, n, neighbors)

    # as the tasks do: split each search task's pairs, cap per bucket, screen per owner
    split = [split_for_cap(p, buckets) for p in found]
    capped = [cap_bucket([sp[b] for sp in split], b, buckets, T, neighbors) for b in range(buckets)]
    screened = [screen_bucket([c.outgoing[b] for c in capped], T, words.take, 3, 8) for b in range(buckets)]

    assert sum(x.candidates for x in screened) == i.size
    assert sum(x.checked for x in screened) == cand.size
    near = merge_pairs([x.near for x in screened])
    assert np.array_equal(near[0], i[~below]) and np.array_equal(near[1], j[~below]) and np.array_equal(near[2], s[~below])
    left = merge_pairs([x.compare for x in screened])
    assert np.array_equal(left[0], i[passed]) and np.array_equal(left[1], j[passed]) and np.array_equal(left[2], s[passed])
    assert 0 < passed.size < cand.size  # the screen ruled some out, not all
    # each bucket's best candidate cosines saved as a part (as the cap tasks do), read back whole
    for b, c in enumerate(capped):
        save_top_part(tmp_path / f"part-{b}.npz", c.docs, c.top)
    np.testing.assert_array_equal(load_top_parts(tmp_path, n), top)
    assert not list(tmp_path.glob("*.tmp*"))
    last = max(int(c.docs.max()) for c in capped if c.docs.size)
    with pytest.raises(ValueError, match="outside"):  # parts of a larger corpus than asked for
        load_top_parts(tmp_path, last)


def test_no_pairs_and_near_pairs_only() -> None:
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    split = split_for_cap(empty, 3)
    c = cap_bucket([split[1]], 1, 3, T, 4)
    assert c.docs.size == 0 and c.top.shape == (0, 4) and all(p[0].size == 0 for p in c.outgoing)
    x = screen_bucket([], T, None, 3, 8)
    assert x.candidates == x.checked == x.compared == 0
    near = (np.array([5, 2]), np.array([1, 9]), np.array([0.95, 0.99], np.float32))
    split = split_for_cap(near, 2)
    assert [sorted(p[0].tolist()) for p in split] == [[2], [1, 2]]  # (1, 5) in its one bucket, (2, 9) in both
    caps = [cap_bucket([split[b]], b, 2, T, 4) for b in range(2)]
    out = [screen_bucket([c.outgoing[b] for c in caps], T, None, 3, 8) for b in range(2)]
    assert sorted(zip(*[np.concatenate([o.near[k] for o in out]).tolist() for k in range(2)])) == [(1, 5), (2, 9)]


def test_word_indexes_built_in_other_processes_agree(tmp_path) -> None:
    """Word indexes are saved by several tasks (processes) and screened together: the word keys
    may not depend on the process (Python's string hash is seeded per process)."""
    import os
    import subprocess
    import sys

    texts = ["the cat sat on the mat", "a b a b a", "één twee drie"]
    here = WordIndex.from_texts(np.arange(3), texts, 11)
    code = (
        "import sys, numpy as np\nfrom pathlib import Path\nfrom theme_engine.engine.lexical import WordIndex\n"
        f"WordIndex.from_texts(np.arange(3), {texts!r}, 11).save(Path(sys.argv[1]))\n"
    )
    for seed in ("1", "2"):
        out = tmp_path / seed
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, env={**os.environ, "PYTHONHASHSEED": seed})
        np.testing.assert_array_equal(WordIndex.open(out).keys, here.keys)
