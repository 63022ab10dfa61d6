"""Benchmarks must run, or fail loudly: each one starts, and the packing one runs end to end (small)."""
import json
import subprocess
import sys

import pytest

BENCHMARKS = ["packing", "overhead", "v1_vs_v2", "scaling", "nucleotide", "merge", "chaos"]


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


@pytest.mark.slow
def test_chaos_kills_each_path_once_and_resumes_to_identical_output(tmp_path):
    """CI's short chaos run (<= 2 min on 2 cores): embed, predict killed in its protein stage, embed --nproc 2."""
    import time

    out = tmp_path / "chaos.json"
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "perfkit.benchmarks.chaos", "--trials", "3", "--reads", "80", "--seed", "3",
                    "--work", str(tmp_path / "work"), "--out", str(out)], capture_output=True, text=True, check=True,
                   timeout=240)
    assert time.monotonic() - start <= 120
    result = json.loads(out.read_text())
    total = result["summary"]["all"]
    assert total["trials"] == 3 and total["identical"] == 3 and total["orphans"] == 0
    assert [t["path"] for t in result["trials"]] == ["embed", "predict", "embed_nproc2"]
    assert result["trials"][1]["kill"].startswith("protein stage")
