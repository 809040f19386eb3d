"""theme-engine: themes and near-duplicates for text corpora, on Ray.

The code lives in three layers, installed as subpackages of this one: ``theme_engine.engine``
(Ray-free kernels and contracts), ``theme_engine.actors`` (Ray actors and tasks) and
``theme_engine.cluster`` (the driver, the CLI, jobs, metrics). In the repository they are the
top-level folders ``engine/``, ``actors/`` and ``cluster/``; a wheel maps them under this package.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

# In a source tree (a checkout, an editable install, or a Ray job's uploaded working dir, where
# this folder can shadow an installed copy) the subpackages are this folder's siblings: look for
# them there too. In a wheel they sit inside this folder and this adds nothing.
_here = Path(__file__).resolve().parent
if not (_here / "engine").is_dir() and (_here.parent / "engine" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # noqa: F821 - the package's own __path__

try:
    __version__ = metadata.version("theme-engine")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["Result", "SearchResult", "ThemeModel", "__version__", "run", "search", "update"]


def __getattr__(name: str):  # the API loads on first use: ``import theme_engine`` stays light
    if name in ("run", "search", "update", "Result", "SearchResult", "ThemeModel"):
        from theme_engine.cluster.commands import api

        return getattr(api, name)
    raise AttributeError(f"module 'theme_engine' has no attribute {name!r}")
