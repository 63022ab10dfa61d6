"""Wheels for an offline GPU node: every runtime dependency (torch excluded) for a target Python/platform.

GPU clusters often have no internet. `perfkit wheelhouse --out wheelhouse` downloads,
on a machine that has it, binary wheels of perfkit's dependencies for the node's
Python (default cp312) and manylinux x86_64, plus a wheel of perfkit itself. On the
node: `pip install --no-index --find-links wheelhouse perfkit` (torch comes from the
node's own CUDA build). `--skip` drops requirements the node already has.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from perfkit.errors import UserError

DEFAULT_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "any",
)
NEVER = {"torch"}  # the node's CUDA build of torch stays


def project_requirements(extras: tuple[str, ...] = ()) -> list[str]:
    """perfkit's declared requirements (from its installed metadata), torch left out."""
    try:
        declared = metadata.requires("perfkit") or []
    except metadata.PackageNotFoundError:
        raise UserError("perfkit is not installed in this Python", "run `make venv` first") from None
    wanted = []
    for req in declared:
        name_part, _, marker = req.partition(";")
        extra = re.search(r'extra\s*==\s*"([^"]+)"', marker)
        if extra and extra.group(1) not in extras:
            continue
        if canonical(name_part) in NEVER:
            continue
        wanted.append(name_part.strip())
    return wanted


def canonical(requirement: str) -> str:
    name = re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def build_wheelhouse(
    out: Path, *, python_version: str = "3.12", platforms=None, skip=(), extras=("test", "fp8")
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    skip = {canonical(s) for s in skip}
    requirements = [r for r in project_requirements(extras) if canonical(r) not in skip]
    platform_args = [a for p in (platforms or DEFAULT_PLATFORMS) for a in ("--platform", p)]
    download = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--dest",
        str(out),
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        *platform_args,
        *requirements,
    ]
    _run(download, "downloading wheels")
    project_root = Path(__file__).resolve().parent.parent
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(project_root)],
        "building the perfkit wheel",
    )
    removed = []
    for wheel in out.glob("*.whl"):
        if canonical(wheel.name.split("-")[0]) in skip | NEVER:
            wheel.unlink()  # pulled in as a dependency but the node already has it
            removed.append(wheel.name)
    wheels = sorted(out.glob("*.whl"))
    (out / "INSTALL.txt").write_text(
        "Offline install on the GPU node (torch from the node itself):\n"
        f"  python{python_version} -m pip install --no-index --find-links {out.name} perfkit\n"
        "or, into a separate folder without touching the node's packages:\n"
        f"  python{python_version} -m pip install --no-index --no-deps --target /tmp/site {out.name}/*.whl\n"
        "  export PYTHONPATH=/tmp/site\n"
    )
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(
        f"{len(wheels)} wheels, {size:.1f} MiB in {out}"
        + (f" (dropped {len(removed)} the node has)" if removed else "")
    )
    return wheels


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"{what} failed: {last}", "check the network and the --python/--platform values")
