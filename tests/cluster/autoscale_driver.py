"""Driver for ``test_autoscaling.py``, run in its own process: ``python autoscale_driver.py ADDRESS MODE``.

It connects to a fake autoscaling cluster (one that starts nodes on this machine) and prints one
JSON line of what it saw, polling ``ray.nodes()``:

- ``cpu``: tasks that ask for more CPUs than the head has, then idle; the autoscaler starts CPU
  nodes and must never start a GPU node.
- ``gpu``: an actor that asks for a (fake) GPU: a GPU node starts from zero; once the actor is gone
  the node goes idle and is terminated.
- ``run CORPUS WORKDIR``: the real job (``cluster.driver.run``) with ``device="cuda"`` and ``k=2``
  on a cluster with no GPU node: the driver asks the autoscaler for one and uses it (a fake GPU:
  the GPU paths fall back to CPU). Nodes are polled in a thread while the job runs.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

import ray


def alive_nodes() -> list[dict]:
    return [
        {"id": n["NodeID"], "cpus": n["Resources"].get("CPU", 0), "gpus": n["Resources"].get("GPU", 0)}
        for n in ray.nodes()
        if n.get("Alive")
    ]


def gpu_nodes() -> list[dict]:
    return [n for n in alive_nodes() if n["gpus"] > 0]


def wait_for(cond, timeout_s: float, seen: list) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen.append(alive_nodes())
        if cond():
            return True
        time.sleep(0.5)
    return False


def max_resources() -> dict | None:
    """What the cluster can scale to, from the autoscaler's config in the GCS (private Ray API,
    the one Ray Data sizes itself with); None where the autoscaler has not reported one."""
    try:
        from ray._private.state import state

        return state.get_max_resources_from_cluster_config()
    except (ImportError, AttributeError) as exc:
        return {"error": repr(exc)}


@ray.remote(num_cpus=1)
def busy(seconds: float) -> str:
    time.sleep(seconds)
    return ray.get_runtime_context().get_node_id()


@ray.remote(num_gpus=1, num_cpus=1)
class GpuUser:
    def where(self) -> dict:
        import os

        return {"node": ray.get_runtime_context().get_node_id(), "gpu_ids": ray.get_gpu_ids(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}


def run_job(corpus: str, workdir: str, seen: list, result: dict) -> None:
    """The whole job with ``--device cuda`` while a thread notes the live nodes every 0.5 s."""
    from theme_engine.cluster.runtime.driver import run
    from theme_engine.engine.config import load_config

    cfg = load_config(
        {
            "inputs": [corpus],
            "out": f"{workdir}/out",
            "device": "cuda",
            "read": {"id_field": "id"},
            "kmeans": {"k": 2, "max_iter": 10},
            "cache": {"dir": f"{workdir}/cache"},
            "ray": {"scale_wait_s": 120},
        }
    )
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            nodes = alive_nodes()
            seen.append(nodes)
            if "first_gpu_s" not in result and any(n["gpus"] > 0 for n in nodes):
                result["first_gpu_s"] = round(time.monotonic() - t0, 1)
            done.wait(0.5)

    t0 = time.monotonic()
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        res = run(cfg)
    finally:
        done.set()
        poller.join(timeout=5)
    result["run_s"] = round(time.monotonic() - t0, 1)
    m = res.manifest
    result["manifest"] = {
        "k": m["k"],
        "gpu_fallbacks": m["gpu_fallbacks"],
        "stages": {name: {"device": r.get("device"), "fallbacks": r.get("fallbacks", [])} for name, r in m["stages"].items()},
    }
    result["themes"] = len(res.themes)


def main(address: str, mode: str, *args: str) -> dict:
    ray.init(address=address, logging_level="WARNING", configure_logging=False)
    seen: list[list[dict]] = []
    result: dict = {"mode": mode, "start": alive_nodes(), "can_get": max_resources()}
    t0 = time.monotonic()
    if mode == "cpu":
        # 4 one-CPU tasks at once on a 2-CPU head: demand for more CPUs, none for GPUs
        refs = [busy.remote(8.0) for _ in range(4)]
        pending = refs
        while pending:
            seen.append(alive_nodes())
            _, pending = ray.wait(pending, timeout=0.5)
        result["task_nodes"] = sorted(set(ray.get(refs)))
        wait_for(lambda: False, 6.0, seen)  # idle a few autoscaler rounds more
    elif mode == "gpu":
        user = GpuUser.remote()
        ready, _ = ray.wait([user.where.remote()], timeout=120)
        result["scaled_up_s"] = round(time.monotonic() - t0, 1)
        result["where"] = ray.get(ready[0]) if ready else None
        result["cluster_gpus_up"] = ray.cluster_resources().get("GPU", 0)
        seen.append(alive_nodes())
        ray.kill(user)
        del user
        t1 = time.monotonic()
        result["scaled_down"] = wait_for(lambda: not gpu_nodes(), 120.0, seen)
        result["scaled_down_s"] = round(time.monotonic() - t1, 1)
        result["cluster_gpus_end"] = ray.cluster_resources().get("GPU", 0)
    elif mode == "run":
        run_job(args[0], args[1], seen, result)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    result["max_gpu_nodes"] = max((sum(1 for n in s if n["gpus"] > 0) for s in seen), default=0)
    result["max_nodes"] = max((len(s) for s in seen), default=0)
    result["end"] = alive_nodes()
    ray.shutdown()
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print("RESULT " + json.dumps(main(*sys.argv[1:])), flush=True)
