"""House rules that check themselves: the lint rule set of pyproject.toml ([tool.ruff]) holds over
the repository, and the layers point down only — ``cluster → actors → engine`` — for every module
and every import in it (function-level imports too): the engine imports neither actors nor
cluster, the actors do not import cluster; inside cluster, the runtime does not import the commands."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("engine", "actors", "cluster")  # a layer may import those before it in this order
PACKAGE = "theme_engine"


def _imports(path: Path, layer: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path`` (a module of ``layer``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = [PACKAGE, layer, *path.relative_to(ROOT / layer).parent.parts]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
            elif node.module:
                found.append((node.lineno, node.module))
    return found


def test_the_layers_point_down_only() -> None:
    offenders = []
    checked = 0
    for rank, layer in enumerate(LAYERS):
        above = {f"{PACKAGE}.{name}" for name in LAYERS[rank + 1 :]}
        for path in sorted((ROOT / layer).rglob("*.py")):
            checked += 1
            for line, module in _imports(path, layer):
                if any(module == a or module.startswith(a + ".") for a in above):
                    offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert checked > 60  # every module of the three layers was read
    assert not offenders, "a layer imports one above it:\n" + "\n".join(offenders)


def test_the_runtime_never_imports_the_commands() -> None:
    """cluster/ has two halves: the commands (CLI, API, jobs, doctor) call the runtime (driver,
    stages, Ray's session, the output's state), never the other way round."""
    commands = f"{PACKAGE}.cluster.commands"
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / "cluster" / "runtime").rglob("*.py"))
        for line, module in _imports(path, "cluster")
        if module == commands or module.startswith(commands + ".")
    ]
    assert len(list((ROOT / "cluster" / "runtime").rglob("*.py"))) > 20
    assert not offenders, "the runtime imports a command:\n" + "\n".join(offenders)


def test_relative_imports_resolve_as_the_package_installs() -> None:
    """``from ..state import`` in cluster/runtime/stages/embed.py is theme_engine.cluster.runtime.state:
    a relative import that climbed into another layer would be seen."""
    modules = {m for _, m in _imports(ROOT / "cluster" / "runtime" / "stages" / "embed.py", "cluster")}
    assert {"theme_engine.cluster.runtime.state", "theme_engine.cluster.runtime.stages.base", "theme_engine.actors.embed"} <= modules


def test_the_lint_rules_hold() -> None:
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--quiet", "."], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
