"""Publishing a result's datasets to an object store from the Ray workers: the parts of
``documents.parquet`` and ``duplicates.parquet`` are uploaded by tasks that read them from the
local copy where they run, so the bytes of a large result do not pass through the driver."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable

from theme_engine.actors.tasks import upload_files_task
from theme_engine.engine.minhash import length_blocks

# the bytes of a dataset's parts one upload task publishes (a part is a few MB to a few hundred)
UPLOAD_GROUP_BYTES = 256 * 2**20


def parts_by_tasks(
    base: Path, url: str, sizes: list[int], run: Callable[[dict[int, Callable[[], Any]]], dict[int, Any]], group_bytes: int = UPLOAD_GROUP_BYTES
) -> Callable[[list[str]], int]:
    """The ``copy_parts`` of ``engine.sources.upload_result``: the parts (paths relative to
    ``base``) in groups of about ``group_bytes``, one Ray task each, run by ``run`` (a gather:
    submits by key → results by key); each task's bytes are appended to ``sizes``."""

    def copy(names: list[str]) -> int:
        bounds = length_blocks([(base / name).stat().st_size for name in names], group_bytes)
        groups = [names[a:b] for a, b in bounds if b > a]
        got = run({i: partial(upload_files_task.remote, base, url, group) for i, group in enumerate(groups)})
        sizes.extend(got.values())
        return sum(got.values())

    return copy
