"""``theme-engine report`` and ``theme-engine search``: commands on a finished run's folder."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import webbrowser
from pathlib import Path

from theme_engine.engine.deps import MissingDependency
from theme_engine.engine.embedding import ModelUnavailable
from theme_engine.engine.index import IndexUnavailable

from .exits import EXIT_ERROR, EXIT_OK, EXIT_USAGE

log = logging.getLogger(__name__)


def _finished(folder: Path) -> str | None:
    if not (folder / "manifest.json").is_file():
        return f"{folder} is not a finished theme-engine output (no manifest.json): run theme-engine run ... --out {folder} first"
    return None


def cmd_report(args: argparse.Namespace) -> int:
    from theme_engine.engine.report import render_report

    from ..runtime.state import OutLock, OutputBusy, roll_forward

    try:
        lock = OutLock(args.dir).acquire() if (args.dir / ".theme-engine").is_dir() else None
    except OutputBusy as exc:  # a run or an update is writing the folder: its own report comes at its end
        log.error("%s", exc)
        return EXIT_ERROR
    try:
        roll_forward(args.dir)  # an update stopped mid-commit: its result whole, not a mix
        return _report(args, render_report)
    finally:
        if lock is not None:
            lock.release()


def _report(args: argparse.Namespace, render_report) -> int:
    problem = _finished(args.dir)
    if problem:
        log.error("%s", problem)
        return EXIT_USAGE
    from theme_engine.engine.docstore import run_documents

    from ..runtime.state import link_output, reading_base

    base = reading_base(args.dir)  # the published generation: the page joins its files
    manifest = json.loads((base / "manifest.json").read_text())
    settings = manifest.get("config", {})
    rc = settings.get("report", {})
    render_report(
        base,
        manifest=manifest,
        max_points=args.max_points or rc.get("max_points", 50_000),
        seed=args.seed if args.seed is not None else settings.get("seed", 0),
        excerpt_chars=rc.get("excerpt_chars", 300),
        stored=run_documents(args.dir),
        folder=args.dir.resolve().name,
    )
    link_output(args.dir, "report.html")
    path = args.dir.resolve() / "report.html"
    sys.stdout.write(f"{path.as_uri()}\n")
    if args.open:
        webbrowser.open(path.as_uri())
    return EXIT_OK


def cmd_index(args: argparse.Namespace) -> int:
    """``theme-engine index DIR``: the search index made again from the result."""
    from ..runtime.stages import RunError
    from ..runtime.stages.index import rebuild_index

    problem = _finished(args.dir)
    if problem:
        log.error("%s", problem)
        return EXIT_USAGE
    try:
        record = rebuild_index(args.dir, args.qdrant_url or os.environ.get("QDRANT_URL"))
    except RunError as exc:
        log.error("%s", exc)
        return EXIT_ERROR
    sys.stdout.write(f"search index of {args.dir} rebuilt: {record['points']} documents in {record['seconds']:.1f} s\n")
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    from .api import search

    if args.k < 1:
        log.error("--k must be at least 1")
        return EXIT_USAGE
    try:
        found = search(args.dir, args.query, k=args.k, theme=args.theme, kept_only=args.kept_only, qdrant_url=args.qdrant_url, cache_dir=args.cache_dir)
    except FileNotFoundError as exc:  # not a finished run: search checks it, as for every caller
        log.error("%s", exc)
        return EXIT_USAGE
    except (ValueError, IndexUnavailable, ModelUnavailable, MissingDependency) as exc:
        log.error("%s", exc)
        return EXIT_ERROR
    if args.json:
        sys.stdout.write(json.dumps(found.as_dict(), ensure_ascii=False) + "\n")
        return EXIT_OK
    lines = [f"nearest themes to {args.query!r}:"]
    lines += [f"  {t.theme:>3}  {t.score:.3f}  {t.label}  ({t.size} documents)" for t in found.themes.itertuples()]
    lines.append(f"nearest documents{f' in theme {args.theme}' if args.theme is not None else ''}{' (kept only)' if args.kept_only else ''}:")
    for d in found.documents.itertuples():
        dup = "" if d.kept else "  [duplicate]"
        excerpt = " ".join(str(d.text).split())
        lines.append(f"  {d.score:.3f}  {d.id}  theme {d.theme} ({d.label}){dup}\n         {excerpt[:160]}")
    if found.documents.empty:
        lines.append("  (none match)")
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK
