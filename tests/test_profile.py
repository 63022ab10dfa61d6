"""perfkit.workload.profile: the gaps between kernels, and a CPU capture of either embedding stage."""

import pytest

from perfkit.results import NotMeasured
from perfkit.workload.config import make_config
from perfkit.workload.profile import kernel_gaps, profile_batches, top_ops


def test_kernel_gaps_count_idle_time_between_kernels_once():
    # three 10 µs kernels with 5 µs gaps, and one on a second stream inside the first: 30 of 40 µs busy
    gaps = kernel_gaps([(0.0, 10.0), (15.0, 25.0), (30.0, 40.0), (2.0, 8.0)])
    assert gaps["kernels"] == 4 and gaps["window_ms"] == pytest.approx(0.040)
    assert gaps["kernel_ms"] == pytest.approx(0.030) and gaps["idle_share"] == pytest.approx(0.25)
    assert gaps["median_gap_us"] == 5.0 and gaps["median_kernel_us"] == 10.0
    # back to back: no idle time at all
    assert kernel_gaps([(0.0, 5.0), (5.0, 9.0)])["idle_share"] == 0.0


def test_device_time_ranks_kernels_only_and_never_counts_an_operator_and_its_kernel_twice():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(key, device_type, self_us, count=1):
        return SimpleNamespace(
            key=key,
            count=count,
            device_type=device_type,
            self_device_time_total=self_us,
            device_time_total=self_us,
            self_cpu_time_total=5.0,
            cpu_time_total=5.0,
        )

    events = [
        event("aten::addmm", DeviceType.CPU, 600.0),  # its kernel's 600 us, seen from the operator
        event("nvjet_gemm_bias", DeviceType.CUDA, 600.0),
        event("flash_fwd_kernel", DeviceType.CUDA, 200.0),
        event("aten::gelu", DeviceType.CPU, 200.0),
    ]
    table = top_ops(events, device_time=True, top=10)
    assert table["name"].tolist() == ["nvjet_gemm_bias", "flash_fwd_kernel"]
    assert table["share"].tolist() == pytest.approx([0.75, 0.25])
    assert len(top_ops(events, device_time=False, top=10)) == 4  # CPU time: every operator row


def test_no_kernels_is_not_measured_never_zero_idle():
    assert NotMeasured.found(kernel_gaps([]))


@pytest.mark.parametrize("model", ["esm2_t6_8M", "dnabert_mini"])
def test_a_cpu_capture_of_either_stage(tmp_path, small_fasta, model):
    cfg = make_config(
        input=small_fasta,
        out_dir=tmp_path / "o",
        model=model,
        device="cpu",
        precision="fp32",
        token_budget=512,
        num_workers=0,
    )
    result = profile_batches(cfg, batches=2, warmup=1, top=5)
    assert result["time_basis"] == "CPU" and result["batches"] == 2 and result["tokens"] > 0
    assert result["stage"] == ("nucleotide_embedding" if model.startswith("dnabert") else "protein_embedding")
    assert 0 < len(result["table"]) <= 5 and not result["compiled"]
    assert NotMeasured.found(result["kernel_gaps"])  # no device kernels on CPU


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["esm2_t6_8M", "dnabert_mini"])
def test_a_cuda_capture_ranks_kernels_and_measures_their_gaps(tmp_path, small_fasta, model):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    cfg = make_config(
        input=small_fasta,
        out_dir=tmp_path / "o",
        model=model,
        device="cuda",
        precision="bf16",
        token_budget=2048,
        num_workers=0,
    )
    result = profile_batches(cfg, batches=2, warmup=1, top=10)
    table = result["table"]
    assert result["time_basis"] == "device" and len(table) > 0
    # kernels only: no operator row, and no device time counted twice
    assert not any(name.startswith("aten::") for name in table["name"]), table["name"].tolist()
    assert table["share"].sum() <= 1.0 + 1e-9
    gaps = result["kernel_gaps"]
    assert gaps["kernels"] > 0 and 0.0 <= gaps["idle_share"] < 1.0
