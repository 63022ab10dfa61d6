"""perfkit.suite.context: notebook setup, the shared sample and the small shared helpers."""

import json

import pandas as pd
import pytest

from perfkit import criteria as crit
from perfkit.errors import UserError
from perfkit.suite import context
from suite_helpers import ROOT, SMOKE, write_params, fake_summary


def test_setup_rejects_unknown_and_ill_typed_parameters(tmp_path):
    with pytest.raises(UserError, match="unknown parameter.*bogus"):
        context.setup(
            "01_baseline",
            SMOKE,
            tmp_path,
            namespace={
                "params_file": "x",
                "run_dir": "y",
                "bogus": 3,
                "context": context,
                "_private": 1,
                "In": [],
            },
        )
    with pytest.raises(UserError, match="gpus"):
        context.setup("03_scaling", SMOKE, tmp_path, gpus="two", nodes=1)
    with pytest.raises(UserError, match="unknown notebook"):
        context.setup("07_extra", SMOKE, tmp_path)


def test_notebook_defaults_are_the_checkouts_from_any_folder_and_relative_paths_the_callers(
    tmp_path, monkeypatch
):
    """The card's `papermill notebooks/03_scaling.ipynb out.ipynb -p gpus 2` runs from the repo root: the
    defaults must not be relative to the folder papermill runs in; a path the user types is."""
    for where in (ROOT, ROOT / "notebooks", tmp_path):
        monkeypatch.chdir(where)
        ctx = context.setup("06_summary", None, None)
        assert ctx.params_file == SMOKE and ctx.run_dir == ROOT / "outputs" / "nbval"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text(SMOKE.read_text())
    ctx = context.setup("06_summary", "mine.yaml", "out")
    assert ctx.params_file == tmp_path / "mine.yaml" and ctx.run_dir == tmp_path / "out"


def test_setup_empties_the_notebook_folder_and_makes_the_sample_once(tmp_path):
    stale = tmp_path / "04_tuning" / "metrics.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    ctx = context.setup("04_tuning", write_params(tmp_path, sample={"reads": 50}), tmp_path / "")
    assert not stale.exists() and ctx.out.is_dir()
    assert ctx.sample == tmp_path / "sample.fa" and ctx.sample_stats["reads"] == 50
    mtime = ctx.sample.stat().st_mtime_ns
    context.setup("05_full_validation", ctx.params_file, tmp_path)
    assert ctx.sample.stat().st_mtime_ns == mtime  # shared, not regenerated
    assert ctx.sample_stats["tokens_per_read"] == pytest.approx(
        ctx.sample_stats["frames"] / 50 * (ctx.sample_stats["mean_protein_length"] + 2)
    )


def test_finish_writes_metrics_json(tmp_path):
    ctx = context.setup("02_profiling", write_params(tmp_path, sample={"reads": 20}), tmp_path)
    ctx.finish({"a": 1.5, "b": crit.not_measured("no GPU"), "t": pd.DataFrame({"x": [1.0, float("nan")]})})
    data = json.loads((tmp_path / "02_profiling" / "metrics.json").read_text())
    assert data["status"] == "complete"
    assert data["records"]["a"] == 1.5 and data["records"]["b"]["measured"] is False
    assert data["records"]["t"] == [{"x": 1.0}, {"x": None}]


def test_each_notebook_ends_with_its_conclusion(tmp_path, capsys):
    ctx = context.setup("02_profiling", write_params(tmp_path, sample={"reads": 20}), tmp_path)
    assert "no criterion comes from this notebook" in ctx.conclusion({})
    ctx = context.setup("03_scaling", write_params(tmp_path, sample={"reads": 20}), tmp_path)
    capsys.readouterr()
    ctx.finish({"scaling_factor_end_to_end": 1.37})
    out = capsys.readouterr().out
    assert (
        "**Conclusion (03_scaling)**" in out
        and "- two_gpu_scaling: 1.37 x (target >= 1.9 x): **FAIL**" in out
    )
    ctx = context.setup("05_full_validation", write_params(tmp_path, sample={"reads": 20}), tmp_path)
    text = ctx.conclusion(
        {"gpu_util_full_sample": crit.not_measured("no NVIDIA driver"), "packing_efficiency": 0.99}
    )
    assert "gpu_utilisation: not measured (target >= 70 %): **NOT MEASURED** — no NVIDIA driver" in text
    assert "packing_efficiency: 0.99 fraction (target >= 0.9 fraction): **PASS**" in text


def test_ratio_and_markers():
    assert context.ratio(10, 4, "x") == 2.5
    for a, b in [(None, 1), (1, None), (float("nan"), 1), (1, 0), ({"measured": False}, 1)]:
        assert context.ratio(a, b, "why")["measured"] is False


def test_throughput_row():
    row = context.throughput_row("v2 packed", fake_summary())
    assert (
        row["tok_per_s"] == 1000.0
        and row["attention"] == "varlen_attn"
        and row["measured"]
        and row["mfu"] == 0.6
    )
    missing = context.throughput_row("v1 fp16", None, note="GPU only")
    assert missing["measured"] is False and missing["tok_per_s"] is None and missing["note"] == "GPU only"


def test_gpu_util_mean_single_multi_and_unmeasured():
    measured = {"gpu_utilization_percent": {"mean": 80.0, "measured": True}}
    assert context.gpu_util_mean(fake_summary(gpu=measured)) == 80.0
    multi = {"0": measured, "1": {"gpu_utilization_percent": {"mean": 60.0, "measured": True}}}
    assert context.gpu_util_mean(fake_summary(gpu=multi)) == 70.0
    host = {"note": "no driver", "gpu_utilization_percent": crit.not_measured("no NVIDIA driver")}
    assert context.gpu_util_mean(fake_summary(gpu=host))["reason"] == "no NVIDIA driver"
    half = {"0": measured, "1": host}  # one GPU unmeasured: the mean is not a measurement
    assert context.gpu_util_mean(fake_summary(gpu=half))["measured"] is False
    assert context.gpu_util_mean(fake_summary())["measured"] is False


def test_every_notebook_starts_with_the_random_weights_banner(tmp_path, capsys):
    context.setup("06_summary", SMOKE, tmp_path)
    out = capsys.readouterr().out
    assert "**Random weights** (ESM-2 (esm2_t6_8M), DNABERT-S, the classifier" in out
    assert "mean nothing biologically" in out and "performance figures" in out
    params = context.load_suite_params(SMOKE, {"embed": {"weights": "/models/esm2.pt"}})
    # real ESM-2 weights: only the others are named
    assert "ESM-2" not in context.random_weights_banner(params)
