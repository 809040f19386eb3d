"""The job's stages, in the order they run. Each is one module with one :class:`Stage` class
(see ``base.py`` for the contract); adding a stage is adding a module and listing it here."""

from __future__ import annotations

from .base import RunContext, RunError, Stage
from .dedup import Dedup
from .embed import Embed
from .index import Index
from .kmeans import KMeans
from .label import Label
from .layout import Layout
from .read import Documents, Read
from .report import Report
from .select_k import SelectK
from .write import Write

PIPELINE: tuple[type[Stage], ...] = (Read, Embed, SelectK, KMeans, Dedup, Label, Layout, Write, Index, Report)
STAGES: tuple[str, ...] = tuple(s.name for s in PIPELINE)
ALWAYS_RUN: frozenset[str] = frozenset(s.name for s in PIPELINE if s.always_runs)

__all__ = ["ALWAYS_RUN", "PIPELINE", "STAGES", "Documents", "RunContext", "RunError", "Stage"]
