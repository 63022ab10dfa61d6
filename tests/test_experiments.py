"""perfkit.experiments: params validation, notebook setup, analyses (fabricated summaries) and real tiny runs."""
import json
import math
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from perfkit import criteria as crit
from perfkit import experiments as ex
from perfkit.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "params" / "smoke.yaml"


def write_params(tmp_path, **changes) -> Path:
    data = yaml.safe_load(SMOKE.read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---------------------------------------------------------------- params

@pytest.mark.parametrize("name", ["smoke.yaml", "h200.yaml", "h200x2.yaml", "gpu-check.yaml"])
def test_shipped_params_are_valid(name):
    params = ex.load_suite_params(ROOT / "params" / name)
    names = [c["name"] for c in params.criteria]
    assert {"full_sample_time", "gpu_utilisation", "packing_efficiency", "two_gpu_scaling", "speedup_vs_v1",
            "equivalence_gate", "prediction_agreement", "nt_equivalence_gate"} <= set(names)


@pytest.mark.parametrize("changes, message", [
    ({"bogus": 1}, "bogus"),
    ({"sample": {"reads": "many"}}, "sample.reads"),
    ({"tuning": {"grid": {"colour": [1, 2]}}}, "unknown knob"),
    ({"tuning": {"grid": {"token_budget": []}}}, "no values"),
    ({"embed": {"max_reads": 10}}, "set by the suite"),
    ({"embed": {"token_budget": 8}}, "token_budget"),
    ({"embed": {"model": "esm9"}}, "unknown model"),
    ({"full_validation": {"max_seconds": 60}}, "capped by reads"),
    ({"profiling": {"max_seconds": 60}}, "max_reads instead"),
    ({"criteria": [{"name": "x", "metric": "y", "comparison": ">=", "target": 1, "source": "07_extra"}]}, "source"),
    ({"criteria": [{"name": "x", "metric": "y", "comparison": "~", "target": 1, "source": "01_baseline"}]}, "comparison"),
])
def test_bad_params_are_one_line_errors(tmp_path, changes, message):
    with pytest.raises(UserError, match=message):
        ex.load_suite_params(write_params(tmp_path, **changes))


def test_overrides_merge_deeply():
    params = ex.load_suite_params(SMOKE, {"tuning": {"max_runs": 2}})
    assert params.tuning.max_runs == 2 and params.tuning.grid  # the rest of the section kept


# ---------------------------------------------------------------- setup

def test_setup_rejects_unknown_and_ill_typed_parameters(tmp_path):
    with pytest.raises(UserError, match="unknown parameter.*bogus"):
        ex.setup("01_baseline", SMOKE, tmp_path, namespace={"params_file": "x", "run_dir": "y", "bogus": 3,
                                                            "ex": ex, "_private": 1, "In": []})
    with pytest.raises(UserError, match="gpus"):
        ex.setup("03_scaling", SMOKE, tmp_path, gpus="two", nodes=1)
    with pytest.raises(UserError, match="unknown notebook"):
        ex.setup("07_extra", SMOKE, tmp_path)


def test_setup_empties_the_notebook_folder_and_makes_the_sample_once(tmp_path):
    stale = tmp_path / "04_tuning" / "metrics.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    ctx = ex.setup("04_tuning", write_params(tmp_path, sample={"reads": 50}), tmp_path / "")
    assert not stale.exists() and ctx.out.is_dir()
    assert ctx.sample == tmp_path / "sample.fa" and ctx.sample_stats["reads"] == 50
    mtime = ctx.sample.stat().st_mtime_ns
    ex.setup("05_full_validation", ctx.params_file, tmp_path)
    assert ctx.sample.stat().st_mtime_ns == mtime  # shared, not regenerated
    assert ctx.sample_stats["tokens_per_read"] == pytest.approx(
        ctx.sample_stats["frames"] / 50 * (ctx.sample_stats["mean_protein_length"] + 2))


def test_finish_writes_metrics_json(tmp_path):
    ctx = ex.setup("02_profiling", write_params(tmp_path, sample={"reads": 20}), tmp_path)
    ctx.finish({"a": 1.5, "b": crit.not_measured("no GPU"), "t": pd.DataFrame({"x": [1.0, float("nan")]})})
    data = json.loads((tmp_path / "02_profiling" / "metrics.json").read_text())
    assert data["status"] == "complete"
    assert data["records"]["a"] == 1.5 and data["records"]["b"]["measured"] is False
    assert data["records"]["t"] == [{"x": 1.0}, {"x": None}]


# ---------------------------------------------------------------- small analyses

def fake_summary(tok=1000.0, seq=20.0, gpu=None, per_rank=None, windows=(), capped=True, **extra):
    t = {"ranks": 1, "sequences": 500, "real_tokens": 25_000, "batches": 10, "wall_s": 30.0, "seq_per_s": seq,
         "tok_per_s": tok and tok * 0.9, "steady_seq_per_s": seq, "steady_tok_per_s": tok, "device_busy_fraction": 0.9,
         "loader_wait_fraction": 0.01, "packing_efficiency": 0.95, "padding_waste": 0.0, "rank_imbalance": 1.0,
         "steady_wall_s": 25.0}
    t.update(extra)
    return {"throughput": t, "per_rank": per_rank or {"0": t}, "gpu": gpu or {}, "windows": list(windows), "mfu": 0.6,
            "stages_s": {"model_load": 3.6}, "config": {"mode": "v2", "layout": "packed", "window_s": 10.0},
            "checkpoint": {"share_of_wall": 0.01}, "bottleneck": {"verdict": "device-bound"},
            "run": {"mode": "v2", "precision": "bf16", "device": "cuda:0", "capped": capped,
                    "attention_path": {"varlen_attn": 9, "sdpa_repadded": 0}}}


def test_ratio_and_markers():
    assert ex.ratio(10, 4, "x") == 2.5
    for a, b in [(None, 1), (1, None), (float("nan"), 1), (1, 0), ({"measured": False}, 1)]:
        assert ex.ratio(a, b, "why")["measured"] is False


def test_throughput_row():
    row = ex.throughput_row("v2 packed", fake_summary())
    assert row["tok_per_s"] == 1000.0 and row["attention"] == "varlen_attn" and row["measured"] and row["mfu"] == 0.6
    missing = ex.throughput_row("v1 fp16", None, note="GPU only")
    assert missing["measured"] is False and missing["tok_per_s"] is None and missing["note"] == "GPU only"


def test_gpu_util_mean_single_multi_and_unmeasured():
    measured = {"gpu_utilization_percent": {"mean": 80.0, "measured": True}}
    assert ex.gpu_util_mean(fake_summary(gpu=measured)) == 80.0
    multi = {"0": measured, "1": {"gpu_utilization_percent": {"mean": 60.0, "measured": True}}}
    assert ex.gpu_util_mean(fake_summary(gpu=multi)) == 70.0
    host = {"note": "no driver", "gpu_utilization_percent": crit.not_measured("no NVIDIA driver")}
    assert ex.gpu_util_mean(fake_summary(gpu=host))["reason"] == "no NVIDIA driver"
    half = {"0": measured, "1": host}  # one GPU unmeasured: the mean is not a measurement
    assert ex.gpu_util_mean(fake_summary(gpu=half))["measured"] is False
    assert ex.gpu_util_mean(fake_summary())["measured"] is False


def test_normalise_scaling_prefers_the_distributed_figures_and_fills_gaps():
    single = fake_summary(tok=1000.0)
    multi = fake_summary(tok=1900.0, rank_imbalance=1.05,
                         per_rank={"0": {"steady_tok_per_s": 950.0}, "1": {"steady_tok_per_s": 950.0}})
    raw = {"factor": 1.9, "efficiency": 0.95, "imbalance": 1.05,
           "per_rank": {"0": {"steady_tok_per_s": 950.0, "gpu_utilization_mean": 75.0},
                        "1": {"steady_tok_per_s": 950.0, "gpu_utilization_mean": crit.not_measured("gone")}}}
    out = ex.normalise_scaling(raw, single, multi, 2)
    assert (out["factor"], out["efficiency"], out["imbalance"]) == (1.9, 0.95, 1.05)
    assert out["per_rank_gpu_util"]["0"] == 75.0 and out["per_rank_gpu_util"]["1"]["measured"] is False
    computed = ex.normalise_scaling({}, single, multi, 2)
    assert computed["factor"] == pytest.approx(1.9) and computed["efficiency"] == pytest.approx(0.95)
    assert computed["per_rank_tok_per_s"] == {"0": 950.0, "1": 950.0}


def window(i, tok, seconds=10.0, rank=0):
    return {"rank": rank, "window": i, "start_s": i * 10.0, "seconds": seconds, "tok_per_s": tok, "batches": 5,
            "loader_wait_share": 0.0, "device_busy_share": 0.9, "packing_efficiency": 0.99, "verdict": "device-bound"}


def test_steady_windows_drop_the_first_and_partial_and_sum_ranks():
    windows = pd.DataFrame([window(0, 10), window(1, 100), window(2, 110), window(3, 50, seconds=4.0),
                            window(1, 100, rank=1), window(2, 90, rank=1)])
    steady = ex.steady_windows(windows, 10.0)
    assert steady["window"].tolist() == [1, 2] and steady["tok_per_s"].tolist() == [200, 200]
    gap = pd.DataFrame([window(0, 10), window(1, 100), window(3, 100), window(4, 100)])  # no batch arrived in window 2
    steady = ex.steady_windows(gap, 10.0)
    assert steady["window"].tolist() == [1, 2, 3, 4] and steady["tok_per_s"].tolist() == [100, 0, 100, 100]


def test_projection_refuses_an_error_from_windows_shorter_than_batches():
    stats = {"reads": 1000, "frames": 800, "mean_protein_length": 48.0}
    windows = [{**window(i, 100.0 * (i % 2)), "batches": i % 2} for i in range(8)]
    p = ex.project_full_sample(fake_summary(tok=50.0, windows=[w for w in windows if w["batches"]]), stats, 1000)
    assert p["hours"] is not None and p["relative_error"] is None and "granularity" in p["error_note"]


def test_projection_method_error_and_check():
    stats = {"reads": 1000, "frames": 800, "mean_protein_length": 48.0}  # 0.8 x 50 = 40 tok/read
    windows = [window(0, 500), window(1, 1000), window(2, 1100), window(3, 900), window(4, 1000)]
    p = ex.project_full_sample(fake_summary(tok=1000.0, windows=windows), stats, 6_000_000)
    assert p["tokens_per_read"] == pytest.approx(40.0)
    assert p["hours"] == pytest.approx((6_000_000 * 40 / 1000.0 + 3.6) / 3600)
    rates = pd.Series([1000, 1100, 900, 1000.0])
    assert p["relative_error"] == pytest.approx(rates.std() / rates.mean())
    assert p["hours_low"] < p["hours"] < p["hours_high"] and p["check"] is None  # capped: nothing to check
    uncapped = ex.project_full_sample(fake_summary(tok=1000.0, windows=windows[:2], capped=False, real_tokens=40_000),
                                      stats, 6_000_000)
    assert uncapped["relative_error"] is None and "not estimable" in uncapped["error_note"]
    assert uncapped["check"]["token_deviation"] == pytest.approx(0.0)
    assert uncapped["check"]["predicted_wall_s"] == pytest.approx(40_000 / 1000.0 + 5.0)
    nothing = ex.project_full_sample(fake_summary(tok=None), stats, 10)
    assert nothing["hours"] is None and nothing["error_note"]
    chain = fake_chain()
    e2e = ex.project_end_to_end(chain, {"protein_embedding": fake_summary(tok=None)}, 1000, 10, nothing)
    headline = ex.full_validation_headline({"summary": fake_summary(tok=None), "projection": nothing,
                                            "end_to_end": e2e, "chain": chain})
    assert headline["projected_hours_full_sample"]["measured"] is False


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
    e2e = ex.project_end_to_end(fake_chain(), summaries, run_reads=1000, full_reads=100_000, protein_projection=protein)
    rows = pd.DataFrame(e2e["stages"]).set_index("stage")
    assert rows.loc["protein_embedding", "fixed_s"] == pytest.approx(6.0)  # 100 - 90 s of tokens - 4 s shard check
    assert rows.loc["protein_embedding", "projected_h"] == pytest.approx((6 + 90 * 100 + 4 * 100) / 3600)
    assert rows.loc["nucleotide_embedding", "projected_h"] == pytest.approx((10 + 10 * 100) / 3600)
    assert rows.loc["merge", "projected_h"] == pytest.approx(100 / 3600)  # linear in reads
    assert e2e["hours"] == pytest.approx(rows["projected_h"].sum())
    assert e2e["bottleneck_stage"] == "protein_embedding" and 0.8 < e2e["bottleneck_share"] < 0.9
    assert e2e["relative_error"] == pytest.approx(0.02 * rows.loc["protein_embedding", "projected_h"] / e2e["hours"])
    # a stage faster than its steady rate explains: the fixed part is 0, never negative
    fast = ex.project_end_to_end(fake_chain(protein_embedding=50.0), summaries, 1000, 1000, protein)
    assert pd.DataFrame(fast["stages"]).set_index("stage").loc["protein_embedding", "fixed_s"] == 0.0


def test_end_to_end_scaling_compares_projected_chains_stage_by_stage():
    # 1 process: protein 90 s of tokens + 10 s fixed, nucleotide 10 s + 10 s; 2 processes: half the token
    # seconds, 5 s more fixed per stage (launch), the same scoring per rank halved
    one_summaries = {"protein_embedding": fake_summary(tok=1000.0, real_tokens=90_000),
                     "nucleotide_embedding": fake_summary(tok=5000.0, real_tokens=50_000)}
    two_summaries = {"protein_embedding": fake_summary(tok=2000.0, real_tokens=90_000),
                     "nucleotide_embedding": fake_summary(tok=10_000.0, real_tokens=50_000)}
    chain_1 = fake_chain(planning=0.0, merge=2.0, classifier=1.0, consensus=1.0)
    chain_2 = fake_chain(launch=7.0, planning=0.1, protein_embedding=60.0, nucleotide_embedding=20.0, merge=1.0, classifier=0.5,
                         consensus=0.5)
    sides = [{"chain": c, "end_to_end": ex.project_end_to_end(c, s, 1000, 100_000, {})}
             for c, s in ((chain_1, one_summaries), (chain_2, two_summaries))]
    out = ex.end_to_end_scaling(sides[0], sides[1], 2)
    hours_1 = (10 + 9000 + 10 + 1000 + 400) / 3600
    hours_2 = (7 + 15 + 4500 + 15 + 500 + 10 + 200) / 3600  # launch is fixed, not linear in reads
    assert out["single_h"] == pytest.approx(hours_1) and out["multi_h"] == pytest.approx(hours_2)
    assert out["factor"] == pytest.approx(hours_1 / hours_2)
    assert out["measured_factor"] == pytest.approx(chain_1["end_to_end_s"] / chain_2["end_to_end_s"])
    rows = pd.DataFrame(out["stages"]).set_index("stage")
    assert rows.loc["protein_embedding", "factor"] == pytest.approx(9010 / 4515)
    assert rows.loc["planning", "factor"] == 0.0  # one process plans nothing; N processes pay for it


def test_multi_rank_projection_uses_the_slowest_ranks_tokens():
    # 2 ranks at 500 tok/s each; rank 1 holds 60 % of the tokens: at scale its share decides the wall time
    ranks = {"0": {"real_tokens": 40_000, "steady_tok_per_s": 500.0},
             "1": {"real_tokens": 60_000, "steady_tok_per_s": 500.0}}
    summary = fake_summary(tok=1000.0, real_tokens=100_000, per_rank=ranks)
    assert ex.slowest_rank_token_seconds(summary) == pytest.approx(120.0)  # not 100 s from the summed rate
    e2e = ex.project_end_to_end(fake_chain(protein_embedding=130.0), {"protein_embedding": summary}, 1000, 10_000, {})
    row = pd.DataFrame(e2e["stages"]).set_index("stage").loc["protein_embedding"]
    assert row["fixed_s"] == pytest.approx(10.0) and row["projected_h"] == pytest.approx((10 + 1200) / 3600)
    ranks["1"]["steady_tok_per_s"] = None  # a rank without a steady rate: the summed figure
    assert ex.slowest_rank_token_seconds(summary) == pytest.approx(100.0)


def test_holdout_check_predicts_the_whole_run_from_its_first_half():
    # window 0: warm-up, 500 tok/s; then 1000 tok/s for 8 windows: the whole run is 500*10 + 80_000 tokens
    windows = [window(0, 500)] + [window(i, 1000) for i in range(1, 9)]
    check = ex.holdout_check(fake_summary(windows=windows, real_tokens=85_000, wall_s=90.0))
    assert check["checked"] and check["fit_windows"] == 4 and check["fit_tok_per_s"] == pytest.approx(1000)
    assert check["predicted_wall_s"] == pytest.approx(90.0) and check["deviation"] == pytest.approx(0.0)
    # the second half slows down: the measured wall exceeds the prediction
    slow = [window(0, 500)] + [window(i, 1000 if i < 5 else 500) for i in range(1, 9)]
    check = ex.holdout_check(fake_summary(windows=slow, real_tokens=65_000, wall_s=90.0))
    assert check["deviation"] == pytest.approx(90.0 / 70.0 - 1)
    assert ex.holdout_check(fake_summary(windows=windows[:3]))["checked"] is False


def test_embedding_stages_scaling_sums_projected_stage_times():
    stats = {"reads": 1000, "frames": 800}
    protein = (fake_summary(tok=1000.0, sequences=100, real_tokens=5000), fake_summary(tok=2000.0))
    nucleotide = (fake_summary(tok=10_000.0, sequences=100, real_tokens=3000), fake_summary(tok=10_000.0))
    out = ex.embedding_stages_scaling({"protein_embedding": protein, "nucleotide_embedding": nucleotide}, stats, 1000)
    # protein 800 frames x 50 tok = 40,000 tok: 40 s -> 20 s; nucleotide 800 x 30 = 24,000 tok: 2.4 s -> 2.4 s
    assert out["stages"]["protein_embedding"]["factor"] == pytest.approx(2.0)
    assert out["stages"]["nucleotide_embedding"]["factor"] == pytest.approx(1.0)
    assert out["factor"] == pytest.approx(42.4 / 22.4)
    broken = ex.embedding_stages_scaling({"protein_embedding": (fake_summary(tok=None), fake_summary())}, stats, 10)
    assert broken["factor"]["measured"] is False


# ---------------------------------------------------------------- tuning (injected measurements)

def tuning_ctx(tmp_path, **tuning):
    params = write_params(tmp_path, sample={"reads": 20}, tuning=tuning)
    return ex.setup("04_tuning", params, tmp_path)


def fake_measure(speeds, calls):
    def measure(knobs, index):
        calls.append(dict(knobs))
        tok = speeds(knobs)
        if tok is None:
            return {"status": "error", "error": "boom", "tok_per_s": None}
        return {"status": "ok", "error": None, "tok_per_s": tok}
    return measure


def test_coordinate_sweep_keeps_each_knobs_best(tmp_path):
    ctx = tuning_ctx(tmp_path, strategy="coordinate", max_runs=10,
                     grid={"token_budget": [2048, 4096, 8192], "num_workers": [0, 1, 2]})
    calls = []
    result = ex.run_tuning(ctx, measure=fake_measure(lambda k: k["token_budget"] / 1000 + k["num_workers"] * 10, calls))
    assert calls[0] == {"token_budget": 2048, "num_workers": 1}  # the params' embed values first
    assert result["best_config"] == {"token_budget": 8192, "num_workers": 2}
    assert len(calls) == len({tuple(c.values()) for c in calls}) == 5  # never the same point twice
    assert all(c["token_budget"] == 8192 for c in calls[3:])  # second knob swept at the first knob's best


def test_sweep_stops_at_budget_or_target_and_fails_loudly(tmp_path):
    ctx = tuning_ctx(tmp_path, strategy="grid", max_runs=3, grid={"token_budget": [1024, 2048], "num_workers": [0, 1]})
    calls = []
    result = ex.run_tuning(ctx, measure=fake_measure(lambda k: 1.0, calls))
    assert len(calls) == 3 and "budget" in result["stop_reason"]
    ctx = tuning_ctx(tmp_path, strategy="grid", max_runs=9, target_tok_per_s=10.0,
                     grid={"token_budget": [1024, 2048], "num_workers": [0, 1]})
    calls = []
    result = ex.run_tuning(ctx, measure=fake_measure(lambda k: k["token_budget"] / 200, calls))
    assert len(calls) == 3 and "target" in result["stop_reason"] and result["best_tok_per_s"] >= 10
    with pytest.raises(RuntimeError, match="every tuning run failed"):
        ex.run_tuning(ctx, measure=fake_measure(lambda k: None, []))


def test_best_params_is_a_usable_params_file(tmp_path):
    ctx = tuning_ctx(tmp_path, grid={"token_budget": [2048]})
    path = ex.write_best_params(ctx, {"token_budget": 2048, "num_workers": 0})
    params = ex.load_suite_params(path)
    assert params.embed["token_budget"] == 2048 and params.embed["num_workers"] == 0
    assert params.embed["model"] == "esm2_t6_8M" and params.name.endswith("-tuned")


# ---------------------------------------------------------------- 06 summary logic

def write_metrics(run_dir, stem, records):
    (run_dir / stem).mkdir(parents=True, exist_ok=True)
    (run_dir / stem / "metrics.json").write_text(json.dumps({"status": "complete", "records": records}))


GOOD = {
    "01_baseline": {"speedup_v2_over_v1": 6.0, "equivalence_gate_passed": True, "prediction_agreement_v1_v2": 0.999,
                    "nt_equivalence_gate_passed": True},
    "02_profiling": {"device_busy_fraction": 0.9},
    "03_scaling": {"scaling_factor_end_to_end": 1.95},
    "04_tuning": {"best_tok_per_s": 1.0},
    "05_full_validation": {"projected_hours_end_to_end": 8.0, "gpu_util_mean": 80.0, "packing_efficiency": 0.97},
}


def test_evaluate_run_passes_only_when_every_criterion_passes(tmp_path):
    params = ex.load_suite_params(SMOKE)
    for stem, records in GOOD.items():
        write_metrics(tmp_path, stem, records)
    result = ex.evaluate_run(tmp_path, params)
    assert result["verdict"] == "PASS", result["criteria"]
    assert {r["source"] for r in result["criteria"]} == {"01_baseline", "03_scaling", "05_full_validation"}
    write_metrics(tmp_path, "05_full_validation", {**GOOD["05_full_validation"],
                                                   "gpu_util_mean": crit.not_measured("no NVIDIA driver")})
    result = ex.evaluate_run(tmp_path, params)
    status = {r["name"]: r["status"] for r in result["criteria"]}
    assert result["verdict"] == "FAIL" and status["gpu_utilisation"] == "NOT MEASURED"
    assert status["full_sample_time"] == "PASS"


def test_missing_or_failed_notebook_makes_its_criteria_fail(tmp_path):
    params = ex.load_suite_params(SMOKE)
    for stem, records in GOOD.items():
        if stem != "03_scaling":
            write_metrics(tmp_path, stem, records)
    # 01 has an executed notebook with an error: it is the authority, its metrics.json is not trusted
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1/0")
    cell.outputs = [nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=[])]
    nb.cells = [cell]
    nbformat.write(nb, str(tmp_path / "01_baseline.ipynb"))
    result = ex.evaluate_run(tmp_path, params)
    rows = {r["name"]: r for r in result["criteria"]}
    assert result["verdict"] == "FAIL"
    for name in ("speedup_vs_v1", "equivalence_gate"):
        assert rows[name]["status"] == "FAIL" and "01_baseline failed" in rows[name]["reason"]
    assert rows["two_gpu_scaling"]["status"] == "FAIL" and "missing" in rows["two_gpu_scaling"]["reason"]
    assert rows["full_sample_time"]["status"] == "PASS"
    assert result["notebooks"]["01_baseline"]["from"] == "01_baseline.ipynb"
    # suite.json saying a notebook failed wins over a metrics.json left behind
    (tmp_path / "suite.json").write_text(json.dumps({"notebooks": {"05_full_validation": {"status": "failed",
                                                                                          "error": "kernel died"}}}))
    rows = {r["name"]: r for r in ex.evaluate_run(tmp_path, params)["criteria"]}
    assert rows["full_sample_time"]["status"] == "FAIL" and "kernel died" in rows["full_sample_time"]["reason"]


def test_write_summary_structure(tmp_path):
    for stem, records in GOOD.items():
        write_metrics(tmp_path, stem, records)
    ctx = ex.setup("06_summary", SMOKE, tmp_path)
    result = ex.write_summary(ctx)
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["verdict"] == result["verdict"] == "PASS"
    for row in data["criteria"]:
        assert {"name", "target", "measured", "unit", "status", "source"} <= set(row)
    assert list(ex.criteria_table(result).columns)[:4] == ["name", "comparison", "target", "measured"]


# ---------------------------------------------------------------- real tiny runs (CPU)

TINY = {"sample": {"reads": 160}, "embed": {"token_budget": 1024, "buffer_size": 128, "block_reads": 64,
                                            "num_workers": 0, "window_s": 0.5, "warmup_batches": 1},
        "baseline": {"max_reads": 80, "v1_max_seconds": 3, "equivalence": {"proteins": 4, "token_budget": 1024},
                     "agreement": {"reads": 30, "hidden": 16}, "nt_equivalence_reads": 4},
        "profiling": {"max_reads": 120, "profiler_batches": 1, "profiler_warmup": 1, "top_kernels": 5},
        "tuning": {"max_reads": 60, "max_runs": 2, "grid": {"token_budget": [512, 1024]}},
        "full_validation": {"max_reads": None, "checkpoint_every_sequences": 50},
        "scaling": {"max_reads": 80}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return write_params(root, **TINY), root / "run"


@pytest.mark.slow
def test_real_baseline(tiny):
    params, run_dir = tiny
    ctx = ex.setup("01_baseline", params, run_dir)
    result = ex.run_baseline(ctx)
    table = result["table"].set_index("variant")
    assert table["measured"].tolist() == [True, False, True, True, True, True]  # fp16 v1: GPU only
    assert table.loc["v1 DNABERT-S fp32", "model"] == "dnabert_s" and "file order" in table.loc["v1 DNABERT-S fp32", "layout"]
    assert result["speedup_nt_v2_over_v1"] > 0
    assert "not measured" in table.loc["v1 fair-esm fp16", "note"]
    assert result["speedup_v2_over_v1"] > 0 and result["speedup_v2_over_v1_fp16"]["measured"] is False
    assert table.loc["v2 packed fp32", "padding_waste"] == 0 and table.loc["v2 padded SDPA fp32", "padding_waste"] > 0
    gate = ex.run_equivalence(ctx, result["device"], result["precision"])
    agreement = ex.run_agreement(ctx, result["device"], result["precision"])
    assert agreement["agreement"] == 1.0 and agreement["details"]["same_classifier"]  # fp32 on both sides
    nt_gate = ex.run_nt_equivalence(ctx, result["device"], result["precision"])
    headline = ex.baseline_headline(result, gate, agreement, nt_gate)
    assert headline["equivalence_gate_passed"] is True and headline["prediction_agreement_v1_v2"] == 1.0
    assert headline["nt_equivalence_gate_passed"] is True and 0.1 < headline["nt_tokens_per_base"] < 0.35
    assert (ctx.out / "throughput.json").exists() and (ctx.out / "equivalence.json").exists()


@pytest.mark.slow
def test_real_profiling(tiny):
    params, run_dir = tiny
    ctx = ex.setup("02_profiling", params, run_dir)
    result = ex.run_profiling(ctx)
    assert len(result["batches"]) >= 2 and not result["samples"].empty and "t_s" in result["samples"]
    profiler = ex.run_profiler(ctx)
    assert 0 < len(profiler["table"]) <= 5 and profiler["time_basis"] == "CPU"
    assert profiler["table"]["share"].between(0, 1).all()
    headline = ex.profiling_headline(result, profiler)
    assert headline["gpu_util_mean"]["measured"] is False  # CPU: not measured, never 0
    assert result["stages"]["stage"].tolist() == ["planning", "nucleotide_embedding", "protein_embedding", "merge",
                                                  "classifier", "consensus"]
    assert result["stages"]["share"].sum() == pytest.approx(1.0)
    assert headline["bottleneck_stage"] == result["stages"].set_index("stage")["seconds"].idxmax()
    assert result["chain"]["counts"]["frames"] == result["summary"]["throughput"]["sequences"]
    assert headline["bottleneck_verdict"] in ("device-bound", "host-bound", "data-starved", "unknown")
    evidence = ex.bottleneck_evidence(result["windows"])
    assert {"verdict", "loader_wait_share", "device_busy_share"} <= set(evidence.columns)


@pytest.mark.slow
def test_real_tuning_point_and_full_validation(tiny):
    params, run_dir = tiny
    ctx = ex.setup("04_tuning", params, run_dir)
    result = ex.run_tuning(ctx)
    assert len(result["table"]) == 2 and result["best_tok_per_s"] > 0
    bad = ex.measure_point(ctx, {"token_budget": 16}, 9)  # a 49-residue protein does not fit: recorded, not raised
    assert bad["status"] == "error" and bad["error"]
    ctx = ex.setup("05_full_validation", params, run_dir)
    result = ex.run_full_validation(ctx)
    headline = ex.full_validation_headline(result)
    assert headline["checkpoint"]["count"] >= 2 and headline["capped"] is False
    assert result["projection"]["check"]["token_deviation"] == pytest.approx(0.0, abs=1e-9)
    assert math.isfinite(headline["projected_hours_full_sample"])
    assert headline["projected_hours_end_to_end"] > headline["projected_hours_full_sample"]  # every stage counted
    protein_wall = result["summary"]["throughput"]["wall_s"]  # the protein stage's own loop clock
    assert headline["stage_seconds"]["protein_embedding"] >= protein_wall
    assert headline["measured_end_to_end_s"] > protein_wall + headline["stage_seconds"]["nucleotide_embedding"]


def test_scaling_not_measurable_is_a_marker(tiny):
    params, run_dir = tiny
    ctx = ex.setup("03_scaling", params, run_dir, gpus=1, nodes=1)
    result = ex.run_scaling(ctx)
    assert result["scaling_factor"]["measured"] is False and "at least 2" in result["scaling_factor"]["reason"]
    ctx = ex.setup("03_scaling", params, run_dir, gpus=2, nodes=2)
    assert "multi-node" in ex.run_scaling(ctx)["scaling_factor"]["reason"]
