"""Projection maths of the measuring kit: from measured runs to the full sample.

Model-agnostic: everything here works on run summaries (`perfkit.summary`), chain summaries (stage
seconds) and sample statistics, and knows nothing of the models, the notebooks or the workload.

- steady windows and the holdout check of an embedding run; `project_full_sample` (one stage's hours);
- `project_end_to_end`: a whole chain's hours, stage by stage;
- the two-size fit (`two_size_fit`, `fit_seconds`), `spread`, `criterion_factor`, `end_to_end_scaling`
  and `embedding_stages_scaling` (1 vs N processes);
- GPU utilisation time-weighted over a chain's stages and ranks (`chain_gpu_utilisation`), and projected
  to the full sample (`project_gpu_utilisation`).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from perfkit import criteria as crit
from perfkit.records import plain as _plain
from perfkit.results import NotMeasured, RankScaling, RunSummary, Scaling, as_summary


def _number(value):
    """A finite float, else None (None, NaN, markers, strings)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def tokens_per_read(stats: dict) -> float:
    """ESM-2 tokens (BOS/EOS included) per input read: frames/read x (mean protein length + 2)."""
    if not stats.get("reads"):
        return 0.0
    return stats["frames"] / stats["reads"] * (stats["mean_protein_length"] + 2)


FIT_TOLERANCE = 0.03  # the two-size check must hold within this on both sides for the projected factor to count
SCORING_STAGES = ("merge", "classifier", "consensus")
FIXED_STAGES = ("launch",)  # chain stages that do not grow with the reads


def all_windows(windows: pd.DataFrame, window_s: float) -> pd.DataFrame:
    """Windows summed over ranks, empty ones as 0 tok/s (perfkit.aggregate.summed_windows)."""
    from perfkit.aggregate import summed_windows

    return summed_windows(windows, window_s)


def steady_windows(windows: pd.DataFrame, window_s: float) -> pd.DataFrame:
    """Windows summed over ranks, full ones only (they start at the steady state: aggregate.windows)."""
    if windows.empty:
        return windows
    per = all_windows(windows, window_s)
    return per[per["steady"]].reset_index(drop=True)


def steady_start(summary: dict) -> dict | None:
    """What comes before the steady state of an embedding run, from its per-rank figures (the summed
    `throughput` has no steady wall): the longest time before steady state over the ranks, and the tokens
    all ranks embedded in it (their tokens - steady tok/s x steady wall). None when no rank has a steady wall."""
    ranks = [r for r in as_summary(summary).per_rank.values() if r.steady_wall_s is not None and r.wall_s is not None]
    if not ranks:
        return None
    before = max(r.wall_s - r.steady_wall_s for r in ranks)
    warm = sum(r.real_tokens - (r.steady_tok_per_s or 0.0) * r.steady_wall_s for r in ranks)
    return {"before_steady_s": float(before), "warmup_tokens": float(warm)}


def holdout_check(summary: dict) -> dict:
    """Does the steady rate of the first half of the run predict the whole run? The rate of the
    first half of the full steady windows predicts the loop's wall time for all the run's tokens
    (tokens before the steady windows at their measured time); deviation = measured / predicted - 1."""
    t = as_summary(summary).throughput
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
    before = every[every["start_s"] < start]  # partial windows at the steady start (several ranks)
    tokens_before = float((before["tok_per_s"] * before["seconds"]).sum())
    warm = steady_start(summary)  # the warm-up batches, outside every window
    if warm is not None:
        tokens_before += warm["warmup_tokens"]
    predicted = start + (t.real_tokens - tokens_before) / rate
    return {"checked": True, "fit_windows": len(fit), "fit_s": float(fit["seconds"].sum()), "fit_tok_per_s": rate,
            "predicted_wall_s": predicted, "measured_wall_s": t.wall_s,
            "extrapolation": t.wall_s / (start + float(fit["seconds"].sum())),
            "deviation": t.wall_s / predicted - 1}


def project_full_sample(summary: dict, sample_stats: dict, full_sample_reads: int, sample_reads: int | None = None) -> dict:
    """Hours for the full sample from the steady rate, with the method and an error stated.

    hours = (full_reads x tokens per read) / steady tok/s + model load, where tokens per read
    comes from the sample (frames per read x (mean protein length + 2)). Error: the spread of
    the full steady windows' tok/s (std / mean); interval from their 10th-90th percentiles.
    Check: when the run processed its whole sample, the same steady rate predicts the run's own
    embedding loop time (its time before steady state, from the per-rank figures, + the tokens after
    warm-up / steady tok/s), and the deviation is reported.
    """
    t = as_summary(summary).throughput
    rate = t.steady_tok_per_s
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
        measured_tokens = t.real_tokens
        start = steady_start(summary)
        check = {"sample_reads": reads, "predicted_tokens": reads * per_read, "measured_tokens": measured_tokens,
                 "token_deviation": measured_tokens / (reads * per_read) - 1 if reads else None,
                 "measured_wall_s": t.wall_s, "predicted_wall_s": None, "wall_deviation": None}
        if start is None:
            check["note"] = "no rank has a steady wall time in the summary: the loop's wall is not checked"
        else:
            predicted = start["before_steady_s"] + (reads * per_read - start["warmup_tokens"]) / rate
            check.update(predicted_wall_s=predicted, before_steady_s=start["before_steady_s"],
                         warmup_tokens=start["warmup_tokens"], wall_deviation=t.wall_s / predicted - 1,
                         method="loop time before steady state (the longest over ranks) + (predicted tokens - "
                                "warm-up tokens) / steady tok/s")
        out["check"] = check
    return out


def slowest_rank_token_seconds(summary: dict) -> float:
    """A run's tokens at steady state: its tokens / steady tok/s, or with several ranks the slowest
    rank's own tokens / own steady tok/s (every rank must have a steady rate, else the summed figure)."""
    run = as_summary(summary)
    ranks = list(run.per_rank.values())
    if len(ranks) > 1 and all(r.steady_tok_per_s and r.real_tokens is not None for r in ranks):
        return max(r.real_tokens / r.steady_tok_per_s for r in ranks)
    return run.throughput.real_tokens / run.throughput.steady_tok_per_s


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
        t = as_summary(stage_summaries[stage]).throughput if stage_summaries.get(stage) else None
        if t and t.steady_tok_per_s:
            rate = t.steady_tok_per_s
            token_s = slowest_rank_token_seconds(stage_summaries[stage])
            output = ((stage_summaries[stage].get("run") or {}).get("output") or {})
            # writing embeddings.h5, or checking the shards that replace it: both grow with the reads
            assemble = float(output.get("assemble_s") or 0.0) + float(output.get("check_s") or 0.0)
            fixed = max(seconds - token_s - assemble, 0.0)
            projected = fixed + token_s * scale + assemble * scale
            rows.append({"stage": stage, "measured_s": seconds, "fixed_s": fixed, "assemble_s": assemble,
                         "steady_tok_per_s": rate, "token_s": token_s,
                         "run_tokens": t.real_tokens, "full_sample_tokens": t.real_tokens * scale,
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


def repeated(values) -> dict | None:
    """{median, min, max, values, repeats} of a figure over interleaved rounds (its finite values); None when
    no round measured it. The criteria use the median; 06 and `perfkit compare` read min-max as its spread."""
    numbers = [v for v in (_number(x) for x in values) if v is not None]
    return {**spread(numbers), "repeats": len(numbers)} if numbers else None


def criterion_factor(projected, measured, check: dict, tolerance: float = FIT_TOLERANCE) -> dict:
    """The factor the criterion takes: the projected one only while the two-size check holds within
    `tolerance` on both sides; otherwise the measured one at the largest size. Says which and why."""
    projected_ok = _number(projected) is not None
    if check.get("holds") and projected_ok:
        return {"factor": projected, "source": "projected",
                "reason": f"two-size check within {tolerance:.0%} on both sides (worst "
                          f"{check['worst_deviation']:+.1%}): the fit holds, the full sample is projected with it"}
    if not projected_ok:
        why = marker.reason if (marker := NotMeasured.found(projected)) else "no projection"
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
        ts, tm = as_summary(single).throughput, as_summary(multi).throughput
        per_frame = ts.real_tokens / ts.sequences if ts.sequences else 0.0
        tokens = full_reads * frames_per_read * per_frame
        one = tokens / ts.steady_tok_per_s / 3600 if ts.steady_tok_per_s else None
        many = tokens / tm.steady_tok_per_s / 3600 if tm.steady_tok_per_s else None
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


def rank_scaling(single: RunSummary | dict, multi: RunSummary | dict) -> Scaling:
    """1-process vs N-rank summaries of the same work: speed-up, efficiency, imbalance, per-rank figures."""
    single, multi = as_summary(single), as_summary(multi)
    one, many = single.throughput, multi.throughput
    world = multi.distributed.get("world") or many.ranks
    factor = _ratio(many.steady_tok_per_s, one.steady_tok_per_s)
    wall_factor = (_ratio(one.wall_s, many.wall_s) if one.sequences == many.sequences
                   else NotMeasured("the two runs embedded different numbers of sequences"))
    per_rank = {}
    for rank, figures in multi.per_rank.items():
        gpu = multi.rank_gpu(rank)
        util = gpu.get("gpu_utilization_percent") or {}
        per_rank[str(rank)] = RankScaling(
            steady_tok_per_s=figures.steady_tok_per_s, tok_per_s=figures.tok_per_s, wall_s=figures.wall_s,
            physical_gpu=gpu.get("physical_index"),
            gpu_utilization_mean=(util["mean"] if util.get("measured") and "mean" in util
                                  else NotMeasured(util.get("reason") or gpu.get("note") or "no GPU samples")))
    return Scaling(ranks=world, factor=factor, wall_factor=wall_factor,
                   efficiency=factor / world if factor is not None else None, imbalance=many.rank_imbalance,
                   planned_token_imbalance=multi.distributed.get("plan", {}).get("planned_imbalance"),
                   single_steady_tok_per_s=one.steady_tok_per_s, multi_steady_tok_per_s=many.steady_tok_per_s,
                   per_rank=per_rank)


def _ratio(a, b):
    return a / b if a is not None and b else None
