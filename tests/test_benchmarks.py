"""Benchmarks must run, or fail loudly: each one starts, and the packing one runs end to end (small)."""

import json
import subprocess
import sys

import pytest

BENCHMARKS = ["packing", "overhead", "v1_vs_v2", "scaling", "nucleotide", "merge", "chaos", "protein_mfu"]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_starts(name):
    done = subprocess.run(
        [sys.executable, "-m", f"perfkit.benchmarks.{name}", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout


def test_packing_benchmark_runs_and_reports_efficiency():
    done = subprocess.run(
        [sys.executable, "-m", "perfkit.benchmarks.packing", "--sequences", "40000"],
        capture_output=True,
        text=True,
        check=True,
    )
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 8
    assert all(r["packing_efficiency"] > 0.98 for r in results if r["budget"] == 16384)


def test_nucleotide_benchmark_measures_the_loader_on_cpu(tmp_path):
    """On CPU only the loader half runs (the model half needs CUDA): it still writes its JSON."""
    out = tmp_path / "nt.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "perfkit.benchmarks.nucleotide",
            "--device",
            "cpu",
            "--reads",
            "3000",
            "--budgets",
            "2048",
            "--workers",
            "1",
            "--loader-seconds",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.read_text())
    loader = result["loader"][0]
    assert (
        result["model"] == []
        and loader["workers"] == 1
        and loader["batches_counted"] > 1
        and loader["tok_per_s"] > 0
    )


@pytest.mark.slow
def test_chaos_kills_each_path_once_and_resumes_to_identical_output(tmp_path):
    """CI's short chaos run: embed, predict killed in its protein stage, embed --nproc 2 (the timeout only
    guards against a hang; how long it takes is not a test's business)."""
    out = tmp_path / "chaos.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "perfkit.benchmarks.chaos",
            "--trials",
            "3",
            "--reads",
            "80",
            "--seed",
            "3",
            "--nt-model",
            "dnabert_mini",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=400,
    )
    result = json.loads(out.read_text())
    total = result["summary"]["all"]
    assert total["trials"] == 3 and total["identical"] == 3 and total["orphans"] == 0
    assert [t["path"] for t in result["trials"]] == ["embed", "predict", "embed_nproc2"]
    assert result["trials"][1]["kill"].startswith("protein stage")


def test_protein_mfu_names_a_bad_run_and_a_cpu_device():
    bad = subprocess.run(
        [sys.executable, "-m", "perfkit.benchmarks.protein_mfu", "--runs", "compiled_varlen16384"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --runs compiled_varlen16384")
    cpu = subprocess.run(
        [sys.executable, "-m", "perfkit.benchmarks.protein_mfu", "--device", "cpu"],
        capture_output=True,
        text=True,
    )
    assert cpu.returncode == 2 and cpu.stderr.strip().splitlines() == [
        "error: --device cpu: this benchmark times GPU kernels; pass --device cuda on a GPU node"
    ]


def test_protein_mfu_run_and_gate_on_cpu(tmp_path, monkeypatch):
    """One run's whole path on CPU for three variants (dynamic shapes, static shapes, residual epilogue; the
    timing needs CUDA, so the syncs are stubbed): the pipeline's packs, padding to static shapes, the fair-esm
    fp32 reference rebuilt from our weights, and the gate. A bf16 model passes; padding to static shapes
    changes no vector."""
    import types

    import torch

    from perfkit.benchmarks import protein_mfu as pm
    from perfkit.workload.synth import write_synthetic_fasta

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda *a, **k: None)
    monkeypatch.setitem(pm.VARIANTS, "cpu_dynamic", pm.Variant(attention="sdpa_repadded", compile=False))
    monkeypatch.setitem(
        pm.VARIANTS, "cpu_static", pm.Variant(attention="sdpa_repadded", compile=False, static=True)
    )
    monkeypatch.setitem(
        pm.VARIANTS,
        "cpu_residual",
        pm.Variant(attention="sdpa_repadded", compile=False, residual_epilogue=True),
    )
    fasta = tmp_path / "reads.fa"
    write_synthetic_fasta(fasta, 300, "reads150", seed=3)
    args = types.SimpleNamespace(
        device="cpu",
        model="esm2_t6_8M",
        tokens_per_pass=3000,
        repeats=1,
        seed=0,
        hidden_rows=100,
        profile_runs=[],
    )
    cache, peaks = {}, {"measured": 1e12, "spec": 2e12}
    dynamic = pm.run_one("cpu_dynamic", 1024, fasta, args, cache, peaks)
    static = pm.run_one("cpu_static", 1024, fasta, args, cache, peaks)
    residual = pm.run_one("cpu_residual", 1024, fasta, args, cache, peaks)
    assert dynamic["static_shapes"] is None and static["static_shapes"]["token_budget"] == 1024
    assert residual["residual_epilogue"] and not dynamic["residual_epilogue"]
    for row in (dynamic, static, residual):
        assert row["batches"] == 3 and row["tok_per_s_median"] > 0
        assert row["mfu_spec_peak"] == pytest.approx(row["mfu_measured_peak"] / 2)
        assert row["gate"]["passed"], row["gate"]
        assert row["gate"]["pooled"]["n"] == dynamic["gate"]["pooled"]["n"] > 10
        assert 0 < row["gate"]["pooled"]["max_relative_error"] < 0.01  # bf16 against fp32: close, not equal
    assert static["gate"]["pooled"] == dynamic["gate"]["pooled"]


def test_protein_mfu_static_shapes_fit_every_batch():
    import numpy as np

    from perfkit.benchmarks.protein_mfu import static_shapes

    batches = [
        {"max_seqlen": 40, "real_tokens": 1000, "sequences": 30},
        {"max_seqlen": 52, "real_tokens": 900, "sequences": 25},
    ]
    shapes = static_shapes(batches, 1024)
    assert shapes == {"token_budget": 1024, "max_seqlen": 52, "max_seqs": 30 + int(np.ceil(124 / 52))}
