"""Planning a multi-rank run: rank 0 scans the FASTA's block byte ranges once (`byte_plan`) and cuts the
blocks into contiguous runs of about equal bytes, one per rank (`contiguous_blocks`); every sequence
belongs to exactly one rank, and each DataLoader worker parses only its own blocks' bytes. The plan is
broadcast to the other ranks (`shared_plan`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch.distributed as dist

from perfkit.errors import UserError
from perfkit.workload.config import EmbedConfig
from perfkit.workload.data import Shard, block_offsets, block_sizes

if TYPE_CHECKING:  # the ranks' own module imports this one
    from perfkit.workload.distributed import RankInfo


def contiguous_blocks(weights: np.ndarray, world: int) -> list[np.ndarray]:
    """Consecutive runs of blocks, one per rank, cut where the running weight is nearest k/world of the
    total: each rank holds one contiguous range of reads (so of keys). With thousands of blocks this is
    as even as any assignment; an empty run only when there are fewer blocks than ranks."""
    weights = np.asarray(weights, dtype=np.int64)
    running = np.concatenate(([0], np.cumsum(weights)))
    cuts = [0]
    for k in range(1, world):
        target = running[-1] * k / world
        cut = int(np.clip(np.abs(running - target).argmin(), cuts[-1], len(weights)))
        cuts.append(cut)
    cuts.append(len(weights))
    return [np.arange(a, b, dtype=np.int64) for a, b in zip(cuts[:-1], cuts[1:])]


@dataclass(frozen=True)
class Plan:
    """Which blocks each rank embeds, decided once by rank 0 and shared by every stage of a run."""

    blocks: list[np.ndarray]  # each rank's block indices, one contiguous run, input order
    info: dict  # plan_summary: what summary.json records
    offsets: np.ndarray | None  # data.block_offsets: each block's byte range; None = parse the stream

    def shard(self, rank: int) -> Shard:
        return Shard(
            tuple(self.blocks[rank].tolist()),
            planned_blocks=self.info["blocks"],
            offsets=None if self.offsets is None else tuple(self.offsets.tolist()),
        )


def byte_plan(cfg: EmbedConfig, world: int) -> Plan:
    """Contiguous runs of blocks of about equal bytes of FASTA (bases where the input cannot be cut by
    bytes), one per rank: no translation pass, and the same plan serves both embedding stages."""
    start = time.perf_counter()
    offsets = block_offsets(
        cfg.input, block_reads=cfg.block_reads, max_reads=cfg.max_reads, chunk_bp=cfg.chunk_bp
    )
    sizes = (
        np.diff(offsets)
        if offsets is not None
        else block_sizes(
            cfg.input, block_reads=cfg.block_reads, max_reads=cfg.max_reads, chunk_bp=cfg.chunk_bp
        )
    )
    blocks = contiguous_blocks(sizes, world)
    info = plan_summary(
        sizes,
        blocks,
        balance="contiguous runs of blocks, cut at equal shares",
        weight="bytes of FASTA per block (bases for gzipped or chunked input; no translation)",
    )
    info["worker_input"] = (
        "each DataLoader worker reads its own blocks' byte ranges"
        if offsets is not None
        else "gzipped or chunked input: each worker parses the stream and skips other blocks"
    )
    info["plan_s"] = time.perf_counter() - start
    return Plan(blocks, info, offsets)


def shared_plan(cfg: EmbedConfig, info: RankInfo, group) -> Plan:
    """Rank 0's byte plan, broadcast to every rank (its error too, as a one-line UserError everywhere)."""
    message: list = [None]
    if info.rank == 0:
        try:
            message = [("ok", byte_plan(cfg, info.world))]
        except UserError as err:
            message = [("error", (err.problem, err.fix))]
    dist.broadcast_object_list(message, src=0, group=group)
    status, value = message[0]
    if status == "error":
        raise UserError(*value)
    return value


def plan_summary(weights: np.ndarray, plan: list[np.ndarray], *, balance: str, weight: str) -> dict:
    """What summary.json records of a plan: each rank's planned weight (`weight` says in what unit) and share."""
    planned = [int(weights[blocks].sum()) for blocks in plan]
    total = sum(planned)
    mean = total / len(planned) if planned else 0
    return {
        "balance": balance,
        "weight": weight,
        "blocks": int(len(weights)),
        "total_weight": total,
        "planned_weight": {r: t for r, t in enumerate(planned)},
        "planned_share": {r: (t / total if total else None) for r, t in enumerate(planned)},
        "planned_imbalance": max(planned) / mean if mean else None,
    }
