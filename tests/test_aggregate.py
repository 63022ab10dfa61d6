import pandas as pd
import pytest

from perfkit import aggregate
from perfkit.summary import build_run_summary, write_json


def _records(rank=0, n=10, wait=0.0, device=0.9, seq=100, tok=1000, budget=1000, slot=None):
    return pd.DataFrame(
        [
            {
                "kind": "batch",
                "rank": rank,
                "stage": "embed",
                "batch": i,
                "t_arrive_s": float(i) + wait,
                "loader_wait_s": wait,
                "host_s": 0.01,
                "device_s": device,
                "sequences": seq,
                "real_tokens": tok,
                "slot_tokens": slot or tok,
                "budget_tokens": budget,
                "queue_depth": None,
            }
            for i in range(n)
        ]
    )


def test_throughput_overall_and_steady_state():
    df = _records(n=10)
    fig = aggregate.throughput(df, wall_s=10.0, warmup_batches=2, flops_per_token=2.0, peak_flops=4000.0)
    assert fig.seq_per_s == pytest.approx(100.0)
    assert fig.steady_wall_s == pytest.approx(8.0)  # batches 2..9 arrive from t=2 to the end at 10
    assert fig.steady_tok_per_s == pytest.approx(8000 / 8.0)
    assert fig.device_busy_fraction == pytest.approx(0.9 * 8 / 8.0)
    assert fig.mfu == pytest.approx(1000 * 2.0 / 4000.0)
    assert fig.packing_efficiency == 1.0


def test_steady_state_uses_the_telemetry_clock():
    # the loop started 5 s after the clock (model load): arrivals are at 5..14, the loop ran 10 s
    df = _records(n=10)
    df["t_arrive_s"] += 5.0
    fig = aggregate.throughput(df, wall_s=10.0, start_s=5.0, warmup_batches=2)
    assert fig.steady_wall_s == pytest.approx(8.0)
    assert fig.device_busy_fraction <= 1.0


def test_packing_uses_the_real_budget_as_denominator():
    df = _records(n=4, tok=14_664, budget=16_384, slot=14_664)
    fig = aggregate.throughput(df, wall_s=4.0)
    assert fig.packing_efficiency == pytest.approx(14_664 / 16_384)  # 0.895, not "358 %"
    assert fig.padding_waste == 0.0


def test_window_verdicts():
    assert aggregate.verdict(0.2, 0.95) == "data-starved"
    assert aggregate.verdict(0.01, 0.95) == "device-bound"
    assert aggregate.verdict(0.01, 0.5) == "host-bound"
    starved = _records(n=4, wait=0.5, device=0.4)
    w = aggregate.windows(starved, window_s=2.0)
    assert set(w["verdict"]) == {"data-starved"}
    assert w["loader_wait_share"].iloc[0] == pytest.approx(0.5)  # 0.5 s wait per 1 s owned by each batch


def test_a_long_batch_is_not_squeezed_into_its_arrival_window():
    # batches every 3 s, each 2.7 s of device work: windows of 1 s must still read ~90 % busy, not 270 %
    df = _records(n=6, device=2.7)
    df["t_arrive_s"] = df["batch"] * 3.0
    w = aggregate.windows(df, window_s=1.0, end_s=18.0)
    assert w["device_busy_share"].max() == pytest.approx(0.9)
    assert set(w["verdict"]) == {"device-bound"}


def test_summary_sums_ranks_and_reports_imbalance(tmp_path):
    df = pd.concat([_records(rank=0, n=10), _records(rank=1, n=10)])
    s = build_run_summary(
        df,
        config={"x": 1},
        environment={"torch": "t"},
        wall_s={0: 10.0, 1: 12.0},
        stage="embed",
        warmup_batches=0,
    )
    assert s["throughput"]["ranks"] == 2
    assert s["throughput"]["sequences"] == 2000
    assert s["throughput"]["steady_seq_per_s"] == pytest.approx(1000 / 10.0 + 1000 / 12.0)
    assert s["throughput"]["rank_imbalance"] == pytest.approx(12.0 / 11.0)
    assert s["per_rank"]["1"]["wall_s"] == 12.0  # JSON keys are strings
    path = write_json(tmp_path / "summary.json", s)
    assert path.read_text().startswith("{")


def test_batches_of_a_run_without_batches_is_empty():
    """A resumed run whose every batch was done already has only stage records."""
    records = pd.DataFrame(
        [{"kind": "stage", "stage": "model_load", "rank": 0, "start_s": 0.0, "end_s": 1.0, "seconds": 1.0}]
    )
    assert aggregate.batches(records, "protein_embedding").empty


def test_stage_seconds_is_the_slowest_rank_not_the_sum():
    records = pd.DataFrame(
        [
            {"kind": "stage", "stage": "model_load", "rank": r, "start_s": 0.0, "end_s": s, "seconds": s}
            for r, s in ((0, 4.0), (1, 5.0))
        ]
        + [
            {"kind": "stage", "stage": "embed", "rank": 0, "start_s": 4.0, "end_s": 6.0, "seconds": 2.0},
            {"kind": "stage", "stage": "embed", "rank": 0, "start_s": 7.0, "end_s": 8.0, "seconds": 1.0},
        ]
    )
    assert aggregate.stage_seconds(records) == {"embed": 3.0, "model_load": 5.0}


def test_each_rank_uses_its_own_measured_peak_and_mfu_is_stated_against_the_spec_too():
    df = pd.concat([_records(rank=0, n=10), _records(rank=1, n=10)])
    s = build_run_summary(
        df,
        config={},
        environment={},
        wall_s={0: 10.0, 1: 10.0},
        stage="embed",
        warmup_batches=0,
        flops_per_token=2.0,
        peak_flops={0: 4000.0, 1: 5000.0},
        spec_peak_flops=8000.0,
    )
    # 1000 tok/s per rank x 2 FLOP/token = 2000 FLOP/s per rank
    assert s["per_rank"]["0"]["mfu"] == pytest.approx(2000 / 4000) and s["per_rank"]["1"][
        "mfu"
    ] == pytest.approx(2000 / 5000)
    assert s["mfu"] == pytest.approx((2000 / 4000 + 2000 / 5000) / 2)
    assert s["mfu_spec"] == pytest.approx(2000 / 8000) and s["spec_peak_flops"] == 8000.0
    assert s["peak_flops"] == {"0": 4000.0, "1": 5000.0} and "data-sheet" in s["mfu_definition"]
    one = build_run_summary(
        _records(n=10),
        config={},
        environment={},
        wall_s=10.0,
        stage="embed",
        warmup_batches=0,
        flops_per_token=2.0,
        peak_flops=4000.0,
    )
    assert one["peak_flops"] == 4000.0 and one["mfu_spec"] is None  # no spec given (CPU, unknown GPU, fp32)


def test_windows_start_at_the_one_steady_start():
    # 2 warm-up batches (compilation: the first takes 5 s), then 1 s batches: the windows leave the warm-up out
    # and their grid starts where the steady rates start
    rows = [
        {
            "rank": 0,
            "stage": "protein_embedding",
            "t_arrive_s": t,
            "loader_wait_s": 0.0,
            "host_s": 0.0,
            "device_s": d,
            "sequences": 10,
            "real_tokens": 100,
            "slot_tokens": 100,
            "budget_tokens": 128,
        }
        for t, d in [(0.0, 5.0), (5.0, 1.0)] + [(6.0 + k, 1.0) for k in range(6)]
    ]
    batches = pd.DataFrame(rows)
    start = aggregate.steady_start_s(batches, warmup_batches=2)
    assert start == 6.0 and aggregate.steady_start_s(batches.iloc[:0], 2) is None
    table = aggregate.windows(batches, 2.0, warmup_batches=2)
    assert table["start_s"].tolist() == [6.0, 8.0, 10.0] and table["real_tokens"].sum() == 600
    rates = aggregate.throughput(batches, wall_s=12.0, warmup_batches=2)
    assert rates.steady_wall_s == pytest.approx(12.0 - start) and rates.steady_tok_per_s == pytest.approx(
        100.0
    )


def test_steady_start_waits_for_the_device_to_finish_the_warm_up():
    """A host that runs ahead of the device (queued launches) requests the first steady batch while the device
    still works on warm-up batches: the steady state starts when the device is done with them, so the steady
    rate is the device's own (1 batch of 100 tokens per second here), not diluted by warm-up device time."""
    device_starts = [0.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]  # 2.5 s compile, then 1 s a batch, back to back
    # the launch queue holds ~2 s of work: the host requests each batch 2 s before the device starts it
    rows = [
        {
            "rank": 0,
            "stage": "protein_embedding",
            "t_arrive_s": max(device_starts[k] - 2.0, 0.1 * k),
            "loader_wait_s": 0.0,
            "host_s": 0.05,
            "device_s": 2.5 if k == 0 else 1.0,
            "device_start_s": device_starts[k],
            "sequences": 10,
            "real_tokens": 100,
            "slot_tokens": 100,
            "budget_tokens": 128,
        }
        for k in range(8)
    ]
    batches = pd.DataFrame(rows)
    assert aggregate.steady_start_s(batches, warmup_batches=2) == pytest.approx(4.0)  # warm-up batch 1 ends
    rates = aggregate.throughput(batches, wall_s=10.0, warmup_batches=2)
    assert rates.steady_tok_per_s == pytest.approx(100.0) and rates.device_busy_fraction == pytest.approx(1.0)
    table = aggregate.windows(batches, 2.0, end_s=10.0, warmup_batches=2)
    assert table["start_s"].tolist()[0] == 4.0 and table["real_tokens"].sum() == 600
    # telemetry written before device starts were recorded: the request of batch 2, as before (a quarter lower here)
    older = batches.drop(columns="device_start_s")
    assert aggregate.steady_start_s(older, warmup_batches=2) == pytest.approx(2.0)
    assert aggregate.throughput(older, wall_s=10.0, warmup_batches=2).steady_tok_per_s == pytest.approx(75.0)
