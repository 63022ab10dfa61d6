"""What the run ran on: GPUs, driver, torch, CUDA, host, code commit."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path

import torch


def git_commit(start: Path | None = None) -> str | None:
    """The checkout's commit (with '+dirty' when it has changes), or PERFKIT_COMMIT, or None."""
    if os.environ.get("PERFKIT_COMMIT"):
        return os.environ["PERFKIT_COMMIT"]
    where = start or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # no driver, no library: simply unknown
        return None


def environment() -> dict:
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
        "commit": git_commit(),
    }
