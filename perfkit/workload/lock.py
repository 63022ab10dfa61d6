"""One perfkit run per output folder: an exclusive lock on OUT/.perfkit.lock for the whole run.

The lock is an flock (through `filelock`): the kernel drops it when its holder dies, so a killed run
never leaves a folder locked, and a resume can start at once. Who holds it is written next to it
(OUT/.perfkit.lock.owner), since an flock does not say.

Multi-process runs: the launching process (`perfkit embed --nproc/--gpus`, `perfkit predict --nproc/--gpus`)
holds the lock while torchrun runs, and tells its ranks so through PERFKIT_OUT_LOCK_HELD (the folder); the
ranks then take no lock of that folder or of folders inside it (the chain's stage folders). Without a
launcher (torchrun called by hand) rank 0 takes it.

Several nodes on one shared folder (`--nnodes N --node-rank R`): node 0's launcher holds the run's lock
(.perfkit.lock), every other node's launcher a lock of its own node rank (.perfkit.node{R}.lock). So the
launchers of one run never wait for each other, while a second run on the folder is refused at whichever
node it starts (node 0 by the run's lock, node R by node R's). Rank 0 may be on any node (torchrun's
rendezvous orders the nodes itself); every launcher tells its ranks that the launch holds the folder.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping, MutableMapping

from filelock import FileLock, Timeout

from perfkit.errors import UserError

LOCK_NAME = ".perfkit.lock"
OWNER_NAME = ".perfkit.lock.owner"
HELD_ENV = "PERFKIT_OUT_LOCK_HELD"


def held_by_launcher(folder: str | Path, env: Mapping[str, str] = os.environ) -> bool:
    """True when the process that launched this one holds the lock of `folder` (or of a folder holding it)."""
    held = env.get(HELD_ENV)
    if not held:
        return False
    folder, held = Path(folder).resolve(), Path(held).resolve()
    return folder == held or held in folder.parents


def mark_held(env: MutableMapping[str, str], folder: str | Path) -> None:
    """Tell the processes started with `env` that this process holds the lock of `folder`."""
    env[HELD_ENV] = str(Path(folder).resolve())


def lock_names(node_rank: int = 0) -> tuple[str, str]:
    """(lock file, owner file) of node `node_rank`'s launcher: node 0's lock is the run's."""
    if node_rank == 0:
        return LOCK_NAME, OWNER_NAME
    return f".perfkit.node{node_rank}.lock", f".perfkit.node{node_rank}.lock.owner"


def holder(folder: str | Path, node_rank: int = 0) -> str:
    try:
        return (Path(folder) / lock_names(node_rank)[1]).read_text().strip() or "pid unknown"
    except OSError:
        return "pid unknown"


def check_is_folder(path) -> None:
    """--out must be a folder (or not exist yet): a file there is named as such, not as 'not writable'."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file, not a folder", "pass a folder path to -o/--out")


@contextmanager
def out_dir_lock(folder: str | Path, node_rank: int = 0):
    """Hold the exclusive lock of `folder` (created if missing) for the block; a UserError at once, writing
    nothing, when another run holds it. Nothing to take when this process's launcher holds it.
    `node_rank` > 0: the lock of that node's launcher in a run of several nodes (see above)."""
    folder = Path(folder)
    lock_name, owner_name = lock_names(node_rank)
    if held_by_launcher(folder):
        yield
        return
    check_is_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(folder / lock_name), timeout=0)
        lock.acquire()
    except Timeout:
        node = f" as node {node_rank}" if node_rank else ""
        raise UserError(
            f"{folder} is in use{node} by another perfkit run ({holder(folder, node_rank)})",
            "wait for that run to end, or choose another --out folder",
        ) from None
    except OSError as err:
        raise UserError(
            f"output folder {folder} is not writable ({err.strerror})", "choose a writable --out folder"
        ) from None
    owner = folder / owner_name
    try:
        try:
            owner.write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")
        except OSError:  # who holds it is for the message of a refused run only: never fail the run for it
            pass
        yield
    finally:
        try:
            owner.unlink(missing_ok=True)  # before the release: a new holder's owner file is never removed
        finally:
            lock.release()
