"""perfkit.peaks: data-sheet dense peaks by GPU name and precision."""

from perfkit.peaks import spec_peak_flops


def test_spec_peaks_by_name_and_precision():
    assert spec_peak_flops("NVIDIA H200", "bf16") == 989.4e12
    assert spec_peak_flops("NVIDIA H100 PCIe", "fp16") == 756.5e12  # the more specific name wins
    assert spec_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989.4e12
    assert spec_peak_flops("NVIDIA H200", "fp32") is None  # TF32 or not: no single spec
    assert spec_peak_flops("Some Future GPU", "bf16") is None and spec_peak_flops(None, "bf16") is None
