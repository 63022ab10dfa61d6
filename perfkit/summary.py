"""The run's `summary.json`: throughput, packing, loader, device, GPU samples, stages, config, env.

Multi-process runs: every rank's figures are kept, and throughput is *summed*
over ranks (never averaged); imbalance = slowest rank's wall time / mean.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from perfkit import aggregate
from perfkit.errors import UserError
from perfkit.results import RankThroughput, Throughput
from perfkit.telemetry import jsonable

SUMMARY_SCHEMA = "perfkit.summary/1"


def build_run_summary(
    records: pd.DataFrame,
    *,
    config: dict,
    environment: dict,
    wall_s: dict | float,
    stage: str,
    start_s: dict | float = 0.0,
    warmup_batches: int = 3,
    flops_per_token: float | None = None,
    peak_flops: dict | float | None = None,
    gpu: dict | None = None,
    window_s: float = 10.0,
    spec_peak_flops: float | None = None,
    extra: dict | None = None,
) -> dict:
    """`wall_s` (loop wall time), `start_s` (loop start on the telemetry clock) and `peak_flops` (the matmul
    peak measured on the rank's own GPU): one number, or {rank: value}. `spec_peak_flops`: the GPU's
    data-sheet dense peak, for `mfu_spec` beside `mfu`."""
    batch_records = aggregate.batches(records, stage)
    ranks = sorted(batch_records["rank"].unique().tolist()) if not batch_records.empty else [0]
    walls = wall_s if isinstance(wall_s, dict) else {r: float(wall_s) for r in ranks}
    starts = start_s if isinstance(start_s, dict) else {r: float(start_s) for r in ranks}
    peaks = peak_flops if isinstance(peak_flops, dict) else {r: peak_flops for r in ranks}
    per_rank = {}
    for rank in ranks:
        mine = batch_records[batch_records["rank"] == rank] if not batch_records.empty else batch_records
        per_rank[int(rank)] = aggregate.throughput(
            mine,
            wall_s=walls[rank],
            start_s=starts[rank],
            warmup_batches=warmup_batches,
            flops_per_token=flops_per_token,
            peak_flops=peaks.get(rank),
            spec_peak_flops=spec_peak_flops,
        )
    summed = _summed(per_rank, batch_records)
    run_wall = max(walls.values())
    # each rank's windows end where its loop ended (the end its steady rates use), not at its last batch
    window_table = aggregate.windows(
        batch_records, window_s, end_s={r: starts[r] + walls[r] for r in ranks}, warmup_batches=warmup_batches
    )
    summary = {
        "schema": SUMMARY_SCHEMA,
        "stage": stage,
        "throughput": summed.to_json(),
        "per_rank": {rank: figures.to_json() for rank, figures in per_rank.items()},
        "packing": {
            "efficiency": summed.packing_efficiency,
            "padding_waste": summed.padding_waste,
            "definition": "sum(real tokens) / (batches x token budget); padding waste = padding slots / all slots",
        },
        "loader_wait_s": per_rank[ranks[0]].loader_wait_s
        if len(ranks) == 1
        else {r: v.loader_wait_s for r, v in per_rank.items()},
        "device_busy_fraction": summed.device_busy_fraction,
        "mfu": summed.mfu,
        "mfu_spec": summed.mfu_spec,
        "mfu_definition": "steady real tok/s x matmul FLOPs per token / peak, averaged over ranks: mfu against the "
        "bf16 matmul peak measured in the run on each rank's own GPU (peak_flops), mfu_spec against "
        "the GPU's data-sheet dense peak (spec_peak_flops; none for fp32 or an unknown GPU)",
        "flops_per_token": flops_per_token,
        "peak_flops": peaks.get(ranks[0])
        if len(ranks) == 1 or not isinstance(peak_flops, dict)
        else {int(r): p for r, p in peaks.items()},
        "spec_peak_flops": spec_peak_flops,
        "windows": window_table.to_dict(orient="records"),
        "bottleneck": _bottleneck(window_table, gpu, summed.mfu),
        "checkpoint": aggregate.checkpoint_overhead(records, run_wall),
        "stages_s": aggregate.stage_seconds(records),
        "gpu": gpu or {},
        "config": config,
        "environment": environment,
    }
    if extra:
        summary.update(extra)
    return jsonable(summary)


def _summed(per_rank: dict[int, RankThroughput], batch_records: pd.DataFrame) -> Throughput:
    figures = list(per_rank.values())
    walls = [f.wall_s for f in figures]
    slowest = max(walls)

    def total(key):
        values = [getattr(f, key) for f in figures if getattr(f, key) is not None]
        return sum(values) if values else None

    def mean(key):
        values = [getattr(f, key) for f in figures if getattr(f, key) is not None]
        return sum(values) / len(values) if values else None

    packing = waste = None
    if not batch_records.empty:
        real = float(batch_records["real_tokens"].sum())
        packing = real / float(batch_records["budget_tokens"].sum())
        slots = float(batch_records["slot_tokens"].sum())
        waste = (slots - real) / slots if slots else 0.0
    return Throughput(
        ranks=len(figures),
        sequences=total("sequences"),
        real_tokens=total("real_tokens"),
        batches=total("batches"),
        wall_s=slowest,
        # the run is done when its slowest rank is: overall figures use that wall time
        seq_per_s=total("sequences") / slowest if slowest > 0 else None,
        tok_per_s=total("real_tokens") / slowest if slowest > 0 else None,
        steady_seq_per_s=total("steady_seq_per_s"),
        steady_tok_per_s=total("steady_tok_per_s"),
        device_busy_fraction=mean("device_busy_fraction"),
        loader_wait_fraction=mean("loader_wait_fraction"),
        mfu=mean("mfu"),
        mfu_spec=mean("mfu_spec"),
        rank_imbalance=slowest / (sum(walls) / len(walls)) if sum(walls) > 0 else None,
        packing_efficiency=packing,
        padding_waste=waste,
    )


# a stream busy by CUDA events while NVML sees a kernel running at most this share of the time is waiting
# for the host to enqueue kernels: launch-bound, not device-bound (DNABERT-S eager: 99 % busy, NVML ~30 %)
LAUNCH_BOUND_NVML_PERCENT = 60.0
# ... and whose arithmetic reaches at most this share of the measured matmul peak: a stage at high MFU with a
# low NVML reading is a sampler artefact, not a GPU waiting on launches
LAUNCH_BOUND_MFU = 0.35


def nvml_median(gpu: dict | None) -> float | None:
    """The median NVML utilisation (%) of the run's loop, over its ranks' samplers (mean of their medians);
    None when no rank has an NVML reading. The median, not the mean: compilation at the loop's start
    must not decide the run's verdict."""
    gpu = gpu or {}
    entries = [gpu] if "gpu_utilization_percent" in gpu else [v for v in gpu.values() if isinstance(v, dict)]
    medians = [
        e["gpu_utilization_percent"]["p50"]
        for e in entries
        if (e.get("gpu_utilization_percent") or {}).get("measured")
        and e["gpu_utilization_percent"].get("p50") is not None
    ]
    return sum(medians) / len(medians) if medians else None


def _bottleneck(window_table: pd.DataFrame, gpu: dict | None = None, mfu: float | None = None) -> dict:
    if window_table.empty:
        return {"verdict": "unknown", "windows": {}}
    counts = window_table["verdict"].value_counts().to_dict()
    verdict = max(counts, key=counts.get)
    nvml = nvml_median(gpu)
    out = {
        "verdict": verdict,
        "windows": {str(k): int(v) for k, v in counts.items()},
        "nvml_median_percent": nvml,
        "mfu": mfu,
        "rule": f"per window: data-starved if loader wait > {aggregate.STARVED_WAIT_SHARE:.0%} of it; "
        f"device-bound if device busy (CUDA events) >= {aggregate.DEVICE_BOUND_BUSY_SHARE:.0%}; else "
        f"host-bound. The run: its most frequent window verdict, except that device-bound becomes "
        f"launch-bound when the loop's median NVML utilisation is < {LAUNCH_BOUND_NVML_PERCENT:.0f} % and its "
        f"MFU (measured peak) is < {LAUNCH_BOUND_MFU:.0%} or not measured",
    }
    low_arithmetic = mfu is None or mfu < LAUNCH_BOUND_MFU
    if verdict == "device-bound" and nvml is not None and nvml < LAUNCH_BOUND_NVML_PERCENT and low_arithmetic:
        out["verdict"] = "launch-bound"
        out["why"] = (
            f"the stream is busy by CUDA events in most windows while NVML saw a kernel running "
            f"{nvml:.0f} % of the time (median)"
            + (f" and the arithmetic reached {mfu:.0%} of the matmul peak" if mfu is not None else "")
            + ": the gaps between kernels are the host enqueueing "
            "them, so the GPU waits on launches, not on data or on its own arithmetic"
        )
    return out


def write_json(path: str | Path, obj) -> Path:
    """Write JSON atomically (temp file then rename): a reader never sees half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(jsonable(obj), f, indent=1)
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror}", "choose a writable output folder") from err
    return path
