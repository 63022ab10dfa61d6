"""perfkit.suite.baseline: a real tiny 01_baseline (CPU)."""

import json

import pandas as pd
import pytest

from perfkit.suite import baseline, context
from perfkit.workload.v1 import file_order_batches


@pytest.mark.slow
def test_real_baseline(tiny):
    params, run_dir = tiny
    ctx = context.setup("01_baseline", params, run_dir)
    result = baseline.run_baseline(ctx)
    table = result["table"].set_index("variant")
    assert table["measured"].tolist() == [True, False, True, True, True, True]  # fp16 v1: GPU only
    nt = "v1 dnabert_mini fp32"  # the params' nucleotide model (embed.nt_model), named in the table
    assert table.loc[nt, "model"] == "dnabert_mini" and "file order" in table.loc[nt, "layout"]
    assert result["speedup_nt_v2_over_v1"] > 0
    assert "not measured" in table.loc["v1 fair-esm fp16", "note"]
    assert result["speedup_v2_over_v1"] > 0 and result["speedup_v2_over_v1_fp16"]["measured"] is False
    assert (
        table.loc["v2 packed fp32", "padding_waste"] == 0
        and table.loc["v2 padded SDPA fp32", "padding_waste"] > 0
    )
    # every variant embedded the same reads (a read cap, no time cap), once per round
    runs = sorted((ctx.out / "runs").glob("*-r*"))
    assert len(runs) == 2 * 5 and table.loc["v2 packed fp32", "repeats"] == 2
    reads = {json.loads((r / "summary.json").read_text())["run"]["input_reads"] for r in runs}
    assert reads == {60}
    run = json.loads((runs[0] / "summary.json").read_text())["run"]
    assert set(run["tf32"]) == {"matmul", "cudnn", "source"}  # TF32 recorded, with where it was read
    rules = {json.loads((r / "summary.json").read_text())["run"]["batch_rule"] for r in runs}
    assert any("get_batch_indices" in rule for rule in rules) and any("packs of" in rule for rule in rules)
    # the median of the rounds, and the min-max beside it
    spread = result["spreads"]["speedup_v2_over_v1"]
    assert spread["repeats"] == 2 and spread["min"] <= result["speedup_v2_over_v1"] <= spread["max"]
    assert (
        table.loc["v2 packed fp32", "tok_per_s_min"]
        <= table.loc["v2 packed fp32", "tok_per_s"]
        <= table.loc["v2 packed fp32", "tok_per_s_max"]
    )
    gate = baseline.run_equivalence(ctx, result["device"], result["precision"])
    chains = baseline.run_chains(ctx, result["device"], result["precision"])
    assert chains["agreement"] == 1.0 and chains["details"]["same_classifier"]  # fp32 on both sides
    assert set(chains["chains"]) == {"original", "refactored", "v2"} and chains["speedup"] > 0
    # each stage projected by its rate
    assert all(side["no_steady_rate"] == [] for side in chains["chains"].values())
    sides = chains["chains"]
    assert (
        "get_batch_indices" in sides["original"]["batching"]
        and "file order" in sides["refactored"]["batching"]
    )
    assert sides["refactored"]["precision"] == "fp32"  # fp16 is a GPU feature
    # each round's speed-up is its faster v1.0 chain over its v2 chain; the figure is their median
    rounds = json.loads((ctx.out / "chains.json").read_text())["rounds"]
    per_round = [
        min(r[f]["projected_hours"] for f in ("original", "refactored")) / r["v2"]["projected_hours"]
        for r in rounds
    ]
    assert len(rounds) == 2 and chains["speedup_spread"]["repeats"] == 2
    assert chains["speedup"] == pytest.approx(sum(per_round) / 2)  # the median of two
    assert chains["speedup_spread"]["min"] == pytest.approx(min(per_round))
    nt_gate = baseline.run_nt_equivalence(ctx, result["device"], result["precision"])
    headline = baseline.baseline_headline(result, gate, chains, nt_gate)
    assert headline["speedup_chain_v2_over_v1"] == chains["speedup"]
    assert headline["speedup_chain_v2_over_v1_spread"] == chains["speedup_spread"]
    assert headline["speedup_v2_over_v1_spread"]["repeats"] == 2 and headline["baseline_reads"] == 60
    assert headline["equivalence_gate_passed"] is True and headline["prediction_agreement_v1_v2"] == 1.0
    low, high = headline["prediction_agreement_v1_v2_ci95"]  # Wilson 95 %: all agree, yet not certainly 100 %
    assert high == 1.0 and 0.5 < low < 1.0
    assert baseline.agreement_interval(None)["measured"] is False
    assert headline["nt_equivalence_gate_passed"] is True and 0.1 < headline["nt_tokens_per_base"] < 0.35
    assert (ctx.out / "throughput.json").exists() and (ctx.out / "chains.json").exists()
    assert (ctx.out / "runs" / "chain-v2-warmup" / "summary.json").exists()  # the untimed warm-up chain ran
    assert isinstance(baseline.chains_table(chains), pd.DataFrame)


def test_file_order_batches_close_at_the_residue_budget():
    proteins = ["A" * 900, "A" * 900, "A" * 300, "A" * 2500, "A" * 10]
    # 900 + 900 = 1800; + 300 would pass 2048: closed. A sequence longer than the budget is alone.
    assert file_order_batches(proteins, 2048) == [[0, 1], [2], [3], [4]]
    assert file_order_batches([], 2048) == []


def test_batch_rule_names_each_form(tmp_path):
    from perfkit.workload.config import make_config

    cfg = make_config(input=tmp_path / "a.fa", out_dir=tmp_path / "o", mode="v1")
    assert "get_batch_indices(toks_per_batch=2048)" in cfg.batch_rule(nucleotide=False)
    assert "2,048 raw residues" in cfg.model_copy(update={"v1_batching": "file_order"}).batch_rule(False)
    assert "1 sequence(s) in file order" in cfg.batch_rule(nucleotide=True)
    assert "packs of <= 16,384" in cfg.model_copy(update={"mode": "v2"}).batch_rule(False)
