"""Boilerplate: word n-grams that recur across many long documents of a corpus.

Corpora open and close with the same banners, licences, disclaimers, navigation and templates. A
long document's vector pools its windows (:mod:`engine.windows`), so a 300-word licence before every
article pulls every vector towards the licence and the themes follow the licence, not the bodies.

:func:`find_boilerplate` counts, over a sample of a corpus's long texts, the documents that hold each
word n-gram (``n`` = 8 case-folded words); the n-grams held by at least ``share`` of them (and by at
least ``min_docs``) are the corpus's boilerplate. :meth:`Boilerplate.strip` gives what a model should
read of a long text: the text less the spans those n-grams cover, or the whole text when too little
would remain. This is the idea of CCNet's paragraph deduplication and of exact-substring
deduplication of training data (text repeated across documents carries no information about any of
them), applied only to what the model reads: the stored text, the duplicates' whole-text evidence
and the labels keep the whole text.

A span shared by a few documents is not boilerplate: copies of one document (what the duplicate
search must find) share everything, so ``min_docs`` and ``share`` must stay well above the size of a
group of copies.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

NGRAM = 8  # words per n-gram: long enough that ordinary phrases of a language rarely recur in 5% of documents
WORD = re.compile(r"\w+")
_MULT = np.random.default_rng(np.random.SeedSequence([NGRAM, 0xB01])).integers(0, 2**63, size=NGRAM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def _words(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each word's 32-bit hash (of its case-folded form), start and end (character offsets)."""
    found = [(m.start(), m.end(), zlib.crc32(m.group().casefold().encode("utf-8", "surrogatepass"))) for m in WORD.finditer(text)]
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros(0, dtype=np.uint64), empty, empty
    arr = np.asarray(found, dtype=np.int64)
    return arr[:, 2].astype(np.uint64), arr[:, 0], arr[:, 1]


def ngram_hashes(words: np.ndarray, n: int = NGRAM) -> np.ndarray:
    """One 64-bit hash per run of ``n`` consecutive word hashes (none for fewer than ``n`` words)."""
    m = len(words) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    acc = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            acc += words[j : j + m] * _MULT[j]  # wraps modulo 2**64, as meant
        acc ^= acc >> np.uint64(31)
        acc *= np.uint64(0x94D049BB133111EB)
        acc ^= acc >> np.uint64(29)
    return acc


@dataclass(frozen=True)
class Boilerplate:
    """A corpus's boilerplate n-grams (sorted, unique uint64) and how a long text is stripped of them."""

    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    min_words: int = 2 * NGRAM  # a text keeps its boilerplate unless at least this many words remain without it

    def __bool__(self) -> bool:
        return len(self.hashes) > 0

    @property
    def digest(self) -> str:
        """A short digest of the n-grams (part of the cache key of a vector made without them)."""
        return hashlib.sha256(np.ascontiguousarray(self.hashes, dtype="<u8").tobytes()).hexdigest()[:16]

    def spans(self, text: str) -> list[tuple[int, int]]:
        """The character spans of ``text`` covered by boilerplate n-grams, merged, in order."""
        if not self:
            return []
        words, starts, ends = _words(text)
        grams = ngram_hashes(words)
        hit = np.isin(grams, self.hashes, assume_unique=False)
        if not hit.any():
            return []
        covered = np.zeros(len(words) + 1, dtype=np.int64)  # +1 at an n-gram's first word, -1 past its last
        first = np.flatnonzero(hit)
        np.add.at(covered, first, 1)
        np.add.at(covered, first + NGRAM, -1)
        inside = np.cumsum(covered[:-1]) > 0
        edges = np.diff(np.concatenate([[0], inside.astype(np.int8), [0]]))
        runs = zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1)
        return [(int(starts[a]), int(ends[b])) for a, b in runs]

    def strip(self, text: str) -> tuple[str, int]:
        """What a model should read of ``text``: the text less its boilerplate spans (the pieces
        left joined by a space), and how many words were dropped; the text itself (and 0) when it
        holds no boilerplate or fewer than ``min_words`` words would remain."""
        spans = self.spans(text)
        if not spans:
            return text, 0
        pieces, at = [], 0
        for a, b in spans:
            pieces.append(text[at:a].strip())
            at = b
        pieces.append(text[at:].strip())
        kept = " ".join(p for p in pieces if p)
        left = len(WORD.findall(kept))
        if left < self.min_words:
            return text, 0
        return kept, len(WORD.findall(text)) - left


def find_boilerplate(texts: Iterable[str], share: float = 0.05, min_docs: int = 20) -> Boilerplate:
    """The n-grams held by at least ``share`` of ``texts`` (a sample of a corpus's long texts) and
    by at least ``min_docs`` of them; none when ``share`` is 0 or the texts are fewer than ``min_docs``."""
    if share <= 0:
        return Boilerplate()
    per_doc = [np.unique(ngram_hashes(_words(t)[0])) for t in texts]
    if len(per_doc) < min_docs:
        return Boilerplate()
    grams, docs = np.unique(np.concatenate(per_doc) if per_doc else np.zeros(0, np.uint64), return_counts=True)
    need = max(int(min_docs), int(np.ceil(share * len(per_doc))))
    return Boilerplate(np.ascontiguousarray(grams[docs >= need], dtype=np.uint64))


SAMPLE = 4096  # texts read to find a corpus's boilerplate


def sample_rows(n: int, size: int = SAMPLE) -> np.ndarray:
    """At most ``size`` rows of ``0 .. n-1``, evenly spaced: the same rows for the same corpus."""
    return np.unique(np.linspace(0, n - 1, min(n, size)).round().astype(np.int64)) if n else np.zeros(0, dtype=np.int64)


def corpus_boilerplate(sample: list[str], windows: Any, share: float, min_docs: int) -> Boilerplate:
    """The boilerplate of the texts of ``sample`` longer than the model's window (``windows``: an
    :class:`engine.windows.TextWindows`): what the model reads of a long text only."""
    if share <= 0:
        return Boilerplate()
    long = windows.is_long(sample)
    return find_boilerplate([t for t, is_long in zip(sample, long) if is_long], share, min_docs)
