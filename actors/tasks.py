"""Ray tasks that wrap ``engine`` kernels."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import ray

from theme_engine.engine.candidates import CapResult, Screened, cap_bucket, screen_bucket, word_parts_reader
from theme_engine.engine.corpus import InputFile, ReadTask
from theme_engine.engine.device import fallback_reason, resolve_for_stage, run_with_fallback
from theme_engine.engine.docstore import store_vector_piece
from theme_engine.engine.index import build_run_index
from theme_engine.engine.labels import Analyzer, TermCounts, ThemeKeywords, count_batches, keywords_from_counts, merge_counts
from theme_engine.engine.docstore import DocChain, DocStore, texts_at
from theme_engine.engine.lexical import WordIndex
from theme_engine.engine.minhash import MinHashParams, band_keys, signatures
from theme_engine.engine.output import write_document_part
from theme_engine.engine.partition import partition_centroids
from theme_engine.engine.readparts import finish_piece, first_ids, first_keys, stage_piece
from theme_engine.engine.select_k import CandidateScore, DrawResult, fit_draw, score_candidate
from theme_engine.engine.sources import upload_files
from theme_engine.engine.update import NewGroup, search_new_groups, save_top_part
from theme_engine.engine.vectors import check_file


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)  # then cluster.gather backs off
def score_k_task(sample: np.ndarray, k: int, repeats: int, seed: int, device: str = "auto") -> CandidateScore:
    """One candidate k of the silhouette criterion (candidates run in parallel as separate tasks).
    On a GPU the driver assigns, it runs there; the score says which device served (``device``)
    and, when a GPU was asked for but could not serve, why (``fallback``)."""
    dev, reason = resolve_for_stage("select_k", device, ray.get_gpu_ids())
    score, used = run_with_fallback(
        "select_k", dev, lambda d, rows: score_candidate(sample, k, repeats, seed, d, batch_rows=rows), batch_rows=16_384
    )
    score.device = used.name
    score.fallback = fallback_reason(dev, used, reason)
    return score


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def fit_draw_task(sample: np.ndarray, k_top: int, draw: int, seed: int, fraction: float, device: str = "auto") -> DrawResult:
    """One draw of the modularity criterion (draws run in parallel): k-means with ``k_top``
    themes on a subsample and Ward's merges of its centroids, on the GPU the driver assigns."""
    dev, reason = resolve_for_stage("select_k", device, ray.get_gpu_ids())
    result, used = run_with_fallback(
        "select_k", dev, lambda d, rows: fit_draw(sample, k_top, draw, seed, d, batch_rows=rows, fraction=fraction), batch_rows=16_384
    )
    result.device = used.name
    result.fallback = fallback_reason(dev, used, reason)
    return result


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def stored_pairs_task(fn: Callable[..., Any], store: DocStore | DocChain, rows_a: np.ndarray, rows_b: np.ndarray, *args: Any) -> Any:
    """``fn(texts_a, texts_b, *args)`` (``engine.lexical.light_edits`` and ``pair_evidence``,
    ``engine.minhash.jaccard``, ``engine.fuzzy.long_pair_jaccard``) on pairs of stored documents,
    their texts read where the task runs."""
    return fn(texts_at(store, rows_a), texts_at(store, rows_b), *args)


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def minhash_keys_task(store: DocStore | DocChain, rows: np.ndarray, params: MinHashParams, device: str = "auto") -> tuple[np.ndarray, str, str | None]:
    """MinHash band keys (``engine.minhash``) of the stored documents ``rows`` (sorted), their
    texts read where the task runs, on the GPU the driver assigns when there is one (CuPy), else
    the CPU: the keys, the device that served, and why not the GPU asked for."""
    texts = texts_at(store, rows)
    dev, reason = resolve_for_stage("dedup", device, ray.get_gpu_ids())
    cells = 1 << 22 if dev.kind == "cuda" else 1 << 17  # the signature kernel's working matrix
    sig, used = run_with_fallback("dedup", dev, lambda d, rows: signatures(texts, params, d.xp, max_cells=rows), batch_rows=cells)
    return band_keys(sig, params), used.name, fallback_reason(dev, used, reason)


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def read_vectors_task(
    file: InputFile, task: ReadTask, fields: tuple[str, str, str | None], prefix_ids: bool, docs_part: Path, vectors_part: Path
) -> dict[str, Any]:
    """One piece of a precomputed-vector input read and stored by the worker that reads it
    (``engine.docstore.store_vector_piece``): only counts and bad records come back."""
    return store_vector_piece(file, task, fields, prefix_ids, docs_part, vectors_part)


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def write_part_task(docs: Any, columns: Path, targets: Path, a: int, b: int, documents_out: Path, duplicates_out: Path) -> dict[str, int]:
    """One part of the partitioned outputs, written where it runs (``engine.output.write_document_part``)."""
    return write_document_part(docs, columns, targets, a, b, documents_out, duplicates_out)


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def build_index_task(*args: Any) -> int:
    """A run's search index built where this task runs, from the stored documents, vectors and
    stage results (``engine.index.build_run_index``): only the count of points comes back."""
    return build_run_index(*args)


@ray.remote(max_retries=1, retry_exceptions=False)
def layout_task(vectors: Any, sample_size: int, seed: int, threads: int) -> Any:
    """The 2-D map fitted and every row placed where this task runs (``engine.layout.fit_layout``
    over the stored vectors, ``VectorParts``, which it reads itself): the map comes back, two
    numbers a document."""
    from theme_engine.engine.layout import fit_layout  # noqa: PLC0415  (openTSNE: loaded by the task that fits)

    return fit_layout(vectors, sample_size=sample_size, seed=seed, threads=threads)


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def check_vectors_task(path: Path) -> str | None:
    """What is wrong with one stored part of vectors (``engine.vectors.check_file``), or None."""
    return check_file(path)


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def word_part_task(store: DocStore | DocChain, a: int, b: int, first: int, char_words: int | None, folder: Path) -> int:
    """The word index (``engine.lexical.WordIndex``) of the embedded documents (status ``ok``)
    among the stored documents ``[a, b)``, which are the embedded documents ``first, first + 1,
    ...``: read and saved under ``folder`` by the worker that reads them. Returns their count."""
    t = store.read_rows(a, b, ["text", "status"])
    ok = np.asarray(t.column("status").to_numpy(zero_copy_only=False) == "ok")
    texts = t.column("text").filter(pa.array(ok)).to_pylist()
    WordIndex.from_texts(np.arange(first, first + len(texts), dtype=np.int64), texts, char_words).save(folder)
    return len(texts)


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def cap_bucket_task(bucket: int, buckets: int, threshold: float, neighbors: int, top_path: str, *parts: Any) -> tuple[Any, ...]:
    """``engine.candidates.cap_bucket`` on one bucket's share of the search tasks' pairs (object
    refs Ray resolves here; called with ``num_returns=buckets + 1``): the bucket's documents' best
    candidate cosines saved as a part at ``top_path`` (what an update's cap counts; they never
    reach the driver), then the number of those documents and the kept pairs for each owner
    bucket, each its own object."""
    got: CapResult = cap_bucket(list(parts), bucket, buckets, threshold, neighbors)
    save_top_part(Path(top_path), got.docs, got.top)
    return (int(got.docs.size), *got.outgoing)


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def screen_bucket_task(
    threshold: float, words: list[tuple[str, int, int]] | None, max_edits: int, min_words: int, *parts: Any
) -> Screened:
    """``engine.candidates.screen_bucket`` on one owner bucket's pairs, the word index read from
    the parts ``word_part_task`` saved (memory-mapped: the pages of the documents screened)."""
    return screen_bucket(list(parts), threshold, word_parts_reader(words) if words is not None else None, max_edits, min_words)


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def count_terms_task(
    store: DocStore | DocChain, rows: np.ndarray, themes: np.ndarray, n_themes: int, stop_words: frozenset[str], ngram_max: int
) -> tuple[int, TermCounts]:
    """The label stage's map: the term counts per theme (``engine.labels.count_batches``) of the
    stored documents ``rows`` (sorted), the ``i``-th in theme ``themes[i]``, read by the worker
    that counts them. Called with ``num_returns=2``: the documents counted, then the counts, which
    stay where they were made until the reduce takes them."""
    return len(rows), count_batches(store.iter_texts(rows), themes, n_themes, Analyzer(stop_words, ngram_max))


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def keywords_task(top_n: int, groups: list[list[int]], *parts: TermCounts) -> ThemeKeywords:
    """The label stage's reduce: the map's counts (object refs Ray resolves here) merged, and the
    themes' and groups' keywords from them (``engine.labels.keywords_from_counts``)."""
    return keywords_from_counts(merge_counts(list(parts)), top_n, groups=groups)


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def stage_piece_task(files: list[InputFile], tasks: list[ReadTask], fields: tuple[str, str | None], limits: tuple[int, int], piece: int, staged: Path, buckets: int) -> tuple[Any, ...]:
    """One piece of the text inputs parsed and staged where it runs (``engine.readparts.stage_piece``):
    its counts and bad records, then its ids and its keys by bucket (``1 + 2 * buckets`` returns)."""
    meta, ids, keys = stage_piece(files, tasks, fields, limits, piece, staged, buckets)
    return (meta, *ids, *keys)


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def first_ids_task(*tables: pa.Table) -> dict[str, Any]:
    """One bucket of ids: the rows an earlier row's id makes bad records (``engine.readparts.first_ids``)."""
    return first_ids(list(tables))


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def first_keys_task(dropped: dict[int, np.ndarray], offsets: np.ndarray, keys_part: Path, *tables: pa.Table) -> tuple[pa.Table, ...]:
    """One bucket of keys: its keys' first documents saved, and each piece's exact duplicates (one
    return per piece; ``engine.readparts.first_keys``)."""
    return tuple(first_keys(list(tables), dropped, offsets, keys_part))


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def finish_piece_task(staged: Path, dropped: np.ndarray, part: Path, *exact: pa.Table) -> dict[str, int]:
    """One staged piece as its part of the documents (``engine.readparts.finish_piece``)."""
    return finish_piece(staged, dropped, list(exact), part)


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def partition_centroids_task(n_partitions: int, seed: int, *sample: np.ndarray) -> np.ndarray:
    """The duplicate search's partition centroids (``engine.partition.partition_centroids``) from a
    sample handed over by the shards in row order: neither the sample nor the centroids pass
    through the driver."""
    return partition_centroids(np.concatenate(sample), n_partitions, seed=seed)


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def upload_files_task(folder: Path, url: str, names: list[str]) -> int:
    """Files of a result's local copy uploaded under ``url`` where the task runs
    (``engine.sources.upload_files``): a published dataset's parts do not pass through the driver."""
    return upload_files(folder, url, names)


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
def new_groups_task(vectors: Callable[[np.ndarray], np.ndarray], threshold: float, batch_rows: int, cap: Any, *groups: NewGroup) -> tuple[Any, ...]:
    """An update's search of some partitions (``engine.update.search_new_groups``): the existing
    rows routed there read where the task runs (``vectors``: the stored parts), not by the driver."""
    return search_new_groups(list(groups), vectors, threshold, batch_rows=batch_rows, cap=cap)

