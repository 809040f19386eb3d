"""Connecting to Ray and planning actors onto the resources found."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import psutil
import ray

from theme_engine.engine.config import EmbedConfig, RayConfig, redact_url
from theme_engine.engine.events import StageControl

from . import reaper

log = logging.getLogger(__name__)


@contextmanager
def _own_signal_handlers() -> Iterator[None]:
    """Keep the caller's SIGINT/SIGTERM handlers: ``ray.init`` installs its own (SIGTERM exits at
    once), which would end a run mid-batch instead of letting it stop cleanly and stay resumable
    (``ray job stop``, a pod's termination)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


@dataclass(frozen=True)
class Connection:
    """How this process reached Ray: ``local`` (a Ray of its own, started here on 127.0.0.1),
    ``joined`` (the cluster the user named: ``--address``, ``ray.address`` or ``RAY_ADDRESS``) or
    ``attached`` (Ray was initialised before, e.g. by the caller of the Python API)."""

    how: str
    address: str | None = None  # the address joined (secrets redacted), or the local Ray's own (127.0.0.1)

    @property
    def started(self) -> bool:
        """Whether this process connected (and must disconnect, ``ray.shutdown``, when done)."""
        return self.how != "attached"

    def record(self) -> dict[str, Any]:
        """For the manifest: how, where, and the cluster's nodes, CPUs and GPUs at the start."""
        res = ray.cluster_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        return {"how": self.how, "address": self.address, "nodes": nodes, "cpus": res.get("CPU", 0), "gpus": res.get("GPU", 0)}


@contextmanager
def _quiet_token_notice() -> Iterator[None]:
    """Ray (2.5x+) warns on every ``ray.init`` that token authentication is on for the cluster (it
    is, and should be): nothing a user can act on, so it is not shown."""
    quiet = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet.setLevel(level)


def describe(record: dict[str, Any]) -> str:
    """One line for a summary: which Ray a run used (a :meth:`Connection.record`)."""
    where = {"local": "a local Ray of its own on 127.0.0.1", "joined": f"the Ray cluster at {record.get('address')}"}.get(
        record.get("how", ""), "the Ray already started in this process"
    )
    gpus = f", {record['gpus']:g} GPUs" if record.get("gpus") else ""
    return f"ran on {where} ({record.get('nodes', 0)} node(s), {record.get('cpus', 0):g} CPUs{gpus})"


def connect(cfg: RayConfig) -> Connection:
    """Join ``cfg.address`` (or ``RAY_ADDRESS``: the user names a cluster), else start a local Ray
    of this process's own — never whatever cluster the machine last started (``ray.init()``
    without an address would join the one ``ray start`` recorded in Ray's temp folder, and fail
    while that record outlives its cluster)."""
    if ray.is_initialized():
        return Connection("attached")
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    common = {"logging_level": logging.WARNING, "log_to_driver": True, "configure_logging": False}
    if address:
        log.info("connecting to Ray at %s", redact_url(address))
        with _own_signal_handlers(), _quiet_token_notice():
            ray.init(address=address, **common)
        return Connection("joined", redact_url(address))
    store = cfg.object_store_memory or int(min(2 * 1024**3, 0.3 * psutil.virtual_memory().total))
    kwargs = dict(num_cpus=cfg.num_cpus, object_store_memory=store, include_dashboard=False, **common)
    if cfg.temp_dir:
        kwargs["_temp_dir"] = str(cfg.temp_dir)
    with _own_signal_handlers(), _quiet_token_notice():
        ray.init(address="local", **kwargs)
    reaper.start_watchdog(ray._private.worker._global_node.get_session_dir_path())  # our Ray ends with this process
    log.info("started a local Ray with %s CPUs", ray.cluster_resources().get("CPU"))
    return Connection("local", ray.get_runtime_context().gcs_address)


def cluster_cpus() -> int:
    """The CPUs of the connected cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def task_window() -> int:
    """How many tasks whose arguments the driver ships (texts, columns) may be in flight at once:
    two per CPU of the cluster keep every CPU busy, and the arguments in the object store a
    window at a time (``gather``'s ``window``)."""
    return 2 * cluster_cpus()


def cluster_gpus() -> int:
    """GPUs of the cluster's live nodes now."""
    return int(ray.cluster_resources().get("GPU", 0))


def ensure_gpus(device: str, wait_s: float, control: StageControl | None = None, poll_s: float = 1.0) -> bool:
    """True if the cluster has GPUs for ``device`` — asking an autoscaler for one when it must.

    ``"cuda"`` on a cluster with no GPU now asks the autoscaler for a one-GPU bundle
    (:func:`ray.autoscaler.sdk.request_resources`; a GPU node type with ``min_workers: 0`` starts
    one) and waits up to ``wait_s`` seconds for it. On a cluster without an autoscaler nothing
    comes: after the wait it logs a warning and returns False, and the run goes on with CPU. The
    request stays until :func:`release_gpu_request` (else the idle node could be stopped between
    this check and the actors that use it). The request is one cluster-wide setting that others
    (Ray Data) overwrite, so it is renewed at every poll, and a pending one-GPU placement group adds
    a demand no one can overwrite while it waits. ``"auto"`` and ``"cpu"`` never ask and never wait.
    ``control`` stops the wait between polls (:class:`engine.events.Interrupted`)."""
    if cluster_gpus() > 0:
        return True
    if device != "cuda" or wait_s <= 0:
        return False
    from ray.autoscaler.sdk import request_resources  # noqa: PLC0415 - only where a GPU is wanted

    log.info("device cuda but no GPU in the cluster: asking the autoscaler for a GPU node (waiting up to %.0f s)", wait_s)
    request_resources(bundles=[{"GPU": 1}])
    demand = ray.util.placement_group([{"GPU": 1}])
    t0 = time.monotonic()
    last_log = t0
    try:
        while True:
            if control is not None:
                control.check()
            if cluster_gpus() > 0:
                log.info("a GPU node joined after %.0f s", time.monotonic() - t0)
                return True
            now = time.monotonic()
            if now - t0 >= wait_s:
                break
            if now - last_log >= 10:
                log.info("waiting for the autoscaler to start a GPU node (%.0f s)", now - t0)
                last_log = now
            time.sleep(min(poll_s, max(0.0, wait_s - (now - t0))))
            request_resources(bundles=[{"GPU": 1}])
    finally:
        ray.util.remove_placement_group(demand)  # frees the GPU it may hold for the run's actors
    release_gpu_request()  # a GPU node that comes later would sit idle: this run plans for CPU
    log.warning(
        "device cuda: no GPU node joined within %.0f s (no autoscaler, no GPU node type, or none free); "
        "the run goes on with CPU",
        wait_s,
    )
    return False


def release_gpu_request() -> None:
    """Withdraws this driver's autoscaler request (:func:`ensure_gpus`), so that idle GPU nodes
    can be stopped. (Ray Data replaces the request with its own while it runs a pool.)"""
    from ray.autoscaler.sdk import request_resources  # noqa: PLC0415

    request_resources(bundles=[])


@dataclass(frozen=True)
class Resources:
    """What an actor asks Ray for."""

    cpus: float
    gpus: float = 0.0
    memory: int = 0  # bytes; Ray places an actor only where this much memory is unclaimed


def shard_memory(rows: int, dim: int) -> int:
    """Bytes a shard actor may hold at its peak: its float32 rows, a same-size working copy (fit on
    a fraction, or the placements it routes for dedup — about 2 rows per row), the row norms, and
    64 MiB of blocks and runtime."""
    return int(3 * rows * dim * 4 + rows * 8 + 64 * 2**20)


@dataclass(frozen=True)
class Plan:
    cluster_cpus: int
    cluster_gpus: int
    embed_actors: int
    embed_resources: Resources
    embed_threads: int
    shards: int
    shard_threads: int
    shard_resources: Resources
    use_gpu: bool = False  # the cluster has GPUs and the device is not "cpu"
    task_resources: Resources = Resources(cpus=1)  # one choice-of-k or partition-search task
    embed_in_driver: bool = False  # the one CPU embedding actor would share the driver's only node: the driver embeds


def _floor4(x: float) -> float:
    """Ray accounts fractional GPUs to 1e-4: round a share down so that the shares add up to <= 1."""
    return math.floor(x * 10_000) / 10_000


def plan(
    n_docs: int,
    embed: EmbedConfig,
    shards: int | None = None,
    dim: int = 384,
    device: str = "auto",
    max_embed_actors: int | None = None,
) -> Plan:
    """Size the actor pools from the resources the cluster has (see :func:`ensure_gpus` for a
    GPU the cluster can get).

    Embedding actors: the pool starts with one and grows up to ``embed_actors``: ``max_embed_actors``
    where given (on an autoscaling cluster, Ray Data then grows the pool as nodes join), else what
    the CPUs (or GPUs) present allow.

    Shards: one per CPU (at least ~2,000 rows each), and more if needed so that one shard's memory
    (:func:`shard_memory`) is at most half of the largest node's; each asks Ray for its memory, so
    Ray never places more shards on a node than the node holds.

    GPUs are asked for only where the cluster has them and ``device`` is not ``"cpu"``: then each
    embedding actor takes a whole GPU (one actor per GPU), the shards share half of each GPU (so
    they live on GPU nodes, sized to those nodes' memory), and each choice-of-k or partition-search
    task takes a share of the other half — the shards live through those stages, so the tasks must
    still find GPU room. Work that asks for no GPU runs on the CPU nodes of a mixed cluster (Ray
    keeps it off GPU nodes while other nodes have room)."""
    res = ray.cluster_resources()
    cpus = max(1, int(res.get("CPU", 1)))
    gpus = int(res.get("GPU", 0))
    alive = [n for n in ray.nodes() if n.get("Alive")]
    gpu_nodes = [n for n in alive if float(n["Resources"].get("GPU", 0)) > 0]
    use_gpu = gpus > 0 and bool(gpu_nodes) and device != "cpu"
    node_cpus = [int(n["Resources"].get("CPU", 0)) for n in alive]
    biggest = max([c for c in node_cpus if c > 0], default=1)
    threads = embed.threads_per_actor or min(biggest, 4)
    threads = max(1, min(threads, biggest))
    # An actor must fit on one node, and Ray Data keeps a CPU for its own operators: a pool that
    # asks for every CPU never starts. On a small machine an actor runs more threads than it declares.
    declared = max(1, min(threads, biggest, cpus - 1))
    actors = embed.actors or max(1, (cpus - 1) // declared)
    embed_resources = Resources(cpus=declared)
    task_resources = Resources(cpus=1)
    if use_gpu:
        gpu_node_cpus = min(int(n["Resources"].get("CPU", 0)) for n in gpu_nodes)
        actors = min(embed.actors or gpus, gpus)
        embed_resources = Resources(cpus=min(declared, gpu_node_cpus), gpus=1.0)
        task_resources = Resources(cpus=1, gpus=_floor4(0.5 / max(1, gpu_node_cpus)))
    # One CPU embedding actor on the driver's own node, the cluster's only one, would only add an
    # actor's start (a worker process, imports, the model: ~4-7 s before its first batch, measured by
    # bench/embed.py) to what the idle driver can do itself with the same threads.
    in_driver = (
        not use_gpu
        and actors == 1
        and not embed.actors
        and not max_embed_actors
        and len(alive) == 1
        and int(alive[0]["Resources"].get("CPU", 0)) >= 1  # a head without CPUs (workers scaled down) is no place for work
        and not ray.util.client.ray.is_connected()  # Ray Client: the driver is not on the cluster
        and alive[0].get("NodeID") == ray.get_runtime_context().get_node_id()
    )
    if max_embed_actors:
        actors = max_embed_actors
    placed = gpu_nodes if use_gpu else alive
    if not shards:
        node_mem = max([int(n["Resources"].get("memory", 0)) for n in placed], default=0)
        by_cpu = max(1, min(cpus, math.ceil(n_docs / 2000)))
        by_memory = math.ceil(shard_memory(n_docs, dim) / (node_mem / 2)) if node_mem else 1
        shards = max(by_cpu, by_memory)
    shards = min(shards, max(1, n_docs))
    shard_gpus = _floor4(0.5 / math.ceil(shards / gpus)) if use_gpu else 0.0
    return Plan(
        cluster_cpus=cpus,
        cluster_gpus=gpus,
        embed_actors=actors,
        embed_resources=embed_resources,
        embed_threads=threads,
        shards=shards,
        shard_threads=max(1, cpus // shards),
        shard_resources=Resources(cpus=0, gpus=shard_gpus, memory=shard_memory(math.ceil(n_docs / shards), dim)),
        use_gpu=use_gpu,
        task_resources=task_resources,
        embed_in_driver=in_driver,
    )
