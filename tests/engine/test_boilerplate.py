"""Boilerplate: word 8-grams many long documents share, left out of what the model reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from theme_engine.engine.boilerplate import NGRAM, Boilerplate, find_boilerplate, ngram_hashes, sample_rows, _words
from tests.conftest import DEMO

VERSES = [json.loads(line)["text"] for line in DEMO.read_text().splitlines()]


def _take(at: int, words: int) -> tuple[str, int]:
    out: list[str] = []
    while sum(len(v.split()) for v in out) < words:
        out.append(VERSES[at])
        at += 1
    return " ".join(out), at


@pytest.fixture(scope="module")
def corpus() -> tuple[str, list[str], list[str]]:
    preamble, at = _take(0, 120)
    bodies = []
    for _ in range(30):
        body, at = _take(at, 150)
        bodies.append(body)
    copied = bodies[0]  # three copies of one body: shared by a few documents, not boilerplate
    docs = [f"{preamble}\n\n{b}" for b in bodies] + [f"{preamble} {copied}", f"Mirror. {copied}"]
    return preamble, bodies, docs


def test_a_shared_preamble_is_found_and_left_out(corpus) -> None:
    preamble, bodies, docs = corpus
    bp = find_boilerplate(docs, share=0.05, min_docs=20)
    own = set(ngram_hashes(_words(preamble)[0]).tolist())
    assert own <= set(bp.hashes.tolist())
    # beyond the preamble's own n-grams, at most its end and a body's first word ("And" opens most of them)
    assert len(bp.hashes) <= len(own) + 1
    for body, doc in zip(bodies, docs):
        (a, b), = bp.spans(doc)
        assert a == 0 and _words(doc[b : len(preamble)])[0].size == 0  # all of the preamble's words
        assert len(_words(doc[len(preamble) : b])[0]) <= 1  # and nothing of the body but its first word
        kept, dropped = bp.strip(doc)
        bw, kw = _words(body)[0], _words(kept)[0]
        assert len(bw) - len(kw) <= 1 and np.array_equal(bw[len(bw) - len(kw) :], kw)  # the body's words, less its first at most
        assert dropped == len(_words(doc)[0]) - len(_words(kept)[0])
    kept, _ = bp.strip(docs[-1])
    assert kept == docs[-1]  # the copied body is in three documents only: it stays
    assert bp.strip(bodies[3]) == (bodies[3], 0)


def test_what_few_documents_share_is_not_boilerplate(corpus) -> None:
    preamble, bodies, docs = corpus
    assert not find_boilerplate(docs[:19], share=0.05, min_docs=20)  # fewer texts than min_docs
    assert not find_boilerplate(docs, share=0.0)  # off
    assert not find_boilerplate(bodies + [bodies[0]] * 3)  # a group of four copies is not boilerplate
    # a share above what the preamble reaches
    half = [f"{preamble} {b}" for b in bodies[:10]] + bodies[10:]
    assert not find_boilerplate(half, share=0.5, min_docs=2) and find_boilerplate(half, share=0.3, min_docs=2)


def test_a_text_that_is_mostly_boilerplate_is_read_whole(corpus) -> None:
    preamble, _, docs = corpus
    bp = find_boilerplate(docs, share=0.05, min_docs=20)
    tiny = f"{preamble} Amen, so be it."  # fewer words than min_words would remain
    assert bp.strip(tiny) == (tiny, 0)


def test_hashes_do_not_depend_on_the_process_or_case() -> None:
    words = _words("The Quick brown fox jumps over the lazy dog again")[0]
    same = _words("the quick BROWN fox, jumps over the lazy dog again!")[0]
    assert np.array_equal(ngram_hashes(words), ngram_hashes(same)) and len(ngram_hashes(words)) == 3
    assert ngram_hashes(words[:NGRAM - 1]).size == 0
    assert int(ngram_hashes(words)[0]) == int(ngram_hashes(words)[0])  # crc32 and fixed multipliers: no salted hash()
    assert Boilerplate(ngram_hashes(words)).digest == Boilerplate(ngram_hashes(same)).digest


def test_the_sample_is_evenly_spread_and_fixed() -> None:
    assert sample_rows(0).size == 0 and sample_rows(5).tolist() == [0, 1, 2, 3, 4]
    rows = sample_rows(100_000, size=4096)
    assert len(rows) == 4096 and rows[0] == 0 and rows[-1] == 99_999 and np.array_equal(rows, sample_rows(100_000, size=4096))
