"""Runtime dependencies that come as a CPU and a GPU twin, and the one error for a missing one.

faiss (``faiss-cpu`` / ``faiss-gpu-cu12``), onnxruntime (``onnxruntime`` / ``onnxruntime-gpu``) and
fastembed (``fastembed`` / ``fastembed-gpu``) each install the same module from two distributions,
so neither twin is a base dependency: the ``cpu`` or the ``gpu`` extra brings one set. A base
install without either extra lacks them; :func:`require` turns that into :class:`MissingDependency`
with the install command, instead of a bare ``ImportError`` from deep inside a stage.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib import metadata
from types import ModuleType

INSTALL_HINT = 'pip install "theme-engine[cpu]" (or "theme-engine[gpu]" on a CUDA 12 machine)'

# module -> (CPU distribution, GPU distribution)
TWINS: dict[str, tuple[str, str]] = {
    "faiss": ("faiss-cpu", "faiss-gpu-cu12"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "fastembed": ("fastembed", "fastembed-gpu"),
}

# what each module is needed for (the message says so)
NEEDED_FOR: dict[str, str] = {
    "faiss": "near-duplicate search",
    "onnxruntime": "the embedding model",
    "fastembed": "the embedding model",
}


class MissingDependency(ImportError):
    """A runtime dependency that the ``cpu``/``gpu`` extra installs is missing or does not import."""

    def __init__(self, message: str, module: str) -> None:
        super().__init__(message, name=module)
        self.module = module


def _message(module: str, cause: str | None) -> str:
    what = NEEDED_FOR.get(module, "theme-engine")
    if cause is None:
        head = f"{module} is not installed"
    else:
        head = f"{module} is installed but does not import ({cause})"
    return f"{head}; it is needed for {what}. Install one of theme-engine's extras: {INSTALL_HINT}"


def require(module: str) -> ModuleType:
    """Import ``module`` (one of :data:`TWINS`), or raise :class:`MissingDependency` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == module
        raise MissingDependency(_message(module, None if missing else str(exc)), module) from exc


def missing_runtime(modules: tuple[str, ...] = tuple(TWINS)) -> list[str]:
    """Messages for the modules that are not installed, without importing them (cheap: a
    pre-flight check before a run starts Ray)."""
    out = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package fails, or a None/odd entry in sys.modules
            found = False
        if not found:
            out.append(_message(module, None))
    return out


def check_runtime(modules: tuple[str, ...] = tuple(TWINS)) -> None:
    """Raise one :class:`MissingDependency` naming every missing module (see :func:`missing_runtime`)."""
    problems = missing_runtime(modules)
    if problems:
        names = [m for m in modules if any(p.startswith(f"{m} ") for p in problems)]
        missing = ", ".join(names)
        raise MissingDependency(
            f"missing runtime dependencies: {missing}. Install one of theme-engine's extras: {INSTALL_HINT}",
            names[0],
        )


def installed_twins() -> dict[str, list[str]]:
    """For each twin module, the distributions of it that are installed (more than one is a conflict:
    the last one unpacked owns the module's files)."""
    out: dict[str, list[str]] = {}
    for module, names in TWINS.items():
        present = []
        for name in names:
            try:
                metadata.distribution(name)
            except metadata.PackageNotFoundError:
                continue
            present.append(name)
        out[module] = present
    return out
