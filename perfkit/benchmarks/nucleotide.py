"""The nucleotide stage (DNABERT-S) split into its two halves, each measured alone on one GPU:

- model: the same real packed batches (from a synthetic sample, through the run's own dataset) fed
  from GPU memory, per variant: autocast + re-padded SDPA (the path runs took before), bf16 + flex
  attention, and either with compiled blocks; at each token budget. Steady tok/s, MFU against the bf16
  matmul peak measured in the same process and against the H200's dense bf16 spec.
- loader: the DataLoader alone (read blocks, six-frame translation, BPE, packing) at each worker
  count, no GPU: the rate the host can feed.

The stage runs at the lower of the two. Run: python -m perfkit.benchmarks.nucleotide --device cuda
[--reads 60000] [--budgets 16384 65536] [--workers 4 8 12] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

H200_SPEC_BF16_DENSE = 989e12  # FLOP/s, NVIDIA's datasheet figure without sparsity

VARIANTS = {  # name: (autocast, packed kernel, compiled blocks)
    "autocast_sdpa_repadded_eager": (True, "sdpa_repadded", False),
    "bf16_flex_eager": (False, "flex", False),
    "bf16_sdpa_repadded_compiled": (False, "sdpa_repadded", True),
    "bf16_flex_compiled": (False, "flex", True),
}


def packed_batches(fasta: Path, budget: int, limit: int) -> list[dict]:
    """The run's own packed batches (dataset in this process), at most `limit` of them."""
    from perfkit.workload.data import PackedFrames
    from perfkit.workload.encoders import encoder_for

    batches = []
    for batch in PackedFrames(fasta, token_budget=budget, encoder=encoder_for("dnabert_s")):
        if batch.get("sequences"):
            batches.append(batch)
        if len(batches) == limit:
            break
    return batches


def time_model(model, batches: list[dict], device, *, autocast: bool, repeats: int) -> list[float]:
    """tok/s of each of `repeats` passes over the batches, inputs already on the device."""
    names = ("tokens", "positions", "cu_seqlens", "seq_index", "pool_weight")
    inputs = [{**{n: b[n].to(device) for n in names}, "max_seqlen": b["max_seqlen"]} for b in batches]
    for x in inputs:
        x["tokens"] = x["tokens"].long()
    tokens = sum(b["real_tokens"] for b in batches)
    context = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else nullcontext()
    rates = []
    for _ in range(repeats + 1):  # the first pass warms up (compilation, autotuning)
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        with context:
            for x in inputs:
                model.forward_packed(**x)
        torch.cuda.synchronize(device)
        rates.append(tokens / (time.perf_counter() - start))
    return rates[1:]


def loader_rate(fasta: Path, budget: int, workers: int, seconds: float) -> dict:
    from torch.utils.data import DataLoader

    from perfkit.workload.data import PackedFrames, Shard, block_offsets
    from perfkit.workload.encoders import encoder_for

    offsets = block_offsets(fasta, block_reads=1024)
    dataset = PackedFrames(
        fasta,
        token_budget=budget,
        encoder=encoder_for("dnabert_s"),
        shard=Shard(offsets=tuple(offsets.tolist())),
    )
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=4)
    tokens, batches, first, start = 0, 0, None, time.perf_counter()
    for batch in loader:
        if first is None:  # workers started and produced: count from here
            first = time.perf_counter()
            continue
        tokens += batch.get("real_tokens", 0)
        batches += 1
        if time.perf_counter() - first > seconds:
            break
    elapsed = time.perf_counter() - (first or start)
    return {
        "workers": workers,
        "token_budget": budget,
        "tok_per_s": tokens / elapsed if batches else None,
        "batches_counted": batches,
        "seconds": elapsed,
        "startup_s": (first or start) - start,
        "ran_out": time.perf_counter() - (first or start) <= seconds,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--reads", type=int, default=60_000)
    parser.add_argument("--budgets", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 8, 12])
    parser.add_argument("--batches", type=int, default=40, help="batches per model pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loader-seconds", type=float, default=8.0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    from perfkit.workload import dnabert
    from perfkit.workload.device import measure_peak_tflops
    from perfkit.workload.synth import write_synthetic_fasta

    device = torch.device(args.device)
    flops = dnabert.flops_per_token(dnabert.DNABERT_S)
    result = {
        "benchmark": "nucleotide",
        "reads": args.reads,
        "flops_per_token": flops,
        "spec_peak_flops": H200_SPEC_BF16_DENSE,
        "model": [],
        "loader": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "reads.fa"
        write_synthetic_fasta(fasta, args.reads, "reads150", seed=3)
        if device.type == "cuda":
            peak = measure_peak_tflops(device) * 1e12
            result["measured_peak_flops"] = peak
            for budget in args.budgets:
                batches = packed_batches(fasta, budget, args.batches)
                for name in args.variants:
                    autocast, kernel, compiled = VARIANTS[name]
                    torch._dynamo.reset()
                    model, _ = dnabert.build_model(seed=0, device=device, dtype=torch.bfloat16)
                    model.packed_attention = kernel
                    if compiled:
                        model.compile_blocks()
                    rates = time_model(model, batches, device, autocast=autocast, repeats=args.repeats)
                    rate = statistics.median(rates)
                    row = {
                        "variant": name,
                        "token_budget": budget,
                        "batches": len(batches),
                        "tok_per_s_median": rate,
                        "tok_per_s_min": min(rates),
                        "tok_per_s_max": max(rates),
                        "mfu_measured_peak": rate * flops / peak,
                        "mfu_spec_peak": rate * flops / H200_SPEC_BF16_DENSE,
                        "attention_calls": dict(model.attention_calls),
                    }
                    result["model"].append(row)
                    print(json.dumps(row), flush=True)
                    del model
                    torch.cuda.empty_cache()
        for workers in args.workers:
            row = loader_rate(fasta, max(args.budgets), workers, args.loader_seconds)
            result["loader"].append(row)
            print(json.dumps(row), flush=True)
    result["definitions"] = {
        "tok_per_s": "real tokens of the passes / wall seconds, device synced at both ends; median of repeats "
        "after one warm-up pass",
        "mfu": "tok/s x matmul FLOPs per token (2 per multiply-add of every Linear) / peak",
        "loader": "real tokens of packed batches the DataLoader delivered / seconds after its first batch",
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
