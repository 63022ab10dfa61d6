"""The whole chain, each stage timed: nucleotide embedding -> protein embedding -> merge -> classifier
-> per-read consensus, in one process or in N ranks of ONE torchrun launch.

Chunking and six-frame translation run inside the embedding stages' DataLoader workers, overlapped
with the GPU. Both embedding stages are ordinary embedding runs (same runner, telemetry, checkpoints,
resume) into OUT/nucleotide/ and OUT/protein/, except that their checked checkpoint shards are the
output (no embeddings.h5): with N ranks, rank 0 first cuts the input into N contiguous runs of blocks
of about equal size (one vectorised scan of the FASTA, the `planning` stage), both stages embed each
rank's own run, and then every rank merges, classifies and calls its own reads straight from the
shards (each rank opens only the shards that hold its keys). Each DataLoader worker parses only its own
blocks' bytes. Rank 0 only joins the ranks' prediction files, in input order. What still grows with the
sample outside the ranks' own share is small and measured: the planning scan (with its duplicate-id
check), rank 0's shard check and the byte copy of the joined CSVs.

Every stage's span goes into OUT/telemetry.jsonl and OUT/summary.json; stages the ranks do in
parallel count the slowest rank. Counts are checked at every stage boundary: frames translated =
embedded (each stage), nucleotide frames = protein frames (per rank, key by key), frames merged =
classified, reads called = reads with a frame.
"""

from __future__ import annotations

import functools
import json
import os
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perfkit.environment import environment
from perfkit.errors import CheckFailed, UserError
from perfkit.summary import write_json
from perfkit.telemetry import Telemetry
from perfkit.workload import classifier as clf
from perfkit.workload import predictions
from perfkit.workload import dnabert, esm2, store
from perfkit.workload.config import EmbedConfig
from perfkit.workload.data import read_frameless
from perfkit.workload.lock import out_dir_lock
from perfkit.workload.outdir import check_out_dir
from perfkit.workload.device import pick_device
from perfkit.workload.runner import check_before_work, run_embed
from perfkit.workload.translate import FRAMES
from perfkit.results import as_summary

MERGE_CHUNK_ROWS = 65_536  # frames merged and classified at a time (~0.9 GB of 3B features, two such buffers)
SHARDS_CACHED = 16  # shards per stage a scoring rank keeps memory-mapped (they follow key order closely)
# threads copying a chunk's vectors out of the shards; None: this host's cores shared by its ranks, two left
# for the scoring and writer threads, 4 to 16 (on 2 x H200, 16 per rank copied ~1.2x faster than 8)
MERGE_THREADS = None
PARTS = "parts"  # per-rank prediction files, joined by rank 0
STAGES = {"nucleotide_embedding": "nucleotide", "protein_embedding": "protein"}  # stage -> its folder in OUT


def run_predict(
    cfg: EmbedConfig,
    *,
    classifier_weights=None,
    hidden: int = 512,
    nproc: int = 1,
    gpus: bool = False,
    launch: bool = False,
    nodes=None,
) -> dict | None:
    """`cfg` is the protein stage's config (its out_dir is the chain's folder); returns summary.json's content.
    v2 runs in ranks of one torchrun launch when `nproc` > 1, on `gpus`, or with `launch` (1 CPU process too:
    the same launch as N ranks, for a like-for-like comparison); otherwise in this process. `nodes`
    (distributed.Nodes): this process launches one node's `nproc` ranks of a run over several nodes; the
    launcher of node 0 returns the summary, the others None."""
    check_chain(cfg, nproc)
    if nodes is not None and nodes.rendezvous:  # always a launch (its checks refuse v1)
        return _launch_ranks(cfg, classifier_weights, hidden, nproc, gpus, nodes)
    if cfg.mode == "v2" and (nproc > 1 or gpus or launch):
        return _launch_ranks(cfg, classifier_weights, hidden, nproc, gpus)
    check_stages(cfg)
    return run_chain(cfg, classifier_weights=classifier_weights, hidden=hidden)


def check_stages(cfg: EmbedConfig) -> None:
    """Each stage folder's checks (a rerun without --resume; a resume with other settings or another input)
    before the chain writes anything, so a refused chain leaves its folder as it was."""
    for stage_cfg in stage_configs(cfg).values():
        check_out_dir(check_before_work(stage_cfg))


def stage_configs(cfg: EmbedConfig) -> dict[str, EmbedConfig]:
    """Each embedding stage's config: its model, its folder in the chain's, its checked shards as output."""
    nucleotide = {"model": cfg.nt_model, "weights": cfg.nt_weights, "random_init": "perfkit"}
    protein = {"model": cfg.model, "weights": cfg.weights, "random_init": cfg.random_init}
    return {
        stage: cfg.model_copy(
            update={**knobs, "out_dir": Path(cfg.out_dir) / STAGES[stage], "assemble": False}
        )
        for stage, knobs in (("nucleotide_embedding", nucleotide), ("protein_embedding", protein))
    }


def check_chain(cfg: EmbedConfig, nproc: int) -> None:
    if cfg.model not in esm2.CONFIGS:
        raise UserError(
            f"predict's --model is the protein (ESM-2) model, got {cfg.model!r}",
            f"pass an ESM-2 model; the nucleotide stage's model is --nt-model (now {cfg.nt_model})",
        )
    if cfg.max_seconds is not None:
        raise UserError(
            "predict cannot be capped by time: the two embedding stages would stop at different reads",
            "cap it by reads (max_reads / --max-reads)",
        )
    if cfg.mode == "v1" and nproc > 1:
        raise UserError("v1 mode runs in one process, as VirNucPro v1.0 did", "drop --nproc or use --mode v2")


def predict_rank(cfg: EmbedConfig, info, *, classifier_weights=None, hidden: int = 512) -> dict | None:
    """`perfkit predict` under torchrun: the whole chain in this rank; rank 0 returns the summary."""
    from perfkit.workload.distributed import errors_named_by_rank, rank_group

    with errors_named_by_rank(info):
        check_chain(cfg, info.world)
        with rank_group(cfg, info) as (device, group):
            return run_chain(
                cfg.model_copy(update={"device": device}),
                Member(info, group),
                classifier_weights=classifier_weights,
                hidden=hidden,
            )


@dataclass(frozen=True)
class Member:
    """Who runs this part of the chain: one rank of a torchrun launch (its RankInfo and gloo group), or the
    only process (`ALONE`)."""

    info: object = None  # distributed.RankInfo
    group: object = None

    @property
    def rank(self) -> int:
        return self.info.rank if self.info else 0

    @property
    def world(self) -> int:
        return self.info.world if self.info else 1

    @property
    def lead(self) -> bool:  # rank 0 (or the only process): times the stages, joins, writes the summary
        return self.rank == 0


ALONE = Member()


def run_chain(
    cfg: EmbedConfig, member: Member = ALONE, *, classifier_weights=None, hidden: int = 512
) -> dict | None:
    """The chain in this process, alone or as one member of a launch, in four steps: plan, embed both stages,
    score (merge, classify, call), summarise. Rank 0 returns the summary, the other ranks None."""
    out = Path(cfg.out_dir)
    with ExitStack() as held:
        if member.lead:  # the chain folder's lock, unless the launcher holds it (its ranks take none)
            held.enter_context(out_dir_lock(out))
        clock = StageClock(out, cfg.mode) if member.lead else None
        try:
            with timed(clock, "planning"):
                plan = plan_chain(cfg, member)
            runs, frames = embed_stages(cfg, member, plan, clock)
            scored = score(cfg, member, plan, clock, classifier_weights=classifier_weights, hidden=hidden)
        finally:
            if clock is not None:
                clock.telemetry.close()
        if not member.lead:
            return None
        return summarise(cfg, member, plan, runs, frames, *scored, clock)


class StageClock:
    """Rank 0's stage times: the chain's telemetry.jsonl, and when each stage started (unix time)."""

    def __init__(self, out: Path, mode: str):
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").unlink(missing_ok=True)  # no summary of an earlier chain survives a failed one
        self.out, self.telemetry, self.started = (
            out,
            Telemetry(out / "telemetry.jsonl", run_id=f"predict-{mode}"),
            {},
        )


def timed(clock: StageClock | None, name: str):
    if clock is None:
        return nullcontext()
    clock.started[name] = time.time()
    return clock.telemetry.stage(name)


def plan_chain(cfg: EmbedConfig, member: Member):
    """Any torchrun launch, even of 1 rank, plans once for both stages; a single process needs no plan
    (run_embed finds the blocks' byte ranges itself)."""
    from perfkit.workload.plan import shared_plan

    return shared_plan(cfg, member.info, member.group) if member.info else None


def embed_stages(cfg: EmbedConfig, member: Member, plan, clock) -> tuple[dict, int | None]:
    """Both embedding stages on the same frames; (their summaries, the frames embedded: rank 0 only)."""
    from perfkit.workload.distributed import embed_in_ranks

    runs = {}
    for stage, stage_cfg in stage_configs(cfg).items():
        with timed(clock, stage):
            runs[stage] = (
                embed_in_ranks(stage_cfg, member.info, member.group, plan)
                if member.info
                else run_embed(stage_cfg)
            )
    if not member.lead:
        return runs, None
    counts = {stage: r["run"]["output"]["count"] for stage, r in runs.items()}
    if len(set(counts.values())) != 1:
        raise CheckFailed(f"count check failed between the embedding stages: {counts}")
    return runs, counts["protein_embedding"]


def score(cfg: EmbedConfig, member: Member, plan, clock, *, classifier_weights, hidden: int):
    """Every member merges, classifies and calls its own reads; rank 0 gathers the reports, joins the parts
    and times the steps by the slowest member. -> (reports, written) on rank 0, (None, None) elsewhere."""
    import torch.distributed as dist

    start, start_unix = (clock.telemetry.now(), time.time()) if clock else (None, None)
    lo, hi = key_range(plan.blocks[member.rank], cfg.block_reads) if plan else (0, np.iinfo(np.int64).max)
    mine = score_reads(cfg, lo, hi, rank=member.rank, classifier_weights=classifier_weights, hidden=hidden)
    reports = [mine]
    if member.info:
        reports = [None] * member.world if member.lead else None
        dist.gather_object(mine, reports, dst=0, group=member.group)
    if not member.lead:
        return None, None
    join_start = time.perf_counter()
    written = _join_parts(clock.out, member.world)
    join_s = time.perf_counter() - join_start
    end = clock.telemetry.now()
    # the slowest member's scoring, split into its own steps (per-step maxima of different ranks would add up
    # to more than any rank spent); joining the ranks' files is rank 0's, after every rank
    slowest = max(reports, key=lambda r: r["merge_s"] + r["classify_s"] + r["consensus_s"])
    for stage, key in (("merge", "merge_s"), ("classifier", "classify_s"), ("consensus", "consensus_s")):
        clock.started[stage] = start_unix
        clock.telemetry.stage_total(
            stage, slowest[key] + (join_s if stage == "consensus" else 0.0), start, end
        )
    return reports, written


def summarise(
    cfg: EmbedConfig,
    member: Member,
    plan,
    runs: dict,
    frames: int,
    reports: list,
    written: dict,
    clock: StageClock,
) -> dict:
    """The chain's count checks across its steps, then summary.json."""
    scored = sum(r["frames"] for r in reports)
    if scored != frames:
        raise CheckFailed(f"count check failed after classifier: {frames} frames embedded, {scored} scored")
    reads_called = sum(r["reads"] for r in reports)
    no_frame = sum(r["no_frame_reads"] for r in reports)
    if written["reads"] != reads_called + no_frame or written["frames"] != frames:
        raise CheckFailed(f"count check failed joining the ranks' predictions: {written}")
    protein_run = runs["protein_embedding"]["run"]
    input_reads = protein_run.get("input_reads")
    if not protein_run.get("capped") and input_reads is not None and input_reads != reads_called + no_frame:
        raise CheckFailed(
            f"count check failed: {input_reads} input reads, {reads_called} called + {no_frame} "
            "without a frame"
        )
    stages = dict(clock.telemetry.stages)
    embedding_s = stages["nucleotide_embedding"] + stages["protein_embedding"]
    summary = {
        "schema": "perfkit.predict/2",
        "mode": cfg.mode,
        "ranks": member.world,
        "stages_s": stages,
        "stage_started_unix": clock.started,
        "end_to_end_s": sum(stages.values()),
        "bottleneck_stage": max(stages, key=stages.get),
        "stage_share": {k: v / embedding_s for k, v in stages.items() if k.endswith("embedding")},
        "counts": {
            "input_reads": input_reads,
            "reads_with_frames": reads_called,
            "reads_without_frames": no_frame,
            "frames": frames,
            "reads_called": reads_called,
            "virus_reads": sum(r["virus_reads"] for r in reports),
            # frames cut to max_residues (both stages cut the same frames)
            "truncated_sequences": protein_run["truncated_sequences"],
        },
        "stage_runs": {k: stage_run(r) for k, r in runs.items()},
        "stage_throughput": {
            k: {"steady_tok_per_s": t.steady_tok_per_s, "seq_per_s": t.seq_per_s, "ranks": t.ranks}
            for k, t in ((k, as_summary(r).throughput) for k, r in runs.items())
        },
        "plan": plan.info if plan else None,
        "score_ranks": reports,
        "classifier": reports[0]["classifier"],
        "predictions": written,
        "note": "translation runs inside the embedding stages' DataLoader workers, overlapped with the model; "
        "merge, classifier and consensus run in every rank on its own reads: each counts the slowest rank",
        "environment": environment(),
    }
    write_json(clock.out / "summary.json", summary)
    return summary


def key_range(blocks: np.ndarray, block_reads: int) -> tuple[int, int]:
    """Keys [lo, hi) of a contiguous run of blocks (key = read index x 6 + frame; a block is `block_reads`
    reads, the last one may be shorter); an empty run has an empty range."""
    if not len(blocks):
        return 0, 0
    return int(blocks[0]) * block_reads * len(FRAMES), (int(blocks[-1]) + 1) * block_reads * len(FRAMES)


def stage_summaries(out_dir) -> dict:
    """Each embedding stage's summary.json of a finished chain in `out_dir`."""
    return {
        stage: json.loads((Path(out_dir) / folder / "summary.json").read_text())
        for stage, folder in STAGES.items()
    }


def score_reads(
    cfg: EmbedConfig, lo: int, hi: int, *, rank: int = 0, classifier_weights=None, hidden: int = 512
) -> dict:
    """Merge, classify and call the frames with keys in [lo, hi) (whole reads) from both stages' shards;
    writes OUT/parts/{frames,reads}.r{rank}.csv; returns counts and the time of each step.

    Only the shards that can hold keys in [lo, hi) are opened. Chunk by chunk (whole reads): each stage's
    vectors are copied once into its own host block (pinned on CUDA), shard by shard in row order by a
    pool of threads (pread out of the page cache); the classifier puts the two blocks side by side on the
    device while the next chunk is copied; the consensus and CSV text of a chunk are done by a writer
    thread. Each step's time is what this thread spent in it, so the three add up to the scoring's wall
    time (consensus_thread_s: the writer's own time, overlapped)."""
    from concurrent.futures import ThreadPoolExecutor

    out = Path(cfg.out_dir)
    t = time.perf_counter()
    nt, protein = (
        store.ShardIndex(out / STAGES[stage], lo, hi, cache=SHARDS_CACHED)
        for stage in ("nucleotide_embedding", "protein_embedding")
    )
    keys = protein.keys
    if not np.array_equal(keys, nt.keys):
        raise CheckFailed(
            f"count check failed in rank {rank}: {len(nt.keys)} nucleotide frames, "
            f"{len(keys)} protein frames, or different frames, in its reads"
        )
    protein_dim = esm2.get_config(cfg.model).embed_dim
    nt_dim = dnabert.CONFIGS[cfg.nt_model].embed_dim  # 768 for DNABERT-S
    # the same rule on 1 and N processes (auto: the GPU when there is one)
    device = str(pick_device(cfg.device))
    model, info = clf.load_classifier(
        classifier_weights, hidden=hidden, in_dim=nt_dim + protein_dim, seed=cfg.seed
    )
    chunks = protein.read_chunks(MERGE_CHUNK_ROWS, len(FRAMES))
    rows = max((b - a for a, b in chunks), default=0)
    # reads without a frame in this rank's reads, each placed with the chunk whose reads it falls among
    no_frame_index, no_frame_ids = read_frameless(
        out / STAGES["protein_embedding"],
        lo // len(FRAMES),
        None if hi >= np.iinfo(np.int64).max else -(-hi // len(FRAMES)),
    )
    chunk_ends = [int(keys[b]) // len(FRAMES) if b < len(keys) else np.iinfo(np.int64).max for _, b in chunks]
    cuts = np.searchsorted(no_frame_index, chunk_ends) if chunks else np.empty(0, np.int64)
    # on CUDA chunk i fills one pair of blocks while chunk i - 1 is on the device (on CPU it runs in between)
    buffers = [
        (clf.host_block(rows, nt_dim, device), clf.host_block(rows, protein_dim, device))
        for _ in range(min(len(chunks), 2 if device.startswith("cuda") else 1))
    ]
    writer = predictions.PredictionWriter(out / PARTS / f"r{rank:03d}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = MERGE_THREADS or min(16, max(4, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - 2))
    merge_s, classify_s, consensus_s = time.perf_counter() - t, 0.0, 0.0
    pending = None  # (start, stop, ids, result) of the chunk on the device

    def collect():
        nonlocal classify_s, consensus_s
        a, b, ids, result, i = pending
        t = time.perf_counter()
        probs = result()
        classify_s += time.perf_counter() - t
        t = time.perf_counter()
        first = cuts[i - 1] if i else 0
        writer.add(
            keys[a:b], ids, probs, no_frame=(no_frame_index[first : cuts[i]], no_frame_ids[first : cuts[i]])
        )
        consensus_s += time.perf_counter() - t

    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="perfkit-merge") as pool:
            for i, (a, b) in enumerate(chunks):
                t = time.perf_counter()
                nt_block, protein_block = buffers[i % len(buffers)]
                where_nt = nt.fill(a, b, nt_block.numpy()[: b - a], pool=pool)
                where_protein = protein.fill(a, b, protein_block.numpy()[: b - a], pool=pool)
                ids = protein.ids_at(a, b)
                merge_s += time.perf_counter() - t
                t = time.perf_counter()
                result = clf.launch_parts(
                    model,
                    [(nt_block[: b - a], where_nt), (protein_block[: b - a], where_protein)],
                    device=device,
                )
                classify_s += time.perf_counter() - t
                if pending:
                    collect()  # after launching this chunk: the device works on it meanwhile
                pending = (a, b, ids, result, i)
            if pending:
                collect()
            if not chunks and len(no_frame_ids):  # reads, none with a frame
                writer.add(
                    np.empty(0, np.int64),
                    np.empty(0, dtype="U1"),
                    np.empty((0, len(clf.CLASSES)), np.float32),
                    no_frame=(no_frame_index, no_frame_ids),
                )
        t = time.perf_counter()
        written = writer.close()
        consensus_s += time.perf_counter() - t
    except BaseException:
        writer.abort()
        raise
    if written["frames"] != len(keys):
        raise CheckFailed(
            f"count check failed in rank {rank}: {len(keys)} frames merged, {written['frames']} written"
        )
    if written["no_frame_reads"] != len(no_frame_ids):
        raise CheckFailed(
            f"count check failed in rank {rank}: {len(no_frame_ids)} reads without a frame, "
            f"{written['no_frame_reads']} written"
        )
    return {
        "rank": rank,
        "key_range": [int(lo), int(hi)],
        "device": device,
        "frames": len(keys),
        "reads": written["reads"],
        "virus_reads": written["virus_reads"],
        "no_frame_reads": written["no_frame_reads"],
        "merge_s": merge_s,
        "classify_s": classify_s,
        "consensus_s": consensus_s,
        "consensus_thread_s": writer.busy_s,
        "merge_threads": threads,
        "classifier": info,
    }


def _join_parts(out: Path, world: int) -> dict:
    """The ranks' prediction files, one after another (their reads are consecutive runs of the input),
    into OUT/predictions_per_{frame,read}.csv: header once, temp file then rename."""
    counts = {}
    for kind, name in (("frames", predictions.FRAME_CSV), ("reads", predictions.READ_CSV)):
        final = out / name
        tmp = final.with_name(name + ".tmp")
        rows = 0
        with open(tmp, "wb") as joined:
            for rank in range(world):
                with open(out / PARTS / f"r{rank:03d}" / name, "rb") as part:
                    header = part.readline()
                    if rank == 0:
                        joined.write(header)
                    for block in iter(functools.partial(part.read, 1 << 24), b""):
                        rows += block.count(b"\n")
                        joined.write(block)
        os.replace(tmp, final)
        counts[kind] = rows
    return {
        "frames_csv": str(out / predictions.FRAME_CSV),
        "reads_csv": str(out / predictions.READ_CSV),
        **counts,
    }


def stage_run(summary: dict) -> dict:
    """What a projection needs from one embedding stage's summary."""
    t = as_summary(summary).throughput
    return {
        "model": summary["config"]["model"],
        "sequences": t.sequences,
        "real_tokens": t.real_tokens,
        "tokens_per_sequence": t.real_tokens / t.sequences if t.sequences else None,
        "steady_tok_per_s": t.steady_tok_per_s,
        "wall_s": t.wall_s,
        "model_load_s": float((summary.get("stages_s") or {}).get("model_load", 0.0)),
        "ranks": t.ranks or 1,
        "weights": (summary.get("run") or {}).get("weights"),
    }


def compare_runs(dir_a, dir_b) -> dict:
    """Prediction agreement of two chains (e.g. v1 and v2) from their prediction CSVs and summaries."""
    import json

    frames_a, reads_a = predictions.read_predictions(dir_a)
    frames_b, reads_b = predictions.read_predictions(dir_b)
    info = [json.loads((Path(d) / "summary.json").read_text())["classifier"] for d in (dir_a, dir_b)]
    return predictions.prediction_agreement(reads_a, reads_b, frames_a, frames_b, info[0], info[1])


def _launch_ranks(
    cfg: EmbedConfig, classifier_weights, hidden: int, nproc: int, gpus: bool, nodes=None
) -> dict | None:
    """The chain in `nproc` ranks of one torchrun launch (`perfkit predict` in every rank), on this node or as
    node `nodes.node_rank` of several; its summary (node 0's launcher), None (another node's)."""
    from perfkit.workload import distributed, launch

    nodes = nodes or distributed.ONE_NODE
    # the chain folder may hold stages
    device = launch.check_launch(cfg.model_copy(update={"resume": True}), nproc, gpus=gpus, nodes=nodes)
    check_stages(cfg.model_copy(update={"device": device}))  # as the ranks will run them
    # held here for the whole launch (node 0: the run's lock; other nodes: their own); the ranks take none
    with out_dir_lock(cfg.out_dir, nodes.node_rank):
        code, stderr, wall = launch.torchrun(
            "predict",
            cfg.model_copy(update={"device": device}),
            nproc,
            nodes,
            env=launch.launch_env(cfg.out_dir, nodes),
            capture=True,
            hidden=hidden,
            classifier=str(classifier_weights) if classifier_weights else None,
        )
        if code != 0:
            raise RuntimeError(
                f"{nodes.describe(nproc)} of the chain (torchrun) failed (exit {code}):\n"
                + launch.tail(stderr)
            )
        if nodes.node_rank != 0:  # node 0's launcher adds the launch to the summary, once
            return None
        return _launch_summary(Path(cfg.out_dir) / "summary.json", wall)


def _launch_summary(path: Path, wall: float) -> dict:
    """The ranks' summary.json with the launch's own time added as a stage."""
    summary = json.loads(path.read_text())
    # torchrun's start, every rank's imports and process-group set-up, and their exit: outside every span
    launch = max(wall - summary["end_to_end_s"], 0.0)
    summary["stages_s"] = {"launch": launch, **summary["stages_s"]}
    summary["end_to_end_s"] += launch
    summary["bottleneck_stage"] = max(summary["stages_s"], key=summary["stages_s"].get)
    summary["launch_wall_s"] = wall
    summary["note"] += (
        "; launch = the launching process's wall time of the torchrun command minus the chain's "
        "own spans (torchrun start, rank imports, process groups, exit)"
    )
    write_json(path, summary)
    return summary
