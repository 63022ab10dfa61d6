"""perfkit.suite.profiling: a real tiny 02_profiling (CPU)."""

import pytest

from perfkit.suite import context, profiling


@pytest.mark.slow
def test_real_profiling(tiny):
    params, run_dir = tiny
    ctx = context.setup("02_profiling", params, run_dir)
    result = profiling.run_profiling(ctx)
    assert len(result["batches"]) >= 2 and not result["samples"].empty and "t_s" in result["samples"]
    profiler = profiling.run_profiler(ctx)
    assert 0 < len(profiler["table"]) <= 5 and profiler["time_basis"] == "CPU"
    assert profiler["table"]["share"].between(0, 1).all()
    # both stages profiled; on CPU there are no kernels, so their idle share is not measured (never 0)
    assert profiler["kernel_gaps"]["stage"].tolist() == ["nucleotide_embedding", "protein_embedding"]
    assert len(profiler["nucleotide_table"]) > 0
    headline = profiling.profiling_headline(result, profiler)
    assert headline["gpu_util_mean"]["measured"] is False  # CPU: not measured, never 0
    assert all(v["measured"] is False for v in headline["kernel_idle_share"].values())
    assert result["stages"]["stage"].tolist() == [
        "planning",
        "nucleotide_embedding",
        "protein_embedding",
        "merge",
        "classifier",
        "consensus",
    ]
    assert result["stages"]["share"].sum() == pytest.approx(1.0)
    assert headline["bottleneck_stage"] == result["stages"].set_index("stage")["seconds"].idxmax()
    assert result["chain"]["counts"]["frames"] == result["summary"]["throughput"]["sequences"]
    assert headline["bottleneck_verdict"] in ("device-bound", "host-bound", "data-starved", "unknown")
    evidence = profiling.bottleneck_evidence(result["windows"])
    assert {"verdict", "loader_wait_share", "device_busy_share"} <= set(evidence.columns)
    # both embedding stages, each over its own steady state, with a verdict; CPU: no spec peak, no NVML
    stages = result["embedding_stages"].set_index("stage")
    assert set(stages.index) == {"nucleotide_embedding", "protein_embedding"}
    assert stages.loc["nucleotide_embedding", "steady_tok_per_s"] > 0
    assert set(headline["stage_verdicts"]) == {"nucleotide_embedding", "protein_embedding"}
    assert headline["nucleotide_bottleneck_verdict"] == stages.loc["nucleotide_embedding", "verdict"]
    assert headline["nucleotide_mfu_spec"]["measured"] is False  # fp32 on CPU: no data-sheet peak
