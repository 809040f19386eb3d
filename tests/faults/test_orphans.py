"""A local Ray that a run started does not outlive the run: after a ``kill -9`` of the driver,
Ray's agents (children of the raylet, renamed ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent``,
deaf to SIGTERM) lived on under PID 1. Each test runs its driver in a subprocess, since it starts
its own Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]

DRIVER = textwrap.dedent(
    """
    import sys, time
    import ray
    from theme_engine.cluster.runtime import ray_session
    from theme_engine.engine.config import RayConfig

    ray_session.connect(RayConfig(num_cpus=1, object_store_memory=100 * 2**20, temp_dir=sys.argv[1]))

    @ray.remote
    def ping():
        return 1

    ray.get(ping.remote())  # a worker is up too
    print(ray._private.worker._global_node.get_session_dir_path(), flush=True)
    if sys.argv[2] == "shutdown":
        sys.stdin.readline()
        ray.shutdown()
        print("shut down", flush=True)
    time.sleep(300)
    """
)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _session_procs(session_dir: str) -> list[psutil.Process]:
    """Processes naming the session directory in their command line or holding a file under it."""
    real = os.path.realpath(session_dir)
    found = []
    for proc in psutil.process_iter():
        try:
            if any(session_dir in arg for arg in proc.cmdline()) or any(
                f.path.startswith(real + os.sep) for f in proc.open_files()
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _start_driver(mode: str) -> tuple[subprocess.Popen, str]:
    """A driver that connected a local Ray (fresh temp dir) and sleeps; and its session dir."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback only, as a CLI run
    temp = tempfile.mkdtemp(prefix="te-orphans-")
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, temp, mode],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    session_dir = proc.stdout.readline().strip()
    assert session_dir.startswith(temp), f"the driver did not start Ray (exit {proc.poll()})"
    return proc, session_dir


def _wait_gone(procs: list[psutil.Process], session_dir: str, driver: int, timeout_s: float) -> list[psutil.Process]:
    """Poll until none of ``procs`` nor any process of the session but the driver is left; those
    left at the end."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = {p.pid: p for p in procs + _session_procs(session_dir) if p.pid != driver and _alive(p)}
        if not left or time.monotonic() > deadline:
            return list(left.values())
        time.sleep(0.5)


def _clean_up(driver: subprocess.Popen, procs: list[psutil.Process]) -> None:
    """Never leave a process behind, even when a test fails."""
    driver.kill()
    driver.wait(timeout=10)
    driver.stdin.close()
    driver.stdout.close()
    for proc in procs:
        if _alive(proc):  # same pid and start time: never another process that reused the pid
            proc.kill()


@pytest.mark.timeout(120)
def test_a_killed_driver_leaves_no_ray_processes() -> None:
    """Within seconds of a ``kill -9`` of the driver no process of its Ray session is left."""
    driver, session_dir = _start_driver("sleep")
    snapshot: list[psutil.Process] = []
    try:
        snapshot = psutil.Process(driver.pid).children(recursive=True) + _session_procs(session_dir)
        assert any(p.name() == "raylet" for p in snapshot), [p.name() for p in snapshot]
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=10)
        left = _wait_gone(snapshot, session_dir, driver.pid, timeout_s=20)
        assert not left, [(p.pid, p.name()) for p in left if _alive(p)]
    finally:
        _clean_up(driver, snapshot + _session_procs(session_dir))


@pytest.mark.timeout(120)
def test_the_watchdog_leaves_a_driver_that_shut_ray_down_alone() -> None:
    """After ``ray.shutdown`` the session's watchdog ends on its own, and the driver lives on."""
    driver, session_dir = _start_driver("shutdown")
    snapshot: list[psutil.Process] = []
    try:
        snapshot = psutil.Process(driver.pid).children(recursive=True)
        watchdogs = [p for p in snapshot if "theme_engine.cluster.runtime.reaper" in p.cmdline()]
        assert len(watchdogs) == 1, [p.cmdline() for p in snapshot]
        driver.stdin.write("\n")
        driver.stdin.flush()
        assert driver.stdout.readline().strip() == "shut down"
        left = _wait_gone(snapshot, session_dir, driver.pid, timeout_s=20)
        assert not left, [(p.pid, p.name()) for p in left if _alive(p)]
        assert driver.poll() is None  # the driver itself is never touched
    finally:
        _clean_up(driver, snapshot + _session_procs(session_dir))
