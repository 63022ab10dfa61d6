"""v1 (fair-esm, padded, fp32) vs v2 (packed varlen, bf16) vs padded bf16 SDPA, same sample, one process.

CPU (issue default): python -m perfkit.benchmarks.v1_vs_v2 --reads 20000 --model esm2_t6_8M --device cpu
H200:                python -m perfkit.benchmarks.v1_vs_v2 --reads 60000 --model esm2_t36_3B --device cuda
Each mode is one `run_embed` call with loader, packing and telemetry on; ratios use steady-state
real tokens/s (warm-up batches excluded). v2 embeds the whole sample (count and alignment checked);
slower modes are capped by --seconds. The equivalence gate (v2 vs fair-esm) runs on the same device.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from perfkit.workload.config import make_config
from perfkit.workload.equivalence import run_equivalence_gate
from perfkit.workload.device import measure_peak_tflops
from perfkit.workload.runner import run_embed
from perfkit.workload.synth import write_synthetic_fasta
from perfkit.results import as_summary


def figures(summary):
    t = as_summary(summary).throughput
    return {
        "sequences": t.sequences,
        "steady_tok_per_s": t.steady_tok_per_s,
        "steady_seq_per_s": t.steady_seq_per_s,
        "tok_per_s": t.tok_per_s,
        "packing_efficiency": summary["packing"]["efficiency"],
        "padding_waste": summary["packing"]["padding_waste"],
        "device_busy_fraction": summary["device_busy_fraction"],
        "loader_wait_fraction": t.loader_wait_fraction,
        "mfu": summary["mfu"],
        "gpu_util_mean": (summary["gpu"].get("gpu_utilization_percent") or {}).get("mean"),
        "attention_path": summary["run"]["attention_path"],
        "capped": summary["run"]["capped"],
        "wall_s": t.wall_s,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reads", type=int, default=20000)
    p.add_argument("--model", default="esm2_t6_8M")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=60.0, help="cap for the slower modes")
    p.add_argument("--token-budget", type=int, default=16384)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--modes", default="v2,padded,v1", help="comma list of v2, padded, v1, v1fp16, v2big, v2compile"
    )
    p.add_argument("--gate", action="store_true", help="also run the equivalence gate")
    p.add_argument("--json", help="write results here")
    a = p.parse_args()
    cuda = a.device.startswith("cuda")
    fast = "bf16" if cuda else "fp32"
    result = {
        "model": a.model,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "reads": a.reads,
        "runs": {},
    }
    if cuda:
        result["peak_tflops_bf16"] = measure_peak_tflops(torch.device(a.device))
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "sample.fa"
        t = time.perf_counter()
        result["sample"] = write_synthetic_fasta(fasta, a.reads, profile="reads150", seed=0)
        result["synth_s"] = time.perf_counter() - t
        common = dict(
            input=fasta,
            model=a.model,
            device=a.device,
            progress=False,
            num_workers=a.workers,
            peak_tflops=result.get("peak_tflops_bf16"),
            checkpoint_every_sequences=20000,
            window_s=5.0,
        )
        plans = {
            "v2": dict(mode="v2", precision=fast, token_budget=a.token_budget),
            "padded": dict(
                mode="v2", layout="padded", precision=fast, token_budget=a.token_budget, max_seconds=a.seconds
            ),
            "v1": dict(mode="v1", precision="fp32", max_seconds=a.seconds),
            "v1fp16": dict(mode="v1", precision="fp16", max_seconds=a.seconds),
            "v2big": dict(mode="v2", precision=fast, token_budget=4 * a.token_budget, max_seconds=a.seconds),
            "v2compile": dict(
                mode="v2",
                precision=fast,
                token_budget=a.token_budget,
                compile=True,
                max_seconds=a.seconds,
                warmup_batches=6,
            ),
        }
        for name in a.modes.split(","):
            s = run_embed(make_config(out_dir=Path(tmp) / name, **common, **plans[name]))
            result["runs"][name] = figures(s)
            if name == "v2":
                result["runs"][name]["output"] = s["run"].get("output")
                result["runs"][name]["alignment_check"] = s["run"].get("alignment_check")
            print(name, json.dumps(result["runs"][name]), flush=True)
    runs = result["runs"]
    for other in ("v1", "padded", "v1fp16", "v2big", "v2compile"):
        if "v2" in runs and other in runs:
            result[f"speedup_v2_over_{other}"] = (
                runs["v2"]["steady_tok_per_s"] / runs[other]["steady_tok_per_s"]
            )
    if a.gate:
        result["equivalence_gate"] = run_equivalence_gate(model_name=a.model, device=a.device, precision=fast)
        result["equivalence_gate"].pop("stats", None)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
