"""The duplicate search's candidate pairs capped and screened where they are, not in the driver.

With the lexical rule on, the search returns every pair at or above the candidate threshold, and
each document keeps only its ``neighbors`` nearest below the near threshold
(``engine.dedup.cap_candidates``); of those, the light-edit screen (``WordIndex.screen``) rules
out nearly all. Done in one process, that holds every candidate pair (about ``neighbors`` a
document) with its sorting temporaries. Here the same decisions are a shuffle by document bucket
(``document % buckets``), each step a function a Ray task runs on its share:

1. :func:`split_for_cap`: a search task's pairs go to the bucket of each of their documents.
2. :func:`cap_bucket`: a bucket has every pair of its documents, so it ranks them exactly as
   ``cap_candidates`` would and keeps each document's nearest; each kept pair goes on to its
   owner, the bucket of its first (smaller) document. It also gives its documents' best
   below-threshold cosines (``engine.update.top_candidates``'s rows, what an update's cap reads).
3. :func:`screen_bucket`: an owner has each of its pairs once; it counts them and screens the
   below-threshold ones with the documents' word index. Only the near pairs and the few that pass
   the screen (whose texts are then compared) leave it.

The result equals ``cap_candidates`` + ``hybrid_pairs``' screen over all pairs at once
(``tests/engine/test_candidates.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .dedup import order_by_doc_then_cos
from .lexical import WordIndex
from .partition import merge_pairs

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]

_NO_PAIRS: Pairs = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def _take(p: Pairs, keep: np.ndarray) -> Pairs:
    return p[0][keep], p[1][keep], p[2][keep]


def _by_bucket(p: Pairs, to: np.ndarray, buckets: int) -> list[Pairs]:
    """The pairs ``p`` as ``buckets`` lists, pair ``k`` in list ``to[k]`` (input order kept)."""
    order = np.argsort(to, kind="stable")
    bounds = np.searchsorted(to[order], np.arange(buckets + 1))
    return [_take(p, order[x:y]) for x, y in zip(bounds[:-1], bounds[1:])]


def split_for_cap(pairs: Pairs, buckets: int) -> list[Pairs]:
    """``pairs`` (i, j, cos) as ``buckets`` lists: each pair in the bucket of each of its
    documents (once when they share one). Near pairs too: a copy of a pair from another partition
    may fall a rounding below the threshold, and its largest cosine decides."""
    i, j, s = (np.asarray(pairs[0], np.int64), np.asarray(pairs[1], np.int64), np.asarray(pairs[2], np.float32))
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    b_lo, b_hi = lo % buckets, hi % buckets
    second = b_hi != b_lo  # the copy for the other document's bucket
    to = np.concatenate([b_lo, b_hi[second]])
    a, b, c = np.concatenate([lo, lo[second]]), np.concatenate([hi, hi[second]]), np.concatenate([s, s[second]])
    return _by_bucket((a, b, c), to, buckets)


@dataclass
class CapResult:
    """What :func:`cap_bucket` gives: the kept pairs by owner bucket, and the bucket's documents'
    best below-threshold cosines (``docs``, and ``top`` (len(docs), neighbors), best first,
    padded with -inf; documents without such a pair are left out)."""

    outgoing: list[Pairs]
    docs: np.ndarray
    top: np.ndarray


def cap_bucket(parts: list[Pairs], bucket: int, buckets: int, threshold: float, neighbors: int) -> CapResult:
    """Bucket ``bucket``'s share of the pairs (every list :func:`split_for_cap` sent it): merged
    (each pair once, its largest cosine), near pairs kept (by both buckets of a pair), and of the below-threshold pairs those
    among the ``neighbors`` nearest of a document of this bucket (ties: the smaller other id
    first), each sent to its owner (``outgoing[owner]``). A pair both its documents keep is sent
    by both buckets; the owner merges the copies."""
    i, j, s = merge_pairs(parts)
    below = s < np.float32(threshold)
    keep = ~below
    idx = np.flatnonzero(below)
    # each below pair seen from its document(s) in this bucket
    mine_i, mine_j = idx[i[idx] % buckets == bucket], idx[j[idx] % buckets == bucket]
    a = np.concatenate([i[mine_i], j[mine_j]])
    other = np.concatenate([j[mine_i], i[mine_j]])
    which = np.concatenate([mine_i, mine_j])
    sa = s[which]
    order = order_by_doc_then_cos(a, sa, other)
    a, sa, which = a[order], sa[order], which[order]
    start = np.flatnonzero(np.r_[True, a[1:] != a[:-1]]) if a.size else np.zeros(0, np.int64)
    rank = np.arange(a.size) - np.repeat(start, np.diff(np.r_[start, a.size]))
    top_rows = rank < neighbors
    keep[which[top_rows]] = True
    docs = a[start]
    top = np.full((docs.size, neighbors), -np.inf, dtype=np.float32)
    top[np.repeat(np.arange(docs.size), np.diff(np.r_[start, a.size]))[top_rows], rank[top_rows]] = sa[top_rows]
    kept = _take((i, j, s), keep)
    outgoing = _by_bucket(kept, kept[0] % buckets, buckets)
    return CapResult(outgoing, docs, top)


@dataclass
class Screened:
    """What :func:`screen_bucket` gives of an owner's pairs: the near pairs, the below-threshold
    pairs the screen leaves to a comparison of their texts, and the counts ``hybrid_pairs``
    keeps (pairs, pairs screened, pairs left)."""

    near: Pairs
    compare: Pairs
    candidates: int
    checked: int

    @property
    def compared(self) -> int:
        return int(self.compare[0].size)


def screen_bucket(
    parts: list[Pairs], threshold: float, words_of: Callable[[np.ndarray], WordIndex] | None, max_edits: int, min_words: int
) -> Screened:
    """An owner's pairs (every list :func:`cap_bucket` sent it), each once, split into the near
    ones and the below-threshold ones the light-edit screen cannot rule out (``words_of(sorted
    ids)``: the word index of those documents; None: none is left)."""
    pairs = merge_pairs(parts) if parts else _NO_PAIRS
    below = pairs[2] < np.float32(threshold)
    near = _take(pairs, ~below)
    cand = _take(pairs, below)
    if words_of is None or cand[0].size == 0:
        return Screened(near, _take(cand, np.zeros(cand[0].size, bool)), int(pairs[0].size), int(cand[0].size))
    ok = words_of(np.unique(np.concatenate(cand[:2]))).screen(cand[0], cand[1], max_edits, min_words)
    return Screened(near, _take(cand, ok), int(pairs[0].size), int(cand[0].size))


def word_parts_reader(parts: list[tuple[str, int, int]]) -> Callable[[np.ndarray], WordIndex]:
    """``words_of(sorted ids)`` over word indexes saved in parts (``(folder, first id, end id)``,
    ascending and disjoint): each part memory-mapped when first asked, the ids' entries taken."""
    opened: dict[int, WordIndex] = {}
    starts = np.asarray([p[1] for p in parts], dtype=np.int64)
    ends = np.asarray([p[2] for p in parts], dtype=np.int64)

    def words_of(ids: np.ndarray) -> WordIndex:
        ids = np.asarray(ids, dtype=np.int64)
        taken = []
        for k in np.flatnonzero((starts < (ids[-1] + 1 if ids.size else 0)) & (ends > (ids[0] if ids.size else 0))).tolist():
            lo, hi = np.searchsorted(ids, [starts[k], ends[k]])
            if hi > lo:
                if k not in opened:
                    opened[k] = WordIndex.open(Path(parts[k][0]))
                taken.append(opened[k].take(ids[lo:hi]))
        return WordIndex.concat(taken)

    return words_of
