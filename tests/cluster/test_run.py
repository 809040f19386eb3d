"""The whole job through Ray on small real data: outputs, bad input, cache, resume, vector input."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from theme_engine.cluster.commands import cli
from theme_engine.cluster.runtime.driver import RunError, run
from theme_engine.engine.events import Interrupted
from theme_engine.engine.output import read_themes

STAGES = ["read", "embed", "select_k", "kmeans", "dedup", "label", "layout", "write", "index", "report"]


def _docs(out: Path) -> dict:
    return pq.read_table(out / "documents.parquet").to_pydict()


def test_whole_job_on_real_verses(ray_session, make_config, corpus: Path, tmp_path: Path) -> None:
    cfg = make_config([corpus], tmp_path / "out", tmp_path / "cache", read={"id_field": "id"})
    result = run(cfg)
    out = tmp_path / "out"
    m = json.loads((out / "manifest.json").read_text())
    assert list(m["stages"]) == STAGES
    for stage in STAGES:
        assert m["stages"][stage]["seconds"] >= 0
        assert "device" in m["stages"][stage]
    n_input = len(corpus.read_text().splitlines())
    docs = _docs(out)
    assert len(docs["id"]) == n_input
    assert set(docs) >= {"id", "theme", "distance", "duplicate_of", "kept"}
    # k chosen automatically, with the criterion and the candidates' scores recorded
    sk = m["select_k"]
    assert sk["criterion"].startswith("modularity") and sk["reason"]
    assert len(sk["candidates"]) >= 3 and all(len(c["modularities"]) == sk["repeats"] for c in sk["candidates"])
    assert sk["range"][0] <= m["k"] <= sk["range"][1] and isinstance(sk["structure"], bool)
    assert sk["not_converged"] >= 0 and sk["reference_modularity"] is not None
    # labels: the first keyword's lift per theme, and its median in the manifest
    assert m["label_lift"]["median"] is None or m["label_lift"]["median"] >= 1.0
    assert m["kmeans"]["iterations"] >= 1 and m["kmeans"]["inertia"] > 0
    themes, hierarchy = read_themes(out)
    assert themes == result.themes and len(hierarchy) == len(themes) - 1
    assert sum(t["size"] for t in themes) == sum(1 for t in docs["theme"] if t is not None)
    for t in themes:
        assert set(t) >= {"theme", "label", "keywords", "size", "representatives"}
        assert t["keywords"] and t["label"]
        assert set(t["representatives"]) <= set(docs["id"])
    # the same verse in KJV and ASV is found as a near-duplicate for most planted pairs
    dups = pq.read_table(out / "duplicates.parquet").to_pydict()
    found = {frozenset(p) for p in zip(dups["id"], dups["duplicate_of"])}
    planted = {frozenset({i, "kjv:" + i.split(":", 1)[1]}) for i in docs["id"] if i.startswith("asv:")}
    assert len(found & planted) >= 0.6 * len(planted)
    dc = cfg.dedup
    assert all(s >= (dc.threshold if k != "lexical" else dc.candidate_threshold) for s, k in zip(dups["similarity"], dups["kind"]))
    kept_ids = {i for i, k in zip(docs["id"], docs["kept"]) if k}
    assert set(dups["duplicate_of"]) <= kept_ids
    assert m["cache"] == {"hits": 0, "misses": m["stages"]["embed"]["documents"], "invalid": 0, "enabled": True}
    # peak memory: the driver's, each shard actor's and each embedding actor's
    assert m["driver_peak_rss_bytes"] > 50 * 2**20
    km = m["stages"]["kmeans"]
    assert len(km["shard_peak_rss_bytes"]) == km["shards"] and min(km["shard_peak_rss_bytes"]) > 10 * 2**20
    assert m["stages"]["embed"]["actor_peak_rss_bytes"] and min(m["stages"]["embed"]["actor_peak_rss_bytes"]) > 50 * 2**20
    # one node, the driver's: the driver embeds, as its one actor would, without the actor's start
    pool = m["stages"]["embed"]["pool"]
    assert pool["in_driver"] is True and pool["actors"] == 0 and pool["threads_per_actor"] == 2


def test_one_node_embeds_in_the_driver_unless_actors_are_asked_for(ray_session, make_config, corpus: Path, tmp_path: Path, monkeypatch) -> None:
    """One node embeds in the driver unless actors are asked for, with the same vectors. From
    embed.workers_from documents the embedding actors read the stored texts, ask the cache (a local
    folder: through its owner actor) and save the vectors as parts: the same vectors again."""
    from theme_engine.cluster.runtime.ray_session import plan
    from theme_engine.cluster.runtime.stages import embed as embed_stage
    from theme_engine.engine.config import EmbedConfig
    from theme_engine.engine.vectors import VectorParts
    from tests.conftest import split_corpus

    monkeypatch.setattr(embed_stage, "PART_DOCS", 64)  # several ranges (the driver deals them)
    split = split_corpus(corpus, tmp_path)
    over = {"kmeans": {"k": 4}, "read": {"id_field": "id"}}
    assert plan(1_000, EmbedConfig()).embed_in_driver
    assert not plan(1_000, EmbedConfig(actors=1)).embed_in_driver
    assert not plan(1_000, EmbedConfig(), max_embed_actors=4).embed_in_driver
    ref = run(make_config([split["base"]], tmp_path / "ref", tmp_path / "c0", **over))
    assert ref.manifest["stages"]["embed"]["pool"]["in_driver"] is True and "written_by" not in ref.manifest["stages"]["embed"]
    n = ref.manifest["stages"]["embed"]["documents"]
    vref = np.load(tmp_path / "ref" / ".theme-engine" / "embed" / "vectors.npy")
    actors = run(make_config([split["base"]], tmp_path / "o", tmp_path / "c-o", embed={"actors": 1}, **over))
    pool = actors.manifest["stages"]["embed"]["pool"]
    assert pool["in_driver"] is False and pool["actors"] == 1 and pool["first_actor_ready_seconds"] > 0
    assert np.array_equal(np.load(tmp_path / "o" / ".theme-engine" / "embed" / "vectors.npy"), vref)  # the same batches, the same vectors
    # (the driver's only node runs the same ranges itself: test_a_file_larger_than_a_read_chunk_streams_in_pieces)
    res = run(make_config([split["base"]], tmp_path / "a", tmp_path / "c-a", embed={"workers_from": 0, "actors": 2}, **over))
    e = res.manifest["stages"]["embed"]
    assert e["written_by"] == "embedding actors" and e["pool"]["in_driver"] is False
    assert e["parts"] == -(-res.manifest["stages"]["read"]["documents"] // 64) and e["documents"] == n
    assert e["cache"]["misses"] == e["embedded"] == n and e["long_texts"]["tokens"] > 0
    stored = tmp_path / "a" / ".theme-engine" / "embed"
    assert not (stored / "vectors.npy").exists()
    np.testing.assert_allclose(np.asarray(VectorParts.open(stored / "vectors")), vref, atol=2e-6)
    assert _docs(tmp_path / "a")["theme"] == _docs(tmp_path / "ref")["theme"]
    # the owner actor filled the cache folder, and let it go: every embedded text is found there
    from theme_engine.engine.cache import EdgeCache, text_key
    from theme_engine.engine.docstore import DocStore
    from theme_engine.engine.embedding import configured_model
    from theme_engine.engine.windows import TextWindows

    ec = EmbedConfig()
    spec = configured_model(ec, tmp_path / "c-a")
    windows = TextWindows.for_model(spec, ec.window_overlap, ec.max_windows)
    docs = DocStore(tmp_path / "a" / ".theme-engine" / "read" / "docs.parquet")
    texts = [t for _, batch in docs.iter_texts(docs.load_corpus([]).unique) for t in batch]
    cache = EdgeCache(tmp_path / "c-a" / f"embeddings-{spec.dim}d", spec.dim)
    found, vectors = cache.get([text_key(spec.model_id, t, windows) for t in texts])
    cache.close()
    assert found.all() and np.allclose(vectors, vref, atol=2e-6)


def test_second_run_hits_cache_and_rerun_reuses_stages(ray_session, make_config, corpus: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = run(make_config([corpus], tmp_path / "a", cache, kmeans={"k": 4}))
    embedded = first.manifest["stages"]["embed"]["documents"]
    assert first.manifest["cache"]["misses"] == embedded
    second = run(make_config([corpus], tmp_path / "b", cache, kmeans={"k": 4}))  # another output dir
    assert second.manifest["cache"]["hits"] == embedded
    assert second.manifest["cache"]["misses"] == 0
    assert second.manifest["stages"]["embed"]["embedded"] == 0
    assert _docs(tmp_path / "a")["theme"] == _docs(tmp_path / "b")["theme"]
    again = run(make_config([corpus], tmp_path / "b", cache, kmeans={"k": 4}))  # same output dir
    for stage in ["read", "embed", "select_k", "kmeans", "dedup", "label"]:
        assert again.manifest["stages"][stage].get("reused") is True
    # a lost part of the candidate cosines an update would count: the dedup stage runs again
    top = tmp_path / "b" / ".theme-engine" / "dedup" / "candidate_top" / "part-00000.npz"
    top.unlink()
    repaired = run(make_config([corpus], tmp_path / "b", cache, kmeans={"k": 4}))
    assert not repaired.manifest["stages"]["dedup"].get("reused") and repaired.manifest["stages"]["label"].get("reused") is True
    assert top.is_file()
    changed = run(make_config([corpus], tmp_path / "b", cache, kmeans={"k": 5}))
    assert changed.manifest["stages"]["embed"].get("reused") is True
    assert not changed.manifest["stages"]["kmeans"].get("reused")
    assert changed.manifest["k"] == 5


def test_choice_of_k_widens_an_edge_and_keeps_candidate_fits_internal(
    ray_session, make_config, corpus: Path, tmp_path: Path, caplog, recwarn
) -> None:
    cache = tmp_path / "cache"
    # a range of [2, 3] on ~250 verses of many books: the top wins, so the run widens it once
    with caplog.at_level("INFO"):
        res = run(make_config([corpus], tmp_path / "m", cache, select_k={"k_max": 3, "repeats": 2}))
    sk = res.manifest["select_k"]
    assert sk["widened"] is not None and sk["widened"]["from"] == [2, 3] and sk["range"] == sk["widened"]["to"]
    assert sk["range"][1] > 3 and {c["k"] for c in sk["candidates"]} >= {2, 3, sk["range"][1]}
    assert any("widened the range" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if "did not converge" in r.getMessage()]
    assert not [w for w in recwarn if "converge" in str(w.message)]
    # the earlier silhouette rule stays available, recorded the same way
    sil = run(make_config([corpus], tmp_path / "s", cache, select_k={"criterion": "silhouette", "repeats": 1, "candidates": 3}))
    rec = sil.manifest["select_k"]
    assert rec["criterion"].startswith("silhouette") and len(rec["candidates"]) >= 3
    assert rec["range"][0] <= sil.manifest["k"] <= rec["range"][1]
    assert all("silhouette" in c and "not_converged" in c for c in rec["candidates"])


def _stopping_sink(stage: str, after: int, stop: threading.Event):
    def sink(s: str, done: int, total: int) -> None:
        if s == stage and done >= after:
            stop.set()

    return sink


def test_resume_after_interruption_in_kmeans(ray_session, make_config, corpus: Path, tmp_path: Path) -> None:
    over = {"kmeans": {"k": 6, "tol": 0.0, "max_iter": 12, "checkpoint_every": 1}}
    reference = run(make_config([corpus], tmp_path / "ref", tmp_path / "cache", **over))
    stop = threading.Event()
    with pytest.raises(Interrupted):
        run(make_config([corpus], tmp_path / "out", tmp_path / "cache", **over), stop=stop, sink=_stopping_sink("kmeans", 3, stop))
    assert not (tmp_path / "out" / "manifest.json").exists()
    resumed = run(make_config([corpus], tmp_path / "out", tmp_path / "cache", **over))
    assert resumed.manifest["stages"]["embed"].get("reused") is True
    assert resumed.manifest["kmeans"]["iterations"] == reference.manifest["kmeans"]["iterations"]
    assert _docs(tmp_path / "out")["theme"] == _docs(tmp_path / "ref")["theme"]


def test_resume_after_interruption_in_embed(ray_session, make_config, corpus: Path, tmp_path: Path) -> None:
    stop = threading.Event()
    over = {"kmeans": {"k": 3}, "embed": {"batch_size": 16}}
    with pytest.raises(Interrupted):
        run(make_config([corpus], tmp_path / "out", tmp_path / "cache", **over), stop=stop, sink=_stopping_sink("embed", 1, stop))
    resumed = run(make_config([corpus], tmp_path / "out", tmp_path / "cache", **over))
    cache = resumed.manifest["cache"]
    assert cache["hits"] > 0, "what was embedded before the stop must come from the cache"
    assert cache["misses"] > 0, "the stop came before everything was embedded"
    assert cache["hits"] + cache["misses"] == resumed.manifest["stages"]["embed"]["documents"]


def test_bad_records_are_counted_and_named(ray_session, make_config, tmp_path: Path) -> None:
    good = [
        {"id": f"d{i}", "text": t}
        for i, t in enumerate(
            [
                "Central bank raises interest rates to fight persistent inflation.",
                "The striker scored twice as the team won the league title.",
                "Investors fear higher rates will slow growth next year.",
                "The goalkeeper made a stunning save in the final minute.",
            ]
        )
    ]
    lines = [json.dumps(good[0]), "{not json", json.dumps(good[1]), json.dumps({"id": "x", "text": 7}),
             json.dumps(good[2]), json.dumps({"id": "y"}), json.dumps(good[3]), json.dumps({"id": "z", "text": "  "})]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "w", "text": "caf\xe9 au lait in bad bytes"}\n')
    result = run(make_config([path], tmp_path / "out", tmp_path / "cache", read={"id_field": "id"}, kmeans={"k": 2}))
    bad = result.manifest["bad_records"]
    assert bad["count"] == 4
    sources = {b["source"] for b in bad["examples"]}
    assert sources == {"mixed.jsonl:2", "mixed.jsonl:4", "mixed.jsonl:6", "mixed.jsonl:9"}
    assert any("invalid JSON" in b["error"] for b in bad["examples"])
    assert any("undecodable" in b["error"] for b in bad["examples"])
    docs = _docs(tmp_path / "out")
    assert docs["id"] == ["d0", "d1", "d2", "d3", "z"]
    assert docs["kept"][-1] is False  # whitespace-only: filtered


def test_nothing_usable_is_a_clear_error(ray_session, make_config, tmp_path: Path, capsys, caplog) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text("{oops\n[1, 2]\n")
    with pytest.raises(RunError, match="nothing usable in broken.jsonl"):
        run(make_config([path], tmp_path / "out", tmp_path / "cache"))
    code = cli.main(["run", str(path), "--out", str(tmp_path / "out2"), "--cache-dir", str(tmp_path / "cache")])
    assert code != 0
    assert "nothing usable" in caplog.text and "broken.jsonl:1" in caplog.text
    assert "Traceback" not in capsys.readouterr().err
    assert cli.main(["run", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o3")]) == 2
    assert "no such file" in caplog.text


def test_precomputed_vectors_npy_and_parquet(ray_session, make_config, tmp_path: Path) -> None:
    from sklearn.datasets import make_blobs
    from sklearn.metrics import adjusted_rand_score

    X, y = make_blobs(n_samples=600, n_features=16, centers=4, cluster_std=0.5, random_state=3)
    X = X.astype(np.float32)
    X[7] = X[3] * 2.0  # the same direction: a near-duplicate once normalised
    np.save(tmp_path / "vecs.npy", X)
    exact = {"threshold": 0.9999}
    result = run(make_config([tmp_path / "vecs.npy"], tmp_path / "out", tmp_path / "cache", kmeans={"k": 4}, dedup=exact))
    m = result.manifest
    assert m["stages"]["embed"]["skipped"] == "precomputed vectors"
    docs = _docs(tmp_path / "out")
    assert docs["id"] == [str(i) for i in range(600)]
    assert adjusted_rand_score(y, docs["theme"]) > 0.95
    assert [t["label"] for t in result.themes] == [f"theme {i}" for i in range(len(result.themes))]
    assert docs["duplicate_of"][7] == "3"

    table = pa.table({"doc": [f"v{i}" for i in range(600)], "vector": [row.tolist() for row in X]})
    pq.write_table(table, tmp_path / "vecs.parquet")
    cfg = make_config([tmp_path / "vecs.parquet"], tmp_path / "out2", tmp_path / "cache", kmeans={"k": 4}, read={"id_field": "doc"}, dedup=exact)
    run(cfg)
    docs2 = _docs(tmp_path / "out2")
    assert docs2["id"][:2] == ["v0", "v1"]
    assert adjusted_rand_score(docs["theme"], docs2["theme"]) == pytest.approx(1.0)


def test_cli_help_documents_every_option(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = capsys.readouterr().out
    for flag in ["--out", "--k", "--text-field", "--id-field", "--dup-threshold", "--seed", "--address",
                 "--qdrant-url", "--cache-dir", "--config", "kmeans.max_iter", "THEME_ENGINE_DEDUP__THRESHOLD"]:
        assert flag in text


def test_partitioned_dedup_equals_all_pairs(ray_session, make_config, corpus: Path, tmp_path: Path) -> None:
    """The default (partitioned, exact margin) finds exactly the pairs of the all-pairs search —
    the cosine pairs; candidates below the threshold are exact too with a margin safe for them."""
    found = {}
    for method in ("partitioned", "all_pairs"):
        # a margin safe for the candidate threshold 0.6: sqrt(2 - 1.2) / 2
        over = {"kmeans": {"k": 4}, "ray": {"shards": 3}, "dedup": {"method": method, "threshold": 0.8, "margin": 0.4473}}
        result = run(make_config([corpus], tmp_path / method, tmp_path / "cache", **over))
        dd = result.manifest["dedup"]
        assert dd["method"] == method and dd["exact"] is True
        dups = pq.read_table(tmp_path / method / "duplicates.parquet").to_pydict()
        found[method] = (set(zip(dups["id"], dups["duplicate_of"])), dd["pairs"])
    assert found["partitioned"] == found["all_pairs"]
    assert found["all_pairs"][1] > 30  # a threshold low enough for pairs to straddle partitions


def test_text_comparisons_on_ray_tasks_equal_the_driver(ray_session, make_config, corpus: Path, tmp_path: Path, monkeypatch) -> None:
    """The lexical rule's text comparisons, spread over Ray tasks, give the driver's answers:
    the same pairs, kinds and edits."""
    from theme_engine.cluster.runtime.stages import dedup as dedup_stage

    got = {}
    for chunk in (10**9, 3):
        monkeypatch.setattr(dedup_stage, "EDIT_CHUNK", chunk)
        result = run(make_config([corpus], tmp_path / str(chunk), tmp_path / "cache", kmeans={"k": 4}))
        got[chunk] = (pq.read_table(tmp_path / str(chunk) / "duplicates.parquet").to_pydict(), result.manifest["dedup"]["lexical_tasks"])
    assert got[10**9][1] == 0 and got[3][1] >= 2
    assert len(got[3][0]["id"]) >= 30 and any(e is not None for e in got[3][0]["edits"])
    assert got[3][0] == got[10**9][0]


def test_plan_sizes_shards_to_node_memory(ray_session) -> None:
    """Shards are cut so that each fits in half of a node's memory, and each asks Ray for it."""
    import ray

    from theme_engine.cluster.runtime.ray_session import plan, shard_memory
    from theme_engine.engine.config import EmbedConfig

    node_mem = max(int(n["Resources"].get("memory", 0)) for n in ray.nodes() if n["Alive"])
    n = 50_000_000  # ~77 GB of float32 384-d vectors: more than this machine holds
    p = plan(n, EmbedConfig(), dim=384)
    assert p.shards > 2  # more shards than CPUs, because of memory
    assert p.shard_resources.memory <= node_mem / 2 + shard_memory(1, 384)
    small = plan(1000, EmbedConfig(), dim=384)
    assert small.shards == 1 and small.shard_resources.memory == shard_memory(1000, 384)


def test_a_file_larger_than_a_read_chunk_streams_in_pieces(ray_session, make_config, tmp_path: Path, monkeypatch) -> None:
    """A 1.3 MB JSONL read in pieces of 128 KiB by tasks that store their parts: every record in
    input order, bad lines named by their line in the whole file, duplicate ids and exact
    duplicates found across pieces, exactly as one reader in input order finds them."""
    from theme_engine.cluster.runtime.stages import read as read_stage
    from theme_engine.engine.corpus import CorpusBuilder, InputFile, parse_file, prepare_records
    from theme_engine.engine.docstore import DocStore

    monkeypatch.setattr(read_stage, "MIB", 2**17)  # read.chunk_mb 1 -> pieces of 128 KiB
    words = "river mountain market harvest engine orbit violin garden ledger signal".split()
    lines = []
    for i in range(24_000):
        if i % 5001 == 17:
            lines.append("{not json")
        elif i % 4000 == 3:  # an id seen in an earlier piece: a bad record
            lines.append(json.dumps({"id": f"r{i - 2500}", "text": f"a later text under an earlier id {i}"}))
        else:
            u = i % 150  # 150 distinct texts, each repeated with a change of case: exact duplicates
            text = f"{words[u % 10]} {words[(u // 10) % 10]} story number {u}"
            lines.append(json.dumps({"id": f"r{i}", "text": text.upper() if i % 2 else text}))
    # a filtered text's id taken again (bad), a text first held by a row dropped for its id
    lines[100] = json.dumps({"id": "short", "text": "hi"})
    lines[20_000] = json.dumps({"id": "short", "text": "a text under the id of a filtered one"})
    lines[9_000] = json.dumps({"id": "r10", "text": "the first copy is dropped for its id"})
    lines[15_000] = json.dumps({"id": "z", "text": "The first copy is dropped for its id"})
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 1.2 * 2**20
    # the embedding too by ranges of stored documents, here in the driver (its only node)
    result = run(make_config([path], tmp_path / "out", tmp_path / "cache", read={"id_field": "id", "chunk_mb": 1}, embed={"workers_from": 0}, kmeans={"k": 3}))
    assert result.manifest["stages"]["embed"]["written_by"] == "driver"
    read = result.manifest["stages"]["read"]
    assert read["written_by"] == "tasks" and read["pieces"] >= 9
    builder = CorpusBuilder()
    rows = builder.add(prepare_records(parse_file(InputFile(path, "jsonl", "big.jsonl"), path.read_bytes(), "text", "id"), 10, 100_000))
    store = DocStore(tmp_path / "out" / ".theme-engine" / "read" / "docs.parquet")
    assert store.path.is_dir() and len(store.files) == read["pieces"]
    got = pa.concat_tables([pq.read_table(f) for f in store.files]).to_pydict()
    for column in ("id", "source", "text", "status", "exact_of", "length"):
        assert got[column] == rows[column], column
    assert got["status"][got["id"].index("z")] == "ok"
    assert read["bad"] == len(builder.bad) == 12 and sum("duplicate id" in b["error"] for b in builder.bad) == 7
    assert json.loads((tmp_path / "out" / ".theme-engine" / "read" / "bad.json").read_text()) == builder.bad
    keys = {}
    for part in sorted((tmp_path / "out" / ".theme-engine" / "read" / "keys").glob("part-*.npz")):
        with np.load(part) as data:
            keys.update(zip((k.decode() for k in data["key"].tolist()), data["row"].tolist()))
    assert keys == builder.first_rows()
    assert result.manifest["stages"]["embed"]["documents"] == rows["status"].count("ok")
    assert [b["source"] for b in result.manifest["bad_records"]["examples"]] == [b["source"] for b in builder.bad]
    # an update reads the run's parts and its keys' parts: a copy of a stored text, an id already there
    # under another text, one present as it was, and a new text (embedded by ranges, as the run's)
    from theme_engine.cluster.runtime.update import update, update_config

    first = rows["text"][rows["status"].index("ok")]
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps(r) + "\n" for r in [{"id": "n1", "text": first.upper()}, {"id": "r1", "text": "another text under r1"},
                                                          {"id": "z", "text": "The first copy is dropped for its id"}, {"id": "n2", "text": "a new text for the update"}]))
    grown = update(update_config(tmp_path / "out", [new], {"update": {"refit": "never"}}))
    assert grown.manifest["updates"][-1]["read"] | {"documents": 0, "bad": 0} == {
        "documents": 0, "bad": 0, "present": 1, "id_conflicts": 1, "exact_of_existing": 1, "exact_duplicate": 1, "ok": 1}
    assert grown.manifest["updates"][-1]["embedded"] == 1
    assert next((tmp_path / "out" / ".theme-engine" / "updates").glob("*/embed/vectors/part-*.npy"), None) is not None


def test_planted_near_duplicates_on_other_shards_are_all_found(ray_session, make_config, tmp_path: Path) -> None:
    """Copies at cosine 0.90-0.99 of rows on the first shard, placed on the last one: the shard
    actors route them to partitions and Ray tasks search those; the pairs equal brute force."""
    from theme_engine.cluster.runtime.state import StageStore
    from theme_engine.engine.dedup import brute_force_pairs

    rng = np.random.default_rng(5)
    centers = rng.standard_normal((12, 24))
    base = centers[rng.integers(12, size=3000)] + 0.8 * rng.standard_normal((3000, 24))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    src = np.arange(300)
    u = rng.standard_normal((300, 24))
    u -= np.sum(u * base[src], axis=1, keepdims=True) * base[src]
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    cos = rng.uniform(0.905, 0.99, size=300)
    copies = cos[:, None] * base[src] + np.sqrt(1 - cos**2)[:, None] * u
    X = np.vstack([base, copies]).astype(np.float32)
    np.save(tmp_path / "vecs.npy", X)
    cfg = make_config([tmp_path / "vecs.npy"], tmp_path / "out", tmp_path / "cache", kmeans={"k": 12}, ray={"shards": 3})
    result = run(cfg)
    dd = StageStore(tmp_path / "out").load_arrays("dedup", "result")
    found = set(zip(dd["pairs_i"].tolist(), dd["pairs_j"].tolist()))
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    assert found == brute_force_pairs(unit, 0.9)
    assert {(int(i), 3000 + int(i)) for i in src} <= found  # every planted pair, across shards
    assert result.manifest["dedup"]["exact"] is True and result.manifest["stages"]["kmeans"]["shards"] == 3


def test_sigterm_still_stops_cleanly_after_ray_starts(tmp_path: Path) -> None:
    """``ray.init`` installs a SIGTERM handler that exits at once; the run's own handler (stop
    between batches, stay resumable) must survive it. In a fresh process, since it starts Ray."""
    import subprocess
    import sys
    import tempfile

    script = f"""
import os, signal, threading, time, ray
from theme_engine.cluster.runtime import ray_session
from theme_engine.cluster.commands.cli import _install_stop_handlers
from theme_engine.engine.config import RayConfig
stop = threading.Event()
_install_stop_handlers(stop)
ray_session.connect(RayConfig(num_cpus=1, object_store_memory=100 * 2**20, temp_dir={tempfile.mkdtemp(prefix="te-t-")!r}))
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(0.5)
print("stop requested:", stop.is_set())
ray.shutdown()
"""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stop requested: True" in proc.stdout


def test_a_planted_typo_copy_is_a_lexical_duplicate(ray_session, make_config, corpus: Path, tmp_path: Path) -> None:
    """A verse with two typos (MiniLM cosine ~0.75, far below 0.9) is found by lexical evidence;
    duplicates.parquet says so, with both similarities. Off: the cosine rule alone."""
    from theme_engine.cluster.runtime.state import StageStore

    path = tmp_path / "verses.jsonl"
    typo = {"id": "typo:Gen.37.19", "text": "And they said one to anotehr, Behold, this dreamer cometh."}
    path.write_text(corpus.read_text() + json.dumps(typo) + "\n")
    over = {"kmeans": {"k": 3}, "read": {"id_field": "id"}}
    result = run(make_config([path], tmp_path / "on", tmp_path / "cache", **over))
    dups = pq.read_table(tmp_path / "on" / "duplicates.parquet")
    assert {"id", "duplicate_of", "similarity", "kind", "lexical_similarity", "edits"} <= set(dups.column_names)
    row = {r["id"]: r for r in dups.to_pylist()}["typo:Gen.37.19"]
    assert row["duplicate_of"] == "kjv:Gen.37.19" and row["kind"] == "lexical" and row["edits"] == 1
    assert 0.6 <= row["similarity"] < 0.9 and 0.5 < row["lexical_similarity"] < 1
    assert all(r["lexical_similarity"] is not None for r in dups.to_pylist())  # texts were read for every duplicate
    dd = result.manifest["dedup"]
    assert dd["lexical"] is True and dd["lexical_pairs"] >= 1 and dd["lexical_duplicates"] >= 1
    assert dd["candidate_pairs"] >= dd["near_pairs"] + dd["lexical_pairs"] and dd["texts_read"] > 0
    assert dd["exact"] is True and "candidates_exact" in dd
    docs = _docs(tmp_path / "on")
    assert docs["status"][docs["id"].index("typo:Gen.37.19")] == "near_duplicate"
    # off: exactly the cosine rule's pairs, no lexical kind
    off = run(make_config([path], tmp_path / "off", tmp_path / "cache", **over, dedup={"lexical": False}))
    assert off.manifest["dedup"]["lexical"] is False and "off" in off.manifest["dedup"]["lexical_note"]
    d_off = pq.read_table(tmp_path / "off" / "duplicates.parquet").to_pydict()
    assert "typo:Gen.37.19" not in d_off["id"] and "lexical" not in d_off["kind"]
    a_on, a_off = StageStore(tmp_path / "on").load_arrays("dedup", "result"), StageStore(tmp_path / "off").load_arrays("dedup", "result")
    near = a_on["pairs_kind"] == 1
    assert set(zip(a_on["pairs_i"][near].tolist(), a_on["pairs_j"][near].tolist())) == set(
        zip(a_off["pairs_i"].tolist(), a_off["pairs_j"].tolist())
    )
