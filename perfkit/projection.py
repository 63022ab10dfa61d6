"""Projection maths of the measuring kit: from measured runs to the full sample.

Model-agnostic: everything here works on run summaries (`perfkit.summary`), chain summaries (stage
seconds) and sample statistics, and knows nothing of the models, the notebooks or the workload.

- steady windows and the holdout check of an embedding run; `project_full_sample` (one stage's hours);
- `project_end_to_end`: a whole chain's hours, stage by stage;
- `spread` and `repeated`: the median with min-max of repeated figures.

1-vs-N scaling figures are in `perfkit.scaling_maths`, a chain's GPU utilisation in `perfkit.utilisation`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from perfkit.records import plain as _plain
from perfkit.results import as_summary


def finite_number(value):
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
    ranks = [
        r
        for r in as_summary(summary).per_rank.values()
        if r.steady_wall_s is not None and r.wall_s is not None
    ]
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
    return {
        "checked": True,
        "fit_windows": len(fit),
        "fit_s": float(fit["seconds"].sum()),
        "fit_tok_per_s": rate,
        "predicted_wall_s": predicted,
        "measured_wall_s": t.wall_s,
        "extrapolation": t.wall_s / (start + float(fit["seconds"].sum())),
        "deviation": t.wall_s / predicted - 1,
    }


def project_full_sample(
    summary: dict, sample_stats: dict, full_sample_reads: int, sample_reads: int | None = None
) -> dict:
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
        "full_sample_reads": full_sample_reads,
        "tokens_per_read": per_read,
        "full_sample_tokens": full_sample_reads * per_read,
        "steady_tok_per_s": rate,
        "model_load_s": load_s,
        "window_s": window_s,
        "steady_windows": len(windows),
        "capped": bool((summary.get("run") or {}).get("capped")),
        "hours": None,
        "relative_error": None,
        "hours_low": None,
        "hours_high": None,
        "error_note": None,
        "check": None,
    }
    if not rate:
        out["error_note"] = "no steady-state throughput: nothing to project"
        return out
    tokens = full_sample_reads * per_read
    out["hours"] = (tokens / rate + load_s) / 3600
    if len(windows) >= 2 and windows["batches"].mean() < 2:
        out["error_note"] = (
            f"steady windows hold {windows['batches'].mean():.1f} batches on average: their spread "
            f"measures batch granularity, not throughput; error not estimable (lengthen window_s)"
        )
    elif len(windows) >= 2:
        rates = windows["tok_per_s"].astype(float)
        out["relative_error"] = float(rates.std(ddof=1) / rates.mean())
        low, high = float(rates.quantile(0.1)), float(rates.quantile(0.9))
        # the interval always contains the point estimate (the steady rate need not lie between the percentiles)
        out["hours_low"] = min(out["hours"], (tokens / high + load_s) / 3600) if high > 0 else None
        out["hours_high"] = max(out["hours"], (tokens / low + load_s) / 3600) if low > 0 else None
        out["window_tok_per_s"] = rates.tolist()
    else:
        out["error_note"] = (
            f"only {len(windows)} full steady window(s) of {window_s:g} s: error not estimable; "
            f"run longer or shorten window_s"
        )
    if not out["capped"]:
        reads = sample_reads or sample_stats.get("reads")
        measured_tokens = t.real_tokens
        start = steady_start(summary)
        check = {
            "sample_reads": reads,
            "predicted_tokens": reads * per_read,
            "measured_tokens": measured_tokens,
            "token_deviation": measured_tokens / (reads * per_read) - 1 if reads else None,
            "measured_wall_s": t.wall_s,
            "predicted_wall_s": None,
            "wall_deviation": None,
        }
        if start is None:
            check["note"] = "no rank has a steady wall time in the summary: the loop's wall is not checked"
        else:
            predicted = start["before_steady_s"] + (reads * per_read - start["warmup_tokens"]) / rate
            check.update(
                predicted_wall_s=predicted,
                before_steady_s=start["before_steady_s"],
                warmup_tokens=start["warmup_tokens"],
                wall_deviation=t.wall_s / predicted - 1,
                method="loop time before steady state (the longest over ranks) + (predicted tokens - "
                "warm-up tokens) / steady tok/s",
            )
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


def project_end_to_end(
    chain: dict, stage_summaries: dict, run_reads: int, full_reads: int, protein_projection: dict
) -> dict:
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
            output = (stage_summaries[stage].get("run") or {}).get("output") or {}
            # writing embeddings.h5, or checking the shards that replace it: both grow with the reads
            assemble = float(output.get("assemble_s") or 0.0) + float(output.get("check_s") or 0.0)
            fixed = max(seconds - token_s - assemble, 0.0)
            projected = fixed + token_s * scale + assemble * scale
            rows.append(
                {
                    "stage": stage,
                    "measured_s": seconds,
                    "fixed_s": fixed,
                    "assemble_s": assemble,
                    "steady_tok_per_s": rate,
                    "token_s": token_s,
                    "run_tokens": t.real_tokens,
                    "full_sample_tokens": t.real_tokens * scale,
                    "projected_h": projected / 3600,
                    "method": "fixed + full tokens / steady rate",
                }
            )
        elif stage in FIXED_STAGES:
            rows.append(
                {
                    "stage": stage,
                    "measured_s": seconds,
                    "fixed_s": seconds,
                    "assemble_s": 0.0,
                    "steady_tok_per_s": None,
                    "run_tokens": None,
                    "full_sample_tokens": None,
                    "projected_h": seconds / 3600,
                    "method": "fixed",
                }
            )
        else:
            rows.append(
                {
                    "stage": stage,
                    "measured_s": seconds,
                    "fixed_s": 0.0,
                    "assemble_s": 0.0,
                    "steady_tok_per_s": None,
                    "run_tokens": None,
                    "full_sample_tokens": None,
                    "projected_h": seconds * scale / 3600,
                    "method": "linear in reads",
                }
            )
    table = pd.DataFrame(rows)
    hours = float(table["projected_h"].sum())
    protein_h = float(table.loc[table["stage"] == "protein_embedding", "projected_h"].sum())
    error = protein_projection.get("relative_error")
    bottleneck = table.loc[table["projected_h"].idxmax(), "stage"]
    return {
        "method": "per stage: embedding = fixed + full-sample tokens / steady tok/s + output assembly x reads; "
        "others linear in reads",
        "full_sample_reads": full_reads,
        "run_reads": run_reads,
        "hours": hours,
        "relative_error": error * protein_h / hours if error is not None and hours else None,
        "bottleneck_stage": bottleneck,
        "bottleneck_share": float(table["projected_h"].max() / hours),
        "measured_end_to_end_s": chain["end_to_end_s"],
        "stages": _plain(table),
    }


def spread(values) -> dict:
    """Median with min-max of the finite values (None when there are none)."""
    numbers = [v for v in (finite_number(x) for x in values) if v is not None]
    if not numbers:
        return {"median": None, "min": None, "max": None, "values": list(values)}
    return {"median": float(np.median(numbers)), "min": min(numbers), "max": max(numbers), "values": numbers}


def repeated(values) -> dict | None:
    """{median, min, max, values, repeats} of a figure over interleaved rounds (its finite values); None when
    no round measured it. The criteria use the median; 06 and `perfkit compare` read min-max as its spread."""
    numbers = [v for v in (finite_number(x) for x in values) if v is not None]
    return {**spread(numbers), "repeats": len(numbers)} if numbers else None
