"""``engine.device.gpu_status``: why the GPU path is (un)available, without raising and without a GPU."""

from __future__ import annotations

import sys
import types

import pytest

from theme_engine.engine import device


class _CudaError(RuntimeError):
    pass


def _fake_cupy(available: bool, count: int | Exception = 0, version: str = "13.9.9") -> types.ModuleType:
    cupy = types.ModuleType("cupy")
    cupy.__version__ = version

    def get_count() -> int:
        if isinstance(count, Exception):
            raise count
        return count

    runtime = types.SimpleNamespace(getDeviceCount=get_count, CUDARuntimeError=_CudaError)
    cupy.cuda = types.SimpleNamespace(is_available=lambda: available, runtime=runtime)
    return cupy


def _fake_onnxruntime(providers: list[str]) -> types.ModuleType:
    ort = types.ModuleType("onnxruntime")
    ort.__version__ = "1.26.0"
    ort.get_available_providers = lambda: providers
    return ort


def test_reports_every_library_without_raising():
    status = device.gpu_status()
    assert [lib.name for lib in status.libraries] == ["cupy", "cuml", "faiss", "onnxruntime"]
    assert status.available == (status.devices > 0)
    if not status.available:
        assert status.reason
        assert all(lib.reason for lib in status.libraries if not lib.usable)
    d = status.as_dict()
    assert set(d["libraries"]) == {"cupy", "cuml", "faiss", "onnxruntime"}


def test_cupy_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    status = device.gpu_status()
    cupy = status.libraries[0]
    assert not status.available and status.devices == 0
    assert not cupy.importable and cupy.version is None
    assert status.reason == cupy.reason and "cupy is not importable" in cupy.reason and "'gpu' extra" in cupy.reason
    assert device.local_gpu_ids(status) == []


def test_cupy_without_a_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(available=False))
    status = device.gpu_status()
    cupy = status.libraries[0]
    assert cupy.importable and cupy.version == "13.9.9" and not cupy.usable
    assert status.reason == "cupy sees no CUDA device" and not status.available


def test_cuda_runtime_error_is_a_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(available=True, count=_CudaError("cudaErrorNoDevice")))
    status = device.gpu_status()
    assert not status.available and "CUDA runtime error: cudaErrorNoDevice" in status.reason


def test_devices_seen_make_the_gpu_path_available(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(available=True, count=2))
    monkeypatch.setitem(sys.modules, "cuml", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", _fake_onnxruntime(["CUDAExecutionProvider", "CPUExecutionProvider"]))
    status = device.gpu_status()
    libs = {lib.name: lib for lib in status.libraries}
    assert status.available and status.devices == 2 and status.reason is None
    assert device.local_gpu_ids(status) == [0, 1]
    assert libs["cupy"].usable
    assert not libs["cuml"].importable and "cuml is not importable" in libs["cuml"].reason
    assert libs["onnxruntime"].usable and libs["onnxruntime"].version == "1.26.0"


@pytest.mark.parametrize(
    ("providers", "count", "reason"),
    [
        (["CPUExecutionProvider"], 1, "no CUDAExecutionProvider"),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], 0, "no CUDA device"),
    ],
)
def test_onnxruntime_cuda_provider(monkeypatch, providers, count, reason):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(available=count > 0, count=count))
    monkeypatch.setitem(sys.modules, "onnxruntime", _fake_onnxruntime(providers))
    ort = {lib.name: lib for lib in device.gpu_status().libraries}["onnxruntime"]
    assert ort.importable and not ort.usable and reason in ort.reason


def test_faiss_cpu_build_has_no_gpu_classes():
    faiss = pytest.importorskip("faiss")
    lib = {lib.name: lib for lib in device.gpu_status().libraries}["faiss"]
    assert lib.importable and lib.version == faiss.__version__
    if not hasattr(faiss, "StandardGpuResources"):
        assert not lib.usable and "CPU build" in lib.reason


def test_resolve_device_is_unchanged():
    assert device.resolve_device("auto", []).kind == "cpu"
    assert device.resolve_device("cpu").kind == "cpu"
    with pytest.raises(device.GpuUnavailable):
        device.resolve_device("cuda", [])
