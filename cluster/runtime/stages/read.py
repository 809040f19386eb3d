"""read: the inputs into ``docs.parquet`` (ids, sources, texts, status, exact-duplicate links) and
the bad records; precomputed vectors into ``vectors.npy``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from theme_engine.engine import sources
from theme_engine.engine.corpus import (
    PREPARED_COLUMNS,
    Corpus,
    CorpusBuilder,
    InputError,
    InputFile,
    ReadTask,
    expand_inputs,
    is_vector_input,
    parse_task,
    plan_read_tasks,
    prepare_records,
)
from theme_engine.actors.tasks import check_vectors_task, finish_piece_task, first_ids_task, first_keys_task, read_vectors_task, stage_piece_task
from theme_engine.engine.docstore import DOC_BATCH, PART_FILE, store_vector_piece
from theme_engine.engine.events import StageControl
from theme_engine.engine.readparts import group_tasks
from theme_engine.engine.update import NewDocuments, rows_by_id
from theme_engine.engine.vectors import PART_NAME, VectorParts, save_npz

from ..state import StageStore, fingerprint, remove
from .base import RunContext, RunError, Section, Stage
from .grown import existing_keys, load_keys


MIB = 2**20  # read.chunk_mb's unit
MAX_BUCKETS = 64  # buckets of ids and of keys a large read shuffles into


@dataclass
class Documents:
    """The read stage's product: the input files, whether they hold precomputed vectors, and the
    corpus without its texts (``unique``: the positions of the documents that are embedded)."""

    files: list[InputFile]
    vector_input: bool
    corpus: Corpus

    @property
    def unique(self) -> np.ndarray:
        return self.corpus.unique


def save_keys(path: Any, keys: dict[str, int]) -> None:
    """``keys.npz``: exact-duplicate keys (hex digests) and the row of each one's first document."""
    save_npz(path, key=np.asarray([k.encode() for k in keys], dtype="S32"), row=np.fromiter(keys.values(), dtype=np.int64, count=len(keys)))


def check_parts(ctx: RunContext, parts: VectorParts, stage: str, rows: int | None = None, dim: int | None = None) -> str | None:
    """What is wrong with a stage's stored vector parts (not ``rows`` rows of ``dim`` columns when
    given, or a part whose rows are not finite unit vectors), or None. Several parts are each
    checked by a Ray task where it runs: a re-run reads no vector through the driver."""
    if len(parts.paths) < 2:
        return parts.check(rows, dim)
    if rows is not None and len(parts) != rows or dim is not None and parts.dim != dim:
        return parts.check(rows, dim)  # the shapes, from the parts' headers
    found = ctx.gather({i: (lambda p=p: check_vectors_task.remote(p)) for i, p in enumerate(parts.paths)}, ctx.control(stage))
    return next((found[i] for i in range(len(parts.paths)) if found[i] is not None), None)


class Read(Stage):
    name = "read"
    settings = {"read": Section("read", exclude=frozenset({"max_bad_examples", "chunk_mb"}))}

    # what the stage leaves in its folder, for the stages and updates that read it
    @staticmethod
    def docs_path(store: StageStore) -> Path:
        """``docs.parquet``: every document, in input order, with its text and status."""
        return store.dir("read") / "docs.parquet"

    @staticmethod
    def keys_file(store: StageStore) -> Path:
        """``keys.npz``: the exact-duplicate keys (:func:`save_keys`)."""
        return store.dir("read") / "keys.npz"

    @staticmethod
    def keys_dir(store: StageStore) -> Path:
        """``keys/``: the same as parts, one per bucket of keys (when the read wrote parts)."""
        return store.dir("read") / "keys"

    def _save_keys(self, ctx: RunContext, keys: dict[str, int]) -> None:
        """``keys.npz`` (:func:`save_keys`), in place of the keys' parts a read may have left."""
        remove(self.keys_dir(ctx.store))
        save_keys(self.keys_file(ctx.store), keys)

    @classmethod
    def keys_path(cls, store: StageStore) -> Path:
        """The exact-duplicate keys as stored: ``keys/`` when the read wrote parts, else ``keys.npz``."""
        return cls.keys_dir(store) if cls.keys_dir(store).is_dir() else cls.keys_file(store)

    @staticmethod
    def vectors_path(store: StageStore) -> Path:
        """``vectors/``: precomputed vectors, when the input held them, as the read tasks'
        parts (``engine.vectors.VectorParts``)."""
        return store.dir("read") / "vectors"

    def fingerprint(self, ctx: RunContext) -> str:
        cfg = ctx.cfg
        self.files = expand_inputs(cfg.inputs)
        self.vector_input = is_vector_input(self.files, cfg.read.vector_field)
        inputs = [(f.name, f.kind, sources.identity(f.path)) for f in self.files]
        return fingerprint("read", inputs, self.settings_part(ctx.cfg), self.vector_input)

    def verify(self, ctx: RunContext) -> str | None:
        if not self.vector_input:
            return None
        path = self.vectors_path(ctx.store)
        if not path.is_dir():
            return f"{path} is missing"
        try:
            parts = VectorParts.open(path)
        except (OSError, ValueError) as exc:
            return f"{path} is not readable ({exc})"
        return check_parts(ctx, parts, "read")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        control = ctx.control("read")
        counts = self._read_vectors(ctx, control) if self.vector_input else self._read_text(ctx, control)
        return {"device": "cpu", **counts}

    def load(self, ctx: RunContext) -> Documents:
        corpus = ctx.docs().load_corpus(ctx.store.load_json("read", "bad"))
        if len(corpus.unique) == 0:
            raise RunError(self._nothing_usable(ctx, corpus))
        return Documents(self.files, self.vector_input, corpus)

    def _nothing_usable(self, ctx: RunContext, corpus: Corpus) -> str:
        rc, files = ctx.cfg.read, self.files
        detail = "; ".join(f"{b['source']}: {b['error']}" for b in corpus.bad[:3])
        names = ", ".join(f.name for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        return (
            f"nothing usable in {names}: {len(corpus.ids)} documents, {len(corpus.bad)} bad records"
            + (f" (e.g. {detail})" if detail else "")
            + (f"; all documents were filtered (min_chars={rc.min_chars}, max_chars={rc.max_chars})" if corpus.ids else "")
        )

    def _read_vectors(self, ctx: RunContext, control: StageControl) -> dict[str, int]:
        """Precomputed vectors: every row is kept as given (no text filter, no exact-duplicate
        collapse); ids are prefixed with the file's name when there are several files. Each piece
        of the inputs (a file, or a run of row groups of ``read.chunk_mb``) is read and stored as
        parts of ``docs.parquet`` and ``vectors/`` by a Ray task where it runs (one piece: here),
        so no vector and no text passes through the driver."""
        rc, files = ctx.cfg.read, self.files
        docs_dir, vec_dir = self.docs_path(ctx.store), self.vectors_path(ctx.store)
        for old in (docs_dir, vec_dir):
            remove(old)
        docs_dir.mkdir(parents=True)
        vec_dir.mkdir(parents=True)
        pieces = [t if files[t.file_index].kind == "parquet" else ReadTask(t.file_index) for t in plan_read_tasks(files, rc.chunk_mb * MIB)]
        fields = (rc.vector_field, rc.text_field, rc.id_field)
        several = len(files) > 1

        def where(i: int) -> tuple[Path, Path]:
            return docs_dir / PART_FILE.format(i), vec_dir / PART_NAME.format(i)

        control.report(0, len(pieces))
        if len(pieces) == 1:
            results = {0: store_vector_piece(files[pieces[0].file_index], pieces[0], fields, several, *where(0))}
        else:
            submits = {
                i: (lambda i=i, t=t: read_vectors_task.remote(files[t.file_index], t, fields, several, *where(i)))
                for i, t in enumerate(pieces)
            }
            results = ctx.gather(submits, control)
        got = [results[i] for i in range(len(pieces))]
        dims = {r["dim"] for r in got if r["documents"]}
        if len(dims) > 1:
            raise InputError(f"vector inputs have different dimensions: {sorted(dims)}")
        bad = [{"source": b["source"], "error": b["error"]} for r in got for b in r["bad"]]
        ctx.store.save_json("read", "bad", bad)
        n = sum(r["documents"] for r in got)
        control.report(len(pieces), len(pieces))
        return {"documents": n, "bad": len(bad), "ok": n, "pieces": len(pieces)}

    def _read_text(self, ctx: RunContext, control: StageControl) -> dict[str, int]:
        """The text inputs into ``docs.parquet``: from two pieces of ``read.chunk_mb`` on, by Ray
        tasks that write its parts (:meth:`_read_parts`), else :meth:`_read_stream`."""
        rc, files = ctx.cfg.read, self.files
        tasks = plan_read_tasks(files, rc.chunk_mb * MIB)
        pieces = group_tasks(files, tasks, rc.chunk_mb * MIB)
        if len(pieces) >= 2:
            return self._read_parts(ctx, control, pieces)
        return self._read_stream(ctx, control, tasks)

    def _read_parts(self, ctx: RunContext, control: StageControl, pieces: list[list[ReadTask]]) -> dict[str, Any]:
        """Each piece parsed, and its documents stored as a part of ``docs.parquet/``, by Ray
        tasks where they run; duplicate ids and exact duplicates found by a shuffle of ids and
        keys into buckets (``engine.readparts``). The driver keeps each piece's counts, the bad
        records and the rows they drop: no text, id or key of a document."""
        rc, files = ctx.cfg.read, self.files
        n_pieces = len(pieces)
        buckets = min(n_pieces, MAX_BUCKETS)
        staging, docs_dir, keys_dir = ctx.store.dir("read") / "staging", self.docs_path(ctx.store), self.keys_dir(ctx.store)
        for old in (staging, docs_dir, keys_dir, self.keys_file(ctx.store)):
            remove(old)
        for d in (staging, docs_dir, keys_dir):
            d.mkdir(parents=True)
        fields, limits = (rc.text_field, rc.id_field), (rc.min_chars, rc.max_chars)
        staged = [staging / PART_FILE.format(p) for p in range(n_pieces)]
        maps: dict[int, list[Any]] = {}

        def stage(p: int) -> Any:
            maps[p] = stage_piece_task.options(num_returns=1 + 2 * buckets).remote(files, pieces[p], fields, limits, p, staged[p], buckets)
            return maps[p][0]

        metas = ctx.gather({p: (lambda p=p: stage(p)) for p in range(n_pieces)}, control)
        control.report(n_pieces, n_pieces)
        found = ctx.gather({b: (lambda b=b: first_ids_task.remote(*[maps[p][1 + b] for p in range(n_pieces)])) for b in range(buckets)}, control)
        bad = [(p, b["seq"], b["source"], b["error"]) for p in range(n_pieces) for b in metas[p]["bad"]]
        dropped_rows: dict[int, list[int]] = {}
        for f in found.values():
            bad.extend(zip(f["piece"].tolist(), f["seq"].tolist(), f["source"], f["error"]))
            for p, r in zip(f["piece"].tolist(), f["row"].tolist()):
                dropped_rows.setdefault(p, []).append(r)
        dropped = {p: np.sort(np.asarray(r, dtype=np.int64)) for p, r in dropped_rows.items()}
        bad.sort(key=lambda b: (b[0], b[1]))  # input order
        kept = np.asarray([metas[p]["documents"] - len(dropped.get(p, ())) for p in range(n_pieces)], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
        dropped_ref = ray.put(dropped)  # the rows the bad records drop: as many as those records
        reduces: dict[int, list[Any]] = {}

        def first(b: int) -> Any:
            refs = first_keys_task.options(num_returns=n_pieces).remote(
                dropped_ref, offsets, keys_dir / f"part-{b:05d}.npz", *[maps[p][1 + buckets + b] for p in range(n_pieces)]
            )
            reduces[b] = refs
            return refs[0]

        ctx.gather({b: (lambda b=b: first(b)) for b in range(buckets)}, control)
        none = np.zeros(0, dtype=np.int64)
        counts = ctx.gather(
            {
                p: (lambda p=p: finish_piece_task.remote(staged[p], dropped.get(p, none), docs_dir / PART_FILE.format(p), *[reduces[b][p] for b in range(buckets)]))
                for p in range(n_pieces)
            },
            control,
        )
        remove(staging)
        statuses: dict[str, int] = {}
        for c in counts.values():
            for k, v in c.items():
                statuses[k] = statuses.get(k, 0) + v
        ctx.store.save_json("read", "bad", [{"source": s, "error": e} for _, _, s, e in bad])
        control.report(int(offsets[-1]), int(offsets[-1]))
        return {"documents": int(offsets[-1]), "bad": len(bad), **statuses, "pieces": n_pieces, "written_by": "tasks"}

    def _read_stream(self, ctx: RunContext, control: StageControl, tasks: list[ReadTask]) -> dict[str, int]:
        """Stream the inputs through Ray Data (read tasks of ``read.chunk_mb``, parsed, cleaned,
        filtered and keyed where they run; a single task is parsed here), in input order, into ``docs.parquet`` a batch at a time:
        the driver keeps one id and one exact-duplicate key per document, never the texts.
        Returns the document counts (by status, and bad records) for the stage's record."""
        rc, files = ctx.cfg.read, self.files
        schema = pa.schema([(c, pa.string()) for c in PREPARED_COLUMNS])

        def parse(batch: dict[str, np.ndarray]) -> Any:
            cols: dict[str, list[str]] = {c: [] for c in PREPARED_COLUMNS}
            for fi, start, end, line in zip(batch["file_index"], batch["start"], batch["end"], batch["first_line"]):
                task = ReadTask(int(fi), int(start), int(end), int(line))
                part = prepare_records(parse_task(files[task.file_index], task, rc.text_field, rc.id_field), rc.min_chars, rc.max_chars)
                for c in PREPARED_COLUMNS:
                    cols[c].extend(part[c])
            return pa.table(cols, schema=schema)

        items = [{"file_index": t.file_index, "start": t.start, "end": t.end, "first_line": t.first_line} for t in tasks]
        builder = CorpusBuilder()
        records = 0
        control.report(0, 0)
        data_ctx = ray.data.DataContext.get_current()
        try:
            if len(items) == 1:
                # one read task (an input under read.chunk_mb): parsed here, without a Ray Data job's start-up
                table = parse({k: np.asarray([v]) for k, v in items[0].items()})
                batches: Any = (table.slice(a, DOC_BATCH) for a in range(0, table.num_rows, DOC_BATCH))
            else:
                logging.getLogger("ray.data").setLevel(logging.WARNING)  # our own progress replaces its per-dataset lines
                data_ctx.enable_progress_bars = False
                data_ctx.print_on_execution_start = False
                data_ctx.execution_options.preserve_order = True  # documents keep input order: ids, "first" and row numbers are stable
                ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(parse, batch_size=1, batch_format="numpy")
                batches = ds.iter_batches(batch_size=DOC_BATCH, batch_format="pyarrow")
            with ctx.docs().writer() as write:
                for batch in batches:
                    write(builder.add({c: batch.column(c).to_pylist() for c in PREPARED_COLUMNS}))
                    records += batch.num_rows
                    control.report(records, 0)
                    control.check()
        finally:
            data_ctx.execution_options.preserve_order = False
        ctx.store.save_json("read", "bad", builder.bad)
        # each text's exact-duplicate key and its first document: what an update checks new texts against
        self._save_keys(ctx, builder.first_rows())
        control.report(records, records)
        return {"documents": builder.n, "bad": len(builder.bad), **builder.counts}


class UpdateRead(Read):
    """An update's form of the stage: the new inputs read as a run reads them, then set against
    the corpus (``engine.update.NewDocuments``: already present, id conflicts, exact duplicates of
    existing documents). ``docs.parquet`` then holds the new documents only, ``exact_of`` as rows
    of the whole corpus."""

    kept_by_updates = True  # its documents and exact-duplicate keys

    def fingerprint(self, ctx: RunContext) -> str:
        fp = fingerprint("update-read", super().fingerprint(ctx), ctx.grown.token)
        if self.vector_input:
            raise RunError("an update takes texts: a run of precomputed vectors grows by a new run of all of its vectors")
        return fp

    def run(self, ctx: RunContext) -> dict[str, Any]:
        record = super().run(ctx)
        grown = ctx.grown
        control = ctx.control("read")
        store = ctx.docs()
        corpus = store.load_corpus(ctx.store.load_json("read", "bad"))
        # the corpus's rows and keys of the new documents' ids and texts only: no table of the corpus
        where = rows_by_id(grown.corpus.ids, corpus.ids)
        recurring = sorted(set(where.values()))
        old_texts: dict[int, str] = {}
        for sel, texts in grown.docs.iter_texts(np.asarray(recurring, dtype=np.int64)) if recurring else ():
            old_texts.update(zip(sel.tolist(), texts))
        new_keys = set(load_keys(self.keys_path(ctx.store)))  # the new texts' keys, as the read stored them
        matcher = NewDocuments(where, old_texts, grown.corpus.sources, existing_keys(grown, new_keys), len(grown.corpus.ids))
        bad = list(corpus.bad)
        with store.writer() as write:  # docs.parquet again, a batch at a time (the writer renames at the end)
            for sel, texts in store.iter_texts(np.arange(len(corpus.ids), dtype=np.int64)):
                cols: dict[str, list[Any]] = {"id": [], "source": [], "text": [], "status": [], "exact_of": [], "length": []}
                for i, text in zip(sel.tolist(), texts):
                    got = matcher.match(corpus.ids[i], text, corpus.status[i])
                    if got.bad is not None:
                        bad.append({"source": corpus.sources[i], "error": got.bad})
                    if got.keep:
                        for c, v in zip(cols, (corpus.ids[i], corpus.sources[i], text, got.status, got.exact_of, len(text))):
                            cols[c].append(v)
                write(cols)
                control.check()
        ctx.store.save_json("read", "bad", bad)
        self._save_keys(ctx, matcher.new_keys)  # its new documents' only
        return {"device": "cpu", "read": record.get("documents", 0), "documents": matcher.kept, "bad": len(bad), **matcher.statuses, **matcher.counts}

    def load(self, ctx: RunContext) -> Documents:
        """The new documents (none at all is the driver's to report: nothing new)."""
        return Documents(self.files, self.vector_input, ctx.docs().load_corpus(ctx.store.load_json("read", "bad")))
