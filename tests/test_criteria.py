"""Criteria: hand-computed margins, every status, and a verdict that never passes on missing data."""

import pytest

from perfkit.criteria import (
    FAIL,
    NOT_MEASURED,
    PASS,
    Criterion,
    count_by_status,
    criteria_from_params,
    evaluate,
    evaluate_all,
    lookup_metric,
    not_measured,
)
from perfkit.errors import UserError

METRICS = {
    "scaling": {"factor": 1.87},
    "throughput": {"tok_per_s": 76_600.0},
    "packing": {"token_utilisation": 0.895},
    "loader": {"wait_ms_p99": 0.6},
    "equivalence": {"passed": True},
    "gpu": {"gpu_utilization_percent": not_measured("no NVIDIA driver")},
    "nan_metric": float("nan"),
    "marked": {"value": 42.0, "measured": False},
    "wrapped": {"value": 3.0, "measured": True},
}


def crit(metric, comparison, target, name="c"):
    return Criterion(name=name, target=target, comparison=comparison, metric=metric)


def test_greater_equal_pass_margins():
    row = evaluate(crit("scaling.factor", ">=", 1.8), METRICS)
    assert row["status"] == PASS and row["measured"] == 1.87
    assert row["margin"] == pytest.approx(0.07)  # 1.87 - 1.8
    assert row["relative_margin"] == pytest.approx(0.07 / 1.8)


def test_greater_equal_fail_packing_just_under_target():
    row = evaluate(crit("packing.token_utilisation", ">=", 0.90), METRICS)
    assert row["status"] == FAIL
    assert row["margin"] == pytest.approx(-0.005)
    assert row["relative_margin"] == pytest.approx(-0.005 / 0.9)


def test_less_equal_margin_is_target_minus_measured():
    row = evaluate(crit("loader.wait_ms_p99", "<=", 1.0), METRICS)
    assert row["status"] == PASS and row["margin"] == pytest.approx(0.4)
    row = evaluate(crit("loader.wait_ms_p99", "<=", 0.5), METRICS)
    assert row["status"] == FAIL and row["margin"] == pytest.approx(-0.1)
    assert row["relative_margin"] == pytest.approx(-0.2)


def test_strict_comparisons_fail_on_equality():
    assert evaluate(crit("wrapped", ">", 3.0), METRICS)["status"] == FAIL
    assert evaluate(crit("wrapped", "<", 3.0), METRICS)["status"] == FAIL
    assert evaluate(crit("wrapped", ">", 2.0), METRICS)["status"] == PASS
    assert evaluate(crit("wrapped", "<", 4.0), METRICS)["margin"] == pytest.approx(1.0)


def test_bool_metric_with_equality():
    row = evaluate(crit("equivalence.passed", "==", True), METRICS)
    assert row["status"] == PASS and row["measured"] == 1.0 and row["margin"] == 0.0
    failed = evaluate(crit("equivalence.passed", "==", 1), {"equivalence": {"passed": False}})
    assert failed["status"] == FAIL and failed["margin"] == -1.0


def test_zero_target_has_no_relative_margin():
    row = evaluate(crit("x", "<=", 0), {"x": 0})
    assert row["status"] == PASS and row["relative_margin"] is None


@pytest.mark.parametrize(
    "metric, reason_part",
    [
        ("missing.path", "not found"),
        ("gpu.gpu_utilization_percent", "no NVIDIA driver"),  # the sampler's host-only marker
        ("gpu.gpu_utilization_percent.mean", "no NVIDIA driver"),  # below a marker
        ("nan_metric", "nan"),
        ("marked", "marked not measured"),
        ("scaling", "group"),
    ],
)
def test_not_measured_never_passes(metric, reason_part):
    row = evaluate(crit(metric, ">=", 0.0), METRICS)
    assert row["status"] == NOT_MEASURED
    assert row["measured"] is None and row["margin"] is None
    assert reason_part in row["reason"]


def test_none_and_unmeasurable_are_not_measured():
    assert evaluate(crit("x", ">=", 0), {"x": None})["status"] == NOT_MEASURED
    row = evaluate(crit("scaling.factor", ">=", 1.0), METRICS, measurable=False)
    assert row["status"] == NOT_MEASURED and row["measured"] is None


def test_flat_dotted_key_is_found():
    assert lookup_metric({"scaling.factor": 2.0}, "scaling.factor") == (2.0, None)


def test_verdict_pass_only_if_all_pass():
    criteria = [crit("scaling.factor", ">=", 1.8, "scaling"), crit("loader.wait_ms_p99", "<=", 1.0, "wait")]
    verdict, rows = evaluate_all(criteria, METRICS)
    assert verdict == PASS and [r["name"] for r in rows] == ["scaling", "wait"]

    verdict, rows = evaluate_all(
        criteria + [crit("packing.token_utilisation", ">=", 0.9, "packing")], METRICS
    )
    assert verdict == FAIL and count_by_status(rows) == {PASS: 2, FAIL: 1, NOT_MEASURED: 0}


def test_not_measured_makes_verdict_fail():
    criteria = [
        crit("scaling.factor", ">=", 1.8, "scaling"),
        crit("gpu.gpu_utilization_percent.mean", ">=", 80, "util"),
    ]
    verdict, rows = evaluate_all(criteria, METRICS)
    assert verdict == FAIL and count_by_status(rows) == {PASS: 1, FAIL: 0, NOT_MEASURED: 1}
    verdict, rows = evaluate_all(criteria[:1], METRICS, unmeasurable=["scaling"])
    assert verdict == FAIL and rows[0]["status"] == NOT_MEASURED


def test_no_criteria_is_an_error():
    with pytest.raises(UserError):
        evaluate_all([], METRICS)


def test_criteria_from_params_builds_and_keeps_fields():
    [c] = criteria_from_params(
        [
            {
                "name": "scaling",
                "target": 1.8,
                "comparison": ">=",
                "metric": "scaling.factor",
                "unit": "x",
                "source": "03_scaling",
                "description": "2-GPU speedup",
            }
        ]
    )
    assert c == Criterion("scaling", 1.8, ">=", "scaling.factor", "x", "03_scaling", "2-GPU speedup")
    row = evaluate(c, METRICS)
    assert (row["unit"], row["source"], row["target"]) == ("x", "03_scaling", 1.8)


@pytest.mark.parametrize(
    "item, message",
    [
        (
            {"name": "util", "target": 80, "comparison": "=>", "metric": "m"},
            "'util': unknown comparison '=>'",
        ),
        ({"name": "util", "target": 80, "comparison": ">="}, "lacks metric"),
        (
            {"name": "util", "target": 80, "comparison": ">=", "metric": "m", "tagret": 1},
            "unknown key(s) tagret",
        ),
        ({"name": "util", "target": "high", "comparison": ">=", "metric": "m"}, "not a finite number"),
        ({"name": "ok", "target": True, "comparison": ">=", "metric": "m"}, "needs comparison '=='"),
    ],
)
def test_criteria_from_params_rejects_bad_input(item, message):
    with pytest.raises(UserError) as err:
        criteria_from_params([item])
    assert message in str(err.value)
    assert " — " in str(err.value)  # carries a fix


def test_duplicate_names_rejected():
    item = {"name": "a", "target": 1, "comparison": ">=", "metric": "m"}
    with pytest.raises(UserError, match="duplicate"):
        criteria_from_params([item, dict(item)])


def test_wilson_interval_matches_the_textbook_and_stays_inside_0_1():
    from perfkit.criteria import wilson_interval

    lo, hi = wilson_interval(597, 603)  # 0.990 agreement on 603 reads
    assert lo == pytest.approx(0.97845, abs=1e-4) and hi == pytest.approx(0.99543, abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(0, 0) is None
