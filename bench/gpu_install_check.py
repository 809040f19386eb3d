"""Resolver dry run: do the ``cpu`` and ``gpu`` extras install only their own twins?

faiss and onnxruntime (and fastembed) each come as a CPU and a GPU distribution that install the
same import name (faiss-cpu / faiss-gpu-cu12, onnxruntime / onnxruntime-gpu, fastembed /
fastembed-gpu). pip installs both of a pair side by side without complaint and the last one
unpacked wins, so an environment must hold exactly one of each. This script asks pip to resolve
``<repo>[gpu]`` and ``<repo>[cpu]`` for CPython 3.11 on manylinux (glibc 2.28) x86_64, whatever this machine is,
without installing anything, reads pip's installation report and checks:

* ``[gpu]``: cupy-cuda12x, cuml-cu12, faiss-gpu-cu12, fastembed-gpu and onnxruntime-gpu are in,
  faiss-cpu, fastembed and onnxruntime are out, and every CUDA-built package targets CUDA 12 (the
  name says so, or for onnxruntime-gpu the CUDA runtime its metadata asks for: PyPI's
  onnxruntime-gpu is a CUDA 13 build from 1.27 on);
* ``[cpu]``: faiss-cpu, fastembed and onnxruntime are in; nothing of the CUDA stack (cupy, cuml,
  cudf, rmm, faiss GPU, onnxruntime-gpu, fastembed-gpu, nvidia-*, cuda-*) is;
* ``[dev]`` (the README's test install): the same as ``[cpu]``, plus pytest.

It prints a package → version table per extra and writes the full resolutions to
``bench/results/gpu_install_check.json``. Exit status: 0 all good, 1 a check failed, 2 pip could
not resolve an extra. It needs the package index (PyPI), so it is not a test.

    /work/venv/bin/python bench/gpu_install_check.py            # both extras
    /work/venv/bin/python bench/gpu_install_check.py --extra gpu --all

By default pip's configuration files are ignored (``PIP_CONFIG_FILE=/dev/null``) so that local
constraints, mirrors and wheel folders do not change what a user of the public index gets; pass
``--use-pip-config`` to keep them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# the CUDA stack: none of it belongs in a CPU environment
CUDA_PATTERN = re.compile(
    r"^(nvidia-.*|cuda-.*|cupy.*|cuml.*|libcuml.*|cudf.*|libcudf.*|rmm.*|librmm.*|pylibraft.*|libraft.*|raft-dask.*|"
    r"cuvs.*|libcuvs.*|dask-cuda.*|numba-cuda.*|ucx.*|libucx.*|ucxx.*|distributed-ucxx.*|faiss-gpu.*|"
    r"onnxruntime-gpu|fastembed-gpu|nvtx|pynvml|nvidia-ml-py)$"
)


# the CUDA major a package is built for: from its name (faiss-gpu-cu12, cupy-cuda12x) or, for
# wheels whose name does not say (onnxruntime-gpu), from the CUDA runtime its metadata asks for
_NAME_CUDA = re.compile(r"-cu(\d+)$|^cupy-cuda(\d+)x$")
_REQ_CUDA = re.compile(
    r"^nvidia-cuda-runtime-cu(\d+)\b|^nvidia-cuda-runtime\s*(?:~=|==|>=)\s*(\d+)|^cuda-toolkit\b[^;]*==\s*(\d+)"
)


def cuda_majors(name: str, requires_dist: list[str]) -> set[str]:
    found = {g for m in [_NAME_CUDA.search(name)] if m for g in m.groups() if g}
    for req in requires_dist:
        m = _REQ_CUDA.search(canonical_req(req))
        if m:
            found.update(g for g in m.groups() if g)
    return found


def canonical_req(req: str) -> str:
    name = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    return canonical(name.group(1)) + req[name.end() :] if name else req


@dataclass(frozen=True)
class Rule:
    required: tuple[str, ...]
    forbidden: tuple[str, ...] = ()
    forbidden_pattern: re.Pattern[str] | None = None
    cuda_major: str | None = None  # every CUDA-built package must target this CUDA major


RULES: dict[str, Rule] = {
    "gpu": Rule(
        required=("cupy-cuda12x", "cuml-cu12", "faiss-gpu-cu12", "fastembed-gpu", "onnxruntime-gpu"),
        forbidden=("faiss-cpu", "onnxruntime", "fastembed"),
        cuda_major="12",
    ),
    "cpu": Rule(
        required=("faiss-cpu", "onnxruntime", "fastembed"),
        forbidden_pattern=CUDA_PATTERN,
    ),
    # the README's test install: the cpu extra plus the test tools, through nested extras
    "dev": Rule(
        required=("faiss-cpu", "onnxruntime", "fastembed", "pytest", "array-api-strict"),
        forbidden_pattern=CUDA_PATTERN,
    ),
}

# shown in the table even without --all: the twins and the CUDA stack's main pieces
WATCH = {"faiss-cpu", "onnxruntime", "fastembed", "numpy", "theme-engine"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Resolution:
    extra: str
    ok: bool  # pip resolved it
    seconds: float
    packages: dict[str, str] = field(default_factory=dict)  # canonical name -> version
    cuda: dict[str, list[str]] = field(default_factory=dict)  # canonical name -> CUDA majors it targets
    error: str = ""
    violations: list[str] = field(default_factory=list)


def pip_env(use_pip_config: bool) -> dict[str, str]:
    env = dict(os.environ)
    if not use_pip_config:
        env["PIP_CONFIG_FILE"] = os.devnull  # pip then loads no configuration file at all
        for key in ("PIP_FIND_LINKS", "PIP_CONSTRAINT", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX"):
            env.pop(key, None)
    return env


def manylinux_platforms(glibc: str, arch: str) -> list[str]:
    """Every manylinux tag a system with this glibc runs, newest first: pip's ``--platform`` takes
    tags literally (``manylinux_2_28`` does not imply ``manylinux2014``), so all must be listed."""
    major, minor = (int(v) for v in glibc.split("."))
    if major != 2 or minor < 5:
        raise SystemExit(f"--glibc {glibc}: expected 2.5 or later")
    tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{name}_{arch}" for m, name in legacy.items() if m <= minor]
    return tags


def resolve(extra: str, args: argparse.Namespace) -> Resolution:
    """``pip install --dry-run --report`` of ``<repo>[extra]`` for the target interpreter/platform."""
    with tempfile.TemporaryDirectory(prefix="te-pip-report-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            args.python, "-m", "pip", "install",
            "--dry-run", "--ignore-installed", "--quiet",
            "--report", str(report),
            "--python-version", args.python_version,
            "--implementation", "cp",
            "--abi", "cp" + args.python_version.replace(".", ""),
            *[arg for plat in args.platforms for arg in ("--platform", plat)],
            "--only-binary=:all:",
            f"{args.project}[{extra}]",
        ]  # fmt: skip
        print("$ " + " ".join(cmd), flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=pip_env(args.use_pip_config), timeout=args.timeout)
        seconds = time.perf_counter() - start
        if proc.returncode != 0 or not report.exists():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
            return Resolution(extra, ok=False, seconds=seconds, error=tail)
        data = json.loads(report.read_text())
    packages: dict[str, str] = {}
    cuda: dict[str, list[str]] = {}
    for item in data.get("install", []):
        meta = item["metadata"]
        name = canonical(meta["name"])
        packages[name] = meta["version"]
        majors = cuda_majors(name, meta.get("requires_dist") or [])
        if majors:
            cuda[name] = sorted(majors)
    return Resolution(extra, ok=True, seconds=seconds, packages=dict(sorted(packages.items())), cuda=cuda)


def check(res: Resolution, rule: Rule) -> list[str]:
    out = [f"[{res.extra}] {name} is missing" for name in rule.required if name not in res.packages]
    for name in res.packages:
        if name in rule.forbidden or (rule.forbidden_pattern is not None and rule.forbidden_pattern.match(name)):
            out.append(f"[{res.extra}] {name} {res.packages[name]} must not be installed")
    if rule.cuda_major is not None:
        for name, majors in res.cuda.items():
            if rule.cuda_major not in majors:  # packages that offer several CUDA majors (extras) pass
                out.append(
                    f"[{res.extra}] {name} {res.packages[name]} is built for CUDA {'/'.join(majors)}, "
                    f"not CUDA {rule.cuda_major}"
                )
    return out


def table(res: Resolution, rule: Rule, show_all: bool) -> str:
    shown = {
        name: version
        for name, version in res.packages.items()
        if show_all
        or name in WATCH
        or name in rule.required
        or name in rule.forbidden
        or CUDA_PATTERN.match(name)
    }
    width = max([len(n) for n in shown] + [len("package")])
    lines = [
        f"  {'package':<{width}}  {'version':<14}  {'CUDA':<5}  note",
        f"  {'-' * width}  {'-' * 14}  -----  ----",
    ]
    for name, version in shown.items():
        note = ""
        if name in rule.required:
            note = "required"
        elif name in rule.forbidden or (rule.forbidden_pattern is not None and rule.forbidden_pattern.match(name)):
            note = "FORBIDDEN"
        if rule.cuda_major is not None and name in res.cuda and rule.cuda_major not in res.cuda[name]:
            note = (note + ", " if note else "") + "WRONG CUDA"
        cuda = "/".join(res.cuda.get(name, [])) or "-"
        lines.append(f"  {name:<{width}}  {version:<14}  {cuda:<5}  {note}")
    for name in rule.required:
        if name not in res.packages:
            lines.append(f"  {name:<{width}}  {'-':<14}  {'-':<5}  MISSING (required)")
    hidden = len(res.packages) - len(shown)
    lines.append(
        f"  {len(res.packages)} packages in all"
        + (f" ({hidden} others not shown; --all lists them)" if hidden else "")
        + f"; resolved in {res.seconds:.0f} s"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extra", action="append", choices=sorted(RULES), help="extra to check (repeatable); default: all")
    parser.add_argument("--project", default=str(ROOT), help="the project to resolve (a path or a requirement name)")
    parser.add_argument("--python", default=sys.executable, help="interpreter whose pip resolves (default: this one)")
    parser.add_argument("--python-version", default="3.11")
    parser.add_argument("--glibc", default="2.28", help="target glibc: every manylinux tag up to it is accepted")
    parser.add_argument("--arch", default="x86_64")
    parser.add_argument("--platform", action="append", help="exact platform tags instead of --glibc (repeatable)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per resolution")
    parser.add_argument("--use-pip-config", action="store_true", help="keep pip's configuration files and PIP_* index settings")
    parser.add_argument("--all", action="store_true", help="list every resolved package, not only the watched ones")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_install_check.json")
    args = parser.parse_args(argv)
    args.platforms = args.platform or manylinux_platforms(args.glibc, args.arch)
    target = args.platform[0] if args.platform else f"manylinux glibc {args.glibc} {args.arch}"

    results: list[Resolution] = []
    for extra in args.extra or ("gpu", "cpu", "dev"):  # gpu first: the one most likely to fail
        rule = RULES[extra]
        res = resolve(extra, args)
        results.append(res)
        if not res.ok:
            print(f"\n[{extra}] pip could not resolve {args.project}[{extra}]:\n{res.error}\n")
            continue
        res.violations = check(res, rule)
        print(f"\n[{extra}] {args.project}[{extra}] for CPython {args.python_version} on {target}:")
        print(table(res, rule, args.all))
        for v in res.violations:
            print("  VIOLATION: " + v)
        print()

    failed = [r for r in results if not r.ok]
    violations = [v for r in results for v in r.violations]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "python_version": args.python_version,
        "platforms": args.platforms,
        "project": args.project,
        "results": {
            r.extra: {
                "resolved": r.ok,
                "seconds": round(r.seconds, 1),
                "violations": r.violations,
                "error": r.error,
                "packages": r.packages,
                "cuda": r.cuda,
            }
            for r in results
        },
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    if failed:
        print("RESOLUTION FAILED: " + ", ".join(f"[{r.extra}]" for r in failed))
        return 2
    if violations:
        print(f"{len(violations)} VIOLATION(S)")
        return 1
    print("OK: " + ", ".join(f"[{r.extra}]" for r in results) + " hold only their own twins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
