"""05_full_validation: the production run (the whole chain, checkpointing on) and its projections to the
full sample (`perfkit.projection`, its GPU utilisation: `perfkit.utilisation`)."""

from __future__ import annotations

import pandas as pd

from perfkit import criteria as crit
from perfkit.params import load_params
from perfkit.projection import holdout_check, project_end_to_end, project_full_sample
from perfkit.utilisation import chain_gpu_utilisation, project_gpu_utilisation
from perfkit.suite.context import Context, _target, gpu_util_mean, is_cuda, resolved_device, stage_table
from perfkit.summary import write_json
from perfkit.results import as_summary


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
    overrides = {
        **knobs,
        "mode": "v2",
        "layout": "packed",
        "max_reads": p.max_reads,
        "checkpoint_every_sequences": p.checkpoint_every_sequences,
        "checkpoint_every_seconds": p.checkpoint_every_seconds,
    }
    device = resolved_device(ctx.params)
    cfg = ctx.embed_config("production", **overrides)
    samplers = chain_samplers(device, p.nproc, ctx.params.embed.get("sample_interval_s", 1.0))
    for sampler in samplers.values():
        sampler.start()
    try:
        chain = run_predict(
            cfg, hidden=p.classifier_hidden, nproc=p.nproc, gpus=is_cuda(device) and p.nproc > 1
        )
    finally:
        for sampler in samplers.values():
            sampler.stop()
    samples = {rank: sampler.samples() for rank, sampler in samplers.items()}
    stage_summaries = chain_stage_summaries(cfg.out_dir)
    summary = stage_summaries["protein_embedding"]
    run_reads = min(p.max_reads or ctx.sample_stats["reads"], ctx.sample_stats["reads"])
    projection = project_full_sample(summary, ctx.sample_stats, p.full_sample_reads, sample_reads=run_reads)
    end_to_end = project_end_to_end(chain, stage_summaries, run_reads, p.full_sample_reads, projection)
    gpu_util = chain_gpu_utilisation(
        chain,
        stage_summaries,
        samples,
        note="; ".join(dict.fromkeys(sampler.note for sampler in samplers.values())),
    )
    gpu_util_full = project_gpu_utilisation(gpu_util, end_to_end, stage_summaries)
    write_json(ctx.path("projection.json"), {"protein_embedding": projection, "end_to_end": end_to_end})
    write_json(
        ctx.path("gpu_utilisation.json"), {**gpu_util, "full_sample": gpu_util_full, "samples": samples}
    )
    return {
        "summary": summary,
        "chain": chain,
        "stages": stage_table(chain),
        "projection": projection,
        "end_to_end": end_to_end,
        "nucleotide_summary": stage_summaries["nucleotide_embedding"],
        "gpu_util": gpu_util,
        "gpu_util_full_sample": gpu_util_full,
        "tuned_knobs": knobs,
    }


def chain_samplers(device: str, nproc: int, interval_s: float) -> dict:
    """{rank: sampler} of the launching process for every GPU the chain uses (rank r of a torchrun launch on
    one host runs on CUDA ordinal r; an in-process chain on its own device); a host-only sampler on CPU."""
    from perfkit.sampler import GpuSampler

    if not is_cuda(device):
        return {0: GpuSampler(interval_s=interval_s, cuda_index=0, tag="chain")}
    if nproc > 1:
        return {
            rank: GpuSampler(interval_s=interval_s, cuda_index=rank, tag=f"chain-rank{rank}")
            for rank in range(nproc)
        }
    index = int(device.split(":")[1]) if ":" in device else 0
    return {0: GpuSampler(interval_s=interval_s, cuda_index=index, tag="chain-rank0")}


def full_validation_headline(result: dict) -> dict:
    summary, projection, e2e = result["summary"], result["projection"], result["end_to_end"]
    t = as_summary(summary).throughput
    hours = projection["hours"]
    return {
        "projected_hours_end_to_end": e2e["hours"],
        "end_to_end_projection": e2e,
        "bottleneck_stage": e2e["bottleneck_stage"],
        "measured_end_to_end_s": result["chain"]["end_to_end_s"],
        "stage_seconds": result["chain"]["stages_s"],
        "projection_holdout_check": holdout_check(summary),
        "projected_hours_protein_stage": hours
        if hours is not None
        else crit.not_measured(projection["error_note"]),
        "projection": projection,
        # the criterion: the chain's utilisation projected to the full sample (every stage and rank, time-weighted,
        # fixed seconds at 0 %); this run's measured figure and the protein loop alone beside it
        "gpu_util_full_sample": (result.get("gpu_util_full_sample") or {}).get(
            "value", crit.not_measured("not run")
        ),
        "gpu_util_full_sample_detail": {
            k: v for k, v in (result.get("gpu_util_full_sample") or {}).items() if k != "value"
        },
        "gpu_util_end_to_end": (result.get("gpu_util") or {}).get("value", crit.not_measured("not run")),
        "gpu_util_end_to_end_detail": {
            k: v for k, v in (result.get("gpu_util") or {}).items() if k != "value"
        },
        "gpu_util_protein_loop": gpu_util_mean(summary),
        "packing_efficiency": t.packing_efficiency,
        "padding_waste": t.padding_waste,
        "checkpoint_overhead_share": summary["checkpoint"]["share_of_wall"],
        "checkpoint": summary["checkpoint"],
        "steady_tok_per_s": t.steady_tok_per_s,
        "mfu": summary.get("mfu"),
        "mfu_spec": summary.get("mfu_spec"),  # against the data-sheet peak (None: fp32, CPU, unknown GPU)
        "device_busy_fraction": t.device_busy_fraction,
        "sequences": t.sequences,
        "capped": projection["capped"],
    }


def full_validation_figures(ctx: Context, result: dict) -> dict:
    from perfkit import plots

    projection = result["projection"]
    device = result["summary"]["run"]["device"] if "run" in result["summary"] else "?"
    ranks = int(as_summary(result["summary"]).throughput.ranks or 1)
    if ranks > 1:
        device = f"{ranks} x {device.split(':')[0]}"
    e2e = result["end_to_end"]
    stages = pd.DataFrame(e2e["stages"])
    stages["measured_s"] = stages["measured_s"].astype(float)
    stages["projected_h"] = stages["projected_h"].astype(float)
    target = _target(ctx.params, "projected_hours_end_to_end")
    stage_fig = plots.stage_breakdown(
        stages[["stage", "measured_s", "projected_h"]].rename(
            columns={"measured_s": "seconds, this run", "projected_h": "hours, projected full sample"}
        ),
        ctx.path("stages.png"),
        title=f"Pipeline stages on {device}: {e2e['run_reads']:,} reads measured, {e2e['hours']:.2f} h projected "
        f"for {e2e['full_sample_reads']:,} reads" + (f" (target < {target:g} h)" if target else ""),
        caption=f"Left: wall time of each stage of the production chain. Right: {e2e['method']}; embedding "
        f"stages' fixed part = measured seconds - run tokens / steady tok/s. Top stage (red): "
        f"{e2e['bottleneck_stage']} ({e2e['bottleneck_share']:.0%} of the projected time).",
    )
    return {
        "stages": stage_fig,
        "projection": plots.projection(
            pd.DataFrame(result["summary"].get("windows") or []),
            projection,
            ctx.path("projection.png"),
            target_hours=_target(ctx.params, "projected_hours_protein_stage"),
            title=f"Protein (ESM-2) stage on {device}: windowed throughput and projected stage time for "
            f"{projection['full_sample_reads']:,} reads",
            caption=f"Left: tokens/s per {projection['window_s']:g} s window (summed over ranks); filled = full steady "
            f"windows used for the error. Right: {projection['method']}.",
        ),
    }
