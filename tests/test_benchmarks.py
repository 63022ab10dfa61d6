"""Benchmarks must run, or fail loudly: each one starts, and the packing one runs end to end (small)."""
import json
import subprocess
import sys

import pytest

BENCHMARKS = ["packing", "overhead", "v1_vs_v2", "scaling"]


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
