"""Embedding runs: v2 (packed, async, mixed precision) and v1 (fair-esm as VirNucPro v1.0 ran it).

Both write OUTDIR/embeddings.h5 (ids + float32 vectors in translated input order),
OUTDIR/telemetry.jsonl and OUTDIR/summary.json, and both emit the same telemetry.
`run_embed` is the one-process run; `embed_share` is one process's part of it, which
perfkit.workload.distributed also runs in every rank of a torchrun launch.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader

from perfkit import aggregate
from perfkit.busy import DeviceBusyTimer
from perfkit.environment import environment, tf32_flags
from perfkit.errors import CheckFailed, UserError
from perfkit.loader import InstrumentedLoader
from perfkit.progress import LiveProgress
from perfkit.sampler import GpuSampler
from perfkit.summary import build_run_summary, write_json
from perfkit.telemetry import Telemetry
from perfkit.workload import esm2, store, v1
from perfkit.workload.config import EmbedConfig
from perfkit.workload.encoders import PROTEIN_STAGE, encoder_for
from perfkit.workload.kernels import build_model, inductor_settings, takes_multi_kernel
from perfkit.workload.device import measure_peak_tflops, pick_device, spec_peak
from perfkit.workload.data import FRAMELESS_FILE, PackedFrames, Shard, block_offsets, write_frameless
from perfkit.workload.lock import out_dir_lock
from perfkit.workload.outdir import check_fasta_start, check_out_dir, prepare_out_dir
from perfkit.workload.translate import FRAMES, Truncation

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
STAGE = PROTEIN_STAGE  # the ESM-2 stage; a run's own stage is `Run.stage` (its encoder's)


def telemetry_name(rank: int, world: int) -> str:
    return "telemetry.jsonl" if world == 1 else f"telemetry.rank{rank}.jsonl"


class Run:
    """What both runners share: device, telemetry, sampler, progress, checkpoint store."""

    def __init__(
        self,
        cfg: EmbedConfig,
        rank: int = 0,
        world: int = 1,
        local_rank: int = 0,
        *,
        shard: Shard = Shard(),
        sampler: GpuSampler | None = None,
        on_batch=None,
    ):
        self.cfg, self.rank, self.world, self.shard = cfg, rank, world, shard
        self.encoder = encoder_for(cfg.model, cfg.tokenizer)
        self.stage = self.encoder.stage
        self.on_batch = on_batch  # called with the batch index after each batch (fault injection in tests)
        if cfg.allocator:
            os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", cfg.allocator)
        self.device = pick_device(cfg.device, local_rank)
        self.dtype = DTYPES[cfg.precision]
        if self.device.type == "cpu" and cfg.precision != "fp32":
            log.warning(
                "precision %s on CPU is slow and not what the GPU runs; use fp32 on CPU", cfg.precision
            )
        self.t0 = time.perf_counter()
        self.loop_t0, self.loop_epoch = self.t0, time.time()  # reset when the embedding loop starts
        self.telemetry = Telemetry(
            cfg.out_dir / telemetry_name(rank, world), run_id=cfg.out_dir.name, rank=rank, clock_start=self.t0
        )
        self.sampler = sampler or GpuSampler(
            interval_s=cfg.sample_interval_s,
            cuda_index=(self.device.index or 0) if self.device.type == "cuda" else 0,
            tag=f"rank{rank}",
            warn=self.device.type == "cuda",
        )
        self.busy = DeviceBusyTimer(self.device)
        self.store = store.CheckpointStore(
            cfg.out_dir,
            rank=rank,
            every_sequences=cfg.checkpoint_every_sequences,
            every_seconds=cfg.checkpoint_every_seconds,
            telemetry=self.telemetry,
        )
        self.frames_translated = 0
        self.reads_seen = 0  # input reads this process translated (v2 and v1 alike)
        self.frameless: list[tuple[int, str]] = []  # (read index, id) of its reads that kept no frame
        self.truncated = Truncation()  # frames cut to max_residues, and the residues dropped
        # (key, tokens) of a few sequences, recomputed at the end
        self.verify_pool: list[tuple[int, np.ndarray]] = []

    def keep_for_verification(
        self, keys: np.ndarray, tokens: np.ndarray, lengths: np.ndarray, batch_index: int
    ):
        if len(self.verify_pool) < self.cfg.verify_samples and batch_index % 7 == 0 and len(keys):
            self.verify_pool.append((int(keys[0]), tokens[: int(lengths[0])].copy()))


def resolve(cfg: EmbedConfig, local_rank: int = 0) -> EmbedConfig:
    """Settle 'auto' choices (device, precision) so the summary records what really ran."""
    device = pick_device(cfg.device, local_rank)  # a missing GPU is reported before anything is written
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return cfg.model_copy(update={"device": str(device), "precision": precision})


def check_before_work(cfg: EmbedConfig, local_rank: int = 0) -> EmbedConfig:
    """Input present and readable, device available: the resolved config, or a UserError before any work."""
    if not cfg.input.exists():
        raise UserError(f"input {cfg.input} does not exist", "pass the path of a FASTA file")
    cfg = resolve(cfg, local_rank)
    if cfg.random_init == "fair-esm" and encoder_for(cfg.model).nucleotide:
        raise UserError(
            f"random_init fair-esm is for ESM-2 models, not {cfg.model}", "use random_init: perfkit"
        )
    check_fasta_start(cfg.input)
    return cfg


def run_embed(cfg: EmbedConfig, done_keys=None) -> dict:
    """Run v1 or v2 as configured, in this one process; returns the summary (also written to summary.json)."""
    cfg = check_before_work(cfg)
    check_out_dir(cfg)  # a refused run writes nothing, not even the lock file (checked again under the lock)
    with out_dir_lock(cfg.out_dir):  # one run per folder, from its first check to its summary
        prepare_out_dir(cfg)
        if done_keys is None:
            done_keys = store.completed_keys(cfg.out_dir) if cfg.resume else np.empty(0, np.int64)
        offsets = block_offsets(
            cfg.input, block_reads=cfg.block_reads, max_reads=cfg.max_reads, chunk_bp=cfg.chunk_bp
        )
        # workers read their own bytes
        shard = Shard() if offsets is None else Shard(offsets=tuple(offsets.tolist()))
        return _finish(embed_share(cfg, done_keys, shard=shard))


@dataclass
class Share:
    """One process's part of a run, after its loop: what the output checks and the summary need."""

    run: Run
    model: object
    wall_s: float
    capped: bool
    peak_flops: float | None
    weights_info: dict
    attention: dict


def embed_share(
    cfg: EmbedConfig,
    done_keys,
    *,
    rank: int = 0,
    world: int = 1,
    local_rank: int = 0,
    shard: Shard = Shard(),
    sampler: GpuSampler | None = None,
    on_batch=None,
) -> Share:
    """Embed this process's blocks (`shard`) of a resolved config; checkpoints and telemetry are closed on return."""
    cfg = cfg.for_stage()
    run = Run(cfg, rank, world, local_rank, shard=shard, sampler=sampler, on_batch=on_batch)
    peak = None
    if run.device.type == "cuda":
        peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops else measure_peak_tflops(run.device) * 1e12
    name = f"{run.stage} {cfg.model}" + (f" rank{rank}" if world > 1 else "")
    # counts input reads (known before any frame is translated): a total, a percentage and an ETA
    progress = LiveProgress(
        total=shard.reads(cfg.input, cfg.block_reads) if cfg.mode == "v2" else None,
        desc=f"{name}: loading the model",
        unit="read" if cfg.mode == "v2" else "frame",
        disable=not cfg.progress,
    )
    batches = start_loader(run, done_keys) if cfg.mode == "v2" else None
    with run.telemetry.stage("model_load"):
        model, weights_info = build_model(run)
    run.sampler.start()
    progress.set_description(
        f"{name}: first batch (compiling)" if cfg.compile and run.device.type == "cuda" else name
    )
    loop_start = run.telemetry.now()
    # batch arrival times count from here, the clock of `wall`: steady-state rates (wall - first steady
    # arrival) must not count model loading and the peak-FLOPs probe as embedding time
    run.loop_t0, run.loop_epoch = time.perf_counter(), time.time()
    try:
        with run.telemetry.stage(run.stage):
            if cfg.mode == "v2":
                # inductor compiles at the first batch: its settings must hold over the whole loop
                compiled = cfg.compile and run.device.type == "cuda"
                with inductor_settings(takes_multi_kernel(cfg, run.encoder, compiled)):
                    capped = _loop_v2(run, model, batches, progress)
            elif run.encoder.nucleotide:
                capped = v1.loop_nucleotide(run, model, done_keys, progress)
            else:
                capped = v1.loop_protein(run, model, done_keys, progress)
        wall = run.telemetry.now() - loop_start
    finally:
        progress.close()
        run.sampler.stop()
        try:
            run.store.close()  # raises a failed checkpoint write (after the writer's last telemetry record)
        finally:
            run.telemetry.close()
    write_frameless(cfg.out_dir, rank, run.frameless)
    attention = dict(getattr(model, "attention_calls", {})) or {"fair-esm": "MultiheadAttention (padded)"}
    if cfg.mode == "v1" and run.encoder.nucleotide:
        attention["v1"] = f"padded batches of {cfg.v1_nt_batch_sequences} sequence(s) in file order"
    return Share(run, model, wall, capped, peak, weights_info, attention)


def run_result(
    share: Share,
    frames_translated: int,
    capped: bool | None = None,
    truncated: Truncation | None = None,
    reads: tuple[int, int] | None = None,
) -> dict:
    """The summary's `run` section, before the output is assembled. `truncated`: the run's frames cut to
    max_residues; `reads`: (input reads, reads without a frame) of the run (default: this process's)."""
    cfg = share.run.cfg
    truncated = share.run.truncated if truncated is None else truncated
    seen, frameless = reads if reads is not None else (share.run.reads_seen, len(share.run.frameless))
    return {
        "capped": share.capped if capped is None else capped,
        "frames_translated": frames_translated,
        # a capped run stopped early: its counts cover the reads it reached, not the input
        "input_reads": seen,
        "reads_with_frames": seen - frameless,
        "reads_without_frames": frameless,
        "reads_without_frames_file": FRAMELESS_FILE.format(rank="*") if frameless else None,
        "truncated_sequences": truncated.frames,
        "residues_dropped": truncated.residues,
        "truncated_ids_file": write_truncated_ids(cfg.out_dir, truncated.ids),
        "max_residues": cfg.max_residues,
        "weights": share.weights_info,
        "attention_path": share.attention,
        "model": cfg.model,
        "mode": cfg.mode,
        "precision": cfg.precision,
        "device": str(share.run.device),
        "batch_rule": cfg.batch_rule(share.run.encoder.nucleotide),
        "tf32": tf32_flags(),
    }


TRUNCATED_IDS = "truncated_sequences.txt"


def write_truncated_ids(out_dir, ids) -> str | None:
    """OUT/truncated_sequences.txt: the ids of the frames cut to max_residues, one a line, sorted; None when
    there are none (an earlier run's list is removed)."""
    path = out_dir / TRUNCATED_IDS
    if not ids:
        path.unlink(missing_ok=True)
        return None
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{i}\n" for i in sorted(ids)))
    os.replace(tmp, path)
    return str(path)


def warn_truncated(result: dict, stage: str) -> None:
    """One warning line at the end of a run that cut frames to max_residues (silent otherwise)."""
    if result["truncated_sequences"]:
        log.warning(
            "%s: %s of %s frames were longer than max_residues=%d and were cut to it (%s residues dropped; "
            "ids in %s); split long reads with chunk_bp to embed them whole",
            stage,
            f"{result['truncated_sequences']:,}",
            f"{result['frames_translated']:,}",
            result["max_residues"],
            f"{result['residues_dropped']:,}",
            result["truncated_ids_file"],
        )


def assemble_and_verify(share: Share, frames_translated: int) -> dict:
    """The run's output, checked: every shard -> embeddings.h5 (count checked), or, with `assemble`
    off, the shards themselves (same checks); then the alignment check on it."""
    cfg = share.run.cfg
    start = time.perf_counter()
    if not cfg.assemble:
        output, index = store.check_shards(cfg.out_dir, expected_count=frames_translated, frame_names=FRAMES)
        output["check_s"] = time.perf_counter() - start
        return {
            "output": output,
            "alignment_check": verify_alignment(share.run, share.model, cfg, index.vectors),
        }
    output = store.assemble(
        cfg.out_dir,
        expected_count=frames_translated,
        frame_names=FRAMES,
        attrs={
            "model": cfg.model,
            "mode": cfg.mode,
            "precision": cfg.precision,
            "weights": json.dumps(share.weights_info),
        },
    )
    output["assemble_s"] = time.perf_counter() - start
    with h5py.File(cfg.out_dir / "embeddings.h5", "r") as h5:
        stored_keys = h5["keys"][:]

        def stored(keys):
            rows = np.searchsorted(stored_keys, keys)
            if rows.max() >= len(stored_keys) or not np.array_equal(stored_keys[rows], keys):
                raise CheckFailed("alignment check failed: a key is missing from embeddings.h5")
            return h5["embeddings"][rows]  # keys come sorted and unique: rows ascend

        return {"output": output, "alignment_check": verify_alignment(share.run, share.model, cfg, stored)}


def _finish(share: Share) -> dict:
    run, cfg = share.run, share.run.cfg
    records = aggregate.read_telemetry(run.telemetry.writer.path)
    result = run_result(share, run.frames_translated)
    if not share.capped:
        result.update(assemble_and_verify(share, run.frames_translated))
    summary = build_run_summary(
        records,
        config=cfg.model_dump(mode="json"),
        environment=environment(),
        wall_s=share.wall_s,
        stage=run.stage,
        warmup_batches=cfg.warmup_batches,
        flops_per_token=run.encoder.flops_per_token(),
        peak_flops=share.peak_flops,
        gpu=steady_gpu(share),
        window_s=cfg.window_s,
        spec_peak_flops=spec_peak(run.device, cfg.precision),
        extra={"run": result},
    )
    write_json(cfg.out_dir / "summary.json", summary)
    warn_truncated(result, run.stage)
    return summary


def steady_gpu(share: Share) -> dict:
    """This process's NVML samples over its steady state: from its first batch after the warm-up batches
    (aggregate.steady_start_s, the start the rates use) to the loop's end."""
    run = share.run
    records = aggregate.batches(aggregate.read_telemetry(run.telemetry.writer.path), run.stage)
    start = aggregate.steady_start_s(records, run.cfg.warmup_batches)
    end = run.loop_epoch + share.wall_s
    return run.sampler.summary(since=end if start is None else run.loop_epoch + start, until=end)


class TimeCap:
    """`max_seconds` of steady state: the clock starts when the warm-up batches are done, so model
    compilation or a slow first batch never eats the measured time. `reached(n)` after n batches."""

    def __init__(self, max_seconds: float | None, warmup_batches: int):
        self.max_seconds, self.warmup = max_seconds, warmup_batches
        self.deadline = time.perf_counter() + max_seconds if max_seconds and warmup_batches == 0 else None

    def reached(self, batches_done: int) -> bool:
        if not self.max_seconds:
            return False
        if self.deadline is None:
            if batches_done < self.warmup:
                return False
            self.deadline = time.perf_counter() + self.max_seconds
        return time.perf_counter() > self.deadline


# ---------------------------------------------------------------------------- v2


def start_loader(run: Run, done_keys):
    """The v2 batches, their DataLoader workers started: they read, translate and pack while the model is
    built (the first batch took ~3 s after a 4-6 s build, one after the other, in every rank of every launch)."""
    cfg = run.cfg
    dataset = PackedFrames(
        cfg.input,
        token_budget=cfg.token_budget,
        buffer_size=cfg.buffer_size,
        layout=cfg.layout,
        block_reads=cfg.block_reads,
        max_reads=cfg.max_reads,
        chunk_bp=cfg.chunk_bp,
        max_residues=cfg.max_residues,
        done_keys=done_keys,
        shard=run.shard,
        encoder=run.encoder,
    )
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=cfg.num_workers,
        prefetch_factor=cfg.prefetch_factor if cfg.num_workers else None,
        pin_memory=cfg.pin_memory and run.device.type == "cuda",
        persistent_workers=False,
    )
    return iter(loader)


def _loop_v2(run: Run, model, batches, progress) -> bool:
    cfg, device = run.cfg, run.device
    cuda = device.type == "cuda"
    if cfg.compile and cuda and cfg.layout == "packed" and hasattr(model, "compile_blocks"):
        if run.encoder.nucleotide:
            model.compile_blocks()
        else:
            model.compile_blocks(whole_stack=cfg.compile_scope == "stack")
    forward = model.forward_packed if cfg.layout == "packed" else run.encoder.forward_padded(model)
    copy_stream = torch.cuda.Stream(device) if cuda and cfg.copy_stream else None
    compute_stream = torch.cuda.current_stream(device) if cuda else None
    in_flight: deque = deque()  # (done_event, host_vectors, keys, ids) waiting for the device
    iloader = InstrumentedLoader(batches, clock_start=run.loop_t0)
    cap = TimeCap(cfg.max_seconds, cfg.warmup_batches)
    capped = False
    batch_index = 0
    autocast = run_autocast(device, run.dtype, run.encoder) if cfg.autocast else nullcontext()
    for batch in iloader:
        arrival = iloader.last
        if "user_error" in batch:  # raised in a worker: re-raise here as the same one-line error
            raise UserError(*batch["user_error"])
        run.frames_translated += batch["frames_translated"]
        run.reads_seen += batch.get("reads_seen", 0)
        run.frameless.extend(batch.get("frameless_reads") or ())
        # workers count
        run.truncated.add(batch["truncated_sequences"], batch["residues_dropped"], batch["truncated_ids"])
        if batch["sequences"] == 0:
            progress.update(0, 0, 0, advance=batch.get("reads_seen", 0))
            continue
        host_start = time.perf_counter()
        keys, ids = batch["keys"].numpy(), batch["ids"]
        run.keep_for_verification(
            keys, batch["tokens"].numpy().ravel(), batch["lengths"].numpy(), batch_index
        )
        inputs = _to_device(batch, device, copy_stream, compute_stream, cfg.layout)
        with run.busy.measure() as span, autocast:
            pooled = forward(**inputs)
            vectors = _to_host(pooled, cuda)
        in_flight.append((_event(cuda), vectors, keys, ids))
        _drain(run, in_flight, wait=False)
        run.telemetry.batch(
            stage=run.stage,
            t_arrive_s=arrival.t_arrive_s,
            loader_wait_s=arrival.wait_s,
            host_s=time.perf_counter() - host_start,
            span=span,
            sequences=batch["sequences"],
            real_tokens=batch["real_tokens"],
            slot_tokens=batch["slot_tokens"],
            budget_tokens=batch["budget_tokens"],
            queue_depth=arrival.queue_depth,
            clock_start=run.loop_t0,
        )
        progress.update(
            batch["sequences"],
            batch["real_tokens"],
            batch["budget_tokens"],
            advance=batch.get("reads_seen", 0),
        )
        if batch_index == 0 and cfg.compile and device.type == "cuda":
            progress.set_description(progress.bar.desc.split(":")[0])  # compiled: the stage's own name again
        if run.on_batch is not None:
            run.on_batch(batch_index)
        if batch_index % 20 == 0:
            last = run.sampler.latest()
            progress.set_gpu_util(last.get("gpu_utilization_percent") if last else None)
        batch_index += 1
        if cap.reached(batch_index):
            capped = True
            break
    _drain(run, in_flight, wait=True)
    return capped


def run_autocast(device: torch.device, dtype, encoder):
    """Autocast for ESM-2 in half precision. The nucleotide model runs in its own dtype without it: under
    autocast its LayerNorm outputs are fp32, which forbids flex attention (a re-padded SDPA with a dense
    [B, H, T, T] ALiBi mask instead) and adds a cast kernel to every op of a launch-bound model."""
    if device.type != "cuda" or dtype == torch.float32 or encoder.nucleotide:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _to_device(batch: dict, device, copy_stream, compute_stream, layout: str) -> dict:
    names = (
        ("tokens", "positions", "cu_seqlens", "seq_index", "pool_weight")
        if layout == "packed"
        else ("tokens",)
    )
    if device.type != "cuda":
        out = {n: batch[n] for n in names}
    else:
        with torch.cuda.stream(copy_stream) if copy_stream is not None else nullcontext():
            out = {n: batch[n].to(device, non_blocking=True) for n in names}
        if copy_stream is not None:
            compute_stream.wait_stream(copy_stream)
            for t in out.values():
                # memory made on the copy stream is used on the compute stream
                t.record_stream(compute_stream)
    if layout == "packed":
        out["max_seqlen"] = batch["max_seqlen"]
        out["tokens"] = out["tokens"].long()
    else:
        out["tokens"] = out["tokens"].long()
    return out


def _to_host(pooled: torch.Tensor, cuda: bool) -> torch.Tensor:
    if not cuda:
        return pooled.float()
    host = torch.empty(pooled.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(pooled.float(), non_blocking=True)
    return host


def _event(cuda: bool):
    if not cuda:
        return None
    event = torch.cuda.Event()
    event.record()
    return event


def _drain(run: Run, in_flight: deque, wait: bool) -> None:
    """Hand finished batches to the checkpoint store without syncing on unfinished ones."""
    while in_flight:
        event, vectors, keys, ids = in_flight[0]
        if event is not None and not event.query():
            if not wait:
                return
            event.synchronize()
        run.store.add(keys, ids, vectors.numpy().copy())
        in_flight.popleft()


# ---------------------------------------------------------------------------- checks


def verify_alignment(run: Run, model, cfg: EmbedConfig, stored) -> dict:
    """Recompute a few sequences alone and compare with the rows stored under their keys
    (`stored(keys)` -> those rows)."""
    if not run.verify_pool:
        return {"checked": 0, "passed": True}
    keys = np.array([key for key, _ in run.verify_pool], dtype=np.int64)
    order = np.argsort(keys)
    rows = stored(keys[order])
    worst = 1.0
    for row, i in zip(rows, order):
        alone = _embed_one(model, cfg, run.encoder, run.verify_pool[i][1], run.device).astype(np.float64)
        row = row.astype(np.float64)
        worst = min(worst, float(alone @ row / (np.linalg.norm(alone) * np.linalg.norm(row))))
    threshold = 0.9999 if cfg.precision == "fp32" else 0.99
    if worst < threshold:
        raise CheckFailed(
            f"alignment check failed: a stored vector has cosine {worst:.4f} with its sequence recomputed alone"
        )
    return {"checked": len(run.verify_pool), "min_cosine": worst, "threshold": threshold, "passed": True}


def _embed_one(model, cfg: EmbedConfig, encoder, tokens: np.ndarray, device) -> np.ndarray:
    lengths = np.array([len(tokens)], dtype=np.int32)
    with (
        torch.no_grad(),
        run_autocast(device, DTYPES[cfg.precision], encoder) if cfg.autocast else nullcontext(),
    ):
        if cfg.mode == "v2" or encoder.nucleotide:
            inputs = esm2.packed_to_torch(encoder.packed_inputs(tokens, lengths), device)
            if cfg.mode == "v1":
                return encoder.forward_padded(model)(inputs["tokens"][None])[0].float().cpu().numpy()
            if cfg.layout == "packed":
                return model.forward_packed(**inputs)[0].float().cpu().numpy()
            return encoder.forward_padded(model)(inputs["tokens"][None])[0].float().cpu().numpy()
        toks = torch.from_numpy(tokens)[None].to(device)
        reps = model(toks, repr_layers=[model.num_layers])["representations"][model.num_layers]
        return reps[0, 1:-1].float().mean(0).cpu().numpy()
