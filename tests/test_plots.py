"""perfkit.plots: every figure is written, titled, captioned and has something drawn (or says 'not measured')."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from perfkit import plots


def check(fig, path, title_part):
    assert path.exists() and path.stat().st_size > 5_000
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert title_part in fig._suptitle.get_text()
    texts = " ".join(t.get_text() for t in fig.texts)
    assert len(texts) > len(title_part) + 8  # the caption: how it was measured
    drawn = [
        ax for ax in fig.axes if ax.get_visible() and (ax.lines or ax.patches or ax.collections or ax.texts)
    ]
    assert drawn, "no axis has anything drawn"
    plt.close(fig)
    return drawn


def test_throughput_bars(tmp_path):
    table = pd.DataFrame(
        {
            "variant": ["v1 fp32", "v1 fp16", "v2 padded", "v2 packed"],
            "measured": [True, False, True, True],
            "tok_per_s": [1000.0, np.nan, 3000.0, 5000.0],
            "token_utilisation": [0.98, np.nan, 0.85, 0.99],
            "padding_waste": [0.01, np.nan, 0.2, 0.0],
            "note": ["", "GPU only", "", ""],
        }
    )
    fig = plots.throughput_bars(
        table, tmp_path / "t.png", title="Throughput X", caption="how it was measured here"
    )
    left = fig.axes[0]
    assert any("not measured" in t.get_text() for t in left.texts)
    check(fig, tmp_path / "t.png", "Throughput X")


def batches(n=12):
    return pd.DataFrame(
        {
            "t_arrive_s": np.arange(n) * 0.5,
            "loader_wait_s": np.full(n, 0.002),
            "device_s": np.full(n, 0.45),
            "real_tokens": np.full(n, 4000),
            "packing_efficiency": np.linspace(0.9, 1.0, n),
        }
    )


def windows(n=4, ranks=(0,)):
    return pd.DataFrame(
        [
            {
                "rank": r,
                "window": i,
                "start_s": i * 2.0,
                "seconds": 2.0,
                "tok_per_s": 1000.0 + i,
                "batches": 4,
                "loader_wait_share": 0.01,
                "device_busy_share": 0.95,
                "packing_efficiency": 0.99,
                "verdict": "device-bound",
            }
            for r in ranks
            for i in range(n)
        ]
    )


def test_batch_timeline_and_empty(tmp_path):
    fig = plots.batch_timeline(
        batches(), tmp_path / "a.png", title="Timeline", caption="one point per batch, telemetry"
    )
    assert len(check(fig, tmp_path / "a.png", "Timeline")) == 4
    fig = plots.batch_timeline(
        pd.DataFrame(), tmp_path / "b.png", title="Timeline", caption="one point per batch"
    )
    check(fig, tmp_path / "b.png", "Timeline")


@pytest.mark.parametrize("with_gpu", [True, False])
def test_utilisation_timeline(tmp_path, with_gpu):
    t = np.arange(10.0)
    samples = pd.DataFrame({"t_s": t, "host_cpu_percent": np.full(10, 90.0), "physical_index": 1})
    if with_gpu:
        samples["gpu_utilization_percent"] = np.full(10, 75.0)
    fig = plots.utilisation_timeline(
        samples,
        windows(),
        tmp_path / "u.png",
        title="Utilisation",
        caption="NVML utilisation, nvitop 1 s samples, physical GPU 1",
    )
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert any(("physical GPU 1" if with_gpu else "NOT MEASURED") in label for label in labels)
    check(fig, tmp_path / "u.png", "Utilisation")


def test_window_verdicts_and_kernels(tmp_path):
    fig = plots.window_verdicts(
        windows(ranks=(0, 1)), tmp_path / "w.png", title="Verdict", caption="shares of wall"
    )
    assert any(t.get_text() == "device-bound" for t in fig.axes[0].texts)
    check(fig, tmp_path / "w.png", "Verdict")
    table = pd.DataFrame(
        {
            "name": ["aten::addmm", "aten::" + "x" * 90],
            "calls": [4, 2],
            "self_ms": [10.0, 5.0],
            "share": [0.66, 0.34],
            "total_ms": [12.0, 5.0],
        }
    )
    fig = plots.top_kernels(table, tmp_path / "k.png", title="Top ops", caption="torch.profiler self time")
    check(fig, tmp_path / "k.png", "Top ops")


def test_tuning_lines_and_heatmap(tmp_path):
    table = pd.DataFrame(
        {
            "token_budget": [4096, 2048, 8192, 4096],
            "num_workers": [1, 1, 1, 0],
            "status": ["ok", "ok", "error", "ok"],
            "tok_per_s": [10.0, 8.0, None, 12.0],
        }
    )
    fig = plots.tuning_lines(
        table,
        ["token_budget", "num_workers"],
        tmp_path / "t.png",
        best={"token_budget": 4096, "num_workers": 0},
        title="Tuning",
        caption="capped runs",
    )
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["2048", "4096", "8192"]  # numeric order, not order of appearance
    check(fig, tmp_path / "t.png", "Tuning")
    fig = plots.tuning_heatmap(
        table, "token_budget", "num_workers", tmp_path / "h.png", title="Heat", caption="mean steady tok/s"
    )
    check(fig, tmp_path / "h.png", "Heat")


def test_projection_with_and_without_error(tmp_path):
    projection = {
        "window_s": 2.0,
        "steady_tok_per_s": 1000.0,
        "hours": 8.0,
        "hours_low": 7.5,
        "hours_high": 8.6,
        "relative_error": 0.04,
        "full_sample_reads": 6_000_000,
        "tokens_per_read": 40.5,
    }
    fig = plots.projection(
        windows(),
        projection,
        tmp_path / "p.png",
        target_hours=10.0,
        title="Projection",
        caption="method stated",
    )
    assert any("8.00 h" in t.get_text() for t in fig.axes[1].texts)
    check(fig, tmp_path / "p.png", "Projection")
    fig = plots.projection(
        pd.DataFrame(),
        {**projection, "hours": None, "error_note": "no steady rate"},
        tmp_path / "q.png",
        target_hours=None,
        title="Projection",
        caption="method stated",
    )
    check(fig, tmp_path / "q.png", "Projection")


def test_criteria_margins(tmp_path):
    rows = pd.DataFrame(
        {
            "name": ["time", "util", "gate"],
            "comparison": ["<", ">=", "=="],
            "target": [10.0, 70.0, 1.0],
            "unit": ["h", "%", ""],
            "measured": [8.0, None, None],
            "relative_margin": [0.2, None, None],
            "status": ["PASS", "NOT MEASURED", "FAIL"],
        }
    )
    fig = plots.criteria_margins(
        rows, tmp_path / "c.png", title="Criteria", caption="relative margin to target"
    )
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[2] == "gate (== 1)"
    check(fig, tmp_path / "c.png", "Criteria")
