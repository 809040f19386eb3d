"""One namespace: the wheel installs ``theme_engine`` (with ``theme_engine.engine``, ``.actors``,
``.cluster``) and nothing importable as a bare ``engine``, ``actors`` or ``cluster``; no code in
the repository imports the layers by their bare names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("engine", "actors", "cluster")
# an import statement at the start of a line, also inside the scripts tests run in subprocesses
BARE = re.compile(r"^\s*(?:from\s+(?:engine|actors|cluster)(?:\.\w+)*\s+import\b|import\s+(?:engine|actors|cluster)\b)", re.M)


def _tracked_python_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:  # an exported tree without git: every .py file but the venv's
        return [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts]
    return [ROOT / f for f in out.stdout.split()]


def test_no_code_imports_a_layer_by_its_bare_name() -> None:
    offenders = []
    for path in _tracked_python_files():
        text = path.read_text(encoding="utf-8")
        for m in BARE.finditer(text):
            line = text[: m.start()].count("\n") + 1
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {m.group().strip()}")
    assert not offenders, "import theme_engine.<layer> instead:\n" + "\n".join(offenders)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the source (setuptools writes build/ into the tree it builds)."""
    src = tmp_path_factory.mktemp("src")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in listed.stdout.splitlines():
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("theme_engine-*.whl")
    return path


def test_the_wheel_holds_one_top_level_package_with_its_model_assets(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith((".dist-info", ".data"))}
    assert top == {"theme_engine"}
    for layer in LAYERS:
        assert f"theme_engine/{layer}/__init__.py" in names
    assert "theme_engine/engine/assets/all-MiniLM-L6-v2/tokenizer.json" in names
    # every module of the source tree ships (a subpackage missing from pyproject's list would not)
    source = {f"theme_engine/{p.relative_to(ROOT).as_posix()}" for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}
    assert source - set(names) == set()


def test_from_a_wheel_install_theme_engine_imports_and_bare_layers_do_not(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = (
        "import importlib, json, theme_engine, theme_engine.engine.config, theme_engine.cluster.runtime.state\n"
        "bare = {}\n"
        "for name in ('engine', 'actors', 'cluster'):\n"
        "    try:\n"
        "        importlib.import_module(name); bare[name] = True\n"
        "    except ImportError:\n"
        "        bare[name] = False\n"
        "print(json.dumps({'file': theme_engine.__file__, 'config': theme_engine.engine.config.__file__, 'bare': bare}))\n"
    )
    # run outside the repository, the wheel's folder first on the path
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert got["file"].startswith(str(target)) and got["config"].startswith(str(target / "theme_engine" / "engine"))
    assert got["bare"] == {"engine": False, "actors": False, "cluster": False}


def test_python_dash_m_theme_engine_is_the_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "theme_engine", "--help"], cwd=ROOT.parent, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "usage: theme-engine" in proc.stdout


def test_loggers_are_one_tree() -> None:
    import logging

    from theme_engine.cluster.runtime import driver
    from theme_engine.engine import kmeans

    assert driver.log.name == "theme_engine.cluster.runtime.driver" and kmeans.log.name == "theme_engine.engine.kmeans"
    assert [name for name in logging.root.manager.loggerDict if name.split(".")[0] in LAYERS] == []


def test_arrows_point_down_only() -> None:
    """engine/ imports neither Ray nor the layers above it; actors/ never imports cluster/."""
    above = {
        "engine": re.compile(r"^\s*(?:from|import)\s+(?:ray\b|theme_engine\.(?:actors|cluster)\b)", re.M),
        "actors": re.compile(r"^\s*(?:from|import)\s+theme_engine\.cluster\b", re.M),
    }
    offenders = [
        f"{path.relative_to(ROOT)}: {m.group().strip()}"
        for layer, pattern in above.items()
        for path in sorted((ROOT / layer).rglob("*.py"))
        for m in pattern.finditer(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, offenders
