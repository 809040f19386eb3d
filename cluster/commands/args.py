"""Every ``theme-engine`` command's arguments, in one place: ``run`` (its flags map onto settings),
``doctor``, and the job commands ``submit``, ``status``, ``logs`` and ``stop``. Nothing here
imports the commands themselves."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from theme_engine.engine.config import RunConfig

DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # the local head's dashboard (Ray jobs API)
STOP_WAIT_S = 60  # how long Ray waits after the stop signal before it SIGKILLs the job's driver
JOB_COMMANDS = ("submit", "status", "logs", "stop")
RESULT_COMMANDS = ("report", "search", "index")
UPDATE_FLAGS = ("--text-field", "--id-field", "--address", "--qdrant-url", "--cache-dir", "--device", "--num-cpus")
SKIPPABLE = ("model", "cache", "ray")  # doctor --skip


# flag -> (config path, type, help)
RUN_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--k": ("kmeans.k", int, "number of themes; absent: chosen automatically (select_k)"),
    "--text-field": ("read.text_field", str, "field/column holding the text (JSONL, CSV, Parquet); default: text"),
    "--id-field": ("read.id_field", str, "field/column holding document ids; absent: '<file>:<line>'"),
    "--vector-field": ("read.vector_field", str, "Parquet list column of precomputed vectors; default: vector"),
    "--dup-threshold": ("dedup.threshold", float, "cosine at or above which documents are near-duplicates; default: 0.9"),
    "--dup-keep": ("dedup.keep", str, "which near-duplicate is kept: first | longest | central; default: first"),
    "--seed": ("seed", int, "random seed; default: 0"),
    "--address": ("ray.address", str, "Ray cluster address (or RAY_ADDRESS); absent: start a local Ray"),
    "--qdrant-url": ("cache.qdrant_url", str, "Qdrant server for the embedding cache (or QDRANT_URL)"),
    "--cache-dir": ("cache.dir", Path, "local embedding-cache directory; default: ~/.cache/theme-engine"),
    "--model": ("embed.model", str, "embedding model: all-MiniLM-L6-v2-int8 (bundled, default) or a FastEmbed model name"),
    "--model-path": ("embed.model_path", Path, "a local folder with an ONNX sentence-embedding model and its tokenizer files"),
    "--pooling": ("embed.pooling", str, "mean | cls: how a --model-path model pools; default: from its 1_Pooling/config.json"),
    "--max-iter": ("kmeans.max_iter", int, "maximum k-means iterations; default: 100"),
    "--device": ("device", str, "auto | cpu | cuda; default: auto"),
    "--num-cpus": ("ray.num_cpus", int, "CPUs for a local Ray; default: all"),
}


# run keyword (a flag's name with underscores, as argparse and theme_engine.run take it) -> config path
RUN_KEYWORDS: dict[str, str] = {
    **{flag.lstrip("-").replace("-", "_"): path for flag, (path, _, _) in RUN_FLAGS.items()},
    "out": "out",
    "force": "force",
    "no_cache": "cache.enabled",  # negated: no_cache=True is cache.enabled = false
}


def set_nested(path: str, value: Any, into: dict[str, Any]) -> None:
    """``into[a][b][c] = value`` for ``path`` "a.b.c"."""
    node = into
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def settings_from(keywords: dict[str, Any]) -> dict[str, Any]:
    """Nested settings from run keywords (see :data:`RUN_KEYWORDS`; None values are left out)."""
    values: dict[str, Any] = {}
    for key, value in keywords.items():
        if value is None:
            continue
        if key == "no_cache":
            value = not value
        set_nested(RUN_KEYWORDS[key], str(value) if isinstance(value, os.PathLike) else value, values)
    return values


def _settings_epilog() -> str:
    lines = ["every setting (TOML section.key; environment THEME_ENGINE_SECTION__KEY):"]
    for name, f in RunConfig.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            for sub, sf in ann.model_fields.items():
                default = sf.default if sf.default is not None else "-"
                lines.append(f"  {name}.{sub} (THEME_ENGINE_{name.upper()}__{sub.upper()}; default {default}): {sf.description}")
        elif name not in ("inputs", "out"):
            lines.append(f"  {name} (THEME_ENGINE_{name.upper()}; default {f.default}): {f.description}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="theme-engine", description="Themes and near-duplicates for text corpora, on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="embed, choose k, cluster, label and deduplicate a corpus",
        description=(
            "INPUT: JSONL, CSV/TSV, Parquet, plain text (one document per line), a directory of .txt, .text or .md files "
            "(one document per file), or precomputed vectors (.npy of shape (n, d), or Parquet with a vector column)."
        ),
        epilog=_settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("inputs", nargs="*", metavar="INPUT", help="input files or directories: local paths, or URLs (s3://bucket/prefix, gs://…)")
    run.add_argument("--out", help="output directory (created; re-runs reuse finished stages), or an object-store URL (s3://, gs://) the result is published to")
    run.add_argument("--config", type=Path, help="TOML file with settings (sections as listed below)")
    for flag, (_, typ, help_text) in RUN_FLAGS.items():
        run.add_argument(flag, type=typ, default=None, help=help_text)
    run.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    run.add_argument(
        "--force", action="store_true", help="write into a non-empty --out that is not a theme-engine output (refused otherwise)"
    )
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="any setting below")
    run.add_argument(
        "--metrics-port", type=int, default=None, metavar="PORT",
        help=(
            "serve Prometheus metrics at http://ADDR:PORT/metrics while the run goes (0: a free port); "
            "the final values are always written to OUT/metrics.prom"
        ),
    )
    run.add_argument("--metrics-addr", default="127.0.0.1", metavar="ADDR", help="address the metrics endpoint listens on; default: 127.0.0.1")
    add_update_parser(sub)
    add_doctor_parser(sub)
    add_models_parser(sub)
    add_result_parsers(sub)
    add_job_parsers(sub)
    return parser


def add_update_parser(sub: Any) -> None:
    """``update``: a finished run grown by new documents."""
    p = sub.add_parser(
        "update",
        help="add new documents to a finished run: assigned, deduplicated against it and labelled, without recomputing it",
        description=(
            "Reads and embeds only NEW_INPUT's documents (formats as for run; the cache serves repeats), assigns each "
            "to its nearest theme, finds near-duplicates between them and the whole run with the run's own settings "
            "(an existing kept document stays kept), labels the themes again from their grown membership and updates "
            "DIR's outputs, map and search index in place, atomically. Documents whose id and text are already in the "
            "run are left out. The run's settings apply; the flags below may differ for the new inputs."
        ),
    )
    p.add_argument("dir", metavar="DIR", help="a finished run's output folder, or the object-store URL it was published to (its local copy is used)")
    p.add_argument("inputs", nargs="+", metavar="NEW_INPUT", help="files or directories of new documents: local paths, or URLs (s3://, gs://)")
    p.add_argument(
        "--refit", choices=("auto", "never", "always"), default=None,
        help=(
            "never: new documents join their nearest theme (no theme changes for existing documents); auto (default): "
            "new themes where the far new documents form one as tight as the run's; always: that, then every centroid "
            "refitted over the whole corpus from the existing ones (existing documents may change theme)"
        ),
    )  # fmt: skip
    for flag in UPDATE_FLAGS:
        _, typ, help_text = RUN_FLAGS[flag]
        p.add_argument(flag, type=typ, default=None, help=help_text)
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="an update.* or read.* setting")


def add_result_parsers(sub: Any) -> None:
    """``report`` and ``search``: commands on a finished run's output folder."""
    p = sub.add_parser(
        "report",
        help="write DIR/report.html again from a finished run (map, themes, hierarchy, duplicates, the run)",
        description="Renders the run in DIR as one self-contained HTML file that opens offline (every run writes it too).",
    )
    p.add_argument("dir", metavar="DIR", help="a finished run's output folder, or the object-store URL it was published to (its local copy is used)")
    p.add_argument("--open", action="store_true", help="open the report in the default browser afterwards")
    p.add_argument("--max-points", type=int, default=None, help="most documents drawn on the map; default: the run's report.max_points")
    p.add_argument("--seed", type=int, default=None, help="seed of the map's sample; default: the run's seed")

    p = sub.add_parser(
        "search",
        help="the documents of a finished run nearest a query in meaning, and the nearest themes",
        description="Embeds QUERY with the run's model and searches the run's Qdrant index (DIR/index, or the server it was built on).",
    )
    p.add_argument("dir", metavar="DIR", help="a finished run's output folder, or the object-store URL it was published to (its local copy is used)")
    p.add_argument("query", metavar="QUERY", help="what to look for, in words")
    p.add_argument("--k", type=int, default=10, help="documents to return; default: 10")
    p.add_argument("--theme", type=int, default=None, help="only documents of this theme")
    p.add_argument("--kept-only", action="store_true", help="leave near-duplicates and exact duplicates out")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--qdrant-url", help="the Qdrant server of a run indexed there (or QDRANT_URL)")
    p.add_argument("--cache-dir", type=Path, help="where the embedding model is found; default: ~/.cache/theme-engine")

    p = sub.add_parser(
        "index",
        help="make the search index of a finished run again (when search says it is damaged or partly deleted)",
        description="Rebuilds DIR's search index from its stored vectors and outputs: the run's and every update's documents.",
    )
    p.add_argument("dir", metavar="DIR", help="a finished run's output folder (grown by updates or not), or the URL it was published to")
    p.add_argument("--qdrant-url", help="the Qdrant server of a run indexed there (or QDRANT_URL)")


def add_models_parser(sub: Any) -> None:
    p = sub.add_parser(
        "models",
        help="the embedding models --model takes, and which are on this machine",
        description=(
            "Lists the bundled model and every FastEmbed text-embedding model, with its dimension, size and whether its "
            "files are here (in the cache dir). A model that is not here is downloaded into the cache dir on its first "
            "run when the machine has network; otherwise put its ONNX files in a folder and use --model-path DIR."
        ),
    )
    p.add_argument("--cache-dir", type=Path, help="where downloaded models are kept; default: ~/.cache/theme-engine")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.add_argument(
        "--download", nargs="+", metavar="MODEL", help="get these models now (e.g. while building an image), so runs start offline"
    )


def add_doctor_parser(sub: Any) -> None:
    """The ``doctor`` subcommand on the CLI's subparsers."""
    p = sub.add_parser(
        "doctor",
        help="check this machine and cluster: devices, GPU libraries, FAISS, the model, the cache, Ray",
        description=(
            "Report the device the engine would choose (and why a GPU path is unavailable), the GPU libraries that "
            "load, FAISS, whether the embedding model loads and embeds, whether the embedding cache opens, and the "
            "Ray cluster's resources. Exit status 0 when the CPU path is usable (even without a GPU), 1 otherwise."
        ),
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (JSON on stdout)")
    p.add_argument("--config", type=Path, help="TOML file with settings, as for run")
    p.add_argument("--address", help="Ray cluster address (or RAY_ADDRESS); absent: start a small local Ray")
    p.add_argument("--cache-dir", type=Path, help="local embedding-cache directory; default: ~/.cache/theme-engine")
    p.add_argument("--qdrant-url", help="Qdrant server for the embedding cache (or QDRANT_URL)")
    p.add_argument("--num-cpus", type=int, help="CPUs for a local Ray; default: all")
    for flag in ("--model", "--model-path", "--pooling"):
        p.add_argument(flag, type=RUN_FLAGS[flag][1], help=RUN_FLAGS[flag][2] + " (the model to load and report)")
    p.add_argument("--skip", action="append", default=[], choices=SKIPPABLE, help="leave a slow check out (repeatable)")


def add_job_parsers(sub: argparse._SubParsersAction) -> None:
    addr_help = f"the head's dashboard (Ray jobs API); default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS or {DEFAULT_ADDRESS}"

    p = sub.add_parser(
        "submit",
        help="run theme-engine as a Ray job on a cluster",
        description=(
            "Submits `theme-engine COMMAND...` (usually `run INPUT... --out DIR ...`) as a Ray job: its driver "
            "runs on the head, with --working-dir uploaded as the job's working directory (relative INPUT paths "
            "are read from there). --out should be a path every node and you can reach: a relative one lands in "
            "the job's temporary working directory. Prints the job id."
        ),
        epilog="example: theme-engine submit --address http://HEAD:8265 --wait -- run demo/bible-verses.jsonl --id-field id --out /shared/out",
    )
    p.add_argument("--address", help=addr_help)
    p.add_argument("--working-dir", type=Path, default=Path("."), help="folder uploaded as the job's working directory; default: .")
    p.add_argument("--no-working-dir", action="store_true", help="upload nothing: the cluster has theme-engine installed")
    p.add_argument("--wait", action="store_true", help="follow the job's log until it ends; exit with its status (0, 130 stopped, else 1 or the run's code)")
    p.add_argument("--submission-id", help="the job id to use; default: one Ray makes up")
    p.add_argument("--python", default="python", help="the Python on the head that runs the job; default: python")
    p.add_argument(
        "--stop-wait", type=int, default=STOP_WAIT_S, metavar="SECONDS",
        help=f"after `stop`, how long Ray lets the run finish its batch before it kills it; default: {STOP_WAIT_S}",
    )
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="an environment variable for the job (repeatable)")
    p.add_argument("job_command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the theme-engine command, e.g. run INPUT... --out DIR")

    p = sub.add_parser("status", help="a Ray job's status and its run's progress per stage")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--address", help=addr_help)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("logs", help="a Ray job's log")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--address", help=addr_help)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")

    p = sub.add_parser("stop", help="stop a Ray job (its run stops after the current batch; the output stays resumable)")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--address", help=addr_help)
    p.add_argument("--wait", action="store_true", help="wait until the job has ended")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="with --wait: give up waiting after this long")
