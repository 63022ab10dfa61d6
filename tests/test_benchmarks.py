"""Benchmarks must run, or fail loudly: each one starts, and the packing one runs end to end (small)."""
import json
import subprocess
import sys

import pytest

BENCHMARKS = ["packing", "overhead", "v1_vs_v2", "scaling", "nucleotide", "merge"]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_starts(name):
    done = subprocess.run([sys.executable, "-m", f"perfkit.benchmarks.{name}", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout


def test_packing_benchmark_runs_and_reports_efficiency():
    done = subprocess.run([sys.executable, "-m", "perfkit.benchmarks.packing", "--sequences", "40000"],
                          capture_output=True, text=True, check=True)
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 8
    assert all(r["packing_efficiency"] > 0.98 for r in results if r["budget"] == 16384)


def test_nucleotide_benchmark_measures_the_loader_on_cpu(tmp_path):
    """On CPU only the loader half runs (the model half needs CUDA): it still writes its JSON."""
    out = tmp_path / "nt.json"
    subprocess.run([sys.executable, "-m", "perfkit.benchmarks.nucleotide", "--device", "cpu", "--reads", "3000",
                    "--budgets", "2048", "--workers", "1", "--loader-seconds", "1", "--out", str(out)], capture_output=True, text=True,
                   check=True)
    result = json.loads(out.read_text())
    loader = result["loader"][0]
    assert result["model"] == [] and loader["workers"] == 1 and loader["batches_counted"] > 1 and loader["tok_per_s"] > 0
