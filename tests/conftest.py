import os
import random
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two xdist workers share the 2 cores: one intra-op thread each, or they fight over both (the ranks and
    # runs a test starts inherit this and do the same)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"

SENSE_CODONS = [
    a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in ("TAA", "TAG", "TGA")
]


def orf_fasta(path: Path, reads: int, seed: int = 0, min_codons: int = 15, max_codons: int = 60) -> Path:
    """A small FASTA whose reads are stop-free in frame F1 (other frames survive by chance)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(reads):
            codons = rng.randint(min_codons, max_codons)
            f.write(f">read{i}\n" + "".join(rng.choice(SENSE_CODONS) for _ in range(codons)) + "\n")
    return path


@pytest.fixture
def small_fasta(tmp_path):
    return orf_fasta(tmp_path / "sample.fa", 120)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(params file, run folder) of the real tiny suite runs (CPU); one per test module."""
    from suite_helpers import TINY, write_params

    root = tmp_path_factory.mktemp("tiny")
    return write_params(root, **TINY), root / "run"


# the tests that read the whole tiny suite run in one xdist worker, so that it is run once (~60 s of CPU)
WHOLE_TINY_SUITE = pytest.mark.xdist_group("whole-tiny-suite")


@pytest.fixture(scope="session")
def whole_tiny_suite(tmp_path_factory):
    """(exit code, params file, run folder) of every notebook through the runner, as `make demo` runs them, on the
    smoke params made tiny (suite_helpers.TINY: fewer reads, the same code path), with two tuning knobs so that
    04 has a grid to draw as a heatmap."""
    from suite_helpers import TINY, write_params

    from perfkit.suite import runner

    root = tmp_path_factory.mktemp("whole-tiny-suite")
    tuning = {**TINY["tuning"], "max_runs": 3, "grid": {"token_budget": [512, 1024], "num_workers": [0, 1]}}
    params = write_params(root, **{**TINY, "tuning": tuning})
    return runner.run_suite(params, root / "run"), params, root / "run"


# the notebooks (nbval) and the card's papermill command write the checkout's outputs/nbval: one xdist worker
# runs them all, in order (--dist loadgroup)
SHARED_OUTPUT = ("notebooks/", "tests/test_suite_scaling.py::test_the_cards_command")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the group into the node id
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SHARED_OUTPUT):
            item.add_marker(pytest.mark.xdist_group("outputs-nbval"))
    # the notebooks first, then the slow tests, then the rest (stable: a notebook's cells keep their order), so
    # that the long ones start early and both workers finish together
    items.sort(
        key=lambda item: (
            0 if item.nodeid.startswith("notebooks/") else 1 if item.get_closest_marker("slow") else 2
        )
    )
