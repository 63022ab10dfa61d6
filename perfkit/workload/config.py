"""Every knob of an embedding run, validated (unknown or ill-typed keys are errors)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from perfkit.errors import UserError


class NucleotideKnobs(BaseModel):
    """The nucleotide stage's own settings (params `embed.nucleotide`), where they differ from the protein
    stage's: DNABERT-S does ~25x less work per token than ESM-2 3B, so it wants larger packs and more
    loader workers. Unset keys take the run's value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token_budget: Optional[int] = Field(None, ge=16)
    buffer_size: Optional[int] = Field(None, ge=1)
    num_workers: Optional[int] = Field(None, ge=0)
    prefetch_factor: Optional[int] = Field(None, ge=1)
    compile: Optional[bool] = None
    nt_attention: Optional[Literal["auto", "flex", "sdpa_repadded"]] = None


class EmbedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input: Path
    out_dir: Path
    model: str = "esm2_t6_8M"
    weights: Optional[Path] = None  # fair-esm .pt or HF folder; None = seeded random init
    tokenizer: Optional[Path] = None  # dnabert_s only: DNABERT-S tokenizer.json; None = the stand-in BPE
    # the chain's (perfkit predict) nucleotide stage: its model (dnabert_s; dnabert_mini for smoke runs) and
    # weights (a DNABERT-S HuggingFace folder, a .safetensors or .bin file; None = seeded random init)
    nt_model: str = "dnabert_s"
    nt_weights: Optional[Path] = None
    seed: int = 0
    # random weights (no `weights`): "perfkit" = our seeded init; "fair-esm" = fair-esm's own init with this seed
    # (ESM-2 only), so a v2 run has the very weights of the v1 run with the same seed (prediction agreement)
    random_init: Literal["perfkit", "fair-esm"] = "perfkit"
    mode: Literal["v2", "v1"] = "v2"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # v2 batching and input
    token_budget: int = Field(16384, ge=16)
    buffer_size: int = Field(4096, ge=1)  # sequences per packing buffer (per worker)
    layout: Literal["packed", "padded"] = "packed"  # padded = the bf16 SDPA path a user would pick instead
    num_workers: int = Field(2, ge=0)
    prefetch_factor: int = Field(4, ge=1)
    block_reads: int = Field(1024, ge=1)  # reads per worker work unit
    pin_memory: bool = True
    copy_stream: bool = True  # host->device copies on a side stream, overlapping compute
    # packed layout on CUDA: torch.compile each block (dynamic token count, compiled once)
    compile: bool = False
    # ESM-2 with compile: "blocks" = one graph per block; "stack" = one graph over all layers (a block's last
    # residual add fuses with the next block's norm; ~40 s more compilation)
    compile_scope: Literal["blocks", "stack"] = "blocks"
    # ESM-2 packed attention: auto = varlen_attn (FlashAttention varlen, 128-query tiles) on CUDA in half
    # precision, else sdpa_repadded; mem_efficient_varlen = the cutlass kernel with 64-query tiles (faster on
    # short frames); flex = flex_attention with a same-sequence block mask
    attention: Literal["auto", "varlen_attn", "mem_efficient_varlen", "flex", "sdpa_repadded"] = "auto"
    # ESM-2: fc1 + bias + GELU as one cuBLASLt GEMM (its GELU is the tanh form, fair-esm's is erf: the
    # equivalence gate judges it; benchmarks/protein_mfu measured both)
    gelu_epilogue: bool = False
    # ESM-2: out_proj and fc2 add the residual in their GEMM's epilogue (cuBLAS beta = 1) and carry their
    # biases to the next norm, so no residual-add kernel runs (benchmarks/protein_mfu measured it)
    residual_epilogue: bool = False
    # ESM-2 compiled on CUDA: inductor's multi-kernel also builds each norm as a persistent reduction (one read
    # of a row; by default only rows up to 1,024 wide get one, ESM-2 3B's are 2,560) and keeps the faster of
    # the two by timing them at run time. The nucleotide stage never takes it: its rows are 768 wide (already
    # persistent), and it was not measured with it
    multi_kernel: bool = False
    # ESM-2 in bf16/fp16 on CUDA: run under torch.autocast (norms and softmax in fp32, a cast before every
    # Linear) or in the model's own dtype, as the equivalence gate and benchmarks/protein_mfu run it
    autocast: bool = True
    # dnabert_s packed attention: flex = flex_attention (ALiBi + block mask); sdpa_repadded = each sequence
    # re-padded for one SDPA call with the ALiBi mask; auto = flex when the hidden states are half precision
    # (a bf16/fp16 run on CUDA: the nucleotide model runs in its own dtype, without autocast), else sdpa_repadded
    nt_attention: Literal["auto", "flex", "sdpa_repadded"] = "auto"
    nucleotide: NucleotideKnobs = NucleotideKnobs()  # the nucleotide stage's own knobs (dnabert_s runs)
    allocator: Optional[str] = None  # PYTORCH_CUDA_ALLOC_CONF, e.g. "expandable_segments:True"
    # v1 batching: "length_sorted" = the original code (fair-esm get_batch_indices: sorted by length, a padded-token
    # budget of v1_toks_per_batch); "file_order" = the refactored v1.0 (file order, a batch closed at
    # v1_toks_per_batch raw residues)
    v1_batching: Literal["length_sorted", "file_order"] = "length_sorted"
    v1_toks_per_batch: int = Field(2048, ge=16)
    v1_file_sequences: int = Field(10_000, ge=1)  # v1 processed files of 10,000 translated sequences
    # v1 nucleotide stage: padded batches of this many sequences (v1.0: 1)
    v1_nt_batch_sequences: int = Field(1, ge=1)
    # input shaping
    chunk_bp: Optional[int] = None  # 300 / 500 bp chunking as the seed does; None = reads as they are
    max_residues: int = Field(1022, ge=1)
    # checkpointing
    checkpoint_every_sequences: int = Field(10_000, ge=1)
    checkpoint_every_seconds: float = Field(300.0, gt=0)
    resume: bool = False
    # False: the checked checkpoint shards are the output, no embeddings.h5 (the chain's stages: each rank
    # scores its own frames from them, so no process rereads and rewrites every vector)
    assemble: bool = True
    # caps
    max_reads: Optional[int] = Field(None, ge=1)
    # seconds of steady state (counted after warmup_batches); a time-capped run is a benchmark: no embeddings.h5
    max_seconds: Optional[float] = Field(None, gt=0)
    # measurement
    sample_interval_s: float = Field(1.0, gt=0)
    warmup_batches: int = Field(3, ge=0)
    window_s: float = Field(10.0, gt=0)
    peak_tflops: Optional[float] = None  # measured matmul peak for MFU; None = measure on CUDA
    progress: bool = True
    # sequences recomputed alone at the end to check id <-> vector alignment
    verify_samples: int = Field(4, ge=0)

    @field_validator("model")
    @classmethod
    def _known_model(cls, name):
        from perfkit.workload.encoders import known_models

        if name not in known_models():
            raise ValueError(
                f"unknown model {name!r}{_did_you_mean(name, known_models())}; known: "
                f"{', '.join(known_models())}"
            )
        return name

    @field_validator("nt_model")
    @classmethod
    def _known_nucleotide_model(cls, name):
        from perfkit.workload.encoders import NUCLEOTIDE_MODELS

        if name not in NUCLEOTIDE_MODELS:
            raise ValueError(
                f"unknown nucleotide model {name!r}{_did_you_mean(name, NUCLEOTIDE_MODELS)}; known: "
                f"{', '.join(NUCLEOTIDE_MODELS)}"
            )
        return name

    def for_stage(self) -> "EmbedConfig":
        """This config as its model's stage runs it: a nucleotide model takes the `nucleotide` knobs."""
        from perfkit.workload.encoders import encoder_for

        knobs = self.nucleotide.model_dump(exclude_none=True)
        if not knobs or not encoder_for(self.model).nucleotide:
            return self
        return self.model_copy(update=knobs)

    def batch_rule(self, nucleotide: bool) -> str:
        """How a run of this config forms its batches, in words (recorded in every run summary)."""
        if self.mode == "v2":
            return (
                f"{self.layout}: packs of <= {self.token_budget:,} tokens from length-sorted buffers of "
                f"{self.buffer_size:,} sequences"
            )
        if nucleotide:
            return f"v1: padded batches of {self.v1_nt_batch_sequences} sequence(s) in file order"
        if self.v1_batching == "file_order":
            return f"v1 refactored: file order, a batch closed at {self.v1_toks_per_batch:,} raw residues"
        return (
            f"v1 original: fair-esm get_batch_indices(toks_per_batch={self.v1_toks_per_batch}), length-sorted"
        )

    def result_fields(self) -> dict:
        """The settings that change the numbers: a resumed run must match them."""
        return self.model_dump(
            mode="json",
            include={
                "model",
                "weights",
                "tokenizer",
                "seed",
                "random_init",
                "mode",
                "precision",
                "chunk_bp",
                "max_residues",
                "max_reads",
                "layout",
            },
        )


def _did_you_mean(typed: str, known) -> str:
    close = difflib.get_close_matches(typed, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def make_config(sources: dict[str, str] | None = None, **values) -> EmbedConfig:
    """An EmbedConfig, or one UserError line naming what the user typed: `sources` maps a setting to where
    its value came from (a CLI flag such as `--token-budget`, or `embed.token_budget in p.yaml`)."""
    try:
        return EmbedConfig(**values)
    except ValidationError as err:
        raise config_error(err, sources or {}) from None


# pydantic's wording of the common failures, in ours
PLAIN = {
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
    "literal_error": "must be one of {expected}",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "bool_parsing": "must be true or false",
    "missing": "is required",
}


def plain_message(error: dict) -> str:
    template = PLAIN.get(error["type"])
    if template:
        try:
            return template.format(**(error.get("ctx") or {}))
        except KeyError:
            pass
    return error["msg"].removeprefix("Value error, ")


def config_error(err: ValidationError, sources: dict[str, str]) -> UserError:
    first = err.errors()[0]
    key = str(first["loc"][0]) if first["loc"] else ""
    where = ".".join(str(p) for p in first["loc"]) or "config"
    origin = sources.get(key)
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, list(EmbedConfig.model_fields), n=1)
        named = origin or f"setting {where}"
        return UserError(
            f"unknown {named}",
            f"did you mean {close[0]}?"
            if close
            else "see params/README.md for the settings an embed: section takes",
        )
    message = plain_message(first)
    value = first.get("input")
    if origin and origin.startswith("-"):
        return UserError(f"{origin} {value}: {message}", f"pass another value to {origin}")
    return UserError(f"bad {origin or f'setting {where}'}: {message}", "fix that key (see params/README.md)")
