"""perfkit.suite.validation: a real tiny 04_tuning point and 05_full_validation (CPU)."""

import math

import pytest

from perfkit.suite import context, tuning, validation


@pytest.mark.slow
def test_real_tuning_point_and_full_validation(tiny):
    params, run_dir = tiny
    ctx = context.setup("04_tuning", params, run_dir)
    result = tuning.run_tuning(ctx)
    assert len(result["table"]) == 2 and result["best_tok_per_s"] > 0
    # a 49-residue protein does not fit: recorded, not raised
    bad = tuning.measure_point(ctx, {"token_budget": 16}, 9)
    assert bad["status"] == "error" and bad["error"]
    ctx = context.setup("05_full_validation", params, run_dir)
    result = validation.run_full_validation(ctx)
    headline = validation.full_validation_headline(result)
    assert headline["checkpoint"]["count"] >= 2 and headline["capped"] is False
    assert result["projection"]["check"]["token_deviation"] == pytest.approx(0.0, abs=1e-9)
    # the per-rank steady wall was found
    assert math.isfinite(result["projection"]["check"]["wall_deviation"])
    assert headline["gpu_util_end_to_end"]["measured"] is False  # CPU: NOT MEASURED, never 0 and never PASS
    assert headline["gpu_util_full_sample"]["measured"] is False
    assert headline["gpu_util_protein_loop"]["measured"] is False and "gpu_util_mean" not in headline
    detail = headline["gpu_util_end_to_end_detail"]
    assert {r["stage"] for r in detail["table"]} == {
        "planning",
        "nucleotide_embedding",
        "protein_embedding",
        "scoring",
    }
    assert sum(r["seconds"] for r in detail["table"]) == pytest.approx(headline["measured_end_to_end_s"])
    assert math.isfinite(headline["projected_hours_protein_stage"])
    # every stage counted
    assert headline["projected_hours_end_to_end"] > headline["projected_hours_protein_stage"]
    protein_wall = result["summary"]["throughput"]["wall_s"]  # the protein stage's own loop clock
    assert headline["stage_seconds"]["protein_embedding"] >= protein_wall
    assert (
        headline["measured_end_to_end_s"] > protein_wall + headline["stage_seconds"]["nucleotide_embedding"]
    )
