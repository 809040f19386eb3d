"""Texts longer than a model's window, in the model's own tokens.

A sentence-embedding model reads at most ``max_tokens`` tokens (special tokens and the model's
prefix included) and drops the rest. :class:`TextWindows` loads the model's tokenizer (the
``tokenizer.json`` FastEmbed itself loads) without truncation and

* counts a text's tokens (:meth:`TextWindows.counts`), so that a text *longer than the window*
  means the same for every model;
* cuts a long text into windows of at most :attr:`TextWindows.budget` tokens that overlap by
  ``overlap`` tokens and end where a word ends (:meth:`TextWindows.windows`); each window is a
  slice of the original text, embedded as any text is, and the windows' vectors are pooled into
  one (:func:`pool`), weighted by their tokens.

Telling a long text needs no tokenizing of texts within the window: every token of these
tokenizers covers at least one character (a SentencePiece word marker adds one at most), so a text
of fewer than ``budget`` characters cannot exceed ``budget`` tokens (:meth:`TextWindows.may_be_long`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .deps import require


@dataclass(frozen=True)
class Window:
    start: int  # character offsets into the text
    end: int
    tokens: int


class TextWindows:
    """A model's tokenizer, for counting tokens and cutting windows (see the module docstring)."""

    def __init__(self, tokenizer_file: Path | str, max_tokens: int, prefix: str = "", overlap: int = 32, max_windows: int = 32) -> None:
        try:
            from tokenizers import Tokenizer  # installed with fastembed
        except ImportError:
            require("fastembed")  # the message that says which extra to install
            raise
        self._args = (str(tokenizer_file), max_tokens, prefix, overlap, max_windows)
        self._tok = Tokenizer.from_file(str(tokenizer_file))
        self._tok.no_truncation()
        self._tok.no_padding()
        specials = len(self._tok.encode("", add_special_tokens=True).ids)
        prefix_tokens = len(self._tok.encode(prefix, add_special_tokens=False).ids) if prefix else 0
        self.budget = max(8, int(max_tokens) - specials - prefix_tokens)
        if not 0 <= overlap < self.budget // 2:
            raise ValueError(f"window overlap must be in 0..{self.budget // 2 - 1} tokens, got {overlap}")
        if max_windows < 1:
            raise ValueError(f"max_windows must be at least 1, got {max_windows}")
        self.overlap = overlap
        self.max_windows = max_windows

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # rebuilt from its tokenizer file where it is unpickled (a Ray task on another node reads
        # the model's files from where its embedding actors read them), not shipped as ~0.5 MB
        return (type(self), self._args)

    @classmethod
    def for_model(cls, spec: Any, overlap: int = 32, max_windows: int = 32) -> "TextWindows":
        """The windows of a :class:`engine.embedding.ModelSpec`'s tokenizer and window."""
        from .embedding import ASSETS  # noqa: PLC0415

        folder = ASSETS / spec.assets if spec.kind == "bundled" else Path(spec.folder)
        return cls(folder / "tokenizer.json", spec.max_tokens, spec.prefix, overlap, max_windows)

    @property
    def recipe(self) -> str:
        """What a pooled vector depends on beyond the model (part of its cache key)."""
        return f"windows:budget={self.budget};overlap={self.overlap};max={self.max_windows};pool=token-mean"

    def may_be_long(self, text: str) -> bool:
        """Whether ``text`` may hold more tokens than the window (False: it surely does not)."""
        return len(text) >= self.budget

    def counts(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens of each text (int64; the model's special tokens and prefix not counted); texts
        that cannot be long are not tokenized (their count is their length in characters, an
        upper bound within the window)."""
        out = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        todo = [i for i, t in enumerate(texts) if self.may_be_long(t)]
        if todo:
            encs = self._tok.encode_batch([texts[i] for i in todo], add_special_tokens=False)
            out[todo] = [len(e.ids) for e in encs]
        return out

    def is_long(self, texts: Sequence[str]) -> np.ndarray:
        """Whether each text holds more tokens than the window (bool)."""
        return self.counts(texts) > self.budget

    def windows(self, text: str, encoding: Any = None) -> tuple[list[Window], bool]:
        """The windows of ``text`` (one, the whole text, when it fits) and whether the cap on
        windows dropped some: then ``max_windows`` of them, spread evenly over the text."""
        enc = encoding if encoding is not None else self._tok.encode(text, add_special_tokens=False)
        offsets = enc.offsets
        n = len(offsets)
        if n <= self.budget:
            return [Window(0, len(text), n)], False
        # a window may end before token e when token e starts after a gap (whitespace): a word's
        # pieces stay together
        starts = np.fromiter((o[0] for o in offsets), dtype=np.int64, count=n)
        ends = np.fromiter((o[1] for o in offsets), dtype=np.int64, count=n)
        cut = np.zeros(n + 1, dtype=bool)
        cut[0] = cut[n] = True
        cut[1:n] = starts[1:] > ends[:-1]
        out: list[Window] = []
        s = 0
        while True:
            e = min(s + self.budget, n)
            if e < n:
                back = e
                while back > s + self.budget // 2 and not cut[back]:
                    back -= 1
                e = back if cut[back] else e  # a word longer than half a window is cut inside
            out.append(Window(int(starts[s]), int(ends[e - 1]), e - s))
            if e >= n:
                break
            nxt = e - self.overlap
            while nxt > s + 1 and not cut[nxt]:
                nxt -= 1
            s = nxt if nxt > s else e
        capped = len(out) > self.max_windows
        if capped:
            keep = np.unique(np.linspace(0, len(out) - 1, self.max_windows).round().astype(np.int64))
            out = [out[i] for i in keep.tolist()]
        return out, capped

    def encode_many(self, texts: Sequence[str]) -> list[Any]:
        """Encodings (no special tokens, no truncation) of ``texts``, batched."""
        return self._tok.encode_batch(list(texts), add_special_tokens=False)


def pool(vectors: np.ndarray, weights: np.ndarray, owners: np.ndarray, n: int) -> np.ndarray:
    """One unit vector per owner ``0 .. n-1``: the ``weights``-weighted mean of its window
    ``vectors`` (rows, each owned by ``owners[row]``), L2-normalised."""
    vectors = np.asarray(vectors, dtype=np.float32)
    out = np.zeros((n, vectors.shape[1]), dtype=np.float64)
    np.add.at(out, np.asarray(owners, dtype=np.int64), vectors.astype(np.float64) * np.asarray(weights, dtype=np.float64)[:, None])
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out.astype(np.float32)
