"""GPU paths, checked where there is no GPU: the k-NN -> range search emulation on a CPU FAISS
index (the GPU code path minus the GPU index), the silhouette on an array namespace vs
scikit-learn, the fall-back dispatcher; and, marked ``gpu`` (skipped without one), each GPU path
against the CPU path on the same data."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, silhouette_score

from theme_engine.engine import device as dev
from theme_engine.engine import partition as part
from theme_engine.engine import select_k as sk
from theme_engine.engine.dedup import range_pairs
from theme_engine.engine.device import (
    CPU,
    Device,
    GpuOutOfMemory,
    GpuUnavailable,
    gpu_errors,
    resolve_for_stage,
    run_with_fallback,
)

faiss = pytest.importorskip("faiss")

T = 0.9


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


@pytest.fixture(scope="module")
def crowded() -> np.ndarray:
    """Random rows (few neighbours above T) plus a tight bundle of 300 rows (each has ~300
    neighbours above T: far more than the first k) and a looser bundle, shuffled."""
    rng = np.random.default_rng(7)
    d = 24
    background = unit_rows(rng.standard_normal((700, d)))
    centre = unit_rows(rng.standard_normal((1, d)))
    tight = unit_rows(centre + 0.04 * rng.standard_normal((300, d)))
    other = unit_rows(rng.standard_normal((1, d)))
    loose = unit_rows(other + 0.12 * rng.standard_normal((120, d)))
    X = np.concatenate([background, tight, loose])
    return np.ascontiguousarray(X[rng.permutation(X.shape[0])])


def _pairs(lims: np.ndarray, sims: np.ndarray, labels: np.ndarray, t: float) -> set[tuple[int, int]]:
    q = np.repeat(np.arange(len(lims) - 1), np.diff(lims))
    keep = sims >= t
    return set(zip(q[keep].tolist(), labels[keep].tolist()))


def _brute(Q: np.ndarray, B: np.ndarray, t: float) -> set[tuple[int, int]]:
    i, j = np.nonzero(Q @ B.T >= t)
    return set(zip(i.tolist(), j.tolist()))


# ----------------------------------------------------------------------------- kNN -> range


@pytest.mark.parametrize("k0,max_k,batch", [(4, None, None), (8, 32, 50), (1, 2, 7), (64, 2048, lambda k: max(1, 4096 // k))])
def test_knn_range_search_equals_brute_force_and_range_search(crowded, k0, max_k, batch):
    X = crowded
    Q = X[::3]
    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    ks: list[int] = []

    def search(q: np.ndarray, k: int):
        ks.append(k)
        return index.search(q, k)

    dense_rows: list[int] = []

    def dense(q: np.ndarray) -> np.ndarray:
        dense_rows.append(q.shape[0])
        return q @ X.T

    lims, sims, labels = part.knn_range_search(search, Q, index.ntotal, T, k0=k0, max_k=max_k, batch_rows=batch, dense=dense)
    assert lims.shape == (Q.shape[0] + 1,) and lims[-1] == sims.size == labels.size
    assert sims.dtype == np.float32 and labels.dtype == np.int64
    assert (sims >= T).all()
    expected = _brute(Q, X, T)
    assert _pairs(lims, sims, labels, T) == expected
    # the CPU range search agrees
    rl, rs, rlab = index.range_search(Q, T - 1e-6)
    assert _pairs(rl.astype(np.int64), rs, rlab.astype(np.int64), T) == expected
    # crowded queries made k grow (doubling), and past max_k the dense fallback served the rest
    assert max(ks) > k0
    if max_k is not None and max_k < 300:
        assert max(ks) == max_k and sum(dense_rows) > 0
    else:
        assert not dense_rows
    # a query's similarities are the ones FAISS computes
    np.testing.assert_allclose(sims, np.einsum("ij,ij->i", Q[np.repeat(np.arange(len(Q)), np.diff(lims))], X[labels]), atol=1e-5)


def test_knn_range_search_edges():
    X = unit_rows(np.random.default_rng(0).standard_normal((5, 4)))
    index = faiss.IndexFlatIP(4)
    lims, sims, labels = part.knn_range_search(index.search, X, 0, 0.5)  # empty index
    assert lims.tolist() == [0] * 6 and sims.size == labels.size == 0
    index.add(X)
    lims, sims, labels = part.knn_range_search(index.search, X[:0], 5, 0.5)  # no queries
    assert lims.tolist() == [0] and sims.size == 0
    # every vector above the threshold: k grows to the index size (5), never past it
    lims, sims, labels = part.knn_range_search(index.search, X, 5, -1.0, k0=2)
    assert np.diff(lims).tolist() == [5] * 5
    with pytest.raises(GpuUnavailable, match="neighbours"):
        part.knn_range_search(index.search, X, 5, -1.0, k0=1, max_k=2)  # no dense fallback given
    with pytest.raises(ValueError):
        part.knn_range_search(index.search, X, 5, 0.5, k0=0)


def _fake_gpu_index(monkeypatch: pytest.MonkeyPatch, free: int = 8 * 2**20) -> tuple[Device, list[int]]:
    """A cuda Device whose GPU index is a CPU IndexFlatIP: the GPU branch of the search, minus the
    GPU; and the list of the dimensions of the indexes it built."""
    built: list[int] = []

    def flat(device: Device, dim: int):
        built.append(dim)
        return faiss.IndexFlatIP(dim)

    monkeypatch.setattr(part, "gpu_flat_ip", flat)
    monkeypatch.setattr(part, "gpu_free_bytes", lambda device: free)
    return Device(kind="cuda", xp=np, ordinal=0), built


def test_partition_search_gpu_branch_equals_cpu(crowded, monkeypatch):
    """pairs_in_partition and range_pairs through the GPU branch (range_index -> KnnRangeIndex,
    query batches from 'free GPU memory') give the CPU result and brute force."""
    fake, built = _fake_gpu_index(monkeypatch)
    X = crowded
    n = X.shape[0]
    ids = np.arange(n, dtype=np.int64) * 3 + 11  # global ids, not positions
    owner = np.ones(n, dtype=bool)
    owner[::4] = False  # a quarter are guests
    cpu = part.pairs_in_partition(X, ids, owner, T, batch_rows=97)
    gpu = part.pairs_in_partition(X, ids, owner, T, batch_rows=97, device=fake)
    assert built, "the GPU branch built its index"
    np.testing.assert_array_equal(cpu[0], gpu[0])
    np.testing.assert_array_equal(cpu[1], gpu[1])
    np.testing.assert_allclose(cpu[2], gpu[2], atol=1e-6)
    # brute force: owner-owner and guest-owner pairs
    S = X @ X.T
    i, j = np.nonzero(np.triu(S >= T, k=1))
    ok = owner[i] | owner[j]
    expected = set(zip(ids[i[ok]].tolist(), ids[j[ok]].tolist()))
    assert set(zip(gpu[0].tolist(), gpu[1].tolist())) == expected
    assert len(expected) > 40_000  # the tight bundle alone has ~45k pairs: doubling was needed

    half = n // 2
    r_cpu = range_pairs(X[:half], 0, X[half:], half, T, batch_rows=128)
    r_gpu = range_pairs(X[:half], 0, X[half:], half, T, batch_rows=128, device=fake)
    assert set(zip(*[a.tolist() for a in r_cpu[:2]])) == set(zip(*[a.tolist() for a in r_gpu[:2]]))
    assert len(r_gpu[0]) > 1000


def test_gpu_query_rows_from_free_memory():
    """Query rows per search from the free memory cupy reports (a stub of it here) and the round's k."""
    stub = Device(kind="cuda", xp=_StubCupy(free=100 * 2**20), ordinal=0)
    r = part.gpu_query_rows(stub, 384, cap=1_000_000)
    assert r(32) > r(2048) >= 1
    assert r(32) == int(0.25 * 100 * 2**20) // (2 * (12 * 32 + 4 * 384))
    assert part.gpu_query_rows(stub, 384, cap=10)(32) == 10


class _StubCupy:
    """Just enough of cupy for gpu_free_bytes."""

    def __init__(self, free: int) -> None:
        self._free = free
        outer = self

        class _Dev:
            def __init__(self, ordinal: int) -> None:
                self.mem_info = (outer._free, 8 * outer._free)

        class _Pool:
            def free_bytes(self) -> int:
                return 0

        self.cuda = type("cuda", (), {"Device": _Dev})
        self._pool = _Pool()

    def get_default_memory_pool(self):
        return self._pool


# ----------------------------------------------------------------------------- silhouette


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=450, n_features=10, centers=6, cluster_std=2.5, random_state=4)
    return X.astype(np.float32), y


@pytest.mark.parametrize("batch_rows", [64, 450, 4096])
def test_silhouette_xp_equals_sklearn_numpy(blobs, batch_rows):
    X, y = blobs
    got = sk.silhouette_xp(X, y.astype(np.int64), np, batch_rows=batch_rows)
    assert got == pytest.approx(silhouette_score(X, y), abs=1e-6)


def test_silhouette_xp_equals_sklearn_array_api_strict(blobs, strict_device):
    xps = strict_device.xp
    X, y = blobs
    y = y.copy()
    y[5] = 6  # a singleton cluster: its row scores 0, as in scikit-learn
    got = sk.silhouette_xp(xps.asarray(X), xps.asarray(y.astype(np.int64)), xps, batch_rows=100)
    assert got == pytest.approx(silhouette_score(X, y), abs=1e-6)


def test_silhouette_xp_validates(blobs):
    X, _ = blobs
    with pytest.raises(ValueError, match="labels"):
        sk.silhouette_xp(X, np.zeros(len(X), np.int64), np)


def test_silhouette_on_device_draws_sklearns_sample(blobs, strict_device, monkeypatch):
    """The GPU branch (here with array-api-strict as the device namespace, cuML absent) scores the
    same subsample scikit-learn draws for a random_state; gapped labels are fine."""
    monkeypatch.setattr(sk, "cuml_silhouette", lambda: None)
    X, y = blobs
    y = np.where(y == 2, 9, y)  # labels 0, 1, 3, 4, 5, 9
    fake = Device(kind="cuda", xp=strict_device.xp, ordinal=0)
    for size, seed in [(200, 0), (200, 3), (None, None)]:
        ref = silhouette_score(X, y, sample_size=size, random_state=seed)
        assert sk.silhouette(X, y, device=fake, sample_size=size, random_state=seed, batch_rows=64) == pytest.approx(ref, abs=1e-6)
        assert sk.silhouette(X, y, sample_size=size, random_state=seed) == pytest.approx(ref, abs=1e-12)


def test_score_candidate_on_a_device_namespace_matches_cpu(blobs, strict_device, monkeypatch):
    monkeypatch.setattr(sk, "cuml_silhouette", lambda: None)
    X, _ = blobs
    fake = Device(kind="cuda", xp=strict_device.xp, ordinal=0)
    cpu = sk.score_candidate(X, 5, repeats=2, seed=1, n_init=1)
    gpu = sk.score_candidate(X, 5, repeats=2, seed=1, device=fake, n_init=1, batch_rows=128)
    assert cpu.device == "cpu" and gpu.device == "cuda:0"
    np.testing.assert_allclose(gpu.silhouettes, cpu.silhouettes, atol=1e-5)
    assert gpu.stability == pytest.approx(cpu.stability, abs=1e-6)


def test_modularity_draw_on_a_device_namespace_matches_cpu(blobs, strict_device):
    """One draw of the modularity criterion with its k-means on the device namespace: the same
    micro themes and the same Ward merges as on the CPU."""
    X, _ = blobs
    fake = Device(kind="cuda", xp=strict_device.xp, ordinal=0)
    cpu = sk.fit_draw(X, 12, draw=1, seed=3)
    gpu = sk.fit_draw(X, 12, draw=1, seed=3, device=fake, batch_rows=128)
    assert cpu.device == "cpu" and gpu.device == "cuda:0"
    np.testing.assert_array_equal(gpu.micro, cpu.micro)
    np.testing.assert_array_equal(gpu.merges, cpu.merges)
    G = sk.knn_graph(X, 10)
    for k in (2, 6, 12):
        assert sk.modularity(G, gpu.labels(k)) == pytest.approx(sk.modularity(G, cpu.labels(k)), abs=1e-12)


# ----------------------------------------------------------------------------- fall-back


FAKE_GPU = Device(kind="cuda", xp=np, ordinal=0)


def test_out_of_memory_retries_smaller_batches_on_the_gpu(caplog):
    stage = "test-gpu-paths-oom-then-fits"
    calls: list[tuple[str, int]] = []

    def fn(d: Device, rows: int) -> str:
        calls.append((d.kind, rows))
        if d.kind == "cuda" and rows > 100:
            # faiss words its OOM as a RuntimeError; the dispatcher converts it
            raise RuntimeError(f"Error: 'err == cudaSuccess' failed: StandardGpuResources: alloc fail size {rows} (cudaMalloc error out of memory [2])")
        return f"{d.kind}:{rows}"

    before = dev.fallback_counts().get(stage, 0)
    with caplog.at_level(logging.INFO, logger="theme_engine.engine.device"):
        result, used = run_with_fallback(stage, FAKE_GPU, fn, batch_rows=800)
    assert result == "cuda:100" and used is FAKE_GPU
    assert calls == [("cuda", 800), ("cuda", 400), ("cuda", 200), ("cuda", 100)]
    assert dev.fallback_counts().get(stage, 0) == before  # it fitted: no fall-back
    assert sum("retrying on the GPU" in r.getMessage() for r in caplog.records) == 3


def test_always_failing_gpu_runs_on_cpu_with_reason_counted_and_logged_once(caplog):
    stage = "test-gpu-paths-always-oom"
    calls: list[tuple[str, int]] = []

    def fn(d: Device, rows: int) -> float:
        calls.append((d.kind, rows))
        if d.kind == "cuda":
            raise GpuOutOfMemory(f"test: {rows} rows do not fit")
        return rows * 1.5

    before = dev.fallback_counts().get(stage, 0)
    with caplog.at_level(logging.WARNING, logger="theme_engine.engine.device"):
        for _ in range(2):
            calls.clear()
            result, used = run_with_fallback(stage, FAKE_GPU, fn, batch_rows=1024, max_halvings=2)
            assert used.kind == "cpu" and used.reason == "test: 256 rows do not fit"
            assert result == 1024 * 1.5  # the CPU gets the original batch size
            assert calls == [("cuda", 1024), ("cuda", 512), ("cuda", 256), ("cpu", 1024)]
    assert dev.fallback_counts()[stage] == before + 2
    reasons = [r for r in dev.fallback_reasons() if r["stage"] == stage]
    assert reasons == [{"stage": stage, "reason": "test: 256 rows do not fit", "count": 2}]
    assert len([r for r in caplog.records if stage in r.getMessage()]) == 1


def test_unavailable_goes_to_cpu_at_once_and_min_batch_is_kept():
    calls: list[tuple[str, int | None]] = []

    def fn(d: Device, rows: int) -> str:
        calls.append((d.kind, rows))
        if d.kind == "cuda":
            raise GpuUnavailable("test: unsupported option")
        return d.kind

    assert run_with_fallback("test-gpu-paths-unsupported", FAKE_GPU, fn, batch_rows=64)[0] == "cpu"
    assert calls == [("cuda", 64), ("cpu", 64)]
    calls.clear()

    def oom(d: Device, rows: int) -> str:
        calls.append((d.kind, rows))
        if d.kind == "cuda":
            raise GpuOutOfMemory("test: oom")
        return d.kind

    run_with_fallback("test-gpu-paths-min-rows", FAKE_GPU, oom, batch_rows=64, min_batch_rows=32)
    assert calls == [("cuda", 64), ("cuda", 32), ("cpu", 64)]


def test_gpu_errors_converts_only_gpu_errors():
    with pytest.raises(GpuOutOfMemory):
        with gpu_errors("t"):
            raise RuntimeError("Failed to cudaMalloc 1610612736 bytes on device 0 (error 2 out of memory)")
    with pytest.raises(GpuUnavailable) as info:
        with gpu_errors("t"):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
    assert not isinstance(info.value, GpuOutOfMemory)
    with pytest.raises(GpuOutOfMemory):
        with gpu_errors("t"):
            raise MemoryError("std::bad_alloc: out_of_memory: CUDA error at: rmm/mr/device/cuda_memory_resource.hpp")
    with pytest.raises(MemoryError):  # host memory: smaller GPU batches would not help
        with gpu_errors("t"):
            raise MemoryError("cannot allocate array")
    with pytest.raises(RuntimeError, match="not a GPU problem"):
        with gpu_errors("t"):
            raise RuntimeError("not a GPU problem")
    with pytest.raises(KeyError):
        with gpu_errors("t"):
            raise KeyError("x")


def test_resolve_for_stage(monkeypatch):
    import sys

    d, reason = resolve_for_stage("test-resolve", "auto", [])
    assert d.kind == "cpu" and reason is None  # no GPU assigned: not a fall-back
    assert resolve_for_stage("test-resolve", "cpu", [0]) == (CPU, None)
    monkeypatch.setitem(sys.modules, "cupy", None)  # a GPU assigned, but cupy does not import
    before = dev.fallback_counts().get("test-resolve", 0)
    d, reason = resolve_for_stage("test-resolve", "auto", [0])
    assert d.kind == "cpu" and "cupy is not importable" in reason and d.reason == reason
    d, reason = resolve_for_stage("test-resolve", "cuda", [])
    assert d.kind == "cpu" and "no GPU is assigned" in reason
    assert dev.fallback_counts()["test-resolve"] == before + 2


def test_gpu_constructors_refuse_cpu_builds():
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        pytest.skip("a faiss GPU build with a GPU is present")
    with pytest.raises(GpuUnavailable, match="faiss"):
        dev.gpu_flat_ip(FAKE_GPU, 8)
    with pytest.raises(ValueError):
        dev.gpu_flat_ip(CPU, 8)
    assert dev.gpu_free_bytes(CPU) is None


# ----------------------------------------------------------------------------- on a real GPU


@pytest.fixture(scope="module")
def cuda() -> Device:
    return dev.resolve_device("cuda", [0])


@pytest.mark.gpu
def test_gpu_kmeans_matches_numpy(cuda):
    from theme_engine.engine.kmeans import KMeans

    X, _ = make_blobs(n_samples=20_000, n_features=64, centers=12, cluster_std=3.0, random_state=0)
    X = X.astype(np.float32)
    cpu = KMeans(12, random_state=3, max_iter=50).fit(X)
    gpu = KMeans(12, random_state=3, max_iter=50, device=cuda).fit(X)
    assert gpu.inertia_ == pytest.approx(cpu.inertia_, rel=1e-3)
    assert adjusted_rand_score(cpu.labels_, gpu.labels_) > 0.99


@pytest.mark.gpu
def test_gpu_range_emulation_matches_cpu_range_search(cuda):
    rng = np.random.default_rng(1)
    d = 64
    background = unit_rows(rng.standard_normal((20_000, d)))
    bundle = unit_rows(unit_rows(rng.standard_normal((1, d))) + 0.03 * rng.standard_normal((2_500, d)))  # > 2048 neighbours
    X = np.concatenate([background, bundle])
    ids = np.arange(len(X), dtype=np.int64)
    owner = np.ones(len(X), dtype=bool)
    owner[::5] = False
    cpu = part.pairs_in_partition(X, ids, owner, T, batch_rows=4096)
    gpu = part.pairs_in_partition(X, ids, owner, T, batch_rows=4096, device=cuda)
    def far(p: tuple[np.ndarray, ...]) -> set[tuple[int, int]]:
        # float32 GEMM rounding differs between devices: compare away from the threshold
        return {(a, b) for a, b, s in zip(*[x.tolist() for x in p]) if abs(s - T) > 1e-5}

    assert far(cpu) == far(gpu) and len(far(cpu)) > 2_500 * 2_000 // 2


@pytest.mark.gpu
def test_gpu_silhouette_matches_sklearn(cuda):
    X, y = make_blobs(n_samples=3_000, n_features=32, centers=8, random_state=2)
    X = X.astype(np.float32)
    ref = silhouette_score(X, y)
    assert sk.silhouette(X, y, device=cuda) == pytest.approx(ref, abs=1e-4)  # cuML when present
    xp = cuda.xp
    assert sk.silhouette_xp(xp.asarray(X), xp.asarray(y.astype(np.int64)), xp) == pytest.approx(ref, abs=1e-5)


@pytest.mark.gpu
def test_gpu_choice_of_k_matches_cpu(cuda):
    X, _ = make_blobs(n_samples=3_000, n_features=32, centers=8, cluster_std=1.0, random_state=5)
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    ks = sk.candidate_ks(len(X), 2, 20, 8)
    cpu, _ = sk.choose_by_modularity(X, ks, repeats=2, neighbors=15, min_gain=0.05, seed=0, run_draws=sk.draws_in_process(0))
    gpu, rec = sk.choose_by_modularity(X, ks, repeats=2, neighbors=15, min_gain=0.05, seed=0, run_draws=sk.draws_in_process(0, cuda))
    assert rec["device"] == cuda.name and gpu.k == cpu.k


@pytest.mark.gpu
def test_gpu_embedding_matches_cpu(cuda, tmp_path):
    from theme_engine.actors.embed import load_embedder
    from theme_engine.engine.embedding import MODELS

    texts = [f"In the beginning was the word, verse {i}: and the word was with God." for i in range(64)]
    texts += ["short", "a much longer sentence about rivers, mountains and the harvest in the valley " * 5]
    name = next(iter(MODELS))
    cpu = load_embedder(MODELS[name], str(tmp_path), 2, CPU).embed(texts)
    gpu = load_embedder(MODELS[name], str(tmp_path), 2, cuda).embed(texts)
    cos = np.einsum("ij,ij->i", cpu, gpu)
    assert cos.min() >= 0.999


@pytest.mark.gpu
def test_gpu_minhash_signatures_equal_numpy(cuda):
    from theme_engine.engine.minhash import signatures

    rng = np.random.default_rng(4)
    words = np.array("river stone light valley harbour engine garden letter window market".split())
    texts = [" ".join(rng.choice(words, int(n))) for n in rng.integers(1, 600, size=300)]
    np.testing.assert_array_equal(signatures(texts, xp=cuda.xp, max_cells=1 << 22), signatures(texts))
