"""Lexical evidence for near-duplicates: is one text a light edit of the other?

Texts are compared as exact-duplicate detection sees them (:func:`engine.corpus.fold_text`:
NFKC, case-folded, punctuation dropped, whitespace folded) and split into words at whitespace.

The light-edit script
---------------------
A *light edit* is one of

  * a **typo**: a word replaced by one within one character edit (insertion, deletion,
    substitution or transposition of adjacent characters; two when both words have 8 or more
    characters), the longer word of 3 or more characters, both with the same decimal digits — so
    ``Python 2``/``Python 3`` and ``a``/``I`` are different words, ``the``/``th`` a typo;
  * a **swap** of two adjacent words;
  * a **join** of two adjacent words into one, or a **split** of one into two (``e mail``/``email``,
    what a dropped hyphen or space does);
  * a **drop** or an **insertion** of one word — but never a drop and an insertion side by side:
    that is a word *replaced* by a different one (``Tamil``/``Tajik``, the next verse's name, another
    package's language pair), which is what tells distinct documents of one template apart.

:func:`edit_distance` is the fewest light edits that turn one word sequence into the other (ties:
the fewest drops and insertions), and how many of them are drops or insertions; ``None`` when more
than ``max_edits`` are needed. Two texts are **light edits** of each other (:func:`light_edit`)
when at most ``max_edits`` edits do it, and none drops or inserts a word unless the shorter text
has at least ``min_words`` words: a word more or less is a light edit of a sentence, not of a
three-word title (``Inter font family`` and ``Inter font family (VF)`` are two packages). Typos,
swaps, joins and splits are allowed at any length.

Why not a Jaccard of character n-grams: two distinct documents written from one template
(``Apertium translation data for the Icelandic-English pair`` / ``… Swedish-Danish pair``) share as
many n-grams as a copy with three typos, so any n-gram threshold that keeps the copies keeps the
templates (measured: ``bench/dedup_quality.py``). The edit script tells them apart: the template
pair needs a replaced word.

Scale: :class:`WordIndex` holds, for the documents of the candidate pairs only, their word
counts and word multisets as sorted 64-bit keys (8 bytes a word, no text): :meth:`WordIndex.screen`
rejects, vectorised, every pair whose words differ by more than the edits allowed can explain;
only the texts of the few pairs left are read for the banded dynamic programme of
:func:`light_edit`. :func:`char_jaccard` gives the Jaccard similarity of character 3-gram sets,
reported alongside (not part of the rule).

Nothing here assumes a language: words are whitespace-separated runs, characters are code points.
A script written without spaces (Chinese, Japanese, Thai) makes each run one "word", so such texts
are light edits of each other only within one or two character edits.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from .corpus import fold_text

_LIGHT = 16  # cost of one light edit in the programme; a drop or insertion costs _LIGHT + 1
_MAX_EDITS = 15  # cost // _LIGHT counts edits, cost % _LIGHT the drops/insertions among them
# Without drops or insertions an edit changes the multiset of a text's non-space characters by at
# most 4 (a typo: two substitutions at most; swaps, joins and splits move only spaces)
_CHAR_PER_EDIT = 4
_CHAR_BINS = 64  # character counts kept per document, by code point mod 64: a lower bound on L1


# ----------------------------------------------------------------------------- the edit script


def _osa(x: str, y: str, cap: int) -> int:
    """Optimal-string-alignment distance of two words, or ``cap + 1`` once it exceeds ``cap``."""
    if abs(len(x) - len(y)) > cap:
        return cap + 1
    prev2: list[int] = []
    prev = list(range(len(y) + 1))
    for i in range(1, len(x) + 1):
        cur = [i] + [0] * len(y)
        for j in range(1, len(y) + 1):
            v = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x[i - 1] != y[j - 1]))
            if i > 1 and j > 1 and x[i - 1] == y[j - 2] and x[i - 2] == y[j - 1]:
                v = min(v, prev2[j - 2] + 1)
            cur[j] = v
        if min(cur) > cap:
            return cap + 1
        prev2, prev = prev, cur
    return prev[-1]


@lru_cache(maxsize=1 << 16)
def is_typo(x: str, y: str) -> bool:
    """Whether folded word ``y`` is a typo of ``x`` (see the module docstring)."""
    if x == y or max(len(x), len(y)) < 3:
        return False
    short = min(len(x), len(y))
    if short < 8 and (short == 0 or (x[0] != y[0] and x[-1] != y[-1])):
        return False  # one character edit cannot change both ends of a word of 3 or more
    if [c for c in x if c.isdecimal()] != [c for c in y if c.isdecimal()]:
        return False
    return _osa(x, y, 2 if short >= 8 else 1) <= (2 if short >= 8 else 1)


def edit_distance(a: Sequence[str], b: Sequence[str], max_edits: int = 3) -> tuple[int, int] | None:
    """``(edits, drops)``: the fewest light edits turning word sequence ``a`` into ``b`` and, among
    scripts of that many edits, the fewest drops + insertions; ``None`` above ``max_edits``.

    A dynamic programme over (words of ``a`` used, words of ``b`` used, last edit: other / drop /
    insertion) — a drop next to an insertion is not allowed — restricted to the band
    ``|i - j| <= max_edits`` (every edit moves one diagonal at most). Cost of a script:
    ``16 x edits + drops``, so the minimum is the lexicographic one."""
    if not 0 <= max_edits <= _MAX_EDITS:
        raise ValueError(f"max_edits must be in 0..{_MAX_EDITS}, got {max_edits}")
    n, m = len(a), len(b)
    if abs(n - m) > max_edits:
        return None
    inf = 1 << 30
    limit = max_edits * (_LIGHT + 1)  # any partial script costing more can be cut: costs only grow
    w = max_edits
    step = _LIGHT + 1  # a drop or an insertion
    # per row i, full-width lists over j (inf outside the band): the cost after an edit other than
    # a drop or insertion (O), after a drop (D), after an insertion (I, this row only: an insertion
    # extends along the row), and the least of the three (M); the rows i - 1 (…1) and i - 2 (…2,
    # for swaps and joins). Plain comparisons rather than min(): this loop is the dedup stage's
    # lexical cost.
    M2 = [inf] * (m + 1)
    O1, D1, M1 = [inf] * (m + 1), [inf] * (m + 1), [inf] * (m + 1)
    O1[0] = M1[0] = 0
    lens_b = [len(y) for y in b]
    for j in range(1, min(m, w) + 1):  # insertions only
        M1[j] = j * step
    low1 = 0  # the smallest cost in row i - 1
    for i in range(1, n + 1):
        O, D, I, M = [inf] * (m + 1), [inf] * (m + 1), [inf] * (m + 1), [inf] * (m + 1)
        x = a[i - 1]
        xp = a[i - 2] if i > 1 else None
        nx = len(x)
        nj = nx + len(xp) if xp is not None else -1  # the length a join of a[i-2], a[i-1] has
        lo, hi = max(0, i - w), min(m, i + w)
        if lo == 0:
            u, v = O1[0], D1[0]
            D[0] = M[0] = (u if u < v else v) + step
            lo = 1
        for j in range(lo, hi + 1):
            y = b[j - 1]
            dm = M1[j - 1]
            if x == y:
                other = dm
            elif dm + _LIGHT <= limit and is_typo(x, y):
                other = dm + _LIGHT
            else:
                other = inf
            if j > 1:
                yp = b[j - 2]
                if x == yp and xp == y and x != y:  # swap
                    v = M2[j - 2] + _LIGHT
                    if v < other:
                        other = v
                if nx == lens_b[j - 2] + lens_b[j - 1] and x.startswith(yp) and x.endswith(y):  # split of a[i-1]
                    v = M1[j - 2] + _LIGHT
                    if v < other:
                        other = v
            if lens_b[j - 1] == nj and y.startswith(xp) and y.endswith(x):  # join of a[i-2], a[i-1]
                v = M2[j - 1] + _LIGHT
                if v < other:
                    other = v
            O[j] = other
            u, v = O1[j], D1[j]
            drop = (u if u < v else v) + step  # drop a[i-1]: not right after an insertion
            D[j] = drop
            u, v = O[j - 1], I[j - 1]
            ins = (u if u < v else v) + step  # insert b[j-1]: not right after a drop
            I[j] = ins
            if drop < other:
                other = drop
            M[j] = other if other < ins else ins
        low = min(M)
        if low > limit and low1 > limit:
            return None  # every script through these two rows already costs too much
        M2 = M1
        O1, D1, M1 = O, D, M
        low1 = low
    cost = M1[m]
    if cost > limit:
        return None
    edits, drops = divmod(cost, _LIGHT)  # drops <= edits <= 15: no carry
    return int(edits), int(drops)


def drop_budget(words: int, max_edits: int, min_words: int) -> int:
    """Most word drops/insertions allowed between texts whose shorter one has ``words`` words."""
    return max_edits if words >= min_words else 0


def light_edit(a: str, b: str, max_edits: int = 3, min_words: int = 8, *, screened: bool = False) -> int:
    """The light edits between two texts when they are light edits of each other (see the
    module docstring), else -1. ``screened``: the pair passed :meth:`WordIndex.screen` with the
    same ``max_edits`` and ``min_words``, so its tests are not repeated here."""
    wa, wb = fold_text(a).split(), fold_text(b).split()
    if not wa or not wb:
        return -1
    if wa == wb:
        return 0
    if not screened and not _may_be_light_edit(wa, wb, max_edits, min_words):
        return -1
    found = edit_distance(wa, wb, max_edits)
    if found is None or found[1] > drop_budget(min(len(wa), len(wb)), max_edits, min_words):
        return -1
    return found[0]


def light_edits(
    a: Sequence[str], b: Sequence[str], max_edits: int = 3, min_words: int = 8, screened: bool = False
) -> np.ndarray:
    """:func:`light_edit` of each pair ``(a[p], b[p])``, as int8 (-1: not a light edit)."""
    if len(a) != len(b):
        raise ValueError(f"a and b disagree: {len(a)} vs {len(b)}")
    return np.fromiter(
        (light_edit(x, y, max_edits, min_words, screened=screened) for x, y in zip(a, b)), dtype=np.int8, count=len(a)
    )


def _may_be_light_edit(wa: list[str], wb: list[str], max_edits: int, min_words: int) -> bool:
    """The necessary conditions :meth:`WordIndex.screen` tests, for one pair of folded word lists."""
    if abs(len(wa) - len(wb)) > max_edits:
        return False
    ca, cb = Counter(wa), Counter(wb)
    if sum(((ca - cb) + (cb - ca)).values()) > 3 * max_edits:
        return False
    if drop_budget(min(len(wa), len(wb)), max_edits, min_words) == 0:
        xa, xb = Counter("".join(wa)), Counter("".join(wb))
        return sum(((xa - xb) + (xb - xa)).values()) <= _CHAR_PER_EDIT * max_edits
    return True


def char_jaccard(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Jaccard similarity (float32) of the character 3-gram sets of texts ``a[p]`` and ``b[p]``
    (folded, padded with a space each side); 0 where both are empty. Python sets of 3-character
    slices (faster than sorting packed code points per text: bench/README.md)."""
    if len(a) != len(b):
        raise ValueError(f"a and b disagree: {len(a)} vs {len(b)}")
    out = np.zeros(len(a), dtype=np.float32)
    for k, (x, y) in enumerate(zip(a, b)):
        ga, gb = _trigrams(fold_text(x)), _trigrams(fold_text(y))
        inter = len(ga & gb)
        union = len(ga) + len(gb) - inter
        if union:
            out[k] = inter / union
    return out


def pair_evidence(a: Sequence[str], b: Sequence[str], max_edits: int = 3, min_words: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """What a duplicate's record shows of each pair ``(a[p], b[p])``: :func:`char_jaccard` and
    :func:`light_edits` (unscreened)."""
    return char_jaccard(a, b), light_edits(a, b, max_edits, min_words, False)


# ----------------------------------------------------------------------------- many pairs


def _intersections(offsets: np.ndarray, keys: np.ndarray, a: np.ndarray, b: np.ndarray, block: int = 1 << 22) -> np.ndarray:
    """|K_a ∩ K_b| for sorted unique key runs (CSR ``offsets``/``keys``), pair by pair, vectorised
    in blocks of about ``block`` keys."""
    out = np.zeros(a.size, dtype=np.int64)
    if a.size == 0:
        return out
    sizes = np.diff(offsets)
    la, lb = sizes[a], sizes[b]
    cum = np.cumsum(la + lb)
    start = 0
    while start < a.size:
        base = cum[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(cum, base + block, side="right")))
        tags, vals = [], []
        for loc, lens in ((a[start:stop], la[start:stop]), (b[start:stop], lb[start:stop])):
            tag = np.repeat(np.arange(loc.size, dtype=np.int64), lens)
            seg = np.zeros(loc.size, dtype=np.int64)
            np.cumsum(lens[:-1], out=seg[1:])
            idx = np.arange(int(lens.sum()), dtype=np.int64) - seg[tag] + offsets[loc][tag]
            tags.append(tag)
            vals.append(keys[idx])
        tag = np.concatenate(tags)
        val = np.concatenate(vals)
        order = np.lexsort((val, tag))
        tag, val = tag[order], val[order]
        same = (tag[1:] == tag[:-1]) & (val[1:] == val[:-1])  # runs are unique: one shared key each
        out[start:stop] = np.bincount(tag[1:][same], minlength=stop - start)
        start = stop
    return out


def _csr(per_doc: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(per_doc) + 1, dtype=np.int64)
    np.cumsum([k.size for k in per_doc], out=offsets[1:])
    keys = np.concatenate(per_doc) if per_doc else np.zeros(0, np.uint64)
    return offsets, keys.astype(np.uint64, copy=False)


def _trigrams(folded: str) -> set[str]:
    if not folded:
        return set()
    padded = f" {folded} "
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


@lru_cache(maxsize=1 << 20)
def _stable_hash(word: str) -> int:
    """A 64-bit hash of ``word`` that every process agrees on (Python's ``hash`` of a string is
    seeded per process, and word indexes are built by several)."""
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _word_keys(words: list[str]) -> np.ndarray:
    """The word multiset as unique 64-bit keys: (word, its occurrence number) hashed, the same in
    every process; a collision can only let a pair through to the exact test."""
    seen: dict[str, int] = {}
    out = []
    for wd in words:
        c = seen.get(wd, 0)
        seen[wd] = c + 1
        out.append(_stable_hash(wd) if c == 0 else _stable_hash(f"{wd}\x1f{c}"))
    return np.unique(np.array(out, dtype=np.uint64))


@dataclass
class WordIndex:
    """Word counts and word multisets (sorted 64-bit keys, CSR: 8 bytes a word) of documents
    ``rows`` (sorted, unique global ids): enough to rule out, vectorised, the pairs that cannot be
    light edits of each other, without holding their texts."""

    rows: np.ndarray
    n_words: np.ndarray
    offsets: np.ndarray
    keys: np.ndarray
    chars: np.ndarray  # (len(rows), 64) uint8: non-space characters by code point mod 64, capped at 255
    # documents of this many words or more have no character counts (zeros): None, every document
    char_words: int | None = None

    @classmethod
    def from_texts(cls, rows: Sequence[int] | np.ndarray, texts: Sequence[str], char_words: int | None = None) -> "WordIndex":
        """The index of documents ``rows`` (sorted, unique) with texts ``texts``. ``char_words``:
        count characters only for documents of fewer words (what :meth:`screen`'s character test
        can use: ``min_words + max_edits``); long texts then cost no character counts."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or rows.size != len(texts):
            raise ValueError(f"rows ({rows.shape}) and texts ({len(texts)}) disagree")
        if rows.size > 1 and not (np.diff(rows) > 0).all():
            raise ValueError("rows must be sorted and unique")
        words = [fold_text(t).split() for t in texts]
        offsets, keys = _csr([_word_keys(w) for w in words])
        n_words = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
        if char_words is None:
            chars = _char_counts(words)
        else:
            chars = np.zeros((len(words), _CHAR_BINS), dtype=np.uint8)
            short = np.flatnonzero(n_words < char_words)
            chars[short] = _char_counts([words[k] for k in short.tolist()])
        return cls(rows, n_words, offsets, keys, chars, char_words)

    @classmethod
    def concat(cls, parts: Sequence["WordIndex"]) -> "WordIndex":
        """Indexes built batch by batch (ascending, disjoint rows) as one."""
        parts = list(parts)
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.uint64), _no_chars())
        rows = np.concatenate([p.rows for p in parts])
        if rows.size > 1 and not (np.diff(rows) > 0).all():
            raise ValueError("parts must hold ascending, disjoint rows")
        if len({p.char_words for p in parts}) > 1:
            raise ValueError("parts count characters for different word counts")
        offsets = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(np.concatenate([np.diff(p.offsets) for p in parts]), out=offsets[1:])
        keys = np.concatenate([p.keys for p in parts]).astype(np.uint64, copy=False)
        chars = np.concatenate([p.chars for p in parts])
        return cls(rows, np.concatenate([p.n_words for p in parts]), offsets, keys, chars, parts[0].char_words)

    _FIELDS = ("rows", "n_words", "offsets", "keys", "chars")

    def save(self, folder: Path) -> None:
        """One ``.npy`` file per array under ``folder`` (what :meth:`open` maps back)."""
        folder.mkdir(parents=True, exist_ok=True)
        for name in self._FIELDS:
            np.save(folder / f"{name}.npy", getattr(self, name))
        (folder / "char_words.txt").write_text("" if self.char_words is None else str(self.char_words))

    @classmethod
    def open(cls, folder: Path) -> "WordIndex":
        """An index :meth:`save` wrote, its arrays memory-mapped: a reader pays for the pages of
        the documents it looks at (:meth:`take`), not for the whole index."""
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in cls._FIELDS}
        text = (folder / "char_words.txt").read_text().strip()
        return cls(**arrays, char_words=int(text) if text else None)

    def take(self, ids: np.ndarray) -> "WordIndex":
        """The index of the held documents among the sorted, unique global ids ``ids`` (others are
        skipped), as an index of its own in memory."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.rows, ids)
        ok = pos < self.rows.size
        ok[ok] = self.rows[pos[ok]] == ids[ok]
        pos = pos[ok]
        starts, ends = np.asarray(self.offsets[pos]), np.asarray(self.offsets[pos + 1])
        lengths = ends - starts
        offsets = np.zeros(pos.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # every word position of every taken document: its document's start plus its rank within it
        flat = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        keys = np.asarray(self.keys[flat], dtype=np.uint64)
        return WordIndex(ids[ok], np.asarray(self.n_words[pos]), offsets, keys, np.asarray(self.chars[pos]), self.char_words)

    def local(self, ids: np.ndarray) -> np.ndarray:
        """Positions of global ids in :attr:`rows`; ``ValueError`` for a document not held."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.rows, ids)
        ok = pos < self.rows.size
        ok[ok] = self.rows[pos[ok]] == ids[ok]
        if not ok.all():
            raise ValueError(f"no words held for documents {ids[~ok][:5].tolist()}")
        return pos

    def screen(self, a: np.ndarray, b: np.ndarray, max_edits: int = 3, min_words: int | None = None) -> np.ndarray:
        """False where documents ``a[p]`` and ``b[p]`` cannot be light edits of each other: an
        empty text, word counts more than ``max_edits`` apart, or word multisets differing by
        more than ``3 x max_edits`` words (an edit changes at most three: a join takes two out
        and puts one in). With ``min_words`` (as :func:`light_edit` takes it), a pair whose
        shorter text has fewer words, where no word may be dropped, is also ruled out when its
        non-space characters differ by more than ``4 x max_edits``. True leaves the pair to
        :func:`light_edit`."""
        if max_edits < 0:
            raise ValueError(f"max_edits must be >= 0, got {max_edits}")
        a, b = self.local(a), self.local(b)
        na, nb = self.n_words[a], self.n_words[b]
        ok = (na > 0) & (nb > 0) & (np.abs(na - nb) <= max_edits)
        if min_words is not None:
            idx = np.flatnonzero(ok & (np.minimum(na, nb) < min_words))
            if self.char_words is not None:  # a document without character counts: no character test
                idx = idx[np.maximum(na[idx], nb[idx]) < self.char_words]
            for s in range(0, idx.size, 1 << 16):  # blocks bound the (pairs, 64) temporaries
                k = idx[s : s + (1 << 16)]
                diff = np.abs(self.chars[a[k]].astype(np.int16) - self.chars[b[k]].astype(np.int16)).sum(axis=1)
                ok[k] = diff <= _CHAR_PER_EDIT * max_edits
        idx = np.flatnonzero(ok)
        inter = _intersections(self.offsets, self.keys, a[idx], b[idx])
        ok[idx] = (na[idx] + nb[idx] - 2 * inter) <= 3 * max_edits
        return ok


def _char_counts(docs: list[list[str]]) -> np.ndarray:
    """(len(docs), 64) uint8: each document's non-space characters by code point mod 64, capped."""
    joined = ["".join(w) for w in docs]
    cp = np.frombuffer("".join(joined).encode("utf-32-le", "surrogatepass"), dtype="<u4")
    doc = np.repeat(np.arange(len(docs), dtype=np.int64), [len(t) for t in joined])
    counts = np.bincount(doc * _CHAR_BINS + cp % _CHAR_BINS, minlength=len(docs) * _CHAR_BINS)
    return np.minimum(counts, 255).astype(np.uint8).reshape(len(docs), _CHAR_BINS)


def _no_chars() -> np.ndarray:
    return np.zeros((0, _CHAR_BINS), dtype=np.uint8)
