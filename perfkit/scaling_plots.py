"""03_scaling's figures: the 1-vs-N factors per stage (`scaling_bars`) and the two-size fit of the whole
chain (`scaling_fit`). Drawn like every figure of the suite (`perfkit.plots`): title, caption, gaps
labelled "not measured", never zeros."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np

from perfkit.plots import draw_not_measured, finish_figure, set_style
from perfkit.projection import finite_number
from perfkit.results import NotMeasured


def scaling_bars(scaling: dict | None, path, *, title: str, caption: str, not_measurable: str | None = None):
    """Left: 1-process, per-rank and summed tok/s. Right: per-rank GPU utilisation."""
    set_style()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.3))
    if not scaling:
        draw_not_measured(left, f"not measured:\n{not_measurable or 'no scaling data'}")
        draw_not_measured(right, "not measured")
        return finish_figure(fig, path, title, caption)
    labels = (
        ["1 process"] + [f"rank {r}" for r in scaling["per_rank_tok_per_s"]] + [f"{scaling['nproc']} summed"]
    )
    values = [
        scaling["single_tok_per_s"],
        *scaling["per_rank_tok_per_s"].values(),
        scaling["multi_tok_per_s"],
    ]
    colours = ["#757575"] + ["#90caf9"] * len(scaling["per_rank_tok_per_s"]) + ["#1565c0"]
    heights = [(finite_number(v) or 0.0) for v in values]
    bars = left.bar(labels, heights, color=colours)
    for bar, value in zip(bars, values):
        left.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height(),
            f"{value:,.0f}" if finite_number(value) is not None else "n/a",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    if finite_number(scaling["single_tok_per_s"]):
        ideal = scaling["single_tok_per_s"] * scaling["nproc"]
        left.axhline(ideal, color="#2e7d32", linestyle="--", linewidth=1, label=f"ideal {scaling['nproc']}x")
        left.legend(loc="upper left", fontsize=8)
    left.set_ylabel("steady-state tokens / s")
    factor, efficiency, imbalance = (
        finite_number(scaling.get(k)) for k in ("factor", "efficiency", "imbalance")
    )
    left.set_title(
        f"factor {factor:.2f}x, efficiency {efficiency:.0%}, imbalance {imbalance:.3f}"
        if None not in (factor, efficiency, imbalance)
        else "scaling"
    )
    utils = scaling.get("per_rank_gpu_util") or {}
    measured = {r: v for r, v in utils.items() if finite_number(v) is not None}
    if measured:
        right.bar([f"rank {r}" for r in measured], list(measured.values()), color="#2e7d32")
        right.axhline(70, color="#c62828", linestyle="--", linewidth=1, label="70 % target")
        right.set_ylim(0, 105)
        right.legend(fontsize=8)
        right.set_ylabel("NVML utilisation (%)")
    else:
        reason = next((m.reason for m in map(NotMeasured.found, utils.values()) if m), None)
        draw_not_measured(
            right, "GPU utilisation not measured" + (f"\n{textwrap.fill(reason, 45)}" if reason else "")
        )
    right.set_title("per-rank GPU utilisation")
    return finish_figure(fig, path, title, caption)


def scaling_fit(e2e: dict, path, *, target: float | None, labels: dict, title: str, caption: str):
    """Left: each side's chain wall at its two sizes (every round), the two-size fit, and the small run's own
    prediction of the large size (the fit check). Right: measured, projected and stage-wise factors, median
    with min-max over rounds; the one the criterion takes is drawn solid."""
    set_style()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.3, 1]})
    small, large = e2e["sizes"]
    colours = {"single": "#757575", "multi": "#1565c0"}
    xs = np.linspace(0, large * 1.1, 50)
    for side, data in e2e["sides"].items():
        colour = colours[side]
        for reads in (small, large):
            values = data["walls_s"][str(reads)]["values"]
            left.scatter([reads] * len(values), values, color=colour, s=28, zorder=3)
        fit = data["fit"]
        left.plot(
            xs,
            fit["fixed_s"] + fit["per_read_s"] * xs,
            color=colour,
            linewidth=1.2,
            label=f"{labels.get(side, side)}: {fit['fixed_s']:.1f} s + {fit['per_read_s'] * 1000:.3g} s/k reads",
        )
        predicted = [v for v in data["fit_check"]["predicted_large_s"] if finite_number(v) is not None]
        if predicted:
            dev = data["fit_check"]["deviation"]
            left.scatter(
                [large] * len(predicted),
                predicted,
                marker="x",
                color=colour,
                s=50,
                zorder=4,
                label=f"{labels.get(side, side)}: {small:,}-read run predicts {large:,}"
                + (f" ({dev:+.1%})" if finite_number(dev) is not None else ""),
            )
    left.set_xlim(0, large * 1.1)
    left.set_ylim(bottom=0)
    left.set_xlabel("reads in the chain run")
    left.set_ylabel("chain wall time, launch included (s)")
    left.legend(fontsize=7, loc="upper left")
    check = e2e["fit_check"]
    left.set_title(f"fit check {'holds' if check['holds'] else 'fails'} (tolerance {check['tolerance']:.0%})")
    bars = [
        ("measured at\n" + f"{large:,} reads", e2e["measured_factor"], "measured"),
        ("projected\n(two-size fit)", e2e["projected_factor"], "projected"),
        ("stage-wise\ncross-check", e2e["stagewise_factor"], None),
    ]
    top = max(
        [finite_number(f.get("max")) or finite_number(f.get("median")) or 0.0 for _, f, _ in bars]
        + [target or 0.0, 1.0]
    )
    for i, (label, factor, source) in enumerate(bars):
        value = finite_number(factor.get("median"))
        if value is None:
            right.text(
                i,
                top * 0.05,
                "not measured",
                ha="center",
                va="bottom",
                fontsize=8,
                color="#757575",
                rotation=90,
            )
            continue
        used = source == e2e["factor_source"]
        low, high = finite_number(factor.get("min")), finite_number(factor.get("max"))
        yerr = (
            [[max(value - low, 0.0)], [max(high - value, 0.0)]]
            if low is not None and high is not None
            else None
        )
        right.bar(
            [i],
            [value],
            yerr=yerr,
            capsize=6,
            width=0.6,
            color="#1565c0" if used else "#bbdefb",
            edgecolor="#1565c0",
            hatch=None if used else "//",
        )
        right.text(
            i,
            value,
            f"{value:.3f}x" + ("\n(criterion)" if used else ""),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    right.set_xticks(range(len(bars)))
    right.set_xticklabels([b[0] for b in bars], fontsize=8)
    if target is not None:
        right.axhline(target, color="#c62828", linestyle="--", linewidth=1, label=f"target >= {target:g}x")
        right.legend(fontsize=8, loc="lower right")
    right.set_ylim(0, top * 1.3)
    right.set_ylabel("1 rank wall / N ranks wall")
    right.set_title(
        f"{e2e['repeats']} round(s): median, min-max" if e2e["repeats"] > 1 else "1 round: no spread"
    )
    return finish_figure(fig, path, title, caption)
