"""Whole-text fuzzy duplicates: character shingles, MinHash signatures, LSH bands, exact Jaccard.

A document's text is folded as exact-duplicate detection folds it (:func:`engine.corpus.fold_text`)
and cut into every run of ``shingle`` characters (a text shorter than that is one shingle). Each
shingle is hashed to 64 bits; a document's MinHash signature holds, for each of
``bands x rows`` hash functions, the least hash over its shingles; two documents whose Jaccard
similarity (of their shingle sets) is J agree on each signature entry with probability J.

Banding (locality-sensitive hashing): a pair is a candidate when all ``rows`` entries of one of
the ``bands`` bands agree, which happens with probability ``1 - (1 - J**rows)**bands`` — an S curve
steepest near ``(1 / bands) ** (1 / rows)``. NeMo Curator's scheme for web text
(:data:`NEMO_CURATOR`: 24-character shingles, 20 bands of 13) rises near 0.8; the engine's default
spends the same 260 hash functions as 52 bands of 5, which finds a pair of Jaccard 0.6 with
probability 0.985 (0.8: ~1.0), so that the engine's confirmation threshold (0.6,
``dedup.text_threshold``) is reached by the LSH too (``bench/longdup.py`` measures both). Every
candidate is then confirmed by its exact Jaccard (:func:`jaccard`), so the LSH only decides which
pairs are looked at, never which count.

The signature kernel is written against an array namespace (``xp``: numpy, cupy, array-api-strict):
the text is turned into code points on the host, everything after that runs on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from .corpus import fold_text
from .device import to_numpy

@dataclass(frozen=True)
class MinHashParams:
    """The shingles, signatures and bands of the fuzzy search."""

    shingle: int = 24  # characters a shingle
    bands: int = 52
    rows: int = 5  # signature entries a band
    seed: int = 0  # the hash functions; fixed, so signatures of two runs compare

    def __post_init__(self) -> None:
        for name in ("shingle", "bands", "rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"minhash {name} must be at least 1, got {getattr(self, name)}")

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    @property
    def knee(self) -> float:
        """The Jaccard similarity where the candidate probability rises fastest, ~(1/b)^(1/r)."""
        return (1.0 / self.bands) ** (1.0 / self.rows)

    def probability(self, jaccard: float | np.ndarray) -> float | np.ndarray:
        """Probability that a pair of Jaccard similarity ``jaccard`` becomes a candidate."""
        return 1.0 - (1.0 - np.asarray(jaccard, dtype=np.float64) ** self.rows) ** self.bands

    def recall_point(self, recall: float = 0.99) -> float:
        """The least Jaccard similarity at which a pair is a candidate with probability ``recall``."""
        if not 0 < recall < 1:
            raise ValueError(f"recall must be in (0, 1), got {recall}")
        return float((1.0 - (1.0 - recall) ** (1.0 / self.bands)) ** (1.0 / self.rows))


NEMO_CURATOR = MinHashParams(shingle=24, bands=20, rows=13)  # the reference for web text (candidates from ~0.8)


def _constants(params: MinHashParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Odd 64-bit multipliers of the shingle hash (one per character), and the hash functions'
    multipliers and offsets (one per signature entry), and the band mixers (one per row)."""
    rng = np.random.default_rng(np.random.SeedSequence([params.seed, params.shingle, params.bands, params.rows]))
    draw = lambda n: rng.integers(0, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # noqa: E731
    return draw(params.shingle), draw(params.num_perm), draw(params.num_perm), draw(params.rows)


def folded_codes(texts: Sequence[str], shingle: int) -> tuple[np.ndarray, np.ndarray]:
    """The folded texts' code points (uint32), each text followed by ``shingle - 1`` zeros (the
    last by ``shingle``), and each text's folded length: a shingle never reaches into the next
    text, and the shingle of a text shorter than ``shingle`` ends in zeros."""
    pad = "\0" * (shingle - 1)
    folded = [fold_text(t) for t in texts]
    lengths = np.fromiter((len(f) for f in folded), dtype=np.int64, count=len(folded))
    joined = pad.join(folded) + pad + "\0"  # one more: an empty last text still has a whole shingle
    codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return codes, lengths


def _mix64(h: Any, xp: Any) -> Any:
    """The splitmix64 finaliser: every input bit moves every output bit. Operators only (``^``,
    ``>>``, ``*``): their names do not vary across numpy, cupy and array-api-strict."""
    c1 = xp.asarray(0xBF58476D1CE4E5B9, dtype=xp.uint64)
    c2 = xp.asarray(0x94D049BB133111EB, dtype=xp.uint64)
    s30, s27, s31 = (xp.asarray(v, dtype=xp.uint64) for v in (30, 27, 31))
    h = (h ^ (h >> s30)) * c1
    h = (h ^ (h >> s27)) * c2
    return h ^ (h >> s31)


def shingle_hashes(codes: np.ndarray, lengths: np.ndarray, params: MinHashParams, xp: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    """64-bit hashes of every shingle (on ``xp``), and each text's first shingle and number of
    shingles (host), from the host's :func:`folded_codes`: a polynomial in the ``shingle`` code
    points with random odd multipliers, then mixed."""
    k = params.shingle
    mult = _constants(params)[0]
    counts = np.maximum(lengths - k + 1, 1)
    starts_text = np.concatenate([[0], np.cumsum(lengths + k - 1)[:-1]]).astype(np.int64)
    span = int(codes.shape[0]) - k + 1  # windows that start anywhere in the padded codes
    c = xp.asarray(np.asarray(codes, dtype=np.uint64))
    h = xp.zeros((max(span, 0),), dtype=xp.uint64)
    for t in range(k):
        h = h + c[t : t + span] * xp.asarray(int(mult[t]), dtype=xp.uint64)
    h = _mix64(h, xp)
    # the windows that are shingles: counts[d] of them from each text's start
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    take = np.repeat(starts_text - first, counts) + np.arange(int(counts.sum()), dtype=np.int64)
    return xp.take(h, xp.asarray(take), axis=0), first, counts


def signatures(texts: Sequence[str], params: MinHashParams = MinHashParams(), xp: Any = np, max_cells: int = 1 << 17) -> np.ndarray:
    """MinHash signatures of ``texts``: uint32, (len(texts), bands x rows), on the host.

    Entry p of a document is the top 32 bits of ``min over its shingles s of (a_p * s + b_p) mod
    2**64`` (multiply-add hashing of the mixed 64-bit shingle hash). Documents are taken in order
    of shingle count, a group at a time as a (documents x longest) matrix padded by repeating each
    document's first shingle (a repeat cannot change a minimum), so the work stays array-shaped
    for any namespace; one entry at a time over a matrix of about ``max_cells`` (1 MiB by
    default: it stays in cache, which made it ~10x faster than all entries at once)."""
    n = len(texts)
    P = params.num_perm
    out = np.zeros((n, P), dtype=np.uint32)
    if n == 0:
        return out
    _, a_np, b_np, _ = _constants(params)
    codes, lengths = folded_codes(texts, params.shingle)
    hashes, first, counts = shingle_hashes(codes, lengths, params, xp)
    order = np.argsort(counts, kind="stable")
    a = [xp.asarray(int(v), dtype=xp.uint64) for v in a_np]
    b = [xp.asarray(int(v), dtype=xp.uint64) for v in b_np]
    s32 = xp.asarray(32, dtype=xp.uint64)
    lo = 0
    while lo < n:
        hi = lo + 1  # documents of similar shingle counts, as many as fit max_cells
        while hi < n and (hi - lo + 1) * int(counts[order[hi]]) <= max_cells:
            hi += 1
        docs = order[lo:hi]
        width = int(counts[docs].max())
        col = np.minimum(np.arange(width, dtype=np.int64)[None, :], counts[docs, None] - 1)
        idx = (first[docs, None] + col).reshape(-1)
        H = xp.reshape(xp.take(hashes, xp.asarray(idx), axis=0), (len(docs), width))
        mins = []
        for p in range(P):
            Y = H * a[p]
            Y += b[p]
            mins.append(xp.min(Y, axis=1))
        sig = xp.stack(mins, axis=1) >> s32
        out[docs] = to_numpy(sig).astype(np.uint32)
        lo = hi
    return out


def length_blocks(lengths: Iterable[int], chars: int) -> list[tuple[int, int]]:
    """Texts of ``lengths`` (in order) cut into blocks ``[a, b)`` of about ``chars`` characters each
    (one signature task's work; a block closes once it holds ``chars``); one empty block for none.
    Any weights cut the same way (the bytes of an upload task's files, the rows of a search task's
    partitions)."""
    bounds = [0]
    held = n = 0
    for length in lengths:
        if held >= chars:
            bounds.append(n)
            held = 0
        held += int(length)
        n += 1
    bounds.append(n)
    return list(zip(bounds[:-1], bounds[1:]))


def band_keys(sig: np.ndarray, params: MinHashParams = MinHashParams()) -> np.ndarray:
    """One 64-bit key per document and band (uint64, (n, bands)): the band's ``rows`` entries
    combined by odd multipliers and mixed; equal bands give equal keys."""
    sig = np.asarray(sig, dtype=np.uint32)
    if sig.ndim != 2 or sig.shape[1] != params.num_perm:
        raise ValueError(f"signatures must be (n, {params.num_perm}), got {sig.shape}")
    mix = _constants(params)[3]
    blocks = sig.reshape(sig.shape[0], params.bands, params.rows).astype(np.uint64)
    with np.errstate(over="ignore"):
        keys = (blocks * mix[None, None, :]).sum(axis=2, dtype=np.uint64)
        keys += np.arange(params.bands, dtype=np.uint64)[None, :]  # the band's number, so bands never collide
        return _mix64(keys, np)


def candidate_pairs(keys: np.ndarray, ids: np.ndarray | None = None, full_bucket: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j`` (ids, or row numbers), that share a band key in some band:
    every pair of a bucket of at most ``full_bucket`` documents, each member with the bucket's
    first document beyond that (a bucket that large is one group of copies: the star is enough to
    group them, and keeps the pairs linear). Unique, sorted by ``(i, j)``."""
    keys = np.asarray(keys)
    n = keys.shape[0]
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    out_i, out_j = [], []
    for band in range(keys.shape[1] if keys.ndim == 2 else 0):
        order = np.argsort(keys[:, band], kind="stable")
        k = keys[order, band]
        start = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        size = np.diff(np.r_[start, n])
        for s, m in zip(start[size > 1].tolist(), size[size > 1].tolist()):
            members = ids[order[s : s + m]]
            if m <= full_bucket:
                a, b = np.triu_indices(m, k=1)
                out_i.append(members[a])
                out_j.append(members[b])
            else:
                out_i.append(np.full(m - 1, members[0]))
                out_j.append(members[1:])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = np.concatenate(out_i), np.concatenate(out_j)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    pair = np.unique(np.stack([lo, hi], axis=1), axis=0)
    return pair[:, 0].astype(np.int64), pair[:, 1].astype(np.int64)


def shingle_sets(texts: Sequence[str], params: MinHashParams = MinHashParams()) -> list[np.ndarray]:
    """Each text's shingle hashes, sorted and unique (what :func:`jaccard` compares)."""
    if not texts:
        return []
    codes, lengths = folded_codes(texts, params.shingle)
    hashes, first, counts = shingle_hashes(codes, lengths, params, np)
    return [np.unique(hashes[f : f + c]) for f, c in zip(first.tolist(), counts.tolist())]


def jaccard(a: Sequence[str], b: Sequence[str], params: MinHashParams = MinHashParams()) -> np.ndarray:
    """Exact Jaccard similarity of the shingle sets of each pair of texts ``(a[p], b[p])``
    (float32; 1.0 for two texts whose folded forms are equal)."""
    if len(a) != len(b):
        raise ValueError(f"a and b must pair up: {len(a)} and {len(b)} texts")
    out = np.zeros(len(a), dtype=np.float32)
    if not a:
        return out
    sets = shingle_sets(list(a) + list(b), params)
    for p, (x, y) in enumerate(zip(sets[: len(a)], sets[len(a) :])):
        out[p] = _set_jaccard(x, y)
    return out


def _set_jaccard(x: np.ndarray, y: np.ndarray) -> float:
    """Jaccard similarity of two sorted, unique hash arrays."""
    inter = np.intersect1d(x, y, assume_unique=True).size
    return inter / (x.size + y.size - inter)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """The share of signature entries two documents agree on: MinHash's estimate of Jaccard."""
    return (np.asarray(sig_a) == np.asarray(sig_b)).mean(axis=-1).astype(np.float32)


def brute_force_jaccard_pairs(texts: Sequence[str], threshold: float, params: MinHashParams = MinHashParams()) -> dict[tuple[int, int], float]:
    """Reference: every pair ``(i, j)``, ``i < j``, of exact Jaccard at or above ``threshold``."""
    sets = shingle_sets(texts, params)
    out = {}
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            jac = _set_jaccard(sets[i], sets[j])
            if jac >= threshold:
                out[(i, j)] = jac
    return out


__all__ = [
    "MinHashParams",
    "NEMO_CURATOR",
    "band_keys",
    "brute_force_jaccard_pairs",
    "candidate_pairs",
    "estimated_jaccard",
    "folded_codes",
    "jaccard",
    "shingle_hashes",
    "shingle_sets",
    "signatures",
    "length_blocks",
]
