"""perfkit.workload.encoders: one class per stage behind one interface."""

import numpy as np
import pytest

from perfkit.errors import UserError
from perfkit.workload import dnabert, esm2
from perfkit.workload.encoders import NUCLEOTIDE_MODELS, Encoder, NucleotideEncoder, encoder_for, known_models


def test_each_model_gets_its_stages_encoder():
    protein, nucleotide = encoder_for("esm2_t6_8M"), encoder_for("dnabert_mini")
    assert type(protein) is Encoder and type(nucleotide) is NucleotideEncoder
    assert (protein.stage, protein.frame_field, protein.nucleotide) == ("protein_embedding", "protein", False)
    assert (nucleotide.stage, nucleotide.frame_field, nucleotide.nucleotide) == (
        "nucleotide_embedding",
        "nucleotides",
        True,
    )
    assert set(NUCLEOTIDE_MODELS) == set(dnabert.CONFIGS) and set(known_models()) >= {
        "esm2_t36_3B",
        "dnabert_s",
    }
    with pytest.raises(UserError, match="unknown model"):
        encoder_for("esm3")


def test_each_encoder_tokenises_and_counts_its_own_model():
    protein, nucleotide = encoder_for("esm2_t6_8M"), encoder_for("dnabert_s")
    tokens, lengths = protein.encode(["MKV", "MA"])
    assert lengths.tolist() == [5, 4] and protein.pad_id == esm2.PAD_IDX  # BOS + residues + EOS
    nt_tokens, nt_lengths = nucleotide.encode(["ACGTACGTAC"])
    assert nt_lengths[0] == len(nt_tokens) and nucleotide.pad_id != protein.pad_id
    assert protein.flops_per_token() == esm2.flops_per_token(esm2.get_config("esm2_t6_8M"))
    assert nucleotide.flops_per_token() == dnabert.flops_per_token(dnabert.DNABERT_S)
    assert encoder_for("dnabert_mini").flops_per_token() < nucleotide.flops_per_token() / 50
    packed = nucleotide.packed_inputs(nt_tokens, nt_lengths)
    assert isinstance(packed, dict) and np.asarray(packed["cu_seqlens"])[-1] == nt_lengths.sum()
