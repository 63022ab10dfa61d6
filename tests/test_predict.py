"""The whole chain on CPU: both embedding stages through the same runner, classifier, consensus."""
import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import orf_fasta
from perfkit.errors import UserError
from perfkit.workload.config import make_config
from perfkit.workload.data import count_frames
from perfkit.workload.encoders import NUCLEOTIDE_STAGE, PROTEIN_STAGE, encoder_for
from perfkit.workload.predict import run_predict

FAST = dict(precision="fp32", device="cpu", progress=False, token_budget=1024, num_workers=0)


def test_encoders_know_their_stage_and_tokens():
    protein, nucleotide = encoder_for("esm2_t6_8M"), encoder_for("dnabert_s")
    assert (protein.stage, nucleotide.stage) == (PROTEIN_STAGE, NUCLEOTIDE_STAGE)
    assert (protein.frame_field, nucleotide.frame_field) == ("protein", "nucleotides")
    tokens, lengths = nucleotide.encode(["ATGGCCAAATTTGGG" * 10, "ACGT" * 30])
    assert lengths.tolist() and int(lengths.sum()) == tokens.size
    assert nucleotide.flops_per_token() < protein.__class__("esm2_t36_3B").flops_per_token()
    with pytest.raises(UserError, match="unknown model"):
        encoder_for("bert_base")


@pytest.mark.slow
def test_predict_chain_counts_and_outputs(tmp_path):
    fasta = orf_fasta(tmp_path / "s.fa", 40, seed=5)
    summary = run_predict(make_config(input=fasta, out_dir=tmp_path / "run", **FAST), hidden=32)
    frames = count_frames(fasta)
    assert summary["counts"]["frames"] == frames
    for stage in ("translation", "nucleotide_embedding", "protein_embedding", "merge", "classifier", "consensus"):
        assert summary["stages_s"][stage] >= 0
    assert summary["bottleneck_stage"] in summary["stages_s"]
    with h5py.File(tmp_path / "run" / "nucleotide" / "embeddings.h5") as nt, \
         h5py.File(tmp_path / "run" / "protein" / "embeddings.h5") as pr:
        assert nt["embeddings"].shape == (frames, 768) and pr["embeddings"].shape == (frames, 320)
        assert (nt["ids"][:] == pr["ids"][:]).all()
    per_frame = pd.read_csv(tmp_path / "run" / "predictions_per_frame.csv")
    per_read = pd.read_csv(tmp_path / "run" / "predictions_per_read.csv")
    assert len(per_frame) == frames
    assert len(per_read) == per_frame["read_id"].nunique() == summary["counts"]["reads_called"]
    assert np.allclose(per_frame["p_other"] + per_frame["p_virus"], 1.0, atol=1e-5)
    assert set(per_read["prediction"]) <= {"virus", "other"}


def test_v1_mode_is_refused_for_the_nucleotide_model(small_fasta, tmp_path):
    from perfkit.workload.runner import run_embed

    with pytest.raises(UserError, match="v1"):
        run_embed(make_config(input=small_fasta, out_dir=tmp_path / "o", model="dnabert_s", mode="v1", **FAST))
