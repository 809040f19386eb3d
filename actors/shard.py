"""Shard actors: each holds one block of vectors and runs ``engine`` k-means and dedup kernels on it.

:class:`ActorShards` is the Ray implementation of ``engine.kmeans.ShardGroup``: calls to all
shards are submitted together and gathered in shard order, so the driver combines partial
results deterministically.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from threadpoolctl import threadpool_limits

from theme_engine.engine.candidates import split_for_cap
from theme_engine.engine.dedup import cap_candidates, range_pairs
from theme_engine.engine.device import Device, count_fallbacks, fallback_reason, resolve_for_stage, run_with_fallback
from theme_engine.engine.kmeans import Shard, host_knn_available
from theme_engine.engine.partition import merge_pairs, pairs_in_partition, route
from theme_engine.engine.vectors import VectorParts

from .memory import peak_rss_bytes


class ShardWorker:
    """One shard of unit vectors (rows ``offset .. offset + n``), on the device resolved once for
    this actor. A GPU that cannot serve (unusable, out of memory even with smaller batches) moves
    the k-means work to the CPU for good; :meth:`info` reports the device that serves and every
    fall-back (``fallbacks``: stage, reason, count)."""

    def __init__(self, block: np.ndarray | tuple[list[str], int, int], offset: int, device: str, batch_rows: int, threads: int) -> None:
        """``block``: the shard's vectors, or ``(paths, a, b)``: rows ``[a, b)`` of the vector
        parts ``paths`` (``engine.vectors.VectorParts``), read here from storage every node sees
        (so that an actor restarted on another node reads them again; see :class:`ActorShards`)."""
        if isinstance(block, tuple):
            paths, a, b = block
            block = VectorParts([Path(p) for p in paths]).rows(a, b)
        gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
        self.threads = threads
        host_knn_available(np)  # loads faiss (if present) first, so its OpenMP pool is limited below too
        self._limits = threadpool_limits(limits=threads)  # BLAS threads for this actor's share of CPUs
        self.host = np.asarray(block, dtype=np.float32)
        self.offset = offset
        self.batch_rows = batch_rows
        self._fallbacks: list[dict[str, str]] = []  # one entry per fall-back, summed by info()
        self.device, reason = resolve_for_stage("kmeans", device, gpu_ids)
        if reason:
            self._fallbacks.append({"stage": "kmeans", "reason": reason})
        self.shard, used = run_with_fallback("kmeans", self.device, lambda d: Shard(self.host, offset, d, batch_rows))
        self._note("kmeans", self.device, used)

    def _note(self, stage: str, asked: Device, used: Device) -> None:
        reason = fallback_reason(asked, used)
        if reason:
            self._fallbacks.append({"stage": stage, "reason": reason})

    def block(self) -> np.ndarray:
        """The shard's vectors, for the duplicate search's tasks (an actor task's return: stored
        by this actor's node, owned by the caller, made again by a restarted actor if lost)."""
        return self.host

    def info(self) -> dict[str, Any]:
        return {
            "n": self.shard.n,
            "offset": self.shard.offset,
            "device": self.shard.device.name,
            "fallbacks": count_fallbacks(self._fallbacks),
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
            "peak_rss_bytes": peak_rss_bytes(),
        }

    def call(self, method: str, *args: Any) -> Any:
        asked = self.shard.device
        if asked.kind == "cpu":
            return getattr(self.shard, method)(*args)

        def run(d: Device, rows: int) -> Any:
            if d.kind == "cpu":  # this GPU cannot serve the shard: the host copy does, from now on
                self.shard = Shard(self.host, self.offset, d, self.batch_rows)
            else:
                self.shard.batch_rows = rows  # a smaller block that fitted stays
            return getattr(self.shard, method)(*args)

        result, used = run_with_fallback("kmeans", asked, run, batch_rows=self.shard.batch_rows)
        self._note("kmeans", asked, used)
        return result

    def pairs_with(
        self, other: np.ndarray, other_offset: int, threshold: float, batch_rows: int, cap: tuple[float, int] | None = None
    ) -> Any:
        """Pairs (i, j, cos >= threshold), i in this shard, j in ``other``, i < j, and which device
        served them: ``(i, j, cos, {"device", "fallback"})``. ``cap = (near threshold, neighbors)``
        keeps, below the near threshold, only each row's nearest pairs (``engine.dedup.cap_candidates``)."""

        def run(d: Device, rows: int) -> Any:
            return range_pairs(self.host, self.offset, other, other_offset, threshold, rows, device=d)

        (i, j, s), used = run_with_fallback("dedup", self.device, run, batch_rows=batch_rows)
        if cap is not None:
            keep = cap_candidates(i, j, s, *cap)
            i, j, s = i[keep], j[keep], s[keep]
        self._note("dedup", self.device, used)
        return i, j, s, {"device": used.name, "fallback": fallback_reason(self.device, used)}

    def route_groups(
        self, centroids: np.ndarray, spill: int | None, margin: float, n_groups: int
    ) -> tuple[Any, ...]:
        """Place this shard's rows into partitions (owner + guests) and split the placements into
        ``n_groups`` buckets by partition, one return value each: (row ids, partitions, owner).
        Only ids travel; the search tasks read the vectors from the shard blocks."""
        routes = route(self.host, centroids, spill, margin=margin, offset=self.shard.offset)
        bucket = routes.part_ids % n_groups
        out = []
        for g in range(n_groups):
            m = bucket == g
            out.append((routes.row_ids[m], routes.part_ids[m], routes.is_primary[m]))
        out.append({"placements": int(routes.row_ids.size), "rows": routes.n_rows, "capped": routes.n_capped})
        return tuple(out)


@ray.remote(max_retries=1)  # then cluster.gather backs off
def search_partitions(
    threshold: float,
    batch_rows: int,
    offsets: Sequence[int],
    *parts_and_blocks: Any,
    device: str = "cpu",
    cap: tuple[float, int] | None = None,
    buckets: int = 0,
) -> tuple[Any, ...]:
    """Exact pairs inside every partition of one bucket, on the GPU the driver assigned (when it
    did) else the CPU. ``parts_and_blocks`` is the bucket's placements from each of the S shards
    (row ids, partitions, owner), then the S shard blocks (object refs Ray resolves here: a node
    fetches each block once and reads it in place), with the shards' first rows in ``offsets``.
    Returns ``(i, j, cos, info)``; ``info`` says which device served (``device``) and why not the
    GPU asked for (``fallback``). ``cap = (near threshold, neighbors)`` keeps, below the near
    threshold, only each row's nearest pairs (``engine.dedup.cap_candidates``: what the driver
    keeps of them anyway). With ``buckets`` (called with ``num_returns=buckets + 1``) the pairs stay
    on this node for the cap and screen tasks: it returns ``info`` and the pairs split by document
    bucket (``engine.candidates.split_for_cap``), each its own object."""
    t0 = time.perf_counter()
    S = len(offsets)
    parts, blocks = parts_and_blocks[:S], parts_and_blocks[S:]
    rows = np.concatenate([p[0] for p in parts])
    part = np.concatenate([p[1] for p in parts])
    owner = np.concatenate([p[2] for p in parts])
    shard = np.repeat(np.arange(S), [p[0].size for p in parts])
    # by partition, owners first (pairs_in_partition then slices, not copies), then by shard: a
    # partition's vectors are a few runs of rows of one block each, gathered partition by
    # partition: one gather of a whole bucket (GBs) is much slower than many small ones (bench/README.md)
    order = np.lexsort((shard, ~owner, part))
    rows, part, owner, shard = rows[order], part[order], owner[order], shard[order]
    bounds = np.flatnonzero(np.diff(part)) + 1
    groups = [(lo, hi) for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, part.size]) if hi - lo > 1]
    cuts = np.r_[0, np.flatnonzero((np.diff(part) != 0) | (np.diff(owner) != 0) | (np.diff(shard) != 0)) + 1, part.size]

    def vectors(lo: int, hi: int) -> np.ndarray:
        runs = cuts[np.searchsorted(cuts, lo) : np.searchsorted(cuts, hi) + 1]
        if runs.size == 2:  # one run: one block
            k = int(shard[lo])
            return blocks[k][rows[lo:hi] - offsets[k]]
        out = np.empty((hi - lo, blocks[0].shape[1]), dtype=np.float32)
        for a, b in zip(runs[:-1], runs[1:]):
            k = int(shard[a])
            out[a - lo : b - lo] = blocks[k][rows[a:b] - offsets[k]]
        return out

    asked, reason = resolve_for_stage("dedup", device, ray.get_gpu_ids())

    capping = [0.0]

    def capped(pairs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # each partition's pairs capped as it is searched (the cap keeps its choice on any
        # superset of a row's pairs): the task holds the kept pairs, not every pair of its partitions
        if cap is None:
            return pairs
        t = time.perf_counter()
        keep = cap_candidates(*pairs, *cap)
        capping[0] += time.perf_counter() - t
        return pairs[0][keep], pairs[1][keep], pairs[2][keep]

    def run(d: Device, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        capping[0] = 0.0
        return merge_pairs(
            capped(pairs_in_partition(vectors(lo, hi), rows[lo:hi], owner[lo:hi], threshold, block, d)) for lo, hi in groups
        )

    t1 = time.perf_counter()
    (i, j, s), used = run_with_fallback("dedup", asked, run, batch_rows=batch_rows)
    t2 = time.perf_counter()
    if cap is not None:
        keep = cap_candidates(i, j, s, *cap)
        i, j, s = i[keep], j[keep], s[keep]
    seconds = {"sort": t1 - t0, "search": t2 - t1 - capping[0], "cap": time.perf_counter() - t2 + capping[0]}
    info = {"device": used.name, "fallback": fallback_reason(asked, used, reason), "seconds": seconds, "pairs": int(i.size)}
    if buckets:
        return (info, *split_for_cap((i, j, s), buckets))
    return i, j, s, info


ShardActor = ray.remote(ShardWorker)


def _work_nodes(gpu: bool) -> list[str]:
    """Ids of the alive nodes that do work: with CPUs (with GPUs when ``gpu``), most CPUs first;
    a driver-only head with no CPUs is left out."""
    key = "GPU" if gpu else "CPU"
    alive = [n for n in ray.nodes() if n.get("Alive") and float(n["Resources"].get(key, 0)) > 0]
    alive.sort(key=lambda n: (-float(n["Resources"].get("CPU", 0)), n["NodeID"]))
    return [n["NodeID"] for n in alive]


INLINE_BYTES = 100 * 1024  # Ray sends smaller task arguments inline, not through the object store


class ActorShards:
    """``ShardGroup`` over Ray actors: shard ``i`` holds rows ``[offsets[i], offsets[i] + sizes[i])``
    of ``vectors``, which it reads itself from the parts on storage every node sees; the driver
    sends each actor only the names of its parts and its rows, and puts nothing into the object
    store."""

    def __init__(
        self,
        vectors: VectorParts,
        shards: int,
        device: str = "auto",
        batch_rows: int = 16_384,
        threads: int = 1,
        num_gpus: float = 0.0,
        memory: int = 0,
    ) -> None:
        n, d = vectors.shape
        k = max(1, shards)
        bounds = np.cumsum([0] + [n // k + 1] * (n % k) + [n // k] * (k - n % k))  # np.array_split's rows
        self.offsets = bounds[:-1].tolist()
        self.sizes = np.diff(bounds).tolist()
        # num_cpus=0: shards hold data between stages and would otherwise starve the Ray tasks
        # (choice of k) that run while they wait; their compute threads are capped by ``threads``.
        # ``memory`` (bytes) is reserved per shard, so a node never gets more shards than it holds;
        # at least the block's size, since Ray places a request for no resources on a random node,
        # whatever its affinity.
        # Shards are dealt round-robin over the nodes that do work (soft affinity: a node without
        # room, or a lost one, gives way to any other). A shard whose node is lost restarts
        # elsewhere and reads its rows again (its constructor's arguments are names and numbers:
        # nothing Ray would have to keep in the object store for a restart); calls in flight are
        # retried on the new actor, and a lost block (``refs``) is made again by it.
        nodes = _work_nodes(num_gpus > 0)
        self.actors = []
        for i, (a, b) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
            lo, hi = np.searchsorted(vectors.offsets, [a, max(a, b - 1)], side="right") - 1
            first = int(vectors.offsets[lo])
            paths = [str(p) for p in vectors.paths[lo : max(hi, lo) + 1]]
            self.actors.append(
                ShardActor.options(
                    num_cpus=0,
                    num_gpus=num_gpus,
                    memory=max(memory, max(self.sizes) * d * 4, 1),
                    scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=True) if nodes else "SPREAD",
                    max_restarts=-1,
                    max_task_retries=-1,
                ).remote((paths, a - first, b - first), a, device, batch_rows, threads)
            )
        self.refs = [actor.block.remote() for actor in self.actors]

    def submit(self, i: int, method: str, *args: Any) -> Any:
        return self.actors[i].call.remote(method, *args)

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        return ray.get(list(handles))

    def shared(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """Arguments of a call on every shard: an array Ray would copy into the object store for
        each call (over ``INLINE_BYTES``) is put there once and every shard reads that copy."""
        if len(self.actors) < 2:
            return args
        return tuple(ray.put(a) if isinstance(a, np.ndarray) and a.nbytes > INLINE_BYTES else a for a in args)

    def info(self) -> list[dict[str, Any]]:
        return ray.get([a.info.remote() for a in self.actors])

    def route(self, i: int, centroids_ref: Any, spill: int | None, margin: float, n_groups: int) -> list[Any]:
        """Submit the routing of shard ``i``: ``n_groups`` bucket refs, then a stats ref."""
        return self.actors[i].route_groups.options(num_returns=n_groups + 1).remote(centroids_ref, spill, margin, n_groups)

    def pairs(self, i: int, j: int, threshold: float, batch_rows: int, cap: tuple[float, int] | None = None) -> Any:
        """Submit the pair search of shard ``i`` against shard ``j``'s block (a future)."""
        return self.actors[i].pairs_with.remote(self.refs[j], self.offsets[j], threshold, batch_rows, cap)

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []
        self.refs = []
