"""What every notebook starts with: `setup` (validates its parameters and the params file) returns a
`Context` (params, output folder, the shared sample from `ensure_sample`); and the small helpers the
notebook modules share."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import ValidationError

from perfkit import criteria as crit
from perfkit.errors import UserError
from perfkit.projection import finite_number, tokens_per_read
from perfkit.records import plain as _plain
from perfkit.suite.params import NOTEBOOK_ARGS, NOTEBOOKS, NotebookArgs, SuiteParams, load_suite_params
from perfkit.summary import write_json
from perfkit.results import as_summary
from perfkit.results import NotMeasured


def nucleotide_model(params: SuiteParams) -> str:
    """The chain's nucleotide model: `embed.nt_model` of the params (dnabert_s; dnabert_mini in CPU smoke runs)."""
    return params.embed.get("nt_model", "dnabert_s")


REPO = Path(__file__).resolve().parents[2]  # a source checkout: params/ and outputs/ beside perfkit/
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
        payload = {
            "notebook": self.notebook,
            "status": "complete",
            "params_file": str(self.params_file),
            "params_name": self.params.name,
            "seconds": time.time() - self.started,
            "records": {k: _plain(v) for k, v in headline.items()},
            "details": _plain(details or {}),
        }
        write_json(self.path("metrics.json"), payload)
        _show(self.conclusion(payload["records"]))
        return payload

    def conclusion(self, records: dict) -> str:
        """The notebook's closing lines, from its own records: every criterion it feeds, measured against
        its target (the same rule as 06), or that it feeds none."""
        from perfkit import criteria as crit

        mine = [c for c in crit.criteria_from_params(self.params.criteria) if c.source == self.notebook]
        if not mine:
            return f"**Conclusion ({self.notebook})**: no criterion comes from this notebook; its figures are above."
        lines = [f"**Conclusion ({self.notebook})**, the criteria this notebook measures:"]
        for c in mine:
            row = crit.evaluate(c, records)
            measured = (
                "not measured" if row["measured"] is None else f"{row['measured']:.4g} {c.unit}".rstrip()
            )
            why = f" — {row['reason']}" if row["reason"] else ""
            lines.append(
                f"- {c.name}: {measured} (target {c.comparison} {c.target:g} {c.unit}".rstrip()
                + f"): **{row['status']}**{why}"
            )
        return "\n".join(lines)


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
        unknown = sorted(
            k
            for k, v in namespace.items()
            if not k.startswith("_")
            and k not in known
            and k not in _IPYTHON_NAMES
            and isinstance(v, (str, int, float, bool, list, dict, tuple, type(None)))
        )
        if unknown:
            raise UserError(
                f"{notebook}: unknown parameter(s) {', '.join(unknown)}",
                f"this notebook takes {', '.join(sorted(known))}",
            )
    try:
        parsed = model(
            params_file=None if params_file is None else str(params_file),
            run_dir=None if run_dir is None else str(run_dir),
            **args,
        )
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "parameters"
        raise UserError(
            f"{notebook}: parameter {where}: {first['msg']}",
            f"this notebook takes {', '.join(sorted(known))}",
        ) from None
    default_params = REPO / "params" / "smoke.yaml"
    if parsed.params_file is None and not default_params.exists():
        raise UserError(
            f"{notebook}: no params_file given and no {default_params} (not a source checkout)",
            "pass one: papermill ... -p params_file path/to/params.yaml",
        )
    params_path = Path(parsed.params_file or default_params).resolve()
    params = load_suite_params(params_path)
    root = Path(parsed.run_dir or REPO / "outputs" / "nbval").resolve()
    ctx = Context(notebook, params, params_path, root, parsed)
    if notebook != "06_summary":
        shutil.rmtree(ctx.out, ignore_errors=True)  # no stale metrics from an earlier run survive
        ensure_sample(params, root)
    ctx.out.mkdir(parents=True, exist_ok=True)
    # not-measured GPU util is stated in the figures
    logging.getLogger("perfkit.sampler").setLevel(logging.ERROR)
    _show(random_weights_banner(params))
    return ctx


def random_weights_banner(params: SuiteParams) -> str:
    """The banner every notebook (and so every report) starts with: which models run on seeded random
    weights. The suite's nucleotide model and classifier always do; ESM-2 unless `embed.weights` is set."""
    parts = (
        [] if params.embed.get("weights") else [f"ESM-2 ({params.embed.get('model', 'esm2_t6_8M')})"]
    ) + ["DNABERT-S", "the classifier"]
    return (
        f"**Random weights** ({', '.join(parts)}: seeded random init). Vectors and per-read calls mean "
        "nothing biologically; the performance figures (throughput, MFU, packing, scaling, time) stand, "
        "since the work per token does not depend on the weights' values."
    )


def _show(markdown: str) -> None:
    """Rendered as markdown in a notebook (and its HTML report), printed elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown(markdown))
            return
    except ImportError:
        pass
    print(markdown)


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
        stats = write_synthetic_fasta(
            fasta, params.sample.reads, profile=params.sample.profile, seed=params.sample.seed
        )
    stats["tokens_per_read"] = tokens_per_read(stats)
    write_json(meta_path, {"spec": spec, "path": str(fasta), "stats": stats})
    return fasta, stats


def resolved_device(params: SuiteParams) -> str:
    from perfkit.workload.device import pick_device

    return str(pick_device(params.embed.get("device", "auto")))


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def ratio(numerator, denominator, reason: str):
    """numerator / denominator, or the not-measured marker when either side is missing."""
    numerator, denominator = finite_number(numerator), finite_number(denominator)
    if numerator is None or not denominator:
        return crit.not_measured(reason)
    return numerator / denominator


def dominant_attention(summary: dict) -> str:
    calls = (summary.get("run") or {}).get("attention_path") or {}
    numbers = {k: v for k, v in calls.items() if isinstance(v, (int, float))}
    if numbers:
        return max(numbers, key=numbers.get) if max(numbers.values()) > 0 else "none"
    return next(iter(calls.values()), "unknown") if calls else "unknown"


def throughput_row(variant: str, summary: dict | None, *, note: str = "") -> dict:
    """One row of a throughput table; steady-state figures (warm-up batches excluded)."""
    row = {
        "variant": variant,
        "measured": summary is not None,
        "model": None,
        "mode": None,
        "layout": None,
        "precision": None,
        "device": None,
        "sequences": None,
        "batches": None,
        "seq_per_s": None,
        "tok_per_s": None,
        "overall_tok_per_s": None,
        "token_utilisation": None,
        "padding_waste": None,
        "device_busy_fraction": None,
        "mfu": None,
        "attention": None,
        "capped": None,
        "note": note,
    }
    if summary is None:
        return row
    t, run, config = as_summary(summary).throughput, summary.get("run", {}), summary.get("config", {})
    v1_layout = (
        "padded (fair-esm batches)"
        if not str(config.get("model", "")).startswith("dnabert")
        else f"padded ({config.get('v1_nt_batch_sequences')} seq per batch, file order)"
    )
    row.update(
        model=run.get("model", config.get("model")),
        mode=run.get("mode", config.get("mode")),
        layout=config.get("layout") if config.get("mode") == "v2" else v1_layout,
        precision=run.get("precision", config.get("precision")),
        device=run.get("device", config.get("device")),
        sequences=t.sequences,
        batches=t.batches,
        seq_per_s=t.steady_seq_per_s,
        tok_per_s=t.steady_tok_per_s,
        overall_tok_per_s=t.tok_per_s,
        token_utilisation=t.packing_efficiency,
        padding_waste=t.padding_waste,
        device_busy_fraction=t.device_busy_fraction,
        mfu=summary.get("mfu"),
        attention=dominant_attention(summary),
        capped=run.get("capped"),
    )
    return row


def gpu_util_mean(summary: dict):
    """Mean NVML utilisation (%) over the run's GPUs, or the not-measured marker.

    Accepts a single-process summary (summary['gpu'] from GpuSampler.summary) and
    multi-process ones (summary['gpu'] keyed by rank).
    """
    gpu = summary.get("gpu") or {}
    candidates = []
    if "gpu_utilization_percent" in gpu:
        candidates.append(gpu)
    else:
        candidates += [v for v in gpu.values() if isinstance(v, dict) and "gpu_utilization_percent" in v]
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
    if isinstance(value, (int, float)):
        return f"{value:.1f} %"
    marker = NotMeasured.found(value)
    return f"NOT MEASURED ({marker.reason if marker else 'no value'})"


def stage_table(chain: dict) -> pd.DataFrame:
    """Measured seconds and share of every stage of a chain (perfkit predict's summary)."""
    stages = chain["stages_s"]
    total = sum(stages.values()) or 1.0
    return pd.DataFrame([{"stage": k, "seconds": v, "share": v / total} for k, v in stages.items()])


def _target(params: SuiteParams, metric: str):
    for item in params.criteria:
        if item.get("metric") == metric:
            return float(item["target"])
    return None
