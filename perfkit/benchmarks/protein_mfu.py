"""The protein stage's levers, each measured alone on one GPU, on the same packed batches, side by side.

A run is `variant@token_budget`. Every run builds ESM-2 with the same seeded weights, feeds the run's own
packed batches (a synthetic sample through the pipeline's dataset) from GPU memory, and reports steady
tok/s (median and min-max of repeats after one warm-up pass), MFU against the bf16 matmul peak measured
in this process and against the data-sheet peak, and the equivalence gate against fair-esm fp32 with the
same weights on the real sequences of the first batch (pooled vectors, and for every run the hidden
states of its tokens too).

Variants (attention kernel, compilation, shapes, matmul precision):
  eager_varlen              no compilation
  compiled_varlen           compiled blocks, any token count (the pipeline's default)
  compiled_sdpa_repadded    attention through a padded view and SDPA (cuDNN / flash)
  compiled_flex             flex_attention with a same-sequence block mask
  static_compiled_varlen    packs padded to fixed shapes (pad_packed), compiled for them
  static_autotune_varlen    ... and mode="max-autotune-no-cudagraphs": GEMM kernels autotuned per shape,
                            bias-GELU fused into the GEMM epilogue where inductor's templates win
  static_cudagraphs_varlen  ... and mode="reduce-overhead": each block replayed as a CUDA graph
  static_gelu_epilogue_varlen  fc1 + bias + GELU in one cuBLASLt call (its epilogue GELU is the tanh
                            approximation, not fair-esm's erf: the gate decides)
  compiled_mem_efficient    the cutlass memory-efficient varlen kernel (64-query tiles: less waste on short frames)
  gelu_epilogue_*, stack_*  the GELU epilogue without static shapes; one compiled graph over all layers
  residual_*                the residual adds inside out_proj's and fc2's GEMM epilogues (biases carried to
                            the next norm): no separate add kernel, one tensor less through memory per add
  *_multikernel             inductor's multi-kernel: each norm also as a persistent reduction (one read of
                            the row), the faster of the two picked by timing at run time
  fp8_compiled_varlen       Linear layers in FP8 (torchao row-wise dynamic scaling), compiled blocks
  fp8_static_autotune_varlen

Also, without the model: the sustained bf16 GEMM rate at each of the model's four Linear shapes at each
budget (the ceiling the blocks can reach), the LayerNorm kernels' bandwidth at the pack's shape, and a
kernel-time breakdown of the runs named by --profile-runs.

Run: python -m perfkit.benchmarks.protein_mfu --device cuda [--model esm2_t36_3B]
     [--runs compiled_varlen@16384 compiled_varlen@65536 ...] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# the gate the issue names for the 3B: every row within these against fair-esm fp32
GATE_MIN_COSINE = 0.9999
GATE_MAX_RELATIVE_ERROR = 0.01


@dataclass(frozen=True)
class Variant:
    attention: str = "varlen_attn"
    compile: bool = True
    mode: str | None = None
    static: bool = False
    fp8: bool = False
    gelu_epilogue: bool = False
    whole_stack: bool = False
    residual_epilogue: bool = False
    multi_kernel: bool = False


VARIANTS = {
    "eager_varlen": Variant(compile=False),
    "compiled_varlen": Variant(),
    "compiled_sdpa_repadded": Variant(attention="sdpa_repadded"),
    "compiled_flex": Variant(attention="flex"),
    "static_compiled_varlen": Variant(static=True),
    "static_autotune_varlen": Variant(static=True, mode="max-autotune-no-cudagraphs"),
    "static_cudagraphs_varlen": Variant(static=True, mode="reduce-overhead"),
    "static_gelu_epilogue_varlen": Variant(static=True, gelu_epilogue=True),
    "compiled_mem_efficient": Variant(attention="mem_efficient_varlen"),
    "gelu_epilogue_varlen": Variant(gelu_epilogue=True),
    "gelu_epilogue_mem_efficient": Variant(attention="mem_efficient_varlen", gelu_epilogue=True),
    "stack_gelu_epilogue_mem_efficient": Variant(
        attention="mem_efficient_varlen", gelu_epilogue=True, whole_stack=True
    ),
    "stack_gelu_epilogue_varlen": Variant(gelu_epilogue=True, whole_stack=True),
    "residual_gelu_epilogue_mem_efficient": Variant(
        attention="mem_efficient_varlen", gelu_epilogue=True, residual_epilogue=True
    ),
    "gelu_epilogue_mem_efficient_multikernel": Variant(
        attention="mem_efficient_varlen", gelu_epilogue=True, multi_kernel=True
    ),
    "residual_gelu_epilogue_mem_efficient_multikernel": Variant(
        attention="mem_efficient_varlen", gelu_epilogue=True, residual_epilogue=True, multi_kernel=True
    ),
    "fp8_compiled_varlen": Variant(fp8=True),
    "fp8_static_autotune_varlen": Variant(static=True, mode="max-autotune-no-cudagraphs", fp8=True),
}
DEFAULT_RUNS = [
    "compiled_varlen@16384",
    "compiled_varlen@32768",
    "compiled_varlen@65536",
    "compiled_varlen@131072",
    "eager_varlen@16384",
    "compiled_sdpa_repadded@16384",
    "compiled_flex@16384",
    "static_compiled_varlen@16384",
    "static_autotune_varlen@16384",
    "static_cudagraphs_varlen@16384",
    "fp8_compiled_varlen@16384",
    "fp8_static_autotune_varlen@16384",
]
INPUT_NAMES = ("tokens", "positions", "cu_seqlens", "seq_index", "pool_weight")


def user_error(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_run(spec: str) -> tuple[str, int]:
    name, _, budget = spec.partition("@")
    if name not in VARIANTS or not budget.isdigit():
        user_error(
            f"--runs {spec}: write variant@token_budget, e.g. compiled_varlen@16384, with a variant among "
            f"{', '.join(VARIANTS)}"
        )
    return name, int(budget)


def packed_batches(fasta: Path, model: str, budget: int, limit: int) -> list[dict]:
    """The pipeline's own packed batches for `model` at `budget` (dataset in this process), numpy arrays."""
    from perfkit.workload.data import PackedFrames
    from perfkit.workload.encoders import Encoder

    batches = []
    for batch in PackedFrames(fasta, token_budget=budget, encoder=Encoder(model)):
        if batch.get("sequences"):
            arrays = {n: batch[n].numpy() for n in INPUT_NAMES}
            batches.append(
                {
                    **arrays,
                    "max_seqlen": batch["max_seqlen"],
                    "real_tokens": batch["real_tokens"],
                    "sequences": batch["sequences"],
                }
            )
        if len(batches) == limit:
            break
    return batches


def static_shapes(batches: list[dict], budget: int) -> dict:
    """One (token_budget, max_seqs, max_seqlen) that every batch pads to."""
    max_seqlen = max(b["max_seqlen"] for b in batches)
    fillers = max(math.ceil((budget - b["real_tokens"]) / max_seqlen) for b in batches)
    return {
        "token_budget": budget,
        "max_seqlen": max_seqlen,
        "max_seqs": max(b["sequences"] for b in batches) + fillers,
    }


def device_inputs(batches: list[dict], device, shapes: dict | None) -> list[dict]:
    from perfkit.workload import esm2

    out = []
    for b in batches:
        arrays = {**{n: b[n] for n in INPUT_NAMES}, "max_seqlen": b["max_seqlen"]}
        if shapes:
            arrays = esm2.pad_packed(arrays, **shapes)
        out.append(esm2.packed_to_torch(arrays, device))
    return out


def build(model_name: str, variant: Variant, device, seed: int = 0):
    from perfkit.workload import esm2

    model, _ = esm2.build_model(model_name, seed=seed, device=device, dtype=torch.bfloat16)
    esm2.set_kernels(
        model,
        attention=variant.attention,
        gelu_epilogue=variant.gelu_epilogue,
        residual_epilogue=variant.residual_epilogue,
    )
    if variant.fp8:
        esm2.to_float8(model)
    if variant.compile:
        model.compile_blocks(mode=variant.mode, dynamic=not variant.static, whole_stack=variant.whole_stack)
    return model


def timed_passes(model, inputs: list[dict], tokens: int, repeats: int) -> tuple[list[float], float]:
    """tok/s of each of `repeats` passes after one warm-up pass, and the warm-up's seconds."""
    rates, warmup_s = [], None
    for _ in range(repeats + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for x in inputs:
            model.forward_packed(**x)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if warmup_s is None:
            warmup_s = seconds
        else:
            rates.append(tokens / seconds)
    return rates, warmup_s


def fairesm_reference(model, batch: dict, device) -> tuple[np.ndarray, np.ndarray]:
    """fair-esm fp32 (TF32 off) with `model`'s weights on the batch's sequences: pooled [B, D] and hidden [N, D]."""
    from perfkit.workload import esm2
    from perfkit.workload.equivalence import fairesm_reference_model, true_fp32

    config = model.config
    reference = fairesm_reference_model(model, device)

    cu = batch["cu_seqlens"]
    lengths = np.diff(cu)
    padded = np.full((lengths.size, lengths.max()), esm2.PAD_IDX, dtype=np.int64)
    for i, (lo, hi) in enumerate(zip(cu[:-1], cu[1:])):
        padded[i, : hi - lo] = batch["tokens"][lo:hi]
    with true_fp32(), torch.no_grad():
        reps = reference(torch.from_numpy(padded).to(device), repr_layers=[config.num_layers])
        hidden = reps["representations"][config.num_layers].float().cpu().numpy()
    del reference
    torch.cuda.empty_cache()
    pooled = np.stack([hidden[i, 1 : n - 1].mean(0) for i, n in enumerate(lengths)])
    hidden_packed = np.concatenate([hidden[i, :n] for i, n in enumerate(lengths)])
    return pooled, hidden_packed


def gate_against(
    reference: tuple[np.ndarray, np.ndarray], model, gate_input: dict, sequences: int, hidden_rows: int
) -> dict:
    """Pooled and hidden-state agreement with the fair-esm reference, on the gate's thresholds."""
    from perfkit.workload.equivalence import compare_embeddings

    pooled, hidden = model.forward_packed(**gate_input, return_hidden=True)
    pooled = pooled[:sequences].float().cpu().numpy()
    hidden = hidden[:hidden_rows].float().cpu().numpy()
    pooled_stats = compare_embeddings(reference[0], pooled)
    hidden_stats = compare_embeddings(reference[1][:hidden_rows], hidden)
    passed = (
        pooled_stats["min_cosine"] >= GATE_MIN_COSINE
        and pooled_stats["max_relative_error"] <= GATE_MAX_RELATIVE_ERROR
        and pooled_stats["reference_nondegenerate"]
    )
    return {
        "passed": bool(passed),
        "pooled": pooled_stats,
        "hidden": hidden_stats,
        "thresholds": {"min_cosine": GATE_MIN_COSINE, "max_relative_error": GATE_MAX_RELATIVE_ERROR},
    }


def gemm_ceiling(config, budget: int, device, seconds: float = 0.4) -> dict:
    """Sustained bf16 GEMM TFLOP/s at the model's four Linear shapes with `budget` rows (bias included)."""
    d, f = config.embed_dim, config.ffn_dim
    shapes = {"qkv": (d, 3 * d), "out_proj": (d, d), "fc1": (d, f), "fc2": (f, d)}
    out, total_flops, total_s = {}, 0.0, 0.0
    for name, (k, n) in shapes.items():
        x = torch.randn(budget, k, device=device, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=device, dtype=torch.bfloat16) * 0.02
        b = torch.zeros(n, device=device, dtype=torch.bfloat16)
        torch.nn.functional.linear(x, w, b)
        torch.cuda.synchronize()
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(10):
                torch.nn.functional.linear(x, w, b)
            torch.cuda.synchronize()
            calls += 10
        elapsed = time.perf_counter() - start
        flops = 2 * budget * k * n
        out[name] = flops * calls / elapsed / 1e12
        total_flops, total_s = total_flops + flops, total_s + elapsed / calls
        del x, w, b
    out["all_four"] = total_flops / total_s / 1e12  # the mix one block runs, each shape once
    return out


def norm_kernels(config, budget: int, device, seconds: float = 0.3) -> dict:
    """GB/s of LayerNorm over a [budget, D] bf16 pack (one read and one write counted), as each path runs it:
    ATen's eager kernel, inductor's default (a looped reduction above 1,024 columns), inductor's multi-kernel
    (a persistent reduction too, the faster picked at run time), and the norm of x + offset (residual_*)."""
    d = config.embed_dim
    x = torch.randn(budget, d, device=device, dtype=torch.bfloat16)
    offset = torch.randn(d, device=device, dtype=torch.bfloat16)
    norm = torch.nn.LayerNorm(d, device=device, dtype=torch.bfloat16)

    def timed(fn) -> float:
        fn()
        torch.cuda.synchronize()
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
            calls += 20
        return 2 * x.numel() * x.element_size() * calls / (time.perf_counter() - start) / 1e9

    from perfkit.workload.kernels import inductor_settings

    out = {"eager_aten": timed(lambda: norm(x))}
    for name, multi_kernel in (("inductor", False), ("inductor_multikernel", True)):
        with inductor_settings(multi_kernel):
            torch._dynamo.reset()
            plain = torch.compile(lambda t: norm(t), dynamic=True)
            carried = torch.compile(lambda t, o: norm(t + o), dynamic=True)
            out[name] = timed(lambda: plain(x))
            out[f"{name}_x_plus_offset"] = timed(lambda: carried(x, offset))
    torch._dynamo.reset()
    return out


def kernel_breakdown(model, inputs: list[dict]) -> dict:
    """Share of GPU kernel time per kind over the given batches, and GPU kernel time against wall time."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for x in inputs:
            model.forward_packed(**x)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    from torch.autograd import DeviceType

    kinds = {"matmul": 0.0, "attention": 0.0, "fused_pointwise": 0.0, "other": 0.0}
    top = []
    for event in prof.key_averages():
        micros = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        # kernels only: CPU-side launch records carry the same names and times
        if not micros or event.device_type != DeviceType.CUDA or "Command Buffer" in event.key:
            continue
        name = event.key.lower()
        if "flex" in name or (
            not name.startswith("triton") and any(s in name for s in ("flash", "fmha", "attn"))
        ):
            kind = "attention"
        elif any(s in name for s in ("gemm", "cutlass", "xmma", "nvjet", "matmul")) or name.startswith(
            "triton_tem"
        ):
            kind = "matmul"
        elif name.startswith("triton"):  # inductor's fused norms, rotary, GELU, residuals
            kind = "fused_pointwise"
        else:
            kind = "other"
        kinds[kind] += micros
        top.append((micros, kind, event.key[:90]))
    gpu = sum(kinds.values())
    return {
        "wall_s": wall,
        "gpu_kernel_s": gpu / 1e6,
        "gpu_kernel_share_of_wall": gpu / 1e6 / wall,
        "share": {k: v / gpu for k, v in kinds.items()} if gpu else {},
        "top_kernels": [{"us": m, "kind": k, "name": n} for m, k, n in sorted(top, reverse=True)[:12]],
    }


def run_one(name: str, budget: int, fasta: Path, args, reference_cache: dict, peaks: dict) -> dict:
    from perfkit.workload import esm2

    variant = VARIANTS[name]
    config = esm2.get_config(args.model)
    flops = esm2.flops_per_token(config)
    # about the same tokens per pass at every budget
    limit = max(3, math.ceil(args.tokens_per_pass / budget))
    batches = packed_batches(fasta, args.model, budget, limit)
    shapes = static_shapes(batches, budget) if variant.static else None
    inputs = device_inputs(batches, args.device, shapes)
    tokens = sum(b["real_tokens"] for b in batches)
    torch._dynamo.reset()
    from perfkit.workload.kernels import inductor_settings

    # inductor compiles at the first call: the multi-kernel setting must hold until every pass and the gate ran
    with inductor_settings(variant.multi_kernel):
        build_start = time.perf_counter()
        model = build(args.model, variant, args.device, seed=args.seed)
        build_s = time.perf_counter() - build_start
        rates, warmup_s = timed_passes(model, inputs, tokens, args.repeats)
        rate = statistics.median(rates)
        row = {
            "run": f"{name}@{budget}",
            "variant": name,
            "token_budget": budget,
            **variant.__dict__,
            "batches": len(batches),
            "tokens_per_pass": tokens,
            "repeats": len(rates),
            "tok_per_s_median": rate,
            "tok_per_s_min": min(rates),
            "tok_per_s_max": max(rates),
            "mfu_measured_peak": rate * flops / peaks["measured"],
            "mfu_spec_peak": rate * flops / peaks["spec"],
            "build_s": build_s,
            "warmup_pass_s": warmup_s,
            "static_shapes": shapes,
            "attention_calls": dict(model.attention_calls),
        }
        # the gate on the first batch's sequences: same static shape as the timed passes, no recompilation
        key = budget
        if key not in reference_cache:
            reference_model = (
                model
                if not variant.fp8
                else build(args.model, Variant(compile=False), args.device, seed=args.seed)
            )
            reference_cache[key] = fairesm_reference(reference_model, batches[0], args.device)
        row["gate"] = gate_against(
            reference_cache[key], model, inputs[0], batches[0]["sequences"], args.hidden_rows
        )
        if f"{name}@{budget}" in args.profile_runs:
            row["kernel_breakdown"] = kernel_breakdown(model, inputs[:3])
    del model, inputs
    torch.cuda.empty_cache()
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="esm2_t36_3B")
    parser.add_argument(
        "--reads", type=int, default=40_000, help="synthetic reads150 reads to pack batches from"
    )
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="variant@token_budget ...")
    parser.add_argument("--tokens-per-pass", type=int, default=320_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hidden-rows", type=int, default=4096, help="token rows of the hidden-state comparison"
    )
    parser.add_argument(
        "--profile-runs",
        nargs="*",
        default=["compiled_varlen@16384"],
        help="variant@token_budget runs to break down by kernel kind (none: --profile-runs)",
    )
    parser.add_argument(
        "--norm-bench", action="store_true", help="also time the LayerNorm kernels at each budget"
    )
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    runs = [parse_run(spec) for spec in args.runs]
    for spec in args.profile_runs:
        parse_run(spec)

    from perfkit.peaks import spec_peak_flops
    from perfkit.workload import esm2
    from perfkit.workload.device import measure_peak_tflops
    from perfkit.workload.synth import write_synthetic_fasta

    device = torch.device(args.device)
    if device.type != "cuda":
        user_error(
            f"--device {args.device}: this benchmark times GPU kernels; pass --device cuda on a GPU node"
        )
    config = esm2.get_config(args.model)
    device_name = torch.cuda.get_device_name(device)
    peaks = {
        "measured": measure_peak_tflops(device) * 1e12,
        "spec": spec_peak_flops(device_name, "bf16") or float("nan"),
    }
    result = {
        "benchmark": "protein_mfu",
        "model": config.name,
        "device_name": device_name,
        "torch": torch.__version__,
        "reads": args.reads,
        "flops_per_token": esm2.flops_per_token(config),
        "measured_peak_flops": peaks["measured"],
        "spec_peak_flops": peaks["spec"],
        "runs": [],
        "gemm_ceiling_tflops": {},
    }
    for budget in sorted({b for _, b in runs}):
        result["gemm_ceiling_tflops"][budget] = gemm_ceiling(config, budget, device)
        print(
            json.dumps({"gemm_ceiling_tflops": {budget: result["gemm_ceiling_tflops"][budget]}}), flush=True
        )
        if args.norm_bench:
            result.setdefault("norm_kernels_gb_per_s", {})[budget] = norm_kernels(config, budget, device)
            print(
                json.dumps({"norm_kernels_gb_per_s": {budget: result["norm_kernels_gb_per_s"][budget]}}),
                flush=True,
            )
    reference_cache: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "reads.fa"
        write_synthetic_fasta(fasta, args.reads, "reads150", seed=3)
        for name, budget in runs:
            try:
                row = run_one(name, budget, fasta, args, reference_cache, peaks)
            except Exception as exc:  # a lever that does not run here is a result too
                row = {
                    "run": f"{name}@{budget}",
                    "variant": name,
                    "token_budget": budget,
                    "error": f"{type(exc).__name__}: {exc}"[:400],
                    "trace": traceback.format_exc()[-1500:],
                }
                torch.cuda.empty_cache()
            result["runs"].append(row)
            print(
                json.dumps({k: v for k, v in row.items() if k not in ("kernel_breakdown", "trace")}),
                flush=True,
            )
            if args.out:  # written after every run: a command cut short keeps what it measured
                Path(args.out).write_text(json.dumps(result, indent=2))
    result["definitions"] = {
        "tok_per_s": "real (unpadded) tokens of one pass over the batches / its wall seconds, device synced at both "
        "ends; median and min-max of `repeats` passes after one warm-up pass",
        "mfu": "tok/s x matmul FLOPs per token (2 per multiply-add of every Linear: 24 d^2 per layer) / peak; "
        "measured = a bf16 8192^3 matmul timed in this process, spec = the data sheet's dense bf16",
        "gate": f"pooled (mean over residues) vectors of the first batch's sequences against fair-esm fp32 (TF32 "
        f"off) with the same weights: pass = every row cosine >= {GATE_MIN_COSINE} and relative error "
        f"<= {GATE_MAX_RELATIVE_ERROR}, reference non-degenerate; hidden = the same on per-token final "
        "hidden states (first hidden_rows tokens)",
        "gemm_ceiling_tflops": "F.linear at [budget, k] x [k, n] with bias, timed >= 0.4 s each, bf16",
        "norm_kernels_gb_per_s": "LayerNorm over [budget, D] bf16: (bytes read + bytes written) / seconds, >= 0.3 s "
        "each",
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
