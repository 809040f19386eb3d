"""Progress display: a live bar per stage on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

log = logging.getLogger("theme_engine.progress")

_console: Any = None


def console() -> Any:
    """The one rich console on stderr, shared by the progress bars and the log handler."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True)
    return _console


class ProgressDisplay:
    """Receives (stage, done, total) events; draws rich bars on a TTY, else logs at most every few seconds."""

    def __init__(self, live: bool | None = None, interval: float = 5.0) -> None:
        self.live = sys.stderr.isatty() if live is None else live
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._tasks: dict[str, Any] = {}
        self._progress: Any = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description:<9}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console(),
                transient=False,
            )

    def __enter__(self) -> "ProgressDisplay":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            if self._progress is not None:
                task = self._tasks.get(stage)
                if task is None:
                    task = self._tasks[stage] = self._progress.add_task(stage, total=total or None)
                self._progress.update(task, completed=done, total=total or None)
                return
            now = time.monotonic()
            finished = total and done >= total
            if finished or now - self._last.get(stage, 0.0) >= self.interval or done == 0:
                self._last[stage] = now
                if total:
                    log.info("%s: %d/%d (%.0f%%)", stage, done, total, 100.0 * done / total)
                else:
                    log.info("%s: %d", stage, done)
