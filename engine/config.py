"""Run configuration: one pydantic model per stage, nested in one :class:`RunConfig`.

Every setting can come from (highest priority first) a CLI flag, a ``THEME_ENGINE_*``
environment variable (nested with ``__``, e.g. ``THEME_ENGINE_KMEANS__K=12``), a TOML
file (``--config``; sections named like the stages, e.g. ``[kmeans]``), or the default.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ReadConfig(_Section):
    """How documents are read and filtered before anything is embedded."""

    text_field: str = Field("text", description="field holding the text in JSONL, CSV and Parquet inputs")
    id_field: str | None = Field(
        None, description="field holding the document id; absent: ids are '<file>:<line>' (stable across runs)"
    )
    vector_field: str = Field("vector", description="list/array column of precomputed vectors in Parquet inputs")
    min_chars: int = Field(10, ge=0, description="documents shorter than this (after whitespace folding) are filtered")
    max_chars: int = Field(100_000, ge=1, description="documents longer than this are filtered")
    max_bad_examples: int = Field(20, ge=0, description="how many bad records the manifest names")
    chunk_mb: int = Field(
        64, ge=1, description="MiB of input per read task: larger JSONL/text/Parquet files are split, never read whole"
    )

    @model_validator(mode="after")
    def _limits(self) -> "ReadConfig":
        if self.max_chars <= self.min_chars:
            raise ValueError(f"max_chars ({self.max_chars}) must be greater than min_chars ({self.min_chars})")
        return self


class EmbedConfig(_Section):
    """The sentence-embedding model and its actor pool."""

    model: str = Field(
        "all-MiniLM-L6-v2-int8",
        description=(
            "embedding model: the bundled all-MiniLM-L6-v2-int8 (installed from a registry package, loaded offline) or any "
            "FastEmbed text-embedding model by name (theme-engine models lists them; downloaded into the cache dir on first use)"
        ),
    )
    model_path: Path | None = Field(
        None, description="a local folder with an ONNX sentence-embedding model and its tokenizer files (instead of model)"
    )
    pooling: Literal["mean", "cls"] | None = Field(
        None, description="how a model_path model pools token vectors; absent: from its 1_Pooling/config.json"
    )
    prefix: str = Field("", description="text put before every document when embedding (e.g. 'passage: ' for E5 models)")
    batch_size: int = Field(32, ge=1, le=8192, description="most texts per model call")
    max_batch_tokens: int = Field(
        4096, ge=256, description="most (padded) tokens per model call; bounds onnxruntime's memory on long texts"
    )
    long: Literal["windows", "truncate"] = Field(
        "windows",
        description=(
            "a text longer than the model's window: windows (its token windows embedded and pooled into one vector, "
            "weighted by their tokens) or truncate (the model reads its opening only)"
        ),
    )
    window_overlap: int = Field(32, ge=0, le=64, description="tokens two consecutive windows of a long text share")
    max_windows: int = Field(
        32, ge=1, le=4096, description="most windows per text: beyond, this many spread evenly over the text (the manifest counts them)"
    )
    boilerplate_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description=(
            "word 8-grams held by at least this share of a sample of the long texts are boilerplate (banners, licences, "
            "templates), left out of what the model reads of a long text; 0: off"
        ),
    )
    boilerplate_min_docs: int = Field(20, ge=2, description="least long texts of the sample that must hold an 8-gram for it to be boilerplate")
    actors: int | None = Field(None, ge=1, description="embedding actors; absent: from the CPUs the cluster has")
    threads_per_actor: int | None = Field(None, ge=1, description="onnxruntime threads per actor; absent: automatic")
    workers_from: int = Field(
        100_000,
        ge=0,
        description=(
            "documents to embed from which the embedding actors read their texts where they are stored, ask the cache and "
            "save the vectors as parts themselves: no text and no vector passes through the driver (the same vectors; "
            "below it the driver streams them to the actors, which starts sooner)"
        ),
    )

    @field_validator("model_path")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # kept in the manifest: an update or a search from another folder must find the same model
        return None if value is None else Path(value).expanduser().resolve()

    @model_validator(mode="after")
    def _one_model(self) -> "EmbedConfig":
        if self.model_path is not None and self.model != "all-MiniLM-L6-v2-int8":
            raise ValueError(f"give embed.model ({self.model}) or embed.model_path ({self.model_path}), not both")
        if self.pooling is not None and self.model_path is None:
            raise ValueError("embed.pooling applies to a local model folder (embed.model_path) only")
        return self


class CacheConfig(_Section):
    """The embedding cache (Qdrant)."""

    enabled: bool = Field(True, description="look up and store embeddings in the cache")
    dir: Path | None = Field(
        None, description="local cache directory (Qdrant Edge); absent: a per-user cache dir (~/.cache/theme-engine)"
    )
    qdrant_url: str | None = Field(None, description="a Qdrant server to use instead of the local cache")
    collection: str = Field("theme_engine_embeddings", description="collection name on a Qdrant server")


class SelectKConfig(_Section):
    """How the number of themes is chosen when --k is not given."""

    criterion: Literal["modularity", "silhouette"] = Field(
        "modularity",
        description=(
            "modularity: of the k-means partition on the sample's k-NN graph (has an optimum on sentence embeddings); "
            "silhouette: the earlier rule, kept for comparison"
        ),
    )
    k_min: int = Field(2, ge=2, description="smallest candidate k")
    k_max: int | None = Field(None, ge=2, description="largest candidate k; absent: about sqrt(n/2), at most 500")
    candidates: int = Field(12, ge=2, le=64, description="how many candidate k values (geometric grid)")
    sample_size: int = Field(
        4000, ge=100, description="documents sampled for scoring (raised to 20 per theme of the largest candidate, at most 20,000)"
    )
    repeats: int = Field(4, ge=1, le=20, description="independent sample draws and seeds per candidate")
    neighbors: int = Field(15, ge=2, le=200, description="nearest neighbours per document in the graph modularity is measured on")
    min_gain: float = Field(
        0.05,
        ge=0,
        le=1,
        description="modularity the chosen k must gain over a reference without themes; less: no structure, the smallest k",
    )

    @model_validator(mode="after")
    def _range(self) -> "SelectKConfig":
        if self.k_max is not None and self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) must be at least k_min ({self.k_min})")
        return self


class KMeansConfig(_Section):
    """Lloyd's k-means with k-means++ initialisation."""

    k: int | None = Field(None, ge=1, description="number of themes; absent: chosen by select_k")
    max_iter: int = Field(100, ge=1, description="maximum Lloyd iterations")
    tol: float = Field(1e-4, ge=0, description="stop when the centroid shift is below tol x mean data variance")
    init_sample_size: int | None = Field(
        None,
        ge=1,
        description="points k-means++ seeds from (a uniform sample across shards); absent: 32 per centroid, at least 10,000",
    )
    fit_fraction: float = Field(
        1.0, gt=0, le=1, description="fit on this uniform fraction of the documents, then assign all of them"
    )
    batch_rows: int = Field(16_384, ge=256, description="rows per distance block (bounds memory)")
    checkpoint_every: int = Field(5, ge=1, description="persist centroids every this many iterations")


class DedupConfig(_Section):
    """Near-duplicate detection over the embeddings."""

    threshold: float = Field(
        0.9, gt=0, le=1, description="cosine similarity at or above which two documents are near-duplicates"
    )
    keep: Literal["first", "longest", "central"] = Field(
        "first",
        description="which document of a group is kept: first in input order, longest text, or nearest its theme centroid",
    )
    grouping: Literal["ranked", "components"] = Field(
        "ranked",
        description=(
            "ranked: walk documents in keep order, each is a duplicate of the best already-kept document it matches "
            "(no chains); components: union-find connected components, one kept per component"
        ),
    )
    method: Literal["partitioned", "all_pairs"] = Field(
        "partitioned",
        description=(
            "partitioned: rows routed to nearest-centroid partitions (plus the partitions whose boundary is within "
            "the margin), exact search inside each; all_pairs: every shard against every shard (O(n^2))"
        ),
    )
    partitions: int | None = Field(None, ge=1, description="partitions; absent: max(sqrt(n), min(1000, n/100))")
    spill: int | None = Field(
        None, ge=0, description="most extra partitions a row visits; absent: no cap (exact with the default margin)"
    )
    margin: float | None = Field(
        None, ge=0, description="boundary distance within which a row visits a partition; absent: sqrt(2-2t)/2 (exact)"
    )
    batch_rows: int = Field(4096, ge=64, description="query rows per FAISS range search (bounds memory)")
    lexical: bool = Field(
        True,
        description=(
            "also a near-duplicate: a pair with cosine >= candidate_threshold whose normalised texts are light edits "
            "of each other (typos, dropped, inserted or swapped words; no word replaced by another). "
            "Off: the cosine rule alone"
        ),
    )
    candidate_threshold: float = Field(
        0.6,
        gt=0,
        le=1,
        description=(
            "cosine at or above which a pair below threshold is compared as text (found where its rows meet in a "
            "partition: the default margin is safe for threshold; set margin to sqrt(2-2c)/2 for every candidate)"
        ),
    )
    lexical_max_edits: int = Field(
        3, ge=0, le=15, description="most light edits (typo, word swap, join/split, word drop/insertion) between the texts"
    )
    lexical_min_words: int = Field(
        8,
        ge=1,
        description=(
            "words may be dropped or inserted only between texts of at least this many words (the shorter one); "
            "typos, swaps, joins and splits at any length"
        ),
    )
    lexical_neighbors: int = Field(
        16, ge=1, description="candidates below threshold per document: its most similar ones (bounds the work on dense corpora)"
    )
    tasks_from: int = Field(
        100_000,
        ge=0,
        description=(
            "documents from which the partitioned search's candidate pairs are capped and screened by Ray tasks where they "
            "are found, and an update's new rows are searched against the existing ones by Ray tasks that read the stored "
            "vectors, not in the driver (the same result; below it the driver's work is quicker than the tasks' start)"
        ),
    )
    text_threshold: float = Field(
        0.6,
        gt=0,
        le=1,
        description=(
            "a pair with a text longer than the model's window is a duplicate only when the Jaccard of the two whole "
            "texts' shingles reaches this (a shared opening is not evidence); also what confirms a fuzzy candidate"
        ),
    )
    fuzzy: bool = Field(
        True, description="MinHash LSH over the whole texts longer than the model's window: copies under another header or footer"
    )
    shingle_chars: int = Field(24, ge=3, le=200, description="characters of a shingle (of the folded text)")
    minhash_bands: int = Field(
        52, ge=1, le=512, description="LSH bands: with minhash_rows, a pair of Jaccard J is a candidate with probability 1-(1-J^rows)^bands"
    )
    minhash_rows: int = Field(5, ge=1, le=64, description="MinHash entries per band (NeMo Curator's web-text scheme: 20 bands of 13)")


class LabelConfig(_Section):
    """Theme labels."""

    keywords: int = Field(10, ge=1, le=100, description="c-TF-IDF keywords per theme")
    label_words: int = Field(3, ge=1, le=10, description="keywords joined into the label")
    representatives: int = Field(5, ge=1, le=100, description="documents nearest the centroid listed per theme")
    merge_threshold: float = Field(
        0.95, gt=0, le=1.0001, description="themes whose centroids have cosine at or above this are merged"
    )
    ngram_max: int = Field(2, ge=1, le=3, description="longest keyword n-gram")
    max_documents: int = Field(
        200_000,
        ge=1000,
        description="most kept documents whose texts feed the keywords (a seeded sample, every theme represented)",
    )
    tasks_from: int = Field(
        100_000,
        ge=0,
        description=(
            "sampled documents from which Ray tasks count the keywords' terms where the texts are (a map over blocks, "
            "one reduce), not the driver (the same result; below it the driver's work is quicker than the tasks' start)"
        ),
    )
    stop_words: str | list[str] = Field(
        "auto",
        description=(
            "words left out of keywords: auto (the language whose stop words the texts use most, of the stop-words "
            "package's ~30; none when no language fits), a language name or code (english, de, ...), none, or a list of words"
        ),
    )

    @field_validator("stop_words")
    @classmethod
    def _stop_words(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str) and value.strip().lower() not in ("auto", "none"):
            from .labels import stop_words_for

            stop_words_for(value)  # a ValueError naming the known languages
        return value


class LayoutConfig(_Section):
    """The 2-D map of the documents (``x``, ``y`` in documents.parquet, the report's map)."""

    enabled: bool = Field(True, description="compute the map; off: no x/y columns and a report without a map")
    sample_size: int = Field(
        30_000, ge=100, description="documents the layout is fitted on (a seeded sample); the rest are placed by their nearest"
    )
    task_from: int = Field(
        100_000, ge=0, description="documents from which the map is fitted and placed by a Ray task on a worker rather than in the driver"
    )


class OutputConfig(_Section):
    """How ``documents.parquet`` and ``duplicates.parquet`` are written."""

    form: Literal["auto", "file", "parts"] = Field(
        "auto",
        description=(
            "file: one Parquet file each, written by the driver; parts: a folder of part-N.parquet files each (one dataset "
            "to pandas, pyarrow, Ray Data, DuckDB and Spark), written by Ray tasks from the stored documents; "
            "auto: parts from output.parts_from documents on"
        ),
    )
    parts_from: int = Field(1_000_000, ge=1, description="documents from which output.form = auto writes parts")
    part_rows: int = Field(500_000, ge=1, description="documents per part where the stored documents are one file")


class IndexConfig(_Section):
    """The run's vectors in Qdrant, for ``theme-engine search`` and ``Result.search``."""

    enabled: bool = Field(True, description="index the vectors (embedded Qdrant Edge in OUT, or the --qdrant-url server)")
    hnsw_min_points: int = Field(
        500_000,
        ge=0,
        description=(
            "Qdrant Edge: below this many points the index is exact (every query scans all vectors; no HNSW graph to "
            "build), at or above it an HNSW graph; 0: always HNSW"
        ),
    )
    task_from: int = Field(
        100_000, ge=0, description="documents from which the index is built by a Ray task beside the data rather than in the driver"
    )


class UpdateConfig(_Section):
    """``theme-engine update``: growing a finished run by new documents."""

    refit: Literal["auto", "never", "always"] = Field(
        "auto",
        description=(
            "never: new documents join their nearest theme; auto: new themes where the far new documents form one as "
            "tight as the existing themes; always: that, then the centroids refitted over the whole corpus "
            "(existing documents may change theme)"
        ),
    )
    far_quantile: float = Field(
        0.95, gt=0.5, lt=1, description="a new document is far when beyond this quantile of its nearest theme's distances"
    )
    drift_share: float = Field(
        0.10, gt=0, lt=1, description="share of far new documents above which the update reports drift (expected: 1 - far_quantile)"
    )
    min_theme_size: int = Field(10, ge=2, description="fewest documents of a new theme")
    max_new_themes: int = Field(16, ge=1, le=64, description="most new themes one update proposes")


class ReportConfig(_Section):
    """report.html: the map, the themes, their hierarchy, the near-duplicates and the run."""

    enabled: bool = Field(True, description="write report.html at the end of a run")
    max_points: int = Field(50_000, ge=100, le=200_000, description="most documents drawn on the map (a seeded sample)")
    excerpt_chars: int = Field(300, ge=40, le=5000, description="characters of each document shown in the report")


class RayConfig(_Section):
    """Where the work runs."""

    address: str | None = Field(None, description="Ray address (ray://… or host:port); absent: start a local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray; absent: all")
    object_store_memory: int | None = Field(
        None, ge=78_643_200, description="bytes of object store for a local Ray; absent: 30% of memory, at most 2 GiB"
    )
    temp_dir: Path | None = Field(None, description="Ray's temp dir for a local Ray")
    shards: int | None = Field(
        None, ge=1, description="shard actors holding the vectors; absent: one per CPU of the cluster, ~2,000 rows at least each"
    )
    max_embed_actors: int | None = Field(
        None,
        ge=1,
        description=(
            "most embedding actors the pool may grow to as an autoscaling cluster adds nodes; "
            "absent: from the CPUs (or GPUs) the cluster has when the stage starts"
        ),
    )
    scale_wait_s: float = Field(
        300,
        ge=0,
        description=(
            "seconds to wait for the autoscaler to start a GPU node when --device cuda finds none; "
            "then the run goes on with CPU (device auto never waits)"
        ),
    )
    task_attempts: int = Field(5, ge=1, description="submissions of a Ray task lost to its worker or node before the run fails")
    retry_backoff_s: float = Field(
        1.0, ge=0, description="seconds before the first resubmission of a lost task; doubled for each further one"
    )


class RunConfig(BaseSettings):
    """The whole run, passed whole to the driver."""

    model_config = SettingsConfigDict(
        env_prefix="THEME_ENGINE_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    # NoDecode: an env var is comma separated (split by the validator below), not JSON
    inputs: Annotated[list[str], NoDecode] = Field(default_factory=list, description="input files or directories: local paths, or URLs (s3://, gs://)")
    out: Path | None = Field(None, description="output directory")
    publish_to: str | None = Field(
        None,
        description=(
            "the object-store URL the result is published to (given as --out s3://… or gs://…); the run works in a "
            "local copy under the cache folder (out), which its updates and re-runs reuse"
        ),
    )
    seed: int = Field(0, ge=0, lt=2**32, description="random seed (sampling, initialisation), 0 .. 2**32 - 1")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="compute device for the kernels")
    force: bool = Field(False, description="write into a non-empty --out that is not a theme-engine output")
    read: ReadConfig = Field(default_factory=ReadConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    select_k: SelectKConfig = Field(default_factory=SelectKConfig)
    kmeans: KMeansConfig = Field(default_factory=KMeansConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    label: LabelConfig = Field(default_factory=LabelConfig)
    layout: LayoutConfig = Field(default_factory=LayoutConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    update: UpdateConfig = Field(default_factory=UpdateConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="before")
    @classmethod
    def _out_in_a_store(cls, data: Any) -> Any:
        """``out`` as an object-store URL: the result is published there (``publish_to``) and the
        run works in its local copy, ``CACHE/outputs/...`` (``engine.sources.working_copy``)."""
        if not isinstance(data, dict) or data.get("out") is None:
            return data
        from .sources import is_url, working_copy

        if not is_url(data["out"]):
            return data
        cache = data.get("cache") or {}
        root = cache.get("dir") if isinstance(cache, dict) else getattr(cache, "dir", None)
        url = str(data["out"]).rstrip("/")
        return {**data, "publish_to": url, "out": str(working_copy(url, root))}

    @field_validator("inputs", mode="before")
    @classmethod
    def _split_inputs(cls, v: Any) -> Any:
        if isinstance(v, str):  # from an environment variable: comma separated
            return [p for p in v.split(",") if p]
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)


SECRET_PARAM = re.compile(r"(key|token|secret|pass|pwd|auth|sig|credential|session)", re.IGNORECASE)


def redact_url(url: str | None) -> str | None:
    """``url`` with every secret it may carry replaced by ``***``, for logs, errors and the manifest:
    the password of its user part (``http://user:secret@host``), a user part alone (``https://TOKEN@host``:
    tokens travel there), and the values of query parameters whose names say key, token, secret,
    password, auth, signature, credential or session (``?api_key=…``, ``&X-Amz-Signature=…``). A URL
    that cannot be parsed keeps its scheme only."""
    if not url:
        return url
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        scheme = url.split("://", 1)[0] if "://" in url else ""
        return f"{scheme}://***" if scheme.isalnum() else "***"
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or ""
        host = (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")
        user = f"{parts.username}:***" if parts.password is not None else "***"
        parts = parts._replace(netloc=f"{user}@{host}")
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(SECRET_PARAM.search(k) for k, _ in pairs):
            query = urlencode([(k, "***" if SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*")
            parts = parts._replace(query=query)
    return urlunsplit(parts)


def public_config(cfg: "RunConfig") -> dict[str, Any]:
    """The resolved config as JSON data, with credentials redacted (what the manifest records)."""
    data = json.loads(cfg.model_dump_json())
    data["cache"]["qdrant_url"] = redact_url(data["cache"].get("qdrant_url"))
    data["ray"]["address"] = redact_url(data["ray"].get("address"))
    return data


class ConfigError(ValueError):
    """A configuration the user can fix: the message says what and where."""


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _env_values() -> dict[str, Any]:
    """THEME_ENGINE_* variables as a nested dict (validated with the rest)."""

    class _EnvOnly(RunConfig):
        model_config = SettingsConfigDict(
            env_prefix="THEME_ENGINE_", env_nested_delimiter="__", extra="forbid", validate_default=False
        )

    try:
        return _EnvOnly().model_dump(exclude_unset=True)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, "environment variable ", env=True)) from None
    except SettingsError as exc:  # e.g. a nested section given as malformed JSON
        raise ConfigError(f"invalid settings in THEME_ENGINE_* environment variables: {exc}") from None


def _format_errors(exc: ValidationError, where: str, env: bool = False) -> str:
    lines = []
    for err in exc.errors():
        if env:  # the variable's own name, as the user wrote it: THEME_ENGINE_KMEANS__K
            loc = "THEME_ENGINE_" + "__".join(str(p).upper() for p in err["loc"])
        else:
            loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"  {where}{loc}: {err['msg']}")
    return "invalid settings:\n" + "\n".join(lines)


def load_config(overrides: dict[str, Any] | None = None, config_file: Path | None = None) -> RunConfig:
    """Resolve CLI overrides > THEME_ENGINE_* env vars > TOML file > defaults into one RunConfig."""
    values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            with path.open("rb") as fh:
                values = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    if any(k.startswith("THEME_ENGINE_") for k in os.environ):
        env = dict(_env_values())
        values = deep_merge(values, env)
    values = deep_merge(values, overrides or {})
    try:
        return RunConfig.model_validate(values)
    except ValidationError as exc:
        where = f"{config_file}: " if config_file else ""
        raise ConfigError(_format_errors(exc, where)) from None
