"""The experiments and analyses behind the notebook suite (01_baseline ... 06_summary).

Notebooks stay thin: a `parameters` cell, one `setup(...)` call that validates every
parameter and the params file, then calls into this module and `perfkit.plots`.
Everything a notebook computes is reachable (and tested) from here.

Run folder layout (`run_dir`):
    sample.fa, sample.json           the synthetic sample, made once per run folder
    <notebook>/metrics.json          headline values the notebook recorded (+ its details)
    <notebook>/*.png, *.json         figures and tables
    <notebook>/runs/<name>/          each embedding run's summary.json, telemetry.jsonl
    <notebook>.ipynb / .html         executed notebooks (written by `perfkit suite`)
    suite.json, summary.json         suite status; the criteria verdict (06)
"""
from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from perfkit import criteria as crit
from perfkit.errors import UserError
from perfkit.params import load_params
from perfkit.summary import write_json

log = logging.getLogger(__name__)
NUCLEOTIDE_MODEL = "dnabert_s"

NOTEBOOKS = ("01_baseline", "02_profiling", "03_scaling", "04_tuning", "05_full_validation", "06_summary")
MEASURING_NOTEBOOKS = NOTEBOOKS[:-1]
SUMMARY_SCHEMA = "perfkit.suite-summary/1"
# knobs a tuning sweep may vary (all are EmbedConfig fields that change speed, never results)
TUNABLE = ("num_workers", "prefetch_factor", "token_budget", "buffer_size", "block_reads", "pin_memory",
           "copy_stream", "allocator", "checkpoint_every_sequences", "checkpoint_every_seconds")
# EmbedConfig fields the suite sets itself: not allowed in the params' `embed:` section
SUITE_OWNED = ("input", "out_dir", "resume", "max_reads", "max_seconds", "mode", "layout", "progress")


# =============================================================================== params

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SampleParams(_Strict):
    reads: int = Field(2000, ge=1, description="synthetic reads to generate")
    profile: str = Field("reads150", description="synthetic profile: reads150 | reads300 | contigs | PROFILE.json")
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


class AgreementParams(_Strict):
    reads: int = Field(200, ge=1)  # reads both chains (v1 and v2) classify
    model: Optional[str] = None  # ESM-2 model of both chains; None: the embed model
    hidden: int = Field(512, ge=1)  # classifier hidden width (same seeded weights on both sides)


class BaselineParams(Caps):
    v1_max_seconds: Optional[float] = Field(None, gt=0)  # v1 is slow: its own cap (default: max_seconds)
    v1_fp16: bool = True  # also measure v1 in fp16 (GPU only)
    nucleotide: bool = True  # also v1 vs v2 of the nucleotide stage (DNABERT-S) and its packed-vs-padded gate
    nt_equivalence_reads: int = Field(64, ge=2)  # reads of the DNABERT-S gate
    equivalence: EquivalenceParams = EquivalenceParams()
    agreement: Optional[AgreementParams] = AgreementParams()  # v1 vs v2 chain predictions; null: not measured


class ProfilingParams(Caps):
    sample_interval_s: float = Field(1.0, gt=0)
    profiler_batches: int = Field(3, ge=1)
    profiler_warmup: int = Field(1, ge=0)
    top_kernels: int = Field(15, ge=1)


class ScalingParams(Caps):
    nproc: int = Field(2, ge=1)
    nucleotide: bool = True  # also scale the nucleotide stage, for the embedding-stages (projected) factor
    # the whole chain (perfkit predict) launched by torchrun with 1 rank and with N ranks, at two sizes each
    # (fit_reads; max_seconds unused): wall = fixed + per read x reads per side, projected to the full sample
    end_to_end: bool = True
    # the two chain sizes (reads) of each side, small then large; None: [max_reads / 2, max_reads]
    fit_reads: Optional[list[int]] = None
    repeats: int = Field(1, ge=1)  # interleaved rounds (1, N, 1, N, ... at each size); medians, min-max spread
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
            raise ValueError(f"max_reads {self.max_reads} differs from the largest of fit_reads "
                             f"{self.fit_reads[1]}: set one of them")
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

    @field_validator("embed")
    @classmethod
    def _embed_keys(cls, embed):
        owned = sorted(set(embed) & set(SUITE_OWNED))
        if owned:
            raise ValueError(f"key(s) {', '.join(owned)} are set by the suite per notebook, not in embed:")
        return embed


def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_suite_params(params_file: str | Path, overrides: dict | None = None) -> SuiteParams:
    """The params file (plus overrides) validated: unknown or ill-typed keys are one-line UserErrors."""
    from perfkit.workload.config import make_config

    path = Path(params_file)
    data = _deep_merge(load_params(path), overrides or {})
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
        if params.baseline.equivalence.model:
            make_config(input="sample.fa", out_dir="out", model=params.baseline.equivalence.model)
        for knob, values in params.tuning.grid.items():
            for value in values:
                make_config(input="sample.fa", out_dir="out", **{**params.embed, knob: value})
    except UserError as err:
        raise UserError(f"{path}: {err.problem}", err.fix) from None
    for section in ("profiling", "full_validation"):
        if getattr(params, section).max_seconds is not None:
            raise UserError(f"{path}: {section}.max_seconds: this notebook runs the whole chain, which is capped "
                            f"by reads", f"set {section}.max_reads instead")
    rules = crit.criteria_from_params(params.criteria)
    for rule in rules:
        if rule.source not in MEASURING_NOTEBOOKS:
            raise UserError(f"{path}: criterion {rule.name!r} has source {rule.source!r}",
                            f"set source to one of {', '.join(MEASURING_NOTEBOOKS)}")
    return params


# =============================================================================== notebook context

REPO = Path(__file__).resolve().parents[1]  # a source checkout: params/ and outputs/ beside perfkit/


class NotebookArgs(_Strict):
    # None: the checkout's params/smoke.yaml and outputs/nbval, wherever papermill or nbval runs from;
    # a relative path is taken from the folder papermill runs in, as a shell user expects
    params_file: Optional[str] = None
    run_dir: Optional[str] = None


class ScalingArgs(NotebookArgs):
    gpus: Optional[int] = Field(None, ge=1)  # processes to compare with 1 (GPUs, or CPU processes on CPU); None: params
    nodes: int = Field(1, ge=1)


NOTEBOOK_ARGS: dict[str, type[NotebookArgs]] = {"03_scaling": ScalingArgs}
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


@dataclass
class Context:
    """What a notebook works with: validated params, its output folder, the shared sample."""

    notebook: str
    params: SuiteParams
    params_file: Path
    run_dir: Path
    args: NotebookArgs
    started: float = field(default_factory=time.time)

    @property
    def out(self) -> Path:
        return self.run_dir / self.notebook

    @property
    def sample(self) -> Path:
        return ensure_sample(self.params, self.run_dir)[0]

    @property
    def sample_stats(self) -> dict:
        return ensure_sample(self.params, self.run_dir)[1]

    def path(self, name: str) -> Path:
        return self.out / name

    def embed_config(self, run: str, **overrides):
        """EmbedConfig for one run of this notebook: params' embed section + overrides."""
        from perfkit.workload.config import make_config

        out_dir = self.out / "runs" / run
        shutil.rmtree(out_dir, ignore_errors=True)
        values = {**self.params.embed, "progress": False, **overrides}
        return make_config(input=self.sample, out_dir=out_dir, **values)

    def finish(self, headline: dict, details: dict | None = None) -> dict:
        """Record every headline value into the notebook and write <notebook>/metrics.json."""
        from perfkit import records

        for name, value in headline.items():
            records.record(name, value)
        payload = {"notebook": self.notebook, "status": "complete", "params_file": str(self.params_file),
                   "params_name": self.params.name, "seconds": time.time() - self.started,
                   "records": {k: _plain(v) for k, v in headline.items()}, "details": _plain(details or {})}
        write_json(self.path("metrics.json"), payload)
        return payload


def _plain(value):
    """JSON-able form (DataFrames as lists of rows)."""
    from perfkit.records import to_jsonable

    if isinstance(value, pd.DataFrame):
        return to_jsonable(value.astype(object).where(value.notna(), None).to_dict(orient="records"))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return to_jsonable(value)


def setup(notebook: str, params_file, run_dir, namespace: dict | None = None, **args) -> Context:
    """Validate a notebook's parameters and params file; prepare its (emptied) output folder.

    `namespace` (the notebook's globals()) is checked for parameters papermill injected that
    this notebook does not know: papermill itself only warns about them.
    """
    if notebook not in NOTEBOOKS:
        raise UserError(f"unknown notebook {notebook!r}", f"use one of {', '.join(NOTEBOOKS)}")
    model = NOTEBOOK_ARGS.get(notebook, NotebookArgs)
    known = set(model.model_fields)
    if namespace is not None:
        unknown = sorted(k for k, v in namespace.items()
                         if not k.startswith("_") and k not in known and k not in _IPYTHON_NAMES
                         and isinstance(v, (str, int, float, bool, list, dict, tuple, type(None))))
        if unknown:
            raise UserError(f"{notebook}: unknown parameter(s) {', '.join(unknown)}",
                            f"this notebook takes {', '.join(sorted(known))}")
    try:
        parsed = model(params_file=None if params_file is None else str(params_file),
                       run_dir=None if run_dir is None else str(run_dir), **args)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "parameters"
        raise UserError(f"{notebook}: parameter {where}: {first['msg']}",
                        f"this notebook takes {', '.join(sorted(known))}") from None
    default_params = REPO / "params" / "smoke.yaml"
    if parsed.params_file is None and not default_params.exists():
        raise UserError(f"{notebook}: no params_file given and no {default_params} (not a source checkout)",
                        "pass one: papermill ... -p params_file path/to/params.yaml")
    params_path = Path(parsed.params_file or default_params).resolve()
    params = load_suite_params(params_path)
    root = Path(parsed.run_dir or REPO / "outputs" / "nbval").resolve()
    ctx = Context(notebook, params, params_path, root, parsed)
    if notebook != "06_summary":
        shutil.rmtree(ctx.out, ignore_errors=True)  # no stale metrics from an earlier run survive
        ensure_sample(params, root)
    ctx.out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("perfkit.sampler").setLevel(logging.ERROR)  # not-measured GPU util is stated in the figures
    return ctx


# =============================================================================== sample

def ensure_sample(params: SuiteParams, run_dir: str | Path) -> tuple[Path, dict]:
    """(FASTA path, its statistics): the synthetic sample is generated once per run folder."""
    from perfkit.workload.synth import profile_fasta, write_synthetic_fasta

    run_dir = Path(run_dir)
    meta_path = run_dir / "sample.json"
    spec = params.sample.model_dump()
    if params.sample.path:
        fasta = Path(params.sample.path)
        if not fasta.exists():
            raise UserError(f"sample path {fasta} does not exist", "fix sample.path in the params")
        spec["mtime"] = fasta.stat().st_mtime
    else:
        fasta = run_dir / "sample.fa"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("spec") == spec and fasta.exists():
            return fasta, meta["stats"]
    run_dir.mkdir(parents=True, exist_ok=True)
    if params.sample.path:
        stats = profile_fasta(fasta)["summary"]
    else:
        stats = write_synthetic_fasta(fasta, params.sample.reads, profile=params.sample.profile, seed=params.sample.seed)
    stats["tokens_per_read"] = tokens_per_read(stats)
    write_json(meta_path, {"spec": spec, "path": str(fasta), "stats": stats})
    return fasta, stats


def tokens_per_read(stats: dict) -> float:
    """ESM-2 tokens (BOS/EOS included) per input read: frames/read x (mean protein length + 2)."""
    if not stats.get("reads"):
        return 0.0
    return stats["frames"] / stats["reads"] * (stats["mean_protein_length"] + 2)


# =============================================================================== shared helpers

def resolved_device(params: SuiteParams) -> str:
    from perfkit.workload.runner import pick_device

    return str(pick_device(params.embed.get("device", "auto")))


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def ratio(numerator, denominator, reason: str):
    """numerator / denominator, or the not-measured marker when either side is missing."""
    numerator, denominator = _number(numerator), _number(denominator)
    if numerator is None or not denominator:
        return crit.not_measured(reason)
    return numerator / denominator


def _number(value):
    """A finite float, else None (None, NaN, markers, strings)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def dominant_attention(summary: dict) -> str:
    calls = (summary.get("run") or {}).get("attention_path") or {}
    numbers = {k: v for k, v in calls.items() if isinstance(v, (int, float))}
    if numbers:
        return max(numbers, key=numbers.get) if max(numbers.values()) > 0 else "none"
    return next(iter(calls.values()), "unknown") if calls else "unknown"


def throughput_row(variant: str, summary: dict | None, *, note: str = "") -> dict:
    """One row of a throughput table; steady-state figures (warm-up batches excluded)."""
    row = {"variant": variant, "measured": summary is not None, "model": None, "mode": None, "layout": None, "precision": None,
           "device": None, "sequences": None, "batches": None, "seq_per_s": None, "tok_per_s": None,
           "overall_tok_per_s": None, "token_utilisation": None, "padding_waste": None,
           "device_busy_fraction": None, "mfu": None, "attention": None, "capped": None, "note": note}
    if summary is None:
        return row
    t, run, config = summary["throughput"], summary.get("run", {}), summary.get("config", {})
    v1_layout = ("padded (fair-esm batches)" if not str(config.get("model", "")).startswith("dnabert")
                 else f"padded ({config.get('v1_nt_batch_sequences')} seq per batch, file order)")
    row.update(model=run.get("model", config.get("model")), mode=run.get("mode", config.get("mode")),
               layout=config.get("layout") if config.get("mode") == "v2" else v1_layout,
               precision=run.get("precision", config.get("precision")), device=run.get("device", config.get("device")),
               sequences=t["sequences"], batches=t["batches"], seq_per_s=t["steady_seq_per_s"],
               tok_per_s=t["steady_tok_per_s"], overall_tok_per_s=t["tok_per_s"],
               token_utilisation=t["packing_efficiency"], padding_waste=t["padding_waste"],
               device_busy_fraction=t["device_busy_fraction"], mfu=summary.get("mfu"),
               attention=dominant_attention(summary),
               capped=run.get("capped"))
    return row


def gpu_util_mean(summary: dict):
    """Mean NVML utilisation (%) over the run's GPUs, or the not-measured marker.

    Accepts a single-process summary (summary['gpu'] from GpuSampler.summary) and
    multi-process ones (summary['gpu'] keyed by rank, or summary['per_rank'][r]['gpu']).
    """
    gpu = summary.get("gpu") or {}
    candidates = []
    if "gpu_utilization_percent" in gpu:
        candidates.append(gpu)
    else:
        candidates += [v for v in gpu.values() if isinstance(v, dict) and "gpu_utilization_percent" in v]
    for rank in (summary.get("per_rank") or {}).values():
        if isinstance(rank, dict) and isinstance(rank.get("gpu"), dict):
            candidates.append(rank["gpu"])
    means, reasons = [], []
    for entry in candidates:
        util = entry.get("gpu_utilization_percent") or {}
        if util.get("measured") and util.get("mean") is not None:
            means.append(float(util["mean"]))
        else:
            reasons.append(util.get("reason") or entry.get("note") or "no NVML samples")
    if means and not reasons:
        return float(np.mean(means))
    return crit.not_measured(reasons[0] if reasons else "no GPU samples in the run summary")


def describe_util(value) -> str:
    return f"{value:.1f} %" if isinstance(value, (int, float)) else f"NOT MEASURED ({value.get('reason')})"


# =============================================================================== 01 baseline

def run_baseline(ctx: Context) -> dict:
    """v1 fp32, v1 fp16 (GPU only), v2 padded, v2 packed on the same sample and device; speedups."""
    from perfkit.workload.runner import run_embed

    p = ctx.params.baseline
    device = resolved_device(ctx.params)
    cuda = is_cuda(device)
    caps = {"max_seconds": p.max_seconds, "max_reads": p.max_reads}
    v1_caps = {**caps, "max_seconds": p.v1_max_seconds or p.max_seconds}
    v2_precision = ctx.params.embed.get("precision", "auto")
    if v2_precision == "auto":
        v2_precision = "bf16" if cuda else "fp32"
    plan = [
        ("v1 fair-esm fp32", dict(mode="v1", precision="fp32", **v1_caps), None),
        ("v1 fair-esm fp16", dict(mode="v1", precision="fp16", **v1_caps),
         None if (cuda and p.v1_fp16) else ("fp16 runs on GPU only: not measured on " + device if not cuda
                                            else "v1_fp16: false in the params")),
        (f"v2 padded SDPA {v2_precision}", dict(mode="v2", layout="padded", precision=v2_precision, **caps), None),
        (f"v2 packed {v2_precision}", dict(mode="v2", layout="packed", precision=v2_precision, **caps), None),
    ]
    nt_skip = None if p.nucleotide else "baseline.nucleotide: false in the params"
    plan += [
        ("v1 DNABERT-S fp32", dict(model=NUCLEOTIDE_MODEL, mode="v1", precision="fp32", **v1_caps), nt_skip),
        (f"v2 DNABERT-S packed {v2_precision}", dict(model=NUCLEOTIDE_MODEL, mode="v2", layout="packed",
                                                     precision=v2_precision, **caps), nt_skip),
    ]
    rows, summaries = [], {}
    for index, (variant, overrides, skip) in enumerate(plan):
        if skip:
            rows.append(throughput_row(variant, None, note=skip))
            continue
        name = (f"{index}-{overrides.get('model', 'esm')}-{overrides['mode']}-{overrides.get('layout', 'v1')}"
                f"-{overrides['precision']}")
        summary = run_embed(ctx.embed_config(name, device=device, **overrides))
        summaries[variant] = summary
        rows.append(throughput_row(variant, summary))
    table = pd.DataFrame(rows)
    tok = dict(zip(table["variant"], table["tok_per_s"]))
    v1, v1_16, padded, packed, nt_v1, nt_v2 = (tok[plan[i][0]] for i in range(6))
    result = {
        "table": table,
        "summaries": summaries,
        "device": device,
        "precision": v2_precision,
        "speedup_v2_over_v1": ratio(packed, v1, "v1 fp32 or v2 packed throughput missing"),
        "speedup_v2_over_v1_fp16": ratio(packed, v1_16, "v1 fp16 not measured on this device"),
        "speedup_v2_over_padded": ratio(packed, padded, "padded or packed throughput missing"),
        "speedup_nt_v2_over_v1": ratio(nt_v2, nt_v1, nt_skip or "nucleotide v1 or v2 throughput missing"),
    }
    write_json(ctx.path("throughput.json"), _plain(table))
    return result


def run_agreement(ctx: Context, device: str, precision: str) -> dict:
    """The whole chain twice on the same reads, v1 (fp32, fair-esm, fixed nucleotide batches) and v2
    (packed, the run's precision), with the same weights: ESM-2 from fair-esm's seeded init on both
    sides, the same seeded DNABERT-S and classifier. Agreement = share of reads with the same call."""
    from perfkit.workload.predict import compare_runs, run_predict

    p = ctx.params.baseline.agreement
    if p is None:
        return {"agreement": crit.not_measured("baseline.agreement: null in the params"), "details": None}
    model = p.model or ctx.params.embed.get("model", "esm2_t6_8M")
    sides = {}
    for mode, precision_ in (("v1", "fp32"), ("v2", precision)):
        extra = {"random_init": "fair-esm"} if mode == "v2" else {}
        cfg = ctx.embed_config(f"agreement-{mode}", model=model, mode=mode, layout="packed", precision=precision_,
                               device=device, max_reads=p.reads, **extra)
        sides[mode] = run_predict(cfg, hidden=p.hidden)
    details = compare_runs(ctx.out / "runs" / "agreement-v1", ctx.out / "runs" / "agreement-v2")
    details.update(model=model, reads=p.reads, precision_v1="fp32", precision_v2=precision, device=device,
                   end_to_end_s={m: sides[m]["end_to_end_s"] for m in sides})
    write_json(ctx.path("agreement.json"), details)
    if not details.get("same_classifier"):
        return {"agreement": crit.not_measured("the two chains used different classifier weights"),
                "details": details}
    return {"agreement": details["agreement"], "details": details}


def run_equivalence(ctx: Context, device: str, precision: str) -> dict:
    """The equivalence gate (fair-esm fp32 padded vs our packed path) on the run's device/precision."""
    from perfkit.workload.equivalence import default_proteins, run_equivalence_gate

    p = ctx.params.baseline.equivalence
    model = p.model or ctx.params.embed.get("model", "esm2_t6_8M")
    result = run_equivalence_gate(model_name=model, proteins=default_proteins(n=p.proteins, seed=p.seed),
                                  device=device, precision=precision, seed=p.seed, token_budget=p.token_budget,
                                  compile=bool(ctx.params.embed.get("compile", False)))
    write_json(ctx.path("equivalence.json"), result)
    return result


def run_nt_equivalence(ctx: Context, device: str, precision: str) -> dict:
    """DNABERT-S gate: packed path at the run's precision vs the fp32 padded path, same weights, same device.
    The path is the one the nucleotide stage takes: its kernel (`nt_attention`: auto = flex in half precision
    on CUDA) and, with `compile`, its compiled blocks (`embed.nucleotide` overrides both)."""
    from perfkit.workload import dnabert

    p = ctx.params.baseline
    if not p.nucleotide:
        return {"passed": crit.not_measured("baseline.nucleotide: false in the params"), "tokens_per_base": None}
    stage = {**ctx.params.embed, **{k: v for k, v in (ctx.params.embed.get("nucleotide") or {}).items()
                                    if v is not None}}
    result = dnabert.run_nt_equivalence(device=device, precision=precision, n=p.nt_equivalence_reads,
                                        packed_attention=stage.get("nt_attention", "auto"),
                                        compile=bool(stage.get("compile", False)))
    write_json(ctx.path("nt_equivalence.json"), result)
    return result


def baseline_headline(result: dict, gate: dict, agreement: dict | None = None, nt_gate: dict | None = None) -> dict:
    agreement = agreement or {"agreement": crit.not_measured("not run"), "details": None}
    nt_gate = nt_gate or {"passed": crit.not_measured("not run"), "tokens_per_base": None}
    return {
        "nt_equivalence_gate_passed": nt_gate["passed"],
        "nt_tokens_per_base": nt_gate["tokens_per_base"],
        "nt_equivalence_gate": {k: nt_gate.get(k) for k in ("passed", "precision", "device", "attention_path",
                                                            "num_reads", "thresholds", "stats")},
        "speedup_nt_v2_over_v1": result["speedup_nt_v2_over_v1"],
        "prediction_agreement_v1_v2": agreement["agreement"],
        "prediction_agreement": agreement["details"],
        "speedup_v2_over_v1": result["speedup_v2_over_v1"],
        "speedup_v2_over_v1_fp16": result["speedup_v2_over_v1_fp16"],
        "speedup_v2_over_padded": result["speedup_v2_over_padded"],
        "equivalence_gate_passed": bool(gate["passed"]),
        "equivalence_gate": {k: gate.get(k) for k in ("passed", "precision", "device", "model_name", "attention_path",
                                                       "compiled", "thresholds")} | {"stats": gate["stats"]},
        "throughput": result["table"],
        "baseline_device": result["device"],
    }


def baseline_figures(ctx: Context, result: dict) -> dict:
    from perfkit import plots

    model = ctx.params.embed.get("model", "esm2_t6_8M")
    reads = ctx.sample_stats["reads"]
    fig = plots.throughput_bars(
        result["table"], ctx.path("throughput.png"),
        title=f"ESM-2 {model} and DNABERT-S on {result['device']}: v1 vs v2, same {reads:,}-read sample",
        caption="Steady-state tokens/s (real tokens incl. BOS/EOS, first warm-up batches excluded) from each "
                "run's telemetry; token utilisation = real tokens / (batches x budget); padding waste = pad slots / "
                "all slots. Bars marked 'not measured' did not run on this device.")
    return {"throughput": fig}


# =============================================================================== 02 profiling

def run_profiling(ctx: Context) -> dict:
    """The whole chain (v2), capped by reads, with full diagnostics of its protein stage: telemetry,
    windows and a GPU/host sampler of our own; and the time of every stage."""
    from perfkit.aggregate import batches as batch_rows, read_telemetry
    from perfkit.sampler import GpuSampler
    from perfkit.workload.predict import run_predict
    from perfkit.workload.runner import STAGE

    p = ctx.params.profiling
    cfg = ctx.embed_config("chain", mode="v2", layout="packed", max_reads=p.max_reads,
                           sample_interval_s=p.sample_interval_s)
    device = resolved_device(ctx.params)
    cuda_index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
    sampler = GpuSampler(interval_s=p.sample_interval_s, cuda_index=cuda_index, tag="profiling")
    sampler.start()
    try:
        chain = run_predict(cfg, hidden=ctx.params.full_validation.classifier_hidden)
    finally:
        sampler.stop()
    protein = cfg.out_dir / "protein"
    summary = json.loads((protein / "summary.json").read_text())
    records = read_telemetry(protein / "telemetry.jsonl")
    batch_table = batch_rows(records, STAGE)
    # batch arrivals count from the protein loop's start: the stage's start + its model loading
    stages = records[records["kind"] == "stage"] if "kind" in records else records
    load = stages[stages["stage"] == "model_load"]["end_s"] if len(stages) else pd.Series(dtype=float)
    loop_start = chain["stage_started_unix"]["protein_embedding"] + (float(load.iloc[0]) if len(load) else 0.0)
    samples = pd.DataFrame(sampler.samples())
    if not samples.empty:
        samples["t_s"] = samples["timestamp"] - loop_start
    write_json(ctx.path("samples.json"), _plain(samples))
    windows = pd.DataFrame(summary["windows"])
    return {"summary": summary, "chain": chain, "stages": stage_table(chain), "batches": batch_table,
            "samples": samples, "windows": windows, "sampler_note": sampler.note, "sampler_source": sampler.source}


def stage_table(chain: dict) -> pd.DataFrame:
    """Measured seconds and share of every stage of a chain (perfkit predict's summary)."""
    stages = chain["stages_s"]
    total = sum(stages.values()) or 1.0
    return pd.DataFrame([{"stage": k, "seconds": v, "share": v / total} for k, v in stages.items()])


def run_profiler(ctx: Context) -> dict:
    from perfkit.workload.profile import profile_batches

    p = ctx.params.profiling
    cfg = ctx.embed_config("profiler", mode="v2", layout="packed", device=resolved_device(ctx.params))
    result = profile_batches(cfg, batches=p.profiler_batches, warmup=p.profiler_warmup, top=p.top_kernels)
    write_json(ctx.path("top_kernels.json"), {**{k: v for k, v in result.items() if k != "table"},
                                               "table": _plain(result["table"])})
    return result


def bottleneck_evidence(windows: pd.DataFrame) -> pd.DataFrame:
    """Per window: verdict and the shares it rests on."""
    if windows.empty:
        return pd.DataFrame(columns=["rank", "window", "start_s", "seconds", "tok_per_s", "loader_wait_share",
                                     "device_busy_share", "verdict"])
    return windows[["rank", "window", "start_s", "seconds", "tok_per_s", "loader_wait_share", "device_busy_share",
                    "packing_efficiency", "verdict"]].copy()


def profiling_headline(result: dict, profiler: dict) -> dict:
    summary = result["summary"]
    t = summary["throughput"]
    bottleneck = summary.get("bottleneck", {})
    top = profiler["table"]
    chain = result["chain"]
    return {
        "bottleneck_stage": chain["bottleneck_stage"],
        "stage_seconds": chain["stages_s"],
        "end_to_end_s": chain["end_to_end_s"],
        "chain_reads_called": chain["counts"]["reads_called"],
        "device_busy_fraction": t["device_busy_fraction"],
        "loader_wait_fraction": t["loader_wait_fraction"],
        "mfu": summary.get("mfu"),
        "gpu_util_mean": gpu_util_mean(summary),
        "bottleneck_verdict": bottleneck.get("verdict", "unknown"),
        "bottleneck_windows": bottleneck.get("windows", {}),
        "bottleneck_rule": bottleneck.get("rule", ""),
        "steady_tok_per_s": t["steady_tok_per_s"],
        "packing_efficiency": t["packing_efficiency"],
        "top_kernel": top.iloc[0]["name"] if len(top) else None,
        "profiler_time_basis": profiler["time_basis"],
    }


def profiling_figures(ctx: Context, result: dict, profiler: dict) -> dict:
    from perfkit import plots

    device = result["summary"]["run"]["device"]
    busy_basis = "CUDA events" if is_cuda(device) else "wall-clock span of the forward (CPU)"
    figs = {
        "timeline": plots.batch_timeline(
            result["batches"], ctx.path("timeline.png"),
            title=f"Per-batch timeline, v2 packed on {device}",
            caption=f"One point per batch from telemetry.jsonl, x = arrival time since the embedding loop started. Loader wait = "
                    f"time the consumer was blocked on the DataLoader; device time from {busy_basis}; packing "
                    f"efficiency = real tokens / token budget of the batch."),
        "utilisation": plots.utilisation_timeline(
            result["samples"], result["windows"], ctx.path("utilisation.png"),
            title=f"Utilisation over time, v2 packed on {device}",
            caption=f"Sampler: {result['sampler_note']}; interval {ctx.params.profiling.sample_interval_s:g} s, "
                    f"x = seconds since the protein stage's embedding loop started (sampler aligned within ~1 s; "
                    f"negative = the chain before it: planning, nucleotide stage, model loading). "
                    f"Steps: device-busy share per "
                    f"{ctx.params.embed.get('window_s', 10.0):g} s window ({busy_basis})."),
        "windows": plots.window_verdicts(
            result["windows"], ctx.path("windows.png"),
            title="Bottleneck verdict per window",
            caption="Shares of the wall time owned by each window's batches (a batch owns the time from its request "
                    "to the next request): loader wait (consumer blocked on data) and device busy. "
                    "Rule: data-starved if loader wait > 10 %; device-bound if device busy >= 90 %; else host-bound."),
        "stages": plots.stage_breakdown(
            result["stages"][["stage", "seconds"]], ctx.path("stages.png"),
            title=f"Time per pipeline stage, v2 chain on {device} "
                  f"({result['chain']['counts']['frames']:,} frames)",
            caption="Wall time of each stage of one `perfkit predict` run (chain telemetry.jsonl): planning = cutting "
                    "the input between ranks (none in one process); translation runs inside the embedding stages' "
                    "DataLoader workers, overlapped with the model; each embedding stage includes process start, "
                    "model build and the shard check; merge, classifier and consensus run in every rank on its own "
                    "reads (slowest rank); red = the top stage."),
        "kernels": plots.top_kernels(
            profiler["table"], ctx.path("kernels.png"),
            title=f"Top {len(profiler['table'])} ops by self {profiler['time_basis']} time "
                  f"({profiler['batches']} batches, torch.profiler)",
            caption=f"torch.profiler over {profiler['batches']} packed batches after {profiler['warmup']} warm-up "
                    f"batch(es), {profiler['tokens']:,} real tokens, on {profiler['device']}; share = self time / "
                    f"total self time of all ops."),
    }
    return figs


# =============================================================================== 03 scaling

def _distributed():
    try:
        from perfkit.workload import distributed
    except ImportError as err:
        raise UserError(f"multi-process runs are not available ({err})",
                        "perfkit.workload.distributed.run_multi is needed for 03_scaling") from None
    if not hasattr(distributed, "run_multi"):
        raise UserError("perfkit.workload.distributed has no run_multi", "update perfkit")
    return distributed


def scaling_plan(ctx: Context) -> dict:
    """How many processes, whether they are GPUs, and whether that can run here."""
    import torch

    args: ScalingArgs = ctx.args  # type: ignore[assignment]
    nproc = args.gpus or ctx.params.scaling.nproc
    device = resolved_device(ctx.params)
    gpus = is_cuda(device)
    reason = None
    if args.nodes != 1:
        reason = f"nodes={args.nodes}: multi-node runs are not supported (run_multi launches on one host)"
    elif nproc < 2:
        reason = f"gpus={nproc}: scaling needs at least 2 processes"
    elif gpus and torch.cuda.device_count() < nproc:
        reason = f"{nproc} GPUs asked for but {torch.cuda.device_count()} visible"
    return {"nproc": nproc, "gpus": gpus, "device": device, "nodes": args.nodes, "not_measurable": reason}


def normalise_scaling(raw: dict, single: dict, multi: dict, nproc: int) -> dict:
    """scaling factor, efficiency, imbalance and per-rank figures, whatever names `scaling()` uses.

    Values from `distributed.scaling` win; missing ones are computed from the two summaries
    (steady tokens/s, summed over ranks).
    """
    raw = dict(raw or {})

    def pick(*names):
        for name in names:
            if raw.get(name) is not None:
                return raw[name]
        return None

    single_tok = single["throughput"]["steady_tok_per_s"]
    multi_tok = multi["throughput"]["steady_tok_per_s"]
    factor = pick("factor", "scaling_factor", "speedup")
    if factor is None and single_tok and multi_tok:
        factor = multi_tok / single_tok
    efficiency = pick("efficiency", "scaling_efficiency")
    if efficiency is None and factor is not None:
        efficiency = factor / nproc
    imbalance = pick("imbalance", "rank_imbalance")
    if imbalance is None:
        imbalance = multi["throughput"].get("rank_imbalance")
    ranks = raw.get("per_rank") if isinstance(raw.get("per_rank"), dict) else {}
    per_rank_tok = pick("per_rank_tok_per_s", "rank_tok_per_s", "tok_per_s_per_rank")
    if per_rank_tok is None and ranks:
        per_rank_tok = {str(r): v.get("steady_tok_per_s") for r, v in ranks.items()}
    if per_rank_tok is None:
        per_rank_tok = {str(r): v.get("steady_tok_per_s") for r, v in (multi.get("per_rank") or {}).items()}
    per_rank_util = pick("per_rank_gpu_util", "per_rank_gpu_utilization", "gpu_util_per_rank", "per_rank_util")
    if per_rank_util is None and ranks:
        per_rank_util = {str(r): v.get("gpu_utilization_mean", v.get("gpu_utilization_percent"))
                         for r, v in ranks.items()}
    if per_rank_util is None and isinstance(multi.get("gpu"), dict):
        per_rank_util = {str(r): (g or {}).get("gpu_utilization_percent") for r, g in multi["gpu"].items()
                         if isinstance(g, dict)}
    if isinstance(per_rank_tok, list):
        per_rank_tok = {str(i): v for i, v in enumerate(per_rank_tok)}
    if isinstance(per_rank_util, list):
        per_rank_util = {str(i): v for i, v in enumerate(per_rank_util)}
    return {
        "nproc": nproc,
        "single_tok_per_s": single_tok,
        "multi_tok_per_s": multi_tok,
        "factor": factor,
        "efficiency": efficiency,
        "imbalance": imbalance,
        "per_rank_tok_per_s": {str(k): v for k, v in (per_rank_tok or {}).items()},
        "per_rank_gpu_util": {str(k): _util_value(v) for k, v in (per_rank_util or {}).items()},
        "raw": raw,
    }


def _util_value(value):
    if isinstance(value, dict):
        if value.get("measured") is False:
            return crit.not_measured(value.get("reason") or "not measured")
        for key in ("mean", "value"):
            if value.get(key) is not None:
                return float(value[key])
        return crit.not_measured("no utilisation value")
    return float(value) if isinstance(value, (int, float)) else crit.not_measured("no utilisation value")


def run_scaling(ctx: Context) -> dict:
    """The same work on 1 and on N processes (GPUs; CPU processes with gloo on CPU)."""
    from perfkit.workload.runner import run_embed

    plan = scaling_plan(ctx)
    p = ctx.params.scaling
    if plan["not_measurable"]:
        marker = crit.not_measured(plan["not_measurable"])
        return {"plan": plan, "scaling": None, "single": None, "multi": None,
                "scaling_factor": marker, "scaling_efficiency": marker, "rank_imbalance": marker,
                "nucleotide": None, "embedding_stages": None, "end_to_end": None,
                "scaling_factor_nucleotide": marker, "scaling_factor_embedding_stages": marker,
                "scaling_factor_end_to_end": marker, "scaling_factor_end_to_end_measured": marker,
                "scaling_factor_end_to_end_projected": marker, "scaling_factor_end_to_end_source": None}
    distributed = _distributed()
    if p.end_to_end:
        return _scaling_by_chains(ctx, plan, distributed)
    common = {"mode": "v2", "layout": "packed", "max_seconds": p.max_seconds, "max_reads": p.max_reads, **p.embed}
    single = run_embed(ctx.embed_config("single", **common))
    multi = distributed.run_multi(ctx.embed_config(f"multi-{plan['nproc']}", **common), plan["nproc"],
                                  gpus=plan["gpus"])
    raw = distributed.scaling(single, multi) if hasattr(distributed, "scaling") else {}
    scaling = normalise_scaling(raw, single, multi, plan["nproc"])
    stages = {"protein_embedding": (single, multi)}
    nt_scaling = None
    if p.nucleotide:
        nt_common = {**common, "model": NUCLEOTIDE_MODEL}
        nt_single = run_embed(ctx.embed_config("nt-single", **nt_common))
        nt_multi = distributed.run_multi(ctx.embed_config(f"nt-multi-{plan['nproc']}", **nt_common), plan["nproc"],
                                         gpus=plan["gpus"])
        nt_scaling = normalise_scaling(distributed.scaling(nt_single, nt_multi), nt_single, nt_multi, plan["nproc"])
        stages["nucleotide_embedding"] = (nt_single, nt_multi)
    combined = embedding_stages_scaling(stages, ctx.sample_stats, ctx.params.full_validation.full_sample_reads)
    write_json(ctx.path("scaling.json"), {"plan": plan, "scaling": scaling, "nucleotide": nt_scaling,
                                          "embedding_stages": combined})
    return {"plan": plan, "scaling": scaling, "single": single, "multi": multi, "nucleotide": nt_scaling,
            "embedding_stages": combined,
            "scaling_factor": scaling["factor"], "scaling_efficiency": scaling["efficiency"],
            "rank_imbalance": scaling["imbalance"],
            "scaling_factor_nucleotide": nt_scaling["factor"] if nt_scaling else crit.not_measured(
                "scaling.nucleotide: false in the params"),
            "scaling_factor_embedding_stages": combined["factor"] if p.nucleotide else crit.not_measured(
                "scaling.nucleotide: false in the params: the nucleotide stage was not scaled")}


FIT_TOLERANCE = 0.03  # the two-size check must hold within this on both sides for the projected factor to count
SCORING_STAGES = ("merge", "classifier", "consensus")


def scaling_sizes(params: SuiteParams, sample_reads: int) -> list[int]:
    """The two chain sizes (reads) of each side in 03: `scaling.fit_reads`, else half and all of `max_reads`
    (else of the sample). A size beyond the sample would silently run the sample: refused."""
    p = params.scaling
    if p.fit_reads:
        sizes = [int(r) for r in p.fit_reads]
    else:
        largest = min(p.max_reads or sample_reads, sample_reads)
        sizes = [max(largest // 2, 1), largest]
    if sizes[1] > sample_reads or sizes[0] >= sizes[1]:
        raise UserError(f"scaling sizes {sizes} reads: the sample has {sample_reads:,} reads and the two sizes "
                        f"must differ", "set scaling.fit_reads to two sizes within the sample, small then large")
    return sizes


def _scaling_by_chains(ctx: Context, plan: dict, distributed) -> dict:
    """The whole chain launched by torchrun with 1 rank and with N ranks (the same launch on both sides), at
    two sizes each, in interleaved rounds (1, N at the small size, 1, N at the large one, then again):
    `end_to_end_scaling` fits wall = fixed + per read x reads per side and decides the criterion's factor.
    The per-stage figures (protein, nucleotide, both embedding stages) come from the first round's largest
    size."""
    from perfkit.workload.predict import run_predict, stage_summaries

    p = ctx.params.scaling
    sizes = scaling_sizes(ctx.params, ctx.sample_stats["reads"])
    full_reads = ctx.params.full_validation.full_sample_reads
    chain_knobs = {"mode": "v2", "layout": "packed", **p.embed}
    warmup = warmup_chain(ctx, plan, chain_knobs, run_predict)
    rounds = []
    for repeat in range(p.repeats):
        runs = {"single": {}, "multi": {}}
        for reads in sizes:
            for side, nproc in (("single", 1), ("multi", plan["nproc"])):
                name = f"chain-{nproc}-{reads}-r{repeat}"
                cfg = ctx.embed_config(name, **{**chain_knobs, "max_reads": reads})
                chain = run_predict(cfg, hidden=p.classifier_hidden, nproc=nproc, gpus=plan["gpus"], launch=True)
                runs[side][reads] = {"run": name, "chain": chain, "stages": stage_summaries(cfg.out_dir)}
        rounds.append(runs)
    end_to_end = {**end_to_end_scaling(rounds, sizes, plan["nproc"], full_reads), "warmup": warmup}
    first = rounds[0]
    pairs = {stage: (first["single"][sizes[1]]["stages"][stage], first["multi"][sizes[1]]["stages"][stage])
             for stage in first["single"][sizes[1]]["stages"]}
    scaling = normalise_scaling(distributed.scaling(*pairs["protein_embedding"]), *pairs["protein_embedding"],
                                plan["nproc"])
    nt_scaling = normalise_scaling(distributed.scaling(*pairs["nucleotide_embedding"]),
                                   *pairs["nucleotide_embedding"], plan["nproc"])
    combined = embedding_stages_scaling(pairs, ctx.sample_stats, full_reads)
    write_json(ctx.path("scaling.json"), {"plan": plan, "scaling": scaling, "nucleotide": nt_scaling,
                                          "embedding_stages": combined, "end_to_end": end_to_end})
    return {"plan": plan, "scaling": scaling, "single": pairs["protein_embedding"][0],
            "multi": pairs["protein_embedding"][1], "nucleotide": nt_scaling, "embedding_stages": combined,
            "end_to_end": end_to_end, "rounds": rounds,
            "scaling_factor": scaling["factor"], "scaling_efficiency": scaling["efficiency"],
            "rank_imbalance": scaling["imbalance"], "scaling_factor_nucleotide": nt_scaling["factor"],
            "scaling_factor_embedding_stages": combined["factor"],
            "scaling_factor_end_to_end": end_to_end["factor"],
            "scaling_factor_end_to_end_source": end_to_end["factor_source"],
            "scaling_factor_end_to_end_measured": end_to_end["measured_factor"]["median"],
            "scaling_factor_end_to_end_projected": end_to_end["projected_factor"]["median"]}


def warmup_reads(params: SuiteParams, gpus: bool, nproc: int) -> int:
    """Reads of 03's untimed warm-up chain: `scaling.warmup_reads`, else 4 blocks per rank on GPUs, 0 on CPU."""
    p = params.scaling
    if p.warmup_reads is not None:
        return p.warmup_reads
    block_reads = int(p.embed.get("block_reads", params.embed.get("block_reads", 1024)))
    return 4 * block_reads * nproc if gpus else 0


def warmup_chain(ctx: Context, plan: dict, knobs: dict, run_predict) -> dict | None:
    """One untimed chain of N ranks before the timed rounds: every GPU of either side has compiled both
    models (the inductor cache is per device) and read the sample once, so the fixed seconds of the two
    sizes are those of a warm start and the two-size fit sees no first-launch outlier. Its wall is reported,
    never used; None when there is none."""
    reads = min(warmup_reads(ctx.params, plan["gpus"], plan["nproc"]), ctx.sample_stats["reads"])
    if not reads:
        return None
    cfg = ctx.embed_config(f"chain-warmup-{plan['nproc']}", **{**knobs, "max_reads": reads})
    start = time.perf_counter()
    run_predict(cfg, hidden=ctx.params.scaling.classifier_hidden, nproc=plan["nproc"], gpus=plan["gpus"], launch=True)
    return {"reads": reads, "nproc": plan["nproc"], "wall_s": time.perf_counter() - start,
            "why": "untimed: compiles both models on every GPU and reads the sample once before the timed rounds"}


def two_size_fit(sizes, walls) -> dict:
    """The line wall = fixed + per_read x reads through two (reads, seconds) points."""
    (small, large), (wall_small, wall_large) = sizes, walls
    per_read = (wall_large - wall_small) / (large - small)
    return {"fixed_s": wall_small - per_read * small, "per_read_s": per_read, "reads": [small, large],
            "walls_s": [wall_small, wall_large]}


def fit_seconds(fit: dict, reads: float) -> float:
    return fit["fixed_s"] + fit["per_read_s"] * reads


def spread(values) -> dict:
    """Median with min-max of the finite values (None when there are none)."""
    numbers = [v for v in (_number(x) for x in values) if v is not None]
    if not numbers:
        return {"median": None, "min": None, "max": None, "values": list(values)}
    return {"median": float(np.median(numbers)), "min": min(numbers), "max": max(numbers), "values": numbers}


def criterion_factor(projected, measured, check: dict, tolerance: float = FIT_TOLERANCE) -> dict:
    """The factor the criterion takes: the projected one only while the two-size check holds within
    `tolerance` on both sides; otherwise the measured one at the largest size. Says which and why."""
    projected_ok = _number(projected) is not None
    if check.get("holds") and projected_ok:
        return {"factor": projected, "source": "projected",
                "reason": f"two-size check within {tolerance:.0%} on both sides (worst "
                          f"{check['worst_deviation']:+.1%}): the fit holds, the full sample is projected with it"}
    if not projected_ok:
        why = (projected or {}).get("reason", "no projection") if isinstance(projected, dict) else "no projection"
    elif check.get("worst_deviation") is None:
        why = "the two-size check could not be made"
    else:
        why = (f"two-size check off by {check['worst_deviation']:+.1%} (tolerance {tolerance:.0%}): the fit does "
               f"not predict the larger size")
    return {"factor": measured, "source": "measured",
            "reason": f"{why}; the measured wall factor at the largest size is used"}


def end_to_end_scaling(rounds: list[dict], sizes, nproc: int, full_reads: int,
                       tolerance: float = FIT_TOLERANCE) -> dict:
    """1 vs N ranks, the whole chain, both sides launched the same way (torchrun), at two sizes, in rounds.

    `rounds[k][side][reads]` = {"chain": the chain's summary, "stages": its embedding stages' summaries},
    side "single" (1 rank) or "multi" (N ranks). Per round and side: the two-size fit wall = fixed +
    per_read x reads (walls = end_to_end_s, launch included) and its full-sample seconds; projected factor
    = single / multi full-sample seconds; measured factor = single / multi wall at the largest size. Each
    factor: the median over rounds (a round's 1- and N-rank runs ran back to back), with min-max.
    Fit check, per side and round: the small run alone, stage by stage (`project_end_to_end`: fixed part +
    tokens / steady rate, scoring linear in reads, launch fixed) predicts the large run's wall; deviation =
    measured / predicted - 1, a side's deviation = median over rounds; it holds when both sides are within
    `tolerance`. The criterion's factor follows `criterion_factor`. Cross-check: the largest run alone,
    stage by stage, projected to the full sample on each side (as 05 projects). Per-side fits and the stage
    table: through the median walls (stage seconds) at each size.
    """
    small, large = sizes
    sides, per_round = {}, {"projected": [], "measured": [], "stagewise": []}
    for side in ("single", "multi"):
        walls = {reads: [r[side][reads]["chain"]["end_to_end_s"] for r in rounds] for reads in sizes}
        fits = [two_size_fit(sizes, (w_small, w_large)) for w_small, w_large in zip(walls[small], walls[large])]
        predicted = [project_end_to_end(r[side][small]["chain"], r[side][small]["stages"], small, large, {})["hours"]
                     * 3600 for r in rounds]
        deviations = [w / p - 1 if p else None for w, p in zip(walls[large], predicted)]
        stagewise = [project_end_to_end(r[side][large]["chain"], r[side][large]["stages"], large, full_reads,
                                        {})["hours"] * 3600 for r in rounds]
        median_fit = two_size_fit(sizes, (float(np.median(walls[small])), float(np.median(walls[large]))))
        sides[side] = {
            "walls_s": {str(reads): spread(values) for reads, values in walls.items()},
            "fit": {**median_fit, "full_sample_s": fit_seconds(median_fit, full_reads)},
            "round_fits": fits,
            "fit_check": {"predicted_large_s": predicted, "measured_large_s": walls[large],
                          "deviations": deviations, "deviation": spread(deviations)["median"]},
            "stagewise_full_sample_s": spread(stagewise),
            "runs": [{str(reads): r[side][reads].get("run") for reads in sizes} for r in rounds],
        }
        per_round[side] = {"fits": fits, "walls": walls, "stagewise": stagewise}
    for k in range(len(rounds)):
        one, many = per_round["single"]["fits"][k], per_round["multi"]["fits"][k]
        if one["per_read_s"] > 0 and many["per_read_s"] > 0:
            per_round["projected"].append(fit_seconds(one, full_reads) / fit_seconds(many, full_reads))
        else:
            per_round["projected"].append(None)
        per_round["measured"].append(per_round["single"]["walls"][large][k] / per_round["multi"]["walls"][large][k])
        per_round["stagewise"].append(per_round["single"]["stagewise"][k] / per_round["multi"]["stagewise"][k])
    projected = spread(per_round["projected"])
    if None in per_round["projected"]:
        bad = [side for side in sides if any(f["per_read_s"] <= 0 for f in per_round[side]["fits"])]
        projected_value = crit.not_measured(f"the two-size fit does not grow with the reads ({', '.join(bad)} "
                                            f"side): nothing to project")
    else:
        projected_value = projected["median"]
    devs = {side: sides[side]["fit_check"]["deviation"] for side in sides}
    known = [abs(d) for d in devs.values() if d is not None]
    worst = max(devs.values(), key=lambda d: abs(d)) if len(known) == len(devs) else None
    check = {"tolerance": tolerance, **devs, "worst_deviation": worst,
             "holds": worst is not None and abs(worst) <= tolerance,
             "method": f"the {small:,}-read run alone, stage by stage (embedding: fixed part + tokens / steady "
                       f"tok/s + shard check x reads; scoring linear in reads; launch fixed), predicts the "
                       f"{large:,}-read run's wall; deviation = measured / predicted - 1, median over rounds, "
                       f"per side; holds when both sides are within {tolerance:.0%}"}
    measured = {**spread(per_round["measured"]), "reads": large}
    chosen = criterion_factor(projected_value, measured["median"], check, tolerance)
    stages = _fit_stage_table(rounds, sizes, full_reads)
    return {"nproc": nproc, "full_sample_reads": full_reads, "sizes": list(sizes), "repeats": len(rounds),
            "launch": "torchrun on both sides: 1 rank vs N ranks",
            "order": [f"round {k + 1}: " + ", ".join(f"{n} rank{'s' if n > 1 else ''} x {reads:,}"
                                                    for reads in sizes for n in (1, nproc))
                      for k in range(len(rounds))],
            "sides": sides, "fit_check": check,
            "projected_factor": {**projected, "median": projected_value},
            "measured_factor": measured,
            "stagewise_factor": spread(per_round["stagewise"]),
            "factor": chosen["factor"], "factor_source": chosen["source"], "factor_reason": chosen["reason"],
            "single_h": sides["single"]["fit"]["full_sample_s"] / 3600,
            "multi_h": sides["multi"]["fit"]["full_sample_s"] / 3600,
            "stages": stages,
            "method": "each side: wall = fixed + per_read x reads through its two sizes (launch included), "
                      "full sample = fixed + per_read x full reads; factor = 1-rank / N-rank; median over "
                      "interleaved rounds with min-max"}


def _fit_stage_table(rounds: list[dict], sizes, full_reads: int) -> list[dict]:
    """Per stage and side: median stage seconds at each size, the two-size fit through them, full-sample hours."""
    small, large = sizes
    names = []
    for r in rounds:
        for side in ("single", "multi"):
            for reads in sizes:
                names += [s for s in r[side][reads]["chain"]["stages_s"] if s not in names]
    rows = []
    for stage in names:
        row = {"stage": stage}
        for side in ("single", "multi"):
            seconds = {reads: float(np.median([r[side][reads]["chain"]["stages_s"].get(stage, 0.0) for r in rounds]))
                       for reads in sizes}
            fit = two_size_fit(sizes, (seconds[small], seconds[large]))
            row.update({f"{side}_small_s": seconds[small], f"{side}_large_s": seconds[large],
                        f"{side}_fixed_s": fit["fixed_s"], f"{side}_per_kread_s": fit["per_read_s"] * 1000,
                        f"{side}_projected_h": fit_seconds(fit, full_reads) / 3600})
        row["factor"] = (row["single_projected_h"] / row["multi_projected_h"]
                         if row["multi_projected_h"] > 0 and row["single_projected_h"] > 0 else None)
        rows.append(row)
    return rows


def embedding_stages_scaling(stages: dict, sample_stats: dict, full_reads: int) -> dict:
    """1 vs N processes over both embedding stages run one after the other, projected to the full sample.

    Per stage: tokens for the full sample (full reads x frames per read x the stage's measured tokens per
    frame) / its steady tok/s on 1 and on N processes; factor = sum of the 1-process times / sum of the
    N-process times. Fixed costs (process start, model load) are left out: minutes against hours.
    """
    frames_per_read = sample_stats["frames"] / sample_stats["reads"] if sample_stats.get("reads") else 0.0
    rows, total = {}, {"single_h": 0.0, "multi_h": 0.0}
    for stage, (single, multi) in stages.items():
        ts, tm = single["throughput"], multi["throughput"]
        per_frame = ts["real_tokens"] / ts["sequences"] if ts["sequences"] else 0.0
        tokens = full_reads * frames_per_read * per_frame
        one = tokens / ts["steady_tok_per_s"] / 3600 if ts["steady_tok_per_s"] else None
        many = tokens / tm["steady_tok_per_s"] / 3600 if tm["steady_tok_per_s"] else None
        rows[stage] = {"tokens_per_frame": per_frame, "full_sample_tokens": tokens, "single_h": one, "multi_h": many,
                       "factor": one / many if one and many else None}
        if one is None or many is None:
            total = {"single_h": None, "multi_h": None}
        elif total["single_h"] is not None:
            total["single_h"] += one
            total["multi_h"] += many
    factor = total["single_h"] / total["multi_h"] if total["single_h"] and total["multi_h"] else None
    return {"stages": rows, **total, "factor": factor if factor is not None else crit.not_measured(
        "a stage has no steady throughput"), "full_sample_reads": full_reads}


def scaling_headline(result: dict) -> dict:
    scaling = result["scaling"] or {}
    e2e = result.get("end_to_end") or {}
    return {
        "scaling_factor": result["scaling_factor"],
        "scaling_efficiency": result["scaling_efficiency"],
        "rank_imbalance": result["rank_imbalance"],
        "scaling_nproc": result["plan"]["nproc"],
        "scaling_on_gpus": result["plan"]["gpus"],
        "per_rank_tok_per_s": scaling.get("per_rank_tok_per_s", {}),
        "per_rank_gpu_util": scaling.get("per_rank_gpu_util", {}),
        "single_tok_per_s": scaling.get("single_tok_per_s"),
        "multi_tok_per_s": scaling.get("multi_tok_per_s"),
        "scaling_factor_nucleotide": result.get("scaling_factor_nucleotide", crit.not_measured("not run")),
        "scaling_factor_embedding_stages": result.get("scaling_factor_embedding_stages",
                                                      crit.not_measured("not run")),
        "embedding_stages_scaling": (result.get("embedding_stages") or {}).get("stages"),
        # the criterion: the projected factor while the two-size check holds, else the measured one
        "scaling_factor_end_to_end": result.get("scaling_factor_end_to_end", crit.not_measured(
            "scaling.end_to_end: false in the params: the chain was not run on 1 and N processes")),
        "scaling_factor_end_to_end_source": result.get("scaling_factor_end_to_end_source"),
        "scaling_factor_end_to_end_reason": e2e.get("factor_reason"),
        "scaling_factor_end_to_end_measured": result.get("scaling_factor_end_to_end_measured",
                                                         crit.not_measured("not run")),
        "scaling_factor_end_to_end_projected": result.get("scaling_factor_end_to_end_projected",
                                                          crit.not_measured("not run")),
        "scaling_fit_check": e2e.get("fit_check"),
        "end_to_end_scaling": {k: v for k, v in e2e.items() if k != "method"} or None,
    }


def scaling_figures(ctx: Context, result: dict) -> dict:
    from perfkit import plots

    plan = result["plan"]
    what = f"{plan['nproc']} GPUs" if plan["gpus"] else f"{plan['nproc']} CPU processes (gloo)"
    one = "1 GPU" if plan["gpus"] else "1 CPU process"
    figs = {}
    if result.get("end_to_end"):
        e2e = result["end_to_end"]
        small, large = e2e["sizes"]
        check = e2e["fit_check"]
        measured, projected = e2e["measured_factor"], e2e["projected_factor"]
        rounds = (f"{e2e['repeats']} interleaved round(s) (1 rank, {plan['nproc']} ranks at each size, then "
                  f"again); factors are the median over rounds with min-max" if e2e["repeats"] > 1 else
                  "1 round (no repeats: no spread measured)")
        definitions = (
            f"Both sides are launched the same way: torchrun with 1 rank vs {plan['nproc']} ranks, `perfkit "
            f"predict` on the first {small:,} and {large:,} reads; wall = the launching process's wall time "
            f"(launch, planning, both embedding stages, scoring, joining). {rounds}. Projected factor: each "
            f"side's wall = fixed + per read x reads through its two sizes, at {e2e['full_sample_reads']:,} "
            f"reads, 1 rank / {plan['nproc']} ranks = {_fmt_factor(projected['median'])}. Measured factor: "
            f"wall at {large:,} reads, 1 rank / {plan['nproc']} ranks = {_fmt_factor(measured['median'])}. Fit "
            f"check: the {small:,}-read run alone, stage by stage, predicts the {large:,}-read wall: "
            f"1 rank {_fmt_pct(check['single'])}, {plan['nproc']} ranks {_fmt_pct(check['multi'])} (tolerance "
            f"{check['tolerance']:.0%}). Criterion (scaling_factor_end_to_end) = the {e2e['factor_source']} "
            f"factor, {_fmt_factor(e2e['factor'])}: {e2e['factor_reason']}.")
        figs["scaling_fit"] = plots.scaling_fit(
            e2e, ctx.path("scaling_fit.png"), target=_target(ctx.params, "scaling_factor_end_to_end"),
            labels={"single": one, "multi": what},
            title=f"Whole chain, 1 vs {what}: two-size fit, measured and projected factor "
                  f"(criterion uses the {e2e['factor_source']} one)",
            caption=definitions)
        table = pd.DataFrame(e2e["stages"])
        table = pd.DataFrame({"stage": table["stage"],
                              f"{one}: projected s": (table["single_projected_h"] * 3600).clip(lower=0),
                              f"{what}: projected s": (table["multi_projected_h"] * 3600).clip(lower=0)})
        stagewise = e2e["stagewise_factor"]["median"]
        figs["scaling_end_to_end"] = plots.stage_breakdown(
            table, ctx.path("scaling_end_to_end.png"),
            title=f"Whole chain, {e2e['full_sample_reads']:,} reads projected per stage: {one} vs {what}",
            caption=f"Each stage's seconds through its two sizes ({small:,} and {large:,} reads; medians over "
                    f"rounds), fixed + per read x {e2e['full_sample_reads']:,} reads (a stage whose fit falls "
                    f"with the reads is drawn at 0). End to end (the fit of the whole wall): "
                    f"{e2e['single_h']:.3f} h vs {e2e['multi_h']:.3f} h. Cross-check, the {large:,}-read run alone "
                    f"projected stage by stage as 05 does (embedding: fixed + tokens / steady tok/s; others linear): "
                    f"{_fmt_factor(stagewise)}. Measured at {large:,} reads: {_fmt_factor(measured['median'])}; "
                    f"criterion: {e2e['factor_source']}.")
    if result.get("nucleotide"):
        combined = result["embedding_stages"]
        figs["scaling_nucleotide"] = plots.scaling_bars(
            result["nucleotide"], ctx.path("scaling_nucleotide.png"),
            title=f"Nucleotide stage (DNABERT-S) scaling: 1 vs {what}, same work, v2 packed",
            caption="As for the protein stage. Both embedding stages together, projected to "
                    f"{combined['full_sample_reads']:,} reads (full-sample tokens / steady tok/s per stage, "
                    f"summed): {_fmt_factor(combined['factor'])}.",
            not_measurable=plan["not_measurable"])
    source = (f"the first round's {result['end_to_end']['sizes'][1]:,}-read chains (1 rank and N ranks, both "
              f"launched by torchrun)" if result.get("end_to_end") else "the two stage runs")
    return {**figs, "scaling": plots.scaling_bars(
        result["scaling"], ctx.path("scaling.png"),
        title=f"Scaling: 1 vs {what}, same work, v2 packed",
        caption=f"From {source}. Steady-state tokens/s per rank and summed (never averaged) from each run's "
                "telemetry; factor = N-process tok/s / 1-process tok/s; efficiency = factor / N; imbalance = "
                "slowest rank's wall / mean wall. GPU utilisation per rank: NVML via nvitop, each rank's own "
                "physical GPU.",
        not_measurable=plan["not_measurable"])}


def _fmt_pct(value) -> str:
    return f"{value:+.1%}" if isinstance(value, (int, float)) else "not checked"


def _fmt_factor(value) -> str:
    return f"{value:.3f}x" if isinstance(value, (int, float)) else f"not measured ({value.get('reason')})"


# =============================================================================== 04 tuning

def tuning_points(params: SuiteParams):
    """Candidate knob settings, lazily: grid = product; coordinate = one knob at a time (see run_tuning)."""
    grid = params.tuning.grid
    names = list(grid)
    return names, [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def _base_knobs(params: SuiteParams) -> dict:
    from perfkit.workload.config import EmbedConfig

    defaults = EmbedConfig.model_fields
    return {k: params.embed.get(k, defaults[k].default) for k in params.tuning.grid}


def run_tuning(ctx: Context, measure=None) -> dict:
    """Sweep the knobs of params.tuning; stop when the runs budget is spent or the target is met.

    `measure(knobs) -> row` runs one capped point (injectable for tests).
    """
    p = ctx.params.tuning
    if not p.grid:
        raise UserError("tuning.grid is empty", "list at least one knob and its values in the params")
    measure = measure or (lambda knobs, index: measure_point(ctx, knobs, index))
    rows: list[dict] = []
    stop_reason = None

    def best_row():
        ok = [r for r in rows if r["status"] == "ok" and r["tok_per_s"] is not None]
        return max(ok, key=lambda r: r["tok_per_s"]) if ok else None

    def try_point(knobs) -> bool:
        nonlocal stop_reason
        if any(all(r[k] == v for k, v in knobs.items()) for r in rows):
            return True  # measured already
        if len(rows) >= p.max_runs:
            stop_reason = f"budget of {p.max_runs} runs spent"
            return False
        rows.append({**knobs, **measure(knobs, len(rows))})
        best = best_row()
        if p.target_tok_per_s and best and best["tok_per_s"] >= p.target_tok_per_s:
            stop_reason = f"target {p.target_tok_per_s:,.0f} tok/s met"
            return False
        return True

    if p.strategy == "grid":
        for knobs in tuning_points(ctx.params)[1]:
            if not try_point(knobs):
                break
    else:
        current = _base_knobs(ctx.params)
        if try_point(current):
            for knob, values in p.grid.items():
                go = True
                for value in values:
                    go = try_point({**current, knob: value})
                    if not go:
                        break
                best = best_row()
                if best is not None:
                    current = {k: best[k] for k in p.grid}
                if not go:
                    break
    table = pd.DataFrame(rows)
    best = best_row()
    if best is None:
        errors = "; ".join(sorted({str(r.get("error")) for r in rows}))
        raise RuntimeError(f"every tuning run failed: {errors}")
    best_knobs = {k: best[k] for k in p.grid}
    write_json(ctx.path("tuning.json"), {"rows": _plain(table), "best": best_knobs, "stop_reason": stop_reason})
    return {"table": table, "best_config": best_knobs, "best_tok_per_s": best["tok_per_s"], "best": best,
            "stop_reason": stop_reason or "all points measured", "knobs": list(p.grid)}


def measure_point(ctx: Context, knobs: dict, index: int) -> dict:
    """One capped v2 run at these knob values -> its row (status 'error' instead of raising)."""
    from perfkit.workload.runner import run_embed

    p = ctx.params.tuning
    try:
        summary = run_embed(ctx.embed_config(f"point-{index:02d}", mode="v2", layout="packed",
                                             max_seconds=p.max_seconds, max_reads=p.max_reads, **knobs))
    except Exception as err:  # a point that cannot run is a result of the sweep, not its end
        return {"status": "error", "error": f"{type(err).__name__}: {err}", "tok_per_s": None, "seq_per_s": None,
                "packing_efficiency": None, "device_busy_fraction": None, "loader_wait_fraction": None}
    t = summary["throughput"]
    return {"status": "ok", "error": None, "tok_per_s": t["steady_tok_per_s"], "seq_per_s": t["steady_seq_per_s"],
            "packing_efficiency": t["packing_efficiency"], "device_busy_fraction": t["device_busy_fraction"],
            "loader_wait_fraction": t["loader_wait_fraction"], "checkpoint_share": summary["checkpoint"]["share_of_wall"]}


def write_best_params(ctx: Context, best_config: dict, path: Path | None = None) -> Path:
    """The params file with the best knob values in its embed section: usable as --params as is."""
    import yaml

    path = path or ctx.path("best_params.yaml")
    data = load_params(ctx.params_file)
    data["embed"] = {**(data.get("embed") or {}), **best_config}
    data["name"] = f"{data.get('name', 'params')}-tuned"
    header = (f"# written by 04_tuning from {ctx.params_file}: embed knobs set to the best point of the sweep\n"
              f"# ({', '.join(f'{k}={v}' for k, v in best_config.items())})\n")
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    load_suite_params(path)  # still a valid params file
    return path


def tuning_figures(ctx: Context, result: dict) -> dict:
    from perfkit import plots

    p = ctx.params.tuning
    caps = ", ".join(f"{k}={v}" for k, v in (("max_seconds", p.max_seconds), ("max_reads", p.max_reads)) if v)
    figs = {"tuning": plots.tuning_lines(
        result["table"], result["knobs"], ctx.path("tuning.png"), best=result["best_config"],
        title=f"Tuning sweep ({p.strategy}): steady tok/s per knob value, {len(result['table'])} runs",
        caption=f"Each point is one capped v2 run ({caps or 'uncapped'}) on the same sample; y = steady-state "
                f"tokens/s from its telemetry. Star = best run; stop: {result['stop_reason']}.")}
    varied = [k for k in result["knobs"] if result["table"][k].astype(str).nunique() > 1]
    if len(varied) >= 2:
        figs["tuning_heatmap"] = plots.tuning_heatmap(
            result["table"], varied[0], varied[1], ctx.path("tuning_heatmap.png"),
            title=f"Steady tok/s over {varied[0]} x {varied[1]}",
            caption="Mean steady tokens/s of the runs at each pair of values (other knobs at whatever the sweep "
                    "had them); blank = not run.")
    return figs


# =============================================================================== 05 full validation

def run_full_validation(ctx: Context) -> dict:
    """The production run: the whole chain (v2), checkpointing on, over the sample or `max_reads` of it;
    projections of the ESM-2 stage and of the whole chain to the full sample."""
    from perfkit.workload.predict import run_predict
    from perfkit.workload.predict import stage_summaries as chain_stage_summaries

    p = ctx.params.full_validation
    knobs = {}
    tuned = ctx.run_dir / "04_tuning" / "best_params.yaml"
    if p.use_tuned and tuned.exists():
        knobs = load_params(tuned).get("embed", {})
    overrides = {**knobs, "mode": "v2", "layout": "packed", "max_reads": p.max_reads,
                 "checkpoint_every_sequences": p.checkpoint_every_sequences,
                 "checkpoint_every_seconds": p.checkpoint_every_seconds}
    device = resolved_device(ctx.params)
    cfg = ctx.embed_config("production", **overrides)
    samplers = chain_samplers(device, p.nproc, ctx.params.embed.get("sample_interval_s", 1.0))
    for sampler in samplers.values():
        sampler.start()
    try:
        chain = run_predict(cfg, hidden=p.classifier_hidden, nproc=p.nproc, gpus=is_cuda(device) and p.nproc > 1)
    finally:
        for sampler in samplers.values():
            sampler.stop()
    samples = {rank: sampler.samples() for rank, sampler in samplers.items()}
    stage_summaries = chain_stage_summaries(cfg.out_dir)
    summary = stage_summaries["protein_embedding"]
    run_reads = min(p.max_reads or ctx.sample_stats["reads"], ctx.sample_stats["reads"])
    projection = project_full_sample(summary, ctx.sample_stats, p.full_sample_reads, sample_reads=run_reads)
    end_to_end = project_end_to_end(chain, stage_summaries, run_reads, p.full_sample_reads, projection)
    gpu_util = chain_gpu_utilisation(chain, stage_summaries, samples,
                                     note="; ".join(dict.fromkeys(sampler.note for sampler in samplers.values())))
    gpu_util_full = project_gpu_utilisation(gpu_util, end_to_end, stage_summaries)
    write_json(ctx.path("projection.json"), {"protein_embedding": projection, "end_to_end": end_to_end})
    write_json(ctx.path("gpu_utilisation.json"), {**gpu_util, "full_sample": gpu_util_full, "samples": samples})
    return {"summary": summary, "chain": chain, "stages": stage_table(chain), "projection": projection,
            "end_to_end": end_to_end, "nucleotide_summary": stage_summaries["nucleotide_embedding"],
            "gpu_util": gpu_util, "gpu_util_full_sample": gpu_util_full, "tuned_knobs": knobs}


def chain_samplers(device: str, nproc: int, interval_s: float) -> dict:
    """{rank: sampler} of the launching process for every GPU the chain uses (rank r of a torchrun launch on
    one host runs on CUDA ordinal r; an in-process chain on its own device); a host-only sampler on CPU."""
    from perfkit.sampler import GpuSampler

    if not is_cuda(device):
        return {0: GpuSampler(interval_s=interval_s, cuda_index=0, tag="chain")}
    if nproc > 1:
        return {rank: GpuSampler(interval_s=interval_s, cuda_index=rank, tag=f"chain-rank{rank}")
                for rank in range(nproc)}
    index = int(device.split(":")[1]) if ":" in device else 0
    return {0: GpuSampler(interval_s=interval_s, cuda_index=index, tag="chain-rank0")}


def _chain_spans(chain: dict) -> list[tuple[str, float | None, float]]:
    """(bucket, start unix, seconds) of a chain's stages: merge, classifier and consensus share one span
    (`scoring`: they are the slowest rank's own steps, not consecutive spans); `launch` has no span of its
    own (torchrun start, imports, exit: before and after every other span)."""
    stages, started = chain["stages_s"], chain.get("stage_started_unix") or {}
    spans = []
    for stage, seconds in stages.items():
        if stage in SCORING_STAGES:
            continue
        spans.append((stage, started.get(stage), float(seconds)))
    scoring = [s for s in SCORING_STAGES if s in stages]
    if scoring:
        spans.append(("scoring", started.get(scoring[0]), float(sum(stages[s] for s in scoring))))
    return spans


def _rank_gpu(summary: dict | None, rank: int):
    """Mean NVML utilisation of `rank` from an embedding stage's summary (its own sampler, loop only), or None."""
    gpu = (summary or {}).get("gpu") or {}
    entry = gpu if "gpu_utilization_percent" in gpu else gpu.get(str(rank), gpu.get(rank))
    util = (entry or {}).get("gpu_utilization_percent") or {}
    return float(util["mean"]) if util.get("measured") and util.get("mean") is not None else None


GPU_UTIL_DEFINITION = (
    "time-weighted over the whole chain and every rank: sum over ranks and stages of (mean NVML utilisation "
    "of the rank's GPU during the stage x the stage's seconds) / sum of those seconds. Samples: the launching "
    "process samples every rank's GPU through the whole chain (launch, planning, both embedding stages, "
    "scoring = merge + classifier + consensus, joining; samples outside every stage's span, i.e. torchrun's "
    "start and exit, belong to launch); a stage with no sample of a rank takes the embedding stage's own "
    "sampler (its loop only) where there is one, else counts at 0 %.")


def chain_gpu_utilisation(chain: dict, stage_summaries: dict, samples: dict | None, note: str = "") -> dict:
    """The chain's GPU utilisation (%), time-weighted over stages and ranks (GPU_UTIL_DEFINITION), with the
    table it comes from; `samples`: {rank: the launching process's samples of that rank's GPU}. NOT
    MEASURED when no NVML reading exists at all (no driver)."""
    ranks = int(chain.get("ranks") or 1)
    spans = _chain_spans(chain)
    by_rank: dict[int, list[tuple[float, float]]] = {r: [] for r in range(ranks)}
    for rank, readings in (samples or {}).items():
        for sample in readings:
            if sample.get("gpu_utilization_percent") is not None and int(rank) in by_rank:
                by_rank[int(rank)].append((float(sample["timestamp"]), float(sample["gpu_utilization_percent"])))
    rows, weighted, total, zero = [], 0.0, 0.0, 0.0
    for rank, readings in by_rank.items():
        placed = set()
        for bucket, start, seconds in spans:
            if start is None:
                continue
            mine = [i for i, (t, _) in enumerate(readings) if start <= t < start + seconds]
            placed.update(mine)
        outside = [u for i, (t, u) in enumerate(readings) if i not in placed]
        for bucket, start, seconds in spans:
            if start is not None:
                values = [u for t, u in readings if start <= t < start + seconds]
            else:
                values = outside if bucket == "launch" else []
            if values:
                util, source = float(np.mean(values)), "chain sampler"
            elif _rank_gpu(stage_summaries.get(bucket), rank) is not None:
                util, source = _rank_gpu(stage_summaries.get(bucket), rank), "the stage's own sampler (loop only)"
            else:
                util, source = 0.0, "not sampled: counted at 0 %"
                zero += seconds
            rows.append({"rank": rank, "stage": bucket, "seconds": seconds, "util_percent": util,
                         "samples": len(values), "source": source})
            weighted += util * seconds
            total += seconds
    measured = any(r["source"] != "not sampled: counted at 0 %" for r in rows)
    value = weighted / total if measured and total else crit.not_measured(
        note or "no NVML reading of any rank in any stage (no NVIDIA driver)")
    return {"value": value, "definition": GPU_UTIL_DEFINITION, "ranks": ranks, "seconds": total,
            "share_counted_at_zero": zero / total if total else None, "table": rows, "sampler_note": note}


GPU_UTIL_FULL_SAMPLE_DEFINITION = (
    "the production chain's utilisation projected to the full sample with the same per-stage model as its "
    "hours: every rank's stage seconds are split into a fixed part (launch; an embedding stage's process start, "
    "model build, compile and warm-up) counted at 0 % and a part that grows with the reads, scaled to the full "
    "sample and counted at the rank's mean NVML utilisation during that work (an embedding stage: its own "
    "sampler, loop only; planning and scoring: the chain sampler over the stage); time-weighted over stages "
    "and ranks. The run's own measured figure (gpu_util_end_to_end) is shown beside it: on a sample smaller "
    "than the full one the fixed seconds weigh more.")


def project_gpu_utilisation(measured: dict, end_to_end: dict, stage_summaries: dict) -> dict:
    """The full-sample utilisation (GPU_UTIL_FULL_SAMPLE_DEFINITION) from the measured table of
    `chain_gpu_utilisation` and the stage rows of `project_end_to_end`; NOT MEASURED with the measured one."""
    if not isinstance(measured.get("value"), (int, float)):
        return {"value": measured.get("value"), "definition": GPU_UTIL_FULL_SAMPLE_DEFINITION, "table": []}
    stages = {row["stage"]: row for row in end_to_end["stages"]}
    measured_util = {(row["rank"], row["stage"]): row["util_percent"] for row in measured["table"]}
    ranks = sorted({row["rank"] for row in measured["table"]})
    rows, weighted, total = [], 0.0, 0.0
    for rank in ranks:
        for stage, row in stages.items():
            fixed = float(row["fixed_s"])
            growing = float(row["projected_h"]) * 3600 - fixed
            bucket = "scoring" if stage in SCORING_STAGES else stage
            util = _rank_gpu(stage_summaries.get(stage), rank) if stage.endswith("embedding") else None
            source = "the stage's own sampler (loop only)"
            if util is None:
                util, source = measured_util.get((rank, bucket), 0.0), "chain sampler over the stage"
            rows.append({"rank": rank, "stage": stage, "fixed_s": fixed, "growing_s": growing,
                         "util_percent": float(util) if growing > 0 else 0.0, "source": source})
            weighted += float(util) * growing
            total += fixed + growing
    return {"value": weighted / total if total else crit.not_measured("no projected seconds"),
            "definition": GPU_UTIL_FULL_SAMPLE_DEFINITION, "full_sample_reads": end_to_end["full_sample_reads"],
            "fixed_share": sum(r["fixed_s"] for r in rows) / total if total else None, "table": rows}


FIXED_STAGES = ("launch",)  # chain stages that do not grow with the reads


def slowest_rank_token_seconds(summary: dict) -> float:
    """A run's tokens at steady state: its tokens / steady tok/s, or with several ranks the slowest
    rank's own tokens / own steady tok/s (every rank must have a steady rate, else the summed figure)."""
    t = summary["throughput"]
    ranks = [r for r in (summary.get("per_rank") or {}).values() if isinstance(r, dict)]
    if len(ranks) > 1 and all(r.get("steady_tok_per_s") and r.get("real_tokens") is not None for r in ranks):
        return max(r["real_tokens"] / r["steady_tok_per_s"] for r in ranks)
    return t["real_tokens"] / t["steady_tok_per_s"]


def project_end_to_end(chain: dict, stage_summaries: dict, run_reads: int, full_reads: int,
                       protein_projection: dict) -> dict:
    """Hours for the whole chain on the full sample, stage by stage, from one measured chain run.

    Embedding stage: fixed part (its measured seconds - its tokens / steady tok/s - its output assembly
    or shard check: process start, model build, warm-up, alignment check) + full-sample tokens / steady
    tok/s + the output assembly or shard check scaled with reads. With N ranks the token time is the
    slowest rank's (its tokens / its steady tok/s): an uneven split grows with the sample. `launch`
    (torchrun start, imports, process groups: N-rank chains only): fixed. Other stages (planning,
    merge, classifier, consensus): linear in reads. Error: the protein stage's window spread applied
    to its share (the other stages' spread is not measured).
    """
    scale = full_reads / run_reads
    rows = []
    for stage, seconds in chain["stages_s"].items():
        t = (stage_summaries.get(stage) or {}).get("throughput")
        if t and t.get("steady_tok_per_s"):
            rate = t["steady_tok_per_s"]
            token_s = slowest_rank_token_seconds(stage_summaries[stage])
            output = ((stage_summaries[stage].get("run") or {}).get("output") or {})
            # writing embeddings.h5, or checking the shards that replace it: both grow with the reads
            assemble = float(output.get("assemble_s") or 0.0) + float(output.get("check_s") or 0.0)
            fixed = max(seconds - token_s - assemble, 0.0)
            projected = fixed + token_s * scale + assemble * scale
            rows.append({"stage": stage, "measured_s": seconds, "fixed_s": fixed, "assemble_s": assemble,
                         "steady_tok_per_s": rate, "token_s": token_s,
                         "run_tokens": t["real_tokens"], "full_sample_tokens": t["real_tokens"] * scale,
                         "projected_h": projected / 3600, "method": "fixed + full tokens / steady rate"})
        elif stage in FIXED_STAGES:
            rows.append({"stage": stage, "measured_s": seconds, "fixed_s": seconds, "assemble_s": 0.0,
                         "steady_tok_per_s": None, "run_tokens": None, "full_sample_tokens": None,
                         "projected_h": seconds / 3600, "method": "fixed"})
        else:
            rows.append({"stage": stage, "measured_s": seconds, "fixed_s": 0.0, "assemble_s": 0.0, "steady_tok_per_s": None,
                         "run_tokens": None, "full_sample_tokens": None, "projected_h": seconds * scale / 3600,
                         "method": "linear in reads"})
    table = pd.DataFrame(rows)
    hours = float(table["projected_h"].sum())
    protein_h = float(table.loc[table["stage"] == "protein_embedding", "projected_h"].sum())
    error = protein_projection.get("relative_error")
    bottleneck = table.loc[table["projected_h"].idxmax(), "stage"]
    return {"method": "per stage: embedding = fixed + full-sample tokens / steady tok/s + output assembly x reads; "
                      "others linear in reads",
            "full_sample_reads": full_reads, "run_reads": run_reads, "hours": hours,
            "relative_error": error * protein_h / hours if error is not None and hours else None,
            "bottleneck_stage": bottleneck, "bottleneck_share": float(table["projected_h"].max() / hours),
            "measured_end_to_end_s": chain["end_to_end_s"], "stages": _plain(table)}


def holdout_check(summary: dict) -> dict:
    """Does the steady rate of the first half of the run predict the whole run? The rate of the
    first half of the full steady windows predicts the loop's wall time for all the run's tokens
    (tokens before the steady windows at their measured time); deviation = measured / predicted - 1."""
    t = summary["throughput"]
    window_s = float((summary.get("config") or {}).get("window_s", 10.0))
    windows = pd.DataFrame(summary.get("windows") or [])
    if windows.empty:
        return {"checked": False, "note": "no windows"}
    steady = steady_windows(windows, window_s)
    if len(steady) < 4:
        return {"checked": False, "note": f"{len(steady)} full steady windows: at least 4 are needed"}
    fit = steady.iloc[: len(steady) // 2]
    rate = float((fit["tok_per_s"] * fit["seconds"]).sum() / fit["seconds"].sum())
    start = float(steady["start_s"].iloc[0])
    every = all_windows(windows, window_s)
    before = every[every["start_s"] < start]
    tokens_before = float((before["tok_per_s"] * before["seconds"]).sum())
    predicted = start + (t["real_tokens"] - tokens_before) / rate
    return {"checked": True, "fit_windows": len(fit), "fit_s": float(fit["seconds"].sum()), "fit_tok_per_s": rate,
            "predicted_wall_s": predicted, "measured_wall_s": t["wall_s"],
            "extrapolation": t["wall_s"] / (start + float(fit["seconds"].sum())),
            "deviation": t["wall_s"] / predicted - 1}


def all_windows(windows: pd.DataFrame, window_s: float) -> pd.DataFrame:
    """Windows summed over ranks, empty ones as 0 tok/s (perfkit.aggregate.summed_windows)."""
    from perfkit.aggregate import summed_windows

    return summed_windows(windows, window_s)


def steady_windows(windows: pd.DataFrame, window_s: float) -> pd.DataFrame:
    """Windows summed over ranks, without the first (model load, warm-up) and partial ones."""
    if windows.empty:
        return windows
    per = all_windows(windows, window_s)
    return per[per["steady"]].reset_index(drop=True)


def project_full_sample(summary: dict, sample_stats: dict, full_sample_reads: int, sample_reads: int | None = None) -> dict:
    """Hours for the full sample from the steady rate, with the method and an error stated.

    hours = (full_reads x tokens per read) / steady tok/s + model load, where tokens per read
    comes from the sample (frames per read x (mean protein length + 2)). Error: the spread of
    the full steady windows' tok/s (std / mean); interval from their 10th-90th percentiles.
    Check: when the run processed its whole sample, the same steady rate predicts the run's own
    embedding loop time (its time before steady state, from the per-rank figures, + the tokens after
    warm-up / steady tok/s), and the deviation is reported.
    """
    t = summary["throughput"]
    rate = t.get("steady_tok_per_s")
    per_read = tokens_per_read(sample_stats)
    load_s = float((summary.get("stages_s") or {}).get("model_load", 0.0))
    window_s = float((summary.get("config") or {}).get("window_s", 10.0))
    windows = steady_windows(pd.DataFrame(summary.get("windows") or []), window_s)
    out = {
        "method": "hours = full_reads x tokens_per_read / steady_tok_per_s + model_load; tokens_per_read from the "
                  "sample (frames/read x (mean protein length + 2)); error = std/mean of full steady windows' tok/s",
        "full_sample_reads": full_sample_reads, "tokens_per_read": per_read,
        "full_sample_tokens": full_sample_reads * per_read, "steady_tok_per_s": rate, "model_load_s": load_s,
        "window_s": window_s, "steady_windows": len(windows), "capped": bool((summary.get("run") or {}).get("capped")),
        "hours": None, "relative_error": None, "hours_low": None, "hours_high": None, "error_note": None,
        "check": None,
    }
    if not rate:
        out["error_note"] = "no steady-state throughput: nothing to project"
        return out
    tokens = full_sample_reads * per_read
    out["hours"] = (tokens / rate + load_s) / 3600
    if len(windows) >= 2 and windows["batches"].mean() < 2:
        out["error_note"] = (f"steady windows hold {windows['batches'].mean():.1f} batches on average: their spread "
                             f"measures batch granularity, not throughput; error not estimable (lengthen window_s)")
    elif len(windows) >= 2:
        rates = windows["tok_per_s"].astype(float)
        out["relative_error"] = float(rates.std(ddof=1) / rates.mean())
        low, high = float(rates.quantile(0.1)), float(rates.quantile(0.9))
        # the interval always contains the point estimate (the steady rate need not lie between the percentiles)
        out["hours_low"] = min(out["hours"], (tokens / high + load_s) / 3600) if high > 0 else None
        out["hours_high"] = max(out["hours"], (tokens / low + load_s) / 3600) if low > 0 else None
        out["window_tok_per_s"] = rates.tolist()
    else:
        out["error_note"] = (f"only {len(windows)} full steady window(s) of {window_s:g} s: error not estimable; "
                             f"run longer or shorten window_s")
    if not out["capped"]:
        reads = sample_reads or sample_stats.get("reads")
        measured_tokens = t["real_tokens"]
        start = steady_start(summary)
        check = {"sample_reads": reads, "predicted_tokens": reads * per_read, "measured_tokens": measured_tokens,
                 "token_deviation": measured_tokens / (reads * per_read) - 1 if reads else None,
                 "measured_wall_s": t["wall_s"], "predicted_wall_s": None, "wall_deviation": None}
        if start is None:
            check["note"] = "no rank has a steady wall time in the summary: the loop's wall is not checked"
        else:
            predicted = start["before_steady_s"] + (reads * per_read - start["warmup_tokens"]) / rate
            check.update(predicted_wall_s=predicted, before_steady_s=start["before_steady_s"],
                         warmup_tokens=start["warmup_tokens"], wall_deviation=t["wall_s"] / predicted - 1,
                         method="loop time before steady state (the longest over ranks) + (predicted tokens - "
                                "warm-up tokens) / steady tok/s")
        out["check"] = check
    return out


def steady_start(summary: dict) -> dict | None:
    """What comes before the steady state of an embedding run, from its per-rank figures (the summed
    `throughput` has no steady wall): the longest time before steady state over the ranks, and the tokens
    all ranks embedded in it (their tokens - steady tok/s x steady wall). None when no rank has a steady wall."""
    ranks = [r for r in (summary.get("per_rank") or {}).values()
             if isinstance(r, dict) and r.get("steady_wall_s") is not None and r.get("wall_s") is not None]
    if not ranks:
        return None
    before = max(r["wall_s"] - r["steady_wall_s"] for r in ranks)
    warm = sum(r["real_tokens"] - (r.get("steady_tok_per_s") or 0.0) * r["steady_wall_s"] for r in ranks)
    return {"before_steady_s": float(before), "warmup_tokens": float(warm)}


def full_validation_headline(result: dict) -> dict:
    summary, projection, e2e = result["summary"], result["projection"], result["end_to_end"]
    t = summary["throughput"]
    hours = projection["hours"]
    return {
        "projected_hours_end_to_end": e2e["hours"],
        "end_to_end_projection": e2e,
        "bottleneck_stage": e2e["bottleneck_stage"],
        "measured_end_to_end_s": result["chain"]["end_to_end_s"],
        "stage_seconds": result["chain"]["stages_s"],
        "projection_holdout_check": holdout_check(summary),
        "projected_hours_full_sample": hours if hours is not None else crit.not_measured(projection["error_note"]),
        "projection": projection,
        # the criterion: the chain's utilisation projected to the full sample (every stage and rank, time-weighted,
        # fixed seconds at 0 %); this run's measured figure and the protein loop alone beside it
        "gpu_util_full_sample": (result.get("gpu_util_full_sample") or {}).get("value", crit.not_measured("not run")),
        "gpu_util_full_sample_detail": {k: v for k, v in (result.get("gpu_util_full_sample") or {}).items()
                                        if k != "value"},
        "gpu_util_end_to_end": (result.get("gpu_util") or {}).get("value", crit.not_measured("not run")),
        "gpu_util_end_to_end_detail": {k: v for k, v in (result.get("gpu_util") or {}).items() if k != "value"},
        "gpu_util_protein_loop": gpu_util_mean(summary),
        "packing_efficiency": t["packing_efficiency"],
        "padding_waste": t["padding_waste"],
        "checkpoint_overhead_share": summary["checkpoint"]["share_of_wall"],
        "checkpoint": summary["checkpoint"],
        "steady_tok_per_s": t["steady_tok_per_s"],
        "mfu": summary.get("mfu"),
        "device_busy_fraction": t["device_busy_fraction"],
        "sequences": t["sequences"],
        "capped": projection["capped"],
    }


def full_validation_figures(ctx: Context, result: dict) -> dict:
    from perfkit import plots

    projection = result["projection"]
    device = result["summary"]["run"]["device"] if "run" in result["summary"] else "?"
    ranks = int(result["summary"]["throughput"].get("ranks") or 1)
    if ranks > 1:
        device = f"{ranks} x {device.split(':')[0]}"
    e2e = result["end_to_end"]
    stages = pd.DataFrame(e2e["stages"])
    stages["measured_s"] = stages["measured_s"].astype(float)
    stages["projected_h"] = stages["projected_h"].astype(float)
    target = _target(ctx.params, "projected_hours_end_to_end")
    stage_fig = plots.stage_breakdown(
        stages[["stage", "measured_s", "projected_h"]].rename(
            columns={"measured_s": "seconds, this run", "projected_h": "hours, projected full sample"}),
        ctx.path("stages.png"),
        title=f"Pipeline stages on {device}: {e2e['run_reads']:,} reads measured, {e2e['hours']:.2f} h projected "
              f"for {e2e['full_sample_reads']:,} reads" + (f" (target < {target:g} h)" if target else ""),
        caption=f"Left: wall time of each stage of the production chain. Right: {e2e['method']}; embedding "
                f"stages' fixed part = measured seconds - run tokens / steady tok/s. Top stage (red): "
                f"{e2e['bottleneck_stage']} ({e2e['bottleneck_share']:.0%} of the projected time).")
    return {"stages": stage_fig, "projection": plots.projection(
        pd.DataFrame(result["summary"].get("windows") or []), projection, ctx.path("projection.png"),
        target_hours=_target(ctx.params, "projected_hours_full_sample"),
        title=f"Protein (ESM-2) stage on {device}: windowed throughput and projected stage time for "
              f"{projection['full_sample_reads']:,} reads",
        caption=f"Left: tokens/s per {projection['window_s']:g} s window (summed over ranks); filled = full steady "
                f"windows used for the error. Right: {projection['method']}.")}


def _target(params: SuiteParams, metric: str):
    for item in params.criteria:
        if item.get("metric") == metric:
            return float(item["target"])
    return None


# =============================================================================== 06 summary

def _suite_status(run_dir: Path) -> dict:
    path = run_dir / "suite.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text()).get("notebooks", {})
    except (OSError, json.JSONDecodeError):
        return {}


def collect_run(run_dir: str | Path, stems=MEASURING_NOTEBOOKS) -> dict:
    """{stem: {status: complete|failed|missing, error, records, from}} for the measuring notebooks.

    An executed notebook in run_dir (written by `perfkit suite`) is the authority; without one
    (a plain nbval run), the notebook's own <stem>/metrics.json, which it writes as its last step.
    """
    from perfkit import records

    run_dir = Path(run_dir)
    suite = _suite_status(run_dir)
    out = {}
    for stem in stems:
        executed = run_dir / f"{stem}.ipynb"
        metrics = run_dir / stem / "metrics.json"
        entry = {"status": "missing", "error": f"{stem} was not run (no {executed.name}, no {stem}/metrics.json)",
                 "records": {}, "from": None}
        if suite.get(stem, {}).get("status") == "failed":
            entry.update(status="failed", error=suite[stem].get("error") or "failed", **{"from": "suite.json"})
        elif suite.get(stem, {}).get("status") == "skipped":
            entry.update(error=f"{stem} was skipped in this suite run")
        elif executed.exists():
            status = records.notebook_status(executed)
            values = {k: v for k, v in records.read_records(executed).items()
                      if not isinstance(v, records.FigureRecord)}
            if status["failed"]:
                entry.update(status="failed", error=status["error"], records=values)
            elif metrics.exists():
                entry.update(status="complete", error=None, records=values)
            else:
                entry.update(status="failed", error=f"{stem}.ipynb did not reach its end (no metrics.json)",
                             records=values)
            entry["from"] = executed.name
        elif metrics.exists():
            data = json.loads(metrics.read_text())
            entry.update(status="complete" if data.get("status") == "complete" else "failed", error=None,
                         records=data.get("records", {}), **{"from": f"{stem}/metrics.json"})
        out[stem] = entry
    return out


def evaluate_run(run_dir: str | Path, params: SuiteParams) -> dict:
    """Every criterion: target, measured, margin, PASS / FAIL / NOT MEASURED, source.

    A criterion whose source notebook is missing or failed is FAIL. The verdict is PASS
    only when every criterion passes.
    """
    rules = crit.criteria_from_params(params.criteria)
    notebooks = collect_run(run_dir, sorted({r.source for r in rules} | set(MEASURING_NOTEBOOKS)))
    rows = []
    for rule in rules:
        nb = notebooks[rule.source]
        if nb["status"] != "complete":
            row = {**crit.evaluate(rule, {}, measurable=False), "status": crit.FAIL,
                   "reason": f"source notebook {rule.source} {nb['status']}: {nb['error']}"}
        else:
            row = crit.evaluate(rule, nb["records"])
        rows.append({k: row[k] for k in ("name", "target", "comparison", "measured", "unit", "margin",
                                         "relative_margin", "status", "source", "reason", "description")})
    verdict = crit.PASS if rows and all(r["status"] == crit.PASS for r in rows) else crit.FAIL
    return {"schema": SUMMARY_SCHEMA, "verdict": verdict, "criteria": rows, "counts": crit.count_by_status(rows),
            "notebooks": {k: {"status": v["status"], "error": v["error"], "from": v["from"]} for k, v in notebooks.items()},
            "params_name": params.name}


def write_summary(ctx: Context) -> dict:
    result = evaluate_run(ctx.run_dir, ctx.params)
    result["params_file"] = str(ctx.params_file)
    write_json(ctx.run_dir / "summary.json", result)
    write_json(ctx.path("metrics.json"), {"notebook": ctx.notebook, "status": "complete", "records":
                                          {"verdict": result["verdict"], "counts": result["counts"]}})
    return result


def criteria_table(result: dict) -> pd.DataFrame:
    table = pd.DataFrame(result["criteria"])
    return table[["name", "comparison", "target", "measured", "unit", "margin", "status", "source", "reason"]]


def summary_figures(ctx: Context, result: dict) -> dict:
    from perfkit import plots

    return {"criteria": plots.criteria_margins(
        pd.DataFrame(result["criteria"]), ctx.path("criteria.png"),
        title=f"Criteria of {ctx.params.name}: verdict {result['verdict']}",
        caption="Relative margin = (measured - target) / |target| on the passing side (positive passes). "
                "FAIL without a bar: source notebook missing or failed; NOT MEASURED: no measurement on this "
                "hardware (counts as not passing).")}
