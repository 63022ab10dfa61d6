"""perfkit.scaling_plots: 03's figures are written, titled, captioned and draw something (or say 'not measured')."""

import pytest
from test_plots import check  # first: it puts matplotlib on the Agg backend

from perfkit import criteria as crit
from perfkit import scaling_plots


def test_scaling_bars_measured_and_not(tmp_path):
    scaling = {
        "nproc": 2,
        "single_tok_per_s": 1000.0,
        "multi_tok_per_s": 1900.0,
        "factor": 1.9,
        "efficiency": 0.95,
        "imbalance": 1.02,
        "per_rank_tok_per_s": {"0": 960.0, "1": 940.0},
        "per_rank_gpu_util": {"0": 80.0, "1": crit.not_measured("x")},
    }
    fig = scaling_plots.scaling_bars(
        scaling, tmp_path / "s.png", title="Scaling", caption="summed over ranks, never averaged"
    )
    assert "1.90x" in fig.axes[0].get_title()
    check(fig, tmp_path / "s.png", "Scaling")
    fig = scaling_plots.scaling_bars(
        None, tmp_path / "n.png", title="Scaling", caption="summed over ranks", not_measurable="only 1 GPU"
    )
    assert any("only 1 GPU" in t.get_text() for t in fig.axes[0].texts)
    check(fig, tmp_path / "n.png", "Scaling")


@pytest.mark.parametrize("source", ["projected", "measured"])
def test_scaling_fit(tmp_path, source):
    def side(fixed, per_read, dev):
        return {
            "walls_s": {
                "1000": {"values": [fixed + per_read * 1000]},
                "3000": {"values": [fixed + per_read * 3000]},
            },
            "fit": {"fixed_s": fixed, "per_read_s": per_read},
            "fit_check": {"predicted_large_s": [(fixed + per_read * 3000) / (1 + dev)], "deviation": dev},
        }

    e2e = {
        "sizes": [1000, 3000],
        "repeats": 3,
        "sides": {"single": side(23.0, 0.0055, 0.01), "multi": side(27.0, 0.00275, -0.02)},
        "fit_check": {"holds": source == "projected", "tolerance": 0.03},
        "measured_factor": {"median": 1.12, "min": 1.1, "max": 1.15},
        "projected_factor": {"median": 1.9, "min": 1.85, "max": 1.93}
        if source == "projected"
        else {"median": crit.not_measured("fit falls"), "min": None, "max": None},
        "stagewise_factor": {"median": 1.88, "min": 1.88, "max": 1.88},
        "factor_source": source,
    }
    fig = scaling_plots.scaling_fit(
        e2e,
        tmp_path / "f.png",
        target=1.9,
        labels={"single": "1 GPU", "multi": "2 GPUs"},
        title="Fit",
        caption="two sizes per side, definitions here",
    )
    texts = " ".join(t.get_text() for t in fig.axes[1].texts)
    assert "(criterion)" in texts and ("not measured" in texts) == (source == "measured")
    check(fig, tmp_path / "f.png", "Fit")
