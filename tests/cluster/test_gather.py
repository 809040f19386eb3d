"""Waiting on Ray tasks: lost tasks are resubmitted with exponential backoff, failing code is not."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import ray

from theme_engine.cluster.runtime.gather import Backoff, TaskFailed, gather
from theme_engine.engine.events import Interrupted, StageControl


@ray.remote(max_retries=0)
def _flaky(marker: str, crashes: int, value: int) -> int:
    """Kills its own worker process the first ``crashes`` times (a lost worker), then answers."""
    path = Path(marker)
    seen = int(path.read_text()) if path.exists() else 0
    path.write_text(str(seen + 1))
    if seen < crashes:
        os._exit(1)
    return value * 10


@ray.remote(max_retries=0)
def _broken(marker: str) -> int:
    Path(marker).write_text("ran")
    raise ValueError("bad input in the task's own code")


def test_lost_tasks_are_resubmitted_with_growing_delays(ray_session, tmp_path: Path) -> None:
    retries = []
    submits = {
        "steady": lambda: _flaky.remote(str(tmp_path / "a"), 0, 1),
        "flaky": lambda: _flaky.remote(str(tmp_path / "b"), 2, 2),
    }
    t0 = time.monotonic()
    out = gather(submits, StageControl("test"), Backoff(attempts=4, base=0.3), on_retry=lambda k, n, e: retries.append((k, n, time.monotonic())))
    assert out == {"steady": 10, "flaky": 20}
    assert [(k, n) for k, n, _ in retries] == [("flaky", 1), ("flaky", 2)]
    assert (tmp_path / "b").read_text() == "3"  # two lost attempts, then the one that answered
    assert time.monotonic() - t0 >= 0.3 + 0.6  # waited base, then twice base


def test_a_task_that_raises_is_not_retried(ray_session, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    retries = []
    with pytest.raises(ValueError, match="bad input"):
        gather({"x": lambda: _broken.remote(str(marker))}, StageControl("test"), Backoff(base=0.0), on_retry=lambda *a: retries.append(a))
    assert marker.read_text() == "ran" and retries == []


def test_a_task_lost_too_often_fails_the_run_clearly(ray_session, tmp_path: Path) -> None:
    with pytest.raises(TaskFailed, match="lost 2 times"):
        gather({"x": lambda: _flaky.remote(str(tmp_path / "c"), 99, 1)}, StageControl("test"), Backoff(attempts=2, base=0.0))


def test_a_stop_request_interrupts_while_a_retry_waits(ray_session, tmp_path: Path) -> None:
    stop = threading.Event()
    control = StageControl("test", None, stop)
    with pytest.raises(Interrupted):
        gather({"x": lambda: _flaky.remote(str(tmp_path / "d"), 99, 1)}, control, Backoff(attempts=5, base=30.0), on_retry=lambda *a: stop.set())


def test_a_window_keeps_that_many_tasks_in_flight_and_all_land_in_order(ray_session, tmp_path: Path) -> None:
    submitted: list[str] = []
    in_flight: list[int] = []  # tasks submitted and not landed, at each progress report

    def submit(key: str):
        def go():
            submitted.append(key)
            return _flaky.remote(str(tmp_path / key), 0, int(key))

        return go

    class Watch(StageControl):
        def report(self, done: int, total: int) -> None:
            in_flight.append(len(submitted) - done)

    keys = [str(i) for i in range(7)]
    out = gather({k: submit(k) for k in keys}, Watch("test"), window=2)
    assert out == {k: 10 * int(k) for k in keys}
    assert submitted == keys  # in order
    assert len(in_flight) >= len(keys) and max(in_flight) <= 2
