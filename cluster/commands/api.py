"""The Python API: :func:`run` a corpus given as paths, a pandas DataFrame, a pyarrow Table or a
Ray Dataset; read a finished run back as a :class:`Result`; assign new texts to its themes with a
:class:`ThemeModel` (also a Ray Data ``map_batches`` callable class, to label a dataset of any
size on a cluster).

The same stages, cache, resume and outputs as ``theme-engine run``: with ``out=`` a run writes its
output folder (and a second call reuses its finished stages); without, it works in a temporary
folder that is removed once the results are read into memory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from theme_engine.engine import sources
from theme_engine.engine.config import RunConfig, deep_merge, load_config
from theme_engine.engine.corpus import STAGED_PROBLEM
from theme_engine.engine.output import MODEL_FILE, THEMES_FILE, read_themes

from .args import RUN_KEYWORDS, UPDATE_FLAGS, set_nested, settings_from

log = logging.getLogger(__name__)

STAGED_INPUT = "input.parquet"  # in-memory data, written under OUT/.theme-engine/api/ for the read stage
# what theme_engine.update takes as keywords: the CLI's update flags, and no_cache
UPDATE_KEYWORDS = (*(flag.lstrip("-").replace("-", "_") for flag in UPDATE_FLAGS), "no_cache")
ROW_ID = "__row__"  # the id column added when in-memory data has no id_field: the row's position


def _values(config: RunConfig | dict[str, Any] | str | os.PathLike[str] | None, overrides: dict[str, Any]) -> tuple[dict[str, Any], Path | None]:
    """(settings as nested values, TOML file) from ``config`` and keyword ``overrides``."""
    unknown = sorted(set(overrides) - set(RUN_KEYWORDS))
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(RUN_KEYWORDS))} (or pass config=)")
    toml: Path | None = None
    values: dict[str, Any] = {}
    if isinstance(config, RunConfig):
        values = json.loads(config.model_dump_json(exclude_unset=True))
    elif isinstance(config, dict):
        values = json.loads(json.dumps(config, default=str))
    elif config is not None:
        toml = Path(config)
    return deep_merge(values, settings_from(overrides)), toml


def _is_paths(data: Any) -> bool:
    if isinstance(data, (str, os.PathLike)):
        return True
    return isinstance(data, (list, tuple)) and bool(data) and all(isinstance(d, (str, os.PathLike)) for d in data)


def _pandas_table(frame: Any, text_field: str, id_field: str | None, start: int) -> Any:
    """A DataFrame as an Arrow table the read stage can take whatever its columns hold: a text that
    is not a string (Arrow cannot store a mixed column) and an id that is missing (None, NaN) or
    not a scalar become empty cells with the reason in :data:`STAGED_PROBLEM`, so that the read
    stage counts them as bad records naming the data row; ids are stored as text (a whole float,
    as pandas makes of integer ids beside a missing one, as the integer: 7.0 is "7")."""
    import pyarrow as pa

    frame = frame.reset_index(drop=True)
    problems: list[str | None] = [None] * len(frame)
    changed = {}
    if text_field in frame.columns and frame[text_field].dtype == object:
        col = frame[text_field].tolist()
        for i, v in enumerate(col):
            if v is not None and not isinstance(v, str) and not (isinstance(v, float) and v != v):
                problems[i] = f"text field {text_field!r} is a {type(v).__name__} ({v!r:.40}), not a string (data row {start + i})"
                col[i] = None
        changed[text_field] = pa.array(col, pa.string(), from_pandas=True)
    if id_field and id_field in frame.columns:
        ids: list[str | None] = []
        for i, v in enumerate(frame[id_field].tolist()):
            if v is None or (isinstance(v, float) and v != v):
                problems[i] = problems[i] or f"id field {id_field!r} is missing ({'NaN' if v is not None else 'None'} at data row {start + i})"
                ids.append(None)
            elif isinstance(v, (dict, list, tuple, set, np.ndarray)):
                problems[i] = problems[i] or f"id field {id_field!r} is a {type(v).__name__}, not a scalar (data row {start + i})"
                ids.append(None)
            else:
                ids.append(str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
        changed[id_field] = pa.array(ids, pa.string())
    rest = frame.drop(columns=list(changed))
    table = pa.Table.from_pandas(rest, preserve_index=False) if len(rest.columns) else pa.table({})
    for name, values in changed.items():
        table = table.append_column(name, values) if table.num_columns else pa.table({name: values})
    if any(problems):
        table = table.append_column(STAGED_PROBLEM, pa.array(problems, pa.string()))
    return table


def _stage_table(data: Any, path: Path, id_field: str | None, start: int = 0, text_field: str = "text") -> str | None:
    """Write in-memory ``data`` (DataFrame, Table or Ray Dataset) to the Parquet file ``path``, in
    row order; adds the row-position id column (from ``start``) when there is no ``id_field``.
    Returns the id field the read stage is to use."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    batches: Iterable[pa.Table]
    if type(data).__module__.startswith("ray.data"):
        import ray

        ctx = ray.data.DataContext.get_current()
        saved = ctx.execution_options.preserve_order
        ctx.execution_options.preserve_order = True  # rows keep the dataset's order: ids and results are stable

        def from_dataset() -> Iterable[pa.Table]:
            try:
                for batch in data.iter_batches(batch_size=65_536, batch_format="pyarrow"):
                    yield batch
            finally:
                ctx.execution_options.preserve_order = saved

        batches = from_dataset()
    elif isinstance(data, pa.Table):
        batches = [data]
    elif type(data).__module__.startswith("pandas"):
        batches = [_pandas_table(data, text_field, id_field, start)]
    else:
        raise TypeError(
            f"data must be paths, a pandas DataFrame, a pyarrow Table or a ray.data.Dataset, not {type(data).__name__}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = None
    rows = start
    try:
        for table in batches:
            if id_field is None:
                table = table.append_column(ROW_ID, pa.array([str(i) for i in range(rows, rows + table.num_rows)], pa.string()))
            rows += table.num_rows
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table.cast(writer.schema) if table.schema != writer.schema else table)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError("data holds no rows")
    os.replace(tmp, path)
    return id_field or ROW_ID


def run(data: Any, config: RunConfig | dict[str, Any] | str | os.PathLike[str] | None = None, **overrides: Any) -> Result:
    """Themes and near-duplicates of ``data``: input paths (files or folders, as for the CLI), a
    pandas DataFrame, a pyarrow Table or a ``ray.data.Dataset`` (a text column, an optional id
    column, an optional vector column of precomputed embeddings).

    ``config`` is a :class:`RunConfig`, a dict of settings (TOML's sections) or a TOML file;
    ``overrides`` take the CLI's flag names with underscores (``k=``, ``seed=``, ``text_field=``,
    ``id_field=``, ``dup_threshold=``, ``cache_dir=``, ``out=``, ``address=``, ``no_cache=``…) and
    win over ``config``. In-memory data without ``id_field`` gets its row positions ("0", "1", …)
    as ids."""
    from ..runtime.driver import RunError
    from ..runtime.loopback import local_ray_on_loopback
    from ..runtime.state import STATE_DIR, foreign_entries, foreign_out_message

    values, toml = _values(config, overrides)
    temp = None if values.get("out") else Path(tempfile.mkdtemp(prefix="theme-engine-"))
    if temp is None and sources.is_url(values["out"]):  # published to a store: the run works in its local copy
        out = Path(load_config({**values, "inputs": ["-"]}, toml).out)
    else:
        out = Path(values["out"]) if temp is None else temp / "out"
        values["out"] = str(out)
    try:
        if _is_paths(data):
            values["inputs"] = [str(d) for d in ([data] if isinstance(data, (str, os.PathLike)) else data)]
            cfg = load_config(values, toml)
        else:
            cfg = load_config({**values, "inputs": ["-"]}, toml)  # the settings, to know id_field and --force
            foreign = foreign_entries(out)
            if foreign and not cfg.force:  # checked before the staged input makes the folder one of ours
                raise RunError(foreign_out_message(out, foreign))
            staged = out / STATE_DIR / "api" / STAGED_INPUT
            id_field = _stage_table(data, staged, cfg.read.id_field, text_field=cfg.read.text_field)
            set_nested("read.id_field", id_field, values)
            values["inputs"] = [str(staged)]
            cfg = load_config(values, toml)
        local_ray_on_loopback(cfg)  # effective only when Ray is not imported yet
        from ..runtime.driver import run as drive

        drive(cfg)
        result = Result.load(out)
        if temp is not None:
            result.out = None  # everything was read into memory; the folder stays for search, until the Result goes
            result._workdir = out
            weakref.finalize(result, shutil.rmtree, temp, True)
            temp = None
        return result
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def update(
    out: str | os.PathLike[str], data: Any, refit: str | None = None, config: dict[str, Any] | None = None, **overrides: Any
) -> Result:
    """The run in folder ``out`` grown by new documents ``data`` (paths, a DataFrame, a pyarrow
    Table or a Ray Dataset, as for :func:`run`), as ``theme-engine update`` does; ``refit`` is
    ``"never"``, ``"auto"`` (default) or ``"always"``; ``config`` holds settings of the sections
    an update may change (``update``, ``read``, ``ray``, ``cache``, ``report``) and ``overrides``
    the run keywords ``text_field``, ``id_field``, ``cache_dir``, ``address``, ``device``…
    In-memory data without ``id_field`` gets row positions after the run's as ids. Returns the
    grown result; :class:`NothingNew` (a RuntimeError) when every document is already there."""
    from ..runtime.loopback import local_ray_on_loopback
    from ..runtime.state import STATE_DIR, committed_updates, output_path
    from ..runtime.update import UPDATE_SECTIONS, RunError
    from ..runtime.update import update as grow
    from ..runtime.update import run_folder, update_config

    fixed = sorted(set(config or {}) - set(UPDATE_SECTIONS)) + sorted(set(overrides) - set(UPDATE_KEYWORDS))
    if fixed:
        raise TypeError(
            f"an update keeps the run's own settings; it cannot change {', '.join(fixed)} "
            f"(config sections: {', '.join(UPDATE_SECTIONS)}; keywords: {', '.join(UPDATE_KEYWORDS)})"
        )
    out = run_folder(out, settings_from(overrides))  # a URL the run was published to: its local copy
    if not output_path(out, "manifest.json").is_file():
        raise RunError(f"{out} holds no finished theme-engine run (no manifest.json): run theme_engine.run(..., out={str(out)!r}) first")
    values = deep_merge(json.loads(json.dumps(config or {}, default=str)), settings_from(overrides))
    if refit is not None:
        set_nested("update.refit", refit, values)
    manifest = json.loads(output_path(out, "manifest.json").read_text())
    base_id = manifest.get("config", {}).get("read", {}).get("id_field")
    if _is_paths(data):
        inputs: list[Any] = [str(d) for d in ([data] if isinstance(data, (str, os.PathLike)) else data)]
        if base_id == ROW_ID and "id_field" not in values.get("read", {}):
            set_nested("read.id_field", None, values)  # the run's ids were row positions: files get file:line ids
    else:
        given = values.get("read", {}).get("id_field")
        api = out / STATE_DIR / "api"
        done = len((committed_updates(out) or {}).get("updates", []))
        staged = api / f"update-{done + 1:04d}.parquet"
        start = 0
        if given is None and base_id in (None, ROW_ID):
            # row positions go on after every row staged so far (bad records used theirs too)
            import pyarrow.parquet as pq

            earlier = [api / STAGED_INPUT, *(api / f"update-{g:04d}.parquet" for g in range(1, done + 1))]
            start = sum(pq.ParquetFile(p).metadata.num_rows for p in earlier if p.is_file())
        text_field = values.get("read", {}).get("text_field") or manifest.get("config", {}).get("read", {}).get("text_field") or "text"
        id_field = _stage_table(data, staged, given if given is not None else (None if base_id == ROW_ID else base_id), start=start, text_field=text_field)
        set_nested("read.id_field", id_field, values)
        inputs = [staged]
    cfg = update_config(out, inputs, values)
    local_ray_on_loopback(cfg)
    grow(cfg)
    return Result.load(out)


HIERARCHY_COLUMNS = ["id", "children", "parent", "similarity", "size", "themes", "label", "keywords", "keyword_scores", "keyword_lifts"]


@dataclass
class Result:
    """A finished run: ``themes`` (one row per theme), ``documents`` (one row per input document),
    ``duplicates`` (one row per duplicate and its kept document), ``manifest`` (what ran, how long,
    on what), ``model`` (the themes' centroids, to assign new texts) and ``hierarchy`` (one row
    per merge of the theme tree: ``id``, ``children``, ``similarity``, ``size``, ``themes``,
    ``label``…; the last row is the root); ``out`` is the output folder (None for a run in a
    temporary folder)."""

    themes: Any
    documents: Any
    duplicates: Any
    manifest: dict[str, Any]
    model: ThemeModel
    out: Path | None = None
    hierarchy: Any = None
    _workdir: Path | None = field(default=None, repr=False)  # an in-memory run's temporary folder (its search index), removed with the Result
    _keep: Any = field(default=None, repr=False)  # the Result whose temporary folder this one shares
    _generation: Path | None = field(default=None, repr=False)  # the generation it was read from

    @classmethod
    def load(cls, out: str | os.PathLike[str]) -> Result:
        """The results in a run's output folder: every file from one generation (pinned first,
        so an update that publishes meanwhile changes nothing of what is read). ``out`` may be the
        object-store URL a run was published to (``--out s3://…``): its files are read from there
        (manifest first), on any machine."""
        import pandas as pd

        from ..runtime.state import RESULT_FILES, read_output, reading_base

        if sources.is_url(out):
            temp = Path(tempfile.mkdtemp(prefix="theme-engine-result-"))
            try:
                sources.download_result(str(out), temp, RESULT_FILES, "manifest.json")
                result = cls.load(temp)
            except BaseException:
                shutil.rmtree(temp, ignore_errors=True)
                raise
            result.out = None  # read whole into memory; its model stays readable until the Result goes
            result._workdir = temp
            weakref.finalize(result, shutil.rmtree, temp, True)
            return result
        out = Path(out)
        base = reading_base(out)
        manifest = read_output(out, "manifest.json", lambda p: _json_object(p.read_text(encoding="utf-8")), base)
        themes, hierarchy = read_output(out, THEMES_FILE, lambda p: read_themes(p.parent), base)
        return cls(
            themes=pd.DataFrame(themes),
            hierarchy=pd.DataFrame(hierarchy, columns=HIERARCHY_COLUMNS),
            documents=read_output(out, "documents.parquet", pd.read_parquet, base),
            duplicates=read_output(out, "duplicates.parquet", pd.read_parquet, base),
            manifest=manifest,
            model=ThemeModel.load(out, base),
            out=out,
            _generation=base,
        )

    def search(self, query: str, k: int = 10, theme: int | None = None, kept_only: bool = False, **options: Any) -> SearchResult:
        """The documents nearest ``query`` in meaning (and the nearest themes): see :func:`search`."""
        from ..runtime.state import reading_base

        root = self.out or self._workdir
        if root is None:
            raise ValueError("this Result has no output folder to search (it was built by hand)")
        if self._generation is not None and reading_base(root) != self._generation:
            raise ValueError(
                f"{root} holds a newer result than this one (an update was published since it was loaded): its search index "
                f"answers for documents this Result does not hold; load it again, theme_engine.Result.load({str(root)!r})"
            )
        return search(root, query, k=k, theme=theme, kept_only=kept_only, **options)

    def update(self, data: Any, refit: str | None = None, **options: Any) -> Result:
        """This run grown by new documents ``data``: see :func:`update`. A run in a temporary
        folder grows there, and the Result returned keeps the folder."""
        root = self.out or self._workdir
        if root is None:
            raise ValueError("this Result has no output folder to update (it was built by hand)")
        grown = update(root, data, refit=refit, **options)
        if self.out is None:
            grown.out, grown._workdir = None, root
            grown._keep = self  # the temporary folder lives while either Result does
        return grown

    def documents_dataset(self) -> Any:
        """``documents`` as a Ray Dataset, read from the output folder (streamed, for large runs)."""
        import ray

        if self.out is not None:
            return ray.data.read_parquet(str(self.out / "documents.parquet"))
        return ray.data.from_pandas(self.documents)


@dataclass
class SearchResult:
    """``documents``: the nearest documents (``row`` in documents.parquet, ``id``, ``score`` the
    cosine with the query, ``theme``, ``label``, ``kept``, ``duplicate_of``, ``text`` an excerpt),
    best first; ``themes``: the nearest themes (``theme``, ``label``, ``score`` the cosine with
    the theme's centroid, ``size``)."""

    query: str
    documents: Any
    themes: Any

    def as_dict(self) -> dict[str, Any]:
        return {"query": self.query, "documents": self.documents.to_dict("records"), "themes": self.themes.to_dict("records")}


def search(
    out: str | os.PathLike[str],
    query: str,
    k: int = 10,
    theme: int | None = None,
    kept_only: bool = False,
    n_themes: int = 3,
    qdrant_url: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> SearchResult:
    """The ``k`` documents of the run in ``out`` nearest ``query`` (embedded with the run's model),
    from its Qdrant index; ``theme`` and ``kept_only`` (no duplicates) filter inside Qdrant.
    A run indexed on a Qdrant server needs that server's ``qdrant_url`` (or QDRANT_URL)."""
    import pandas as pd

    from theme_engine.engine.index import IndexUnavailable, open_index

    out = Path(out)
    if k < 1:
        raise ValueError("k must be at least 1")
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{out} is not a finished theme-engine output (missing manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    record = manifest.get("stages", {}).get("index")
    if not record or record.get("skipped"):
        why = record.get("skipped") if record else "it was made before runs were indexed"
        raise ValueError(f"the run in {out} has no search index ({why}): run theme-engine again into {out} with index.enabled = true")
    model = ThemeModel.load(out)
    if model.embed_model is None:
        raise ValueError("this run had precomputed vectors, so a text query cannot be embedded the way they were")
    if theme is not None and not 0 <= theme < len(model.labels):
        listed = "; ".join(f"{t} ({label})" for t, label in enumerate(model.labels[:12])) + ("; …" if len(model.labels) > 12 else "")
        raise ValueError(f"theme {theme} does not exist: the run has themes 0 to {len(model.labels) - 1}: {listed}")
    _check_query(query)
    if cache_dir is not None:
        model.cache_dir = Path(cache_dir)
    vec = model._embed([query])[0]
    url = None
    if record.get("backend") == "server":
        url = qdrant_url or os.environ.get("QDRANT_URL")
        if not url:
            raise ValueError(f"the run's index is on a Qdrant server (collection {record['collection']}, {record.get('url')}): pass --qdrant-url")
    from ..runtime.state import committed_updates

    current = committed_updates(out)
    if current and current["updates"][-1].get("index") == "pending":
        log.warning(
            "the search index of %s lacks the documents of update %d (it stopped before indexing them); "
            "the next theme-engine update of %s indexes them first", out, current["generation"], out
        )  # fmt: skip
    index = open_index(out, url, record.get("collection"))
    try:
        # a damaged or partly deleted index must not answer from what is left of it
        pending = bool(current and current["updates"][-1].get("index") == "pending")
        expected = manifest.get("documents", {}).get("embedded")
        held = index.count()
        if expected is not None and not pending and held != expected:
            raise IndexUnavailable(
                f"the search index of {out} holds {held} documents, the result {expected}: it is damaged or partly deleted; "
                f"make it again with: theme-engine index {out}"
            )
        hits = index.search(vec, k, theme=theme, kept_only=kept_only)
    finally:
        index.close()
    labels = model.labels
    documents = pd.DataFrame(
        [
            {
                "row": h.row,
                "id": h.payload.get("id"),
                "score": round(h.score, 6),
                "theme": h.payload.get("theme"),
                "label": labels[h.payload["theme"]] if 0 <= h.payload.get("theme", -1) < len(labels) else None,
                "kept": bool(h.payload.get("kept")),
                "duplicate_of": h.payload.get("duplicate_of", -1),
                "text": h.payload.get("text", ""),
            }
            for h in hits
        ],
        columns=["row", "id", "score", "theme", "label", "kept", "duplicate_of", "text"],
    )
    themes, _ = read_themes(out)
    sizes = {t["theme"]: t["size"] for t in themes}
    c = model.centroids / np.maximum(np.linalg.norm(model.centroids, axis=1, keepdims=True), 1e-12)
    sims = c @ vec
    top = np.argsort(-sims, kind="stable")[: max(0, n_themes)]
    nearest = pd.DataFrame(
        [{"theme": int(t), "label": labels[t], "score": round(float(sims[t]), 6), "size": sizes.get(int(t))} for t in top],
        columns=["theme", "label", "score", "size"],
    )
    return SearchResult(query, documents, nearest)


class ThemeModel:
    """A run's themes as a model: ``centroids`` (theme t is row t), ``labels``, and the embedding
    model that made the run's vectors (None for precomputed vectors: then only vectors can be
    assigned). ``assign`` gives each new text its nearest theme and the distance to it, as
    ``documents.parquet`` does for the run's own documents.

    On Ray Data: ``ds.map_batches(ThemeModel, fn_constructor_kwargs={"path": DIR}, concurrency=N,
    batch_format="pandas")`` loads the model once per actor and adds ``theme``, ``label`` and
    ``distance`` columns to every batch (the texts in column ``text_field``)."""

    def __init__(
        self,
        centroids: np.ndarray | None = None,
        labels: Sequence[str] | None = None,
        embed_model: str | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        text_field: str = "text",
        threads: int | None = None,
    ) -> None:
        if path is not None:
            loaded = ThemeModel.load(path)
            centroids, labels, embed_model = loaded.centroids, loaded.labels, loaded.embed_model
        if centroids is None:
            raise TypeError("ThemeModel needs centroids (or path= a run's output folder)")
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.labels = list(labels) if labels is not None else [str(t) for t in range(len(self.centroids))]
        self.embed_model = embed_model or None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.text_field = text_field
        self.threads = threads
        self._embedder = None

    @classmethod
    def load(cls, out: str | os.PathLike[str], base: Path | None = None) -> ThemeModel:
        """The model of the run in folder ``out`` (its ``model.npz`` and ``themes.json``, both of
        one generation: ``base`` when given)."""
        from ..runtime.state import DamagedOutput, read_output, reading_base

        out = Path(out)
        base = base or reading_base(out)

        def model(path: Path) -> tuple[np.ndarray, str]:
            with np.load(path, allow_pickle=False) as data:
                centroids, embed_model = np.asarray(data["centroids"], dtype=np.float32), str(data["embed_model"])
            if centroids.ndim != 2 or not np.isfinite(centroids).all():
                raise ValueError(f"centroids of shape {centroids.shape} that are not all finite")
            return centroids, embed_model

        centroids, embed_model = read_output(out, MODEL_FILE, model, base)
        labels = read_output(out, THEMES_FILE, lambda p: [str(t["label"]) for t in sorted(read_themes(p.parent)[0], key=lambda t: int(t["theme"]))], base)
        if len(labels) != len(centroids):
            raise DamagedOutput(f"{out}: {MODEL_FILE} holds {len(centroids)} themes but {THEMES_FILE} {len(labels)}; the two are from different results")
        return cls(centroids, labels, embed_model or None)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_embedder"] = None  # a loaded model does not travel: each process loads its own
        return state

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.embed_model is None:
            raise ValueError("this run had precomputed vectors, so its texts cannot be embedded: pass vectors= to assign")
        if self._embedder is None:
            from theme_engine.engine.cache import default_cache_dir
            from theme_engine.engine.embedding import Embedder, model_from_ref

            root = self.cache_dir or default_cache_dir()
            self._embedder = Embedder(model_from_ref(self.embed_model, root), root, threads=self.threads)
        return self._embedder.embed([str(t) for t in texts])

    def assign(self, texts: Sequence[str] | None = None, vectors: np.ndarray | None = None) -> Any:
        """A DataFrame with ``theme``, ``label`` and ``distance`` (Euclidean, to the theme's
        centroid) for each of ``texts`` (embedded with the run's model) or of ``vectors``
        (normalised to unit length, as the run's were)."""
        import pandas as pd

        if (texts is None) == (vectors is None):
            raise TypeError("pass texts or vectors")
        if vectors is None:
            v = self._embed(_text_list(texts))
        else:
            v = _unit_rows(vectors, self.centroids.shape[1])
        theme, distance = self._nearest(v)
        return pd.DataFrame({"theme": theme, "label": [self.labels[t] for t in theme], "distance": distance})

    def _nearest(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self.centroids
        # |v - c|^2 = |v|^2 - 2 v.c + |c|^2, a block at a time
        theme = np.empty(len(v), dtype=np.int64)
        distance = np.empty(len(v), dtype=np.float32)
        c2 = (c * c).sum(axis=1)
        for a in range(0, len(v), 65_536):
            block = v[a : a + 65_536]
            d2 = (block * block).sum(axis=1)[:, None] - 2.0 * block @ c.T + c2[None, :]
            best = np.argmin(d2, axis=1)
            theme[a : a + len(block)] = best
            distance[a : a + len(block)] = np.sqrt(np.maximum(d2[np.arange(len(block)), best], 0.0))
        return theme, distance

    def __call__(self, batch: Any) -> Any:
        """Ray Data: a pandas batch (or a dict of columns) with texts in ``text_field`` gets
        ``theme``, ``label`` and ``distance`` columns."""
        import pandas as pd

        frame = batch if isinstance(batch, pd.DataFrame) else pd.DataFrame(batch)
        assigned = self.assign(texts=frame[self.text_field].astype(str).tolist())
        return frame.assign(theme=assigned["theme"].to_numpy(), label=assigned["label"].to_numpy(), distance=assigned["distance"].to_numpy())


def _json_object(text: str) -> dict[str, Any]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    return data


def _check_query(query: Any) -> None:
    """A ValueError unless ``query`` is text a model can read: a non-empty string of Unicode
    characters (a shell passes bytes that are not UTF-8 as lone surrogates, which no tokenizer takes)."""
    if not isinstance(query, str):
        raise ValueError(f"the query must be a string, not a {type(query).__name__}")
    if not query.strip():
        raise ValueError("the query is empty: give the words to search for")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"the query holds {query[exc.start:exc.end]!r} at character {exc.start}, which is not Unicode text "
            "(bytes in another encoding than UTF-8?): pass the query as UTF-8"
        ) from None


def _text_list(texts: Any) -> list[str]:
    """``texts`` as a list of strings, or a TypeError that names the first record that is not one
    (a bare string would otherwise be taken as a list of characters)."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a list of strings, not one string: wrap it, assign(texts=[text])")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is a {type(t).__name__}, not a string ({t!r:.60}): pass text only, or convert it first")
    return out


def _unit_rows(vectors: Any, dim: int) -> np.ndarray:
    """``vectors`` as float32 unit rows of ``dim`` columns, or a ValueError that names the rows that
    cannot be placed (not finite, or zero: a vector with no direction is nearest to nothing)."""
    try:
        v = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"vectors must be numbers of shape (n, {dim}): {exc}") from None
    if v.ndim != 2 or v.shape[1] != dim:
        raise ValueError(f"vectors must have shape (n, {dim}), not {v.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.linalg.norm(v.astype(np.float64), axis=1)
    bad = ~np.isfinite(v).all(axis=1) | ~(norms > 0)
    if bad.any():
        rows = np.flatnonzero(bad)
        shown = ", ".join(str(r) for r in rows[:5]) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")
        raise ValueError(f"vectors row(s) {shown} are not finite or are all zeros: they have no direction to place; drop or fix them")
    return (v / norms[:, None]).astype(np.float32)


__all__ = ["Result", "SearchResult", "ThemeModel", "run", "search", "update"]
