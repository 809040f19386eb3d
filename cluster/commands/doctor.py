"""``theme-engine doctor``: what this machine and cluster can run, and what is broken.

Checks, in order: installed packages (the CPU/GPU twins), the device ``resolve_device("auto")``
would choose here and, per GPU library, why the GPU path is unavailable; FAISS (CPU) with a tiny
exact search; the embedding model (load it, embed one sentence); the embedding cache (open it);
and the Ray cluster (connect to ``--address`` or start a small local Ray, read its resources, shut
down what it started). Each check is ``ok``, ``warn``, ``fail``, ``info`` (a fact, e.g. no GPU)
or ``skip``. The exit status is 0 when the CPU path is fully usable — a missing GPU is not a
failure — and 1 when a required check fails.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from theme_engine.engine.config import RunConfig, redact_url

from ..runtime.loopback import local_ray_on_loopback

log = logging.getLogger(__name__)

OK, WARN, FAIL, INFO, SKIP = "ok", "warn", "fail", "info", "skip"
PROBE_SENTENCE = "The quick brown fox jumps over the lazy dog."


@dataclass
class Check:
    name: str
    status: str
    detail: str
    required: bool = True
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "required": self.required, "detail": self.detail, **self.data}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_packages() -> Check:
    from theme_engine.engine.deps import INSTALL_HINT, installed_twins, missing_runtime

    twins = installed_twins()
    missing = missing_runtime()
    data = {"theme_engine": _version("theme-engine"), "python": platform.python_version(), "twins": twins}
    conflicts = {m: d for m, d in twins.items() if len(d) > 1}
    if missing:
        names = [m for m, d in twins.items() if not d]
        return Check("packages", FAIL, f"missing {', '.join(names) or 'runtime modules'}: {INSTALL_HINT}", data=data)
    if conflicts:
        pairs = "; ".join(f"{m}: {' and '.join(d)}" for m, d in conflicts.items())
        return Check(
            "packages",
            WARN,
            f"both twins installed ({pairs}): the last one unpacked owns the module; uninstall one",
            data=data,
        )
    return Check("packages", OK, ", ".join(d[0] for d in twins.values() if d), data=data)


def check_device(cfg: RunConfig) -> tuple[Check, list[Check]]:
    from theme_engine.engine.device import GpuUnavailable, gpu_status, local_gpu_ids, resolve_device

    status = gpu_status()
    device = resolve_device("auto", local_gpu_ids(status))
    data = {"auto": device.name, "reason": device.reason, "configured": cfg.device, "gpu": status.as_dict()}
    if device.kind == "cuda":
        detail = f"auto -> {device.name} ({status.devices} CUDA device(s))"
    else:
        detail = f"auto -> cpu: {status.reason or device.reason}"
    check = Check("device", INFO if device.kind == "cpu" else OK, detail, required=False, data=data)
    if cfg.device == "cuda":
        try:
            resolve_device("cuda", local_gpu_ids(status))
        except GpuUnavailable as exc:
            check.status = WARN
            check.detail += f"; configured device 'cuda' would fail: {exc}"
    libs = [
        Check(
            f"gpu.{lib.name}",
            OK if lib.usable else INFO,
            (f"{lib.version} " if lib.version else "") + ("usable" if lib.usable else f"- {lib.reason}"),
            required=False,
            data={"importable": lib.importable, "version": lib.version, "usable": lib.usable, "reason": lib.reason, "role": lib.role},
        )
        for lib in status.libraries
    ]
    return check, libs


def check_faiss() -> Check:
    import numpy as np

    from theme_engine.engine.deps import MissingDependency, require

    try:
        faiss = require("faiss")
    except MissingDependency as exc:
        return Check("faiss", FAIL, str(exc))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(16)
    index.add(x)
    _, ids = index.search(x[:8], 1)
    exact = bool((ids[:, 0] == np.arange(8)).all())
    data = {
        "version": getattr(faiss, "__version__", None),
        "num_gpus": int(faiss.get_num_gpus()),
        "gpu_build": hasattr(faiss, "StandardGpuResources"),
        "self_test": exact,
    }
    build = "GPU build" if data["gpu_build"] else "CPU build"
    if not exact:
        return Check("faiss", FAIL, f"{data['version']} ({build}): exact search self-test returned wrong neighbours", data=data)
    return Check("faiss", OK, f"{data['version']} ({build}, {data['num_gpus']} GPU(s)); exact search self-test passed", data=data)


def check_embedding(cfg: RunConfig, providers: list[str] | None = None, name: str = "embedding") -> Check:
    import numpy as np

    from theme_engine.engine.cache import default_cache_dir
    from theme_engine.engine.deps import MissingDependency
    from theme_engine.engine.embedding import Embedder, ModelUnavailable, configured_model

    root = Path(cfg.cache.dir or default_cache_dir())  # where a run builds its model folder too
    start = time.perf_counter()
    asked = str(cfg.embed.model_path or cfg.embed.model)
    try:
        spec = configured_model(cfg.embed, root)
        embedder = Embedder(spec, root, threads=1, providers=providers)
    except (MissingDependency, ModelUnavailable) as exc:
        return Check(name, FAIL, str(exc), data={"model": asked})
    except ValueError as exc:  # an unknown model name, or FastEmbed refusing providers that onnxruntime does not list
        if not providers:
            return Check(name, FAIL, str(exc), data={"model": asked})
        return Check(name, WARN, f"{providers[0]} refused: {exc}", data={"model": asked, "providers": None})
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    vec = embedder.embed([PROBE_SENTENCE])
    embedded = time.perf_counter() - start
    session = getattr(getattr(getattr(embedder, "_model", None), "model", None), "model", None)
    active = list(session.get_providers()) if hasattr(session, "get_providers") else None
    norm = float(np.linalg.norm(vec[0])) if vec.shape[0] else 0.0
    data = {
        "model": spec.name,
        "model_info": spec.describe(),
        "dim": int(vec.shape[1]),
        "load_seconds": round(loaded, 3),
        "embed_seconds": round(embedded, 3),
        "norm": round(norm, 4),
        "providers": active,
    }
    detail = (
        f"{spec.name} ({spec.kind}, {spec.model_id.rsplit(':', 1)[1]}): dim {vec.shape[1]}, {spec.pooling} pooling, "
        f"{spec.max_tokens} tokens, loaded in {loaded:.2f} s, one sentence in {embedded * 1000:.0f} ms"
    )
    if active:
        detail += f" ({active[0]})"
    if vec.shape != (1, spec.dim) or not abs(norm - 1.0) < 1e-3:
        return Check(name, FAIL, f"{detail}; unexpected output shape {vec.shape} or norm {norm:.4f}", data=data)
    if providers and active is not None and providers[0] not in active:
        # onnxruntime falls back to CPU silently when the CUDA/cuDNN libraries do not load
        return Check(name, WARN, f"{detail}; {providers[0]} did not load (CUDA 12 / cuDNN 9 libraries not found?)", data=data)
    return Check(name, OK, detail, data=data)


def check_cache(cfg: RunConfig, dim: int = 384) -> Check:
    import numpy as np

    from theme_engine.engine.cache import CacheUnavailable, cache_key, default_cache_dir, open_cache

    if not cfg.cache.enabled:
        return Check("cache", SKIP, "the embedding cache is disabled (cache.enabled = false)", required=False)
    probe = cache_key("theme-engine-doctor", PROBE_SENTENCE)
    if cfg.cache.qdrant_url:
        where = f"Qdrant server {redact_url(cfg.cache.qdrant_url)}, collection {cfg.cache.collection}"
        data: dict[str, Any] = {"kind": "server", "where": where}
    else:
        folder = Path(cfg.cache.dir or default_cache_dir()) / f"embeddings-{dim}d"
        where = f"Qdrant Edge in {folder}"
        data = {"kind": "edge", "where": str(folder)}
    start = time.perf_counter()
    try:
        cache = open_cache(dim, cfg.cache.dir, cfg.cache.qdrant_url, cfg.cache.collection)
    except CacheUnavailable as exc:
        if cfg.cache.qdrant_url or "in use" not in str(exc):
            return Check("cache", FAIL, str(exc), data=data)
        # the folder is locked by a running theme-engine: show that Qdrant Edge itself works
        with tempfile.TemporaryDirectory(prefix="te-doctor-cache-") as tmp:
            try:
                spare = open_cache(dim, Path(tmp), None, cfg.cache.collection)
            except CacheUnavailable as exc2:
                return Check("cache", FAIL, f"{exc}; a fresh cache in a temp dir does not open either: {exc2}", data=data)
            try:
                vec = np.zeros((1, dim), np.float32)
                vec[0, 0] = 1.0
                spare.put([probe], vec)
                found, _ = spare.get([probe])
            finally:
                spare.close()
        data.update(locked=True, temp_dir_round_trip=bool(found.all()))
        return Check(
            "cache",
            WARN,
            f"{where} is locked by another process (a run in progress?); a fresh cache in a temp dir opens and "
            f"round-trips a vector {'fine' if found.all() else 'WRONGLY'}",
            data=data,
        )
    try:
        found, _ = cache.get([probe])  # read only: the doctor writes nothing into a real cache
    finally:
        cache.close()
    data.update(locked=False, open_seconds=round(time.perf_counter() - start, 3))
    return Check("cache", OK, f"{where} opens ({data['open_seconds']:.2f} s, read-only probe)", data=data)


def check_ray(cfg: RunConfig) -> Check:
    import ray

    from ..runtime.ray_session import connect

    ray_cfg = cfg.ray
    if not ray_cfg.address and os.environ.get("RAY_ADDRESS"):
        ray_cfg = ray_cfg.model_copy(update={"address": os.environ["RAY_ADDRESS"]})
    if not (ray_cfg.address or ray_cfg.object_store_memory):
        ray_cfg = ray_cfg.model_copy(update={"object_store_memory": 128 * 2**20})  # the doctor stores nothing
    start = time.perf_counter()
    try:
        connection = connect(ray_cfg)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        where = ray_cfg.address or "a local Ray"
        return Check("ray", FAIL, f"cannot connect to {where}: {exc}", data={"address": ray_cfg.address})
    try:
        res = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        data = {
            "version": ray.__version__,
            "address": ray_cfg.address or ("local" if connection.how == "local" else "already connected"),
            "started_here": connection.how == "local",
            "nodes": len(nodes),
            "cpus": res.get("CPU", 0),
            "gpus": res.get("GPU", 0),
            "memory_gb": round(res.get("memory", 0) / 2**30, 2),
            "object_store_gb": round(res.get("object_store_memory", 0) / 2**30, 2),
            "connect_seconds": round(time.perf_counter() - start, 2),
        }
        if data["started_here"]:
            data["listeners"] = _ray_listeners()
    finally:
        if connection.started:
            ray.shutdown()
    what = "started a local Ray" if data["started_here"] else f"connected to {data['address']}"
    detail = (
        f"{what} (ray {data['version']}, {data['connect_seconds']:.1f} s): {data['nodes']} node(s), "
        f"{data['cpus']:g} CPUs, {data['gpus']:g} GPUs, {data['memory_gb']:g} GiB memory"
    )
    if data["cpus"] <= 0:
        return Check("ray", FAIL, detail + "; no CPUs", data=data)
    listeners = data.get("listeners", [])
    exposed = [f"{s['process']} on {s['ip']}:{s['port']}" for s in listeners if not s["loopback"]]
    if exposed:
        return Check(
            "ray", WARN,
            detail + f"; listening beyond the loopback interface: {', '.join(exposed[:6])}"
            + " (a local theme-engine run keeps Ray on 127.0.0.1 with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, set before Ray is imported)",
            data=data,
        )
    if listeners:
        detail += f"; its {len(listeners)} listening sockets are on 127.0.0.1 only"
    return Check("ray", OK, detail, data=data)


def _ray_listeners() -> list[dict[str, Any]]:
    """The listening sockets of the local Ray just started (its processes are this one's
    descendants), with a moment for the raylet's agents to open theirs."""
    from ..runtime.loopback import listening_sockets

    time.sleep(1.0)
    return listening_sockets()


def _guarded(name: str, fn: Callable[[], Check]) -> Check:
    """Run one check; whatever it raises is its finding (the doctor must report, not crash)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a diagnostic: any failure of a check is what it reports
        log.debug("check %s raised", name, exc_info=True)
        return Check(name, FAIL, f"{type(exc).__name__}: {exc}")


def diagnose(cfg: RunConfig, skip: tuple[str, ...] = ()) -> list[Check]:
    checks = [_guarded("packages", check_packages)]
    device, libs = check_device(cfg)  # never raises: gpu_status reports instead
    checks += [device, *libs]
    checks.append(_guarded("faiss", check_faiss))
    steps: list[tuple[str, str, Callable[[], Check]]] = [("embedding", "model", lambda: check_embedding(cfg))]
    if device.data["gpu"]["libraries"]["onnxruntime"]["usable"]:
        cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        steps.append(("embedding.cuda", "model", lambda: check_embedding(cfg, cuda, "embedding.cuda")))
    steps += [("cache", "cache", lambda: check_cache(cfg)), ("ray", "ray", lambda: check_ray(cfg))]
    for name, key, fn in steps:
        if key in skip:
            checks.append(Check(name, SKIP, f"skipped (--skip {key})", required=False))
        else:
            check = _guarded(name, fn)
            check.required = check.required and name != "embedding.cuda"  # the GPU path is optional
            checks.append(check)
    return checks


def healthy(checks: list[Check]) -> bool:
    return not any(c.required and c.status == FAIL for c in checks)


def report_json(checks: list[Check]) -> str:
    device = next((c for c in checks if c.name == "device"), None)
    payload = {
        "ok": healthy(checks),
        "cpu_path": "usable" if healthy(checks) else "broken",
        "device": device.data.get("auto") if device else None,
        "gpu": device.data.get("gpu") if device else None,
        "checks": {c.name: c.as_dict() for c in checks},
    }
    return json.dumps(payload, indent=2, default=str)


def report_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  {'status':<6}  detail", f"{'-' * width}  {'-' * 6}  {'-' * 6}"]
    for c in checks:
        status = c.status.upper() if c.status in (FAIL, WARN) else c.status
        lines.append(f"{c.name:<{width}}  {status:<6}  {c.detail}")
    ok = healthy(checks)
    failed = [c.name for c in checks if c.required and c.status == FAIL]
    lines.append("")
    lines.append("CPU path: usable" if ok else f"CPU path: BROKEN ({', '.join(failed)})")
    device = next((c for c in checks if c.name == "device"), None)
    if device is not None:
        gpu = device.data.get("gpu") or {}
        lines.append("GPU path: usable" if gpu.get("available") else f"GPU path: unavailable ({gpu.get('reason')})")
    return "\n".join(lines)


def run_doctor(cfg: RunConfig, as_json: bool = False, skip: tuple[str, ...] = ()) -> int:
    """Print the report to stdout; 0 when the CPU path is usable, 1 when a required check fails."""
    checks = diagnose(cfg, skip)
    sys.stdout.write((report_json(checks) if as_json else report_table(checks)) + "\n")
    sys.stdout.flush()
    return 0 if healthy(checks) else 1


def cmd_doctor(args: Any) -> int:
    from theme_engine.engine.config import ConfigError, load_config

    overrides: dict[str, Any] = {}
    ray_over = {k: v for k, v in (("address", args.address), ("num_cpus", args.num_cpus)) if v is not None}
    cache_over: dict[str, Any] = {}
    if args.cache_dir is not None:
        cache_over["dir"] = str(args.cache_dir)
    url = args.qdrant_url or os.environ.get("QDRANT_URL")
    if url:
        cache_over["qdrant_url"] = url
    embed_over = {k: str(v) for k, v in (("model", args.model), ("model_path", args.model_path), ("pooling", args.pooling)) if v is not None}
    if embed_over:
        overrides["embed"] = embed_over
    if ray_over:
        overrides["ray"] = ray_over
    if cache_over:
        overrides["cache"] = cache_over
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs each SIMD variant it tries
    try:
        cfg = load_config(overrides, args.config)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    local_ray_on_loopback(cfg)  # as a run does, so the report shows where a run's Ray listens
    return run_doctor(cfg, as_json=args.json, skip=tuple(args.skip))
