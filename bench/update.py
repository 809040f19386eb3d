"""``theme-engine update`` against a full run: what adding the last 10% of a corpus costs, and how
much the grown result agrees with a run over everything.

For each labelled corpus (``corpora.py``; default bbc and bible) the documents are shuffled with
``--seed`` and written as JSONL (``id``, ``text``): the first ``--split`` of them is the *base*, the
rest the *new* part, and a *combined* file holds base then new, in that order. k is fixed to the
number of true labels, so the comparison is about the update, not the choice of k. In one process:

  1. **full run** (the baseline): ``run`` over the combined file, fresh output dir, fresh cache A;
  2. **base run**: ``run`` over the base file, fresh output dir, fresh cache B;
  3. **update**: ``update(update_config(base out, [new file], {"update": {"refit": R}}))`` — cache B
     holds only the base documents, so the new ones are embedded (cache misses), as in real use.

Each job starts and stops its own local Ray (temp dir inside this benchmark's temp dir). Reported:
seconds per stage, their sum, the embed stage separately and the sum without it, wall time; the
update's stage seconds without ``embed`` over the full run's stage seconds, and over the full run's
stage seconds without ``embed`` (the issue's target: adding 10% costs <= 20% of a full run, leaving
out the embedding of the new documents). Agreement, from ``documents.parquet`` joined by id: ARI
(scikit-learn) of the update's themes against the full run's (all documents, the base part, the new
part), and of each against the true labels; from ``duplicates.parquet``: recall and precision of the
update's duplicate links (id -> duplicate_of) and unordered pairs against the full run's, overall,
for links across the parts (one end in the base, one in the new part) and per kind (near, lexical,
exact: the full run's kind for recall, the update's for precision).

    cd /work/main && .venv/bin/python bench/update.py                          # bbc + bible
    cd /work/main && .venv/bin/python bench/update.py --corpora bible --limit 600   # quick
    cd /work/main && .venv/bin/python bench/update.py --refit auto

Results JSON: ``bench/results/update.json``.
"""

from __future__ import annotations

import argparse
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

import corpora  # noqa: E402

from theme_engine.cluster.runtime.stages import STAGES

log = logging.getLogger("bench.update")
ORDER = [*STAGES[: STAGES.index("kmeans") + 1], "assign", *STAGES[STAGES.index("kmeans") + 1 :]]
KINDS = ("near", "lexical", "exact")


def write_parts(corpus: corpora.LabelledCorpus, root: Path, split: float, seed: int, limit: int | None, plant: float = 0.0) -> dict[str, Any]:
    """The base, new and combined JSONL files. ``plant``: light-edited copies (2-3 typos, dropped,
    inserted or swapped words: ``dedup_quality.edit``) of that share of the new part's size, of
    random base documents, appended to the new part — near-duplicates across the parts, most of
    them below the cosine threshold, for the lexical rule."""
    import random

    from dedup_quality import _is_word, edit

    order = np.random.default_rng(seed).permutation(len(corpus.ids))
    if limit is not None:
        order = order[:limit]
    n_base = int(round(split * len(order)))
    files = {"base": root / "base.jsonl", "new": root / "new.jsonl", "combined": root / "combined.jsonl"}
    lines = [json.dumps({"id": corpus.ids[i], "text": corpus.texts[i]}, ensure_ascii=False) + "\n" for i in order]
    labels = {corpus.ids[i]: corpus.label_names[corpus.labels[i]] for i in order}
    rng = random.Random(f"update:{seed}")
    pool = [w for i in order[:n_base] for w in corpus.texts[i].split() if _is_word(w)]
    copies = []
    for i in rng.sample([int(i) for i in order[:n_base]], min(n_base, int(round(plant * (len(order) - n_base))))):
        text, _ = edit(corpus.texts[i], "mixed", rng, pool)
        copies.append(json.dumps({"id": f"copy:{corpus.ids[i]}", "text": text}, ensure_ascii=False) + "\n")
        labels[f"copy:{corpus.ids[i]}"] = labels[corpus.ids[i]]
    lines += copies
    files["base"].write_text("".join(lines[:n_base]), encoding="utf-8")
    files["new"].write_text("".join(lines[n_base:]), encoding="utf-8")
    files["combined"].write_text("".join(lines), encoding="utf-8")
    return {
        "files": files,
        "labels": labels,
        "new_ids": {corpus.ids[i] for i in order[n_base:]} | {json.loads(c)["id"] for c in copies},
        "planted": len(copies),
        "k": len(set(labels.values())),
        "documents": len(lines),
        "base": n_base,
        "new": len(lines) - n_base,
    }


def sink_for(name: str):
    current = {"stage": None}

    def sink(stage: str, done: int, total: int) -> None:
        if stage != current["stage"]:
            current["stage"] = stage
            log.info("[%s] stage %s", name, stage)

    return sink


def timing(stages: dict[str, dict[str, Any]], wall: float) -> dict[str, Any]:
    sec = {s: float(v.get("seconds") or 0.0) for s, v in stages.items() if not v.get("reused")}
    total = sum(sec.values())
    return {"stage_seconds": sec, "stages_sum": total, "embed": sec.get("embed", 0.0), "without_embed": total - sec.get("embed", 0.0), "wall": wall}


def full_run(name: str, inputs: Path, out: Path, cache: Path, ray_tmp: Path, k: int, seed: int) -> dict[str, Any]:
    from theme_engine.cluster.runtime.driver import run
    from theme_engine.engine.config import load_config

    cfg = load_config({
        "inputs": [str(inputs)], "out": str(out), "seed": seed, "cache": {"dir": str(cache)},
        "read": {"id_field": "id"}, "kmeans": {"k": k}, "ray": {"temp_dir": str(ray_tmp)},
    })  # fmt: skip
    log.info("[%s] run %s -> %s (cache %s, k=%d)", name, inputs.name, out, cache, k)
    t0 = time.perf_counter()
    m = run(cfg, sink=sink_for(name)).manifest
    row = timing(m["stages"], time.perf_counter() - t0)
    row.update(documents=m["documents"], embedded=m["stages"].get("embed", {}).get("embedded"), cache=m["stages"].get("embed", {}).get("cache", {}), themes=m["themes"])
    log.info("[%s] done in %.1f s (stages %.1f s, embed %.1f s)", name, row["wall"], row["stages_sum"], row["embed"])
    return row


def grow(name: str, out: Path, new: Path, refit: str) -> dict[str, Any]:
    from theme_engine.cluster.runtime.update import update, update_config, update_summary

    cfg = update_config(out, [new], {"update": {"refit": refit}, "read": {"id_field": "id"}})
    log.info("[%s] update %s with %s (refit %s)", name, out, new.name, refit)
    t0 = time.perf_counter()
    res = update(cfg, sink=sink_for(name))
    e = res.entry
    row = timing(e["stages"], time.perf_counter() - t0)
    row.update(entry_seconds=float(e["seconds"]), entry=e, documents=res.manifest["documents"], embedded=e["embedded"], themes=res.manifest["themes"])
    log.info("[%s] done in %.1f s (stages %.1f s, embed %.1f s)\n%s", name, row["wall"], row["stages_sum"], row["embed"], update_summary(res))
    return row


# ----------------------------------------------------------------------------- agreement


def themes_of(out: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    t = pq.read_table(out / "documents.parquet", columns=["id", "theme"]).to_pydict()
    return {i: th for i, th in zip(t["id"], t["theme"]) if th is not None}


def links_of(out: Path) -> dict[tuple[str, str], str]:
    import pyarrow.parquet as pq

    t = pq.read_table(out / "duplicates.parquet", columns=["id", "duplicate_of", "kind"]).to_pydict()
    return {(a, b): kind for a, b, kind in zip(t["id"], t["duplicate_of"], t["kind"])}


def ari(a: dict[str, Any], b: dict[str, Any], ids: set[str] | None = None) -> tuple[float, int]:
    from sklearn.metrics import adjusted_rand_score

    common = sorted(set(a) & set(b) & (ids if ids is not None else set(a)))
    if not common:
        return float("nan"), 0
    return float(adjusted_rand_score([a[i] for i in common], [b[i] for i in common])), len(common)


def recall_precision(ref: set, got: set) -> dict[str, Any]:
    hit = len(ref & got)
    return {"reference": len(ref), "update": len(got), "matched": hit,
            "recall": hit / len(ref) if ref else None, "precision": hit / len(got) if got else None}  # fmt: skip


def agreement(full_out: Path, upd_out: Path, parts: dict[str, Any]) -> dict[str, Any]:
    labels, new_ids = parts["labels"], parts["new_ids"]
    base_ids = set(labels) - new_ids
    tf, tu = themes_of(full_out), themes_of(upd_out)
    themes = {}
    for key, ids in (("all", None), ("base part", base_ids), ("new part", new_ids)):
        value, n = ari(tu, tf, ids)
        themes[f"update vs full run, {key}"] = {"ari": value, "documents": n}
    for key, got in (("full run", tf), ("update", tu)):
        value, n = ari(got, labels)
        themes[f"{key} vs true labels"] = {"ari": value, "documents": n}

    lf, lu = links_of(full_out), links_of(upd_out)
    cross = lambda link: (link[0] in new_ids) != (link[1] in new_ids)  # noqa: E731
    pair = lambda links: {frozenset(x) for x in links}  # noqa: E731

    def keep(group: str, link: tuple[str, str], kind: str) -> bool:
        return group == "all" or (group == "cross parts" and cross(link)) or group == kind

    dups = {}
    for key in ("all", "cross parts", *KINDS):
        ref = {x for x, k in lf.items() if keep(key, x, k)}
        got = {x for x, k in lu.items() if keep(key, x, k)}
        # recall of a kind: the full run's links of that kind found (as any kind) by the update; precision the reverse
        lr, lp = recall_precision(ref, set(lu)), recall_precision(set(lf), got)
        pr, pp = recall_precision(pair(ref), pair(lu)), recall_precision(pair(lf), pair(got))
        dups[key] = {
            "full_links": len(ref), "update_links": len(got), "link_recall": lr["recall"], "link_precision": lp["precision"],
            "full_pairs": len(pair(ref)), "update_pairs": len(pair(got)), "pair_recall": pr["recall"], "pair_precision": pp["precision"],
        }  # fmt: skip
    return {"themes": themes, "duplicates": dups}


# ----------------------------------------------------------------------------- report


def fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def print_corpus(r: dict[str, Any]) -> None:
    runs = [("full run", r["full"]), ("base run", r["base"]), ("update", r["update"])]
    p = r["parts"]
    print(f"\n{r['corpus']}: {p['documents']:,} documents, k = {p['k']} (true labels); base {p['base']:,} + new {p['new']:,} "
          f"(of which {p.get('planted', 0)} light-edited copies of base documents), refit {r['refit']}\n")  # fmt: skip
    print(f"| {'seconds':<27} | " + " | ".join(f"{n:>9}" for n, _ in runs) + " |")
    print(f"|{'-' * 29}|" + "|".join("-" * 11 for _ in runs) + "|")
    names = [s for s in ORDER if any(s in row["stage_seconds"] for _, row in runs)]
    names += sorted({s for _, row in runs for s in row["stage_seconds"]} - set(names))
    line = lambda label, vals: print(f"| {label:<27} | " + " | ".join(f"{v:>9}" for v in vals) + " |")  # noqa: E731
    for s in names:
        line(s, [fmt(row["stage_seconds"].get(s), 2) for _, row in runs])
    line("sum of stages", [fmt(row["stages_sum"], 2) for _, row in runs])
    line("sum without embed", [fmt(row["without_embed"], 2) for _, row in runs])
    line("wall (incl. Ray start/stop)", [fmt(row["wall"], 2) for _, row in runs])
    line("documents embedded", [str(row["embedded"]) for _, row in runs])
    line("themes", [str(row["themes"]) for _, row in runs])
    ra = r["ratios"]
    print(f"\nupdate without embed = {ra['update_without_embed']:.2f} s: {ra['vs_full_stages']:.3f} of the full run's stage seconds, "
          f"{ra['vs_full_stages_without_embed']:.3f} of its stage seconds without embed (target <= 0.20); "
          f"update embed {r['update']['embed']:.2f} s for {r['update']['embedded']} new documents")  # fmt: skip
    e = r["update"]["entry"]
    print(f"update record: {e['seconds']:.2f} s in all (Ray, commit, report included); drift {e['drift'].get('drift')} "
          f"(far {e['drift'].get('far')} of {e['drift'].get('new')}); new themes {e['new_themes']}; existing moved {e['existing_moved']}\n")  # fmt: skip
    print(f"| {'themes: ARI':<36} | {'ARI':>6} | {'docs':>6} |\n|{'-' * 38}|--------|--------|")
    for key, v in r["agreement"]["themes"].items():
        print(f"| {key:<36} | {fmt(v['ari']):>6} | {v['documents']:>6} |")
    print(f"| {'base run vs true labels (before)':<36} | {fmt(r['base']['ari_vs_true_labels']):>6} | {r['base']['ari_documents']:>6} |")
    cols = ("full_links", "update_links", "link_recall", "link_precision", "full_pairs", "update_pairs", "pair_recall", "pair_precision")
    heads = ("full links", "upd links", "link R", "link P", "full pairs", "upd pairs", "pair R", "pair P")
    print(f"\n| {'duplicates':<12} | " + " | ".join(f"{h:>10}" for h in heads) + " |")
    print(f"|{'-' * 14}|" + "|".join("-" * 12 for _ in heads) + "|")
    for key, v in r["agreement"]["duplicates"].items():
        print(f"| {key:<12} | " + " | ".join(f"{fmt(v[c]) if isinstance(v[c], float) or v[c] is None else v[c]:>10}" for c in cols) + " |")


def bench_corpus(name: str, args: argparse.Namespace, root: Path) -> dict[str, Any] | None:
    try:
        corpus = corpora.load(name)
    except SystemExit as exc:  # a bench-only package or list is missing: corpora.py says which
        log.warning("skipping corpus %s: %s", name, exc)
        return None
    work = root / name
    work.mkdir()
    parts = write_parts(corpus, work, args.split, args.seed, args.limit, args.plant)
    f, ray_tmp = parts["files"], root / "ray"
    log.info("[%s] %d documents, k=%d: base %d, new %d", name, parts["documents"], parts["k"], parts["base"], parts["new"])
    full = full_run(f"{name} full", f["combined"], work / "out-full", work / "cache-a", ray_tmp, parts["k"], args.seed)
    base = full_run(f"{name} base", f["base"], work / "out-base", work / "cache-b", ray_tmp, parts["k"], args.seed)
    from sklearn.metrics import adjusted_rand_score

    base_themes = themes_of(work / "out-base")
    common = sorted(base_themes)
    base["ari_documents"] = len(common)
    base["ari_vs_true_labels"] = float(adjusted_rand_score([parts["labels"][i] for i in common], [base_themes[i] for i in common]))
    upd = grow(f"{name} update", work / "out-base", f["new"], args.refit)
    ratios = {
        "update_without_embed": upd["without_embed"],
        "vs_full_stages": upd["without_embed"] / full["stages_sum"],
        "vs_full_stages_without_embed": upd["without_embed"] / full["without_embed"],
        "update_entry_without_embed_vs_full_wall": (upd["entry_seconds"] - upd["embed"]) / full["wall"],
    }
    agree = agreement(work / "out-full", work / "out-base", parts)
    info = {k: v for k, v in parts.items() if k in ("documents", "base", "new", "k", "planted")}
    return {"corpus": name, "refit": args.refit, "parts": info, "full": full, "base": base, "update": upd, "ratios": ratios, "agreement": agree}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpora", nargs="+", default=["bbc", "bible"], choices=corpora.NAMES)
    ap.add_argument("--split", type=float, default=0.9, help="share of the shuffled corpus in the base run (default 0.9)")
    ap.add_argument("--seed", type=int, default=0, help="shuffle and run seed")
    ap.add_argument("--limit", type=int, default=None, help="a seeded random subset of N documents per corpus (quick)")
    ap.add_argument(
        "--plant", type=float, default=0.2,
        help="light-edited copies of base documents added to the new part, as a share of its size (default 0.2; 0: none)",
    )  # fmt: skip
    ap.add_argument("--refit", choices=("never", "auto", "always"), default="never", help="the update's refit (default never)")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir (default /tmp); kept with --keep")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (inputs, outputs, caches)")
    ap.add_argument("--out", type=Path, default=RESULTS / "update.json")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if not 0 < args.split < 1:
        ap.error("--split must be between 0 and 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("ray", "fastembed", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.verbose:
        for layer in ("theme_engine", "engine", "cluster", "actors"):
            logging.getLogger(layer).setLevel(logging.WARNING)
    if os.environ.get("RAY_ADDRESS"):
        log.warning("RAY_ADDRESS is set (%s): the jobs will use that cluster, not a fresh local Ray", os.environ["RAY_ADDRESS"])
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    machine = {**machine_basics(), "cpu_busy_percent_before_start": cpu_busy_percent(),
               "gpu": "nvidia-smi found" if shutil.which("nvidia-smi") else "none (no nvidia-smi)"}  # fmt: skip
    rev = code_revision()
    root = Path(tempfile.mkdtemp(prefix="te-upd-", dir=str(args.workdir) if args.workdir else "/tmp"))  # short: Ray's socket paths
    results = []
    try:
        for name in args.corpora:
            r = bench_corpus(name, args, root)
            if r is not None:
                results.append(r)
    finally:
        if args.keep:
            log.info("kept %s", root)
        else:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\ncommand: {command}")
    print(f"code: {rev['revision']}; engine from {rev['engine_imported_from']}")
    print(f"machine: {machine['platform']} | cpu_count={machine['cpu_count']} | python {machine['python']} | GPU {machine['gpu']} | "
          f"CPU busy before start {machine['cpu_busy_percent_before_start']}%, load at start {machine['loadavg_1_5_15'][0]:.2f}, "
          f"at end {os.getloadavg()[0]:.2f}")  # fmt: skip
    for r in results:
        print_corpus(r)
    if not results:
        log.error("no corpus could be loaded")
        return 1
    for r in results:
        r["update"]["entry"] = {k: v for k, v in r["update"]["entry"].items() if k != "inputs"}
    write_result(args.out, {
        "benchmark": "update", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
        "code": rev, "machine": machine, "loadavg_at_end": list(os.getloadavg()),
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "corpora": results,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
