"""What the run ran on: GPUs, driver, torch, CUDA, host, code commit."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import socket
import subprocess
from pathlib import Path

import torch


PACKAGE_DIR = Path(__file__).resolve().parent


def _git(args: list[str], where: Path) -> subprocess.CompletedProcess:
    # GIT_DIR / GIT_WORK_TREE in the caller's environment would point git at another repository
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
    return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=5, env=env)


def git_commit(start: Path | None = None) -> str | None:
    """perfkit's own commit (with '+dirty' when its checkout has changes), or PERFKIT_COMMIT, or None.

    Only a repository whose top level holds this package counts: an installed copy that happens to sit
    inside another repository (a site-packages under a project's venv) records None, not that project's
    HEAD; the package's file hash (`package_hash`) identifies the code then."""
    if os.environ.get("PERFKIT_COMMIT"):
        return os.environ["PERFKIT_COMMIT"]
    package = (start or PACKAGE_DIR).resolve()
    try:
        top = _git(["rev-parse", "--show-toplevel"], package)
        if top.returncode != 0 or (Path(top.stdout.strip()).resolve() / "perfkit") != package:
            return None
        commit = _git(["rev-parse", "HEAD"], package)
        if commit.returncode != 0:
            return None
        dirty = _git(["status", "--porcelain", "--untracked-files=no"], package).stdout.strip()
        return commit.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def build_stamp(version: str | None = None) -> dict | None:
    """{version, commit, dirty} from the version setuptools-scm stamped when perfkit was built or installed
    (`0.1.devN+g<commit>`, `.d<date>` appended for a checkout with changes); None when nothing was stamped.
    The commit is the build's, which a later checkout of the same tree may have moved past: the live check
    (`git_commit`) wins where it can run."""
    if version is None:
        try:
            from perfkit._version import __version__ as version
        except ImportError:
            return None
    found = re.search(r"\+g([0-9a-f]{7,40})(\.d\d{8})?", version)
    return {
        "version": version,
        "commit": found.group(1) if found else None,
        "dirty": bool(found and found.group(2)),
    }


def recorded_commit(stamp: dict | None = None) -> tuple[str | None, str | None]:
    """(commit, where it came from): PERFKIT_COMMIT or the live checkout (`git_commit`), else the build
    stamp (`stamp`, default: this install's)."""
    live = git_commit()
    if live:
        return live, "PERFKIT_COMMIT" if os.environ.get("PERFKIT_COMMIT") else "git checkout"
    stamp = stamp if stamp is not None else build_stamp()
    if stamp and stamp["commit"]:
        return stamp["commit"] + ("+dirty" if stamp["dirty"] else ""), "build stamp"
    return None, None


def package_hash(package: Path | None = None) -> str:
    """sha256 over the package's .py files (relative path and bytes, in path order): the code that ran,
    with or without git."""
    root = (package or PACKAGE_DIR).resolve()
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts or path.relative_to(root).as_posix() == "_version.py":
            continue  # the stamp differs between two builds of the same code
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # no driver, no library: simply unknown
        return None


def environment() -> dict:
    stamp = build_stamp()
    commit, commit_source = recorded_commit(stamp)
    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cuda_available": cuda,
        "gpus": gpus,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "driver": nvidia_driver() if cuda else None,
        "commit": commit,
        "commit_source": commit_source,
        "build": stamp,
        "package_sha256": package_hash(),
    }


def tf32_flags() -> dict:
    """Whether fp32 matmuls and convolutions run as TF32 now (read from torch.backends, which is the source)."""
    import torch

    return {
        "matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn": bool(torch.backends.cudnn.allow_tf32),
        "source": "torch.backends.cuda.matmul.allow_tf32 / torch.backends.cudnn.allow_tf32",
    }
