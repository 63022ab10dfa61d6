"""perfkit.projection: steady windows, projections, the two-size fit and GPU utilisation (fabricated summaries)."""
import pandas as pd
import pytest

from perfkit import criteria as crit
from perfkit import projection
from perfkit.suite import context, validation
from perfkit.summary import build_run_summary
from suite_helpers import fake_summary


def window(i, tok, seconds=10.0, rank=0):
    return {"rank": rank, "window": i, "start_s": i * 10.0, "seconds": seconds, "tok_per_s": tok, "batches": 5,
            "loader_wait_share": 0.0, "device_busy_share": 0.9, "packing_efficiency": 0.99, "verdict": "device-bound"}


def test_steady_windows_drop_partial_ones_and_sum_ranks():
    # windows start at the steady state (aggregate.windows): the first full one counts, the partial last does not
    windows = pd.DataFrame([window(0, 10), window(1, 100), window(2, 110), window(3, 50, seconds=4.0),
                            window(1, 100, rank=1), window(2, 90, rank=1)])
    steady = projection.steady_windows(windows, 10.0)
    assert steady["window"].tolist() == [0, 1, 2] and steady["tok_per_s"].tolist() == [10, 200, 200]
    gap = pd.DataFrame([window(0, 10), window(1, 100), window(3, 100), window(4, 100)])  # no batch arrived in window 2
    steady = projection.steady_windows(gap, 10.0)
    assert steady["window"].tolist() == [0, 1, 2, 3, 4] and steady["tok_per_s"].tolist() == [10, 100, 0, 100, 100]


def test_projection_refuses_an_error_from_windows_shorter_than_batches():
    stats = {"reads": 1000, "frames": 800, "mean_protein_length": 48.0}
    windows = [{**window(i, 100.0 * (i % 2)), "batches": i % 2} for i in range(8)]
    p = projection.project_full_sample(fake_summary(tok=50.0, windows=[w for w in windows if w["batches"]]), stats, 1000)
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
    uncapped = projection.project_full_sample(fake_summary(tok=1000.0, windows=windows[:1], capped=False, real_tokens=40_000),
                                      stats, 6_000_000)
    assert uncapped["relative_error"] is None and "not estimable" in uncapped["error_note"]
    assert uncapped["check"]["token_deviation"] == pytest.approx(0.0)
    # no per-rank steady wall: the loop's wall is not checked (never a deviation from a guessed start-up)
    assert uncapped["check"]["wall_deviation"] is None and "not checked" in uncapped["check"]["note"]
    nothing = projection.project_full_sample(fake_summary(tok=None), stats, 10)
    assert nothing["hours"] is None and nothing["error_note"]
    chain = fake_chain()
    e2e = projection.project_end_to_end(chain, {"protein_embedding": fake_summary(tok=None)}, 1000, 10, nothing)
    headline = validation.full_validation_headline({"summary": fake_summary(tok=None), "projection": nothing,
                                            "end_to_end": e2e, "chain": chain})
    assert headline["projected_hours_protein_stage"]["measured"] is False


def fake_chain(**stages):
    seconds = {"planning": 2.0, "nucleotide_embedding": 20.0, "protein_embedding": 100.0, "merge": 1.0,
               "classifier": 0.5, "consensus": 0.5, **stages}
    return {"stages_s": seconds, "end_to_end_s": sum(seconds.values()), "bottleneck_stage": "protein_embedding"}


def test_end_to_end_projection_per_stage():
    # protein: 90 s of tokens at 1000 tok/s + 10 s fixed; nucleotide: 10 s of tokens at 5000 tok/s + 10 s fixed
    summaries = {"protein_embedding": fake_summary(tok=1000.0, real_tokens=90_000),
                 "nucleotide_embedding": fake_summary(tok=5000.0, real_tokens=50_000)}
    summaries["protein_embedding"]["run"]["output"] = {"check_s": 4.0}  # the shard check grows with reads
    protein = {"relative_error": 0.02}
    e2e = projection.project_end_to_end(fake_chain(), summaries, run_reads=1000, full_reads=100_000, protein_projection=protein)
    rows = pd.DataFrame(e2e["stages"]).set_index("stage")
    assert rows.loc["protein_embedding", "fixed_s"] == pytest.approx(6.0)  # 100 - 90 s of tokens - 4 s shard check
    assert rows.loc["protein_embedding", "projected_h"] == pytest.approx((6 + 90 * 100 + 4 * 100) / 3600)
    assert rows.loc["nucleotide_embedding", "projected_h"] == pytest.approx((10 + 10 * 100) / 3600)
    assert rows.loc["merge", "projected_h"] == pytest.approx(100 / 3600)  # linear in reads
    assert e2e["hours"] == pytest.approx(rows["projected_h"].sum())
    assert e2e["bottleneck_stage"] == "protein_embedding" and 0.8 < e2e["bottleneck_share"] < 0.9
    assert e2e["relative_error"] == pytest.approx(0.02 * rows.loc["protein_embedding", "projected_h"] / e2e["hours"])
    # a stage faster than its steady rate explains: the fixed part is 0, never negative
    fast = projection.project_end_to_end(fake_chain(protein_embedding=50.0), summaries, 1000, 1000, protein)
    assert pd.DataFrame(fast["stages"]).set_index("stage").loc["protein_embedding", "fixed_s"] == 0.0


def test_two_size_fit_is_the_line_through_both_sizes():
    fit = projection.two_size_fit((1000, 3000), (30.0, 70.0))
    assert fit["per_read_s"] == pytest.approx(0.02) and fit["fixed_s"] == pytest.approx(10.0)
    assert projection.fit_seconds(fit, 6_000_000) == pytest.approx(10.0 + 0.02 * 6_000_000)
    assert projection.spread([1.0, None, 3.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "values": [1.0, 3.0, 2.0]}


def test_criterion_takes_the_projected_factor_only_while_the_check_holds():
    holds = {"holds": True, "worst_deviation": 0.029}
    chosen = projection.criterion_factor(1.95, 1.5, holds)
    assert chosen["factor"] == 1.95 and chosen["source"] == "projected" and "+2.9%" in chosen["reason"]
    off = {"holds": False, "worst_deviation": -0.031}
    chosen = projection.criterion_factor(1.95, 1.5, off)
    assert chosen["factor"] == 1.5 and chosen["source"] == "measured" and "-3.1%" in chosen["reason"]
    no_fit = projection.criterion_factor(crit.not_measured("fit falls with the reads"), 1.5, holds)
    assert no_fit["factor"] == 1.5 and no_fit["source"] == "measured" and "falls" in no_fit["reason"]


def chain_at(reads, *, launch, nt_fixed, nt_per_read, protein_fixed, protein_per_read, score_per_read, extra=0.0):
    """A launched chain of `reads` whose stages follow fixed + per read x reads exactly, with the stage
    summaries that say so (tokens / steady rate = the per-read part); `extra` s of noise in the launch."""
    stages = {"launch": launch + extra, "planning": 0.0, "nucleotide_embedding": nt_fixed + nt_per_read * reads,
              "protein_embedding": protein_fixed + protein_per_read * reads, "merge": score_per_read * reads,
              "classifier": 0.0, "consensus": 0.0}
    summaries = {"nucleotide_embedding": fake_summary(tok=1000.0, real_tokens=1000.0 * nt_per_read * reads),
                 "protein_embedding": fake_summary(tok=1000.0, real_tokens=1000.0 * protein_per_read * reads)}
    return {"chain": {"stages_s": stages, "end_to_end_s": sum(stages.values())}, "stages": summaries}


SINGLE = dict(launch=10.0, nt_fixed=5.0, nt_per_read=0.001, protein_fixed=8.0, protein_per_read=0.004,
              score_per_read=0.0005)
MULTI = dict(launch=12.0, nt_fixed=6.0, nt_per_read=0.0005, protein_fixed=9.0, protein_per_read=0.002,
             score_per_read=0.00025)


def rounds_of(single_extra=(0.0, 0.0), multi_extra=(0.0, 0.0)):
    return {"single": {r: chain_at(r, **SINGLE, extra=e) for r, e in zip((1000, 3000), single_extra)},
            "multi": {r: chain_at(r, **MULTI, extra=e) for r, e in zip((1000, 3000), multi_extra)}}


def test_end_to_end_scaling_fits_two_sizes_per_side_and_checks_the_fit():
    # single: 28.5 s at 1000 reads, 39.5 s at 3000 -> 23 s + 5.5 ms/read; multi: 29.75, 35.25 -> 27 s + 2.75 ms/read
    out = projection.end_to_end_scaling([rounds_of()], (1000, 3000), 2, 100_000)
    single, multi = out["sides"]["single"], out["sides"]["multi"]
    assert single["fit"]["fixed_s"] == pytest.approx(23.0) and single["fit"]["per_read_s"] == pytest.approx(0.0055)
    assert multi["fit"]["fixed_s"] == pytest.approx(27.0) and multi["fit"]["per_read_s"] == pytest.approx(0.00275)
    assert out["projected_factor"]["median"] == pytest.approx(573.0 / 302.0)
    assert out["measured_factor"]["median"] == pytest.approx(39.5 / 35.25) and out["measured_factor"]["reads"] == 3000
    # the small runs alone, stage by stage, predict the large walls exactly: the check holds
    assert single["fit_check"]["predicted_large_s"] == [pytest.approx(39.5)]
    assert out["fit_check"]["holds"] and out["fit_check"]["worst_deviation"] == pytest.approx(0.0, abs=1e-12)
    assert out["factor"] == pytest.approx(573.0 / 302.0) and out["factor_source"] == "projected"
    assert out["stagewise_factor"]["median"] == pytest.approx(573.0 / 302.0)  # exact model: the cross-check agrees
    rows = pd.DataFrame(out["stages"]).set_index("stage")
    assert rows.loc["protein_embedding", "single_fixed_s"] == pytest.approx(8.0)
    assert rows.loc["protein_embedding", "multi_per_kread_s"] == pytest.approx(2.0)
    assert rows.loc["launch", "factor"] == pytest.approx(10.0 / 12.0)
    assert out["single_h"] == pytest.approx(573.0 / 3600) and out["multi_h"] == pytest.approx(302.0 / 3600)


def test_end_to_end_scaling_falls_back_to_the_measured_factor_outside_3_percent():
    # 2 s more launch in the multi side's large run: the small run predicts 35.25 s, 37.25 s measured (+5.7 %)
    out = projection.end_to_end_scaling([rounds_of(multi_extra=(0.0, 2.0))], (1000, 3000), 2, 100_000)
    assert out["fit_check"]["multi"] == pytest.approx(37.25 / 35.25 - 1) and not out["fit_check"]["holds"]
    assert out["fit_check"]["single"] == pytest.approx(0.0, abs=1e-12)
    assert out["projected_factor"]["median"] == pytest.approx(573.0 / (26.0 + 0.00375 * 100_000))  # still reported
    assert out["factor_source"] == "measured" and out["factor"] == pytest.approx(39.5 / 37.25)
    assert "+5.7%" in out["factor_reason"]
    # within 3 %: 1 s on the multi side's large run (+2.8 %) keeps the projection
    out = projection.end_to_end_scaling([rounds_of(multi_extra=(0.0, 1.0))], (1000, 3000), 2, 100_000)
    assert out["fit_check"]["holds"] and out["factor_source"] == "projected"
    # a fit that falls with the reads projects nothing
    out = projection.end_to_end_scaling([rounds_of(multi_extra=(10.0, 0.0))], (1000, 3000), 2, 100_000)
    assert out["projected_factor"]["median"]["measured"] is False and out["factor_source"] == "measured"


def test_end_to_end_scaling_reports_the_median_and_spread_of_interleaved_rounds():
    rounds = [rounds_of(), rounds_of(single_extra=(3.0, 3.0)), rounds_of(single_extra=(1.0, 1.0))]
    out = projection.end_to_end_scaling(rounds, (1000, 3000), 2, 100_000)
    measured = [39.5 / 35.25, 42.5 / 35.25, 40.5 / 35.25]
    assert out["repeats"] == 3 and len(out["order"]) == 3
    assert out["measured_factor"]["median"] == pytest.approx(40.5 / 35.25)
    assert (out["measured_factor"]["min"], out["measured_factor"]["max"]) == (pytest.approx(min(measured)),
                                                                              pytest.approx(max(measured)))
    projected = [(573.0 + e) / 302.0 for e in (0.0, 3.0, 1.0)]  # a launch offset moves only the fixed part
    assert out["projected_factor"]["median"] == pytest.approx(574.0 / 302.0)
    assert out["projected_factor"]["max"] == pytest.approx(max(projected))
    walls = out["sides"]["single"]["walls_s"]["3000"]
    assert (walls["median"], walls["min"], walls["max"]) == (pytest.approx(40.5), pytest.approx(39.5), pytest.approx(42.5))


def test_multi_rank_projection_uses_the_slowest_ranks_tokens():
    # 2 ranks at 500 tok/s each; rank 1 holds 60 % of the tokens: at scale its share decides the wall time
    ranks = {"0": {"real_tokens": 40_000, "steady_tok_per_s": 500.0},
             "1": {"real_tokens": 60_000, "steady_tok_per_s": 500.0}}
    summary = fake_summary(tok=1000.0, real_tokens=100_000, per_rank=ranks)
    assert projection.slowest_rank_token_seconds(summary) == pytest.approx(120.0)  # not 100 s from the summed rate
    e2e = projection.project_end_to_end(fake_chain(protein_embedding=130.0), {"protein_embedding": summary}, 1000, 10_000, {})
    row = pd.DataFrame(e2e["stages"]).set_index("stage").loc["protein_embedding"]
    assert row["fixed_s"] == pytest.approx(10.0) and row["projected_h"] == pytest.approx((10 + 1200) / 3600)
    ranks["1"]["steady_tok_per_s"] = None  # a rank without a steady rate: the summed figure
    assert projection.slowest_rank_token_seconds(summary) == pytest.approx(100.0)


def built_summary(ranks=1, batches=10, tokens=1000, warmup=3, wall=10.0):
    """A summary made by the real builder (perfkit.summary.build_run_summary) from telemetry rows: batch i
    of every rank arrives at i + 1 s with no loader wait; the loop ran `wall` s from 0."""
    rows = [{"kind": "batch", "stage": "protein_embedding", "rank": r, "t_arrive_s": i + 1.0, "loader_wait_s": 0.0,
             "host_s": 0.01, "device_s": 0.9, "sequences": 20, "real_tokens": tokens, "budget_tokens": 1024,
             "slot_tokens": tokens} for r in range(ranks) for i in range(batches)]
    return build_run_summary(pd.DataFrame(rows), config={"window_s": 10.0}, environment={}, wall_s=wall,
                             stage="protein_embedding", warmup_batches=warmup, window_s=10.0,
                             extra={"run": {"capped": False}})


@pytest.mark.parametrize("ranks", [1, 2])
def test_projection_check_takes_the_start_up_from_the_per_rank_figures(ranks):
    # per rank: 3 warm-up batches, steady from the 4th batch's request at 4 s: 7000 tokens in 6 s; the loop
    # ran 10 s. The summed figures have no steady wall: the time before steady state is in per_rank only.
    summary = built_summary(ranks=ranks)
    assert "steady_wall_s" not in summary["throughput"]
    stats = {"reads": 250 * ranks, "frames": 200 * ranks, "mean_protein_length": 48.0}  # 40 tok/read: all tokens
    check = projection.project_full_sample(summary, stats, 6_000_000)["check"]
    assert check["token_deviation"] == pytest.approx(0.0)
    assert check["before_steady_s"] == pytest.approx(4.0) and check["warmup_tokens"] == pytest.approx(3000.0 * ranks)
    assert check["predicted_wall_s"] == pytest.approx(10.0)  # 4 s + 7000 tokens per rank at 7000/6 tok/s per rank
    assert check["wall_deviation"] == pytest.approx(0.0, abs=1e-9)  # not +17 % from a start-up of 0 s


def test_gpu_utilisation_is_time_weighted_over_stages_and_ranks():
    chain = {"ranks": 2, "stages_s": {"launch": 10.0, "planning": 2.0, "nucleotide_embedding": 20.0,
                                      "protein_embedding": 60.0, "merge": 4.0, "classifier": 3.0, "consensus": 1.0},
             "stage_started_unix": {"planning": 1000.0, "nucleotide_embedding": 1002.0, "protein_embedding": 1022.0,
                                    "merge": 1082.0, "classifier": 1082.0, "consensus": 1082.0}}
    def at(*pairs):
        return [{"timestamp": t, "gpu_utilization_percent": u} for t, u in pairs]
    # rank 0 sampled everywhere: launch (before and after the spans) 0 %, planning 10, nucleotide 60, protein 95,
    # scoring 40; rank 1 only in the protein stage (80): its nucleotide stage from that stage's own sampler (30),
    # its launch, planning and scoring counted at 0 %
    samples = {0: at((995.0, 0.0), (1001.0, 10.0), (1005.0, 50.0), (1015.0, 70.0), (1030.0, 90.0), (1050.0, 100.0),
                     (1085.0, 40.0), (1091.0, 0.0)),
               1: at((1030.0, 80.0)) + [{"timestamp": 1040.0}]}  # a sample without a GPU reading counts nothing
    def loop(*means):
        return {str(r): {"gpu_utilization_percent": {"mean": m, "measured": True}} for r, m in enumerate(means)}
    stages = {"nucleotide_embedding": {"gpu": loop(55.0, 30.0)}, "protein_embedding": {"gpu": loop(90.0, 80.0)}}
    out = projection.chain_gpu_utilisation(chain, stages, samples)
    rank0 = 0 * 10 + 10 * 2 + 60 * 20 + 95 * 60 + 40 * 8
    rank1 = 30 * 20 + 80 * 60
    assert out["value"] == pytest.approx((rank0 + rank1) / 200)  # 63.2 %, where the protein loop alone says 85 %
    assert out["share_counted_at_zero"] == pytest.approx(20 / 200)
    rows = pd.DataFrame(out["table"]).set_index(["rank", "stage"])
    assert rows.loc[(0, "launch"), "samples"] == 2 and rows.loc[(0, "scoring"), "seconds"] == pytest.approx(8.0)
    assert rows.loc[(1, "nucleotide_embedding"), "source"].startswith("the stage's own sampler")
    assert context.gpu_util_mean({"gpu": stages["protein_embedding"]["gpu"]}) == pytest.approx(85.0)
    # without a driver: no reading anywhere -> NOT MEASURED, never a number
    host = {"gpu_utilization_percent": crit.not_measured("no NVIDIA driver")}
    none = projection.chain_gpu_utilisation(chain, {"protein_embedding": {"gpu": {"0": host, "1": host}}},
                                    {0: [{"timestamp": 1030.0}], 1: []}, note="no NVIDIA driver: host only")
    assert none["value"]["measured"] is False and "no NVIDIA driver" in none["value"]["reason"]
    headline = validation.full_validation_headline({"summary": fake_summary(gpu=loop(90.0, 80.0)), "gpu_util": out,
                                            "projection": {"hours": 1.0, "capped": False},
                                            "end_to_end": {"hours": 2.0, "bottleneck_stage": "protein_embedding"},
                                            "chain": fake_chain()})
    assert headline["gpu_util_end_to_end"] == pytest.approx(63.2) and headline["gpu_util_protein_loop"] == 85.0


def test_full_sample_utilisation_counts_fixed_seconds_at_zero_and_scales_the_rest():
    chain = {"ranks": 2, "stages_s": {"launch": 10.0, "planning": 2.0, "nucleotide_embedding": 20.0,
                                      "protein_embedding": 60.0, "merge": 4.0, "classifier": 3.0, "consensus": 1.0}}
    table = [{"rank": r, "stage": stage, "seconds": chain["stages_s"].get(stage, 8.0), "util_percent": u}
             for r, utils in ((0, (0.0, 10.0, 60.0, 95.0, 40.0)), (1, (0.0, 0.0, 35.0, 80.0, 0.0)))
             for stage, u in zip(("launch", "planning", "nucleotide_embedding", "protein_embedding", "scoring"), utils)]
    measured = {"value": 63.2, "table": table}
    # 10x the run's reads: launch fixed; planning and scoring linear; embedding stages fixed + growing part
    rows = [("launch", 10.0, 10.0), ("planning", 0.0, 20.0), ("nucleotide_embedding", 5.0, 5.0 + 150.0),
            ("protein_embedding", 2.0, 2.0 + 580.0), ("merge", 0.0, 40.0), ("classifier", 0.0, 30.0),
            ("consensus", 0.0, 10.0)]
    e2e = {"full_sample_reads": 1000, "stages": [{"stage": st, "fixed_s": f, "projected_h": total / 3600}
                                                 for st, f, total in rows]}
    def loop(*means):
        return {str(r): {"gpu_utilization_percent": {"mean": m, "measured": True}} for r, m in enumerate(means)}
    stages = {"nucleotide_embedding": {"gpu": loop(55.0, 30.0)}, "protein_embedding": {"gpu": loop(90.0, None)}}
    stages["protein_embedding"]["gpu"]["1"]["gpu_utilization_percent"]["measured"] = False  # rank 1: chain sampler
    out = projection.project_gpu_utilisation(measured, e2e, stages)
    rank0 = 10 * 20 + 55 * 150 + 90 * 580 + 40 * 80
    rank1 = 0 * 20 + 30 * 150 + 80 * 580 + 0 * 80
    total = 2 * sum(total for _, _, total in rows)
    assert out["value"] == pytest.approx((rank0 + rank1) / total)
    assert out["fixed_share"] == pytest.approx(2 * 17.0 / total) and out["full_sample_reads"] == 1000
    by = {(r["rank"], r["stage"]): r for r in out["table"]}
    assert by[(1, "protein_embedding")]["source"] == "chain sampler over the stage"
    assert by[(0, "nucleotide_embedding")]["source"].startswith("the stage's own sampler")
    assert by[(0, "launch")]["util_percent"] == 0.0 and by[(0, "launch")]["growing_s"] == 0.0
    # without a measured figure the projection is NOT MEASURED too, never a number
    none = projection.project_gpu_utilisation({"value": crit.not_measured("no NVIDIA driver"), "table": []}, e2e, stages)
    assert none["value"]["measured"] is False


def test_holdout_check_predicts_the_whole_run_from_its_first_half():
    # the first 10 s: warm-up batches (5,000 tokens, outside every window); then 1000 tok/s for 8 windows
    windows = [window(i, 1000) for i in range(1, 9)]
    rank = {"wall_s": 90.0, "steady_wall_s": 80.0, "real_tokens": 85_000, "steady_tok_per_s": 1000.0}
    check = projection.holdout_check(fake_summary(windows=windows, real_tokens=85_000, wall_s=90.0, per_rank={"0": rank}))
    assert check["checked"] and check["fit_windows"] == 4 and check["fit_tok_per_s"] == pytest.approx(1000)
    assert check["predicted_wall_s"] == pytest.approx(90.0) and check["deviation"] == pytest.approx(0.0)
    # the second half slows down: the measured wall exceeds the prediction
    slow = [window(i, 1000 if i < 5 else 500) for i in range(1, 9)]
    rank = {**rank, "real_tokens": 65_000, "steady_tok_per_s": 750.0}
    check = projection.holdout_check(fake_summary(windows=slow, real_tokens=65_000, wall_s=90.0, per_rank={"0": rank}))
    assert check["deviation"] == pytest.approx(90.0 / 70.0 - 1)
    assert projection.holdout_check(fake_summary(windows=windows[:3]))["checked"] is False


def test_embedding_stages_scaling_sums_projected_stage_times():
    stats = {"reads": 1000, "frames": 800}
    protein = (fake_summary(tok=1000.0, sequences=100, real_tokens=5000), fake_summary(tok=2000.0))
    nucleotide = (fake_summary(tok=10_000.0, sequences=100, real_tokens=3000), fake_summary(tok=10_000.0))
    out = projection.embedding_stages_scaling({"protein_embedding": protein, "nucleotide_embedding": nucleotide}, stats, 1000)
    # protein 800 frames x 50 tok = 40,000 tok: 40 s -> 20 s; nucleotide 800 x 30 = 24,000 tok: 2.4 s -> 2.4 s
    assert out["stages"]["protein_embedding"]["factor"] == pytest.approx(2.0)
    assert out["stages"]["nucleotide_embedding"]["factor"] == pytest.approx(1.0)
    assert out["factor"] == pytest.approx(42.4 / 22.4)
    broken = projection.embedding_stages_scaling({"protein_embedding": (fake_summary(tok=None), fake_summary())}, stats, 10)
    assert broken["factor"]["measured"] is False


def test_repeated_takes_the_median_of_the_measured_rounds():
    spread = projection.repeated([1.80, 2.00, crit.not_measured("rank died"), 1.90])
    assert spread == {"median": pytest.approx(1.90), "min": 1.80, "max": 2.00, "values": [1.80, 2.00, 1.90],
                      "repeats": 3}
    assert projection.repeated([None, crit.not_measured("no steady batches")]) is None
