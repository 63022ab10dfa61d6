"""A short torch.profiler capture of a few v2 packed batches of either embedding stage: the top
ops/kernels by self time, and on CUDA the gaps between kernels.

The batches are the run's own (same sample, packer, token budget, precision, device, encoder), made in
this process without DataLoader workers; only the forward passes are inside the profiler.
On CUDA the table ranks by self device time (the kernels); on CPU by self CPU time (the ops).
The kernel gaps show a launch-bound stage directly: CUDA events count a stream as busy from the
first kernel of a batch to its last, while in between the device may sit idle waiting for the host
to enqueue the next kernel.
"""

from __future__ import annotations

from contextlib import nullcontext
from itertools import islice

import pandas as pd
import torch

from perfkit.criteria import not_measured
from perfkit.errors import UserError
from perfkit.workload.config import EmbedConfig
from perfkit.workload.encoders import encoder_for

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TABLE_COLUMNS = ["name", "calls", "self_ms", "share", "total_ms"]


def _inputs(batch: dict, device: torch.device) -> dict:
    names = ("tokens", "positions", "cu_seqlens", "seq_index", "pool_weight")
    out = {n: batch[n].to(device, non_blocking=True) for n in names}
    out["tokens"] = out["tokens"].long()
    out["max_seqlen"] = batch["max_seqlen"]
    return out


def top_ops(events, *, device_time: bool, top: int) -> pd.DataFrame:
    """Rank profiler key averages by self time (device or CPU); share = of all rows' self time.

    Device time: the kernels only. An operator row (aten::addmm) carries the device time of the kernels it
    launched, which have rows of their own: counting both would count that time twice and rank operators
    among kernels."""
    from torch.autograd import DeviceType

    rows = []
    for event in events:
        if device_time and getattr(event, "device_type", None) != DeviceType.CUDA:
            continue
        if device_time:
            self_us = float(getattr(event, "self_device_time_total", 0.0) or 0.0)
            total_us = float(getattr(event, "device_time_total", 0.0) or 0.0)
        else:
            self_us = float(event.self_cpu_time_total or 0.0)
            total_us = float(event.cpu_time_total or 0.0)
        if self_us > 0:
            rows.append(
                {
                    "name": event.key,
                    "calls": int(event.count),
                    "self_ms": self_us / 1e3,
                    "total_ms": total_us / 1e3,
                }
            )
    table = pd.DataFrame(rows, columns=["name", "calls", "self_ms", "total_ms"])
    total = table["self_ms"].sum()
    table["share"] = table["self_ms"] / total if total > 0 else 0.0
    return table.sort_values("self_ms", ascending=False).head(top).reset_index(drop=True)[TABLE_COLUMNS]


def kernel_gaps(kernels: list[tuple[float, float]]) -> dict:
    """From the (start, end) times (µs) of the device's kernels in a profiled window: how much of the window
    no kernel ran. Overlapping kernels (several streams) count once; the window runs from the first kernel's
    start to the last one's end."""
    if not kernels:
        return not_measured(
            "no device kernels in the capture (CPU run, or the profiler saw no CUDA activity)"
        )
    spans = sorted(kernels)
    busy, gaps = 0.0, []
    start, end = spans[0]
    for s, e in spans[1:]:
        if s > end:
            busy += end - start
            gaps.append(s - end)
            start, end = s, e
        else:
            end = max(end, e)
    busy += end - start
    window = max(e for _, e in spans) - spans[0][0]
    durations = sorted(e - s for s, e in spans)
    return {
        "kernels": len(spans),
        "window_ms": window / 1e3,
        "kernel_ms": busy / 1e3,
        "idle_share": 1.0 - busy / window if window > 0 else 0.0,
        "median_kernel_us": float(durations[len(durations) // 2]),
        "median_gap_us": float(sorted(gaps)[len(gaps) // 2]) if gaps else 0.0,
        "definition": "idle share = time in the profiled window with no kernel running / the window (first "
        "kernel's start to last kernel's end); kernels on several streams count once",
    }


def _device_kernels(prof) -> list[tuple[float, float]]:
    from torch.autograd import DeviceType

    return [
        (float(e.time_range.start), float(e.time_range.end))
        for e in prof.events()
        if e.device_type == DeviceType.CUDA and e.time_range.end > e.time_range.start
    ]


def profile_batches(cfg: EmbedConfig, *, batches: int = 3, warmup: int = 1, top: int = 15) -> dict:
    """Profile `batches` forward passes (after `warmup` unprofiled ones) -> top ops table and context."""
    from torch.profiler import ProfilerActivity, profile

    from perfkit.workload.data import PackedFrames
    from perfkit.workload.device import pick_device
    from perfkit.workload.kernels import inductor_settings, set_model_kernels, takes_multi_kernel
    from perfkit.workload.runner import run_autocast

    cfg = cfg.for_stage()  # a nucleotide model runs with its stage's own knobs, as in the chain
    device = pick_device(cfg.device)
    cuda = device.type == "cuda"
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if cuda else "fp32")
    dtype = DTYPES[precision]
    encoder = encoder_for(cfg.model, cfg.tokenizer)
    dataset = PackedFrames(
        cfg.input,
        token_budget=cfg.token_budget,
        buffer_size=cfg.buffer_size,
        layout="packed",
        block_reads=cfg.block_reads,
        max_reads=cfg.max_reads,
        chunk_bp=cfg.chunk_bp,
        max_residues=cfg.max_residues,
        encoder=encoder,
    )
    wanted = [b for b in islice((b for b in dataset if b.get("sequences")), warmup + batches)]
    if len(wanted) <= warmup:
        raise UserError(
            f"the sample gives {len(wanted)} batch(es) at token budget {cfg.token_budget}: nothing to profile",
            "use a larger sample or a smaller token budget",
        )
    model, _ = encoder.build(cfg.weights, cfg.seed, device, dtype)
    set_model_kernels(model, cfg, encoder)  # the kernels the run takes (attention, fused epilogues)
    compiled = bool(cfg.compile and cuda and hasattr(model, "compile_blocks"))
    if compiled:  # as the run does: the warm-up batches compile, the profiled ones run the compiled blocks
        model.compile_blocks(**({} if encoder.nucleotide else {"whole_stack": cfg.compile_scope == "stack"}))
    autocast = run_autocast(device, dtype, encoder) if cfg.autocast else nullcontext()
    multi_kernel = takes_multi_kernel(cfg, encoder, compiled)

    def forward(batch):
        with inductor_settings(multi_kernel), autocast:
            return model.forward_packed(**_inputs(batch, device))

    for batch in wanted[:warmup]:
        forward(batch)
    if cuda:
        torch.cuda.synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    profiled = wanted[warmup:]
    with profile(activities=activities, record_shapes=False) as prof:
        for batch in profiled:
            forward(batch)
        if cuda:
            torch.cuda.synchronize(device)
    table = top_ops(prof.key_averages(), device_time=cuda, top=top)
    return {
        "table": table,
        "device": str(device),
        "precision": precision,
        "model": cfg.model,
        "stage": encoder.stage,
        "compiled": compiled,
        "kernel_gaps": kernel_gaps(_device_kernels(prof)) if cuda else not_measured("CPU: no device kernels"),
        "batches": len(profiled),
        "warmup": warmup,
        "tokens": int(sum(int(b["real_tokens"]) for b in profiled)),
        "time_basis": "device" if cuda else "CPU",
        "attention_calls": dict(getattr(model, "attention_calls", {})),
    }
