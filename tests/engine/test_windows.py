"""Long texts as windows of the model's tokens, pooled into one vector."""

from __future__ import annotations

import numpy as np
import pytest

from theme_engine.engine.boilerplate import find_boilerplate
from theme_engine.engine.embedding import Embedder, get_model
from theme_engine.engine.windows import TextWindows, pool
from tests.conftest import DEMO

import json


@pytest.fixture(scope="module")
def long_text() -> str:
    verses = [json.loads(line)["text"] for line in DEMO.read_text().splitlines()]
    return " ".join(verses[:40])  # ~1,300 words of real text


@pytest.fixture(scope="module")
def embedders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Embedder, Embedder]:
    root = tmp_path_factory.mktemp("models")
    spec = get_model()
    return Embedder(spec, root, threads=2, windows=(32, 32)), Embedder(spec, root, threads=2)


def test_windows_cover_the_text_at_word_edges(long_text: str) -> None:
    w = TextWindows.for_model(get_model(), overlap=32, max_windows=100)
    assert w.budget == 254  # 256 less [CLS] and [SEP]
    cut, capped = w.windows(long_text)
    assert not capped and len(cut) >= 5
    assert cut[0].start == 0 and cut[-1].end == len(long_text.rstrip())
    for a, b in zip(cut, cut[1:]):
        assert b.start < a.end  # they overlap
        assert b.start > a.start
        assert long_text[b.start - 1].isspace() and (a.end == len(long_text) or not long_text[a.end - 1].isspace())
    for win in cut:
        assert win.tokens <= w.budget
        assert len(w.encode_many([long_text[win.start : win.end]])[0].ids) == win.tokens  # the slice is its tokens
    assert w.counts([long_text])[0] > w.budget and w.is_long([long_text, "short"]).tolist() == [True, False]


def test_the_cap_spreads_windows_over_the_whole_text(long_text: str) -> None:
    w = TextWindows.for_model(get_model(), overlap=0, max_windows=3)
    all_windows, _ = TextWindows.for_model(get_model(), overlap=0, max_windows=1000).windows(long_text)
    cut, capped = w.windows(long_text)
    assert capped and len(cut) == 3
    assert cut[0] == all_windows[0] and cut[-1] == all_windows[-1]  # the opening and the end both count


def test_pooled_vector_equals_a_direct_computation(embedders, long_text: str) -> None:
    windowed, plain = embedders
    v = windowed.embed(["A short sentence about the harvest.", long_text])
    counts = windowed.last_counts()
    assert counts[0].tolist() == [counts[0, 0], 0, 0, 0] and counts[1, 1] >= 5
    cut, _ = windowed.windows.windows(long_text)
    parts = plain.embed([long_text[c.start : c.end] for c in cut])
    weights = np.array([c.tokens for c in cut], dtype=np.float64)
    direct = (parts.astype(np.float64) * weights[:, None]).sum(axis=0)
    direct /= np.linalg.norm(direct)
    assert float(direct @ v[1]) > 0.99999
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # the short text is embedded whole, as without windows
    np.testing.assert_array_equal(v[0], plain.embed(["A short sentence about the harvest."])[0])
    # the truncated vector sees the opening only: the pooled one differs
    assert float(plain.embed([long_text])[0] @ v[1]) < 0.95


def test_a_text_of_exactly_one_window_gives_todays_vector(embedders, long_text: str) -> None:
    windowed, plain = embedders
    w = windowed.windows
    enc = w.encode_many([long_text])[0]
    one = long_text[: enc.offsets[w.budget - 1][1]]
    assert len(w.encode_many([one])[0].ids) == w.budget
    np.testing.assert_array_equal(windowed.embed([one]), plain.embed([one]))
    assert windowed.last_counts()[0, 1] == 0  # embedded whole


def test_boilerplate_is_left_out_of_what_the_model_reads(embedders, long_text: str) -> None:
    windowed, plain = embedders
    verses = [json.loads(line)["text"] for line in DEMO.read_text().splitlines()]
    banner = " ".join(verses[200:215])  # ~400 words every document of a corpus opens with
    bodies = [" ".join(verses[300 + 12 * k : 312 + 12 * k]) for k in range(3)]
    bp = find_boilerplate([f"{banner} {b}" for b in bodies] * 10, share=0.05, min_docs=20)
    engine = Embedder(windowed.spec, windowed.root, threads=2, windows=(32, 32), boilerplate=bp)
    texts = [f"{banner} {b}" for b in bodies] + ["A short sentence about the harvest.", long_text]
    got = engine.embed(texts)
    counts = engine.last_counts()
    for k, body in enumerate(bodies):
        kept, dropped = bp.strip(texts[k])
        assert counts[k, 3] == dropped > 300 and len(kept) < len(body) + 20
        np.testing.assert_allclose(got[k], windowed.embed([kept])[0], atol=1e-6)  # the text less its banner
        assert float(got[k] @ windowed.embed([texts[k]])[0]) < 0.97  # not what the whole text gives
    # texts without the boilerplate are embedded as before
    np.testing.assert_allclose(got[3:], windowed.embed(texts[3:]), atol=1e-6)
    assert counts[3:, 3].tolist() == [0, 0]


def test_pool_weights_and_normalises() -> None:
    v = np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float32)
    out = pool(v, np.array([3.0, 1.0, 5.0]), np.array([0, 0, 1]), 2)
    np.testing.assert_allclose(out[0], np.array([3, 1]) / np.sqrt(10), rtol=1e-6)
    np.testing.assert_allclose(out[1], [1, 0])


def test_bad_window_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        TextWindows.for_model(get_model(), overlap=200)
