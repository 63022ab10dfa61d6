"""Scaling figures of the measuring kit: the same work on 1 and on N processes.

- the two-size fit (`two_size_fit`, `fit_seconds`) and `criterion_factor`: the projected factor stands while
  the fit holds within `FIT_TOLERANCE` on both sides, else the measured one;
- `end_to_end_scaling` (whole chains) and `embedding_stages_scaling` (stage runs), and `rank_scaling` (two
  embedding runs' summaries).

Model-agnostic, like `perfkit.projection`.
"""

from __future__ import annotations

import numpy as np

from perfkit import criteria as crit
from perfkit.projection import finite_number, project_end_to_end, spread
from perfkit.results import NotMeasured, RankScaling, RunSummary, Scaling, as_summary


# the two-size check must hold within this on both sides for the projected factor to count
FIT_TOLERANCE = 0.03


def two_size_fit(sizes, walls) -> dict:
    """The line wall = fixed + per_read x reads through two (reads, seconds) points."""
    (small, large), (wall_small, wall_large) = sizes, walls
    per_read = (wall_large - wall_small) / (large - small)
    return {
        "fixed_s": wall_small - per_read * small,
        "per_read_s": per_read,
        "reads": [small, large],
        "walls_s": [wall_small, wall_large],
    }


def fit_seconds(fit: dict, reads: float) -> float:
    return fit["fixed_s"] + fit["per_read_s"] * reads


def criterion_factor(projected, measured, check: dict, tolerance: float = FIT_TOLERANCE) -> dict:
    """The factor the criterion takes: the projected one only while the two-size check holds within
    `tolerance` on both sides; otherwise the measured one at the largest size. Says which and why."""
    projected_ok = finite_number(projected) is not None
    if check.get("holds") and projected_ok:
        return {
            "factor": projected,
            "source": "projected",
            "reason": f"two-size check within {tolerance:.0%} on both sides (worst "
            f"{check['worst_deviation']:+.1%}): the fit holds, the full sample is projected with it",
        }
    if not projected_ok:
        why = marker.reason if (marker := NotMeasured.found(projected)) else "no projection"
    elif check.get("worst_deviation") is None:
        why = "the two-size check could not be made"
    else:
        why = (
            f"two-size check off by {check['worst_deviation']:+.1%} (tolerance {tolerance:.0%}): the fit does "
            f"not predict the larger size"
        )
    return {
        "factor": measured,
        "source": "measured",
        "reason": f"{why}; the measured wall factor at the largest size is used",
    }


def end_to_end_scaling(
    rounds: list[dict], sizes, nproc: int, full_reads: int, tolerance: float = FIT_TOLERANCE
) -> dict:
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
        fits = [
            two_size_fit(sizes, (w_small, w_large)) for w_small, w_large in zip(walls[small], walls[large])
        ]
        predicted = [
            project_end_to_end(r[side][small]["chain"], r[side][small]["stages"], small, large, {})["hours"]
            * 3600
            for r in rounds
        ]
        deviations = [w / p - 1 if p else None for w, p in zip(walls[large], predicted)]
        stagewise = [
            project_end_to_end(r[side][large]["chain"], r[side][large]["stages"], large, full_reads, {})[
                "hours"
            ]
            * 3600
            for r in rounds
        ]
        median_fit = two_size_fit(sizes, (float(np.median(walls[small])), float(np.median(walls[large]))))
        sides[side] = {
            "walls_s": {str(reads): spread(values) for reads, values in walls.items()},
            "fit": {**median_fit, "full_sample_s": fit_seconds(median_fit, full_reads)},
            "round_fits": fits,
            "fit_check": {
                "predicted_large_s": predicted,
                "measured_large_s": walls[large],
                "deviations": deviations,
                "deviation": spread(deviations)["median"],
            },
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
        per_round["measured"].append(
            per_round["single"]["walls"][large][k] / per_round["multi"]["walls"][large][k]
        )
        per_round["stagewise"].append(
            per_round["single"]["stagewise"][k] / per_round["multi"]["stagewise"][k]
        )
    projected = spread(per_round["projected"])
    if None in per_round["projected"]:
        bad = [side for side in sides if any(f["per_read_s"] <= 0 for f in per_round[side]["fits"])]
        projected_value = crit.not_measured(
            f"the two-size fit does not grow with the reads ({', '.join(bad)} side): nothing to project"
        )
    else:
        projected_value = projected["median"]
    devs = {side: sides[side]["fit_check"]["deviation"] for side in sides}
    known = [abs(d) for d in devs.values() if d is not None]
    worst = max(devs.values(), key=lambda d: abs(d)) if len(known) == len(devs) else None
    check = {
        "tolerance": tolerance,
        **devs,
        "worst_deviation": worst,
        "holds": worst is not None and abs(worst) <= tolerance,
        "method": f"the {small:,}-read run alone, stage by stage (embedding: fixed part + tokens / steady "
        f"tok/s + shard check x reads; scoring linear in reads; launch fixed), predicts the "
        f"{large:,}-read run's wall; deviation = measured / predicted - 1, median over rounds, "
        f"per side; holds when both sides are within {tolerance:.0%}",
    }
    measured = {**spread(per_round["measured"]), "reads": large}
    chosen = criterion_factor(projected_value, measured["median"], check, tolerance)
    stages = _fit_stage_table(rounds, sizes, full_reads)
    return {
        "nproc": nproc,
        "full_sample_reads": full_reads,
        "sizes": list(sizes),
        "repeats": len(rounds),
        "launch": "torchrun on both sides: 1 rank vs N ranks",
        "order": [
            f"round {k + 1}: "
            + ", ".join(f"{n} rank{'s' if n > 1 else ''} x {reads:,}" for reads in sizes for n in (1, nproc))
            for k in range(len(rounds))
        ],
        "sides": sides,
        "fit_check": check,
        "projected_factor": {**projected, "median": projected_value},
        "measured_factor": measured,
        "stagewise_factor": spread(per_round["stagewise"]),
        "factor": chosen["factor"],
        "factor_source": chosen["source"],
        "factor_reason": chosen["reason"],
        "single_h": sides["single"]["fit"]["full_sample_s"] / 3600,
        "multi_h": sides["multi"]["fit"]["full_sample_s"] / 3600,
        "stages": stages,
        "method": "each side: wall = fixed + per_read x reads through its two sizes (launch included), "
        "full sample = fixed + per_read x full reads; factor = 1-rank / N-rank; median over "
        "interleaved rounds with min-max",
    }


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
            seconds = {
                reads: float(np.median([r[side][reads]["chain"]["stages_s"].get(stage, 0.0) for r in rounds]))
                for reads in sizes
            }
            fit = two_size_fit(sizes, (seconds[small], seconds[large]))
            row.update(
                {
                    f"{side}_small_s": seconds[small],
                    f"{side}_large_s": seconds[large],
                    f"{side}_fixed_s": fit["fixed_s"],
                    f"{side}_per_kread_s": fit["per_read_s"] * 1000,
                    f"{side}_projected_h": fit_seconds(fit, full_reads) / 3600,
                }
            )
        row["factor"] = (
            row["single_projected_h"] / row["multi_projected_h"]
            if row["multi_projected_h"] > 0 and row["single_projected_h"] > 0
            else None
        )
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
        ts, tm = as_summary(single).throughput, as_summary(multi).throughput
        per_frame = ts.real_tokens / ts.sequences if ts.sequences else 0.0
        tokens = full_reads * frames_per_read * per_frame
        one = tokens / ts.steady_tok_per_s / 3600 if ts.steady_tok_per_s else None
        many = tokens / tm.steady_tok_per_s / 3600 if tm.steady_tok_per_s else None
        rows[stage] = {
            "tokens_per_frame": per_frame,
            "full_sample_tokens": tokens,
            "single_h": one,
            "multi_h": many,
            "factor": one / many if one and many else None,
        }
        if one is None or many is None:
            total = {"single_h": None, "multi_h": None}
        elif total["single_h"] is not None:
            total["single_h"] += one
            total["multi_h"] += many
    factor = total["single_h"] / total["multi_h"] if total["single_h"] and total["multi_h"] else None
    return {
        "stages": rows,
        **total,
        "factor": factor if factor is not None else crit.not_measured("a stage has no steady throughput"),
        "full_sample_reads": full_reads,
    }


def rank_scaling(single: RunSummary | dict, multi: RunSummary | dict) -> Scaling:
    """1-process vs N-rank summaries of the same work: speed-up, efficiency, imbalance, per-rank figures."""
    single, multi = as_summary(single), as_summary(multi)
    one, many = single.throughput, multi.throughput
    world = multi.distributed.get("world") or many.ranks
    factor = _ratio(many.steady_tok_per_s, one.steady_tok_per_s)
    wall_factor = (
        _ratio(one.wall_s, many.wall_s)
        if one.sequences == many.sequences
        else NotMeasured("the two runs embedded different numbers of sequences")
    )
    per_rank = {}
    for rank, figures in multi.per_rank.items():
        gpu = multi.rank_gpu(rank)
        util = gpu.get("gpu_utilization_percent") or {}
        per_rank[str(rank)] = RankScaling(
            steady_tok_per_s=figures.steady_tok_per_s,
            tok_per_s=figures.tok_per_s,
            wall_s=figures.wall_s,
            physical_gpu=gpu.get("physical_index"),
            gpu_utilization_mean=(
                util["mean"]
                if util.get("measured") and "mean" in util
                else NotMeasured(util.get("reason") or gpu.get("note") or "no GPU samples")
            ),
        )
    return Scaling(
        ranks=world,
        factor=factor,
        wall_factor=wall_factor,
        efficiency=factor / world if factor is not None else None,
        imbalance=many.rank_imbalance,
        planned_token_imbalance=multi.distributed.get("plan", {}).get("planned_imbalance"),
        single_steady_tok_per_s=one.steady_tok_per_s,
        multi_steady_tok_per_s=many.steady_tok_per_s,
        per_rank=per_rank,
    )


def _ratio(a, b):
    return a / b if a is not None and b else None
