"""Launching ranks: `perfkit embed/predict --gpus N` (or `--nproc N` on CPU) runs its work under
`python -m torch.distributed.run --standalone --nproc-per-node N`: N ranks on this host.

Several hosts: the same command on every node, with torchrun's own flags for where it runs,
`--nnodes M --node-rank R --rdzv-endpoint HOST:PORT` (HOST: node 0; --gpus/--nproc stay per node).
Each node's launcher then runs torchrun with `--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT`,
a rendezvous id derived from the command and the absolute --out path (the same on every node, so
nodes of one run meet and another run's nodes do not), `--rdzv-conf join_timeout=...,is_host=...`
(node 0 hosts the rendezvous store; PERFKIT_RDZV_TIMEOUT_S bounds the wait for the other nodes).
torchrun numbers the ranks itself: rank 0 may be on any node. --out must be a folder every node
shares (rank 0 assembles every rank's shards); the launchers' locks: perfkit.workload.lock.

The ranks get their settings as data (perfkit.workload.rank's spec file), never as a command line.
torchrun dies with the launcher and ranks with torchrun's agent (parent-death signals, perfkit.lifeline), so a
killed launch leaves no orphans. What each rank does: perfkit.workload.distributed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping

import torch

from perfkit import lifeline
from perfkit.errors import CHECK_FAILED_FILE_ENV, UserError, check_failed_in_ranks
from perfkit.workload import rank as rank_entry
from perfkit.workload.config import EmbedConfig
from perfkit.workload.distributed import (
    DEFAULT_RDZV_TIMEOUT_S,
    NODE_RANK_ENV,
    ONE_NODE,
    RDZV_TIMEOUT_ENV,
    Nodes,
    set_nccl_env,
    torchrun_rank,
)
from perfkit.workload.lock import mark_held, out_dir_lock
from perfkit.workload.outdir import check_out_dir
from perfkit.workload.runner import check_before_work

log = logging.getLogger(__name__)


def torchrun_command(nproc: int, spec: Path, nodes: Nodes = ONE_NODE, rdzv_id: str = "") -> list[str]:
    """`python -m torch.distributed.run ... -m perfkit.workload.rank SPEC`: standalone on one node, else node
    `nodes.node_rank`'s part of a c10d rendezvous (`rdzv_id`: the same on every node, see rendezvous_id).
    The ranks take their settings from the spec (rank.write_spec), not from a command line."""
    if not nodes.rendezvous:
        where = ["--standalone"]
    else:
        # --node-rank is left out: with c10d torchrun ignores it (and says so); it decides who hosts the store
        conf = f"join_timeout={rendezvous_timeout_s()},is_host={int(nodes.node_rank == 0)}"
        where = [
            "--nnodes",
            str(nodes.nnodes),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            nodes.rdzv_endpoint,
            "--rdzv-id",
            rdzv_id,
            "--rdzv-conf",
            conf,
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        "--nproc-per-node",
        str(nproc),
        *rank_entry.ENTRY,
        str(spec),
    ]


def rendezvous_id(command: str, out_dir) -> str:
    """One run's rendezvous id, which every node derives alike: the command and the absolute --out path
    (nodes that give another folder wait in another rendezvous, and time out, instead of joining this one)."""
    return f"perfkit-{command}-{hashlib.sha256(os.path.abspath(out_dir).encode()).hexdigest()[:16]}"


def rendezvous_timeout_s(env: Mapping[str, str] = os.environ) -> int:
    return max(1, round(float(env.get(RDZV_TIMEOUT_ENV, DEFAULT_RDZV_TIMEOUT_S))))


def launch_env(out_dir, nodes: Nodes = ONE_NODE) -> dict[str, str]:
    """The environment of a launcher's torchrun: NCCL settings, and what its ranks must know of it (it holds
    the folder's lock, its pid for the parent-death race check, its node rank for messages)."""
    env = dict(os.environ)
    set_nccl_env(env)
    mark_held(env, out_dir)
    env[lifeline.LAUNCHER_PID_ENV] = str(os.getpid())
    env[NODE_RANK_ENV] = str(nodes.node_rank)
    return env


def check_launch(
    cfg: EmbedConfig, nproc: int, *, gpus: bool, visible_gpus: int | None = None, nodes: Nodes = ONE_NODE
) -> str:
    """Every check that can fail before torchrun starts (writes nothing); returns the ranks' --device."""
    nodes.check()
    if torchrun_rank() is not None:
        raise UserError(
            "--gpus/--nproc given inside a torchrun launch",
            "drop --gpus/--nproc when calling torchrun yourself",
        )
    if nproc < 1:
        raise UserError(f"asked for {nproc} processes", "pass --gpus/--nproc 1 or more")
    if cfg.mode != "v2":
        raise UserError(
            "v1 mode runs in one process, as VirNucPro v1.0 did", "drop --gpus/--nproc or use --mode v2"
        )
    if gpus:
        visible = torch.cuda.device_count() if visible_gpus is None else visible_gpus
        if nproc > visible:
            raise UserError(
                f"asked for {nproc} GPUs, {visible} visible",
                f"pass --gpus {visible} or fewer, or make more GPUs visible (CUDA_VISIBLE_DEVICES)"
                if visible
                else "run on a GPU node, or use --nproc N for CPU processes",
            )
        if cfg.device not in ("auto", "cuda"):
            raise UserError(
                f"--gpus runs one rank per GPU (cuda:LOCAL_RANK); --device {cfg.device} pins one",
                "drop --device or pass --device cuda",
            )
        device = "cuda"
    else:
        if cfg.device not in ("auto", "cpu"):
            raise UserError(
                f"--nproc runs CPU processes (gloo), not --device {cfg.device}", "use --gpus N for GPUs"
            )
        device = "cpu"
    # the folder's checks compare with what the ranks record: the resolved precision ("auto" is never recorded)
    check_out_dir(check_before_work(cfg.model_copy(update={"device": device})))
    return device


def launch(
    cfg: EmbedConfig, nproc: int, *, gpus: bool, nodes: Nodes = ONE_NODE, verbose: bool = False
) -> int:
    """Run `perfkit embed`'s work in `nproc` ranks under torchrun (on this node, or as node `nodes.node_rank`
    of several), the ranks' output shown as it comes; its exit code."""
    device = check_launch(cfg, nproc, gpus=gpus, nodes=nodes)
    # held here for the whole launch (node 0: the run's lock; other nodes: their own); the ranks take none
    with out_dir_lock(cfg.out_dir, nodes.node_rank):
        code, _, _ = torchrun(
            "embed",
            cfg.model_copy(update={"device": device}),
            nproc,
            nodes,
            env=launch_env(cfg.out_dir, nodes),
            verbose=verbose,
        )
        return code


def torchrun(
    command: str,
    cfg: EmbedConfig,
    nproc: int,
    nodes: Nodes = ONE_NODE,
    *,
    env: Mapping[str, str],
    capture: bool = False,
    timeout_s: float | None = None,
    **extra,
) -> tuple[int, str, float]:
    """torchrun with `nproc` ranks running `command` (embed | predict) on `cfg`, handed to them as data
    (rank.write_spec, with `extra`); a rank's failed check is raised as CheckFailed. -> (exit code, stderr
    when `capture`, wall seconds)."""
    with tempfile.TemporaryDirectory(prefix="perfkit-launch-") as tmp:
        spec = rank_entry.write_spec(Path(tmp), command, cfg, **extra)
        env = {**env, CHECK_FAILED_FILE_ENV: str(Path(tmp) / "check_failed")}
        line = torchrun_command(nproc, spec, nodes, rendezvous_id(command, cfg.out_dir))
        log.info("launching: %s", " ".join(line))
        start = time.perf_counter()
        done = subprocess.run(
            line,
            env=env,
            capture_output=capture,
            text=True,
            timeout=timeout_s,
            preexec_fn=dies_with_this_process(),
        )
        wall = time.perf_counter() - start
        raise_check_failed(done.returncode, env[CHECK_FAILED_FILE_ENV])
    return done.returncode, done.stderr or "", wall


def raise_check_failed(code: int, checks_file) -> None:
    """After a failed launch: a rank's failed check as the launcher's own CheckFailed (exit 3, one line)."""
    failed = check_failed_in_ranks(checks_file) if code != 0 else None
    if failed is not None:
        raise failed


def dies_with_this_process():
    """preexec_fn: the child (torchrun) gets SIGKILL when this process dies; its ranks die with it."""
    return functools.partial(lifeline.torchrun_dies_with_launcher, os.getpid())


def run_multi(cfg: EmbedConfig, nproc: int, *, gpus: bool, timeout_s: float | None = None) -> dict:
    """`cfg` in `nproc` ranks, as `perfkit embed --gpus/--nproc N` runs it (the same checks and lock); the
    run's summary.json. RuntimeError with the ranks' stderr tail if it fails."""
    device = check_launch(cfg, nproc, gpus=gpus)
    with out_dir_lock(cfg.out_dir):
        code, stderr, _ = torchrun(
            "embed",
            cfg.model_copy(update={"device": device}),
            nproc,
            env=launch_env(cfg.out_dir),
            capture=True,
            timeout_s=timeout_s,
        )
    if code != 0:
        raise RuntimeError(f"{nproc}-rank run failed (exit {code}):\n" + tail(stderr))
    return json.loads((cfg.out_dir / "summary.json").read_text())


def tail(stderr: str, lines: int = 25) -> str:
    return "\n".join(stderr.strip().splitlines()[-lines:])
