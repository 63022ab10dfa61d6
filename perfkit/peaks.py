"""Dense matmul peaks from the vendors' data sheets, so MFU can be stated against both the peak measured in
the run (what the chip delivers here) and the spec (what comparisons between systems quote).

Dense (no sparsity) tensor-core figures, FLOP/s. fp32 has no entry: its peak depends on whether TF32 is
used, so an fp32 run's spec MFU is not stated.
"""

from __future__ import annotations

# (name fragment as torch.cuda.get_device_name reports it, {precision: dense FLOP/s}); first match wins,
# so more specific names come first
SPEC_PEAKS = (
    ("H200", {"bf16": 989.4e12, "fp16": 989.4e12}),
    ("H100 PCIe", {"bf16": 756.5e12, "fp16": 756.5e12}),
    ("H100", {"bf16": 989.4e12, "fp16": 989.4e12}),  # SXM
    ("A100", {"bf16": 312e12, "fp16": 312e12}),
    ("L40S", {"bf16": 362.1e12, "fp16": 362.1e12}),
)


def spec_peak_flops(device_name: str | None, precision: str) -> float | None:
    """The data-sheet dense peak of `device_name` at `precision`, or None when unknown."""
    if not device_name:
        return None
    for fragment, peaks in SPEC_PEAKS:
        if fragment in device_name:
            return peaks.get(precision)
    return None
