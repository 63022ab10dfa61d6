"""The Makefile's entry points: what `make lab` runs, with ARGS passed through."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def dry_run(*args) -> str:
    """The `jupyter lab` line `make -n` would run (from inside `make test` too, whose MAKEFLAGS would
    otherwise add 'Entering directory' lines)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    return next(line.rstrip() for line in out.splitlines() if "jupyter lab" in line)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lab_passes_args_to_jupyter_lab():
    assert dry_run("lab", "ARGS=--allow-root --no-browser --ip=127.0.0.1").endswith(
        "/bin/jupyter lab notebooks --allow-root --no-browser --ip=127.0.0.1"
    )
    assert dry_run("lab").endswith("/bin/jupyter lab notebooks")
