"""perfkit.suite.baseline: a real tiny 01_baseline (CPU)."""
import pytest

from perfkit.suite import baseline, context


@pytest.mark.slow
def test_real_baseline(tiny):
    params, run_dir = tiny
    ctx = context.setup("01_baseline", params, run_dir)
    result = baseline.run_baseline(ctx)
    table = result["table"].set_index("variant")
    assert table["measured"].tolist() == [True, False, True, True, True, True]  # fp16 v1: GPU only
    assert table.loc["v1 DNABERT-S fp32", "model"] == "dnabert_s" and "file order" in table.loc["v1 DNABERT-S fp32", "layout"]
    assert result["speedup_nt_v2_over_v1"] > 0
    assert "not measured" in table.loc["v1 fair-esm fp16", "note"]
    assert result["speedup_v2_over_v1"] > 0 and result["speedup_v2_over_v1_fp16"]["measured"] is False
    assert table.loc["v2 packed fp32", "padding_waste"] == 0 and table.loc["v2 padded SDPA fp32", "padding_waste"] > 0
    gate = baseline.run_equivalence(ctx, result["device"], result["precision"])
    agreement = baseline.run_agreement(ctx, result["device"], result["precision"])
    assert agreement["agreement"] == 1.0 and agreement["details"]["same_classifier"]  # fp32 on both sides
    nt_gate = baseline.run_nt_equivalence(ctx, result["device"], result["precision"])
    headline = baseline.baseline_headline(result, gate, agreement, nt_gate)
    assert headline["equivalence_gate_passed"] is True and headline["prediction_agreement_v1_v2"] == 1.0
    low, high = headline["prediction_agreement_ci95"]  # Wilson 95 %: all agree, yet not certainly 100 %
    assert high == 1.0 and 0.5 < low < 1.0
    assert baseline.agreement_interval(None)["measured"] is False
    assert headline["nt_equivalence_gate_passed"] is True and 0.1 < headline["nt_tokens_per_base"] < 0.35
    assert (ctx.out / "throughput.json").exists() and (ctx.out / "equivalence.json").exists()
