"""The job's stages, in the order they run: a run's (``PIPELINE``) and an update's
(``UPDATE_PIPELINE``). Each is one module with the stage's run form and, where an update does the
step differently, its update form beside it (see ``base.py`` for the contract); adding a stage is
adding a module and listing it here."""

from __future__ import annotations

from .assign import Assign
from .base import RunContext, RunError, Stage
from .dedup import Dedup, UpdateDedup
from .embed import Embed, UpdateEmbed
from .index import Index
from .kmeans import KMeans
from .label import Label, UpdateLabel
from .layout import Layout, UpdateLayout
from .read import Documents, Read, UpdateRead
from .report import Report
from .select_k import SelectK
from .write import UpdateWrite, Write

PIPELINE: tuple[type[Stage], ...] = (Read, Embed, SelectK, KMeans, Dedup, Label, Layout, Write, Index, Report)
UPDATE_PIPELINE: tuple[type[Stage], ...] = (UpdateRead, UpdateEmbed, Assign, UpdateDedup, UpdateLabel, UpdateLayout, UpdateWrite)
STAGES: tuple[str, ...] = tuple(s.name for s in PIPELINE)
ALWAYS_RUN: frozenset[str] = frozenset(s.name for s in PIPELINE if s.always_runs)

__all__ = ["ALWAYS_RUN", "PIPELINE", "STAGES", "UPDATE_PIPELINE", "Documents", "RunContext", "RunError", "Stage"]
