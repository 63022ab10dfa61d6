"""perfkit.projection: steady windows, the holdout check and the full-sample projections (fabricated summaries)."""

import pandas as pd
import pytest

from perfkit import criteria as crit
from perfkit import projection
from perfkit.suite import validation
from perfkit.summary import build_run_summary
from suite_helpers import fake_summary


def window(i, tok, seconds=10.0, rank=0):
    return {
        "rank": rank,
        "window": i,
        "start_s": i * 10.0,
        "seconds": seconds,
        "tok_per_s": tok,
        "batches": 5,
        "loader_wait_share": 0.0,
        "device_busy_share": 0.9,
        "packing_efficiency": 0.99,
        "verdict": "device-bound",
    }


def test_steady_windows_drop_partial_ones_and_sum_ranks():
    # windows start at the steady state (aggregate.windows): the first full one counts, the partial last does not
    windows = pd.DataFrame(
        [
            window(0, 10),
            window(1, 100),
            window(2, 110),
            window(3, 50, seconds=4.0),
            window(1, 100, rank=1),
            window(2, 90, rank=1),
        ]
    )
    steady = projection.steady_windows(windows, 10.0)
    assert steady["window"].tolist() == [0, 1, 2] and steady["tok_per_s"].tolist() == [10, 200, 200]
    # no batch arrived in window 2
    gap = pd.DataFrame([window(0, 10), window(1, 100), window(3, 100), window(4, 100)])
    steady = projection.steady_windows(gap, 10.0)
    assert steady["window"].tolist() == [0, 1, 2, 3, 4] and steady["tok_per_s"].tolist() == [
        10,
        100,
        0,
        100,
        100,
    ]


def test_projection_refuses_an_error_from_windows_shorter_than_batches():
    stats = {"reads": 1000, "frames": 800, "mean_protein_length": 48.0}
    windows = [{**window(i, 100.0 * (i % 2)), "batches": i % 2} for i in range(8)]
    p = projection.project_full_sample(
        fake_summary(tok=50.0, windows=[w for w in windows if w["batches"]]), stats, 1000
    )
    assert p["hours"] is not None and p["relative_error"] is None and "granularity" in p["error_note"]


def test_projection_method_error_and_check():
    stats = {"reads": 1000, "frames": 800, "mean_protein_length": 48.0}  # 0.8 x 50 = 40 tok/read
    windows = [window(1, 1000), window(2, 1100), window(3, 900), window(4, 1000)]
    p = projection.project_full_sample(fake_summary(tok=1000.0, windows=windows), stats, 6_000_000)
    assert p["tokens_per_read"] == pytest.approx(40.0)
    assert p["hours"] == pytest.approx((6_000_000 * 40 / 1000.0 + 3.6) / 3600)
    rates = pd.Series([1000, 1100, 900, 1000.0])
    assert p["relative_error"] == pytest.approx(rates.std() / rates.mean())
    assert p["hours_low"] < p["hours"] < p["hours_high"] and p["check"] is None  # capped: nothing to check
    uncapped = projection.project_full_sample(
        fake_summary(tok=1000.0, windows=windows[:1], capped=False, real_tokens=40_000), stats, 6_000_000
    )
    assert uncapped["relative_error"] is None and "not estimable" in uncapped["error_note"]
    assert uncapped["check"]["token_deviation"] == pytest.approx(0.0)
    # no per-rank steady wall: the loop's wall is not checked (never a deviation from a guessed start-up)
    assert uncapped["check"]["wall_deviation"] is None and "not checked" in uncapped["check"]["note"]
    nothing = projection.project_full_sample(fake_summary(tok=None), stats, 10)
    assert nothing["hours"] is None and nothing["error_note"]
    chain = fake_chain()
    e2e = projection.project_end_to_end(
        chain, {"protein_embedding": fake_summary(tok=None)}, 1000, 10, nothing
    )
    headline = validation.full_validation_headline(
        {"summary": fake_summary(tok=None), "projection": nothing, "end_to_end": e2e, "chain": chain}
    )
    assert headline["projected_hours_protein_stage"]["measured"] is False


def fake_chain(**stages):
    seconds = {
        "planning": 2.0,
        "nucleotide_embedding": 20.0,
        "protein_embedding": 100.0,
        "merge": 1.0,
        "classifier": 0.5,
        "consensus": 0.5,
        **stages,
    }
    return {
        "stages_s": seconds,
        "end_to_end_s": sum(seconds.values()),
        "bottleneck_stage": "protein_embedding",
    }


def test_end_to_end_projection_per_stage():
    # protein: 90 s of tokens at 1000 tok/s + 10 s fixed; nucleotide: 10 s of tokens at 5000 tok/s + 10 s fixed
    summaries = {
        "protein_embedding": fake_summary(tok=1000.0, real_tokens=90_000),
        "nucleotide_embedding": fake_summary(tok=5000.0, real_tokens=50_000),
    }
    summaries["protein_embedding"]["run"]["output"] = {"check_s": 4.0}  # the shard check grows with reads
    protein = {"relative_error": 0.02}
    e2e = projection.project_end_to_end(
        fake_chain(), summaries, run_reads=1000, full_reads=100_000, protein_projection=protein
    )
    rows = pd.DataFrame(e2e["stages"]).set_index("stage")
    # 100 - 90 s of tokens - 4 s shard check
    assert rows.loc["protein_embedding", "fixed_s"] == pytest.approx(6.0)
    assert rows.loc["protein_embedding", "projected_h"] == pytest.approx((6 + 90 * 100 + 4 * 100) / 3600)
    assert rows.loc["nucleotide_embedding", "projected_h"] == pytest.approx((10 + 10 * 100) / 3600)
    assert rows.loc["merge", "projected_h"] == pytest.approx(100 / 3600)  # linear in reads
    assert e2e["hours"] == pytest.approx(rows["projected_h"].sum())
    assert e2e["bottleneck_stage"] == "protein_embedding" and 0.8 < e2e["bottleneck_share"] < 0.9
    assert e2e["relative_error"] == pytest.approx(
        0.02 * rows.loc["protein_embedding", "projected_h"] / e2e["hours"]
    )
    # a stage faster than its steady rate explains: the fixed part is 0, never negative
    fast = projection.project_end_to_end(fake_chain(protein_embedding=50.0), summaries, 1000, 1000, protein)
    assert pd.DataFrame(fast["stages"]).set_index("stage").loc["protein_embedding", "fixed_s"] == 0.0


def test_multi_rank_projection_uses_the_slowest_ranks_tokens():
    # 2 ranks at 500 tok/s each; rank 1 holds 60 % of the tokens: at scale its share decides the wall time
    ranks = {
        "0": {"real_tokens": 40_000, "steady_tok_per_s": 500.0},
        "1": {"real_tokens": 60_000, "steady_tok_per_s": 500.0},
    }
    summary = fake_summary(tok=1000.0, real_tokens=100_000, per_rank=ranks)
    # not 100 s from the summed rate
    assert projection.slowest_rank_token_seconds(summary) == pytest.approx(120.0)
    e2e = projection.project_end_to_end(
        fake_chain(protein_embedding=130.0), {"protein_embedding": summary}, 1000, 10_000, {}
    )
    row = pd.DataFrame(e2e["stages"]).set_index("stage").loc["protein_embedding"]
    assert row["fixed_s"] == pytest.approx(10.0) and row["projected_h"] == pytest.approx((10 + 1200) / 3600)
    ranks["1"]["steady_tok_per_s"] = None  # a rank without a steady rate: the summed figure
    assert projection.slowest_rank_token_seconds(summary) == pytest.approx(100.0)


def built_summary(ranks=1, batches=10, tokens=1000, warmup=3, wall=10.0):
    """A summary made by the real builder (perfkit.summary.build_run_summary) from telemetry rows: batch i
    of every rank arrives at i + 1 s with no loader wait; the loop ran `wall` s from 0."""
    rows = [
        {
            "kind": "batch",
            "stage": "protein_embedding",
            "rank": r,
            "t_arrive_s": i + 1.0,
            "loader_wait_s": 0.0,
            "host_s": 0.01,
            "device_s": 0.9,
            "sequences": 20,
            "real_tokens": tokens,
            "budget_tokens": 1024,
            "slot_tokens": tokens,
        }
        for r in range(ranks)
        for i in range(batches)
    ]
    return build_run_summary(
        pd.DataFrame(rows),
        config={"window_s": 10.0},
        environment={},
        wall_s=wall,
        stage="protein_embedding",
        warmup_batches=warmup,
        window_s=10.0,
        extra={"run": {"capped": False}},
    )


@pytest.mark.parametrize("ranks", [1, 2])
def test_projection_check_takes_the_start_up_from_the_per_rank_figures(ranks):
    # per rank: 3 warm-up batches, steady from the 4th batch's request at 4 s: 7000 tokens in 6 s; the loop
    # ran 10 s. The summed figures have no steady wall: the time before steady state is in per_rank only.
    summary = built_summary(ranks=ranks)
    assert "steady_wall_s" not in summary["throughput"]
    stats = {
        "reads": 250 * ranks,
        "frames": 200 * ranks,
        "mean_protein_length": 48.0,
    }  # 40 tok/read: all tokens
    check = projection.project_full_sample(summary, stats, 6_000_000)["check"]
    assert check["token_deviation"] == pytest.approx(0.0)
    assert check["before_steady_s"] == pytest.approx(4.0) and check["warmup_tokens"] == pytest.approx(
        3000.0 * ranks
    )
    # 4 s + 7000 tokens per rank at 7000/6 tok/s per rank
    assert check["predicted_wall_s"] == pytest.approx(10.0)
    assert check["wall_deviation"] == pytest.approx(0.0, abs=1e-9)  # not +17 % from a start-up of 0 s


def test_holdout_check_predicts_the_whole_run_from_its_first_half():
    # the first 10 s: warm-up batches (5,000 tokens, outside every window); then 1000 tok/s for 8 windows
    windows = [window(i, 1000) for i in range(1, 9)]
    rank = {"wall_s": 90.0, "steady_wall_s": 80.0, "real_tokens": 85_000, "steady_tok_per_s": 1000.0}
    check = projection.holdout_check(
        fake_summary(windows=windows, real_tokens=85_000, wall_s=90.0, per_rank={"0": rank})
    )
    assert check["checked"] and check["fit_windows"] == 4 and check["fit_tok_per_s"] == pytest.approx(1000)
    assert check["predicted_wall_s"] == pytest.approx(90.0) and check["deviation"] == pytest.approx(0.0)
    # the second half slows down: the measured wall exceeds the prediction
    slow = [window(i, 1000 if i < 5 else 500) for i in range(1, 9)]
    rank = {**rank, "real_tokens": 65_000, "steady_tok_per_s": 750.0}
    check = projection.holdout_check(
        fake_summary(windows=slow, real_tokens=65_000, wall_s=90.0, per_rank={"0": rank})
    )
    assert check["deviation"] == pytest.approx(90.0 / 70.0 - 1)
    assert projection.holdout_check(fake_summary(windows=windows[:3]))["checked"] is False


def test_repeated_takes_the_median_of_the_measured_rounds():
    spread = projection.repeated([1.80, 2.00, crit.not_measured("rank died"), 1.90])
    assert spread == {
        "median": pytest.approx(1.90),
        "min": 1.80,
        "max": 2.00,
        "values": [1.80, 2.00, 1.90],
        "repeats": 3,
    }
    assert projection.repeated([None, crit.not_measured("no steady batches")]) is None
