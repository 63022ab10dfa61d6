"""perfkit.suite.verdict: 06_summary's summary.json and criteria table."""

import json

from perfkit.suite import context
from perfkit.suite import verdict as suite_verdict
from suite_helpers import SMOKE, write_metrics, GOOD


def test_write_summary_structure(tmp_path):
    for stem, records in GOOD.items():
        write_metrics(tmp_path, stem, records)
    ctx = context.setup("06_summary", SMOKE, tmp_path)
    result = suite_verdict.write_summary(ctx)
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["verdict"] == result["verdict"] == "PASS"
    for row in data["criteria"]:
        assert {"name", "target", "measured", "unit", "status", "source"} <= set(row)
    assert list(suite_verdict.criteria_table(result).columns)[:4] == [
        "name",
        "comparison",
        "target",
        "measured",
    ]


def test_compare_to_shows_this_run_beside_an_earlier_one(tmp_path):
    import yaml

    from suite_helpers import write_params

    earlier = tmp_path / "earlier"
    for stem, records in GOOD.items():
        write_metrics(earlier, stem, records)
    ctx = context.setup("06_summary", SMOKE, earlier)
    suite_verdict.write_summary(ctx)
    assert suite_verdict.comparison(ctx, {}) is None  # no compare_to: nothing to show
    later = tmp_path / "later"
    for stem, records in GOOD.items():
        slower = {**records, "projected_hours_end_to_end": 9.5} if stem == "05_full_validation" else records
        write_metrics(later, stem, slower)
    params = write_params(tmp_path, compare_to=str(earlier))
    assert yaml.safe_load(params.read_text())["compare_to"] == str(earlier)
    ctx = context.setup("06_summary", params, later)
    result = suite_verdict.write_summary(ctx)
    table = suite_verdict.comparison(ctx, result).set_index("figure")
    assert table.loc["full_sample_time", "verdict"] == "regressed"  # 8.0 h -> 9.5 h, beyond the 5 % floor
    saved = json.loads((later / "06_summary" / "comparison.json").read_text())
    assert saved["regressed"] == ["full_sample_time"] and saved["a"] == str(earlier)


def test_the_criteria_table_reads_like_a_report():
    result = {
        "verdict": "FAIL",
        "criteria": [
            {
                "name": "full_sample_time",
                "comparison": "<",
                "target": 10.0,
                "measured": 0.41792100832301043,
                "unit": "h",
                "relative_margin": 0.958,
                "status": "PASS",
                "source": "05_full_validation",
                "reason": None,
                "description": "projected end-to-end time",
            },
            {
                "name": "equivalence_gate",
                "comparison": "==",
                "target": 1.0,
                "measured": 1.0,
                "unit": "",
                "relative_margin": -0.0,
                "status": "PASS",
                "source": "01_baseline",
                "reason": None,
                "description": "gate",
            },
            {
                "name": "gpu_utilisation",
                "comparison": ">=",
                "target": 70.0,
                "measured": None,
                "unit": "%",
                "relative_margin": None,
                "status": "NOT MEASURED",
                "source": "05_full_validation",
                "reason": "no NVIDIA driver: NVML utilisation cannot be read on this machine " * 3,
                "description": "NVML",
            },
            {
                "name": "two_gpu_scaling",
                "comparison": ">=",
                "target": 1.9,
                "measured": 1.37,
                "unit": "x",
                "relative_margin": -0.279,
                "status": "FAIL",
                "source": "03_scaling",
                "reason": None,
                "description": "x",
            },
        ],
    }
    table = suite_verdict.readable_criteria(result).set_index("criterion")
    assert (
        table.loc["full_sample_time", "measured"] == "0.4179 h"
        and table.loc["full_sample_time", "target"] == "< 10 h"
    )
    assert (
        table.loc["equivalence_gate", "measured"] == "true" and table.loc["equivalence_gate", "margin"] == "—"
    )
    assert table.loc["two_gpu_scaling", "margin"] == "-27.9%" and "what it measures" in table.columns
    assert table.loc["gpu_utilisation", "reason"] == result["criteria"][2]["reason"]  # whole, never cut
    assert suite_verdict.conclusion(result) == (
        "verdict FAIL: not every criterion passed; 2 PASS, "
        "1 FAIL (two_gpu_scaling), 1 NOT MEASURED (gpu_utilisation)"
    )
    html = suite_verdict.show_criteria(result).to_html()
    assert "pre-wrap" in html and result["criteria"][2]["reason"].strip() in html
