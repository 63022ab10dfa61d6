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
from perfkit.summary import build_run_summary

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


def test_notebook_defaults_are_the_checkouts_from_any_folder_and_relative_paths_the_callers(tmp_path, monkeypatch):
    """The card's `papermill notebooks/03_scaling.ipynb out.ipynb -p gpus 2` runs from the repo root: the
    defaults must not be relative to the folder papermill runs in; a path the user types is."""
    for where in (ROOT, ROOT / "notebooks", tmp_path):
        monkeypatch.chdir(where)
        ctx = ex.setup("06_summary", None, None)
        assert ctx.params_file == SMOKE and ctx.run_dir == ROOT / "outputs" / "nbval"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text(SMOKE.read_text())
    ctx = ex.setup("06_summary", "mine.yaml", "out")
    assert ctx.params_file == tmp_path / "mine.yaml" and ctx.run_dir == tmp_path / "out"


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
         "loader_wait_fraction": 0.01, "packing_efficiency": 0.95, "padding_waste": 0.0, "rank_imbalance": 1.0}
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
    # no per-rank steady wall: the loop's wall is not checked (never a deviation from a guessed start-up)
    assert uncapped["check"]["wall_deviation"] is None and "not checked" in uncapped["check"]["note"]
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


def test_two_size_fit_is_the_line_through_both_sizes():
    fit = ex.two_size_fit((1000, 3000), (30.0, 70.0))
    assert fit["per_read_s"] == pytest.approx(0.02) and fit["fixed_s"] == pytest.approx(10.0)
    assert ex.fit_seconds(fit, 6_000_000) == pytest.approx(10.0 + 0.02 * 6_000_000)
    assert ex.spread([1.0, None, 3.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "values": [1.0, 3.0, 2.0]}


def test_criterion_takes_the_projected_factor_only_while_the_check_holds():
    holds = {"holds": True, "worst_deviation": 0.029}
    chosen = ex.criterion_factor(1.95, 1.5, holds)
    assert chosen["factor"] == 1.95 and chosen["source"] == "projected" and "+2.9%" in chosen["reason"]
    off = {"holds": False, "worst_deviation": -0.031}
    chosen = ex.criterion_factor(1.95, 1.5, off)
    assert chosen["factor"] == 1.5 and chosen["source"] == "measured" and "-3.1%" in chosen["reason"]
    no_fit = ex.criterion_factor(crit.not_measured("fit falls with the reads"), 1.5, holds)
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
    out = ex.end_to_end_scaling([rounds_of()], (1000, 3000), 2, 100_000)
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
    out = ex.end_to_end_scaling([rounds_of(multi_extra=(0.0, 2.0))], (1000, 3000), 2, 100_000)
    assert out["fit_check"]["multi"] == pytest.approx(37.25 / 35.25 - 1) and not out["fit_check"]["holds"]
    assert out["fit_check"]["single"] == pytest.approx(0.0, abs=1e-12)
    assert out["projected_factor"]["median"] == pytest.approx(573.0 / (26.0 + 0.00375 * 100_000))  # still reported
    assert out["factor_source"] == "measured" and out["factor"] == pytest.approx(39.5 / 37.25)
    assert "+5.7%" in out["factor_reason"]
    # within 3 %: 1 s on the multi side's large run (+2.8 %) keeps the projection
    out = ex.end_to_end_scaling([rounds_of(multi_extra=(0.0, 1.0))], (1000, 3000), 2, 100_000)
    assert out["fit_check"]["holds"] and out["factor_source"] == "projected"
    # a fit that falls with the reads projects nothing
    out = ex.end_to_end_scaling([rounds_of(multi_extra=(10.0, 0.0))], (1000, 3000), 2, 100_000)
    assert out["projected_factor"]["median"]["measured"] is False and out["factor_source"] == "measured"


def test_end_to_end_scaling_reports_the_median_and_spread_of_interleaved_rounds():
    rounds = [rounds_of(), rounds_of(single_extra=(3.0, 3.0)), rounds_of(single_extra=(1.0, 1.0))]
    out = ex.end_to_end_scaling(rounds, (1000, 3000), 2, 100_000)
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
    assert ex.slowest_rank_token_seconds(summary) == pytest.approx(120.0)  # not 100 s from the summed rate
    e2e = ex.project_end_to_end(fake_chain(protein_embedding=130.0), {"protein_embedding": summary}, 1000, 10_000, {})
    row = pd.DataFrame(e2e["stages"]).set_index("stage").loc["protein_embedding"]
    assert row["fixed_s"] == pytest.approx(10.0) and row["projected_h"] == pytest.approx((10 + 1200) / 3600)
    ranks["1"]["steady_tok_per_s"] = None  # a rank without a steady rate: the summed figure
    assert ex.slowest_rank_token_seconds(summary) == pytest.approx(100.0)


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
    check = ex.project_full_sample(summary, stats, 6_000_000)["check"]
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
    loop = lambda *means: {str(r): {"gpu_utilization_percent": {"mean": m, "measured": True}} for r, m in enumerate(means)}
    stages = {"nucleotide_embedding": {"gpu": loop(55.0, 30.0)}, "protein_embedding": {"gpu": loop(90.0, 80.0)}}
    out = ex.chain_gpu_utilisation(chain, stages, samples)
    rank0 = 0 * 10 + 10 * 2 + 60 * 20 + 95 * 60 + 40 * 8
    rank1 = 30 * 20 + 80 * 60
    assert out["value"] == pytest.approx((rank0 + rank1) / 200)  # 63.2 %, where the protein loop alone says 85 %
    assert out["share_counted_at_zero"] == pytest.approx(20 / 200)
    rows = pd.DataFrame(out["table"]).set_index(["rank", "stage"])
    assert rows.loc[(0, "launch"), "samples"] == 2 and rows.loc[(0, "scoring"), "seconds"] == pytest.approx(8.0)
    assert rows.loc[(1, "nucleotide_embedding"), "source"].startswith("the stage's own sampler")
    assert ex.gpu_util_mean({"gpu": stages["protein_embedding"]["gpu"]}) == pytest.approx(85.0)
    # without a driver: no reading anywhere -> NOT MEASURED, never a number
    host = {"gpu_utilization_percent": crit.not_measured("no NVIDIA driver")}
    none = ex.chain_gpu_utilisation(chain, {"protein_embedding": {"gpu": {"0": host, "1": host}}},
                                    {0: [{"timestamp": 1030.0}], 1: []}, note="no NVIDIA driver: host only")
    assert none["value"]["measured"] is False and "no NVIDIA driver" in none["value"]["reason"]
    headline = ex.full_validation_headline({"summary": fake_summary(gpu=loop(90.0, 80.0)), "gpu_util": out,
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
    loop = lambda *means: {str(r): {"gpu_utilization_percent": {"mean": m, "measured": True}} for r, m in enumerate(means)}
    stages = {"nucleotide_embedding": {"gpu": loop(55.0, 30.0)}, "protein_embedding": {"gpu": loop(90.0, None)}}
    stages["protein_embedding"]["gpu"]["1"]["gpu_utilization_percent"]["measured"] = False  # rank 1: chain sampler
    out = ex.project_gpu_utilisation(measured, e2e, stages)
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
    none = ex.project_gpu_utilisation({"value": crit.not_measured("no NVIDIA driver"), "table": []}, e2e, stages)
    assert none["value"]["measured"] is False


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
    "05_full_validation": {"projected_hours_end_to_end": 8.0, "gpu_util_full_sample": 80.0, "packing_efficiency": 0.97},
}


def test_evaluate_run_passes_only_when_every_criterion_passes(tmp_path):
    params = ex.load_suite_params(SMOKE)
    for stem, records in GOOD.items():
        write_metrics(tmp_path, stem, records)
    result = ex.evaluate_run(tmp_path, params)
    assert result["verdict"] == "PASS", result["criteria"]
    assert {r["source"] for r in result["criteria"]} == {"01_baseline", "03_scaling", "05_full_validation"}
    write_metrics(tmp_path, "05_full_validation", {**GOOD["05_full_validation"],
                                                   "gpu_util_full_sample": crit.not_measured("no NVIDIA driver")})
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
        "scaling": {"fit_reads": [40, 80], "embed": {"num_workers": 0, "block_reads": 16}}}


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
    assert math.isfinite(result["projection"]["check"]["wall_deviation"])  # the per-rank steady wall was found
    assert headline["gpu_util_end_to_end"]["measured"] is False  # CPU: NOT MEASURED, never 0 and never PASS
    assert headline["gpu_util_full_sample"]["measured"] is False
    assert headline["gpu_util_protein_loop"]["measured"] is False and "gpu_util_mean" not in headline
    detail = headline["gpu_util_end_to_end_detail"]
    assert {r["stage"] for r in detail["table"]} == {"planning", "nucleotide_embedding", "protein_embedding", "scoring"}
    assert sum(r["seconds"] for r in detail["table"]) == pytest.approx(headline["measured_end_to_end_s"])
    assert math.isfinite(headline["projected_hours_full_sample"])
    assert headline["projected_hours_end_to_end"] > headline["projected_hours_full_sample"]  # every stage counted
    protein_wall = result["summary"]["throughput"]["wall_s"]  # the protein stage's own loop clock
    assert headline["stage_seconds"]["protein_embedding"] >= protein_wall
    assert headline["measured_end_to_end_s"] > protein_wall + headline["stage_seconds"]["nucleotide_embedding"]


def test_run_predict_launches_one_cpu_process_through_torchrun_when_asked(tmp_path, monkeypatch):
    from perfkit.workload import predict
    from perfkit.workload.config import make_config

    calls = []
    monkeypatch.setattr(predict, "_launch_ranks", lambda cfg, weights, hidden, nproc, gpus: calls.append(
        ("torchrun", nproc, gpus)) or {})
    monkeypatch.setattr(predict, "run_chain", lambda cfg, ranks, **kw: calls.append(("in process", ranks)) or {})
    (tmp_path / "s.fa").write_text(">r1\nATGAAACCCGGGTTTTAA\n")  # the in-process path checks its input first
    cfg = make_config(input=tmp_path / "s.fa", out_dir=tmp_path / "o", model="esm2_t6_8M", device="cpu")
    predict.run_predict(cfg, nproc=1)
    predict.run_predict(cfg, nproc=1, launch=True)
    predict.run_predict(cfg, nproc=2)
    assert calls == [("in process", None), ("torchrun", 1, False), ("torchrun", 2, False)]


def test_scaling_sizes_from_params(tmp_path):
    params = ex.load_suite_params(write_params(tmp_path, sample={"reads": 500}, scaling={"fit_reads": None,
                                                                                          "max_reads": 300}))
    assert ex.scaling_sizes(params, 500) == [150, 300]
    params = ex.load_suite_params(write_params(tmp_path, scaling={"fit_reads": [100, 900]}))
    with pytest.raises(UserError, match="within the sample"):
        ex.scaling_sizes(params, 500)
    for bad, message in (([300, 100], "small then large"), ([100], "small then large")):
        with pytest.raises(UserError, match=message):
            ex.load_suite_params(write_params(tmp_path, scaling={"fit_reads": bad}))
    with pytest.raises(UserError, match="set one of them"):
        ex.load_suite_params(write_params(tmp_path, scaling={"fit_reads": [100, 200], "max_reads": 300}))


def test_warmup_reads_default_to_four_blocks_per_gpu_rank_and_none_on_cpu(tmp_path):
    params = ex.load_suite_params(write_params(tmp_path))
    assert params.scaling.warmup_reads is None
    assert ex.warmup_reads(params, gpus=True, nproc=2) == 4 * 64 * 2  # smoke: block_reads 64 in scaling.embed
    assert ex.warmup_reads(params, gpus=False, nproc=2) == 0
    params = ex.load_suite_params(write_params(tmp_path, scaling={"warmup_reads": 0}))
    assert ex.warmup_reads(params, gpus=True, nproc=2) == 0
    with pytest.raises(UserError, match="warmup_reads"):
        ex.load_suite_params(write_params(tmp_path, scaling={"warmup_reads": -1}))


def test_warmup_chain_runs_n_ranks_once_untimed_before_the_rounds(tmp_path):
    params = ex.load_suite_params(write_params(tmp_path, scaling={"warmup_reads": 300}))
    launched = []

    class Ctx:
        sample_stats = {"reads": 250}  # a warm-up never asks for more reads than the sample has

        def __init__(self):
            self.params = params

        def embed_config(self, name, **knobs):
            return {"name": name, **knobs}

    def fake_predict(cfg, **kwargs):
        launched.append((cfg, kwargs))

    warmup = ex.warmup_chain(Ctx(), {"nproc": 2, "gpus": True}, {"mode": "v2"}, fake_predict)
    assert len(launched) == 1
    cfg, kwargs = launched[0]
    assert cfg == {"name": "chain-warmup-2", "mode": "v2", "max_reads": 250}
    assert kwargs["nproc"] == 2 and kwargs["gpus"] is True and kwargs["launch"] is True
    assert warmup["reads"] == 250 and warmup["nproc"] == 2 and warmup["wall_s"] >= 0 and "untimed" in warmup["why"]
    launched.clear()
    assert ex.warmup_chain(Ctx(), {"nproc": 2, "gpus": False}, {}, fake_predict) is not None  # explicit reads: CPU too
    Ctx.params = ex.load_suite_params(write_params(tmp_path, scaling={"warmup_reads": 0}))
    ctx = Ctx()
    ctx.params = Ctx.params
    launched.clear()
    assert ex.warmup_chain(ctx, {"nproc": 2, "gpus": True}, {}, fake_predict) is None and not launched


@pytest.mark.slow
def test_real_scaling_launches_both_sides_through_torchrun(tiny):
    params, run_dir = tiny
    ctx = ex.setup("03_scaling", params, run_dir, gpus=2, nodes=1)
    result = ex.run_scaling(ctx)
    e2e = result["end_to_end"]
    assert e2e["sizes"] == [40, 80] and e2e["repeats"] == 1 and "torchrun on both sides" in e2e["launch"]
    for reads in (40, 80):
        runs = {side: result["rounds"][0][side][reads] for side in ("single", "multi")}
        for side, ranks in (("single", 1), ("multi", 2)):
            chain, stages = runs[side]["chain"], runs[side]["stages"]
            # launched: torchrun's time is the first stage, the chain's wall is the launching process's
            assert chain["ranks"] == ranks and list(chain["stages_s"])[0] == "launch" and chain["stages_s"]["launch"] > 0
            assert chain["end_to_end_s"] == pytest.approx(chain["launch_wall_s"], rel=1e-6)
            assert chain["plan"]["blocks"] == math.ceil(reads / 16)  # rank 0 planned, even for 1 rank
            assert stages["protein_embedding"]["distributed"]["launcher"] == "torchrun"
            assert stages["protein_embedding"]["distributed"]["world"] == ranks
        assert runs["single"]["chain"]["counts"] == runs["multi"]["chain"]["counts"]  # the same work
    assert e2e["measured_factor"]["median"] == pytest.approx(
        result["rounds"][0]["single"][80]["chain"]["end_to_end_s"] / result["rounds"][0]["multi"][80]["chain"]["end_to_end_s"])
    headline = ex.scaling_headline(result)
    source = headline["scaling_factor_end_to_end_source"]
    assert source == ("projected" if e2e["fit_check"]["holds"] and isinstance(e2e["projected_factor"]["median"], float)
                      else "measured")
    expected = headline[f"scaling_factor_end_to_end_{source}"]
    assert headline["scaling_factor_end_to_end"] == expected and headline["scaling_factor_end_to_end_reason"]
    figures = ex.scaling_figures(ctx, result)
    assert {"scaling", "scaling_nucleotide", "scaling_end_to_end", "scaling_fit"} <= set(figures)
    assert "measured" in figures["scaling_fit"].texts[0].get_text()  # the caption states the definitions


def test_scaling_not_measurable_is_a_marker(tiny):
    params, run_dir = tiny
    ctx = ex.setup("03_scaling", params, run_dir, gpus=1, nodes=1)
    result = ex.run_scaling(ctx)
    assert result["scaling_factor"]["measured"] is False and "at least 2" in result["scaling_factor"]["reason"]
    ctx = ex.setup("03_scaling", params, run_dir, gpus=2, nodes=2)
    assert "multi-node" in ex.run_scaling(ctx)["scaling_factor"]["reason"]
