"""Progress display: a live bar per stage on a terminal, plain log lines otherwise."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any

log = logging.getLogger("theme_engine.progress")

# A run's progress as machine-readable records on stderr, one JSON object a line after this
# prefix: what ``theme-engine status`` reads from a job's log (never the human lines).
RECORD_PREFIX = "theme-engine-progress "


def records_wanted() -> bool:
    """Progress records are written in a Ray job (its driver has Ray's job config in its
    environment) or when ``THEME_ENGINE_PROGRESS_RECORDS=1``."""
    flag = os.environ.get("THEME_ENGINE_PROGRESS_RECORDS")
    return flag == "1" if flag is not None else "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def progress_record(stage: str, done: int, total: int | None, reused: bool = False) -> str:
    """One record line (without its newline)."""
    body = {"stage": stage, "done": int(done), "total": int(total) if total else None, "reused": reused, "time": time.strftime("%H:%M:%S")}
    return RECORD_PREFIX + json.dumps(body, separators=(",", ":"))


def parse_record(line: str) -> dict[str, Any] | None:
    """The record in a log line (Ray may prefix a worker's lines), or None."""
    at = line.find(RECORD_PREFIX)
    if at < 0:
        return None
    try:
        record = json.loads(line[at + len(RECORD_PREFIX) :])
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("stage"), str) else None

_console: Any = None


def console() -> Any:
    """The one rich console on stderr, shared by the progress bars and the log handler."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True)
    return _console


def log_interval() -> float:
    """Seconds between two progress lines of a stage when the output is not a terminal:
    ``THEME_ENGINE_PROGRESS_SECONDS``, else 5."""
    try:
        return max(0.0, float(os.environ.get("THEME_ENGINE_PROGRESS_SECONDS", "5")))
    except ValueError:
        return 5.0


class ProgressDisplay:
    """Receives (stage, done, total) events; draws rich bars on a TTY, else logs at most every few seconds."""

    def __init__(self, live: bool | None = None, interval: float | None = None, records: bool | None = None) -> None:
        self.live = sys.stderr.isatty() if live is None else live
        self.records = records_wanted() if records is None else records
        self.interval = interval if interval is not None else log_interval()
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
                self._record(progress_record(stage, done, total))

    def reused(self, stage: str) -> None:
        """A stage reused from an earlier run (its record says so; nothing else is shown)."""
        with self._lock:
            self._record(progress_record(stage, 0, None, reused=True))

    def _record(self, line: str) -> None:
        if self.records:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
