"""The suite's params schema (pydantic): `load_suite_params` validates a params file; `NotebookArgs`
and `ScalingArgs` are the notebooks' papermill parameters."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from perfkit import criteria as crit
from perfkit.errors import UserError
from perfkit.params import load_params
from perfkit.verdict import MEASURING_NOTEBOOKS, NOTEBOOKS  # noqa: F401 (NOTEBOOKS: the suite's order)

# knobs a tuning sweep may vary (all are EmbedConfig fields that change speed, never results)
TUNABLE = (
    "num_workers",
    "prefetch_factor",
    "token_budget",
    "buffer_size",
    "block_reads",
    "pin_memory",
    "copy_stream",
    "allocator",
    "checkpoint_every_sequences",
    "checkpoint_every_seconds",
)
# EmbedConfig fields the suite sets itself: not allowed in the params' `embed:` section
SUITE_OWNED = ("input", "out_dir", "resume", "max_reads", "max_seconds", "mode", "layout", "progress")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SampleParams(_Strict):
    reads: int = Field(2000, ge=1, description="synthetic reads to generate")
    profile: str = Field(
        "reads150", description="synthetic profile: reads150 | reads300 | contigs | PROFILE.json"
    )
    seed: int = 0
    path: Optional[str] = Field(None, description="an existing FASTA instead (relative to the params file)")


class Caps(_Strict):
    max_seconds: Optional[float] = Field(None, gt=0)
    max_reads: Optional[int] = Field(None, ge=1)


class EquivalenceParams(_Strict):
    model: Optional[str] = None  # None: the embed model
    proteins: int = Field(64, ge=2)
    token_budget: int = Field(8192, ge=16)
    seed: int = 0


class ChainsParams(_Strict):
    """v1.0 and v2 as whole chains (perfkit predict) on the same first `reads` reads: the end-to-end speed-up
    (the seed's "over v1.0" criterion) and the prediction agreement."""

    reads: int = Field(200, ge=1)
    model: Optional[str] = None  # ESM-2 model of every chain; None: the embed model
    hidden: int = Field(512, ge=1)  # classifier hidden width (same seeded weights on every side)
    repeats: int = Field(1, ge=1)  # interleaved rounds (every form, then v2): the speed-up's median, min-max
    # the v1.0 forms: original = fp32, get_batch_indices; refactored = fp16 (CPU: fp32), file-order batches
    forms: list[Literal["original", "refactored"]] = Field(
        default_factory=lambda: ["original", "refactored"], min_length=1
    )
    # one untimed v2 chain first, so that the timed one does not pay compilation; None: 1 block of reads on
    # GPUs, none on CPU (nothing compiles)
    warmup_reads: Optional[int] = Field(None, ge=0)


# keys of earlier params files that no longer exist, and what replaced them
_BASELINE_RENAMED = {
    "max_seconds": "the baseline is capped by reads, every variant on the same reads: set baseline.reads",
    "v1_max_seconds": "the baseline is capped by reads, every variant on the same reads: set baseline.reads",
    "max_reads": "renamed: set baseline.reads",
    "agreement": "the v1.0 and v2 chains moved to baseline.chains (reads, model, hidden, forms)",
}


class BaselineParams(_Strict):
    # every variant embeds exactly these first reads of the sample (never a time cap: a capped v1 would see
    # only its shortest, length-sorted sequences)
    reads: int = Field(300, ge=1)
    repeats: int = Field(1, ge=1)  # interleaved rounds over the variants: medians, min-max spread
    embed: dict = Field(default_factory=dict)  # overrides for every variant (e.g. the token budget)

    @field_validator("embed")
    @classmethod
    def _embed_keys(cls, embed):
        owned = sorted(set(embed) & set(SUITE_OWNED))
        if owned:
            raise ValueError(
                f"key(s) {', '.join(owned)} are set by the suite per variant, not in baseline.embed:"
            )
        return embed

    v1_fp16: bool = True  # also measure v1 in fp16 (GPU only)
    nucleotide: bool = True  # also v1 vs v2 of the nucleotide stage (DNABERT-S) and its packed-vs-padded gate
    nt_equivalence_reads: int = Field(64, ge=2)  # reads of the DNABERT-S gate
    equivalence: EquivalenceParams = EquivalenceParams()
    chains: Optional[ChainsParams] = ChainsParams()  # null: neither speed-up of the chain nor agreement

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        for key, why in _BASELINE_RENAMED.items():
            if isinstance(data, dict) and key in data:
                raise ValueError(f"{key} is no longer a key: {why}")
        return data


class ProfilingParams(Caps):
    sample_interval_s: float = Field(1.0, gt=0)
    profiler_batches: int = Field(3, ge=1)
    profiler_warmup: int = Field(1, ge=0)
    top_kernels: int = Field(15, ge=1)


class ScalingParams(Caps):
    nproc: int = Field(2, ge=1)
    # the whole chain (perfkit predict) launched by torchrun with 1 rank and with N ranks, at two sizes each
    # (fit_reads): wall = fixed + per read x reads per side, projected to the full sample
    # the two chain sizes (reads) of each side, small then large; None: [max_reads / 2, max_reads]
    fit_reads: Optional[list[int]] = None
    # interleaved rounds (1, N, 1, N, ... at each size); medians, min-max spread
    repeats: int = Field(1, ge=1)
    # one untimed chain of N ranks before the timed rounds, so that no timed launch is the first to compile for
    # its GPU (a cold 2-rank launch measured 62 s where a warm one took 42 s on 2 x H200). None: on GPUs
    # 4 blocks per rank, on CPU none (nothing compiles); 0: no warm-up
    warmup_reads: Optional[int] = Field(None, ge=0)
    classifier_hidden: int = Field(512, ge=1)
    embed: dict = Field(default_factory=dict)  # overrides for both runs (e.g. num_workers)

    @field_validator("fit_reads")
    @classmethod
    def _two_sizes(cls, sizes):
        if sizes is not None and (len(sizes) != 2 or sizes[0] < 1 or sizes[0] >= sizes[1]):
            raise ValueError("give two sizes in reads, small then large, e.g. [60000, 120000]")
        return sizes

    @model_validator(mode="after")
    def _one_largest_size(self):
        if self.fit_reads and self.max_reads is not None and self.max_reads != self.fit_reads[1]:
            raise ValueError(
                f"max_reads {self.max_reads} differs from the largest of fit_reads "
                f"{self.fit_reads[1]}: set one of them"
            )
        return self


class TuningParams(Caps):
    strategy: Literal["coordinate", "grid"] = "coordinate"
    max_runs: int = Field(8, ge=1)
    target_tok_per_s: Optional[float] = Field(None, gt=0)
    grid: dict[str, list] = Field(default_factory=dict)

    @field_validator("grid")
    @classmethod
    def _known_knobs(cls, grid):
        unknown = sorted(set(grid) - set(TUNABLE))
        if unknown:
            raise ValueError(f"unknown knob(s) {', '.join(unknown)}; tunable: {', '.join(TUNABLE)}")
        empty = sorted(k for k, v in grid.items() if not v)
        if empty:
            raise ValueError(f"knob(s) {', '.join(empty)} have no values")
        return grid


class FullValidationParams(Caps):
    full_sample_reads: int = Field(6_000_000, ge=1)
    nproc: int = Field(1, ge=1)
    classifier_hidden: int = Field(512, ge=1)
    checkpoint_every_sequences: int = Field(10_000, ge=1)
    checkpoint_every_seconds: float = Field(300.0, gt=0)
    use_tuned: bool = False  # take the embed knobs of 04_tuning/best_params.yaml when it exists


class SuiteParams(_Strict):
    name: str
    description: str = ""
    notebook_timeout_s: Optional[float] = Field(None, gt=0)  # per cell, for `perfkit suite`
    sample: SampleParams = SampleParams()
    embed: dict = Field(default_factory=dict)
    baseline: BaselineParams = BaselineParams()
    profiling: ProfilingParams = ProfilingParams()
    scaling: ScalingParams = ScalingParams()
    tuning: TuningParams = TuningParams()
    full_validation: FullValidationParams = FullValidationParams()
    criteria: list[dict]
    # an earlier suite run folder or published report (relative: to the repository root): 06 shows every figure
    # of this run beside it with `perfkit compare`'s change and verdict
    compare_to: Optional[str] = None

    @field_validator("embed")
    @classmethod
    def _embed_keys(cls, embed):
        owned = sorted(set(embed) & set(SUITE_OWNED))
        if owned:
            raise ValueError(f"key(s) {', '.join(owned)} are set by the suite per notebook, not in embed:")
        return embed


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_suite_params(params_file: str | Path, overrides: dict | None = None) -> SuiteParams:
    """The params file (plus overrides) validated: unknown or ill-typed keys are one-line UserErrors."""
    from perfkit.workload.config import make_config

    path = Path(params_file)
    data = deep_merge(load_params(path), overrides or {})
    try:
        params = SuiteParams(**data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "params"
        raise UserError(f"{path}: {where}: {first['msg']}", "fix that key (see params/README.md)") from None
    if params.sample.path and not Path(params.sample.path).is_absolute():
        params.sample.path = str((path.parent / params.sample.path).resolve())
    try:
        make_config(input="sample.fa", out_dir="out", **params.embed)  # every embed key checked now
        make_config(input="sample.fa", out_dir="out", **{**params.embed, **params.scaling.embed})
        make_config(input="sample.fa", out_dir="out", **deep_merge(params.embed, params.baseline.embed))
        if params.baseline.equivalence.model:
            make_config(input="sample.fa", out_dir="out", model=params.baseline.equivalence.model)
        for knob, values in params.tuning.grid.items():
            for value in values:
                make_config(input="sample.fa", out_dir="out", **{**params.embed, knob: value})
    except UserError as err:
        raise UserError(f"{path}: {err.problem}", err.fix) from None
    for section in ("profiling", "scaling", "full_validation"):
        if getattr(params, section).max_seconds is not None:
            raise UserError(
                f"{path}: {section}.max_seconds: this notebook runs the whole chain, which is capped "
                f"by reads",
                f"set {section}.max_reads instead",
            )
    rules = crit.criteria_from_params(params.criteria)
    for rule in rules:
        if rule.source not in MEASURING_NOTEBOOKS:
            raise UserError(
                f"{path}: criterion {rule.name!r} has source {rule.source!r}",
                f"set source to one of {', '.join(MEASURING_NOTEBOOKS)}",
            )
    return params


class NotebookArgs(_Strict):
    # None: the checkout's params/smoke.yaml and outputs/nbval, wherever papermill or nbval runs from;
    # a relative path is taken from the folder papermill runs in, as a shell user expects
    params_file: Optional[str] = None
    run_dir: Optional[str] = None


class ScalingArgs(NotebookArgs):
    gpus: Optional[int] = Field(None, ge=1)  # GPUs to compare with 1; on a machine without GPUs: NOT MEASURED
    nproc: Optional[int] = Field(None, ge=1)  # CPU processes to compare with 1, asked for explicitly
    nodes: int = Field(1, ge=1)
    # gpus and nproc both None: scaling.nproc of the params, on the params' device


NOTEBOOK_ARGS: dict[str, type[NotebookArgs]] = {"03_scaling": ScalingArgs}
