"""From telemetry records to windowed aggregates and the run's summary figures.

Reads what `perfkit.telemetry` wrote; never touches the model or the device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from perfkit.results import RankThroughput

STARVED_WAIT_SHARE = 0.10  # a window whose consumer waited > 10 % of its time on data is data-starved
DEVICE_BOUND_BUSY_SHARE = 0.90  # a window whose device was busy >= 90 % of its time is device-bound


def read_telemetry(paths) -> pd.DataFrame:
    """All records of one or more telemetry.jsonl files."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = [pd.read_json(p, lines=True) for p in paths if Path(p).stat().st_size]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def batches(records: pd.DataFrame, stage: str | None = None) -> pd.DataFrame:
    if records.empty:
        return records
    out = records[records["kind"] == "batch"]
    if stage is not None:
        out = out[out["stage"] == stage]
    if out.empty:  # e.g. a resumed run whose every batch was done already
        return pd.DataFrame()
    return out.sort_values(["rank", "t_arrive_s"]).reset_index(drop=True)


def _percentiles(values: pd.Series) -> dict:
    values = values.dropna().astype(float)
    if values.empty:
        return {"mean": None, "p50": None, "p95": None, "max": None, "total": 0.0}
    return {
        "mean": float(values.mean()),
        "p50": float(values.quantile(0.5)),
        "p95": float(values.quantile(0.95)),
        "max": float(values.max()),
        "total": float(values.sum()),
    }


def windows(
    batch_records: pd.DataFrame, window_s: float, end_s: float | dict | None = None, warmup_batches: int = 0
) -> pd.DataFrame:
    """Aggregate batches into fixed windows of request time, with a bottleneck verdict each.

    With `warmup_batches`, a rank's windows cover its steady state only: the grid starts at its
    `steady_start_s` (the one start the rates use) and the warm-up batches are left out.
    Each batch owns the wall time from its request (arrival - loader wait) to the next
    batch's request; a window's shares are its batches' loader wait and device time over
    the time they own, so a long batch is not squeezed into the window it arrived in.
    Throughput per window uses the window's clock length. `end_s`: where the loop ended (one number, or
    {rank: end}, the end the steady rates use); without it, a rank's last batch's end.
    """
    if batch_records.empty:
        return pd.DataFrame()
    rows = []
    for rank, df in batch_records.groupby("rank"):
        df = df.sort_values("t_arrive_s").copy()
        origin = steady_start_s(df, warmup_batches) if warmup_batches else 0.0
        end = end_s.get(rank) if isinstance(end_s, dict) else end_s
        last_end = float(
            end if end is not None else (df["t_arrive_s"] + df["host_s"] + df["device_s"].fillna(0)).max()
        )
        df = df.iloc[warm_batches(len(df), warmup_batches) :].copy()
        request = df["t_arrive_s"] - df["loader_wait_s"]
        df["owned_s"] = np.diff(np.append(request.to_numpy(), max(last_end, float(request.iloc[-1]))))
        # a host that ran ahead requested the first steady batch before the steady start: it opens window 0
        df["window"] = ((request - origin) // window_s).clip(lower=0).astype(int)
        for window, g in df.groupby("window"):
            start = origin + window * window_s
            span = max(min(window_s, last_end - start), 1e-9)
            owned = max(float(g["owned_s"].sum()), 1e-9)
            device = g["device_s"].dropna()
            wait_share = float(g["loader_wait_s"].sum()) / owned
            busy_share = float(device.sum()) / owned if len(device) else None
            rows.append(
                {
                    "rank": int(rank),
                    "window": int(window),
                    "start_s": start,
                    "seconds": span,
                    "owned_s": owned,
                    "batches": len(g),
                    "sequences": int(g["sequences"].sum()),
                    "real_tokens": int(g["real_tokens"].sum()),
                    "seq_per_s": float(g["sequences"].sum()) / span,
                    "tok_per_s": float(g["real_tokens"].sum()) / span,
                    "loader_wait_share": wait_share,
                    "device_busy_share": busy_share,
                    "packing_efficiency": float(g["real_tokens"].sum()) / float(g["budget_tokens"].sum()),
                    "verdict": verdict(wait_share, busy_share),
                }
            )
    return pd.DataFrame(rows)


def verdict(loader_wait_share: float, device_busy_share: float | None) -> str:
    """data-starved / device-bound / host-bound, from the two shares of a window's wall time."""
    if loader_wait_share > STARVED_WAIT_SHARE:
        return "data-starved"
    if device_busy_share is None:
        return "unknown"
    if device_busy_share >= DEVICE_BOUND_BUSY_SHARE:
        return "device-bound"
    return "host-bound"


def warm_batches(n: int, warmup_batches: int) -> int:
    """How many of a rank's n batches are warm-up (at least one batch always counts as steady)."""
    return min(warmup_batches, max(n - 1, 0))


def steady_start_s(batch_records: pd.DataFrame, warmup_batches: int) -> float | None:
    """The one start of a rank's steady state, on the telemetry clock: once the host has requested its first
    batch after the warm-up batches (which hold the compilation and the allocator's first growth) and the
    device has finished the warm-up batches. A host that runs ahead of the device requests that batch while
    the device still works through earlier ones; counting from the request would charge the warm-up's device
    time to the steady rate (by the queue's lead over the window: ~3 % for 64K-token ESM-2 packs in 40 s).
    Rates, busy, MFU, windows and NVML all count from here to the loop's end. None without batches."""
    if batch_records.empty:
        return None
    df = batch_records.sort_values("t_arrive_s")
    warm = warm_batches(len(df), warmup_batches)
    first = df.iloc[warm]
    start = float(first["t_arrive_s"] - first["loader_wait_s"])
    if warm and "device_start_s" in df:  # older telemetry has no device starts: the request alone
        warmup = df.iloc[:warm]
        device_end = (warmup["device_start_s"] + warmup["device_s"]).max()
        if pd.notna(device_end):
            start = max(start, float(device_end))
    return start


def throughput(
    batch_records: pd.DataFrame,
    *,
    wall_s: float,
    start_s: float = 0.0,
    warmup_batches: int = 3,
    flops_per_token: float | None = None,
    peak_flops: float | None = None,
    spec_peak_flops: float | None = None,
) -> RankThroughput:
    """Overall and steady-state (warm-up batches excluded) figures for one rank's batches.

    `start_s` is when the measured loop began and `start_s + wall_s` when it ended, on the
    telemetry clock (the clock of `t_arrive_s`); the steady state runs from the first
    non-warm-up batch's request to that end. `peak_flops`: the matmul peak measured on the rank's GPU
    (for mfu); `spec_peak_flops`: its data-sheet peak (for mfu_spec).
    """
    df = batch_records
    n = len(df)
    sequences = int(df["sequences"].sum()) if n else 0
    real_tokens = int(df["real_tokens"].sum()) if n else 0
    warm = warm_batches(n, warmup_batches)
    steady = df.iloc[warm:]
    steady_wall = start_s + wall_s - (steady_start_s(df, warmup_batches) or 0.0)
    steady_seq = steady_tok = busy = wait = None
    if len(steady) and steady_wall > 0:
        steady_seq = float(steady["sequences"].sum()) / steady_wall
        steady_tok = float(steady["real_tokens"].sum()) / steady_wall
        device = steady["device_s"].dropna()
        busy = float(device.sum()) / steady_wall if len(device) else None
        wait = float(steady["loader_wait_s"].sum()) / steady_wall
    packing = waste = None
    if n:
        packing = float(df["real_tokens"].sum()) / float(df["budget_tokens"].sum())
        waste = float((df["slot_tokens"] - df["real_tokens"]).sum()) / float(df["slot_tokens"].sum())
    empty = pd.Series(dtype=float)

    def mfu(peak):
        return steady_tok * flops_per_token / peak if flops_per_token and peak and steady_tok else None

    return RankThroughput(
        batches=n,
        sequences=sequences,
        real_tokens=real_tokens,
        wall_s=wall_s,
        seq_per_s=sequences / wall_s if wall_s > 0 else None,
        tok_per_s=real_tokens / wall_s if wall_s > 0 else None,
        warmup_batches=warm,
        steady_wall_s=steady_wall,
        steady_seq_per_s=steady_seq,
        steady_tok_per_s=steady_tok,
        device_busy_fraction=busy,
        loader_wait_fraction=wait,
        packing_efficiency=packing,
        padding_waste=waste,
        loader_wait_s=_percentiles(df["loader_wait_s"] if n else empty),
        device_s=_percentiles(df["device_s"] if n else empty),
        mfu=mfu(peak_flops),
        peak_flops=peak_flops,
        mfu_spec=mfu(spec_peak_flops),
    )


def checkpoint_overhead(records: pd.DataFrame, wall_s: float) -> dict:
    if records.empty or "checkpoint" not in set(records["kind"]):
        return {"count": 0, "write_s_total": 0.0, "share_of_wall": 0.0, "bytes": 0}
    ck = records[records["kind"] == "checkpoint"]
    total = float(ck["write_s"].sum())
    return {
        "count": int(len(ck)),
        "write_s_total": total,
        "write_s_max": float(ck["write_s"].max()),
        "share_of_wall": total / wall_s if wall_s > 0 else None,
        "bytes": int(ck["bytes"].sum()),
    }


def stage_seconds(records: pd.DataFrame) -> dict:
    if records.empty or "stage" not in set(records["kind"]):
        return {}
    st = records[records["kind"] == "stage"]
    if "rank" not in st:
        return {str(k): float(v) for k, v in st.groupby("stage")["seconds"].sum().items()}
    # ranks run their stages side by side: a stage takes as long as its slowest rank, not the sum
    per_rank = st.groupby(["stage", "rank"])["seconds"].sum()
    return {str(k): float(v) for k, v in per_rank.groupby(level="stage").max().items()}


def summed_windows(windows: pd.DataFrame, window_s: float) -> pd.DataFrame:
    """Windows summed over ranks, with the windows no batch arrived in (between the first and last) as
    0 tok/s; `steady` marks the full ones (the windows start at the steady state: `windows`)."""
    columns = dict(start_s=("start_s", "first"), seconds=("seconds", "min"), tok_per_s=("tok_per_s", "sum"))
    if "batches" in windows:
        columns["batches"] = ("batches", "sum")
    per = windows.groupby("window").agg(**columns)
    full = range(int(per.index.min()), int(per.index.max()) + 1)
    origin = float(per["start_s"].min() - per.index.min() * window_s)
    per = per.reindex(full)
    per["start_s"] = [origin + w * window_s for w in full]
    per["seconds"] = per["seconds"].fillna(window_s)
    counts = [c for c in ("tok_per_s", "batches") if c in per]
    per[counts] = per[counts].fillna(0)
    per = per.rename_axis("window").reset_index()
    per["steady"] = per["seconds"] >= window_s * 0.999
    return per
