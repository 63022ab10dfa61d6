"""perfkit.utilisation: a chain's GPU utilisation, time-weighted over stages and ranks, and projected."""

import pandas as pd
import pytest

from perfkit import criteria as crit
from perfkit import utilisation
from perfkit.suite import context, validation
from suite_helpers import fake_summary
from test_projection import fake_chain


def test_gpu_utilisation_is_time_weighted_over_stages_and_ranks():
    chain = {
        "ranks": 2,
        "stages_s": {
            "launch": 10.0,
            "planning": 2.0,
            "nucleotide_embedding": 20.0,
            "protein_embedding": 60.0,
            "merge": 4.0,
            "classifier": 3.0,
            "consensus": 1.0,
        },
        "stage_started_unix": {
            "planning": 1000.0,
            "nucleotide_embedding": 1002.0,
            "protein_embedding": 1022.0,
            "merge": 1082.0,
            "classifier": 1082.0,
            "consensus": 1082.0,
        },
    }

    def at(*pairs):
        return [{"timestamp": t, "gpu_utilization_percent": u} for t, u in pairs]

    # rank 0 sampled everywhere: launch (before and after the spans) 0 %, planning 10, nucleotide 60, protein 95,
    # scoring 40; rank 1 only in the protein stage (80): its nucleotide stage from that stage's own sampler (30),
    # its launch, planning and scoring counted at 0 %
    samples = {
        0: at(
            (995.0, 0.0),
            (1001.0, 10.0),
            (1005.0, 50.0),
            (1015.0, 70.0),
            (1030.0, 90.0),
            (1050.0, 100.0),
            (1085.0, 40.0),
            (1091.0, 0.0),
        ),
        1: at((1030.0, 80.0)) + [{"timestamp": 1040.0}],
    }  # a sample without a GPU reading counts nothing

    def loop(*means):
        return {
            str(r): {"gpu_utilization_percent": {"mean": m, "measured": True}} for r, m in enumerate(means)
        }

    stages = {
        "nucleotide_embedding": {"gpu": loop(55.0, 30.0)},
        "protein_embedding": {"gpu": loop(90.0, 80.0)},
    }
    out = utilisation.chain_gpu_utilisation(chain, stages, samples)
    rank0 = 0 * 10 + 10 * 2 + 60 * 20 + 95 * 60 + 40 * 8
    rank1 = 30 * 20 + 80 * 60
    # 63.2 %, where the protein loop alone says 85 %
    assert out["value"] == pytest.approx((rank0 + rank1) / 200)
    assert out["share_counted_at_zero"] == pytest.approx(20 / 200)
    rows = pd.DataFrame(out["table"]).set_index(["rank", "stage"])
    assert rows.loc[(0, "launch"), "samples"] == 2 and rows.loc[(0, "scoring"), "seconds"] == pytest.approx(
        8.0
    )
    assert rows.loc[(1, "nucleotide_embedding"), "source"].startswith("the stage's own sampler")
    assert context.gpu_util_mean({"gpu": stages["protein_embedding"]["gpu"]}) == pytest.approx(85.0)
    # without a driver: no reading anywhere -> NOT MEASURED, never a number
    host = {"gpu_utilization_percent": crit.not_measured("no NVIDIA driver")}
    none = utilisation.chain_gpu_utilisation(
        chain,
        {"protein_embedding": {"gpu": {"0": host, "1": host}}},
        {0: [{"timestamp": 1030.0}], 1: []},
        note="no NVIDIA driver: host only",
    )
    assert none["value"]["measured"] is False and "no NVIDIA driver" in none["value"]["reason"]
    headline = validation.full_validation_headline(
        {
            "summary": fake_summary(gpu=loop(90.0, 80.0)),
            "gpu_util": out,
            "projection": {"hours": 1.0, "capped": False},
            "end_to_end": {"hours": 2.0, "bottleneck_stage": "protein_embedding"},
            "chain": fake_chain(),
        }
    )
    assert (
        headline["gpu_util_end_to_end"] == pytest.approx(63.2) and headline["gpu_util_protein_loop"] == 85.0
    )


def test_full_sample_utilisation_counts_fixed_seconds_at_zero_and_scales_the_rest():
    chain = {
        "ranks": 2,
        "stages_s": {
            "launch": 10.0,
            "planning": 2.0,
            "nucleotide_embedding": 20.0,
            "protein_embedding": 60.0,
            "merge": 4.0,
            "classifier": 3.0,
            "consensus": 1.0,
        },
    }
    table = [
        {"rank": r, "stage": stage, "seconds": chain["stages_s"].get(stage, 8.0), "util_percent": u}
        for r, utils in ((0, (0.0, 10.0, 60.0, 95.0, 40.0)), (1, (0.0, 0.0, 35.0, 80.0, 0.0)))
        for stage, u in zip(
            ("launch", "planning", "nucleotide_embedding", "protein_embedding", "scoring"), utils
        )
    ]
    measured = {"value": 63.2, "table": table}
    # 10x the run's reads: launch fixed; planning and scoring linear; embedding stages fixed + growing part
    rows = [
        ("launch", 10.0, 10.0),
        ("planning", 0.0, 20.0),
        ("nucleotide_embedding", 5.0, 5.0 + 150.0),
        ("protein_embedding", 2.0, 2.0 + 580.0),
        ("merge", 0.0, 40.0),
        ("classifier", 0.0, 30.0),
        ("consensus", 0.0, 10.0),
    ]
    e2e = {
        "full_sample_reads": 1000,
        "stages": [{"stage": st, "fixed_s": f, "projected_h": total / 3600} for st, f, total in rows],
    }

    def loop(*means):
        return {
            str(r): {"gpu_utilization_percent": {"mean": m, "measured": True}} for r, m in enumerate(means)
        }

    stages = {
        "nucleotide_embedding": {"gpu": loop(55.0, 30.0)},
        "protein_embedding": {"gpu": loop(90.0, None)},
    }
    # rank 1: chain sampler
    stages["protein_embedding"]["gpu"]["1"]["gpu_utilization_percent"]["measured"] = False
    out = utilisation.project_gpu_utilisation(measured, e2e, stages)
    rank0 = 10 * 20 + 55 * 150 + 90 * 580 + 40 * 80
    rank1 = 0 * 20 + 30 * 150 + 80 * 580 + 0 * 80
    total = 2 * sum(total for _, _, total in rows)
    assert out["value"] == pytest.approx((rank0 + rank1) / total)
    assert out["fixed_share"] == pytest.approx(2 * 17.0 / total) and out["full_sample_reads"] == 1000
    by = {(r["rank"], r["stage"]): r for r in out["table"]}
    assert by[(1, "protein_embedding")]["source"] == "chain sampler over the stage"
    assert by[(0, "nucleotide_embedding")]["source"].startswith("the stage's own sampler")
    assert by[(0, "launch")]["util_percent"] == 0.0 and by[(0, "launch")]["growing_s"] == 0.0
    # without a measured figure the projection is NOT MEASURED too, never a number
    none = utilisation.project_gpu_utilisation(
        {"value": crit.not_measured("no NVIDIA driver"), "table": []}, e2e, stages
    )
    assert none["value"]["measured"] is False
