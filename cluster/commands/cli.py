"""``theme-engine`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence


from theme_engine.engine.config import ConfigError, RunConfig, load_config, redact_url
from theme_engine.engine.corpus import InputError
from theme_engine.engine.deps import MissingDependency, check_runtime
from theme_engine.engine.events import Interrupted

from .args import JOB_COMMANDS, RESULT_COMMANDS, RUN_KEYWORDS, UPDATE_FLAGS, build_parser, set_nested, settings_from
from .doctor import cmd_doctor
from .exits import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from ..runtime.loopback import local_ray_on_loopback
from .jobs import cmd_job

log = logging.getLogger("theme_engine")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    # RAY_ADDRESS and QDRANT_URL under the flags; store_true flags count only when given
    given = {"address": os.environ.get("RAY_ADDRESS") or None, "qdrant_url": os.environ.get("QDRANT_URL") or None}
    for key in RUN_KEYWORDS:
        value = getattr(args, key)
        if value is not None and value is not False:
            given[key] = value
    overrides = settings_from(given)
    if args.inputs:
        overrides["inputs"] = [str(p) for p in args.inputs]
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        key, value = item.split("=", 1)
        set_nested(key.strip(), value, overrides)
    return load_config(overrides, args.config)


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        from ..runtime.progress import console

        handler: logging.Handler = RichHandler(console=console(), show_path=False, rich_tracebacks=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    handler.set_name("theme-engine")
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "theme-engine"] + [handler]
    root.setLevel(level)
    for noisy in ("ray", "fastembed", "httpx", "urllib3", "filelock", "faiss"):  # faiss's loader: 6 lines on AVX variants
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _in_import(frame: Any) -> bool:
    """Whether ``frame`` (where a signal interrupted the main thread) is inside Python's import
    machinery, whose module-lock callbacks print and swallow an exception raised in them."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            if _in_import(frame):  # raised there it may land in a callback that prints and swallows it
                threading.Timer(0.05, signal.raise_signal, (signal.SIGINT,)).start()  # again, once out of it
                return
            raise KeyboardInterrupt
        stop.set()
        log.warning("%s received: stopping after the current batch or iteration (Ctrl-C again to abort)", signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def summary(result: Any) -> str:
    m = result.manifest
    docs = m["documents"]
    lines = [
        f"{docs['input']} documents: {docs['kept']} kept, {docs['near_duplicates']} near-duplicates, "
        f"{docs['exact_duplicates']} exact duplicates, {docs['filtered']} filtered, {docs['bad_records']} bad records",
        f"{m['themes']} themes (k={m['k']}, {m['kmeans']['iterations']} k-means iterations"
        f"{'' if m['kmeans']['converged'] else ', not converged'}):",
    ]
    for t in result.themes[:12]:
        lines.append(f"  {t['theme']:>3}  {t['size']:>6}  {t['label']}")
    if len(result.themes) > 12:
        lines.append(f"  … {len(result.themes) - 12} more in themes.json")
    if ray_used := m.get("ray"):
        from ..runtime.ray_session import describe  # noqa: PLC0415  (the CLI starts without importing Ray)

        lines.append(describe(ray_used))
    from ..runtime.stages import PIPELINE  # noqa: PLC0415  (as above)

    for stage in PIPELINE:  # what each stage says of the run (its record is in the manifest)
        lines.extend(stage().summary(m))
    bad = m.get("bad_records", {})
    if bad.get("count"):
        shown = bad.get("examples", [])[:3]
        lines.append(f"{bad['count']} bad records skipped, e.g.:")
        lines.extend(f"  {b['source']}: {b['error']}" for b in shown)
        lines.append(f"  (the first {len(bad.get('examples', []))} are listed in manifest.json, bad_records)")
    seconds = sum(s.get("seconds", 0) for s in m["stages"].values() if not s.get("reused"))
    lines.append(f"outputs in {result.out}/ ({', '.join(m.get('outputs', []))}, metrics.prom); {seconds:.1f} s")
    if url := m.get("config", {}).get("publish_to"):
        lines.append(f"published to {url} (the folder above is its local copy, which re-runs and updates reuse)")
    report = Path(result.out).resolve() / "report.html"  # the folder's own name for it, not the generation's
    if report.is_file():
        lines.append(f"report: {report.as_uri()}")
    if not m["stages"].get("index", {}).get("skipped") and "index" in m["stages"]:
        lines.append(f'search: theme-engine search {result.out} "your question"')
    return "\n".join(lines)


def path_problem(cfg: RunConfig) -> str | None:
    """What is wrong with ``--out`` or the local cache folder, in one line saying what to do; None
    when both can be created and written. Checked before Ray starts."""
    from theme_engine.engine.cache import default_cache_dir

    from ..runtime.state import foreign_entries, foreign_out_message

    def unusable(path: Path, flag: str, advice: str) -> str | None:
        # nothing is created here: an existing folder gets a write probe, a new one needs a
        # writable nearest existing parent
        if path.exists() and not path.is_dir():
            return f"{flag} {path} is a file, not a directory: {advice}"
        if path.is_dir():
            try:
                probe = path / f".theme-engine-write-test-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                return f"cannot write to {flag} {path} ({exc.strerror or exc}): {advice}"
            return None
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            return f"cannot create {flag} {path}: {parent} is a file: {advice}"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"cannot create {flag} {path}: {parent} is not writable: {advice}"
        return None

    problem = unusable(Path(cfg.out), "--out", "pass a directory you can write to") if cfg.out is not None else None
    if problem is None and cfg.out is not None and not cfg.force:
        foreign = foreign_entries(Path(cfg.out))
        problem = foreign_out_message(Path(cfg.out), foreign) if foreign else None
    if problem is None and cfg.cache.enabled and not cfg.cache.qdrant_url:
        folder = Path(cfg.cache.dir) if cfg.cache.dir else default_cache_dir()
        problem = unusable(folder, "--cache-dir", "pass --cache-dir DIR with a writable directory, or --no-cache")
    return problem


def model_problem(cfg: RunConfig) -> str | None:
    """Why the embedding model cannot be had (an unknown name, a FastEmbed model neither cached nor
    downloadable, a broken model folder), in one line; None when it can, or when the inputs are
    precomputed vectors (nothing is embedded). A FastEmbed model is downloaded here, before Ray
    starts, where the machine may; input problems are left to the run, which names them."""
    from theme_engine.engine.cache import default_cache_dir
    from theme_engine.engine.corpus import InputError, expand_inputs, is_vector_input
    from theme_engine.engine.embedding import ModelUnavailable, configured_model

    try:
        if is_vector_input(expand_inputs(list(cfg.inputs)), cfg.read.vector_field):
            return None
    except (InputError, OSError):
        pass
    try:
        _ = configured_model(cfg.embed, cfg.cache.dir or default_cache_dir()).model_id  # reads and checks the files
    except (ModelUnavailable, ValueError) as exc:
        return str(exc)
    return None


def cmd_run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    local_ray_on_loopback(cfg)  # before anything imports ray
    from ..runtime.driver import OutputInUse, RunError, run
    from ..runtime.metrics import METRICS_FILE, RunMetrics
    from ..runtime.progress import ProgressDisplay

    if not cfg.inputs:
        log.error("no INPUT given: theme-engine run INPUT... --out DIR")
        return EXIT_USAGE
    if cfg.out is None:
        log.error("no output directory: pass --out DIR")
        return EXIT_USAGE
    try:
        check_runtime()  # faiss and onnxruntime come from the cpu or gpu extra: say so before Ray starts
    except MissingDependency as exc:
        log.error("%s", exc)
        return EXIT_ERROR
    problem = path_problem(cfg)
    if problem is not None:
        log.error("%s", problem)
        return EXIT_USAGE
    problem = model_problem(cfg)
    if problem is not None:
        log.error("%s", problem)
        return EXIT_ERROR
    stop = threading.Event()
    _install_stop_handlers(stop)
    metrics = RunMetrics()
    metrics.start(device=cfg.device, ray_address=redact_url(cfg.ray.address) or "local")
    status = "failed"
    try:
        if args.metrics_port is not None:
            try:
                metrics.serve(args.metrics_port, args.metrics_addr)
            except OSError as exc:
                log.error("cannot serve metrics on %s:%s: %s", args.metrics_addr, args.metrics_port, exc)
                return EXIT_USAGE
        with ProgressDisplay() as progress:
            metrics.forward = progress

            def on_stage(name: str, record: dict[str, Any]) -> None:
                metrics.on_stage(name, record)
                if record.get("reused"):
                    progress.reused(name)

            result = run(cfg, stop=stop, sink=metrics.sink, on_stage=on_stage)
        status = "succeeded"
    except OutputInUse as exc:
        status = "busy"  # the other run owns --out and its metrics.prom
        log.error("%s", exc)
        return EXIT_ERROR
    except (InputError, RunError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE if isinstance(exc, InputError) else EXIT_ERROR
    except Interrupted as exc:
        status = "interrupted"
        log.warning("%s; %s is resumable: run the same command again to continue", exc, cfg.out)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # a second Ctrl-C: abort now, without waiting for the batch
        status = "interrupted"
        log.warning(
            "aborted: the stages finished so far and every embedding already cached are kept; "
            "run the same command again to resume from them (%s)", cfg.out
        )
        return EXIT_INTERRUPTED
    finally:
        metrics.finish("failed" if status == "busy" else status)
        metrics.close()
        if status != "busy":
            try:
                metrics.write(Path(cfg.out) / METRICS_FILE)
            except OSError as exc:
                log.warning("could not write %s: %s", Path(cfg.out) / METRICS_FILE, exc)
    sys.stdout.write(summary(result) + "\n")
    return EXIT_OK


def cmd_update(args: argparse.Namespace) -> int:
    """``theme-engine update DIR NEW_INPUT...``: the run's own settings, the flags given on top."""
    from ..runtime.driver import OutputInUse, RunError
    from ..runtime.progress import ProgressDisplay
    from ..runtime.metrics import METRICS_FILE, RunMetrics
    from ..runtime.update import UPDATE_SECTIONS, NothingNew, update, update_config, update_summary

    given: dict[str, Any] = {}
    for flag in UPDATE_FLAGS:
        key = flag.lstrip("-").replace("-", "_")
        if getattr(args, key) is not None:
            given[key] = getattr(args, key)
    if args.no_cache:
        given["no_cache"] = True
    overrides = settings_from(given)
    if args.refit:
        set_nested("update.refit", args.refit, overrides)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key.split(".")[0] not in UPDATE_SECTIONS:
            log.error("--set %s: expected update.KEY=VALUE or read.KEY=VALUE (the run's other settings stay the run's)", item)
            return EXIT_USAGE
        set_nested(key.strip(), value, overrides)
    try:
        cfg = update_config(args.dir, list(args.inputs), overrides)
    except (ConfigError, RunError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    local_ray_on_loopback(cfg)
    try:
        check_runtime()
    except MissingDependency as exc:
        log.error("%s", exc)
        return EXIT_ERROR
    stop = threading.Event()
    _install_stop_handlers(stop)
    metrics = RunMetrics()
    metrics.start(device=cfg.device, ray_address=redact_url(cfg.ray.address) or "local", command="update")
    status = "failed"
    try:
        with ProgressDisplay() as progress:
            metrics.forward = progress

            def on_stage(name: str, record: dict[str, Any]) -> None:
                metrics.on_stage(name, record)
                if record.get("reused"):
                    progress.reused(name)

            result = update(cfg, stop=stop, sink=metrics.sink, on_stage=on_stage)
        metrics.result_totals(result.manifest)  # metrics.prom counts the grown result
        status = "succeeded"
    except NothingNew as exc:
        status = "nothing new"  # the result is as it was: so is its metrics.prom
        log.warning("%s", exc)
        sys.stdout.write(f"{exc}\n")
        return EXIT_OK
    except OutputInUse as exc:
        status = "busy"
        log.error("%s", exc)
        return EXIT_ERROR
    except (InputError, RunError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE if isinstance(exc, InputError) else EXIT_ERROR
    except (Interrupted, KeyboardInterrupt) as exc:
        status = "interrupted"
        log.warning("%s; the run in %s is as it was before the update: run the same command again to finish it", exc or "aborted", cfg.out)
        return EXIT_INTERRUPTED
    finally:
        metrics.close()
        if status == "succeeded":  # a failed update leaves the result, and its metrics, as they were
            metrics.finish(status)
            try:
                metrics.write(Path(cfg.out) / METRICS_FILE)
            except OSError as exc:
                log.warning("could not write %s: %s", Path(cfg.out) / METRICS_FILE, exc)
    sys.stdout.write(update_summary(result) + "\n")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from theme_engine.engine.cache import default_cache_dir
    from theme_engine.engine.embedding import available_models

    root = args.cache_dir or default_cache_dir()
    if args.download:
        from theme_engine.engine.embedding import ModelUnavailable, get_model, model_dir

        for name in args.download:
            try:
                spec = get_model(name, root)
                folder = model_dir(spec, Path(root)) if spec.kind == "bundled" else spec.folder
            except (ModelUnavailable, ValueError) as exc:
                log.error("%s", exc)
                return EXIT_ERROR
            sys.stdout.write(f"{spec.model_id}: {folder}\n")
        return EXIT_OK
    models = available_models(root)
    if args.json:
        sys.stdout.write(json.dumps(models, indent=1) + "\n")
        return EXIT_OK
    width = max(len(m["model"]) for m in models)
    lines = [f"{'model':<{width}}  {'dim':>5}  {'GB':>5}  here"]
    for m in models:
        here = m["here"] if m["here"] in ("", "bundled") else "cached"
        lines.append(f"{m['model']:<{width}}  {m['dim']:>5}  {m['size_in_GB'] or 0:>5.2f}  {here or '-'}")
    lines.append(f"(cache dir {root}; models not here are downloaded there on first use when the machine has network)")
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if args.command == "run":
        try:
            return cmd_run(args)
        except KeyboardInterrupt:  # Ctrl-C outside the run (imports, config, cleanup)
            log.warning("aborted (Ctrl-C)")
            return EXIT_INTERRUPTED
    if args.command == "update":
        try:
            return cmd_update(args)
        except KeyboardInterrupt:
            log.warning("aborted (Ctrl-C)")
            return EXIT_INTERRUPTED
    if args.command == "doctor":
        return cmd_doctor(args)
    if args.command == "models":
        return cmd_models(args)
    if args.command in JOB_COMMANDS:
        return cmd_job(args)
    if args.command in RESULT_COMMANDS:
        from ..runtime.update import RunError, run_folder
        from .results import cmd_index, cmd_report, cmd_search

        try:  # a URL a run was published to: its local copy
            args.dir = run_folder(args.dir, {"cache": {"dir": getattr(args, "cache_dir", None)}})
        except RunError as exc:
            log.error("%s", exc)
            return EXIT_USAGE
        return {"report": cmd_report, "search": cmd_search, "index": cmd_index}[args.command](args)
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
