"""A short torch.profiler capture of a few v2 packed batches: the top ops/kernels by self time.

The batches are the run's own (same sample, packer, token budget, precision, device), made in
this process without DataLoader workers; only the forward passes are inside the profiler.
On CUDA the table ranks by self device time (the kernels); on CPU by self CPU time (the ops).
"""
from __future__ import annotations

from contextlib import nullcontext
from itertools import islice

import pandas as pd
import torch

from perfkit.errors import UserError
from perfkit.workload import esm2
from perfkit.workload.config import EmbedConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TABLE_COLUMNS = ["name", "calls", "self_ms", "share", "total_ms"]


def _inputs(batch: dict, device: torch.device) -> dict:
    names = ("tokens", "positions", "cu_seqlens", "seq_index", "pool_weight")
    out = {n: batch[n].to(device, non_blocking=True) for n in names}
    out["tokens"] = out["tokens"].long()
    out["max_seqlen"] = batch["max_seqlen"]
    return out


def top_ops(events, *, device_time: bool, top: int) -> pd.DataFrame:
    """Rank profiler key averages by self time (device or CPU); share = of all ops' self time."""
    rows = []
    for event in events:
        if device_time:
            self_us = float(getattr(event, "self_device_time_total", 0.0) or 0.0)
            total_us = float(getattr(event, "device_time_total", 0.0) or 0.0)
        else:
            self_us = float(event.self_cpu_time_total or 0.0)
            total_us = float(event.cpu_time_total or 0.0)
        if self_us > 0:
            rows.append({"name": event.key, "calls": int(event.count), "self_ms": self_us / 1e3,
                         "total_ms": total_us / 1e3})
    table = pd.DataFrame(rows, columns=["name", "calls", "self_ms", "total_ms"])
    total = table["self_ms"].sum()
    table["share"] = table["self_ms"] / total if total > 0 else 0.0
    return table.sort_values("self_ms", ascending=False).head(top).reset_index(drop=True)[TABLE_COLUMNS]


def profile_batches(cfg: EmbedConfig, *, batches: int = 3, warmup: int = 1, top: int = 15) -> dict:
    """Profile `batches` forward passes (after `warmup` unprofiled ones) -> top ops table and context."""
    from torch.profiler import ProfilerActivity, profile

    from perfkit.workload.data import PackedFrames
    from perfkit.workload.runner import pick_device

    device = pick_device(cfg.device)
    cuda = device.type == "cuda"
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if cuda else "fp32")
    dtype = DTYPES[precision]
    dataset = PackedFrames(cfg.input, token_budget=cfg.token_budget, buffer_size=cfg.buffer_size, layout="packed",
                           block_reads=cfg.block_reads, max_reads=cfg.max_reads, chunk_bp=cfg.chunk_bp,
                           max_residues=cfg.max_residues)
    wanted = [b for b in islice((b for b in dataset if b.get("sequences")), warmup + batches)]
    if len(wanted) <= warmup:
        raise UserError(f"the sample gives {len(wanted)} batch(es) at token budget {cfg.token_budget}: nothing to profile",
                        "use a larger sample or a smaller token budget")
    model, _ = esm2.build_model(cfg.model, cfg.weights, seed=cfg.seed, device=device, dtype=dtype)
    autocast = torch.autocast(device.type, dtype=dtype) if cuda and dtype != torch.float32 else nullcontext()

    def forward(batch):
        with autocast:
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
        "batches": len(profiled),
        "warmup": warmup,
        "tokens": int(sum(int(b["real_tokens"]) for b in profiled)),
        "time_basis": "device" if cuda else "CPU",
        "attention_calls": dict(model.attention_calls),
    }
