import random
from pathlib import Path

import pytest

SENSE_CODONS = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in ("TAA", "TAG", "TGA")]


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
