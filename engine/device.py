"""The one place where the compute device is chosen.

``resolve_device("auto" | "cpu" | "cuda", gpu_ids=...)`` returns a :class:`Device` that carries
the array namespace (``xp``: numpy or cupy). GPU libraries are imported lazily, here only, so
every other module imports on a machine with no CUDA. Kernels receive the device (or its
``xp``) and never inspect array types themselves.

A GPU path that cannot serve raises :class:`GpuUnavailable` (:class:`GpuOutOfMemory` when it ran
out of GPU memory); :func:`gpu_errors` turns the GPU libraries' own errors (cupy, faiss, cuML,
onnxruntime) into those. :func:`run_with_fallback` is the single dispatcher that catches them:
out of memory, it retries on the GPU with halved batches a few times; then it reruns on CPU,
logs the reason once and counts it (:func:`fallback_counts`, :func:`fallback_reasons`).

The thin GPU-specific constructors live here too, so that the libraries are imported here only:
FAISS GPU resources and flat index (:func:`gpu_flat_ip`), free GPU memory (:func:`gpu_free_bytes`),
cuML's silhouette (:func:`cuml_silhouette`) and onnxruntime's CUDA provider
(:func:`onnxruntime_cuda_ready`).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")


class GpuUnavailable(RuntimeError):
    """A GPU path cannot serve (library missing, no device, unsupported option, out of memory)."""


class GpuOutOfMemory(GpuUnavailable):
    """A GPU path ran out of GPU memory: smaller batches may still fit (see :func:`run_with_fallback`)."""


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
    except (RuntimeError, OSError, ImportError) as exc:  # cupy's CUDA errors are RuntimeErrors; a missing library, OSError/ImportError
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
_reasons: Counter[tuple[str, str]] = Counter()
_logged: set[str] = set()
_lock = threading.Lock()


def fallback_counts() -> dict[str, int]:
    """How many times each stage fell back from GPU to CPU in this process."""
    with _lock:
        return dict(_fallbacks)


def fallback_reasons() -> list[dict[str, Any]]:
    """Every (stage, reason) that fell back from GPU to CPU in this process, with its count."""
    with _lock:
        return [{"stage": st, "reason": r, "count": c} for (st, r), c in sorted(_reasons.items())]


def fallback_reason(asked: Device, used: Device, why_not_asked: str | None = None) -> str | None:
    """Why a piece of work did not run where it was meant to, or None: the reason it never asked
    for a GPU it wanted (``why_not_asked``, from :func:`resolve_for_stage`), else why the device
    that served it is not the one asked for (a fall-back of :func:`run_with_fallback`)."""
    return why_not_asked or (used.reason if used is not asked else None)


def count_fallbacks(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fall-backs ``{stage, reason[, count]}`` (from this process, actors, tasks or stage records)
    summed per (stage, reason), in a stable order: the one shape every record and the manifest use."""
    counts: Counter[tuple[str, str]] = Counter()
    for e in entries:
        counts[(str(e["stage"]), str(e["reason"]))] += int(e.get("count", 1))
    return [{"stage": st, "reason": r, "count": c} for (st, r), c in sorted(counts.items())]


def note_fallback(stage: str, reason: str) -> None:
    """Count a fall-back from GPU to CPU and log its reason (once per stage and reason)."""
    key = f"{stage}: {reason}"
    with _lock:
        _fallbacks[stage] += 1
        _reasons[(stage, reason)] += 1
        first = key not in _logged
        _logged.add(key)
    if first:
        log.warning("%s: GPU path unavailable (%s); running on CPU", stage, reason)


# ----------------------------------------------------------------------------- GPU errors

# Words in the messages of the libraries whose errors carry no type of their own (faiss raises a
# plain RuntimeError; onnxruntime's CUDA provider and RMM word theirs likewise).
_OOM_WORDS = ("out of memory", "out_of_memory", "cudaerrormemoryallocation", "failed to allocate memory", "alloc fail", "bad_alloc")
_GPU_WORDS = ("cuda", "cublas", "cudnn", "gpu", "nvrtc", "curand", "cusolver")


def _cupy_error_kind(exc: BaseException) -> str | None:
    """"oom" or "gpu" for cupy's own exceptions, None for others (cupy imported only if it already is)."""
    cupy = sys.modules.get("cupy")
    if cupy is None:
        return None
    cuda = getattr(cupy, "cuda", None)
    oom = getattr(getattr(cuda, "memory", None), "OutOfMemoryError", None)
    if isinstance(oom, type) and isinstance(exc, oom):
        return "oom"
    for holder, name in ((getattr(cuda, "runtime", None), "CUDARuntimeError"), (getattr(cuda, "driver", None), "CUDADriverError")):
        cls = getattr(holder, name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return "gpu"
    return None


def _onnxruntime_errors() -> tuple[type, ...]:
    state = sys.modules.get("onnxruntime.capi.onnxruntime_pybind11_state")
    if state is None:
        return ()
    return tuple(c for c in (getattr(state, n, None) for n in ("Fail", "RuntimeException", "EPFail")) if isinstance(c, type))


def as_gpu_error(exc: BaseException, what: str) -> GpuUnavailable | None:
    """The :class:`GpuUnavailable` (or :class:`GpuOutOfMemory`) that a GPU library's error means,
    or None when it is not a GPU error (a bug, bad input: let it propagate)."""
    if isinstance(exc, GpuUnavailable):
        return exc
    msg = str(exc)
    low = msg.lower()
    kind = _cupy_error_kind(exc)
    if kind is None and isinstance(exc, (MemoryError, RuntimeError) + _onnxruntime_errors()):
        if any(w in low for w in _OOM_WORDS) and (not isinstance(exc, MemoryError) or any(w in low for w in _GPU_WORDS)):
            kind = "oom"  # a bare host MemoryError is not a GPU one: smaller GPU batches would not help
        elif not isinstance(exc, MemoryError) and any(w in low for w in _GPU_WORDS):
            kind = "gpu"
    if kind == "oom":
        return GpuOutOfMemory(f"{what}: out of GPU memory ({msg.strip()[:300]})")
    if kind == "gpu":
        return GpuUnavailable(f"{what}: GPU error ({msg.strip()[:300]})")
    return None


@contextmanager
def gpu_errors(what: str) -> Iterator[None]:
    """Inside, GPU libraries' errors become :class:`GpuUnavailable` / :class:`GpuOutOfMemory`;
    other errors pass through unchanged."""
    try:
        yield
    except GpuUnavailable:
        raise
    except (MemoryError, RuntimeError) as exc:
        converted = as_gpu_error(exc, what)
        if converted is None:
            raise
        raise converted from exc
    except _onnxruntime_errors() as exc:  # onnxruntime's pybind errors are not RuntimeErrors
        converted = as_gpu_error(exc, what)
        if converted is None:
            raise
        raise converted from exc


def release_gpu_memory() -> None:
    """Give cupy's cached blocks back to the device (before a retry with smaller batches)."""
    cupy = sys.modules.get("cupy")
    if cupy is None:
        return
    try:
        cupy.get_default_memory_pool().free_all_blocks()
    except (AttributeError, RuntimeError) as exc:  # no pool, or the device is gone
        log.debug("could not free cupy's memory pool: %s", exc)


def run_with_fallback(
    stage: str,
    device: Device,
    fn: Callable[..., T],
    *,
    batch_rows: int | None = None,
    min_batch_rows: int = 1,
    max_halvings: int = 3,
) -> tuple[T, Device]:
    """Run ``fn(device)`` — or ``fn(device, batch_rows)`` when ``batch_rows`` is given — and, if a
    GPU path cannot serve, rerun it on CPU.

    Out of GPU memory (:class:`GpuOutOfMemory`, or a cupy/faiss/onnxruntime OOM, converted by
    :func:`gpu_errors`), it first retries on the GPU with ``batch_rows`` halved, up to
    ``max_halvings`` times and not below ``min_batch_rows``. Any other :class:`GpuUnavailable`
    goes to the CPU at once; the CPU run gets the original ``batch_rows``. Returns the result and
    the device that produced it (the CPU one carries the reason). The fall-back is logged once per
    stage and reason and counted (:func:`fallback_counts`, :func:`fallback_reasons`). Errors that
    are not GPU errors propagate."""
    call: Callable[[Device, int | None], T] = (lambda d, _b: fn(d)) if batch_rows is None else fn
    if device.kind == "cpu":
        return call(device, batch_rows), device
    rows = batch_rows
    halvings = 0
    while True:
        try:
            with gpu_errors(stage):
                return call(device, rows), device
        except GpuOutOfMemory as exc:
            reason = str(exc)
            if rows is None or halvings >= max_halvings or rows // 2 < max(1, min_batch_rows):
                break
            release_gpu_memory()
            rows //= 2
            halvings += 1
            log.info("%s: out of GPU memory; retrying on the GPU with batches of %d rows", stage, rows)
        except GpuUnavailable as exc:
            reason = str(exc)
            break
    release_gpu_memory()
    note_fallback(stage, reason)
    cpu = Device(kind="cpu", xp=np, reason=reason)
    return call(cpu, batch_rows), cpu


def resolve_for_stage(stage: str, requested: str, gpu_ids: Sequence[int] | None) -> tuple[Device, str | None]:
    """:func:`resolve_device` for an actor or task that a stage runs: never raises
    :class:`GpuUnavailable`. Returns the device and, when GPUs were assigned (or ``"cuda"`` was
    asked for) but cannot serve, the reason — noted as a fall-back of ``stage``. ``"auto"`` with
    no GPU assigned is the CPU, and no fall-back."""
    try:
        device = resolve_device(requested, gpu_ids)
    except GpuUnavailable as exc:
        note_fallback(stage, str(exc))
        return Device(kind="cpu", xp=np, reason=str(exc)), str(exc)
    if device.kind == "cpu" and requested != "cpu" and list(gpu_ids or []):
        reason = device.reason or "GPU assigned but not usable"
        note_fallback(stage, reason)
        return device, reason
    return device, None


# ----------------------------------------------------------------------------- GPU constructors

FAISS_GPU_MAX_K = 2048  # FAISS GPU k-selection limit (k <= 2048 on CUDA builds)

_faiss_resources: dict[int, Any] = {}


def _require_cuda(device: Device) -> int:
    if device.kind != "cuda":
        raise ValueError(f"a GPU constructor needs a cuda device, not {device.name}")
    return int(device.ordinal or 0)


def faiss_gpu() -> Any:
    """The faiss module, if it is a GPU build that sees a GPU; else :class:`GpuUnavailable`."""
    try:
        import faiss  # noqa: PLC0415 - lazily, on purpose
    except ImportError as exc:
        raise GpuUnavailable(f"faiss is not importable ({exc})") from None
    if not hasattr(faiss, "StandardGpuResources"):
        raise GpuUnavailable("faiss is a CPU build (faiss-cpu): no GPU index; install the 'gpu' extra")
    if faiss.get_num_gpus() == 0:
        raise GpuUnavailable("faiss GPU build sees no GPU")
    return faiss


def faiss_gpu_resources(device: Device) -> Any:
    """This process's ``StandardGpuResources`` for the device (one per device, made once; FAISS
    resources are not thread-safe: use them from one thread at a time)."""
    ordinal = _require_cuda(device)
    faiss = faiss_gpu()
    with _lock:
        res = _faiss_resources.get(ordinal)
        if res is None:
            with gpu_errors("faiss GPU resources"):
                res = faiss.StandardGpuResources()
            _faiss_resources[ordinal] = res
    return res


def gpu_flat_ip(device: Device, dim: int) -> Any:
    """An empty exact inner-product index on the GPU (``GpuIndexFlatIP``)."""
    ordinal = _require_cuda(device)
    faiss = faiss_gpu()
    res = faiss_gpu_resources(device)
    with gpu_errors("faiss GPU index"):
        cfg = faiss.GpuIndexFlatConfig()
        cfg.device = ordinal
        return faiss.GpuIndexFlatIP(res, int(dim), cfg)


def gpu_free_bytes(device: Device) -> int | None:
    """Free memory on the device (cupy's view, plus the blocks its pool holds free); None on CPU."""
    if device.kind != "cuda":
        return None
    xp = device.xp
    with gpu_errors("GPU memory info"):
        free, _total = xp.cuda.Device(int(device.ordinal or 0)).mem_info
        pool = xp.get_default_memory_pool()
        return int(free) + int(pool.free_bytes())


def cuml_silhouette() -> Callable[..., Any] | None:
    """cuML's ``silhouette_score`` when cuML imports, else None (the caller uses its own)."""
    try:
        from cuml.metrics.cluster import silhouette_score  # noqa: PLC0415 - lazily, on purpose
    except ImportError as exc:
        log.debug("cuml is not importable (%s): silhouette on the array namespace", exc)
        return None
    return silhouette_score


def onnxruntime_cuda_ready() -> None:
    """Make onnxruntime's CUDA provider loadable, or raise :class:`GpuUnavailable` saying why.

    Checks that the build has ``CUDAExecutionProvider`` (onnxruntime-gpu, not onnxruntime), then
    calls ``onnxruntime.preload_dlls()`` where it exists, which loads the CUDA and cuDNN libraries
    that pip installed (the ``nvidia-*`` wheels) before a session needs them. Whether the session
    really got the provider is for the caller to check (``session.get_providers()``)."""
    try:
        import onnxruntime  # noqa: PLC0415 - lazily, on purpose
    except ImportError as exc:
        raise GpuUnavailable(f"onnxruntime is not importable ({exc})") from None
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise GpuUnavailable("onnxruntime has no CUDAExecutionProvider (a CPU build, not onnxruntime-gpu)")
    preload = getattr(onnxruntime, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except OSError as exc:
            raise GpuUnavailable(f"onnxruntime could not load the CUDA libraries: {exc}") from None
