"""The job's stages, in the order they run. Each is one module with one :class:`Stage` class
(see ``base.py`` for the contract); adding a stage is adding a module and listing it here."""

from __future__ import annotations

from .base import RunContext, RunError, Stage
from .dedup import Dedup
from .embed import Embed
from .kmeans import KMeans
from .label import Label
from .read import Documents, Read
from .select_k import SelectK
from .write import Write

PIPELINE: tuple[type[Stage], ...] = (Read, Embed, SelectK, KMeans, Dedup, Label, Write)
STAGES: tuple[str, ...] = tuple(s.name for s in PIPELINE)

__all__ = ["PIPELINE", "STAGES", "Documents", "RunContext", "RunError", "Stage"]
