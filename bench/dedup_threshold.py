"""How to choose the default near-duplicate cosine threshold, measured on real near-duplicate text.

Near-duplicates: the same Bible verse in two public-domain translations, the King James Version
(1611/1769) and the American Standard Version (1901), which revises the KJV wording lightly, so a
verse and its ASV counterpart are the kind of "same text, edited" pair that dedup should catch.

  * positives       (KJV v, ASV v) for a seeded random sample of verses present in both versions;
                    verses whose two texts are exact duplicates after case / whitespace / punctuation
                    folding (``engine.corpus.dedup_key``) are skipped: exact duplicates are handled
                    before embedding. Verses whose KJV text repeats verbatim elsewhere are grouped
                    first and sampled once per group.
  * hard negatives  (KJV v, KJV v+1) and (KJV v, ASV v+1), v+1 in the same chapter: adjacent verses,
                    same topic, style and names, but different text. A negative whose other side
                    is textually the same verse as v (same folded text, or same KJV group) is dropped,
                    so no verse is its own negative.

Texts are cleaned as the engine cleans them (``engine.corpus.clean_text``) after dropping the
square brackets the KJV edition uses to mark supplied (italic) words.

For every threshold of the grid it prints recall of positives, false-positive rate on the hard
negatives (pooled, and per kind), precision assuming as many positives as negatives, and F1, then
the F1-maximising threshold and the highest threshold that keeps recall >= 0.95 / 0.90 / 0.80.
Results JSON: ``bench/results/dedup_threshold.json``.

    cd /work/main && /work/venv/bin/python bench/dedup_threshold.py --pairs 3000
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import platform
import random
import shlex
import sys
import time
import unicodedata
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from theme_engine.engine.corpus import clean_text, dedup_key  # noqa: E402
from theme_engine.engine.embedding import Embedder, get_model  # noqa: E402

log = logging.getLogger("bench.dedup_threshold")


def fold_words(text: str) -> list[str]:
    """Words of the text as the exact-duplicate key sees them (NFKC, case-folded, no punctuation)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if not unicodedata.category(ch).startswith("P")).split()


def edit_fraction(a: str, b: str) -> float:
    """1 - difflib word-sequence similarity: roughly the fraction of words changed."""
    return 1.0 - difflib.SequenceMatcher(None, fold_words(a), fold_words(b), autojunk=False).ratio()


def verse_text(verse_id: int, version: Any) -> str | None:
    """Cleaned text of one verse in one version; None where the version lacks it (or it is empty)."""
    import pythonbible as pb

    try:
        raw = pb.get_verse_text(verse_id, version=version)
    except Exception:  # VersionMissingVerseError and friends: the verse is not in this version
        return None
    text = clean_text(raw.replace("[", "").replace("]", ""))
    return text or None


def load_parallel() -> tuple[list[int], dict[int, str], dict[int, str]]:
    """All verse ids with text in both KJV and ASV (canonical order), and the two texts by id."""
    import pythonbible as pb
    from pythonbible.verses import VERSE_IDS

    kjv: dict[int, str] = {}
    asv: dict[int, str] = {}
    for vid in VERSE_IDS:
        k = verse_text(vid, pb.Version.KING_JAMES)
        a = verse_text(vid, pb.Version.AMERICAN_STANDARD)
        if k is not None:
            kjv[vid] = k
        if a is not None:
            asv[vid] = a
    both = [vid for vid in VERSE_IDS if vid in kjv and vid in asv]
    return both, kjv, asv


def build_pairs(n_pairs: int, seed: int) -> dict[str, Any]:
    both, kjv, asv = load_parallel()
    log.info("verses with text in both KJV and ASV: %d (KJV %d, ASV %d)", len(both), len(kjv), len(asv))

    # group identical KJV texts (folded): each group is sampled at most once, through its first verse
    group_of: dict[int, int] = {}
    first_of_key: dict[str, int] = {}
    members: dict[int, list[int]] = defaultdict(list)
    for vid in both:
        rep = first_of_key.setdefault(dedup_key(kjv[vid]), vid)
        group_of[vid] = rep
        members[rep].append(vid)
    repeated = {rep: m for rep, m in members.items() if len(m) > 1}

    reps = [vid for vid in both if group_of[vid] == vid]
    exact = [vid for vid in reps if dedup_key(kjv[vid]) == dedup_key(asv[vid])]
    exact_set = set(exact)
    eligible = [vid for vid in reps if vid not in exact_set]
    log.info(
        "KJV text groups: %d (%d groups repeat verbatim, %d verses in them); exact KJV/ASV duplicates skipped: %d; "
        "eligible positives: %d",
        len(reps), len(repeated), sum(len(m) for m in repeated.values()), len(exact), len(eligible),
    )
    rng = random.Random(seed)
    if n_pairs > len(eligible):
        log.warning("--pairs %d > eligible %d: using all", n_pairs, len(eligible))
        n_pairs = len(eligible)
    sample = sorted(rng.sample(eligible, n_pairs))

    # verse v+1 in the same chapter: the next verse id (ids are BBCCCVVV)
    pos: list[tuple[str, str, int]] = []
    neg_kk: list[tuple[str, str, int]] = []
    neg_ka: list[tuple[str, str, int]] = []
    dropped = {"no_next_verse": 0, "kk_same_text": 0, "ka_same_text": 0, "ka_next_missing_in_asv": 0}
    for vid in sample:
        k, a = kjv[vid], asv[vid]
        pos.append((k, a, vid))
        nxt = vid + 1
        if nxt not in kjv:  # last verse of the chapter (or missing in KJV)
            dropped["no_next_verse"] += 1
            continue
        keys_v = {dedup_key(k), dedup_key(a)}
        same_group = nxt in group_of and group_of[nxt] == group_of[vid]
        if same_group or dedup_key(kjv[nxt]) in keys_v:
            dropped["kk_same_text"] += 1
        else:
            neg_kk.append((k, kjv[nxt], vid))
        if nxt not in asv:
            dropped["ka_next_missing_in_asv"] += 1
        elif same_group or dedup_key(asv[nxt]) in keys_v:
            dropped["ka_same_text"] += 1
        else:
            neg_ka.append((k, asv[nxt], vid))
    log.info(
        "pairs: %d positives, %d KJV/KJV+1 negatives, %d KJV/ASV+1 negatives (dropped: %s)",
        len(pos), len(neg_kk), len(neg_ka), dropped,
    )
    return {
        "pos": pos,
        "neg_kk": neg_kk,
        "neg_ka": neg_ka,
        "sample": sample,
        "kjv": kjv,
        "asv": asv,
        "group_of": group_of,
        "counts": {
            "verses_in_both": len(both),
            "kjv_groups": len(reps),
            "kjv_groups_repeated": len(repeated),
            "verses_in_repeated_groups": sum(len(m) for m in repeated.values()),
            "exact_duplicates_skipped": len(exact),
            "eligible_positives": len(eligible),
            "negatives_dropped": dropped,
        },
    }


def cosines(pairs: list[tuple[str, str, int]], vec_of: dict[str, np.ndarray]) -> np.ndarray:
    if not pairs:
        return np.zeros(0, dtype=np.float32)
    a = np.stack([vec_of[p[0]] for p in pairs])
    b = np.stack([vec_of[p[1]] for p in pairs])
    return np.einsum("ij,ij->i", a, b)


def rates(pos: np.ndarray, neg: np.ndarray, t: float) -> dict[str, float]:
    recall = float(np.mean(pos >= t))
    fpr = float(np.mean(neg >= t))
    precision = recall / (recall + fpr) if recall + fpr > 0 else float("nan")  # equal class sizes
    f1 = 2 * precision * recall / (precision + recall) if precision == precision and precision + recall > 0 else 0.0
    return {"recall": recall, "fpr": fpr, "precision": precision, "f1": f1}


def quantiles(x: np.ndarray) -> dict[str, float]:
    qs = [0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 100]
    return {f"p{q}": round(float(np.percentile(x, q)), 4) for q in qs} | {"mean": round(float(x.mean()), 4)}


def nearest_other(
    data: dict[str, Any], texts: list[str], vecs: np.ndarray, top: int = 32, block: int = 512,
    min_edit: float = 0.0,
) -> tuple[np.ndarray, list[int]]:
    """For each sampled KJV verse, the highest cosine to any embedded text that is not a version of
    the same verse (nor of a verse with the same KJV text), and the index of that text.

    The pool is every text embedded for the pairs (KJV and ASV of v and v+1 for all sampled v), so
    this is the per-document false-match risk of an all-pairs search over a corpus of that size.
    ``min_edit`` > 0 also skips texts closer than that word-level edit fraction: the Bible has real
    near-duplicates of its own (parallel passages, refrains), which are not false matches.
    Verses with no qualifying text among their ``top`` nearest get -1.
    """
    kjv, asv, group_of = data["kjv"], data["asv"], data["group_of"]
    groups_of_text: dict[str, set[int]] = defaultdict(set)
    for vid in data["sample"]:
        for x in (vid, vid + 1):
            for d in (kjv, asv):
                if x in d:
                    groups_of_text[d[x]].add(group_of.get(x, x))
    keys = [dedup_key(t) for t in texts]
    col_groups = [groups_of_text.get(t, set()) for t in texts]
    queries = [kjv[v] for v in data["sample"]]
    index = {t: i for i, t in enumerate(texts)}
    Q = vecs[[index[q] for q in queries]]
    best = np.full(len(queries), -1.0, dtype=np.float32)
    best_j = [-1] * len(queries)
    for lo in range(0, len(queries), block):
        S = Q[lo : lo + block] @ vecs.T
        cand = np.argsort(-S, axis=1)[:, :top]
        for r in range(S.shape[0]):
            vid = data["sample"][lo + r]
            g = group_of[vid]
            own = {dedup_key(kjv[vid]), dedup_key(asv[vid])}
            for j in cand[r]:
                if g in col_groups[j] or keys[j] in own:
                    continue
                if min_edit > 0 and edit_fraction(kjv[vid], texts[j]) < min_edit:
                    continue
                best[lo + r], best_j[lo + r] = S[r, j], int(j)
                break
    return best, best_j


def _finite(x: Any) -> Any:
    """NaN (an undefined precision) as JSON null."""
    if isinstance(x, float):
        return x if x == x else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3000, help="positive pairs sampled (default 3000)")
    ap.add_argument("--seed", type=int, default=20240601, help="sampling seed")
    ap.add_argument("--model", default="all-MiniLM-L6-v2-int8")
    ap.add_argument("--model-root", type=Path, default=Path("/tmp/te-models"), help="where the model folder is built")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lo", type=float, default=0.80)
    ap.add_argument("--hi", type=float, default=0.98)
    ap.add_argument("--step", type=float, default=0.01)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dedup_threshold.json")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    machine = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "threads": args.threads,
    }
    print(f"machine: {machine['platform']} ({machine['machine']}), {machine['cpu_count']} CPUs, python {machine['python']}")
    print(f"command: {command}")

    t0 = time.perf_counter()
    data = build_pairs(args.pairs, args.seed)
    t_load = time.perf_counter() - t0

    texts = sorted({t for kind in ("pos", "neg_kk", "neg_ka") for p in data[kind] for t in p[:2]})
    log.info("embedding %d distinct texts with %s (%d threads)", len(texts), args.model, args.threads)
    t0 = time.perf_counter()
    emb = Embedder(get_model(args.model), args.model_root, threads=args.threads)
    t_model = time.perf_counter() - t0
    t0 = time.perf_counter()
    vecs = emb.embed(texts, batch_size=args.batch_size)
    t_embed = time.perf_counter() - t0
    log.info("embedded in %.1fs (%.0f texts/s)", t_embed, len(texts) / max(t_embed, 1e-9))
    vec_of = dict(zip(texts, vecs))

    pos = cosines(data["pos"], vec_of)
    neg_kk = cosines(data["neg_kk"], vec_of)
    neg_ka = cosines(data["neg_ka"], vec_of)
    neg = np.concatenate([neg_kk, neg_ka])

    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))
    nn, nn_j = nearest_other(data, texts, vecs)
    nnd, nnd_j = nearest_other(data, texts, vecs, min_edit=0.5)

    n_steps = int(round((args.hi - args.lo) / args.step))
    grid = [round(args.lo + i * args.step, 4) for i in range(n_steps + 1)]
    table = []
    for t in grid:
        r = rates(pos, neg, t)
        r |= {"threshold": t, "fpr_kjv_kjv1": float(np.mean(neg_kk >= t)), "fpr_kjv_asv1": float(np.mean(neg_ka >= t)),
              "nn_false_match": float(np.mean(nn >= t)), "nn_distinct_false_match": float(np.mean(nnd >= t))}
        table.append(r)

    print()
    print(f"positives (KJV v, ASV v): {len(pos)}   hard negatives: {len(neg)} "
          f"({len(neg_kk)} KJV v/KJV v+1, {len(neg_ka)} KJV v/ASV v+1)   ROC AUC {auc:.4f}")
    print("precision assumes as many near-duplicate pairs as hard-negative pairs: P = R / (R + FPR)")
    print(f"NN>=t: share of sampled KJV verses whose nearest other-verse text among all {len(texts)} embedded texts "
          "has cos >= t (all-pairs false-match risk per document);")
    print("NNd>=t: the same, counting only texts with >= 50% of words different (the Bible's own parallel "
          "passages and refrains excluded)")
    print()
    header = f"{'thresh':>6}  {'recall':>7}  {'FPR':>7}  {'FPR kk+1':>8}  {'FPR ka+1':>8}  {'precision':>9}  {'F1':>6}  {'NN>=t':>6}  {'NNd>=t':>6}"
    print(header)
    print("-" * len(header))
    for r in table:
        p = f"{r['precision']:.4f}" if r["precision"] == r["precision"] else "   -"
        print(f"{r['threshold']:>6.2f}  {r['recall']:>7.4f}  {r['fpr']:>7.4f}  {r['fpr_kjv_kjv1']:>8.4f}  "
              f"{r['fpr_kjv_asv1']:>8.4f}  {p:>9}  {r['f1']:>6.4f}  {r['nn_false_match']:>6.4f}  {r['nn_distinct_false_match']:>6.4f}")

    # summaries on the printed grid, and on a fine grid over the whole range
    def summarise(ts: list[float]) -> dict[str, Any]:
        rows = [rates(pos, neg, t) | {"threshold": t} for t in ts]
        best = max(rows, key=lambda r: (r["f1"], r["threshold"]))
        out: dict[str, Any] = {"max_f1": best}
        for target in (0.95, 0.90, 0.80):
            ok = [r for r in rows if r["recall"] >= target]
            out[f"highest_with_recall_ge_{target:.2f}"] = max(ok, key=lambda r: r["threshold"]) if ok else None
        for target in (0.05, 0.01, 0.001):
            ok = [r for r in rows if r["fpr"] <= target]
            out[f"lowest_with_fpr_le_{target}"] = min(ok, key=lambda r: r["threshold"]) if ok else None
        return out

    coarse = summarise(grid)
    fine_grid = [round(0.5 + i * 0.001, 4) for i in range(501)]
    fine = summarise(fine_grid)

    def line(name: str, r: dict[str, Any] | None) -> str:
        if r is None:
            return f"  {name:<32} none"
        return (f"  {name:<32} {r['threshold']:.3f}  (recall {r['recall']:.4f}, FPR {r['fpr']:.4f}, "
                f"precision {r['precision']:.4f}, F1 {r['f1']:.4f})")

    for title, summ in (("on the table's grid", coarse), ("on a fine grid 0.500..1.000 step 0.001", fine)):
        print()
        print(f"summary {title}:")
        print(line("threshold maximising F1", summ["max_f1"]))
        for key, r in summ.items():
            if key != "max_f1":
                print(line(key.replace("_", " "), r))

    print()
    print("cosine quantiles:")
    dist = {"positives": quantiles(pos), "neg_kjv_kjv_next": quantiles(neg_kk), "neg_kjv_asv_next": quantiles(neg_ka)}
    for name, q in dist.items():
        print(f"  {name:<18} " + "  ".join(f"{k}={v:.3f}" for k, v in q.items()))

    # recall by length: short verses are where paraphrase moves the vector most
    lens = np.array([len(p[0]) for p in data["pos"]])
    buckets = [(0, 60), (60, 120), (120, 200), (200, 10_000)]
    by_len = []
    print()
    print("recall by KJV verse length (chars) at 0.85 / 0.90 / 0.95:")
    for lo, hi in buckets:
        m = (lens >= lo) & (lens < hi)
        if m.any():
            row = {"chars": [lo, hi], "n": int(m.sum())} | {f"recall_{t}": float(np.mean(pos[m] >= t)) for t in (0.85, 0.9, 0.95)}
            by_len.append(row)
            print(f"  [{lo:>4}, {hi:>5})  n={row['n']:>5}  {row['recall_0.85']:.4f}  {row['recall_0.9']:.4f}  {row['recall_0.95']:.4f}")

    # recall by how much the ASV edits the KJV wording (word-level), and by the LORD -> Jehovah rename
    edits = np.array([edit_fraction(k, a) for k, a, _ in data["pos"]])
    jehovah = np.array(["jehovah" in fold_words(a) for _, a, _ in data["pos"]])
    by_edit = []
    print()
    print("recall by fraction of words changed KJV -> ASV at 0.85 / 0.90 / 0.95:")
    for lo, hi in [(0, 0.05), (0.05, 0.10), (0.10, 0.20), (0.20, 0.35), (0.35, 1.01)]:
        m = (edits >= lo) & (edits < hi)
        if m.any():
            row = {"edit_fraction": [lo, min(hi, 1.0)], "n": int(m.sum())} | {
                f"recall_{t}": float(np.mean(pos[m] >= t)) for t in (0.85, 0.9, 0.95)
            }
            by_edit.append(row)
            print(f"  [{lo:.2f}, {min(hi, 1.0):.2f})  n={row['n']:>5}  {row['recall_0.85']:.4f}  "
                  f"{row['recall_0.9']:.4f}  {row['recall_0.95']:.4f}")
    by_jehovah = []
    for flag, name in ((True, "ASV has 'Jehovah' (KJV 'LORD')"), (False, "no 'Jehovah'")):
        m = jehovah == flag
        if m.any():
            row = {"jehovah": flag, "n": int(m.sum())} | {f"recall_{t}": float(np.mean(pos[m] >= t)) for t in (0.85, 0.9, 0.95)}
            by_jehovah.append(row)
            print(f"  {name:<31} n={row['n']:>5}  {row['recall_0.85']:.4f}  {row['recall_0.9']:.4f}  {row['recall_0.95']:.4f}")

    def ref(vid: int) -> str:
        import pythonbible as pb

        book, ch, vs = pb.get_book_chapter_verse(vid)
        return f"{book.title} {ch}:{vs}"

    order = np.argsort(pos)
    lowest_pos = [{"verse": ref(data["pos"][i][2]), "cos": round(float(pos[i]), 4), "kjv": data["pos"][i][0],
                   "asv": data["pos"][i][1]} for i in order[:10]]
    negs = data["neg_kk"] + data["neg_ka"]
    order_n = np.argsort(-neg)
    highest_neg = [{"verse": ref(negs[i][2]), "cos": round(float(neg[i]), 4), "a": negs[i][0], "b": negs[i][1]}
                   for i in order_n[:10]]
    order_nn = np.argsort(-nn)
    nearest = [{"verse": ref(data["sample"][i]), "cos": round(float(nn[i]), 4), "text": data["kjv"][data["sample"][i]],
                "nearest": texts[nn_j[i]]} for i in order_nn[:10]]
    print()
    print(f"nearest other-verse text (pool of {len(texts)}): " + "  ".join(f"{k}={v:.3f}" for k, v in quantiles(nn).items()))
    for r in nearest[:5]:
        print(f"  {r['cos']:.3f}  {r['verse']}: {r['text'][:70]!r} | {r['nearest'][:70]!r}")
    order_nnd = np.argsort(-nnd)
    nearest_d = [{"verse": ref(data["sample"][i]), "cos": round(float(nnd[i]), 4), "text": data["kjv"][data["sample"][i]],
                  "nearest": texts[nnd_j[i]]} for i in order_nnd[:10]]
    print("nearest other-verse text with >= 50% of words different: "
          + "  ".join(f"{k}={v:.3f}" for k, v in quantiles(nnd).items()))
    for r in nearest_d[:5]:
        print(f"  {r['cos']:.3f}  {r['verse']}: {r['text'][:70]!r} | {r['nearest'][:70]!r}")
    print()
    print("lowest-cosine positives:")
    for r in lowest_pos[:5]:
        print(f"  {r['cos']:.3f}  {r['verse']}: KJV {r['kjv'][:70]!r} | ASV {r['asv'][:70]!r}")
    print("highest-cosine hard negatives:")
    for r in highest_neg[:5]:
        print(f"  {r['cos']:.3f}  {r['verse']}: {r['a'][:70]!r} | {r['b'][:70]!r}")

    result = {
        "command": command,
        "machine": machine,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": emb.spec.model_id,
        "counts": data["counts"] | {"positives": len(pos), "neg_kjv_kjv_next": len(neg_kk), "neg_kjv_asv_next": len(neg_ka)},
        "timing_s": {"load_texts": round(t_load, 2), "load_model": round(t_model, 2), "embed": round(t_embed, 2),
                     "texts_embedded": len(texts)},
        "roc_auc": auc,
        "table": table,
        "summary_grid": coarse,
        "summary_fine": fine,
        "cosine_quantiles": dist,
        "recall_by_length": by_len,
        "recall_by_edit_fraction": by_edit,
        "recall_by_jehovah": by_jehovah,
        "nearest_other_quantiles": quantiles(nn),
        "nearest_other_top": nearest,
        "nearest_distinct_quantiles": quantiles(nnd),
        "nearest_distinct_top": nearest_d,
        "lowest_positives": lowest_pos,
        "highest_negatives": highest_neg,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_finite(result), indent=2, allow_nan=False) + "\n")
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
