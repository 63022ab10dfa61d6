"""Processes that cannot outlive the one that started them (Linux parent-death signal).

A `perfkit embed/predict --nproc/--gpus N` launch is three generations: the launcher, torchrun's agent, and
the ranks, which torchrun starts in their own sessions (so killing the launcher's process group does not
reach them). Each generation asks the kernel for SIGKILL when its parent dies:
- the launcher starts torchrun with `preexec_fn=torchrun_dies_with_launcher`;
- every rank calls `die_with_parent()` first thing in `python -m perfkit`, before importing torch (which takes
  seconds: a rank killed during its imports was orphaned when this was done in the process-group set-up).

The signal is tied to the parent *thread* that forked: torchrun's agent and our launcher both fork from their
main thread, which lives as long as they do. This module imports nothing heavy.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1
LAUNCHER_PID_ENV = "PERFKIT_LAUNCHER_PID"  # set by our launcher for its ranks: the race check below


def _set_pdeathsig(sig: int = signal.SIGKILL) -> bool:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux/glibc: nothing to set
        return False


def is_torchrun_rank(env=os.environ) -> bool:
    return "RANK" in env and "WORLD_SIZE" in env and "TORCHELASTIC_RUN_ID" in env


def die_with_parent(env=os.environ) -> None:
    """SIGKILL this process when its parent (torchrun's agent) dies. If the parent or our launcher died before
    the signal was set (the window between fork and here), exit now: the signal would never come."""
    if not _set_pdeathsig():
        return
    if os.getppid() == 1 or not _alive(env.get(LAUNCHER_PID_ENV)):
        os._exit(1)


def torchrun_dies_with_launcher(launcher_pid: int | None = None) -> None:
    """preexec_fn of the launcher's torchrun: SIGKILL torchrun when the launcher dies (its ranks then die with
    it); exits at once if the launcher is already gone."""
    _set_pdeathsig()
    if launcher_pid is not None and os.getppid() != launcher_pid:
        os._exit(1)


def _alive(pid: str | None) -> bool:
    if not pid:
        return True  # torchrun called by hand: no launcher to check
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True
