"""A stand-in for a faiss GPU build on a fake-GPU test node (see ../README.md): the real faiss,
found on the path after this folder, plus the GPU classes the engine uses; the "GPU" index is a
CPU ``IndexFlatIP``."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

_here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
_spec = importlib.machinery.PathFinder.find_spec("faiss", _path)
if _spec is None or _spec.loader is None:
    raise ImportError("the faiss stand-in found no real faiss after it on sys.path")
_real = importlib.util.module_from_spec(_spec)
sys.modules["faiss"] = _real  # the import of "faiss" returns this module, not the stand-in
_spec.loader.exec_module(_real)


class StandardGpuResources:
    pass


class GpuIndexFlatConfig:
    device = 0


def GpuIndexFlatIP(resources: StandardGpuResources, dim: int, config: GpuIndexFlatConfig):  # noqa: N802 - faiss's name
    if not isinstance(resources, StandardGpuResources):
        raise TypeError("GpuIndexFlatIP needs StandardGpuResources")
    return _real.IndexFlatIP(int(dim))


def get_num_gpus() -> int:
    return 1


for _name in ("StandardGpuResources", "GpuIndexFlatConfig", "GpuIndexFlatIP", "get_num_gpus"):
    setattr(_real, _name, globals()[_name])
