"""Instrumentation overhead: the same synthetic loop bare and fully instrumented, in one process.

Instrumented = InstrumentedLoader + device-busy span + telemetry record (background JSONL
writer) + live progress bar + GPU sampler thread. Repeats alternate bare/instrumented so
machine noise hits both; prints the median throughput ratio and its spread.
Goal: <= 1 % throughput loss. Run: python -m perfkit.benchmarks.overhead [--device cuda] [--repeats 5]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from perfkit.busy import DeviceBusyTimer
from perfkit.loader import InstrumentedLoader
from perfkit.progress import LiveProgress
from perfkit.sampler import GpuSampler
from perfkit.telemetry import Telemetry


def make_step(device, size):
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    w = torch.randn(size, size, device=device, dtype=dtype) / size**0.5

    def step():
        x = a
        for _ in range(4):
            x = torch.tanh(x @ w)
        return x

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare(step, batches, device):
    sync(device)
    start = time.perf_counter()
    for _ in iter(range(batches)):
        step()
    sync(device)
    return batches / (time.perf_counter() - start)


def instrumented(step, batches, device, folder):
    tel = Telemetry(Path(folder) / "telemetry.jsonl")
    timer = DeviceBusyTimer(device)
    bar = LiveProgress(total=batches, disable=False, file=open("/dev/null", "w"))
    sampler = GpuSampler(interval_s=1.0, cuda_index=device.index or 0).start()
    loader = InstrumentedLoader(range(batches), clock_start=tel.t0)
    sync(device)
    start = time.perf_counter()
    for _ in loader:
        host_start = time.perf_counter()
        with timer.measure() as span:
            step()
        a = loader.last
        tel.batch(
            stage="bench",
            t_arrive_s=a.t_arrive_s,
            loader_wait_s=a.wait_s,
            host_s=time.perf_counter() - host_start,
            span=span,
            sequences=300,
            real_tokens=16000,
            slot_tokens=16000,
            budget_tokens=16384,
            queue_depth=a.queue_depth,
        )
        bar.update(300, 16000, 16384)
    sync(device)
    rate = batches / (time.perf_counter() - start)
    tel.close()
    bar.close()
    sampler.stop()
    return rate


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument(
        "--size",
        type=int,
        default=0,
        help="matrix size (default 4096 cuda, 512 cpu: ~20 ms steps, like a real batch)",
    )
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # one core: the other is left to the telemetry and sampler threads
    size = args.size or (4096 if device.type == "cuda" else 512)
    step = make_step(device, size)
    bare(step, 20, device)  # warm-up
    ratios, bare_rates, inst_rates = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.repeats):
            if r % 2:  # alternate the order so a drifting machine hits both sides alike
                i = instrumented(step, args.batches, device, folder)
                b = bare(step, args.batches, device)
            else:
                b = bare(step, args.batches, device)
                i = instrumented(step, args.batches, device, folder)
            bare_rates.append(b)
            inst_rates.append(i)
            ratios.append(i / b)
    step_ms = 1e3 / statistics.median(bare_rates)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "step_ms": step_ms,
        "repeats": args.repeats,
        "batches": args.batches,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "overhead_median_percent": 100 * (1 - statistics.median(ratios)),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
