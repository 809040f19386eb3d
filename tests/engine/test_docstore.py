"""docs.parquet: documents in input order, texts streamed by index, the file replaced whole."""

from __future__ import annotations

import numpy as np
import pytest

from theme_engine.engine import docstore
from theme_engine.engine.corpus import build_corpus
from theme_engine.engine.docstore import DocStore


def _corpus(n: int):
    records = [{"kind": "doc", "id": f"d{i}", "text": f"document number {i % 7} of many words", "source": f"f:{i}", "error": None} for i in range(n)]
    return build_corpus(records, 1, 1000)


def test_round_trip_and_streamed_texts(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(docstore, "DOC_BATCH", 4)  # several batches: selections cross their edges
    corpus = _corpus(11)
    store = DocStore(tmp_path / "docs.parquet")
    store.write_corpus(corpus)
    back = store.load_corpus(bad=[{"source": "f:99", "error": "x"}])
    assert back.ids == corpus.ids and back.status == corpus.status and back.texts is None
    np.testing.assert_array_equal(back.exact_of, corpus.exact_of)
    rows = np.array([0, 3, 4, 9, 10])
    got = [(i, t) for idx, texts in store.iter_texts(rows) for i, t in zip(idx.tolist(), texts)]
    assert got == [(int(i), corpus.texts[i]) for i in rows]


def test_a_writer_that_fails_leaves_the_previous_file(tmp_path) -> None:
    store = DocStore(tmp_path / "docs.parquet")
    store.write_corpus(_corpus(3))
    with pytest.raises(RuntimeError):
        with store.writer() as write:
            write({"id": ["x"], "source": ["s"], "text": ["t"], "status": ["ok"], "exact_of": [-1], "length": [1]})
            raise RuntimeError("stopped mid-read")
    assert store.load_corpus([]).ids == ["d0", "d1", "d2"]
