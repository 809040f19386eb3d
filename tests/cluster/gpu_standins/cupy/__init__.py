"""A stand-in for cupy on a fake-GPU test node (see ../README.md): one "device" with 1 GiB free,
whose array namespace is array-api-strict."""

from __future__ import annotations

import array_api_strict as _strict

__version__ = "0+standin"

_FREE = 1 << 30


class _DeviceHandle:
    def __init__(self, ordinal: int = 0) -> None:
        if ordinal != 0:
            raise RuntimeError(f"CUDA error: invalid device ordinal {ordinal}")
        self.id = ordinal
        self.mem_info = (_FREE, 2 * _FREE)

    def use(self) -> None:
        return None


class _Pool:
    def free_bytes(self) -> int:
        return 0

    def free_all_blocks(self) -> None:
        return None


class _Runtime:
    class CUDARuntimeError(RuntimeError):
        pass

    @staticmethod
    def getDeviceCount() -> int:  # noqa: N802 - cupy's name
        return 1


class _Memory:
    class OutOfMemoryError(MemoryError):
        pass


class cuda:  # noqa: N801 - cupy's name
    Device = _DeviceHandle
    runtime = _Runtime
    memory = _Memory

    @staticmethod
    def is_available() -> bool:
        return True


_pool = _Pool()


def get_default_memory_pool() -> _Pool:
    return _pool


def __getattr__(name: str):
    return getattr(_strict, name)
