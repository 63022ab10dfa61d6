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
    assert list(suite_verdict.criteria_table(result).columns)[:4] == ["name", "comparison", "target", "measured"]
