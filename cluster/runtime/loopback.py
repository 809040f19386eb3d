"""Keeping a local Ray on the loopback interface, and checking where it listens. Nothing here
imports Ray: the setting must be in place before Ray is imported."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from theme_engine.engine.config import RunConfig

log = logging.getLogger(__name__)

ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


def local_ray_on_loopback(cfg: RunConfig) -> bool:
    """Before Ray is imported: when this run will start its own local Ray (no ``ray.address``, no
    ``RAY_ADDRESS``), make every Ray listener bind to 127.0.0.1. Ray treats the machine as a
    single-node host (as on macOS) under ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: its node address
    is the loopback one, and the GCS, raylet, workers and agents listen there instead of on every
    interface. Ray reads the setting when it is imported (when it was imported before this call, its
constant is set to what it would have read), and its workers inherit it; the setting
    only affects a local Ray (``ray start`` refuses to join others under it), so a run connecting
    to a cluster is left alone. True when the setting is in force for this run."""
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        return False
    os.environ.setdefault(ENV, "0")
    if os.environ[ENV] != "0":  # the user asked for Ray's own choice
        return False
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # Ray was imported first (a notebook, a Ray Dataset input): it read the setting already
        ray = sys.modules["ray"]
        if ray.is_initialized():
            return False  # a Ray the caller started: not ours to change
        if not hasattr(constants, "ENABLE_RAY_CLUSTER"):
            log.debug("ray was imported before the run and has no ENABLE_RAY_CLUSTER: its listeners bind as Ray chooses")
            return False
        constants.ENABLE_RAY_CLUSTER = False  # what Ray would have read at import; its processes get the variable
    return True


def listening_sockets() -> list[dict[str, Any]]:
    """TCP sockets listening in this process and its descendants (a local Ray's GCS, raylet,
    workers and the raylet's agents), each with its process name and whether it is loopback-only."""
    import psutil

    me = psutil.Process()
    procs = {p.pid: p for p in [me, *me.children(recursive=True)]}
    found = []
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:  # some systems hide other processes' sockets: report what is ours
        conns = me.net_connections(kind="tcp")
    for c in conns:
        if c.status != psutil.CONN_LISTEN or c.pid not in procs:
            continue
        try:
            name = procs[c.pid].name()
        except psutil.Error:
            name = "?"
        found.append({"pid": c.pid, "process": name, "ip": c.laddr.ip, "port": c.laddr.port, "loopback": c.laddr.ip in LOOPBACK})
    return sorted(found, key=lambda s: (s["process"], s["port"]))
