"""1 vs N GPUs (or CPU ranks) on the same sample, one command: per-rank and summed tok/s, factor, imbalance.

H200 x2: python -m perfkit.benchmarks.scaling --reads 100000 --model esm2_t36_3B --gpus 2 --json scaling.json
CPU:     python -m perfkit.benchmarks.scaling --reads 2000 --model esm2_t6_8M --nproc 2
Both sides launch through torchrun (`perfkit embed --gpus/--nproc`), so the 1-rank side runs the
same code path; each run embeds the whole sample (count and alignment checked).
"""

import argparse
import json
import tempfile
from pathlib import Path

from perfkit.workload.config import make_config
from perfkit.scaling_maths import rank_scaling
from perfkit.workload.launch import run_multi
from perfkit.workload.synth import write_synthetic_fasta


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reads", type=int, default=2000)
    p.add_argument("--model", default="esm2_t6_8M")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--gpus", type=int)
    group.add_argument("--nproc", type=int)
    p.add_argument("--token-budget", type=int, default=16384)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json")
    a = p.parse_args()
    gpus = a.gpus is not None
    n = a.gpus or a.nproc
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "sample.fa"
        write_synthetic_fasta(fasta, a.reads, profile="reads150", seed=1)
        common = dict(
            input=fasta,
            model=a.model,
            token_budget=a.token_budget,
            num_workers=a.workers,
            progress=False,
            precision="bf16" if gpus else "fp32",
            checkpoint_every_sequences=50_000,
            window_s=5.0,
        )
        single = run_multi(make_config(out_dir=Path(tmp) / "one", **common), 1, gpus=gpus)
        multi = run_multi(make_config(out_dir=Path(tmp) / "many", **common), n, gpus=gpus)
    result = {
        "reads": a.reads,
        "model": a.model,
        "ranks": n,
        "scaling": rank_scaling(single, multi).to_json(),
        "single": {
            k: single["throughput"][k] for k in ("sequences", "steady_tok_per_s", "tok_per_s", "wall_s")
        },
        "multi": {
            k: multi["throughput"][k]
            for k in ("sequences", "steady_tok_per_s", "tok_per_s", "wall_s", "rank_imbalance")
        },
        "gpu": {"single": single.get("gpu"), "multi": multi.get("gpu")},
        "packing_efficiency": {
            "single": single["packing"]["efficiency"],
            "multi": multi["packing"]["efficiency"],
        },
        "distributed": multi.get("distributed"),
    }
    print(json.dumps(result["scaling"], indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
