"""The offline embedding model: loads from installed packages, unit vectors, order and batching invariant."""

from __future__ import annotations

import numpy as np
import pytest

from theme_engine.engine.embedding import Embedder, get_model, model_dir, token_batches


def test_token_batches_respect_count_and_token_budget() -> None:
    lengths = sorted([10] * 50 + [400] * 30 + [4000] * 5)
    batches = token_batches(lengths, batch_size=16, max_tokens=2048, seq_cap=256)
    assert batches[0][0] == 0 and batches[-1][1] == len(lengths)
    assert all(a < b for a, b in batches)
    assert all(batches[i][1] == batches[i + 1][0] for i in range(len(batches) - 1))
    for a, b in batches:
        longest = min(256, lengths[b - 1] // 4 + 2)
        assert b - a <= 16
        assert (b - a) * longest <= 2048 or b - a == 1


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    return Embedder(get_model("all-MiniLM-L6-v2-int8"), tmp_path_factory.mktemp("models"), threads=2)


def test_model_folder_is_built_from_packages(tmp_path) -> None:
    spec = get_model("all-MiniLM-L6-v2-int8")
    folder = model_dir(spec, tmp_path)
    assert (folder / "model.onnx").exists() and (folder / "tokenizer.json").exists()
    assert model_dir(spec, tmp_path) == folder  # built once
    assert spec.model_id.startswith("all-MiniLM-L6-v2-int8:")
    with pytest.raises(ValueError, match="unknown embedding model"):
        get_model("no-such-model")


def test_embeddings_are_unit_and_meaningful(embedder: Embedder) -> None:
    texts = [
        "The central bank raised interest rates again to curb inflation.",
        "Interest rates were increased by the central bank to fight rising prices.",
        "The goalkeeper saved a penalty in the last minute of the cup final.",
        "",
    ]
    v = embedder.embed(texts)
    assert v.shape == (4, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.7 > v[0] @ v[2]


def test_batching_and_order_do_not_change_vectors(embedder: Embedder) -> None:
    texts = [("word " * n).strip() + f" item {n}" for n in (3, 200, 17, 90, 1, 400, 45)]
    together = embedder.embed(texts, batch_size=64)
    alone = np.stack([embedder.embed([t])[0] for t in texts])
    small = embedder.embed(texts, batch_size=2, max_batch_tokens=64)
    np.testing.assert_allclose(together, alone, atol=2e-3)
    np.testing.assert_allclose(together, small, atol=2e-3)
