"""A run of several nodes checks at start that every rank sees what rank 0 sees: the same --out folder, the
same input (size and sha256), the same settings that change results. The first difference stops every rank
with one line naming the node."""

from __future__ import annotations

import functools
import json
import os
import secrets
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch.distributed as dist

from perfkit.errors import UserError
from perfkit.workload.config import EmbedConfig
from perfkit.workload.outdir import input_identity

if TYPE_CHECKING:
    from perfkit.workload.distributed import RankInfo

SHARED_CHECK_NAME = ".perfkit.shared-check"
SHARED_CHECK_WAIT_S = 10.0  # a network file system may show another host's new file a few seconds late


class NodesDiffer(UserError):
    """A rank sees another output folder or input, or has other settings, than rank 0: the message names that
    rank's node."""


def rank0_view(cfg: EmbedConfig, info: RankInfo) -> dict:
    """What the other ranks must also see: a fresh token in the folder, the input's identity as rank 0 just
    recorded it in run_config.json (no second hash), and the settings that change results."""
    token = secrets.token_hex(16)
    (cfg.out_dir / SHARED_CHECK_NAME).write_text(token)
    recorded = json.loads((cfg.out_dir / "run_config.json").read_text())["input"]
    return {
        "token": token,
        "input": {"size": recorded["size"], "sha256": recorded["sha256"]},
        "result_fields": cfg.result_fields(),
        "node": info.node,
        "host": socket.gethostname(),
    }


def seen_input(path) -> dict:
    """This rank's input: its size and sha256 (input_identity, once per process and file version), or why it
    cannot be read."""
    try:
        stat = os.stat(path)
        return _identity(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    except OSError as err:
        return {"error": err.strerror or str(err)}


@functools.lru_cache(maxsize=4)
def _identity(path: str, size: int, mtime_ns: int) -> dict:
    identity = input_identity(path)
    return {"size": identity["size"], "sha256": identity["sha256"]}


def check_same_view(
    cfg: EmbedConfig, info: RankInfo, group, rank0: dict, input_seen: dict | None, run_nodes: dict
) -> None:
    """Every rank must see rank 0's --out folder (else its shards land where rank 0 never assembles them), the
    same input (else it embeds other reads under the same keys) and run with the same settings that change
    results (a node given another command line). The first difference stops every rank; each node's local
    rank 0 says which node differs and how, the others exit quietly. `run_nodes` gets node rank -> host."""
    problem = None if info.rank == 0 else _what_differs(cfg, info, rank0, input_seen)
    seen: list = [None] * info.world
    dist.all_gather_object(seen, (info.node, socket.gethostname(), problem), group=group)
    if info.rank == 0:
        (Path(cfg.out_dir) / SHARED_CHECK_NAME).unlink(missing_ok=True)
    run_nodes.clear()
    run_nodes.update({node: host for node, host, _ in seen})
    found = next((p for _, _, p in seen if p), None)
    if found:
        if info.local_rank != 0:
            raise SystemExit(2)
        raise NodesDiffer(*found)


def _what_differs(cfg: EmbedConfig, info: RankInfo, rank0: dict, input_seen: dict) -> tuple[str, str] | None:
    """(problem, fix) when this rank sees another folder or input, or has other settings, than rank 0;
    else None."""
    where = f"node {info.node} ({socket.gethostname()}, rank {info.rank})"
    theirs = f"node {rank0['node']} ({rank0['host']})"
    shared = Path(cfg.out_dir) / SHARED_CHECK_NAME
    deadline = time.monotonic() + SHARED_CHECK_WAIT_S
    while True:
        try:
            token = shared.read_text()
        except OSError:
            token = None
        if token == rank0["token"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if token != rank0["token"]:
        there = "no such folder there" if not shared.parent.is_dir() else "the folder there is another one"
        return (
            f"{where} does not see the output folder {cfg.out_dir} that rank 0 on {theirs} prepared "
            f"({there})",
            "give every node the same --out, a folder on a file system they all share",
        )
    if "error" in input_seen:
        return (
            f"{where} cannot read the input {cfg.input}: {input_seen['error']}",
            "give every node the same input file, e.g. on the shared file system",
        )
    mine, ref = input_seen, rank0["input"]
    if (mine["size"], mine["sha256"]) != (ref["size"], ref["sha256"]):
        problem = (
            f"{where} sees another input than rank 0 on {theirs}: {cfg.input} is "
            f"{mine['size']:,} bytes, sha256 {mine['sha256'][:12]}…, "
            f"rank 0's is {ref['size']:,} bytes, sha256 {ref['sha256'][:12]}…"
        )
        return problem, "give every node the same input file, e.g. on the shared file system"
    mine = cfg.result_fields()
    if cfg.precision == "auto":  # rank 0 resolved it for all
        mine["precision"] = rank0["result_fields"]["precision"]
    changed = [
        f"{key} {mine[key]} (rank 0: {rank0['result_fields'].get(key)})"
        for key in sorted(mine)
        if mine[key] != rank0["result_fields"].get(key)
    ]
    if changed:
        return (
            f"{where} runs with other settings than rank 0 on {theirs}: {', '.join(changed)}",
            "run the same command on every node; only --node-rank differs",
        )
    return None
