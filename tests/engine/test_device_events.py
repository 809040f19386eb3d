"""Device resolution, the GPU->CPU fallback dispatcher, and stage control."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from theme_engine.engine import device as dev
from theme_engine.engine.device import CPU, Device, GpuUnavailable, resolve_device, run_with_fallback
from theme_engine.engine.events import Interrupted, StageControl


def _cupy_gpu_present() -> bool:
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def test_resolve_cpu_and_errors():
    assert resolve_device("cpu") is CPU
    assert resolve_device("cpu", gpu_ids=[0]) is CPU
    auto = resolve_device("auto")
    assert auto.kind == "cpu" and auto.xp is np and auto.reason == "no GPU assigned"
    with pytest.raises(GpuUnavailable):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("gpu")


@pytest.mark.skipif(_cupy_gpu_present(), reason="a real GPU is present")
def test_auto_with_assigned_but_unusable_gpu_falls_back_with_reason():
    d = resolve_device("auto", gpu_ids=[0])
    assert d.kind == "cpu" and d.reason
    with pytest.raises(GpuUnavailable):
        resolve_device("cuda", gpu_ids=[0])


def test_device_name_and_asarray():
    assert CPU.name == "cpu"
    assert Device(kind="cuda", xp=np, ordinal=1).name == "cuda:1"
    a = CPU.asarray([1, 2], dtype=np.float32)
    assert a.dtype == np.float32 and CPU.to_numpy(a) is a


def test_run_with_fallback(caplog):
    fake_gpu = Device(kind="cuda", xp=np, ordinal=0)
    calls = []

    def fn(d):
        calls.append(d.kind)
        if d.kind == "cuda":
            raise GpuUnavailable("out of memory (test)")
        return 42

    stage = "test-stage-fallback"
    before = dev.fallback_counts().get(stage, 0)
    with caplog.at_level(logging.WARNING, logger="theme_engine.engine.device"):
        for _ in range(3):
            result, used = run_with_fallback(stage, fake_gpu, fn)
            assert result == 42 and used.kind == "cpu" and used.reason == "out of memory (test)"
    assert calls == ["cuda", "cpu"] * 3
    assert dev.fallback_counts()[stage] == before + 3
    assert len([r for r in caplog.records if stage in r.getMessage()]) == 1  # logged once per stage and reason


def test_run_with_fallback_passes_other_errors_and_cpu_through():
    assert run_with_fallback("s", CPU, lambda d: d.kind) == ("cpu", CPU)

    def boom(d):
        raise KeyError("not a GPU problem")

    with pytest.raises(KeyError):
        run_with_fallback("s", Device(kind="cuda", xp=np, ordinal=0), boom)


def test_stage_control():
    seen = []
    stop = threading.Event()
    ctl = StageControl("embed", lambda s, d, t: seen.append((s, d, t)), stop)
    ctl.report(1, 4)
    ctl.check()
    child = ctl.child("embed/batch")
    child.report(2.0, 4)
    assert seen == [("embed", 1, 4), ("embed/batch", 2, 4)]
    stop.set()
    assert child.stop_requested
    with pytest.raises(Interrupted, match="embed"):
        ctl.check()
    StageControl("quiet").report(1, 1)  # no sink: nothing happens


def test_fallback_reason_names_why_the_work_did_not_run_where_asked() -> None:
    import numpy as np

    from theme_engine.engine.device import CPU, Device, count_fallbacks, fallback_reason

    cuda = Device(kind="cuda", xp=np, ordinal=0)
    fell = Device(kind="cpu", xp=np, reason="cupy: out of memory")
    assert fallback_reason(cuda, cuda) is None and fallback_reason(CPU, CPU) is None
    assert fallback_reason(cuda, fell) == "cupy: out of memory"
    assert fallback_reason(CPU, CPU, "device cuda: no GPU on this node") == "device cuda: no GPU on this node"
    assert count_fallbacks([{"stage": "kmeans", "reason": "r"}, {"stage": "kmeans", "reason": "r", "count": 2}]) == [
        {"stage": "kmeans", "reason": "r", "count": 3}
    ]
