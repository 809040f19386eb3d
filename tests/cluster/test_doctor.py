"""``theme-engine doctor``: a real run through the CLI, and the reports for broken installs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from theme_engine.cluster.commands.cli import main

ROOT = Path(__file__).resolve().parents[2]

EVERY_CHECK = {"packages", "device", "gpu.cupy", "gpu.cuml", "gpu.faiss", "gpu.onnxruntime", "faiss", "embedding", "cache", "ray"}


def _doctor(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main(["doctor", "--json", *argv])
    return code, json.loads(capsys.readouterr().out)


def test_doctor_reports_every_check_and_the_cpu_path_is_usable(tmp_path):
    """As a user runs it: a fresh process (the doctor keeps its local Ray on loopback, which
    needs the setting before Ray is imported, and reports where it listens)."""
    import os
    import subprocess

    import faiss

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    args = ["doctor", "--json", "--cache-dir", str(tmp_path / "cache"), "--num-cpus", "1"]
    proc = subprocess.run([sys.executable, "-m", "theme_engine.cluster.commands.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    code, out = proc.returncode, json.loads(proc.stdout)
    checks = out["checks"]
    assert set(checks) == EVERY_CHECK
    assert code == 0 and out["ok"] is True and out["cpu_path"] == "usable"
    assert checks["faiss"]["status"] == "ok" and checks["faiss"]["version"] == faiss.__version__
    assert checks["faiss"]["self_test"] is True
    emb = checks["embedding"]
    assert emb["status"] == "ok" and emb["dim"] == 384 and abs(emb["norm"] - 1.0) < 1e-3
    assert emb["load_seconds"] > 0 and "CPUExecutionProvider" in emb["providers"]
    assert checks["cache"]["status"] == "ok" and checks["cache"]["locked"] is False
    assert str(tmp_path / "cache") in checks["cache"]["where"]
    ray_check = checks["ray"]
    assert ray_check["status"] == "ok" and ray_check["nodes"] >= 1 and ray_check["cpus"] == 1
    assert ray_check["started_here"] is True
    listeners = ray_check["listeners"]
    assert len(listeners) >= 2 and all(s["loopback"] for s in listeners), listeners
    assert "listening sockets are on 127.0.0.1 only" in ray_check["detail"]
    # the device the engine would choose, and the GPU path's state, agree
    gpu = out["gpu"]
    assert set(gpu["libraries"]) == {"cupy", "cuml", "faiss", "onnxruntime"}
    assert out["device"] == ("cuda:0" if gpu["available"] else "cpu")
    if not gpu["available"]:
        assert gpu["reason"] and checks["device"]["reason"]


def test_missing_cupy_is_reported_and_is_not_a_failure(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError, even where cupy is installed
    code, out = _doctor(capsys, "--skip", "ray", "--skip", "model", "--cache-dir", str(tmp_path))
    assert code == 0 and out["ok"] is True
    assert out["device"] == "cpu"
    cupy = out["checks"]["gpu.cupy"]
    assert cupy["importable"] is False and cupy["usable"] is False
    assert "cupy is not importable" in cupy["reason"] and "gpu" in cupy["reason"]
    assert out["gpu"]["available"] is False and "cupy is not importable" in out["gpu"]["reason"]
    assert out["checks"]["ray"]["status"] == "skip" and out["checks"]["embedding"]["status"] == "skip"


def test_missing_faiss_is_a_failure_with_the_install_command(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    code, out = _doctor(capsys, "--skip", "ray", "--skip", "model", "--cache-dir", str(tmp_path))
    assert code == 1 and out["ok"] is False and out["cpu_path"] == "broken"
    assert out["checks"]["faiss"]["status"] == "fail"
    assert 'pip install "theme-engine[cpu]"' in out["checks"]["faiss"]["detail"]
    assert out["checks"]["packages"]["status"] == "fail"
    assert out["checks"]["gpu.faiss"]["importable"] is False


def test_a_locked_cache_is_a_warning_and_a_temp_cache_is_tried(capsys, tmp_path):
    from theme_engine.engine.cache import open_cache

    holder = open_cache(384, tmp_path, None, "c")  # holds the folder lock, as a running job would
    try:
        code, out = _doctor(capsys, "--skip", "ray", "--skip", "model", "--cache-dir", str(tmp_path))
    finally:
        holder.close()
    cache = out["checks"]["cache"]
    assert code == 0
    assert cache["status"] == "warn" and cache["locked"] is True and cache["temp_dir_round_trip"] is True
    assert "locked by another process" in cache["detail"]


def test_table_output(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    code = main(["doctor", "--skip", "ray", "--skip", "model", "--skip", "cache"])
    text = capsys.readouterr().out
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split() == ["check", "status", "detail"]
    assert any(line.startswith("gpu.cupy") and "cupy is not importable" in line for line in lines)
    assert "CPU path: usable" in text and "GPU path: unavailable (cupy is not importable" in text


def test_run_without_faiss_stops_before_ray_with_the_install_command(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "faiss", None)
    corpus = tmp_path / "docs.txt"
    corpus.write_text("one document\nanother document\n")
    with caplog.at_level("ERROR"):
        code = main(["run", str(corpus), "--out", str(tmp_path / "out")])
    assert code == 1
    assert 'pip install "theme-engine[cpu]"' in caplog.text and "faiss" in caplog.text
    assert not (tmp_path / "out").exists()


def test_a_cuda_provider_that_does_not_load_is_a_warning(capsys, tmp_path, monkeypatch):
    """Where onnxruntime seems to serve CUDA, the doctor also loads the model with the CUDA provider;
    when that provider does not come up (here: a CPU onnxruntime reported as CUDA-capable) it is a
    warning, not a failure."""
    from theme_engine.engine import device

    usable = device.LibraryStatus("onnxruntime", "embedding model on GPU", True, "x", usable=True)
    monkeypatch.setattr(device, "_probe_onnxruntime_cuda", lambda devices: usable)
    code, out = _doctor(capsys, "--skip", "ray", "--skip", "cache", "--cache-dir", str(tmp_path))
    cuda = out["checks"]["embedding.cuda"]
    assert code == 0 and out["checks"]["embedding"]["status"] == "ok"
    assert cuda["status"] == "warn" and cuda["required"] is False
    assert "CUDAExecutionProvider" in cuda["detail"]
    assert out["checks"]["gpu.onnxruntime"]["usable"] is True


def test_doctor_loads_and_reports_the_chosen_model(capsys, tmp_path, second_model, monkeypatch):
    code, out = _doctor(capsys, "--skip", "ray", "--skip", "cache", "--cache-dir", str(tmp_path), "--model-path", str(second_model))
    emb = out["checks"]["embedding"]
    assert code == 0 and emb["status"] == "ok"
    info = emb["model_info"]
    assert (info["kind"], info["dim"], info["pooling"], info["folder"]) == ("path", 384, "mean", str(second_model))
    assert info["model_id"].rsplit(":", 1)[1] in emb["detail"] and "mean pooling" in emb["detail"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2"
    code, out = _doctor(capsys, "--skip", "ray", "--skip", "cache", "--cache-dir", str(tmp_path), "--model", model)
    emb = out["checks"]["embedding"]
    assert code == 1 and emb["status"] == "fail" and emb["model"] == model
    assert "\n" not in emb["detail"] and "--model-path" in emb["detail"]
