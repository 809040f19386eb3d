"""``theme-engine update DIR NEW_INPUT...``: a finished run grown by new documents, at a cost that
follows the new documents rather than the corpus.

An update is the run's driver (``cluster/runtime/driver.py``) with the update's pipeline
(``stages``'s ``UPDATE_PIPELINE``: each stage's update form beside its run form) over the
run it grows (``stages/grown.py``), and a commit as its finish. The new documents are read and
embedded as a run would (the cache serves repeats), each assigned to its nearest theme; those far
from every theme are tested for drift, and ``--refit auto`` adds new themes found among them;
near-duplicates are searched between the new documents and the whole corpus with a full run's
guarantees, existing themes are labelled again from their grown membership, the new documents
placed on the map and added to the search index (the algorithms are ``engine/update.py``'s).

State: an update's stages live in ``OUT/.theme-engine/updates/NNNN`` (resumable, as a run's are);
its outputs are written into a new generation of the result, published whole by the commit
(``state.publish``), so a stop at any point leaves the previous result readable and the same
command finishes the update. The generation's ``updates.json`` lists the committed updates; the
documents and vectors of each stay in its folder, and the corpus-wide arrays of the latest one
(themes, duplicates, map, partitions) in its ``grown.npz``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from theme_engine.engine import sources
from theme_engine.engine.config import RunConfig, deep_merge, load_config, public_config

from .driver import Driver
from .stages import UPDATE_PIPELINE, RunError, Stage
from .stages.embed import Embed
from .stages.grown import Grown, load_grown, tidy_update
from .stages.index import grow_index
from .stages.read import Read
from .state import (
    UPDATES_RECORD,
    StageStore,
    atomic_write_json,
    committed_updates,
    output_path,
    publish,
    result_file,
    save_committed_updates,
    updates_root,
)

log = logging.getLogger(__name__)

# the sections of the settings an update may set besides the run's own (the rest are the run's)
UPDATE_SECTIONS = ("update", "read", "ray", "cache", "report")


class NothingNew(RunError):
    """Every document of the update's inputs is already in the run: nothing was changed."""


@dataclass
class UpdateResult:
    out: Path
    manifest: dict[str, Any]
    entry: dict[str, Any]  # this update's record in the manifest's ``updates``
    nothing_new: bool = False


def run_folder(out: Any, overrides: dict[str, Any] | None = None) -> Path:
    """The folder of the run ``out`` names: itself, or for the object-store URL a run was
    published to, its local copy (under the cache folder of ``overrides``, the environment or the
    default, as the run had it), which must hold the run."""
    if not sources.is_url(out):
        return Path(out)
    root = ((overrides or {}).get("cache") or {}).get("dir") or os.environ.get("THEME_ENGINE_CACHE__DIR")
    local = sources.working_copy(str(out), root)
    if not (local / "manifest.json").is_file():
        raise RunError(
            f"{out}: the run's local copy ({local}) is not on this machine; an update grows a run where it was made: "
            "run it there, with the run's --cache-dir"
        )
    return local


def update_config(out: Path, inputs: list[Any], overrides: dict[str, Any] | None = None) -> RunConfig:
    """The run's own settings (its manifest's config) with the update's inputs and ``overrides``
    (the reading, where and how to run, the update's own section). ``out`` may be the URL the run
    was published to (:func:`run_folder`)."""
    out = run_folder(out, overrides)
    manifest_path = Path(out) / "manifest.json"
    if not manifest_path.is_file():
        raise RunError(f"{out} holds no finished theme-engine run (no manifest.json): run theme-engine run INPUT... --out {out} first")
    values = json.loads(output_path(Path(out), "manifest.json").read_text())["config"]
    # the environment beats the run's recorded settings in the sections an update may change, as
    # it beats a TOML file for a run (THEME_ENGINE_CACHE__DIR=…): flag > environment > the run's
    for section in UPDATE_SECTIONS:
        for key in list(values.get(section) or {}):
            if f"THEME_ENGINE_{section}__{key}".upper() in {k.upper() for k in os.environ}:
                del values[section][key]
    for section, key in (("cache", "qdrant_url"), ("ray", "address")):
        if "***" in str(values.get(section, {}).get(key) or ""):
            values[section][key] = None  # redacted in the manifest: pass it again
    if values.get("ray", {}).get("address") is None:
        values.setdefault("ray", {})["address"] = os.environ.get("RAY_ADDRESS") or None
    if values.get("cache", {}).get("qdrant_url") is None:
        values.setdefault("cache", {})["qdrant_url"] = os.environ.get("QDRANT_URL") or None
    # a run made before long texts were embedded as windows truncated them: its new documents must too
    values.setdefault("embed", {}).setdefault("long", "truncate")
    # and one made before boilerplate was left out of long texts read them whole
    values["embed"].setdefault("boilerplate_share", 0.0)
    values = deep_merge(values, overrides or {})
    values["inputs"] = [str(p) for p in inputs]
    values["out"] = str(out)
    values["force"] = True
    return load_config(values)


class UpdateDriver(Driver):
    """One update of ``cfg.out``: the driver's lock, Ray connection and stage loop over the
    update's pipeline and its own store (``updates/NNNN``), then the commit."""

    lock_advice = "then run the update again (nothing of it was done)"

    def __init__(self, cfg: RunConfig, stop: threading.Event | None = None, sink: Callable[[str, int, int], None] | None = None,
                 on_stage: Callable[[str, dict[str, Any]], None] | None = None,
                 pipeline: tuple[type[Stage], ...] = UPDATE_PIPELINE) -> None:  # fmt: skip
        super().__init__(cfg, stop, sink, on_stage, pipeline=pipeline)
        self.t_start = time.perf_counter()
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def prepare(self) -> None:
        """Under the lock: the run to grow (a stopped commit finished first), an index an earlier
        update left behind completed, and this update's own store."""
        grown = load_grown(self.out)
        if grown.vector_input:
            raise RunError(
                f"the run in {self.out} was made from precomputed vectors: new texts cannot be embedded the way they were; "
                "run theme-engine run over all of the vectors instead"
            )
        self._finish_index(grown)  # an earlier update stopped after its commit, before its documents were indexed
        self.generation = grown.generation + 1
        self.folder = f"{self.generation:04d}"
        self.root = updates_root(self.out) / self.folder
        self.ctx = self.context(StageStore(self.out, self.root), self.ctx.stop, self.ctx.sink)
        self.ctx.grown_run = grown

    def after_stage(self, stage: Stage) -> None:
        if stage.name == "read" and not self.ctx.records["read"].get("documents"):
            shutil.rmtree(self.root, ignore_errors=True)  # nothing to commit: no folder of it stays behind
            self.publish_to_store()  # an earlier update whose upload failed is published now
            raise NothingNew(self._nothing_new(self.ctx.records["read"]))

    def finish(self) -> UpdateResult:
        result = self._commit(self.ctx.grown, time.perf_counter() - self.t_start)
        self._finish_index(load_grown(self.out), result)
        return result

    def _finish_index(self, grown: Grown, result: UpdateResult | None = None) -> None:
        """The last committed update's documents into the search index, when it still lacks them;
        its record (in the updates record and the manifest's history) then says ``indexed``."""
        current = committed_updates(self.out)
        if not current or current["updates"][-1].get("index") != "pending":
            return
        if result is None:
            log.info("update %d was committed but its documents not yet indexed: indexing them first", grown.generation)
        record = grow_index(self.out, grown, self.cfg.cache.qdrant_url)
        current["updates"][-1]["index"] = "done"
        # the published generation's record and manifest say so (rewritten in place, each atomically)
        save_committed_updates(self.out, current)
        manifest = json.loads(result_file(self.out, "manifest.json").read_text())
        manifest["updates"][-1]["stages"]["index"] = record
        atomic_write_json(result_file(self.out, "manifest.json"), manifest)
        if result is not None:
            result.manifest, result.entry = manifest, manifest["updates"][-1]

    def _nothing_new(self, read: dict[str, Any]) -> str:
        names = ", ".join(str(p) for p in self.cfg.inputs)
        return (
            f"nothing new in {names}: {read.get('present', 0)} documents are already in {self.out}"
            + (f", {read.get('id_conflicts', 0)} reuse an id with another text" if read.get("id_conflicts") else "")
            + (f", {read.get('bad', 0) - read.get('id_conflicts', 0)} other bad records" if read.get("bad", 0) > read.get("id_conflicts", 0) else "")
            + "; the run is unchanged"
        )

    def _commit(self, grown: Grown, seconds: float) -> UpdateResult:
        """The update's record, manifest and report into its generation, published in one rename."""
        from theme_engine.engine.report import render_report  # noqa: PLC0415

        ctx, generation, folder = self.ctx, self.generation, self.folder
        staging = ctx.result_dir
        records = ctx.records
        counts = ctx.product("write")
        asg = records["assign"]
        index_record = grown.manifest.get("stages", {}).get("index") or {}
        indexed = bool(index_record) and not index_record.get("skipped")
        entry = {
            "generation": generation,
            "started": self.started_at,
            "seconds": round(seconds, 3),
            "inputs": [{"name": f.name, "digest": sources.identity(f.path)} for f in ctx.product("read").files],
            "refit": asg["refit"],
            "read": {k: records["read"].get(k, 0) for k in ("documents", "present", "id_conflicts", "exact_of_existing", "exact_duplicate", "bad", "ok")},
            "ray": ctx.ray,
            "embedded": records["embed"].get("embedded", 0),
            **({"long_texts": records["embed"]["long_texts"]} if records["embed"].get("long_texts") else {}),
            "drift": asg["drift"],
            "proposal": asg["proposal"],
            "themes_before": asg["themes_before"],
            "new_themes": asg["new_themes"],
            "existing_moved": asg["existing_moved"],
            "far_in_existing_themes": asg.get("far_in_existing_themes", 0),
            "near_duplicates": {
                **{k: records["dedup"][k] for k in ("new_pairs", "cross_pairs", "new_near_duplicates", "new_duplicates_of_existing", "exact")},
                "search_tasks": records["dedup"].get("search_tasks", 0),  # Ray tasks that searched the new rows (0: the driver did)
            },
            "relabelled": records["label"].get("relabelled", 0),
            "stages": {
                **{name: {k: v for k, v in rec.items() if k in ("seconds", "reused", "device", "skipped")} for name, rec in records.items()},
                "index": {"pending": True} if indexed else {"skipped": "the run has no search index"},
            },
        }
        manifest = dict(grown.manifest)
        manifest["documents"] = counts
        manifest["themes"] = len(ctx.product("label").themes)
        manifest["bad_records"] = {"count": counts["bad_records"], "examples": (ctx.product("read").corpus.bad + grown.corpus.bad)[: self.cfg.read.max_bad_examples]}  # this update's first
        manifest["updates"] = [*grown.manifest.get("updates", []), entry]
        manifest["update_config"] = public_config(self.cfg)["update"]
        if self.cfg.report.enabled and (self.out / "report.html").exists():
            chain = grown.chain_with(ctx.docs().path)
            render_report(staging, manifest=manifest, max_points=self.cfg.report.max_points, seed=self.cfg.seed, excerpt_chars=self.cfg.report.excerpt_chars, stored=chain, folder=self.out.resolve().name)
        atomic_write_json(staging / "manifest.json", manifest)
        current = committed_updates(self.out) or {"generation": 0, "updates": []}
        root = updates_root(self.out)
        current = {
            "generation": generation,
            "updates": [
                *current["updates"],
                {
                    "dir": folder,
                    "docs": str(Read.docs_path(ctx.store).relative_to(root)),
                    "keys": str(Read.keys_path(ctx.store).relative_to(root)),
                    "vectors": str(Embed.vectors_path(ctx.store).relative_to(root)),
                    "fingerprint": ctx.fp("write"),
                    "index": "pending" if indexed else "none",
                },
            ],
        }
        # the commit: the generation holds the outputs and the record of its updates, published in one
        # rename (a report the update did not render is not in it: the page of before would mislead)
        atomic_write_json(staging / UPDATES_RECORD, current)
        publish(self.out, staging)
        tidy_update(updates_root(self.out), folder, current["updates"])
        log.info("update %d of %s committed in %.1f s", generation, self.out, seconds)
        return UpdateResult(self.out, manifest, entry)



def update(cfg: RunConfig, stop: threading.Event | None = None, sink: Callable[[str, int, int], None] | None = None,
           on_stage: Callable[[str, dict[str, Any]], None] | None = None) -> UpdateResult:  # fmt: skip
    return UpdateDriver(cfg, stop, sink, on_stage).run()


def _describe_ray(record: dict[str, Any]) -> str:
    from .ray_session import describe  # noqa: PLC0415  (as the update's own connect: Ray is imported when used)

    return describe(record)


def _verdict(drift: dict[str, Any]) -> str:
    verdict = drift.get("verdict") or ("yes" if drift.get("drift") else "no")
    return f"too few new documents to tell (p = {drift['p_value']:.2g})" if verdict == "too few to tell" else verdict


def update_summary(result: UpdateResult) -> str:
    e, m = result.entry, result.manifest
    r, nd, dr = e["read"], e["near_duplicates"], e["drift"]
    lines = [
        f"update {e['generation']} of {result.out}: {r['documents']} new documents ({r.get('present', 0)} already present, "
        f"{r.get('id_conflicts', 0)} id conflicts, {r.get('bad', 0) - r.get('id_conflicts', 0)} other bad records); {e['embedded']} embedded",
        f"duplicates: {r.get('exact_duplicate', 0)} exact ({r.get('exact_of_existing', 0)} of existing documents), "
        f"{nd['new_near_duplicates']} near ({nd['new_duplicates_of_existing']} of existing documents, {nd['cross_pairs']} pairs across)",
        f"far from every theme: {dr['far']} of {dr['new']} ({100 * dr['far_share']:.1f}%); drift (above {100 * dr['share_threshold']:.0f}%, "
        f"p < {dr.get('alpha', 0.01)}): {_verdict(dr)}; refit {e['refit']}: {e['proposal'].get('decision', '')}",
        *(
            [f"{e['far_in_existing_themes']} far documents put in existing themes: flagged far_from_theme in documents.parquet, not used to name them"]
            if e.get("far_in_existing_themes")
            else []
        ),
        f"{m['themes']} themes ({e['new_themes']:+d}), {e['relabelled']} relabelled; {m['documents']['input']} documents in all; {e['seconds']:.1f} s",
        *([_describe_ray(e["ray"])] if e.get("ray") else []),
    ]
    return "\n".join(lines)


__all__ = ["UPDATE_SECTIONS", "NothingNew", "UpdateResult", "UpdateDriver", "load_grown", "run_folder", "update", "update_config", "update_summary"]
