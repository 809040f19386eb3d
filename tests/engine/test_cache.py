"""The embedding cache: Qdrant Edge (local, default) and the qdrant-client path used for servers."""

from __future__ import annotations

import numpy as np
import pytest

from theme_engine.engine.cache import CacheUnavailable, EdgeCache, ServerCache, cache_key, open_cache


def _vectors(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_keys_depend_on_model_and_text() -> None:
    assert cache_key("m1", "hello") == cache_key("m1", "hello")
    assert cache_key("m1", "hello") != cache_key("m2", "hello")
    assert cache_key("m1", "hello") != cache_key("m1", "hello!")


@pytest.mark.parametrize("kind", ["edge", "client"])
def test_put_then_get_round_trips_and_misses_are_reported(kind: str, tmp_path) -> None:
    cache = EdgeCache(tmp_path / "edge", 8) if kind == "edge" else ServerCache(":memory:", "test", 8)
    keys = [cache_key("m", f"text {i}") for i in range(300)]
    vecs = _vectors(300)
    cache.put(keys[:200], vecs[:200])
    found, got = cache.get(keys)
    assert found[:200].all() and not found[200:].any()
    np.testing.assert_allclose(got, vecs[:200], atol=1e-6)
    cache.close()


def test_edge_cache_persists_and_is_owned_by_one_process(tmp_path) -> None:
    keys = [cache_key("m", f"t{i}") for i in range(10)]
    first = EdgeCache(tmp_path / "edge", 8)
    first.put(keys, _vectors(10))
    with pytest.raises(CacheUnavailable, match="in use by another"):
        EdgeCache(tmp_path / "edge", 8)  # the folder is locked while the first is open
    first.close()
    reopened = EdgeCache(tmp_path / "edge", 8)
    found, _ = reopened.get(keys)
    assert found.all()
    reopened.close()


def test_open_cache_picks_the_backend(tmp_path) -> None:
    local = open_cache(8, tmp_path, None, "c")
    assert isinstance(local, EdgeCache) and local.folder == tmp_path / "embeddings-8d"
    local.close()
    remote = open_cache(8, None, ":memory:", "c")
    assert isinstance(remote, ServerCache)
    remote.close()


def test_a_server_collection_of_another_dimension_is_left_alone(monkeypatch) -> None:
    import qdrant_client

    shared = qdrant_client.QdrantClient(location=":memory:")
    monkeypatch.setattr(qdrant_client, "QdrantClient", lambda *a, **k: shared)  # two caches, one server
    small = ServerCache(":memory:", "c", 8)
    key = cache_key("model:0", "a text")
    small.put([key], np.eye(8, dtype=np.float32)[:1])
    large = ServerCache(":memory:", "c", 16)  # another model's dimension
    assert (small.collection, large.collection) == ("c", "c-16d")
    large.put([key], np.eye(16, dtype=np.float32)[:1])
    large.flush()
    small.flush()
    found, vectors = ServerCache(":memory:", "c", 8).get([key])
    assert found.tolist() == [True] and vectors.shape == (1, 8)
