"""perfkit.summary: the run's bottleneck verdict, launch-bound included."""

import pandas as pd
import pytest

from perfkit.summary import LAUNCH_BOUND_MFU, LAUNCH_BOUND_NVML_PERCENT, build_run_summary, nvml_median


def _busy_records(n=40, device=0.095):
    # one batch every 0.1 s, each 95 % of it busy by CUDA events: every window reads device-bound
    return pd.DataFrame(
        [
            {
                "kind": "batch",
                "rank": 0,
                "stage": "embed",
                "batch": i,
                "t_arrive_s": 0.1 * i,
                "loader_wait_s": 0.0,
                "host_s": 0.001,
                "device_s": device,
                "sequences": 10,
                "real_tokens": 100,
                "slot_tokens": 100,
                "budget_tokens": 100,
                "queue_depth": None,
            }
            for i in range(n)
        ]
    )


def _nvml(p50, mean=None):
    return {
        "gpu_utilization_percent": {"mean": mean if mean is not None else p50, "p50": p50, "measured": True}
    }


def summary(gpu, **kwargs):
    settings = {"wall_s": 4.0, "warmup_batches": 0, "window_s": 1.0, **kwargs}
    return build_run_summary(_busy_records(), config={}, environment={}, stage="embed", gpu=gpu, **settings)


def test_busy_by_events_but_idle_by_nvml_is_launch_bound():
    s = summary(_nvml(30.0))
    assert s["bottleneck"]["verdict"] == "launch-bound" and s["bottleneck"]["nvml_median_percent"] == 30.0
    assert "enqueue" in s["bottleneck"]["why"] and "launch-bound" in s["bottleneck"]["rule"]
    assert {w["verdict"] for w in s["windows"]} == {"device-bound"}  # the windows keep the events' verdict


def test_busy_by_both_stays_device_bound_and_the_median_decides():
    assert summary(_nvml(97.0))["bottleneck"]["verdict"] == "device-bound"
    # a compile at the start drags the mean down; the median of the loop still reads the steady GPU
    assert summary(_nvml(95.0, mean=45.0))["bottleneck"]["verdict"] == "device-bound"
    assert summary(_nvml(LAUNCH_BOUND_NVML_PERCENT))["bottleneck"]["verdict"] == "device-bound"


def test_without_nvml_the_events_verdict_stands():
    not_measured = {
        "gpu_utilization_percent": {"value": None, "measured": False, "reason": "no NVIDIA driver"}
    }
    assert summary(not_measured)["bottleneck"]["verdict"] == "device-bound"
    assert summary(None)["bottleneck"]["verdict"] == "device-bound"


def test_nvml_median_over_ranks():
    assert nvml_median({"0": _nvml(40.0), "1": _nvml(60.0)}) == pytest.approx(50.0)
    assert nvml_median({"0": _nvml(40.0), "1": {"gpu_utilization_percent": {"measured": False}}}) == 40.0
    assert nvml_median({}) is None


def test_launch_bound_needs_low_arithmetic_too():
    # 100 tok per 0.1 s = 1000 tok/s; flops_per_token x 1000 / peak is the MFU the verdict reads
    low = summary(_nvml(30.0), flops_per_token=1.0, peak_flops=1000.0 / (LAUNCH_BOUND_MFU / 2))
    assert low["bottleneck"]["verdict"] == "launch-bound" and low["bottleneck"]["mfu"] < LAUNCH_BOUND_MFU
    assert "matmul peak" in low["bottleneck"]["why"]
    # a stage near the matmul peak is not waiting on launches, whatever the sampler read
    high = summary(_nvml(30.0), flops_per_token=1.0, peak_flops=1000.0 / (LAUNCH_BOUND_MFU * 2))
    assert high["bottleneck"]["verdict"] == "device-bound" and high["bottleneck"]["mfu"] > LAUNCH_BOUND_MFU


def test_windows_run_to_the_loop_end_the_rates_use():
    # the loop ran 2 s past its last batch (a drain, a final sync): the windows own that time (the
    # last batch's share of busy falls) exactly as the steady rate counts it, instead of stopping at
    # the last batch's end (4.0 s)
    s = summary(None, wall_s=6.0)
    assert sum(w["owned_s"] for w in s["windows"]) == pytest.approx(6.0)
    last = max(s["windows"], key=lambda w: w["window"])
    assert last["device_busy_share"] < 0.5
    per_rank_end = summary(None, wall_s={0: 6.0}, start_s={0: 0.0})
    assert sum(w["owned_s"] for w in per_rank_end["windows"]) == pytest.approx(6.0)
