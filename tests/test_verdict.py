"""perfkit.verdict: a run folder's criteria verdict."""

import json

import nbformat

from perfkit import criteria as crit
from perfkit import verdict
from perfkit.suite import params as suite_params
from suite_helpers import SMOKE, write_metrics, GOOD


def test_evaluate_run_passes_only_when_every_criterion_passes(tmp_path):
    params = suite_params.load_suite_params(SMOKE)
    for stem, records in GOOD.items():
        write_metrics(tmp_path, stem, records)
    result = verdict.evaluate_run(tmp_path, params)
    assert result["verdict"] == "PASS", result["criteria"]
    assert {r["source"] for r in result["criteria"]} == {"01_baseline", "03_scaling", "05_full_validation"}
    write_metrics(
        tmp_path,
        "05_full_validation",
        {**GOOD["05_full_validation"], "gpu_util_full_sample": crit.not_measured("no NVIDIA driver")},
    )
    result = verdict.evaluate_run(tmp_path, params)
    status = {r["name"]: r["status"] for r in result["criteria"]}
    assert result["verdict"] == "FAIL" and status["gpu_utilisation"] == "NOT MEASURED"
    assert status["full_sample_time"] == "PASS"


def test_missing_or_failed_notebook_makes_its_criteria_fail(tmp_path):
    params = suite_params.load_suite_params(SMOKE)
    for stem, records in GOOD.items():
        if stem != "03_scaling":
            write_metrics(tmp_path, stem, records)
    # 01 has an executed notebook with an error: it is the authority, its metrics.json is not trusted
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1/0")
    cell.outputs = [
        nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=[])
    ]
    nb.cells = [cell]
    nbformat.write(nb, str(tmp_path / "01_baseline.ipynb"))
    result = verdict.evaluate_run(tmp_path, params)
    rows = {r["name"]: r for r in result["criteria"]}
    assert result["verdict"] == "FAIL"
    for name in ("speedup_vs_v1", "equivalence_gate"):
        assert rows[name]["status"] == "FAIL" and "01_baseline failed" in rows[name]["reason"]
    assert rows["two_gpu_scaling"]["status"] == "FAIL" and "missing" in rows["two_gpu_scaling"]["reason"]
    assert rows["full_sample_time"]["status"] == "PASS"
    assert result["notebooks"]["01_baseline"]["from"] == "01_baseline.ipynb"  # the failure comes from it
    # suite.json saying a notebook failed wins over a metrics.json left behind
    (tmp_path / "suite.json").write_text(
        json.dumps({"notebooks": {"05_full_validation": {"status": "failed", "error": "kernel died"}}})
    )
    rows = {r["name"]: r for r in verdict.evaluate_run(tmp_path, params)["criteria"]}
    assert (
        rows["full_sample_time"]["status"] == "FAIL" and "kernel died" in rows["full_sample_time"]["reason"]
    )


def test_a_repeated_criterion_carries_its_spread(tmp_path):
    params = suite_params.load_suite_params(SMOKE)
    for stem, records in GOOD.items():
        write_metrics(tmp_path, stem, records)
    spread = {"median": 1.95, "min": 1.91, "max": 1.97, "values": [1.91, 1.95, 1.97], "repeats": 3}
    write_metrics(
        tmp_path,
        "03_scaling",
        {"scaling_factor_end_to_end": 1.95, "scaling_factor_end_to_end_spread": spread},
    )
    rows = {r["name"]: r for r in verdict.evaluate_run(tmp_path, params)["criteria"]}
    assert rows["two_gpu_scaling"]["spread"] == {"min": 1.91, "max": 1.97, "repeats": 3}
    assert rows["two_gpu_scaling"]["metric"] == "scaling_factor_end_to_end"
    assert rows["full_sample_time"]["spread"] is None  # one run: no spread, never an invented one


def test_the_agreement_criterion_carries_its_confidence_interval(tmp_path):
    params = suite_params.load_suite_params(SMOKE)
    for stem, records in GOOD.items():
        write_metrics(tmp_path, stem, records)
    low, high = crit.wilson_interval(597, 603)
    write_metrics(
        tmp_path,
        "01_baseline",
        {
            **GOOD["01_baseline"],
            "prediction_agreement_v1_v2": 597 / 603,
            "prediction_agreement_v1_v2_ci95": [low, high],
        },
    )
    result = verdict.evaluate_run(tmp_path, params)
    row = {r["name"]: r for r in result["criteria"]}["prediction_agreement"]
    assert row["spread"] == {"min": low, "max": high, "interval": "95 % CI"} and low < 0.99 < high
    from perfkit.suite.verdict import readable_criteria

    shown = readable_criteria(result).set_index("criterion").loc["prediction_agreement", "spread"]
    assert "95 % CI" in shown and "repeats" not in shown


def test_metrics_json_is_the_single_record_even_beside_an_executed_notebook(tmp_path):
    for stem, records in GOOD.items():
        write_metrics(tmp_path, stem, records)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]  # ran to its end, no error: its values are metrics.json's
    nbformat.write(nb, str(tmp_path / "01_baseline.ipynb"))
    run = verdict.collect_run(tmp_path)
    assert (
        run["01_baseline"]["status"] == "complete"
        and run["01_baseline"]["from"] == "01_baseline/metrics.json"
    )
    assert run["01_baseline"]["records"] == GOOD["01_baseline"]
