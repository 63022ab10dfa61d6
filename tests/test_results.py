"""perfkit.results: typed results keep summary.json's keys both ways, and "not measured" is a type."""

import json

import pandas as pd

from perfkit import criteria as crit
from perfkit.scaling_maths import rank_scaling
from perfkit.results import NotMeasured, RankThroughput, RunSummary, Throughput, as_summary, number_or_none
from perfkit.summary import build_run_summary


def _batches(rank, n=6):
    return [
        {
            "kind": "batch",
            "rank": rank,
            "stage": "embed",
            "batch": i,
            "t_arrive_s": float(i),
            "loader_wait_s": 0.0,
            "host_s": 0.01,
            "device_s": 0.5,
            "sequences": 10,
            "real_tokens": 900 + 10 * rank,
            "slot_tokens": 950,
            "budget_tokens": 1000,
            "queue_depth": None,
        }
        for i in range(n)
    ]


def _summary(ranks=1, wall=6.0):
    records = pd.DataFrame([row for r in range(ranks) for row in _batches(r)])
    return json.loads(
        json.dumps(
            build_run_summary(
                records, config={}, environment={}, wall_s=wall, stage="embed", warmup_batches=2
            )
        )
    )


def test_not_measured_round_trips_through_its_json_marker():
    marker = NotMeasured("no NVIDIA driver")
    assert marker.to_json() == crit.not_measured("no NVIDIA driver")
    assert NotMeasured.found(marker.to_json()) == marker and NotMeasured.found(marker) is marker
    assert (
        NotMeasured.found({"value": 3.0}) is None
        and NotMeasured.found(0.0) is None
        and NotMeasured.found(None) is None
    )
    assert number_or_none(marker) is None and number_or_none(True) is None and number_or_none(2) == 2.0


def test_summary_json_keys_are_the_typed_fields_in_order():
    data = _summary(ranks=2)
    assert list(data["throughput"]) == [f for f in Throughput.__dataclass_fields__]
    assert list(data["per_rank"]["0"]) == [f for f in RankThroughput.__dataclass_fields__]
    run = RunSummary.from_json(data)
    assert run.throughput.ranks == 2 and set(run.per_rank) == {0, 1}
    assert run.throughput.to_json() == data["throughput"]  # and back, unchanged
    assert run.throughput.steady_tok_per_s == sum(r.steady_tok_per_s for r in run.per_rank.values())
    assert as_summary(run) is run and as_summary(data).throughput == run.throughput


def test_an_older_file_without_a_key_reads_it_as_none():
    data = _summary()
    del data["throughput"]["mfu_spec"]
    assert RunSummary.from_json(data).throughput.mfu_spec is None


def test_scaling_is_typed_and_writes_the_old_keys():
    one, two = _summary(ranks=1, wall=6.0), _summary(ranks=2, wall=6.0)
    scaling = rank_scaling(one, two)
    assert scaling.factor == two["throughput"]["steady_tok_per_s"] / one["throughput"]["steady_tok_per_s"]
    assert isinstance(scaling.wall_factor, NotMeasured)  # 60 vs 120 sequences: not the same work
    written = scaling.to_json()
    assert written["wall_factor"]["measured"] is False
    assert set(written) == {
        "ranks",
        "factor",
        "wall_factor",
        "efficiency",
        "imbalance",
        "planned_token_imbalance",
        "single_steady_tok_per_s",
        "multi_steady_tok_per_s",
        "per_rank",
    }
    # no sampler: marked, never 0
    assert written["per_rank"]["1"]["gpu_utilization_mean"]["measured"] is False
