"""The one place where the compute device is chosen.

``resolve_device("auto" | "cpu" | "cuda", gpu_ids=...)`` returns a :class:`Device` that carries
the array namespace (``xp``: numpy or cupy). GPU libraries are imported lazily, here only, so
every other module imports on a machine with no CUDA. Kernels receive the device (or its
``xp``) and never inspect array types themselves.

A GPU path that cannot serve raises :class:`GpuUnavailable`; :func:`run_with_fallback` is the
single dispatcher that catches it, reruns on CPU, logs the reason once and counts it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")


class GpuUnavailable(RuntimeError):
    """A GPU path cannot serve (library missing, no device, unsupported option, out of memory)."""


@dataclass(frozen=True)
class Device:
    """A resolved device: its kind, the array namespace and (on GPU) the device ordinal."""

    kind: str  # "cpu" | "cuda"
    xp: Any = field(repr=False)
    ordinal: int | None = None
    reason: str | None = None  # why "auto" resolved to CPU, when it did

    @property
    def name(self) -> str:
        return self.kind if self.ordinal is None else f"{self.kind}:{self.ordinal}"

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """Host data onto this device."""
        if dtype is None:
            return self.xp.asarray(x)
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        """Device data back to a host numpy array."""
        return to_numpy(x)


def to_numpy(x: Any) -> np.ndarray:
    """Any array-API array (numpy, cupy, array-api-strict) as a numpy array on the host."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        return x.get()
    try:
        return np.from_dlpack(x)
    except (TypeError, RuntimeError, BufferError, AttributeError):
        return np.asarray(x)


CPU = Device(kind="cpu", xp=np)


def _cupy_device(ordinal: int) -> Device:
    try:
        import cupy  # noqa: PLC0415 - lazily, on purpose
    except ImportError as exc:
        raise GpuUnavailable(f"cupy is not importable ({exc}); install the 'gpu' extra") from None
    try:
        if not cupy.cuda.is_available():
            raise GpuUnavailable("cupy sees no CUDA device")
        cupy.cuda.Device(ordinal).use()
    except GpuUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - CUDA driver errors come in many types
        raise GpuUnavailable(f"CUDA device {ordinal} is not usable: {exc}") from None
    return Device(kind="cuda", xp=cupy, ordinal=ordinal)


def resolve_device(requested: str = "auto", gpu_ids: Sequence[int] | None = None) -> Device:
    """Resolve ``"auto" | "cpu" | "cuda"`` into a :class:`Device`.

    ``gpu_ids`` are the GPUs assigned to this process (e.g. ``ray.get_gpu_ids()``); with none
    assigned, ``"auto"`` is the CPU. ``"cuda"`` with no usable GPU raises :class:`GpuUnavailable`.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {requested!r}")
    if requested == "cpu":
        return CPU
    ids = list(gpu_ids or [])
    if not ids:
        if requested == "cuda":
            raise GpuUnavailable("no GPU is assigned to this process")
        return Device(kind="cpu", xp=np, reason="no GPU assigned")
    try:
        return _cupy_device(0)  # the assigned GPUs are renumbered from 0 by CUDA_VISIBLE_DEVICES
    except GpuUnavailable as exc:
        if requested == "cuda":
            raise
        return Device(kind="cpu", xp=np, reason=str(exc))


@dataclass(frozen=True)
class LibraryStatus:
    """One GPU library as found in this process: does it import, which version, can it serve."""

    name: str  # "cupy" | "cuml" | "faiss" | "onnxruntime"
    role: str  # what the GPU path uses it for
    importable: bool
    version: str | None = None
    usable: bool = False  # it imports, is a GPU build, and sees a CUDA device
    reason: str | None = None  # why not usable, when it is not


@dataclass(frozen=True)
class GpuStatus:
    """What the GPU path would find here, without raising: see :func:`gpu_status`."""

    available: bool  # resolve_device("auto") with the local GPUs would choose CUDA
    devices: int  # CUDA devices cupy sees (0 when cupy is missing or sees none)
    reason: str | None  # why the GPU path is unavailable, when it is
    libraries: tuple[LibraryStatus, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "devices": self.devices,
            "reason": self.reason,
            "libraries": {
                lib.name: {
                    "role": lib.role,
                    "importable": lib.importable,
                    "version": lib.version,
                    "usable": lib.usable,
                    "reason": lib.reason,
                }
                for lib in self.libraries
            },
        }


def _import_error(name: str, exc: BaseException) -> str:
    return f"{name} is not importable ({exc}); install the 'gpu' extra"


def _probe_cupy() -> tuple[LibraryStatus, int]:
    role = "array namespace (k-means, distances)"
    try:
        import cupy  # noqa: PLC0415 - lazily, on purpose
    except ImportError as exc:
        return LibraryStatus("cupy", role, importable=False, reason=_import_error("cupy", exc)), 0
    version = getattr(cupy, "__version__", None)
    if not cupy.cuda.is_available():  # False, not an error, where there is no driver or device
        return LibraryStatus("cupy", role, True, version, reason="cupy sees no CUDA device"), 0
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        return LibraryStatus("cupy", role, True, version, reason=f"CUDA runtime error: {exc}"), 0
    return LibraryStatus("cupy", role, True, version, usable=count > 0), count


def _probe_cuml(devices: int) -> LibraryStatus:
    role = "GPU estimators (optional)"
    try:
        import cuml  # noqa: PLC0415 - lazily, on purpose
    except ImportError as exc:
        return LibraryStatus("cuml", role, importable=False, reason=_import_error("cuml", exc))
    version = getattr(cuml, "__version__", None)
    if devices == 0:
        return LibraryStatus("cuml", role, True, version, reason="no CUDA device")
    return LibraryStatus("cuml", role, True, version, usable=True)


def _probe_faiss_gpu() -> LibraryStatus:
    role = "near-duplicate search on GPU"
    try:
        import faiss  # noqa: PLC0415 - lazily, on purpose
    except ImportError as exc:
        return LibraryStatus("faiss", role, importable=False, reason=f"faiss is not importable ({exc})")
    version = getattr(faiss, "__version__", None)
    if not hasattr(faiss, "StandardGpuResources"):
        return LibraryStatus("faiss", role, True, version, reason="faiss is a CPU build (faiss-cpu): no GPU classes")
    if faiss.get_num_gpus() == 0:
        return LibraryStatus("faiss", role, True, version, reason="faiss GPU build sees no GPU")
    return LibraryStatus("faiss", role, True, version, usable=True)


def _probe_onnxruntime_cuda(devices: int) -> LibraryStatus:
    role = "embedding model on GPU (CUDAExecutionProvider)"
    try:
        import onnxruntime  # noqa: PLC0415 - lazily, on purpose
    except ImportError as exc:
        return LibraryStatus("onnxruntime", role, importable=False, reason=f"onnxruntime is not importable ({exc})")
    version = getattr(onnxruntime, "__version__", None)
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return LibraryStatus(
            "onnxruntime", role, True, version, reason="onnxruntime has no CUDAExecutionProvider (a CPU build, not onnxruntime-gpu)"
        )
    if devices == 0:
        return LibraryStatus("onnxruntime", role, True, version, reason="no CUDA device")
    return LibraryStatus("onnxruntime", role, True, version, usable=True)


def gpu_status() -> GpuStatus:
    """Probe the GPU libraries (cupy, cuml, faiss GPU, onnxruntime CUDA provider) and report, without
    raising, whether the GPU path can serve here and why not. Imports are lazy and only here."""
    cupy_status, devices = _probe_cupy()
    libraries = (cupy_status, _probe_cuml(devices), _probe_faiss_gpu(), _probe_onnxruntime_cuda(devices))
    available = cupy_status.usable
    return GpuStatus(available=available, devices=devices, reason=None if available else cupy_status.reason, libraries=libraries)


def local_gpu_ids(status: GpuStatus | None = None) -> list[int]:
    """The GPUs this process sees (outside Ray, where ``ray.get_gpu_ids()`` does not apply)."""
    status = status if status is not None else gpu_status()
    return list(range(status.devices))


_fallbacks: Counter[str] = Counter()
_logged: set[str] = set()
_lock = threading.Lock()


def fallback_counts() -> dict[str, int]:
    """How many times each stage fell back from GPU to CPU in this process."""
    with _lock:
        return dict(_fallbacks)


def run_with_fallback(stage: str, device: Device, fn: Callable[[Device], T]) -> tuple[T, Device]:
    """Run ``fn(device)``; if a GPU path raises :class:`GpuUnavailable`, rerun on CPU.

    Returns the result and the device that produced it. The reason is logged once per stage and
    reason, and counted in :func:`fallback_counts`.
    """
    if device.kind == "cpu":
        return fn(device), device
    try:
        return fn(device), device
    except GpuUnavailable as exc:
        key = f"{stage}: {exc}"
        with _lock:
            _fallbacks[stage] += 1
            first = key not in _logged
            _logged.add(key)
        if first:
            log.warning("%s: GPU path unavailable (%s); running on CPU", stage, exc)
        cpu = Device(kind="cpu", xp=np, reason=str(exc))
        return fn(cpu), cpu
