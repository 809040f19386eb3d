"""What every stage is, and what the stages of one run share.

A stage is an object with a ``name``, a :meth:`Stage.fingerprint` of its inputs and settings, a
:meth:`Stage.run` that computes and persists its output under ``OUT/.theme-engine/<name>`` and
returns the stage's record (seconds, device, counts: what the manifest's ``stages`` holds), an
optional :meth:`Stage.verify` of a finished output before it is reused, and :meth:`Stage.load`,
which hands its product (from the store, whether just computed or reused) to later stages through
:meth:`RunContext.product`. The driver runs the stages in order and owns reuse, timing and the
record; a new stage is a new module listed in ``cluster/runtime/stages/__init__.py``.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar


from theme_engine.actors.memory import peak_rss_bytes
from theme_engine.actors.shard import ActorShards
from theme_engine.engine.config import RunConfig, public_config
from theme_engine.engine.docstore import DocStore
from theme_engine.engine.events import StageControl
from theme_engine.engine.manifest import build_manifest
from theme_engine.engine.vectors import VectorParts

from .. import ray_session
from ..gather import Backoff, gather
from ..state import RESULT_FILES, StageStore, new_result

if TYPE_CHECKING:
    from .grown import Grown

log = logging.getLogger(__name__)

PACKAGES = ("theme-engine", "ray", "numpy", "faiss-cpu", "fastembed", "onnxruntime", "qdrant-client", "qdrant-edge-py", "scikit-learn", "pyarrow")


class RunError(RuntimeError):
    """A run cannot go on for a reason the user can act on (message says what to do)."""


@dataclass(frozen=True)
class Section:
    """Settings that decide a stage's output: a section of the configuration (``"kmeans"``), some
    of its keys (``include``) or all but some (``exclude``: knobs of memory and speed), or one value
    (``"kmeans.k"``)."""

    path: str
    include: frozenset[str] | None = None
    exclude: frozenset[str] | None = None

    def of(self, cfg: RunConfig) -> Any:
        value: Any = cfg
        for part in self.path.split("."):
            value = getattr(value, part)
        if hasattr(value, "model_dump"):
            return value.model_dump(mode="json", include=self.include, exclude=self.exclude)
        return value


class Stage(ABC):
    """One step of the job. Instances live for one run (they may keep what they computed in
    :meth:`fingerprint` for :meth:`run`). A stage declares what it is: its ``name``, the settings
    that decide its output (``settings``, with the run's seed), whether it may use a GPU
    (``uses_gpu``: it then gets one the cluster offers, or records why not), the files it writes
    into OUT (``outputs``), whether it ``always_runs``, what it puts in the manifest and the CLI's
    summary (:meth:`manifest_part`, :meth:`summary`), and, for an update's stage, whether its
    folder is kept after the commit (``kept_by_updates``)."""

    name: ClassVar[str]
    # the settings that decide the stage's output, by their key in its fingerprint
    settings: ClassVar[dict[str, Section]] = {}
    uses_gpu: ClassVar[bool] = False
    # an update's stage whose folder outlives the update's commit: later updates read it
    kept_by_updates: ClassVar[bool] = False
    # files the stage writes into OUT itself (not its state folder), listed in the manifest
    outputs: ClassVar[tuple[str, ...]] = ()
    # run every time, never reused (cheap, and must match this run: the outputs, the report)
    always_runs: ClassVar[bool] = False

    @abstractmethod
    def fingerprint(self, ctx: RunContext) -> str:
        """A digest of everything the stage's output depends on (upstream fingerprints via
        :meth:`RunContext.fp`, its settings); a finished output with the same one is reused."""

    @abstractmethod
    def run(self, ctx: RunContext) -> dict[str, Any]:
        """Compute and persist the output; return the stage's record."""

    def settings_part(self, cfg: RunConfig) -> dict[str, Any]:
        """The values of the settings that decide the stage's output (for its fingerprint)."""
        parts: dict[str, Any] = {"seed": cfg.seed}
        for key, section in self.settings.items():
            parts[key] = section.of(cfg)
        return parts

    def manifest_part(self, record: dict[str, Any]) -> dict[str, Any]:
        """What the stage puts at the manifest's top level, from its record (its full record is
        under ``stages`` anyway)."""
        return {}

    def summary(self, manifest: dict[str, Any]) -> list[str]:
        """The stage's lines in the CLI's summary of a finished run (from its manifest)."""
        return []

    def verify(self, ctx: RunContext) -> str | None:
        """Before reuse, beyond the digests of the files as written: what is wrong with the
        finished output, or None."""
        return None

    def load(self, ctx: RunContext) -> Any:
        """The stage's product for later stages, once it has run or been reused."""
        return None


@dataclass
class RunContext:
    """What the stages of one run share: the settings, the stage store, stop and progress, the
    finished stages' fingerprints, records and products, and the cluster's shard actors (opened
    on first use, after the vectors exist; a run whose vector stages are all reused opens none)."""

    cfg: RunConfig
    out: Path
    store: StageStore
    stop: threading.Event
    sink: Callable[[str, int, int], None] | None = None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    fps: dict[str, str] = field(default_factory=dict)
    products: dict[str, Any] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    no_gpu: dict[str, str] = field(default_factory=dict)  # stage -> why it ran on CPU though --device cuda asked for a GPU
    asked_gpu: bool = False  # an autoscaler request for a GPU node is out (ray_session.ensure_gpus)
    _gpu_wait_failed: bool = False  # --device cuda waited once for a GPU node in vain: never again
    stages: tuple[Stage, ...] = ()  # the pipeline's stages, in order
    ray: dict[str, Any] = field(default_factory=dict)  # how the run reached Ray (``ray_session.Connection.record``)
    grown_run: Grown | None = None  # an update's: the finished run it grows (``grown.load_grown``)
    _shards: ActorShards | None = None
    _result: Path | None = None
    _plan: ray_session.Plan | None = None

    @property
    def outputs(self) -> tuple[str, ...]:
        """What the pipeline's stages write into OUT (each stage's ``outputs``)."""
        return tuple(name for stage in self.stages for name in stage.outputs)

    @property
    def gpu_stages(self) -> tuple[str, ...]:
        """The pipeline's stages that may use a GPU (each stage's ``uses_gpu``)."""
        return tuple(stage.name for stage in self.stages if stage.uses_gpu)

    @property
    def grown(self) -> Grown:
        """The run an update grows (its stages' base); a run has none."""
        if self.grown_run is None:
            raise RuntimeError("only an update's stages read the run it grows")
        return self.grown_run

    @property
    def result_dir(self) -> Path:
        """The generation this run (or update) writes its outputs into; published at its end
        (``state.publish``), so no reader ever meets half of them."""
        if self._result is None:
            self._result = new_result(self.out)
        return self._result

    def control(self, stage: str) -> StageControl:
        return StageControl(stage, self.sink, self.stop)

    def fp(self, stage: str) -> str:
        """The fingerprint of an earlier stage of this run."""
        return self.fps[stage]

    def product(self, stage: str) -> Any:
        """What an earlier stage handed on (:meth:`Stage.load`)."""
        return self.products[stage]

    def manifest(self) -> dict[str, Any]:
        """The manifest as the stages recorded so far make it (the driver writes it at the end; a
        stage that shows the run, as the report does, reads it here)."""
        versions = {}
        for name in PACKAGES:
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        manifest = build_manifest(
            public_config(self.cfg),
            versions,
            dict(self.records),
            {key: v for stage in self.stages if stage.name in self.records for key, v in stage.manifest_part(self.records[stage.name]).items()},
            self.product("select_k"),
            len(self.product("label").themes),
            self.product("write"),
            self.product("read").corpus.bad,
            self.cfg.read.max_bad_examples,
            ["manifest.json", *(name for name in self.outputs if ((self.result_dir if name in RESULT_FILES else self.out) / name).exists())],
        )
        manifest["driver_peak_rss_bytes"] = peak_rss_bytes()
        if self.ray:
            manifest["ray"] = self.ray
        return manifest

    def docs(self) -> DocStore:
        """The documents as the read stage stored them (``docs.parquet``)."""
        from .read import Read  # noqa: PLC0415  (read imports this module)

        return DocStore(Read.docs_path(self.store))

    def gather(
        self, submits: dict[Any, Callable[[], Any]], control: StageControl, window: int | None = None, fold: Callable[[Any, Any], None] | None = None
    ) -> dict[Any, Any]:
        """Results of Ray tasks, with retries and exponential backoff for lost ones (counted in
        the stage's record as ``task_retries``); ``window``: at most that many in flight (tasks
        whose arguments the driver ships: texts, pairs); ``fold``: results combined as they land
        (``cluster.runtime.gather.gather``)."""
        rc = self.cfg.ray
        stage = control.stage

        def count(_key: Any, _attempt: int, _exc: BaseException) -> None:
            self.retries[stage] = self.retries.get(stage, 0) + 1

        return gather(submits, control, Backoff(rc.task_attempts, rc.retry_backoff_s), on_retry=count, window=window, fold=fold)

    def ensure_gpus(self, stages: tuple[str, ...], control: StageControl) -> None:
        """Before planning actors for ``stages``: with ``--device cuda`` and no GPU in the cluster,
        ask the autoscaler for a GPU node and wait for it (``ray.scale_wait_s``); if none comes,
        the stages run on CPU and their records say why (a fall-back)."""
        cfg = self.cfg
        if cfg.device != "cuda":
            return
        if ray_session.cluster_gpus() == 0 and not self._gpu_wait_failed and cfg.ray.scale_wait_s > 0:
            self.asked_gpu = True
        wait_s = 0.0 if self._gpu_wait_failed else cfg.ray.scale_wait_s
        if ray_session.ensure_gpus(cfg.device, wait_s, control):
            return
        self._gpu_wait_failed = True
        reason = f"device cuda: the cluster has no GPU and none joined within {cfg.ray.scale_wait_s:g} s (ray.scale_wait_s)"
        for stage in stages:
            self.no_gpu[stage] = reason

    # ------------------------------------------------------------------ shard actors
    @property
    def shards(self) -> ActorShards:
        """The vectors' blocks held by shard actors (k-means, sampling, duplicate routing)."""
        return self._opened()[0]

    @property
    def plan(self) -> ray_session.Plan:
        """The actor and task resources for the vectors (shards, tasks' GPUs)."""
        return self._opened()[1]

    def _opened(self) -> tuple[ActorShards, ray_session.Plan]:
        if self._shards is None or self._plan is None:
            cfg = self.cfg
            vectors: VectorParts = self.product("embed")  # each shard actor reads its own rows of it
            self.ensure_gpus(self.gpu_stages, self.control("kmeans"))
            plan = ray_session.plan(vectors.shape[0], cfg.embed, cfg.ray.shards, dim=vectors.shape[1], device=cfg.device)
            self._shards = ActorShards(
                vectors,
                plan.shards,
                device=cfg.device,
                batch_rows=cfg.kmeans.batch_rows,
                threads=plan.shard_threads,
                num_gpus=plan.shard_resources.gpus,
                memory=plan.shard_resources.memory,
            )
            self._plan = plan
        return self._shards, self._plan

    def close(self) -> None:
        """Stop what the run started on the cluster (shard actors, a GPU request)."""
        if self._shards is not None:
            self._shards.close()
            self._shards = None
        if self.asked_gpu:
            ray_session.release_gpu_request()  # the GPU node may go once idle
