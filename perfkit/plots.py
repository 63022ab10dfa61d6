"""Figures of the notebook suite (seaborn/matplotlib).

Every function draws one figure, gives it a title (what it measures) and a caption (how),
saves it as PNG at `path` and returns the Figure (for `records.record_figure`, which closes it).
Missing measurements are drawn as labelled gaps ("not measured"), never as zeros.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from perfkit.aggregate import summed_windows
from perfkit.projection import finite_number

STATUS_COLOURS = {"PASS": "#2e7d32", "FAIL": "#c62828", "NOT MEASURED": "#9e9e9e"}
VERDICT_COLOURS = {
    "device-bound": "#2e7d32",
    "launch-bound": "#f9a825",
    "host-bound": "#ef6c00",
    "data-starved": "#c62828",
    "unknown": "#9e9e9e",
}
DPI = 110


def set_style():
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)


def finish_figure(fig, path, title: str, caption: str):
    fig.suptitle(title, fontsize=12, fontweight="bold")
    fig.tight_layout(rect=(0, 0.04 + 0.025 * _lines(caption, fig), 1, 0.96))
    fig.text(0.01, 0.01, _wrap(caption, fig), fontsize=8, color="#444444", va="bottom", ha="left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return fig


def _wrap(caption: str, fig) -> str:
    width = int(fig.get_figwidth() * 15)
    return "\n".join(textwrap.wrap(caption, width))


def _lines(caption: str, fig) -> int:
    return len(_wrap(caption, fig).splitlines())


def draw_not_measured(ax, text="not measured"):
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=10,
        color="#757575",
        wrap=True,
    )


def _order(values: pd.Series) -> list[str]:
    """Distinct values as strings, numerically sorted when they are numbers, else in order of appearance."""
    distinct = list(dict.fromkeys(values.tolist()))
    try:
        distinct = sorted(distinct, key=lambda v: float(v))
    except (TypeError, ValueError):
        pass
    return [str(v) for v in distinct]


# ------------------------------------------------------------------ 01 baseline


def throughput_bars(table: pd.DataFrame, path, *, title: str, caption: str):
    """Steady tok/s per variant (left); token utilisation and padding waste (right)."""
    set_style()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.2, 1]})
    labels = table["variant"].tolist()
    values = [(finite_number(v) or 0.0) for v in table["tok_per_s"]]
    colours = sns.color_palette("deep", len(labels))
    measured_values = [v for v in values if v > 0]
    # e.g. both stages' models
    log = bool(measured_values) and max(measured_values) / min(measured_values) > 30
    floor = min(measured_values) / 2 if log else 0.0
    bars = left.barh(labels, [max(v, floor) if v > 0 else 0.0 for v in values], color=colours)
    top = max(values) if any(values) else 1.0
    for bar, value, measured, note in zip(bars, table["tok_per_s"], table["measured"], table["note"]):
        y = bar.get_y() + bar.get_height() / 2
        text = f"{value:,.0f}" if measured and finite_number(value) is not None else "not measured"
        x = max(bar.get_width(), floor) * 1.1 if log else bar.get_width() + top * 0.01
        left.text(x, y, text, va="center", fontsize=9)
    if log:
        left.set_xscale("log")
        left.set_xlim(floor, top * 8)
        left.set_xlabel("steady-state tokens / s (log scale)")
    else:
        left.set_xlim(0, top * 1.25)
        left.set_xlabel("steady-state tokens / s")
    left.invert_yaxis()
    left.set_title("throughput")
    melted = table[table["measured"]].melt(
        id_vars="variant",
        value_vars=["token_utilisation", "padding_waste"],
        var_name="measure",
        value_name="share",
    )
    melted["share"] = melted["share"].astype(float) * 100
    melted["measure"] = melted["measure"].str.replace("_", " ")
    if melted.empty:
        draw_not_measured(right)
    else:
        sns.barplot(
            data=melted,
            y="variant",
            x="share",
            hue="measure",
            ax=right,
            orient="h",
            palette={"token utilisation": "#1565c0", "padding waste": "#ef6c00"},
        )
        for container in right.containers:
            right.bar_label(container, fmt="%.1f%%", fontsize=8, padding=2)
        right.set_xlim(0, 118)
        right.legend(loc="lower right", fontsize=8, title=None)
    right.set_xlabel("% (token utilisation = real / (batches x budget); waste = pad slots / all slots)")
    right.set_ylabel("")
    right.set_title("batching")
    return finish_figure(fig, path, title, caption)


# ------------------------------------------------------------------ 02 profiling


def batch_timeline(batches: pd.DataFrame, path, *, title: str, caption: str):
    """Per batch over arrival time: loader wait, device time, real tokens, packing efficiency."""
    set_style()
    fig, axes = plt.subplots(4, 1, figsize=(11, 8.5), sharex=True)
    if batches.empty:
        for ax in axes:
            draw_not_measured(ax, "no batches")
        return finish_figure(fig, path, title, caption)
    t = batches["t_arrive_s"].astype(float)
    panels = [
        (batches["loader_wait_s"].astype(float) * 1e3, "loader wait (ms)", "#c62828"),
        (batches["device_s"].astype(float), "device time (s)", "#1565c0"),
        (batches["real_tokens"].astype(float), "real tokens", "#6a1b9a"),
        (batches["packing_efficiency"].astype(float) * 100, "packing efficiency (%)", "#2e7d32"),
    ]
    for ax, (values, label, colour) in zip(axes, panels):
        ax.plot(t, values, marker="o", markersize=3, linewidth=1, color=colour)
        ax.set_ylabel(label)
        ax.margins(x=0.01)
    axes[3].set_ylim(min(0.0, float(panels[3][0].min()) - 5), 102)
    axes[-1].set_xlabel("batch arrival time (s since the embedding loop started)")
    return finish_figure(fig, path, title, caption)


def utilisation_timeline(samples: pd.DataFrame, windows: pd.DataFrame, path, *, title: str, caption: str):
    """NVML utilisation per GPU over time (host CPU % when no GPU is sampled) with device-busy share per window."""
    set_style()
    fig, ax = plt.subplots(figsize=(11, 4.2))
    has_gpu = (
        not samples.empty
        and "gpu_utilization_percent" in samples
        and samples["gpu_utilization_percent"].notna().any()
    )
    if has_gpu:
        for physical, group in samples.dropna(subset=["gpu_utilization_percent"]).groupby("physical_index"):
            ax.plot(
                group["t_s"],
                group["gpu_utilization_percent"],
                marker="o",
                markersize=3,
                label=f"NVML utilisation, physical GPU {physical}",
            )
    elif not samples.empty and "host_cpu_percent" in samples:
        ax.plot(
            samples["t_s"],
            samples["host_cpu_percent"],
            marker="o",
            markersize=3,
            color="#757575",
            label="host CPU % (GPU utilisation NOT MEASURED: no NVIDIA driver)",
        )
    else:
        draw_not_measured(ax, "no sampler data")
    if not windows.empty and windows["device_busy_share"].notna().any():
        for rank, group in windows.groupby("rank"):
            x = np.r_[group["start_s"].to_numpy(), group["start_s"].iloc[-1] + group["seconds"].iloc[-1]]
            share = np.minimum(group["device_busy_share"].to_numpy(dtype=float), 1.0) * 100
            y = np.r_[share, share[-1]]
            ax.step(
                x,
                y,
                where="post",
                linewidth=2,
                color="#1565c0",
                label=f"device-busy share per window (capped at 100 %), rank {rank}",
            )
    ax.set_ylim(0, 110)
    ax.set_xlabel("time since the embedding loop started (s)")
    ax.set_ylabel("%")
    ax.legend(loc="lower right", fontsize=8)
    return finish_figure(fig, path, title, caption)


def window_verdicts(windows: pd.DataFrame, path, *, title: str, caption: str):
    """Loader-wait and device-busy shares per window, each window labelled with its verdict."""
    set_style()
    fig, ax = plt.subplots(figsize=(11, 4))
    if windows.empty:
        draw_not_measured(ax, "no windows")
        return finish_figure(fig, path, title, caption)
    labels = [
        f"r{r} w{w}\n{s:.0f}s" for r, w, s in zip(windows["rank"], windows["window"], windows["start_s"])
    ]
    x = np.arange(len(windows))
    busy = windows["device_busy_share"].astype(float).fillna(0) * 100
    wait = windows["loader_wait_share"].astype(float) * 100
    ax.bar(x - 0.2, busy, width=0.4, color="#1565c0", label="device busy share")
    ax.bar(x + 0.2, wait, width=0.4, color="#c62828", label="loader wait share")
    ax.axhline(90, color="#1565c0", linestyle="--", linewidth=1)
    ax.axhline(10, color="#c62828", linestyle="--", linewidth=1)
    top = max(110.0, float(busy.max()) + 15)
    for xi, verdict in zip(x, windows["verdict"]):
        ax.text(
            xi,
            top - 6,
            verdict,
            ha="center",
            va="top",
            fontsize=8,
            rotation=0,
            color=VERDICT_COLOURS.get(verdict, "#333333"),
            fontweight="bold",
        )
    ax.set_ylim(0, top)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("% of window wall time")
    ax.legend(loc="center right", fontsize=8)
    return finish_figure(fig, path, title, caption)


def top_kernels(table: pd.DataFrame, path, *, title: str, caption: str):
    """Horizontal bars: share of self time per op/kernel."""
    set_style()
    fig, ax = plt.subplots(figsize=(11, 0.38 * max(len(table), 3) + 1.6))
    if table.empty:
        draw_not_measured(ax, "profiler recorded no ops")
        return finish_figure(fig, path, title, caption)
    names = [n if len(n) <= 70 else n[:67] + "..." for n in table["name"]]
    ax.barh(names, table["share"] * 100, color="#5e35b1")
    for i, (share, ms, calls) in enumerate(zip(table["share"], table["self_ms"], table["calls"])):
        ax.text(share * 100 + 0.5, i, f"{share:.1%}  {ms:,.1f} ms  x{calls}", va="center", fontsize=8)
    ax.set_xlim(0, float(table["share"].max()) * 100 * 1.35 + 1)
    ax.invert_yaxis()
    ax.set_xlabel("% of total self time")
    ax.tick_params(axis="y", labelsize=8)
    return finish_figure(fig, path, title, caption)


# ------------------------------------------------------------------ 04 tuning


def tuning_lines(table: pd.DataFrame, knobs: list[str], path, *, best: dict, title: str, caption: str):
    """One panel per knob: steady tok/s of every run at each value; the best run starred."""
    set_style()
    n = max(len(knobs), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    ok = table[table["status"] == "ok"] if "status" in table else table
    for ax, knob in zip(axes.flat, knobs):
        values = ok[knob].astype(str)
        order = _order(table[knob])
        sns.stripplot(
            x=values,
            y=ok["tok_per_s"].astype(float),
            order=order,
            ax=ax,
            color="#1565c0",
            size=6,
            jitter=0.08,
        )
        means = ok.assign(_v=values).groupby("_v")["tok_per_s"].mean().reindex(order)
        ax.plot(range(len(order)), means.to_numpy(dtype=float), color="#1565c0", alpha=0.4)
        is_best = (ok[list(best)].astype(str) == pd.Series({k: str(v) for k, v in best.items()})).all(axis=1)
        if is_best.any():
            ax.scatter(
                [order.index(str(best[knob]))],
                [float(ok[is_best]["tok_per_s"].iloc[0])],
                marker="*",
                s=220,
                color="#f9a825",
                edgecolor="black",
                zorder=5,
                label="best",
            )
            ax.legend(fontsize=8, loc="lower right")
        failed = table[(table["status"] != "ok")] if "status" in table else table.iloc[0:0]
        for value in failed[knob].astype(str):
            ax.text(
                order.index(value),
                ax.get_ylim()[0],
                "failed",
                ha="center",
                va="bottom",
                fontsize=7,
                color="#c62828",
            )
        ax.set_xlabel(knob)
        ax.set_ylabel("steady tokens / s")
    for ax in list(axes.flat)[len(knobs) :]:
        ax.set_visible(False)
    return finish_figure(fig, path, title, caption)


def tuning_heatmap(table: pd.DataFrame, x: str, y: str, path, *, title: str, caption: str):
    set_style()
    fig, ax = plt.subplots(figsize=(7, 4.8))
    ok = table[table["status"] == "ok"] if "status" in table else table
    grid = ok.assign(**{x: ok[x].astype(str), y: ok[y].astype(str)}).pivot_table(
        index=y, columns=x, values="tok_per_s", aggfunc="mean"
    )
    grid = grid.reindex(index=_order(table[y]), columns=_order(table[x]))
    sns.heatmap(
        grid.astype(float),
        annot=True,
        fmt=",.0f",
        cmap="viridis",
        ax=ax,
        cbar_kws={"label": "steady tokens / s"},
        linewidths=0.5,
        linecolor="white",
    )
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    return finish_figure(fig, path, title, caption)


# ------------------------------------------------------------------ 05 full validation


def projection(
    windows: pd.DataFrame, projection: dict, path, *, target_hours: float | None, title: str, caption: str
):
    """Left: tok/s per window (summed over ranks), steady ones filled. Right: projected hours vs target."""
    set_style()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1.6, 1]})
    if windows.empty:
        draw_not_measured(left, "no windows")
    else:
        window_s = projection["window_s"]
        per = summed_windows(windows, window_s)  # windows without arrivals are 0 tok/s
        steady = per["steady"]
        left.bar(
            per["start_s"],
            per["tok_per_s"],
            width=per["seconds"] * 0.95,
            align="edge",
            color=np.where(steady, "#1565c0", "#bbdefb"),
            edgecolor="#1565c0",
        )
        rate = projection.get("steady_tok_per_s")
        if rate:
            left.axhline(rate, color="#2e7d32", linestyle="--", label=f"steady rate {rate:,.0f} tok/s")
            left.legend(loc="lower right", fontsize=8)
        left.set_xlabel("time since the embedding loop started (s)")
        left.set_ylabel("tokens / s")
        left.set_title(f"{int(steady.sum())} full steady window(s) of {window_s:g} s")
    hours = projection.get("hours")
    if hours is None:
        draw_not_measured(right, projection.get("error_note") or "no projection")
    else:
        low, high = projection.get("hours_low"), projection.get("hours_high")
        yerr = None if low is None or high is None else [[max(hours - low, 0.0)], [max(high - hours, 0.0)]]
        colour = "#2e7d32" if target_hours is None or hours < target_hours else "#c62828"
        right.bar(["projected"], [hours], yerr=yerr, capsize=8, color=colour, width=0.5)
        if target_hours is not None:
            right.axhline(target_hours, color="#c62828", linestyle="--", label=f"target < {target_hours:g} h")
            right.legend(fontsize=8, loc="upper right")
        err = projection.get("relative_error")
        note = f"±{err:.1%} (window spread)" if err is not None else "error not estimable"
        right.text(
            0,
            hours / 2,
            f"{hours:.2f} h\n{note}",
            ha="center",
            va="center",
            fontsize=10,
            color="white",
            fontweight="bold",
        )
        right.set_ylim(0, max(hours, high or 0, target_hours or 0) * 1.35)
        right.set_ylabel("hours for the full sample")
        right.set_title(
            f"{projection['full_sample_reads']:,} reads x {projection['tokens_per_read']:.1f} tok/read"
        )
    return finish_figure(fig, path, title, caption)


def stage_breakdown(stages: pd.DataFrame, path, *, title: str, caption: str):
    """Time per pipeline stage (one panel per column after 'stage'), the largest of each panel in red."""
    set_style()
    panels = [c for c in stages.columns if c != "stage"]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(6 * len(panels), 0.5 * len(stages) + 2.4), squeeze=False
    )
    for ax, column in zip(axes[0], panels):
        values = [(finite_number(v) or 0.0) for v in stages[column]]
        total = sum(values)
        if not total:
            draw_not_measured(ax, f"{column}: not measured")
            continue
        top = max(values)
        colours = ["#c62828" if v == top else "#1565c0" for v in values]
        bars = ax.barh(stages["stage"].astype(str), values, color=colours)
        for bar, value in zip(bars, values):
            ax.text(
                bar.get_width() + top * 0.01,
                bar.get_y() + bar.get_height() / 2,
                f"{value:,.3g} ({value / total:.1%})",
                va="center",
                fontsize=9,
            )
        ax.set_xlim(0, top * 1.4)
        ax.invert_yaxis()
        ax.set_xlabel(column)
        ax.set_title(f"{column}: top = {stages['stage'].iloc[values.index(top)]}")
    return finish_figure(fig, path, title, caption)


# ------------------------------------------------------------------ 06 summary


def criteria_margins(rows: pd.DataFrame, path, *, title: str, caption: str):
    set_style()
    fig, ax = plt.subplots(figsize=(10, 0.55 * max(len(rows), 3) + 1.6))
    labels = [
        f"{n} ({c} {t:g} {u}".strip() + ")"
        for n, c, t, u in zip(rows["name"], rows["comparison"], rows["target"], rows["unit"].fillna(""))
    ]
    margins = [
        (finite_number(m) if finite_number(m) is not None else 0.0) * 100 for m in rows["relative_margin"]
    ]
    colours = [STATUS_COLOURS.get(s, "#333333") for s in rows["status"]]
    ax.barh(labels, margins, color=colours)
    ax.axvline(0, color="black", linewidth=1)
    span = max([abs(m) for m in margins] + [10.0])
    for i, (margin, status, measured) in enumerate(zip(margins, rows["status"], rows["measured"])):
        shown = f"{measured:.4g}" if finite_number(measured) is not None else "-"
        ax.text(
            span * 1.05,
            i,
            f"{status}  (measured {shown})",
            va="center",
            fontsize=9,
            color=STATUS_COLOURS.get(status, "#333333"),
            fontweight="bold",
        )
    ax.set_xlim(-span * 1.1, span * 2.1)
    ax.invert_yaxis()
    ax.set_xlabel("relative margin to target (%), positive = passing side")
    return finish_figure(fig, path, title, caption)
