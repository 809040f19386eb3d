"""The read's shuffle by key (engine/readparts.py), its steps run one after another here as the
read stage's tasks run them: the same corpus as one reader in input order (CorpusBuilder), for
duplicate ids and exact duplicates anywhere across the pieces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from theme_engine.engine.corpus import CorpusBuilder, InputFile, ReadTask, parse_file, plan_read_tasks, prepare_records
from theme_engine.engine.readparts import finish_piece, first_ids, first_keys, group_tasks, stage_piece


def _inputs(tmp_path: Path, seed: int) -> list[InputFile]:
    """Three JSONL files of random records: ids and texts drawn from small pools (repeats across
    files), some texts too short for the filter, some lines bad."""
    rng = np.random.default_rng(seed)
    files = []
    for f in range(3):
        lines = []
        for _ in range(int(rng.integers(40, 120))):
            r = rng.random()
            if r < 0.03:
                lines.append("{broken")
                continue
            text = "x" if r < 0.08 else f"text number {int(rng.integers(0, 60))} of the pool"
            if rng.random() < 0.3:
                text = text.upper()  # the same key
            lines.append(json.dumps({"id": f"i{int(rng.integers(0, 150))}", "text": text}))
        path = tmp_path / f"f{f}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        files.append(InputFile(path, "jsonl", path.name))
    return files


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk", [300, 2000])
def test_the_shuffle_gives_the_corpus_of_one_reader(tmp_path: Path, seed: int, chunk: int) -> None:
    files = _inputs(tmp_path, seed)
    pieces = group_tasks(files, plan_read_tasks(files, chunk), chunk)
    assert len(pieces) >= 3
    n, buckets = len(pieces), min(len(pieces), 4)
    staged = [tmp_path / f"staged-{p}.parquet" for p in range(n)]
    maps = [stage_piece(files, pieces[p], ("text", "id"), (3, 10_000), p, staged[p], buckets) for p in range(n)]
    found = [first_ids([maps[p][1][b] for p in range(n)]) for b in range(buckets)]
    dropped: dict[int, list[int]] = {}
    bad = [(p, b["seq"], b["source"], b["error"]) for p in range(n) for b in maps[p][0]["bad"]]
    for f in found:
        bad.extend(zip(f["piece"].tolist(), f["seq"].tolist(), f["source"], f["error"]))
        for p, r in zip(f["piece"].tolist(), f["row"].tolist()):
            dropped.setdefault(p, []).append(r)
    drops = {p: np.sort(np.asarray(r, dtype=np.int64)) for p, r in dropped.items()}
    kept = [maps[p][0]["documents"] - len(drops.get(p, ())) for p in range(n)]
    offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
    exact = [first_keys([maps[p][2][b] for p in range(n)], drops, offsets, tmp_path / f"keys-{b}.npz") for b in range(buckets)]
    counts: dict[str, int] = {}
    for p in range(n):
        for k, v in finish_piece(staged[p], drops.get(p, np.zeros(0, np.int64)), [e[p] for e in exact], tmp_path / f"part-{p}.parquet").items():
            counts[k] = counts.get(k, 0) + v
    got = pa.concat_tables([pq.read_table(tmp_path / f"part-{p}.parquet") for p in range(n)]).to_pydict()

    builder = CorpusBuilder()
    want = {c: [] for c in got}
    for f in files:
        rows = builder.add(prepare_records(parse_file(f, f.path.read_bytes(), "text", "id"), 3, 10_000))
        for c in want:
            want[c].extend(rows[c])
    assert got == want
    assert [{"source": s, "error": e} for _, _, s, e in sorted(bad, key=lambda b: (b[0], b[1]))] == builder.bad
    assert counts == builder.counts and "exact_duplicate" in counts and any("duplicate id" in b["error"] for b in builder.bad)
    keys = {}
    for b in range(buckets):
        with np.load(tmp_path / f"keys-{b}.npz") as data:
            keys.update(zip((k.decode() for k in data["key"].tolist()), data["row"].tolist()))
    assert keys == builder.first_rows()


def test_small_files_go_together_into_pieces(tmp_path: Path) -> None:
    files = []
    for i in range(10):
        path = tmp_path / f"{i}.txt"
        path.write_text("one document of a hundred bytes or so, " * 2)
        files.append(InputFile(path, "text", path.name))
    tasks = [ReadTask(i) for i in range(10)]
    assert [len(p) for p in group_tasks(files, tasks, 350)] == [4, 4, 2]
    assert [len(p) for p in group_tasks(files, tasks, 10_000)] == [10]
