"""perfkit.scaling_maths: the two-size fit, the criterion factor, end-to-end, stage and rank scaling."""

import pandas as pd
import pytest

from perfkit import criteria as crit
from perfkit import projection, scaling_maths
from suite_helpers import fake_summary


def test_two_size_fit_is_the_line_through_both_sizes():
    fit = scaling_maths.two_size_fit((1000, 3000), (30.0, 70.0))
    assert fit["per_read_s"] == pytest.approx(0.02) and fit["fixed_s"] == pytest.approx(10.0)
    assert scaling_maths.fit_seconds(fit, 6_000_000) == pytest.approx(10.0 + 0.02 * 6_000_000)
    assert projection.spread([1.0, None, 3.0, 2.0]) == {
        "median": 2.0,
        "min": 1.0,
        "max": 3.0,
        "values": [1.0, 3.0, 2.0],
    }


def test_criterion_takes_the_projected_factor_only_while_the_check_holds():
    holds = {"holds": True, "worst_deviation": 0.029}
    chosen = scaling_maths.criterion_factor(1.95, 1.5, holds)
    assert chosen["factor"] == 1.95 and chosen["source"] == "projected" and "+2.9%" in chosen["reason"]
    off = {"holds": False, "worst_deviation": -0.031}
    chosen = scaling_maths.criterion_factor(1.95, 1.5, off)
    assert chosen["factor"] == 1.5 and chosen["source"] == "measured" and "-3.1%" in chosen["reason"]
    no_fit = scaling_maths.criterion_factor(crit.not_measured("fit falls with the reads"), 1.5, holds)
    assert no_fit["factor"] == 1.5 and no_fit["source"] == "measured" and "falls" in no_fit["reason"]


def chain_at(
    reads, *, launch, nt_fixed, nt_per_read, protein_fixed, protein_per_read, score_per_read, extra=0.0
):
    """A launched chain of `reads` whose stages follow fixed + per read x reads exactly, with the stage
    summaries that say so (tokens / steady rate = the per-read part); `extra` s of noise in the launch."""
    stages = {
        "launch": launch + extra,
        "planning": 0.0,
        "nucleotide_embedding": nt_fixed + nt_per_read * reads,
        "protein_embedding": protein_fixed + protein_per_read * reads,
        "merge": score_per_read * reads,
        "classifier": 0.0,
        "consensus": 0.0,
    }
    summaries = {
        "nucleotide_embedding": fake_summary(tok=1000.0, real_tokens=1000.0 * nt_per_read * reads),
        "protein_embedding": fake_summary(tok=1000.0, real_tokens=1000.0 * protein_per_read * reads),
    }
    return {"chain": {"stages_s": stages, "end_to_end_s": sum(stages.values())}, "stages": summaries}


SINGLE = dict(
    launch=10.0,
    nt_fixed=5.0,
    nt_per_read=0.001,
    protein_fixed=8.0,
    protein_per_read=0.004,
    score_per_read=0.0005,
)


MULTI = dict(
    launch=12.0,
    nt_fixed=6.0,
    nt_per_read=0.0005,
    protein_fixed=9.0,
    protein_per_read=0.002,
    score_per_read=0.00025,
)


def rounds_of(single_extra=(0.0, 0.0), multi_extra=(0.0, 0.0)):
    return {
        "single": {r: chain_at(r, **SINGLE, extra=e) for r, e in zip((1000, 3000), single_extra)},
        "multi": {r: chain_at(r, **MULTI, extra=e) for r, e in zip((1000, 3000), multi_extra)},
    }


def test_end_to_end_scaling_fits_two_sizes_per_side_and_checks_the_fit():
    # single: 28.5 s at 1000 reads, 39.5 s at 3000 -> 23 s + 5.5 ms/read; multi: 29.75, 35.25 -> 27 s + 2.75 ms/read
    out = scaling_maths.end_to_end_scaling([rounds_of()], (1000, 3000), 2, 100_000)
    single, multi = out["sides"]["single"], out["sides"]["multi"]
    assert single["fit"]["fixed_s"] == pytest.approx(23.0) and single["fit"]["per_read_s"] == pytest.approx(
        0.0055
    )
    assert multi["fit"]["fixed_s"] == pytest.approx(27.0) and multi["fit"]["per_read_s"] == pytest.approx(
        0.00275
    )
    assert out["projected_factor"]["median"] == pytest.approx(573.0 / 302.0)
    assert (
        out["measured_factor"]["median"] == pytest.approx(39.5 / 35.25)
        and out["measured_factor"]["reads"] == 3000
    )
    # the small runs alone, stage by stage, predict the large walls exactly: the check holds
    assert single["fit_check"]["predicted_large_s"] == [pytest.approx(39.5)]
    assert out["fit_check"]["holds"] and out["fit_check"]["worst_deviation"] == pytest.approx(0.0, abs=1e-12)
    assert out["factor"] == pytest.approx(573.0 / 302.0) and out["factor_source"] == "projected"
    # exact model: the cross-check agrees
    assert out["stagewise_factor"]["median"] == pytest.approx(573.0 / 302.0)
    rows = pd.DataFrame(out["stages"]).set_index("stage")
    assert rows.loc["protein_embedding", "single_fixed_s"] == pytest.approx(8.0)
    assert rows.loc["protein_embedding", "multi_per_kread_s"] == pytest.approx(2.0)
    assert rows.loc["launch", "factor"] == pytest.approx(10.0 / 12.0)
    assert out["single_h"] == pytest.approx(573.0 / 3600) and out["multi_h"] == pytest.approx(302.0 / 3600)


def test_end_to_end_scaling_falls_back_to_the_measured_factor_outside_3_percent():
    # 2 s more launch in the multi side's large run: the small run predicts 35.25 s, 37.25 s measured (+5.7 %)
    out = scaling_maths.end_to_end_scaling([rounds_of(multi_extra=(0.0, 2.0))], (1000, 3000), 2, 100_000)
    assert out["fit_check"]["multi"] == pytest.approx(37.25 / 35.25 - 1) and not out["fit_check"]["holds"]
    assert out["fit_check"]["single"] == pytest.approx(0.0, abs=1e-12)
    # still reported
    assert out["projected_factor"]["median"] == pytest.approx(573.0 / (26.0 + 0.00375 * 100_000))
    assert out["factor_source"] == "measured" and out["factor"] == pytest.approx(39.5 / 37.25)
    assert "+5.7%" in out["factor_reason"]
    # within 3 %: 1 s on the multi side's large run (+2.8 %) keeps the projection
    out = scaling_maths.end_to_end_scaling([rounds_of(multi_extra=(0.0, 1.0))], (1000, 3000), 2, 100_000)
    assert out["fit_check"]["holds"] and out["factor_source"] == "projected"
    # a fit that falls with the reads projects nothing
    out = scaling_maths.end_to_end_scaling([rounds_of(multi_extra=(10.0, 0.0))], (1000, 3000), 2, 100_000)
    assert out["projected_factor"]["median"]["measured"] is False and out["factor_source"] == "measured"


def test_end_to_end_scaling_reports_the_median_and_spread_of_interleaved_rounds():
    rounds = [rounds_of(), rounds_of(single_extra=(3.0, 3.0)), rounds_of(single_extra=(1.0, 1.0))]
    out = scaling_maths.end_to_end_scaling(rounds, (1000, 3000), 2, 100_000)
    measured = [39.5 / 35.25, 42.5 / 35.25, 40.5 / 35.25]
    assert out["repeats"] == 3 and len(out["order"]) == 3
    assert out["measured_factor"]["median"] == pytest.approx(40.5 / 35.25)
    assert (out["measured_factor"]["min"], out["measured_factor"]["max"]) == (
        pytest.approx(min(measured)),
        pytest.approx(max(measured)),
    )
    projected = [(573.0 + e) / 302.0 for e in (0.0, 3.0, 1.0)]  # a launch offset moves only the fixed part
    assert out["projected_factor"]["median"] == pytest.approx(574.0 / 302.0)
    assert out["projected_factor"]["max"] == pytest.approx(max(projected))
    walls = out["sides"]["single"]["walls_s"]["3000"]
    assert (walls["median"], walls["min"], walls["max"]) == (
        pytest.approx(40.5),
        pytest.approx(39.5),
        pytest.approx(42.5),
    )


def test_embedding_stages_scaling_sums_projected_stage_times():
    stats = {"reads": 1000, "frames": 800}
    protein = (fake_summary(tok=1000.0, sequences=100, real_tokens=5000), fake_summary(tok=2000.0))
    nucleotide = (fake_summary(tok=10_000.0, sequences=100, real_tokens=3000), fake_summary(tok=10_000.0))
    out = scaling_maths.embedding_stages_scaling(
        {"protein_embedding": protein, "nucleotide_embedding": nucleotide}, stats, 1000
    )
    # protein 800 frames x 50 tok = 40,000 tok: 40 s -> 20 s; nucleotide 800 x 30 = 24,000 tok: 2.4 s -> 2.4 s
    assert out["stages"]["protein_embedding"]["factor"] == pytest.approx(2.0)
    assert out["stages"]["nucleotide_embedding"]["factor"] == pytest.approx(1.0)
    assert out["factor"] == pytest.approx(42.4 / 22.4)
    broken = scaling_maths.embedding_stages_scaling(
        {"protein_embedding": (fake_summary(tok=None), fake_summary())}, stats, 10
    )
    assert broken["factor"]["measured"] is False
