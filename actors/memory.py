"""Peak memory of the current process (reported by actors and the driver)."""

from __future__ import annotations

import resource
import sys


def peak_rss_bytes() -> int:
    """The largest resident set this process has had, in bytes: ``VmHWM`` of ``/proc/self/status``
    on Linux, which starts at the process's exec. ``ru_maxrss`` also counts the image of whatever
    started it, up to the exec (a 400 MB parent gives its 11 MB child a ``ru_maxrss`` of 426 MB):
    it is the fall-back elsewhere (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class DriverPuts:
    """What this process (a job's driver) holds in the object store from its own ``ray.put`` and
    large task arguments (objects whose id carries its task id), sampled every ``every`` seconds
    from its node raylets' reference tables while it runs: the peak bytes held at once and the
    bytes of every distinct object seen (``total``). Task returns it owns are not counted: those
    were made by the workers. A diagnostic for benchmarks and tests, not for runs."""

    def __init__(self, every: float = 0.2) -> None:
        import os
        import threading

        import ray

        probe = ray.put(b"")
        self.prefix = probe.task_id().hex()
        del probe
        self.pid = os.getpid()
        self.every = every
        self.peak = 0
        self.seen: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="driver-puts", daemon=True)

    @property
    def total(self) -> int:
        return sum(self.seen.values())

    def __enter__(self) -> DriverPuts:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> None:
        import ray
        from ray._private import internal_api

        held = 0
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            try:
                reply = internal_api.node_stats(node["NodeManagerAddress"], node["NodeManagerPort"], include_memory_info=True)
            except Exception:  # noqa: BLE001  (a node going away between listing and asking)
                continue
            for worker in reply.core_workers_stats:
                if worker.pid != self.pid:
                    continue
                for ref in worker.object_refs:
                    oid = ref.object_id.hex()
                    if oid.startswith(self.prefix) and ref.object_size > 0:
                        held += ref.object_size
                        self.seen[oid] = ref.object_size
        self.peak = max(self.peak, held)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()
