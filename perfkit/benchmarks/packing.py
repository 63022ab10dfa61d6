"""Packer figures: efficiency at a 16,384 budget on viral-read lengths and sequences/s on one core.

Targets: >= 99 % efficiency, >= 1M sequences/s (planning from lengths), so packing can never
starve a GPU. Also times the full path with token gathering. Run: python -m perfkit.benchmarks.packing
"""

import argparse
import json
import time

import numpy as np
import torch

from perfkit.packing import TokenBudgetPacker, efficiency


def run(lengths, budget, buffer_size, with_tokens, chunk=1024):
    keys = np.arange(lengths.size)
    tokens = np.repeat(keys % 20 + 4, lengths) if with_tokens else None
    starts = np.concatenate(([0], np.cumsum(lengths)))
    packer = TokenBudgetPacker(budget=budget, buffer_size=buffer_size)
    chunks = (
        (keys[s : s + chunk], lengths[s : s + chunk])
        + ((tokens[starts[s] : starts[min(s + chunk, lengths.size)]],) if with_tokens else ())
        for s in range(0, lengths.size, chunk)
    )
    t = time.perf_counter()
    batches = list(packer.pack(chunks))
    seconds = time.perf_counter() - t
    fig = efficiency(batches)
    return {
        "budget": budget,
        "buffer_size": buffer_size,
        "with_tokens": with_tokens,
        "sequences": int(lengths.size),
        "seq_per_s": lengths.size / seconds,
        "packing_efficiency": fig["packing_efficiency"],
        "batches": fig["batches"],
    }


def main():
    parser = argparse.ArgumentParser(description="packing efficiency and sequences/s on one CPU core")
    parser.add_argument("--sequences", type=int, default=2_000_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    lengths = rng.integers(12, 103, size=args.sequences)  # 10-100 aa + BOS/EOS
    results = []
    for budget in (16384, 65536):
        for buffer_size in (2000, 8192):
            for with_tokens in (False, True):
                r = run(
                    lengths if not with_tokens else lengths[: args.sequences // 4],
                    budget,
                    buffer_size,
                    with_tokens,
                )
                results.append(r)
                print(
                    f"budget {budget:6d} buffer {buffer_size:5d} tokens={str(with_tokens):5s} "
                    f"{r['seq_per_s'] / 1e6:5.2f} M seq/s  efficiency {r['packing_efficiency']:.4%}  "
                    f"batches {r['batches']}"
                )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
