"""What an update builds on: a finished run with its committed updates (:class:`Grown`), as
``load_grown`` finds it in ``OUT``, and what an update's commit leaves of its own folder.

The run's stage files hold its documents, vectors and per-document arrays; each committed update
adds its documents, keys and vectors in ``OUT/.theme-engine/updates/NNNN`` and the corpus-wide
arrays of the latest one in its ``grown.npz`` (``GROWN_FILE``); the published result's
``updates.json`` lists them.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from theme_engine.engine.corpus import Corpus, dedup_key
from theme_engine.engine.vectors import VectorParts, part_files, rows_of_parts
from theme_engine.engine.docstore import DocChain, DocStore
from theme_engine.engine.layout import layout_sample
from theme_engine.engine.output import read_themes
from theme_engine.engine.update import load_top_parts

from ..state import STATE_DIR, StageStore, committed_updates, fingerprint, roll_forward, updates_root
from .base import RunError

TOP_DIR = "candidate_top"  # under the dedup stage's folder: parts of each document's best candidate cosines

log = logging.getLogger(__name__)

GROWN_FILE = "grown.npz"


@dataclass
class Part:
    """One block of the corpus: the run's own documents, or an update's."""

    docs: Path  # docs.parquet: every document of the block, in input order
    vectors: Path  # vectors.npy or vectors/ (parts): one row per embedded document of the block
    keys: Path | None  # keys.npz or keys/ (parts): exact-duplicate key -> row of the corpus of its first document


@dataclass
class Grown:
    """A finished run as the next update finds it: its parts (the run's, then each committed
    update's), the corpus over all of them, and the corpus-wide arrays (per embedded document:
    ``themes``, ``distances``, the duplicate decisions and evidence, ``coords``; the pairs; the
    themes' ``centroids``; the partitions the duplicate search routes into, once an update made
    them)."""

    out: Path
    parts: list[Part]
    corpus: Corpus
    unique: np.ndarray  # rows of the corpus that are embedded, in order: the arrays' rows
    arrays: dict[str, np.ndarray]
    themes: list[dict[str, Any]]
    hierarchy: list[dict[str, Any]]
    manifest: dict[str, Any]
    generation: int
    token: str  # what this state is, for the fingerprints of the update built on it
    vector_input: bool
    run_store: StageStore  # the run's own stage folders (its boilerplate, for one)
    layout_sample: np.ndarray | None = None  # rows (of ``unique``) the map was fitted on
    _vectors: list[VectorParts] = field(default_factory=list, repr=False)

    @property
    def docs(self) -> DocChain:
        return DocChain([p.docs for p in self.parts])

    def vector_blocks(self) -> list[VectorParts]:
        if not self._vectors:
            self._vectors = [VectorParts.open(p.vectors) for p in self.parts]
        return self._vectors

    @property
    def n_vectors(self) -> int:
        return int(sum(len(v) for v in self.vector_blocks()))

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of the sorted embedded rows ``rows``."""
        return rows_of_parts(self.vector_blocks(), rows)

    def iter_vectors(self, rows: int = 65_536) -> Any:
        """(first row, block) over every embedded row, in order."""
        start = 0
        for block in self.vector_blocks():
            for a in range(0, len(block), rows):
                yield start + a, np.asarray(block[a : a + rows], dtype=np.float32)
            start += len(block)

    def unique_with(self, new: Corpus) -> np.ndarray:
        """Corpus rows of the embedded documents, the run's then ``new``'s: the arrays' rows."""
        return np.concatenate([self.unique, len(self.corpus.ids) + new.unique])

    def chain_with(self, new_docs: Path) -> DocChain:
        """The stored documents of the run, its updates and the update being made (``new_docs``)."""
        return DocChain([*(p.docs for p in self.parts), new_docs])

    def corpus_with(self, new: Corpus) -> Corpus:
        """The corpus with the update's documents after it (without texts)."""
        return Corpus(
            ids=self.corpus.ids + new.ids,
            sources=self.corpus.sources + new.sources,
            texts=None,
            status=self.corpus.status + new.status,
            exact_of=np.concatenate([self.corpus.exact_of, new.exact_of]),
            bad=self.corpus.bad + new.bad,
            lengths=np.concatenate([self.corpus.lengths, new.lengths]),
        )


def load_grown(out: Path) -> Grown:
    """The run in ``out`` with its committed updates (a stopped commit is finished first)."""
    from .embed import Embed  # noqa: PLC0415  (they import this module)
    from .read import Read  # noqa: PLC0415

    out = Path(out)
    if roll_forward(out):
        finished = committed_updates(out) or {"updates": []}
        if finished["updates"]:
            log.warning("update %d of %s stopped while committing; its commit is now finished", len(finished["updates"]), out)
            tidy_update(updates_root(out), finished["updates"][-1]["dir"], finished["updates"])
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        raise RunError(f"{out} holds no finished theme-engine run (no manifest.json): run theme-engine run INPUT... --out {out} first")
    manifest = json.loads(manifest_path.read_text())
    state = out / STATE_DIR
    store = StageStore(out)
    vector_input = bool(manifest.get("stages", {}).get("embed", {}).get("skipped"))
    base_vectors = Read.vectors_path(store) if vector_input else Embed.vectors_path(store)
    needed = [Read.docs_path(store), base_vectors, state / "label" / "result.npz", state / "dedup" / "result.npz"]
    missing = [str(p.relative_to(out)) for p in needed if not p.exists()]
    if missing:
        raise RunError(
            f"{out} lacks the stage files an update builds on ({', '.join(missing)}); run theme-engine run again into {out} to rebuild them"
        )
    keys = Read.keys_path(store)
    parts = [Part(Read.docs_path(store), base_vectors, keys if keys.exists() else None)]
    current = committed_updates(out)
    generation = 0
    if current is None:
        label = store.load_arrays("label", "result")
        dedup = store.load_arrays("dedup", "result")
        arrays = {
            "themes": label["themes"],
            "distances": label["distances"],
            "centroids": label["centroids"],
            **{k: dedup[k] for k in ("duplicate_of", "similarity", "group", "kind", "lexical_similarity", "edits")},
            **{k: dedup[k] for k in ("pairs_i", "pairs_j", "pairs_sim", "pairs_kind")},
        }
        for key in ("candidate_top", "text_jaccard", "fuzzy_rows", "fuzzy_keys"):
            if key in dedup:  # candidate_top: a run made before the cap tasks saved it in parts
                arrays[key] = dedup[key]
        top_dir = state / "dedup" / TOP_DIR
        if "candidate_top" not in arrays and top_dir.is_dir():
            try:
                arrays["candidate_top"] = load_top_parts(top_dir, len(dedup["duplicate_of"]))
            except (OSError, ValueError) as exc:
                raise RunError(f"{top_dir} is not readable ({exc}); run theme-engine run again into {out} to rebuild it") from None
        if store.has("layout", "result"):
            arrays["coords"] = store.load_arrays("layout", "result")["coords"]
        themes = store.load_json("label", "themes")
        hierarchy = store.load_json("label", "hierarchy")
        done = {d.name: json.loads((d / "done.json").read_text()).get("fingerprint") for d in sorted(state.iterdir()) if (d / "done.json").is_file()}
        token = fingerprint("grown", 0, done)  # every stage of the run: a re-run of any changes what an update builds on
    else:
        generation = int(current["generation"])
        root = updates_root(out)
        for u in current["updates"]:
            parts.append(Part(root / u["docs"], root / u["vectors"], root / u["keys"]))
        last = root / current["updates"][-1]["dir"]
        with np.load(last / GROWN_FILE, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        themes, hierarchy = read_themes(out)
        token = fingerprint("grown", generation, current["updates"][-1]["dir"], current["updates"][-1]["fingerprint"])
    bad = list(manifest.get("bad_records", {}).get("examples", []))
    chain = DocChain([p.docs for p in parts])
    corpus = chain.load_corpus(bad)
    unique = corpus.unique
    grown = Grown(out, parts, corpus, unique, arrays, themes, hierarchy, manifest, generation, token, vector_input, store)
    layout = manifest.get("stages", {}).get("layout", {})
    if "coords" in arrays and not layout.get("skipped"):
        n_base = len(grown.vector_blocks()[0])  # the run's own rows: its map's
        cfg = manifest.get("config", {})
        grown.layout_sample = layout_sample(n_base, int(cfg.get("layout", {}).get("sample_size", 30_000)), int(cfg.get("seed", 0)))
    if grown.n_vectors != len(unique) or len(arrays["themes"]) != len(unique):
        raise RunError(f"{out}: the stored vectors ({grown.n_vectors}) and documents ({len(unique)}) disagree; run theme-engine run again into {out}")
    return grown


def load_keys(path: Path, only: set[str] | None = None) -> dict[str, int]:
    """The exact-duplicate keys a read stored (``keys.npz``, or the parts of ``keys/``): key ->
    row of its first document; with ``only``, just those keys."""
    wanted = np.asarray(sorted(k.encode() for k in only), dtype="S32") if only is not None else None
    keys: dict[str, int] = {}
    for file in part_files(path, ".npz") if path.is_dir() else [path]:
        with np.load(file, allow_pickle=False) as data:
            found, rows = data["key"], data["row"]
        if wanted is not None:
            hit = np.isin(found, wanted)
            found, rows = found[hit], rows[hit]
        keys.update(zip((k.decode() for k in found.tolist()), rows.tolist()))
    return keys


def existing_keys(grown: Grown, only: set[str] | None = None) -> dict[str, int]:
    """Exact-duplicate key -> corpus row of its first document, over every part (the run's keys
    are recomputed from its texts when it was made before they were stored); with ``only``, just
    those keys (an update asks for its new documents' keys: it holds no table of the corpus)."""
    keys: dict[str, int] = {}
    for part, offset in zip(grown.parts, grown.docs.offsets[:-1]):
        if part.keys is not None and part.keys.exists():  # keys.npz, or keys/ of a read that wrote parts
            keys.update(load_keys(part.keys, only))
            continue
        log.info("update: computing the exact-duplicate keys of %s (made before they were stored)", part.docs)
        store = DocStore(part.docs)
        corpus = store.load_corpus([])
        for sel, texts in store.iter_texts(corpus.unique):
            for r, t in zip(sel.tolist(), texts):
                key = dedup_key(t)
                if only is None or key in only:
                    keys.setdefault(key, int(r + offset))
    return keys


def tidy_update(root: Path, folder: str, updates: list[dict[str, Any]]) -> None:
    """After a commit, keep of each update what later ones read: the folders of the stages that
    say so (``Stage.kept_by_updates``: its documents, keys and vectors) and the latest update's
    corpus-wide arrays; the other stages' arrays (each as large as the corpus) go."""
    from . import UPDATE_PIPELINE  # noqa: PLC0415  (this module is imported while the package loads)

    kept = {stage.name for stage in UPDATE_PIPELINE if stage.kept_by_updates}
    here = root / folder
    for entry in sorted(here.iterdir()) if here.is_dir() else ():
        if entry.is_dir() and entry.name not in kept:
            shutil.rmtree(entry, ignore_errors=True)
    for u in updates[:-1]:
        (root / u["dir"] / GROWN_FILE).unlink(missing_ok=True)
