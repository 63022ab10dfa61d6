"""GPU utilisation of a whole chain, from NVML samples: time-weighted over its stages and ranks
(`chain_gpu_utilisation`), and projected to the full sample like its hours (`project_gpu_utilisation`).

Model-agnostic, like `perfkit.projection`: it reads chain summaries (stage spans) and run summaries.
"""

from __future__ import annotations

import numpy as np

from perfkit import criteria as crit
from perfkit.projection import SCORING_STAGES


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
    "sampler (its loop only) where there is one, else counts at 0 %."
)


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
                by_rank[int(rank)].append(
                    (float(sample["timestamp"]), float(sample["gpu_utilization_percent"]))
                )
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
                util, source = (
                    _rank_gpu(stage_summaries.get(bucket), rank),
                    "the stage's own sampler (loop only)",
                )
            else:
                util, source = 0.0, "not sampled: counted at 0 %"
                zero += seconds
            rows.append(
                {
                    "rank": rank,
                    "stage": bucket,
                    "seconds": seconds,
                    "util_percent": util,
                    "samples": len(values),
                    "source": source,
                }
            )
            weighted += util * seconds
            total += seconds
    measured = any(r["source"] != "not sampled: counted at 0 %" for r in rows)
    value = (
        weighted / total
        if measured and total
        else crit.not_measured(note or "no NVML reading of any rank in any stage (no NVIDIA driver)")
    )
    return {
        "value": value,
        "definition": GPU_UTIL_DEFINITION,
        "ranks": ranks,
        "seconds": total,
        "share_counted_at_zero": zero / total if total else None,
        "table": rows,
        "sampler_note": note,
    }


GPU_UTIL_FULL_SAMPLE_DEFINITION = (
    "the production chain's utilisation projected to the full sample with the same per-stage model as its "
    "hours: every rank's stage seconds are split into a fixed part (launch; an embedding stage's process start, "
    "model build, compile and warm-up) counted at 0 % and a part that grows with the reads, scaled to the full "
    "sample and counted at the rank's mean NVML utilisation during that work (an embedding stage: its own "
    "sampler, loop only; planning and scoring: the chain sampler over the stage); time-weighted over stages "
    "and ranks. The run's own measured figure (gpu_util_end_to_end) is shown beside it: on a sample smaller "
    "than the full one the fixed seconds weigh more."
)


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
            rows.append(
                {
                    "rank": rank,
                    "stage": stage,
                    "fixed_s": fixed,
                    "growing_s": growing,
                    "util_percent": float(util) if growing > 0 else 0.0,
                    "source": source,
                }
            )
            weighted += float(util) * growing
            total += fixed + growing
    return {
        "value": weighted / total if total else crit.not_measured("no projected seconds"),
        "definition": GPU_UTIL_FULL_SAMPLE_DEFINITION,
        "full_sample_reads": end_to_end["full_sample_reads"],
        "fixed_share": sum(r["fixed_s"] for r in rows) / total if total else None,
        "table": rows,
    }
