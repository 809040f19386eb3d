"""A private Ray head on 127.0.0.1 for tests, stopped without ``ray stop``.

``ray stop`` ends every Ray process on the machine (other people's tests included), so this head
runs ``ray start --head --block`` in its own session and process group, on free ports and a
private temp dir, and :meth:`LocalHead.stop` ends only what belongs to it: the processes of its
session (Ray's workers make their own process groups but stay in the session), every descendant
of the head (job drivers and fake autoscaler nodes start their own sessions), and anything whose
command line names its temp dir.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

import psutil

log = logging.getLogger(__name__)

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


class LocalHead:
    """``ray start --head --block`` on 127.0.0.1 with free ports, a small object store and a short
    private temp dir. ``env`` adds to the head's environment (which every Ray process and job
    driver inherits); ``extra`` adds ``ray start`` arguments."""

    def __init__(self, num_cpus: int = 2, object_store_mb: int = 300, env: dict[str, str] | None = None, extra: list[str] | None = None) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="te-")
        self.port = free_port()
        self.dashboard_port = free_port()
        self.num_cpus = num_cpus
        self.object_store_mb = object_store_mb
        self.extra_env = env or {}
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(self.temp_dir) / "head.log"
        self._seen: dict[int, psutil.Process] = {}

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "THEME_ENGINE_"))}
        env.update(
            {
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # else drivers hang connecting to a 127.0.0.1 GCS
                "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # the job's `python`/`theme-engine`
                "RAY_USAGE_STATS_ENABLED": "0",
                # Ray starts heads with token authentication on, and a driver that connects to an
                # explicit address sends the token (~/.ray/auth_token) only in token mode
                "RAY_AUTH_MODE": "token",
                "XDG_CACHE_HOME": str(Path(self.temp_dir) / "xdg-cache"),
            }
        )
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        ports = {
            "--port": self.port,
            "--dashboard-port": self.dashboard_port,
            "--ray-client-server-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--metrics-export-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
        }
        return [
            RAY, "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
            f"--num-cpus={self.num_cpus}", f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            f"--temp-dir={self.temp_dir}",
            *(f"{flag}={value}" for flag, value in ports.items()),
            *self.extra,
        ]  # fmt: skip

    def start(self, timeout_s: float = 90.0) -> LocalHead:
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.log_tail()}")
            self.remember()
            if self._dashboard_up():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the head's dashboard did not answer within {timeout_s:.0f} s:\n{self.log_tail()}")

    def _dashboard_up(self) -> bool:
        """Any HTTP answer counts: with Ray's token authentication (on by default) it is a 401."""
        try:
            with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=2) as r:
                return r.status == 200 and "ray_version" in json.loads(r.read())
        except urllib.error.HTTPError:
            return True
        except (OSError, ValueError):
            return False

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ processes
    def _belongs(self, p: psutil.Process) -> bool:
        if self.proc is None:
            return False
        try:
            if _session_of(p.pid) == self.proc.pid:
                return True
            return any(self.temp_dir in arg for arg in p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False

    def remember(self) -> None:
        """Notes the head's descendants now (they may outlive their parents and leave the session)."""
        if self.proc is None:
            return
        try:
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                self._seen[p.pid] = p
        except psutil.NoSuchProcess:
            pass

    def processes(self) -> list[psutil.Process]:
        """Every live process of this head: its session, its descendants (seen now or earlier),
        and any process naming its temp dir."""
        self.remember()
        found: dict[int, psutil.Process] = {}
        for pid, p in self._seen.items():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    found[pid] = p
            except psutil.NoSuchProcess:
                pass
        for p in psutil.process_iter():
            if p.pid not in found and p.pid != os.getpid() and self._belongs(p):
                found[p.pid] = p
        for p in list(found.values()):  # and their children (a job driver's, a fake node's)
            try:
                for c in p.children(recursive=True):
                    found.setdefault(c.pid, c)
            except psutil.NoSuchProcess:
                pass
        found.pop(os.getpid(), None)
        return list(found.values())

    def _signal(self, procs: list, sig: int) -> None:
        """``sig`` to the head's process group and to each of ``procs`` (gone ones are skipped)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass

    def stop(self, grace_s: float = 5.0) -> list[str]:
        """SIGTERM to the head's process group and its other processes, SIGKILL after ``grace_s``;
        returns descriptions of any process still alive after that (empty: all gone)."""
        if self.proc is None:
            return []
        procs = self.processes()
        self._signal(procs, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for _round in range(3):
            alive = list({p.pid: p for p in [*alive, *self.processes()]}.values())
            if not alive:
                break
            self._signal(alive, signal.SIGKILL)
            _, alive = psutil.wait_procs(alive, timeout=5)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        left = []
        for p in self.processes():
            try:
                left.append(f"{p.pid} {' '.join(p.cmdline())[:160]}")
            except psutil.NoSuchProcess:
                pass
        if not left:
            shutil.rmtree(self.temp_dir, ignore_errors=True)  # its session's logs and sockets
        return left

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        left = self.stop()
        if left:
            log.error("processes of the test head left running: %s", left)


def driver_only_head(prefix: str):
    """A ``ray.cluster_utils.Cluster`` on 127.0.0.1 whose head has no CPUs (the driver's node), connected;
    add worker nodes to it. Set ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` first (several nodes on one machine)."""
    import tempfile

    from ray.cluster_utils import Cluster

    return Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={
            "num_cpus": 0,
            "object_store_memory": 300 * 1024 * 1024,
            "temp_dir": tempfile.mkdtemp(prefix=prefix),  # short: Ray's socket paths must fit 107 bytes
            "include_dashboard": False,
        },
    )
