"""The two embedding stages behind one interface: ESM-2 on proteins, DNABERT-S on nucleotides.

The runner, the data path and the multi-process launcher ask an `Encoder` how to
tokenise a frame, pack its inputs, build the model and count its FLOPs; nothing
else in them depends on which model runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from perfkit.errors import UserError
from perfkit.workload import dnabert, esm2

PROTEIN_STAGE = "protein_embedding"
NUCLEOTIDE_STAGE = "nucleotide_embedding"
NUCLEOTIDE_MODELS = tuple(dnabert.CONFIGS)  # dnabert_s, and dnabert_mini for smoke runs


def known_models() -> tuple[str, ...]:
    return (*esm2.CONFIGS, *NUCLEOTIDE_MODELS)


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str | None):
    return dnabert.load_tokenizer(path)  # loaded once per process (DataLoader workers too)


@dataclass(frozen=True)
class Encoder:
    """ESM-2 on the frames' proteins (the protein stage)."""

    model: str
    # nucleotide models only: a DNABERT-S tokenizer.json; None = the stand-in BPE
    tokenizer: str | None = None

    nucleotide = False
    stage = PROTEIN_STAGE
    frame_field = "protein"  # which part of a translated frame this encoder reads

    @property
    def pad_id(self) -> int:
        return esm2.PAD_IDX

    def encode(self, sequences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return esm2.encode_proteins(sequences)

    def packed_inputs(self, tokens: np.ndarray, lengths: np.ndarray) -> dict:
        return esm2.packed_inputs(tokens, lengths)

    def build(self, weights, seed: int, device, dtype):
        return esm2.build_model(self.model, weights, seed=seed, device=device, dtype=dtype)

    def flops_per_token(self) -> float:
        return esm2.flops_per_token(esm2.get_config(self.model))

    def forward_padded(self, model):
        return model.forward_padded


@dataclass(frozen=True)
class NucleotideEncoder(Encoder):
    """DNABERT-S (or its mini config) on the frames' nucleotides (the nucleotide stage)."""

    nucleotide = True
    stage = NUCLEOTIDE_STAGE
    frame_field = "nucleotides"

    @property
    def pad_id(self) -> int:
        return dnabert.special_token_ids(_tokenizer(self.tokenizer))["pad"]

    def encode(self, sequences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return dnabert.encode_nucleotides(_tokenizer(self.tokenizer), sequences)

    def packed_inputs(self, tokens: np.ndarray, lengths: np.ndarray) -> dict:
        return dnabert.packed_inputs_nt(tokens, lengths)

    def build(self, weights, seed: int, device, dtype):
        return dnabert.build_model(
            weights, seed=seed, device=device, dtype=dtype, config=dnabert.CONFIGS[self.model]
        )

    def flops_per_token(self) -> float:
        return dnabert.flops_per_token(dnabert.CONFIGS[self.model])

    def forward_padded(self, model):
        return functools.partial(model.forward_padded, pad_id=self.pad_id)


def encoder_for(model: str, tokenizer=None) -> Encoder:
    if model not in known_models():
        raise UserError(f"unknown model {model!r}", f"use one of {', '.join(known_models())}")
    kind = NucleotideEncoder if model in NUCLEOTIDE_MODELS else Encoder
    return kind(model, None if tokenizer is None else str(tokenizer))
