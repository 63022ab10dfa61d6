"""The Makefile's entry points: what `make lab` runs, with ARGS passed through."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lab_passes_args_to_jupyter_lab():
    dry = subprocess.run(["make", "-n", "lab", "ARGS=--allow-root --no-browser --ip=127.0.0.1"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert dry[-1].endswith("/bin/jupyter lab notebooks --allow-root --no-browser --ip=127.0.0.1")
    plain = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert plain.splitlines()[-1].rstrip().endswith("/bin/jupyter lab notebooks")
