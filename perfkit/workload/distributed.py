"""Multi-process embedding runs through torchrun: one rank per GPU (NCCL) or per CPU process (gloo).

How the ranks are launched, on one host or several: perfkit.workload.launch. How rank 0 plans the
ranks' shares: perfkit.workload.plan.

In every rank (`run_rank`):
1. rank 0 locks --out (unless the launcher holds its lock: see perfkit.workload.lock), checks and
   prepares it and reads the completed keys of a resumed run; the result (or its error) is
   broadcast, so no rank starts before the folder is ready; on several nodes every rank then checks
   that it sees rank 0's folder and the same input (size and sha256) and has the same settings that
   change results, and all stop, naming the node, if one does not;
2. rank 0 plans (`plan.byte_plan`): one vectorised scan finds every block's byte range, and the
   blocks are cut into contiguous runs of about equal bytes, one per rank (no translation
   pass); every sequence belongs to exactly one rank, and each DataLoader worker parses only
   its own blocks' bytes;
3. each rank embeds its blocks, writing its own shards and telemetry.rank{r}.jsonl;
4. barrier; rank 0 gathers every rank's report, assembles one embeddings.h5 from all shards,
   checks alignment, and writes summary.json: per-rank and summed throughput, imbalance.

A rank that fails makes the run fail: torchrun's agent stops the others and exits non-zero;
collectives have a timeout (PERFKIT_DIST_TIMEOUT_S, default 30 min) so nothing waits forever;
torchrun dies with the launcher and ranks with torchrun's agent (parent-death signals, perfkit.lifeline), so a
killed launch leaves no orphans. A node that dies is noticed by the others at their next collective
(at once when its connections close, else after PERFKIT_DIST_TIMEOUT_S): they keep the shards they
wrote (a resume does not redo them) and exit non-zero, naming the run's nodes.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist

from perfkit import aggregate, lifeline
from perfkit.environment import environment
from perfkit.errors import (
    CheckFailed,
    UserError,
    report_check_failed,
)
from perfkit.sampler import GpuSampler
from perfkit.summary import build_run_summary, write_json
from perfkit.workload import node_view, store
from perfkit.workload.config import EmbedConfig
from perfkit.workload.lock import out_dir_lock
from perfkit.workload.outdir import prepare_out_dir
from perfkit.workload.device import spec_peak
from perfkit.workload.plan import Plan, shared_plan
from perfkit.workload.runner import (
    Share,
    assemble_and_verify,
    check_before_work,
    embed_share,
    run_result,
    steady_gpu,
    telemetry_name,
    warn_truncated,
)
from perfkit.workload.translate import Truncation

log = logging.getLogger(__name__)

# What the GPU machines require of NCCL (no NVLink multicast); set unless the user set them.
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
TIMEOUT_ENV = "PERFKIT_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0
# how long a node's torchrun waits for the other nodes to join (torchrun's own default is 600 s)
RDZV_TIMEOUT_ENV = "PERFKIT_RDZV_TIMEOUT_S"
DEFAULT_RDZV_TIMEOUT_S = 600
NODE_RANK_ENV = "PERFKIT_NODE_RANK"  # the launcher's --node-rank, for the ranks' messages
# rank 0 writes a fresh token here; every rank reads it back: proof that all see one folder
# Fault-injection hook for tests only: rank r raises after its first batch when this is "r".
FAIL_RANK_ENV = "PERFKIT_TEST_FAIL_RANK"


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world: int
    local_rank: int
    node: int = 0  # the node's --node-rank (torchrun's GROUP_RANK when torchrun was called by hand)


def torchrun_rank(env: Mapping[str, str] = os.environ) -> RankInfo | None:
    """This process's place in a torchrun launch, or None when not launched by torchrun."""
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    return RankInfo(
        int(env["RANK"]),
        int(env["WORLD_SIZE"]),
        int(env.get("LOCAL_RANK", env["RANK"])),
        int(env.get(NODE_RANK_ENV, env.get("GROUP_RANK", 0))),
    )


@dataclass(frozen=True)
class Nodes:
    """The hosts of a launch, in torchrun's words (--nnodes, --node-rank, --rdzv-endpoint). One node and no
    endpoint: torchrun --standalone on this host; otherwise torchrun's c10d rendezvous at the endpoint."""

    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None

    @property
    def rendezvous(self) -> bool:
        return self.nnodes > 1 or self.rdzv_endpoint is not None

    def check(self) -> None:
        """The flags' own problems, before anything runs: one-line UserErrors naming the flag as typed."""
        if self.nnodes < 1:
            raise UserError(
                f"--nnodes {self.nnodes}: must be 1 or more", "pass the number of hosts of the run"
            )
        if not 0 <= self.node_rank < self.nnodes:
            raise UserError(
                f"--node-rank {self.node_rank}: must be 0 to --nnodes - 1 ({self.nnodes - 1})",
                "number the nodes 0 to N-1 (node 0 where --rdzv-endpoint points) and pass "
                "--nnodes N on every node",
            )
        if self.rdzv_endpoint is None:
            if self.nnodes > 1:
                raise UserError(
                    f"--nnodes {self.nnodes}: no --rdzv-endpoint",
                    "pass --rdzv-endpoint HOST:PORT, node 0's address and a free port, the same "
                    "on every node",
                )
            return
        host, _, port = self.rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(
                f"--rdzv-endpoint {self.rdzv_endpoint}: not HOST:PORT",
                "pass node 0's host name or address and a free port, e.g. --rdzv-endpoint node0:29500",
            )

    def describe(self, nproc: int) -> str:
        """The launch in words: '2-rank run', '2-node run (1 rank per node)'."""
        if not self.rendezvous:
            return f"{nproc}-rank run"
        return f"{self.nnodes}-node run ({nproc} rank{'s' if nproc != 1 else ''} per node)"


ONE_NODE = Nodes()


def spans_nodes(env: Mapping[str, str] = os.environ) -> bool:
    """True in a rank of a torchrun launch over several nodes (torchrun's GROUP_WORLD_SIZE: its agents)."""
    return int(env.get("GROUP_WORLD_SIZE", "1")) > 1


def set_nccl_env(env) -> None:
    for name, value in NCCL_ENV.items():
        env.setdefault(name, value)


# ---------------------------------------------------------------------------- in the rank


def sampler_for_rank(
    local_rank: int,
    env: Mapping[str, str] | None = None,
    *,
    rank: int | None = None,
    interval_s: float = 1.0,
    device_factory: Callable | None = None,
    warn: bool = True,
) -> GpuSampler:
    """The sampler of one rank: its own physical GPU, i.e. CUDA_VISIBLE_DEVICES[local_rank]."""
    return GpuSampler(
        interval_s=interval_s,
        cuda_index=local_rank,
        env=env,
        device_factory=device_factory,
        tag=f"rank{local_rank if rank is None else rank}",
        warn=warn,
    )


def rank_device(device: str, local_rank: int, cuda_count: int) -> str:
    """cuda:LOCAL_RANK for GPU runs (one GPU per rank), cpu for CPU runs."""
    if device == "cpu":
        return "cpu"
    if device not in ("auto", "cuda"):
        raise UserError(
            f"--device {device} pins one GPU; a torchrun rank uses cuda:LOCAL_RANK",
            "pass --device cuda or auto",
        )
    if cuda_count == 0:
        if device == "auto":
            return "cpu"
        raise UserError(
            "device cuda was asked for but no CUDA GPU is visible", "run on a GPU node or pass --device cpu"
        )
    if local_rank >= cuda_count:
        raise UserError(
            f"local rank {local_rank} has no GPU: {cuda_count} visible on {socket.gethostname()}",
            f"start at most {cuda_count} processes per node (--nproc-per-node)",
        )
    return f"cuda:{local_rank}"


def fault_injection_hook(rank: int, env: Mapping[str, str] = os.environ):
    """Test-only (PERFKIT_TEST_FAIL_RANK=r): rank r raises after its first batch; "r:check" makes it a failed
    count check (CheckFailed), as a real one would be."""
    value = env.get(FAIL_RANK_ENV, "")
    if value.split(":")[0] != str(rank):
        return None

    def fail(batch_index: int) -> None:
        if value.endswith(":check"):
            raise CheckFailed(
                f"count check failed: fault injected by {FAIL_RANK_ENV}={value} after batch {batch_index}"
            )
        raise RuntimeError(f"fault injected by {FAIL_RANK_ENV}={rank} after batch {batch_index}")

    return fail


def rank_main(cfg: EmbedConfig, info: RankInfo) -> dict | None:
    """`perfkit embed` under torchrun: this rank's share; rank 0 returns the run's summary."""
    with errors_named_by_rank(info):
        return run_rank(cfg, info)


@contextmanager
def errors_named_by_rank(info: RankInfo):
    """A rank's errors as one line naming the rank (and its node); a failed check is left for the launcher."""
    try:
        yield
    # named already / a quiet exit (another rank of the node says why)
    except (node_view.NodesDiffer, SystemExit):
        raise
    except UserError as err:
        raise UserError(f"rank {info.rank}: {err.problem}", err.fix) from None
    except CheckFailed as err:
        raise rank_check_failed(err, info) from None
    except BaseException as err:
        print(f"error: {failure_line(err, info)}", file=sys.stderr, flush=True)
        raise


# what a collective raises when another rank's process or host is gone (gloo, NCCL, the c10d store)
LOST_PEER_SIGNS = (
    "closed by peer",
    "reset by peer",
    "broken pipe",
    "connection refused",
    "timed out",
    "timeout",
)
_run_nodes: dict[int, str] = {}  # node rank -> host of every rank, as the ranks told each other at start


def failure_line(err: BaseException, info: RankInfo) -> str:
    """What a rank says when it fails; when the failure is a lost peer, which nodes the run had."""
    line = (
        f"rank {info.rank} of {info.world} (node {info.node}, local rank {info.local_rank} on "
        f"{socket.gethostname()}) failed: {type(err).__name__}: {err}"
    )
    lost = isinstance(err, dist.DistError) or (
        isinstance(err, RuntimeError) and any(sign in str(err).lower() for sign in LOST_PEER_SIGNS)
    )
    if lost and len(_run_nodes) > 1:
        nodes = ", ".join(f"{node} on {host}" for node, host in sorted(_run_nodes.items()))
        line += (
            f" — lost contact with another rank: a node of this run (nodes {nodes}) died, was stopped "
            "or lost the network; its own log says why; start every node again with --resume"
        )
    return " ".join(line.split())


def rank_check_failed(err: CheckFailed, info: RankInfo) -> CheckFailed:
    """A rank's failed check, named with its rank and left for the launcher (torchrun exits 1 whatever the code)."""
    failed = CheckFailed(f"rank {info.rank}: {err}")
    report_check_failed(failed)
    return failed


def run_rank(cfg: EmbedConfig, info: RankInfo) -> dict | None:
    with rank_group(cfg, info) as (device, group):
        return embed_in_ranks(cfg.model_copy(update={"device": device}), info, group)


@contextmanager
def rank_group(cfg: EmbedConfig, info: RankInfo):
    """This rank's process group (NCCL on GPUs, else gloo) and a gloo group for control messages;
    yields (this rank's device, the gloo group)."""
    set_nccl_env(os.environ)
    lifeline.die_with_parent()  # `python -m perfkit` set it already; again for ranks started another way
    device = rank_device(cfg.device, info.local_rank, torch.cuda.device_count())
    if cfg.mode != "v2":
        raise UserError(
            "v1 mode runs in one process, as VirNucPro v1.0 did", "run without torchrun or use --mode v2"
        )
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(info.local_rank)
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout)
    try:
        # small control messages go over gloo (CPU) on every backend: one code path, tested on CPU
        control = dist.new_group(backend="gloo", timeout=timeout)
        yield device, control
        if spans_nodes():
            # several nodes: torchrun's agents wait only 300 s for each other once their own ranks are done,
            # and an agent that leaves may take the rendezvous store with it while rank 0 still assembles
            # (the others' agents then fail, killing rank 0): every rank stays until rank 0 is done
            dist.barrier(control)
    finally:
        dist.destroy_process_group()


def embed_in_ranks(cfg: EmbedConfig, info: RankInfo, group, plan: Plan | None = None) -> dict | None:
    """One embedding run over the ranks of `group`; rank 0 returns its summary. `plan`: decided by the
    caller (the chain plans once for both stages); None = rank 0 makes this run's byte plan."""
    with ExitStack() as held:  # rank 0: the output folder's lock, unless the launcher holds it
        cfg, done_keys = _prepared_by_rank0(cfg, info, group, held)
        if plan is None:
            plan = shared_plan(cfg, info, group)
        if plan.info["blocks"] < 4 * info.world:
            log.warning(
                "only %d blocks for %d ranks: ranks cannot be balanced well; lower block_reads (--block-reads)",
                plan.info["blocks"],
                info.world,
            )
        cuda = cfg.device.startswith("cuda")
        sampler = sampler_for_rank(
            info.local_rank if cuda else 0, rank=info.rank, interval_s=cfg.sample_interval_s, warn=cuda
        )
        share = embed_share(
            cfg,
            done_keys,
            rank=info.rank,
            world=info.world,
            local_rank=info.local_rank,
            shard=plan.shard(info.rank),
            sampler=sampler,
            on_batch=fault_injection_hook(info.rank),
        )
        dist.barrier(group)  # every rank's shards are on disk
        reports = [None] * info.world if info.rank == 0 else None
        dist.gather_object(_report(share, info, plan.blocks[info.rank]), reports, dst=0, group=group)
        if info.rank != 0:
            return None
        return _finish_run(share, reports, plan.info)


def _prepared_by_rank0(
    cfg: EmbedConfig, info: RankInfo, group, held: ExitStack
) -> tuple[EmbedConfig, np.ndarray]:
    """Rank 0 locks (into `held`), checks and prepares --out and reads a resumed run's keys; every rank gets
    the result or the error (a folder in use too: no rank waits for a rank 0 that gave up), then checks
    that it sees what rank 0 sees (check_same_view)."""
    # several nodes: the other ranks hash their input while rank 0 prepares the folder (which hashes it too);
    # the ranks of one host see one file system, so a single node skips the check
    several_nodes = spans_nodes()
    input_seen = node_view.seen_input(cfg.input) if several_nodes and info.rank != 0 else None
    message: list = [None]
    if info.rank == 0:
        try:
            resolved = check_before_work(cfg, info.local_rank)
            held.enter_context(out_dir_lock(resolved.out_dir))
            prepare_out_dir(resolved)
            done = store.completed_keys(resolved.out_dir) if resolved.resume else np.empty(0, np.int64)
            view = node_view.rank0_view(resolved, info) if several_nodes else None
            message = [("ok", resolved.precision, done, view)]
        except UserError as err:
            message = [("error", err.problem, err.fix, None)]
    dist.broadcast_object_list(message, src=0, group=group)
    status, first, second, view = message[0]
    if status == "error":
        raise UserError(first, second)
    if several_nodes:
        node_view.check_same_view(cfg, info, group, view, input_seen, _run_nodes)
    return cfg.model_copy(update={"precision": first}), second


def _report(share: Share, info: RankInfo, blocks: np.ndarray) -> dict:
    """What rank 0 needs from each rank."""
    run = share.run
    return {
        "rank": info.rank,
        "local_rank": info.local_rank,
        "node": info.node,
        "host": socket.gethostname(),
        "device": str(run.device),
        "physical_gpu": run.sampler.physical_index if run.device.type == "cuda" else None,
        "wall_s": share.wall_s,
        "capped": share.capped,
        "frames_translated": run.frames_translated,
        "reads_seen": run.reads_seen,
        "reads_without_frames": len(run.frameless),
        "truncated_sequences": run.truncated.frames,
        "residues_dropped": run.truncated.residues,
        "truncated_ids": run.truncated.ids,
        "blocks": len(blocks),
        "peak_flops": share.peak_flops,
        "gpu": steady_gpu(share),
        "verify_pool": run.verify_pool,
    }


def _finish_run(share: Share, reports: list[dict], plan: dict) -> dict:
    """Rank 0: one embeddings.h5 from every rank's shards, checked; summary.json over all ranks."""
    run, cfg = share.run, share.run.cfg
    world = len(reports)
    frames = sum(r["frames_translated"] for r in reports)
    truncated = Truncation(
        sum(r["truncated_sequences"] for r in reports),
        sum(r["residues_dropped"] for r in reports),
        [i for r in reports for i in r["truncated_ids"]],
    )
    capped = any(r["capped"] for r in reports)
    run.verify_pool = [item for r in reports for item in r["verify_pool"]]  # check rows written by every rank
    reads = (sum(r["reads_seen"] for r in reports), sum(r["reads_without_frames"] for r in reports))
    result = run_result(share, frames, capped=capped, truncated=truncated, reads=reads)
    if not capped:
        result.update(assemble_and_verify(share, frames))
    records = aggregate.read_telemetry([cfg.out_dir / telemetry_name(r, world) for r in range(world)])
    keys = (
        "node",
        "host",
        "local_rank",
        "device",
        "physical_gpu",
        "wall_s",
        "frames_translated",
        "truncated_sequences",
        "blocks",
        "peak_flops",
    )
    per_rank = {r["rank"]: {key: r[key] for key in keys} for r in reports}
    for rank, info in per_rank.items():
        info["planned_weight"] = plan["planned_weight"][rank]
        info["planned_share"] = plan["planned_share"][rank]
    distributed = {
        "world": world,
        "nodes": len({(r["node"], r["host"]) for r in reports}),
        "launcher": "torchrun",
        "backend": dist.get_backend(),
        "nccl_env": {k: os.environ.get(k) for k in NCCL_ENV},
        "plan": plan,
        "ranks": per_rank,
        "throughput_rule": "summed over ranks (never averaged); overall rates use the slowest rank's wall time",
        "imbalance_rule": "slowest rank's embedding wall time / mean over ranks",
    }
    summary = build_run_summary(
        records,
        config=cfg.model_dump(mode="json"),
        environment=environment(),
        wall_s={r["rank"]: r["wall_s"] for r in reports},
        stage=run.stage,
        warmup_batches=cfg.warmup_batches,
        flops_per_token=run.encoder.flops_per_token(),
        peak_flops={r["rank"]: r["peak_flops"] for r in reports},
        gpu={r["rank"]: r["gpu"] for r in reports},
        window_s=cfg.window_s,
        spec_peak_flops=spec_peak(run.device, cfg.precision),
        extra={"run": result, "distributed": distributed},
    )
    write_json(cfg.out_dir / "summary.json", summary)
    warn_truncated(result, run.stage)
    return summary
