"""Waiting on Ray tasks: progress as each lands, stop between them, and retries with exponential
backoff when a task is lost to its worker or node (not when its own code raised)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable

import ray
from ray import exceptions as rex

from theme_engine.engine.events import StageControl

log = logging.getLogger(__name__)

# The task itself did nothing wrong: its worker process or node went away, or an object it needed
# was lost with them. Retrying on another worker can succeed. (An exception raised by the task's
# own code arrives as RayTaskError and is never retried: it would fail the same way again.)
RETRIABLE = (
    rex.WorkerCrashedError,
    rex.NodeDiedError,
    rex.ObjectLostError,  # includes OwnerDiedError, ObjectReconstructionFailedError
    rex.RayActorError,
    rex.ObjectFetchTimedOutError,
    rex.OutOfMemoryError,
)


@dataclass(frozen=True)
class Backoff:
    """``attempts`` submissions at most per task; the n-th retry waits ``base * 2**(n-1)`` seconds,
    at most ``cap``."""

    attempts: int = 5
    base: float = 1.0
    cap: float = 60.0

    def delay(self, retry: int) -> float:
        return min(self.cap, self.base * 2 ** (retry - 1))


class TaskFailed(RuntimeError):
    """A task was lost more times than the backoff allows."""


def gather(
    submits: dict[Hashable, Callable[[], Any]],
    control: StageControl,
    backoff: Backoff = Backoff(),
    on_retry: Callable[[Hashable, int, BaseException], None] | None = None,
    window: int | None = None,
    fold: Callable[[Hashable, Any], None] | None = None,
) -> dict[Hashable, Any]:
    """Run ``submits`` (key → function that submits one Ray task and returns its ref) and return
    {key: result}, reporting (done, total) to ``control`` as each lands. ``window``: at most that
    many tasks submitted and not yet landed (the others wait their turn, in order), so that the
    arguments the driver ships with them are in the object store a window at a time. ``fold``:
    each result is handed to ``fold(key, result)`` as it lands and not kept (the returned dict
    then maps each key to None), so that results too large to hold together are combined as they
    come. A stop request cancels what is still running and raises :class:`~engine.events.Interrupted`."""
    total = len(submits)
    queue = list(submits)
    limit = window if window is not None and window > 0 else max(total, 1)
    running: dict[Any, tuple[Hashable, int]] = {}
    waiting: list[tuple[float, Hashable, int]] = []  # (due time, key, attempt)
    results: dict[Hashable, Any] = {}
    control.report(0, total)
    while running or waiting or queue:
        while queue and len(running) < limit:
            key = queue.pop(0)
            running[submits[key]()] = (key, 1)
        now = time.monotonic()
        for item in [w for w in waiting if w[0] <= now]:
            waiting.remove(item)
            running[submits[item[1]]()] = (item[1], item[2])
        if control.stop_requested:
            for ref in running:
                ray.cancel(ref)
            control.check()
        if not running:
            time.sleep(min(1.0, max(0.0, min(w[0] for w in waiting) - now)))
            continue
        ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
        if not ready:
            control.report(len(results), total)  # a heartbeat: long tasks still show the stage alive
        for ref in ready:
            key, attempt = running.pop(ref)
            try:
                got = ray.get(ref)
            except RETRIABLE as exc:
                if attempt >= backoff.attempts:
                    raise TaskFailed(f"task {key!r} was lost {attempt} times; last: {type(exc).__name__}: {exc}") from exc
                delay = backoff.delay(attempt)
                log.warning("task %r lost (%s); retry %d of %d in %.1f s", key, type(exc).__name__, attempt, backoff.attempts - 1, delay)
                if on_retry is not None:
                    on_retry(key, attempt, exc)
                waiting.append((time.monotonic() + delay, key, attempt + 1))
                continue
            if fold is None:
                results[key] = got
            else:
                results[key] = None
                fold(key, got)
            del got
            control.report(len(results), total)
    return results
