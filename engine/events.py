"""Progress events and cooperative cancellation, shared by every stage.

Kernels receive a :class:`StageControl`; they call ``report(done, total)`` after each batch or
iteration and ``check()`` between them. ``check()`` raises :class:`Interrupted` once a stop was
requested (SIGINT/SIGTERM in the driver), so a stage stops at a clean boundary.
"""

from __future__ import annotations

import threading
from typing import Protocol


class Interrupted(Exception):
    """A stop was requested; the stage stopped between batches or iterations."""


class ProgressSink(Protocol):
    def __call__(self, stage: str, done: int, total: int) -> None: ...


class StageControl:
    """Progress reporting and stop checks for one stage."""

    def __init__(
        self,
        stage: str,
        sink: ProgressSink | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.stage = stage
        self._sink = sink
        self._stop = stop

    def report(self, done: int, total: int) -> None:
        if self._sink is not None:
            self._sink(self.stage, int(done), int(total))

    @property
    def stop_requested(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def check(self) -> None:
        if self.stop_requested:
            raise Interrupted(f"stopped during {self.stage}")

    def child(self, stage: str) -> "StageControl":
        return StageControl(stage, self._sink, self._stop)


NULL_CONTROL = StageControl("-")
