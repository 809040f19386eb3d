"""A watchdog that ends a local Ray session when the driver that started it is gone.

``ray.init`` ties the GCS, raylet and the other processes it starts to the driver, but the
raylet's own children do not follow: after a ``kill -9`` of the driver, Ray's DashboardAgent and
RuntimeEnvAgent live on under PID 1, holding their ports and ignoring SIGTERM. :func:`start_watchdog`
starts a small detached process (``python -m theme_engine.cluster.runtime.reaper``) that waits for the driver to go, or
for every process Ray started for the session to go while the driver lives (``ray.shutdown``), and
then ends what is left of the session: SIGTERM, a grace period, then SIGKILL.

A process belongs to the session when it is one of the session's processes the driver started
(its child with the session directory in its command line), or when it holds a file under the
session directory open for writing (every Ray process writes its logs there; someone reading a
log, ``tail -f``, does not). The watchdog imports only psutil, never Ray, so it starts fast and
stays small; it is in a session of its own and ignores SIGINT and SIGHUP, so a Ctrl-C or a closed
terminal that stops the driver does not stop it too.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

import theme_engine

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often the driver and the session's processes are checked
GRACE_S = 2.0  # between SIGTERM and SIGKILL
LOG_NAME = "theme_engine_reaper.log"  # in the session's logs/ (Ray's log monitor does not forward it)


def start_watchdog(session_dir: str) -> None:
    """Start the watchdog for the local Ray session in ``session_dir`` that this process started.
    A watchdog that cannot start is logged and the run goes on."""
    cmd = [sys.executable, "-m", "theme_engine.cluster.runtime.reaper", "--driver-pid", str(os.getpid()), "--session-dir", session_dir]
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=Path(theme_engine.__file__).resolve().parents[1],  # where this very package is found, whatever the driver's cwd
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        log.warning("could not start the Ray session watchdog (%s): a killed run may leave Ray processes", exc)
        return
    # reaps it when it exits while this process lives on (after ray.shutdown), so no zombie stays
    threading.Thread(target=proc.wait, name="ray-reaper-wait", daemon=True).start()
    log.debug("Ray session watchdog %d watches %s", proc.pid, session_dir)


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a killed driver stays a zombie until its parent reaps it)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _in_dir(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory + os.sep)


def _started_by_driver(driver: psutil.Process, session_dir: str) -> list[psutil.Process]:
    """The driver's children that run the session (GCS, raylet, monitors): the session directory
    is in their command line."""
    found = []
    try:
        children = driver.children()
    except psutil.Error:  # the driver is gone: the watch loop sees it
        return []
    for child in children:
        try:
            if child.pid != os.getpid() and any(session_dir in arg for arg in child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def _writers(session_dir: str, exclude: set[int]) -> list[psutil.Process]:
    """Processes (other than ``exclude``) holding a file under ``session_dir`` open for writing."""
    real = os.path.realpath(session_dir)  # open files are named by their real path
    found = []
    for proc in psutil.process_iter():
        if proc.pid in exclude:
            continue
        try:
            if any(f.mode != "r" and _in_dir(f.path, real) for f in proc.open_files()):
                found.append(proc)
        except psutil.Error:  # gone, a zombie, or another user's
            continue
    return found


def reap(session_dir: str, known: list[psutil.Process], exclude: set[int]) -> None:
    """End the session's processes left: ``known`` ones still running and every writer under
    ``session_dir`` but ``exclude``. SIGTERM, then SIGKILL for those still there after
    :data:`GRACE_S`."""
    targets = {p.pid: p for p in known if _alive(p)}
    targets.update({p.pid: p for p in _writers(session_dir, exclude) if p.pid not in targets})
    procs = list(targets.values())
    if not procs:
        return
    log.info("ending %d leftover process(es) of %s: %s", len(procs), session_dir, _describe(procs))
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(procs, timeout=GRACE_S)
    if alive:
        log.info("SIGKILL for %d that outlived SIGTERM: %s", len(alive), _describe(alive))
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                continue
        psutil.wait_procs(alive, timeout=GRACE_S)


def _describe(procs: list[psutil.Process]) -> str:
    parts = []
    for proc in procs:
        try:
            parts.append(f"{proc.pid} {proc.name()}")
        except psutil.Error:
            parts.append(str(proc.pid))
    return ", ".join(parts)


def watch(driver_pid: int, session_dir: str) -> None:
    """Wait until the driver is gone, or every session process it started is (while it lives),
    then :func:`reap` the session."""
    me = os.getpid()
    try:  # not its parent: the driver was gone before this started (and its pid may be another's)
        driver = psutil.Process(driver_pid) if os.getppid() == driver_pid else None
    except psutil.NoSuchProcess:
        driver = None
    if driver is None:
        reap(session_dir, [], {me})
        return
    started = _started_by_driver(driver, session_dir)
    while True:
        if not _alive(driver):
            log.info("driver %d is gone", driver_pid)
            reap(session_dir, started, {me})
            return
        # Ray was shut down: end what it may have left. (None found at the start: Ray spawns
        # otherwise than expected, and only the driver's end ends the watch.)
        if started and not any(_alive(p) for p in started):
            reap(session_dir, [], {me, driver_pid})
            return
        time.sleep(POLL_S)


def main(argv: list[str] | None = None) -> None:
    """``python -m theme_engine.cluster.runtime.reaper --driver-pid PID --session-dir DIR`` (started by :func:`start_watchdog`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver-pid", type=int, required=True)
    parser.add_argument("--session-dir", required=True)
    args = parser.parse_args(argv)
    if not (Path(args.session_dir).name.startswith("session_") and Path(args.session_dir).is_dir()):
        parser.error(f"not a Ray session directory: {args.session_dir!r}")  # "" or "/" would match far too much
    for sig in (signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s reaper: %(message)s",
        handlers=[logging.FileHandler(Path(args.session_dir) / "logs" / LOG_NAME, delay=True)],
    )
    watch(args.driver_pid, args.session_dir)


if __name__ == "__main__":
    main()
