"""The whole job through the shard actors on fake-GPU nodes, before any GPU is lent (issue 31).

Two worker nodes declare one GPU each and import the stand-ins in ``gpu_standins/`` (a cupy whose
namespace is array-api-strict, a faiss with GPU classes over the CPU index). The engine's device
choice accepts them, so the GPU branches of the k-means shards, the partition search tasks and the
MinHash tasks (over long texts) run end to end on the hyperscale data path (vectors saved as parts by the
embedding actors, index and map built by tasks, outputs as parts, candidate pairs capped and screened by
tasks); the embedding really falls back to the CPU
(onnxruntime here has no CUDA provider) and says why. The same job on ``--device cpu`` on the same
cluster, its candidate pairs capped and screened in the driver, gives the same themes and duplicates."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from raylocal import driver_only_head  # tests/cluster/raylocal.py

pytestmark = pytest.mark.slow

STANDINS = Path(__file__).parent / "gpu_standins"


@pytest.fixture(scope="module")
def fake_gpu_cluster():
    """A head with no CPUs (the driver's node) and two 2-CPU nodes with one fake GPU each."""
    import ray

    pytest.importorskip("array_api_strict")
    if ray.is_initialized():
        ray.shutdown()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    c = driver_only_head("te-fg-")
    pythonpath = os.pathsep.join(p for p in (str(STANDINS), os.environ.get("PYTHONPATH", "")) if p)
    for _ in range(2):
        c.add_node(num_cpus=2, num_gpus=1, object_store_memory=200 * 1024 * 1024, env_vars={"PYTHONPATH": pythonpath})
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def corpus_with_long_texts(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The verses plus three texts far past the model's window: a chapter, the same chapter under
    another header and footer (a near-duplicate only its whole text shows), and another chapter
    that shares the first one's opening (not a duplicate)."""
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    texts = [r["text"] for r in rows]
    chapter = " ".join(texts[:60])
    other = " ".join(texts[:8] + texts[120:180])
    rows += [
        {"id": "long:a", "text": chapter},
        {"id": "long:a-copy", "text": "Reprinted from the parish newsletter. " + chapter + " Copies may be shared freely."},
        {"id": "long:b", "text": other},
    ]
    path = tmp_path_factory.mktemp("long") / "texts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _job(make_config, corpus: Path, out: Path, cache: Path, device: str, tasks: bool):
    from theme_engine.cluster.runtime.driver import run

    cfg = make_config(
        [corpus],
        out,
        cache,
        device=device,
        read={"id_field": "id"},
        kmeans={"k": 4, "max_iter": 20},
        embed={"batch_size": 32, "workers_from": 0 if tasks else 100_000},
        ray={"shards": 2},
        dedup={"partitions": 6, "tasks_from": 0 if tasks else 100_000},
        label={"tasks_from": 0 if tasks else 100_000},
        index={"task_from": 0},
        layout={"task_from": 0},
        output={"form": "parts"},
    )
    return run(cfg)


def test_whole_job_on_the_gpu_branch_equals_the_cpu_job(fake_gpu_cluster, corpus_with_long_texts: Path, make_config, tmp_path: Path, monkeypatch) -> None:
    from theme_engine.cluster.commands.api import Result
    from theme_engine.cluster.runtime.stages import embed as embed_stage

    monkeypatch.setattr(embed_stage, "PART_DOCS", 100)  # several ranges for the embedding actors

    # the GPU job caps and screens the candidate pairs and counts the keywords' terms in tasks, the
    # CPU job in the driver: the same pairs and keywords
    gpu = _job(make_config, corpus_with_long_texts, tmp_path / "gpu", tmp_path / "cache", "auto", True)
    stages = gpu.manifest["stages"]
    # the GPU branch served k-means (every shard) and the duplicate search (every partition task)
    assert stages["kmeans"]["device"] == "cuda:0" and "fallbacks" not in stages["kmeans"], stages["kmeans"]
    assert stages["kmeans"]["shard_nodes"] == 2
    assert stages["dedup"]["device"] == "cuda:0" and "fallbacks" not in stages["dedup"], stages["dedup"]
    assert stages["dedup"]["method"] == "partitioned" and stages["dedup"]["buckets"] >= 2
    assert stages["dedup"]["whole_text"]["fuzzy_device"] == "cuda:0", stages["dedup"]  # MinHash over the long texts
    assert stages["index"]["built_by"] == "task" and stages["layout"]["built_by"] == "task"
    # the embedding actors (on the GPU nodes) read the texts and saved the vectors themselves; they
    # asked for the GPU and say why the CPU served them
    assert stages["embed"]["written_by"] == "embedding actors" and stages["embed"]["parts"] >= 2
    assert stages["embed"]["device"] == "cpu"
    assert any("CUDAExecutionProvider" in f["reason"] for f in stages["embed"]["fallbacks"]), stages["embed"]
    assert {f["stage"] for f in gpu.manifest["gpu_fallbacks"]} == {"embed"}

    assert stages["label"]["counted_by"] == "tasks"
    cpu = _job(make_config, corpus_with_long_texts, tmp_path / "cpu", tmp_path / "cache", "cpu", False)
    assert cpu.manifest["stages"]["label"]["counted_by"] == "driver"
    assert cpu.manifest["cache"]["misses"] == 0  # the GPU job's actors filled the cache through its owner
    assert cpu.manifest["stages"]["kmeans"]["device"] == "cpu" and "buckets" not in cpu.manifest["stages"]["dedup"]
    for key in ("candidate_pairs", "lexical_checked", "lexical_compared", "near_pairs", "lexical_pairs"):
        assert cpu.manifest["stages"]["dedup"][key] == stages["dedup"][key], key
    assert cpu.manifest["k"] == gpu.manifest["k"] == 4
    a, b = (Result.load(tmp_path / name) for name in ("gpu", "cpu"))
    docs_a, docs_b = (r.documents.sort_values("id", ignore_index=True) for r in (a, b))
    assert len(docs_a) == len(docs_b) == cpu.manifest["stages"]["read"]["documents"]
    assert (docs_a["theme"] == docs_b["theme"]).all()
    key = ["id", "duplicate_of"]
    dup_a, dup_b = (sorted(map(tuple, r.duplicates[key].to_numpy().tolist())) for r in (a, b))
    assert len(dup_a) >= 30 and dup_a == dup_b  # the ASV translations of KJV verses among them
    dups = dict(zip(a.duplicates["id"], a.duplicates["duplicate_of"]))
    assert dups.get("long:a-copy") == "long:a" and "long:b" not in dups
    assert a.themes["label"].tolist() == b.themes["label"].tolist()
    assert a.themes["keywords"].tolist() == b.themes["keywords"].tolist()
