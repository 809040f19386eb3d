"""The stage driver: runs a pipeline of stages in order under the lock of ``--out`` and one Ray
connection, then finishes the job. A run's pipeline is ``stages``'s ``PIPELINE`` (read →
embed → select_k → kmeans → dedup → label → layout → write → index → report) and its finish
writes the manifest into the result's new generation and publishes it (``state.publish``); an
update is this driver with ``UPDATE_PIPELINE`` and a commit as its finish (``cluster/runtime/update.py``).

Each stage's output is persisted under its store (``OUT/.theme-engine/<stage>`` for a run) with a
fingerprint of its inputs and settings; a re-run reuses finished stages whose files are intact,
and a stopped run resumes (embeddings from the cache, k-means from its last checkpointed
iteration). What a stage computes is the stage's business; reuse, timing, fall-back and retry
bookkeeping, the lock, Ray's session and the finish are the driver's.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ray
from ray.exceptions import RayTaskError

from theme_engine.engine import sources
from theme_engine.engine.config import RunConfig
from theme_engine.engine.corpus import InputError
from theme_engine.engine.device import count_fallbacks

from . import ray_session
from .publish import parts_by_tasks
from .stages import PIPELINE, STAGES, RunContext, RunError, Stage
from .state import (
    RESULT_FILES,
    OutLock,
    OutputBusy,
    StageStore,
    atomic_write_json,
    committed_updates,
    foreign_entries,
    foreign_out_message,
    publish,
    reading_base,
    roll_forward,
    unpublish,
    updates_root,
)

log = logging.getLogger(__name__)


class OutputInUse(RunError):
    """Another run holds ``--out``: this one wrote nothing there."""


@dataclass
class RunResult:
    out: Path
    manifest: dict[str, Any]
    themes: list[dict[str, Any]]


class Driver:
    """Runs one job. ``stop`` (a threading.Event) stops it between batches or iterations; ``sink``
    receives (stage, done, total) progress events and ``on_stage`` each stage's record when it
    finishes or is reused (seconds, device, counts — what the manifest's ``stages`` holds).
    Subclasses (the update) change what happens under the lock before the stages
    (:meth:`prepare`), after each (:meth:`after_stage`) and at the end (:meth:`finish`)."""

    lock_advice = "or pass another --out"  # what the lock's "busy" message tells the user to do besides waiting

    def __init__(
        self,
        cfg: RunConfig,
        stop: threading.Event | None = None,
        sink: Callable[[str, int, int], None] | None = None,
        on_stage: Callable[[str, dict[str, Any]], None] | None = None,
        pipeline: tuple[type[Stage], ...] = PIPELINE,
    ):
        if cfg.out is None:
            raise RunError("no output directory: pass --out DIR")
        if not cfg.inputs:
            raise RunError("no input given: pass one or more files or directories")
        self.cfg = cfg
        self.out = Path(cfg.out)
        foreign = foreign_entries(self.out)
        if foreign and not cfg.force:
            raise RunError(foreign_out_message(self.out, foreign))
        self.out.mkdir(parents=True, exist_ok=True)
        self.on_stage = on_stage
        self.stages = [stage() for stage in pipeline]
        self.ctx = self.context(StageStore(self.out), stop or threading.Event(), sink)

    def context(self, store: StageStore, stop: threading.Event, sink: Callable[[str, int, int], None] | None) -> RunContext:
        return RunContext(self.cfg, self.out, store, stop, sink, stages=tuple(self.stages))

    def run(self) -> Any:
        """The whole job, holding the lock of ``--out`` (a second job into it is refused by name)."""
        try:
            lock = OutLock(self.out, advice=self.lock_advice).acquire()
        except OutputBusy as exc:
            raise OutputInUse(str(exc)) from None
        try:
            self.prepare()
            connection = ray_session.connect(self.cfg.ray)
            self.ctx.ray = connection.record()
            try:
                try:
                    for stage in self.stages:
                        self.run_stage(stage)
                        self.after_stage(stage)
                finally:
                    self.ctx.close()
                result = self.finish()
                self.publish_to_store()  # with Ray still up: its tasks upload the datasets' parts
                return result
            finally:
                if connection.started:
                    ray.shutdown()
        finally:
            lock.release()

    def publish_to_store(self) -> None:
        """With ``--out`` an object-store URL (``publish_to``): the published generation of the
        local copy uploaded there, manifest last (``engine.sources.upload_result``), the parts of a
        partitioned dataset by Ray tasks (``parts_by_tasks``), under a lease in the store that keeps
        another machine's upload out (``engine.sources.PublishLease``); skipped when the store's
        manifest is already this one's."""
        url = self.cfg.publish_to
        if not url:
            return
        base = reading_base(self.out)
        local = (base / "manifest.json").read_bytes()
        by_tasks: list[int] = []
        try:
            if sources.published_manifest(url) == local:
                return
            started = time.perf_counter()
            copy = None
            if ray.is_initialized():
                control = self.ctx.control("publish")
                copy = parts_by_tasks(base, url, by_tasks, lambda submits: self.ctx.gather(submits, control, window=ray_session.task_window()))
            with sources.PublishLease(url):  # another machine's upload to the URL would mix its files with these
                written = sources.upload_result(base, url, RESULT_FILES, "manifest.json", copy_parts=copy)
        except InputError as exc:
            cause = exc.cause if isinstance(exc, RayTaskError) else exc  # a task's: its own line, not Ray's traceback
            raise RunError(
                f"{cause}. The result is complete in its local copy {self.out}: run the same command again to publish it "
                "(nothing is computed again)"
            ) from None
        log.info(
            "published to %s: %.1f MB in %.1f s (%.1f MB of dataset parts by %d Ray tasks)",
            url, written / 2**20, time.perf_counter() - started, sum(by_tasks) / 2**20, len(by_tasks),
        )  # fmt: skip

    def prepare(self) -> None:
        """Under the lock, before Ray: a run into a folder grown by updates drops them (``--force``)."""
        self._drop_updates()

    def after_stage(self, stage: Stage) -> None:
        """After each stage has run or been reused (an update stops after reading nothing new)."""

    def _drop_updates(self) -> None:
        """Under the lock (after the roll-forward of a stopped commit, which may add an update): a
        run into a folder grown by updates would replace them with a result of its own inputs
        alone, so it is refused by name without ``--force``; with it the updates go, and the
        search index they grew with them."""
        roll_forward(self.out)
        current = committed_updates(self.out)
        if not current:
            return
        if not self.cfg.force:
            raise RunError(
                f"{self.out} holds a run grown by {len(current['updates'])} update(s) (theme-engine update); "
                "theme-engine run would replace them with a result of its inputs alone: run into a new --out, "
                "give the run every input (the first run's and the updates') with --force to start over, "
                "or add documents with theme-engine update"
            )
        log.warning("--force: %s loses its %d update(s); the run starts over from its inputs", self.out, len(current["updates"]))
        # the grown result goes first: a forced run stopped before it publishes its own leaves no
        # finished run that an update could build on with the updates' documents gone
        unpublish(self.out)
        self.ctx.store.invalidate("index")
        shutil.rmtree(updates_root(self.out))

    def run_stage(self, stage: Stage) -> None:
        """Run ``stage`` unless its persisted output matches its fingerprint and is intact (the
        files' digests as written, and its own ``verify`` finding nothing wrong); record seconds,
        device, fall-backs and retries; hand its product on."""
        ctx, name = self.ctx, stage.name
        ctx.control(name).check()  # a stop asked for during the last stage ends the run before this one
        fp = ctx.fps[name] = stage.fingerprint(ctx)
        done = None if stage.always_runs else ctx.store.finished(name, fp)
        if done is not None:
            problem = ctx.store.damaged(name, done) or stage.verify(ctx)
            if problem is not None:
                log.warning("%s: the finished stage's output fails validation (%s); running the stage again", name, problem)
                ctx.store.invalidate(name)
                done = None
        if done is not None:
            record = {k: v for k, v in done.items() if k not in ("fingerprint", "outputs")}
            record["reused"] = True
            log.info("%s: reusing the finished stage", name)
        else:
            t0 = time.perf_counter()
            record = stage.run(ctx)
            record = {"seconds": round(time.perf_counter() - t0, 3), **record}
            if name in ctx.no_gpu and record.get("device") not in (None, "none"):
                no_gpu = {"stage": name, "reason": ctx.no_gpu[name], "count": 1}
                record["fallbacks"] = count_fallbacks([*record.get("fallbacks", []), no_gpu])
            if ctx.retries.get(name):
                record["task_retries"] = ctx.retries[name]
            ctx.store.mark_done(name, fp, record)
        ctx.records[name] = record
        if self.on_stage is not None:
            self.on_stage(name, record)
        ctx.products[name] = stage.load(ctx)

    def finish(self) -> RunResult:
        """``manifest.json`` from the stages' records, written last into the run's generation,
        which is then published whole (``state.publish``): a finished run is one that has it."""
        manifest = self.ctx.manifest()
        atomic_write_json(self.ctx.result_dir / "manifest.json", manifest)
        publish(self.out, self.ctx.result_dir)
        return RunResult(self.out, manifest, self.ctx.product("label").themes)


def run(
    cfg: RunConfig,
    stop: threading.Event | None = None,
    sink: Callable[[str, int, int], None] | None = None,
    on_stage: Callable[[str, dict[str, Any]], None] | None = None,
) -> RunResult:
    return Driver(cfg, stop, sink, on_stage).run()


__all__ = ["STAGES", "Driver", "InputError", "OutputInUse", "RunError", "RunResult", "run"]
