"""02_profiling: the whole chain with full diagnostics of its protein stage, and torch.profiler's top
kernels."""

from __future__ import annotations

import json

import pandas as pd

from perfkit import criteria as crit
from perfkit.records import plain as _plain
from perfkit.suite.context import Context, gpu_util_mean, is_cuda, resolved_device, stage_table
from perfkit.summary import write_json
from perfkit.results import NotMeasured, as_summary


def run_profiling(ctx: Context) -> dict:
    """The whole chain (v2), capped by reads, with full diagnostics of its protein stage: telemetry,
    windows and a GPU/host sampler of our own; and the time of every stage."""
    from perfkit.aggregate import batches as batch_rows, read_telemetry
    from perfkit.sampler import GpuSampler
    from perfkit.workload.predict import run_predict, stage_summaries
    from perfkit.workload.runner import STAGE

    p = ctx.params.profiling
    cfg = ctx.embed_config(
        "chain", mode="v2", layout="packed", max_reads=p.max_reads, sample_interval_s=p.sample_interval_s
    )
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
    loop_start = chain["stage_started_unix"]["protein_embedding"] + (
        float(load.iloc[0]) if len(load) else 0.0
    )
    samples = pd.DataFrame(sampler.samples())
    if not samples.empty:
        samples["t_s"] = samples["timestamp"] - loop_start
    write_json(ctx.path("samples.json"), _plain(samples))
    windows = pd.DataFrame(summary["windows"])
    return {
        "summary": summary,
        "chain": chain,
        "stages": stage_table(chain),
        "batches": batch_table,
        "embedding_stages": embedding_stage_table(stage_summaries(cfg.out_dir)),
        "samples": samples,
        "windows": windows,
        "sampler_note": sampler.note,
        "sampler_source": sampler.source,
    }


def embedding_stage_table(summaries: dict) -> pd.DataFrame:
    """One row per embedding stage of the chain, each over its own steady state: rate, MFU against the
    measured and the spec peak, CUDA-event busy, NVML utilisation and the bottleneck verdict with its reason
    (launch-bound: events busy while NVML and MFU are low)."""
    rows = []
    for stage, summary in summaries.items():
        if summary is None:
            continue
        t, bottleneck = as_summary(summary).throughput, summary.get("bottleneck") or {}
        util = gpu_util_mean(summary)
        rows.append(
            {
                "stage": stage,
                "steady_tok_per_s": t.steady_tok_per_s,
                "mfu_measured_peak": summary.get("mfu"),
                "mfu_spec_peak": summary.get("mfu_spec"),
                "device_busy_fraction": t.device_busy_fraction,
                "nvml_util_percent": util if isinstance(util, float) else None,
                "loader_wait_fraction": t.loader_wait_fraction,
                "verdict": bottleneck.get("verdict", "unknown"),
                "why": bottleneck.get("why", ""),
            }
        )
    return pd.DataFrame(rows)


def run_profiler(ctx: Context) -> dict:
    """torch.profiler over a few packed batches of each embedding stage, with the chain's configs: the protein
    stage's top kernels, and per stage the gaps between kernels (why a stage is launch-bound)."""
    from perfkit.workload.predict import stage_configs
    from perfkit.workload.profile import profile_batches

    p = ctx.params.profiling
    cfg = ctx.embed_config("profiler", mode="v2", layout="packed", device=resolved_device(ctx.params))
    stages = {
        stage: profile_batches(
            stage_cfg, batches=p.profiler_batches, warmup=p.profiler_warmup, top=p.top_kernels
        )
        for stage, stage_cfg in stage_configs(cfg).items()
    }
    result = {
        **stages["protein_embedding"],
        "nucleotide_table": stages["nucleotide_embedding"]["table"],
        "kernel_gaps": kernel_gap_table(stages),
    }
    write_json(ctx.path("top_kernels.json"), _plain(result))
    return result


def kernel_gap_table(stages: dict) -> pd.DataFrame:
    """Per embedding stage: how much of the profiled window the device ran no kernel, and the kernels' and gaps'
    median lengths. A stage whose kernels last a few µs with gaps as long as them is launch-bound: the host
    enqueues kernels no faster than the device runs them, so the events count the gaps as busy."""
    rows = []
    for stage, profiled in stages.items():
        gaps = profiled["kernel_gaps"]
        marker = NotMeasured.found(gaps)
        row = {"stage": stage, "model": profiled["model"], "compiled": profiled["compiled"]}
        if marker:
            rows.append(
                {
                    **row,
                    "kernels": None,
                    "kernels_per_batch": None,
                    "idle_share": None,
                    "median_kernel_us": None,
                    "median_gap_us": None,
                    "note": f"not measured: {marker.reason}",
                }
            )
            continue
        rows.append(
            {
                **row,
                "kernels": gaps["kernels"],
                "kernels_per_batch": gaps["kernels"] / profiled["batches"],
                "idle_share": gaps["idle_share"],
                "median_kernel_us": gaps["median_kernel_us"],
                "median_gap_us": gaps["median_gap_us"],
                "note": gaps["definition"],
            }
        )
    return pd.DataFrame(rows)


def bottleneck_evidence(windows: pd.DataFrame) -> pd.DataFrame:
    """Per window: verdict and the shares it rests on."""
    if windows.empty:
        return pd.DataFrame(
            columns=[
                "rank",
                "window",
                "start_s",
                "seconds",
                "tok_per_s",
                "loader_wait_share",
                "device_busy_share",
                "verdict",
            ]
        )
    return windows[
        [
            "rank",
            "window",
            "start_s",
            "seconds",
            "tok_per_s",
            "loader_wait_share",
            "device_busy_share",
            "packing_efficiency",
            "verdict",
        ]
    ].copy()


def profiling_headline(result: dict, profiler: dict) -> dict:
    summary = result["summary"]
    t = as_summary(summary).throughput
    bottleneck = summary.get("bottleneck", {})
    top = profiler["table"]
    chain = result["chain"]
    return {
        "bottleneck_stage": chain["bottleneck_stage"],
        "stage_seconds": chain["stages_s"],
        "end_to_end_s": chain["end_to_end_s"],
        "chain_reads_called": chain["counts"]["reads_called"],
        "device_busy_fraction": t.device_busy_fraction,
        "loader_wait_fraction": t.loader_wait_fraction,
        "mfu": summary.get("mfu"),
        "mfu_spec": summary.get("mfu_spec"),  # against the data-sheet peak (None: fp32, CPU, unknown GPU)
        "gpu_util_mean": gpu_util_mean(summary),
        "bottleneck_verdict": bottleneck.get("verdict", "unknown"),
        "bottleneck_windows": bottleneck.get("windows", {}),
        "bottleneck_rule": bottleneck.get("rule", ""),
        "steady_tok_per_s": t.steady_tok_per_s,
        "packing_efficiency": t.packing_efficiency,
        # every embedding stage's verdict over its own steady state (the nucleotide stage was launch-bound)
        "stage_verdicts": dict(
            zip(result["embedding_stages"]["stage"], result["embedding_stages"]["verdict"])
        )
        if len(result["embedding_stages"])
        else {},
        "nucleotide_mfu": _stage_value(result, "nucleotide_embedding", "mfu_measured_peak"),
        "nucleotide_mfu_spec": _stage_value(result, "nucleotide_embedding", "mfu_spec_peak"),
        "nucleotide_bottleneck_verdict": _stage_value(result, "nucleotide_embedding", "verdict"),
        "top_kernel": top.iloc[0]["name"] if len(top) else None,
        "profiler_time_basis": profiler["time_basis"],
        # per stage: the share of the profiled window the device ran no kernel (the events count it as busy)
        "kernel_idle_share": {
            row["stage"]: (
                row["idle_share"]
                if row["idle_share"] is not None and pd.notna(row["idle_share"])
                else crit.not_measured(row["note"])
            )
            for row in profiler["kernel_gaps"].to_dict(orient="records")
        },
    }


def _stage_value(result: dict, stage: str, column: str):
    table = result["embedding_stages"]
    rows = table[table["stage"] == stage] if len(table) else table
    if (
        not len(rows)
        or rows.iloc[0][column] is None
        or (isinstance(rows.iloc[0][column], float) and pd.isna(rows.iloc[0][column]))
    ):
        return crit.not_measured(f"no {column} for the {stage.replace('_', ' ')} stage in this run")
    value = rows.iloc[0][column]
    return value.item() if hasattr(value, "item") else value


def profiling_figures(ctx: Context, result: dict, profiler: dict) -> dict:
    from perfkit import plots

    device = result["summary"]["run"]["device"]
    busy_basis = "CUDA events" if is_cuda(device) else "wall-clock span of the forward (CPU)"
    figs = {
        "timeline": plots.batch_timeline(
            result["batches"],
            ctx.path("timeline.png"),
            title=f"Per-batch timeline, v2 packed on {device}",
            caption="One point per batch from telemetry.jsonl, x = arrival time since the embedding loop "
            "started. Loader wait = "
            f"time the consumer was blocked on the DataLoader; device time from {busy_basis}; packing "
            f"efficiency = real tokens / token budget of the batch.",
        ),
        "utilisation": plots.utilisation_timeline(
            result["samples"],
            result["windows"],
            ctx.path("utilisation.png"),
            title=f"Utilisation over time, v2 packed on {device}",
            caption=f"Sampler: {result['sampler_note']}; interval {ctx.params.profiling.sample_interval_s:g} s, "
            f"x = seconds since the protein stage's embedding loop started (sampler aligned within ~1 s; "
            f"negative = the chain before it: planning, nucleotide stage, model loading). "
            f"Steps: device-busy share per "
            f"{ctx.params.embed.get('window_s', 10.0):g} s window ({busy_basis}).",
        ),
        "windows": plots.window_verdicts(
            result["windows"],
            ctx.path("windows.png"),
            title="Bottleneck verdict per window",
            caption="Shares of the wall time owned by each window's batches (a batch owns the time from its request "
            "to the next request): loader wait (consumer blocked on data) and device busy. "
            "Rule: data-starved if loader wait > 10 %; device-bound if device busy >= 90 %; else host-bound.",
        ),
        "stages": plots.stage_breakdown(
            result["stages"][["stage", "seconds"]],
            ctx.path("stages.png"),
            title=f"Time per pipeline stage, v2 chain on {device} "
            f"({result['chain']['counts']['frames']:,} frames)",
            caption="Wall time of each stage of one `perfkit predict` run (chain telemetry.jsonl): planning = cutting "
            "the input between ranks (none in one process); translation runs inside the embedding stages' "
            "DataLoader workers, overlapped with the model; each embedding stage includes process start, "
            "model build and the shard check; merge, classifier and consensus run in every rank on its own "
            "reads (slowest rank); red = the top stage.",
        ),
        "kernels": plots.top_kernels(
            profiler["table"],
            ctx.path("kernels.png"),
            title=f"Top {len(profiler['table'])} ops by self {profiler['time_basis']} time "
            f"({profiler['batches']} batches, torch.profiler)",
            caption=f"torch.profiler over {profiler['batches']} packed batches after {profiler['warmup']} warm-up "
            f"batch(es), {profiler['tokens']:,} real tokens, on {profiler['device']}; share = self time / "
            f"total self time of all ops.",
        ),
    }
    return figs
