"""The device a run takes, and the peaks its MFU is measured against: the bf16 matmul rate measured now
(`measure_peak_tflops`) and the data sheet's (`spec_peak`)."""

from __future__ import annotations

import torch

from perfkit.errors import UserError
from perfkit.peaks import spec_peak_flops


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "device cuda was asked for but no CUDA GPU is visible", "run on a GPU node or pass --device cpu"
        )
    return device


def measure_peak_tflops(
    device: torch.device, dtype=torch.bfloat16, size: int = 8192, repeats: int = 10
) -> float:
    """bf16 matmul rate measured now, on this device: the MFU denominator."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    end.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / repeats
    del a, b
    torch.cuda.empty_cache()
    return 2 * size**3 / seconds / 1e12


def spec_peak(device: torch.device, precision: str) -> float | None:
    """The data-sheet dense peak of the run's GPU at its precision (None on CPU or an unknown GPU)."""
    if device.type != "cuda":
        return None
    return spec_peak_flops(torch.cuda.get_device_name(device), precision)
