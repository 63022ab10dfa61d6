"""perfkit.compare: two runs side by side, verdicts from noise, exit 1 on a criterion regression."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import WHOLE_TINY_SUITE
from perfkit import compare
from perfkit.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "outputs" / "reference"


def criterion(name, measured, status, comparison=">=", metric=None):
    return {
        "name": name,
        "metric": metric or name,
        "measured": measured,
        "status": status,
        "comparison": comparison,
        "target": 1.0,
    }


def make_run(path: Path, criteria, records: dict, commit="abc") -> Path:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"verdict": "PASS", "criteria": criteria}))
    (path / "COMMIT").write_text(commit + "\n")
    for notebook, recs in records.items():
        (path / notebook).mkdir()
        (path / notebook / "metrics.json").write_text(json.dumps({"records": recs}))
    return path


def test_verdicts_follow_direction_and_noise(tmp_path):
    a = make_run(
        tmp_path / "a",
        [criterion("scaling", 1.96, "PASS"), criterion("hours", 0.5, "PASS", "<")],
        {
            "02_profiling": {
                "steady_tok_per_s": 100.0,
                "end_to_end_s": 30.0,
                "sequences": 1000,
                "mfu": 0.60,
                "top_kernel": "gemm",
                "loader_wait_fraction": 0.01,
            }
        },
    )
    b = make_run(
        tmp_path / "b",
        [criterion("scaling", 1.80, "FAIL"), criterion("hours", 0.40, "PASS", "<")],
        {
            "02_profiling": {
                "steady_tok_per_s": 103.0,
                "end_to_end_s": 36.0,
                "sequences": 2000,
                "mfu": 0.70,
                "top_kernel": "flash",
                "loader_wait_fraction": 0.0102,
            }
        },
    )
    rows = {
        (r.kind, r.figure): r for r in compare.compare_runs(compare.load_run(a), compare.load_run(b), 0.05)
    }
    assert rows[("criterion", "scaling")].verdict == "regressed"  # PASS -> FAIL
    assert rows[("criterion", "hours")].verdict == "improved"  # lower is better for "<"
    assert rows[("criterion", "hours")].change == pytest.approx(-0.2)
    assert rows[("02_profiling", "steady_tok_per_s")].verdict == "within noise"  # +3 % < 5 %
    assert rows[("02_profiling", "end_to_end_s")].verdict == "regressed"  # seconds: lower is better
    assert rows[("02_profiling", "mfu")].verdict == "improved"
    assert rows[("02_profiling", "sequences")].verdict == "changed"  # how much work: never judged
    assert ("02_profiling", "top_kernel") not in rows  # text records are not figures
    assert [r.figure for r in compare.regressions(list(rows.values()))] == ["scaling"]


def test_a_busy_share_is_judged_though_its_name_says_device(tmp_path):
    a = make_run(
        tmp_path / "a", [], {"05_full_validation": {"device_busy_fraction": 0.95, "baseline_device_count": 1}}
    )
    b = make_run(
        tmp_path / "b", [], {"05_full_validation": {"device_busy_fraction": 0.60, "baseline_device_count": 2}}
    )
    rows = {r.figure: r for r in compare.compare_runs(compare.load_run(a), compare.load_run(b), 0.05)}
    assert rows["device_busy_fraction"].verdict == "regressed"
    assert rows["baseline_device_count"].verdict == "changed"  # a setting: compared, never judged


def test_figures_recorded_by_one_run_only_are_named_not_dropped(tmp_path):
    a = make_run(tmp_path / "a", [], {"02_profiling": {"mfu": 0.6, "kernel_idle_share": 0.04}})
    b = make_run(tmp_path / "b", [], {"02_profiling": {"mfu": 0.6}, "04_tuning": {"best_tok_per_s": 9.0}})
    run_a, run_b = compare.load_run(a), compare.load_run(b)
    assert compare.one_sided(run_a, run_b) == {
        "only in A": ["02_profiling/kernel_idle_share"],
        "only in B": ["04_tuning/best_tok_per_s"],
    }
    text = compare.render(run_a, run_b, compare.compare_runs(run_a, run_b))
    assert (
        "only in A (1): 02_profiling/kernel_idle_share" in text
        and "only in B (1): 04_tuning/best_tok_per_s" in text
    )


def test_a_recorded_spread_widens_the_noise(tmp_path):
    spread = {"median": 1.90, "min": 1.70, "max": 2.10, "values": [1.7, 1.9, 2.1]}  # +-10.5 %
    a = make_run(
        tmp_path / "a", [criterion("two_gpu_scaling", 1.90, "PASS")], {"03_scaling": {"factor": spread}}
    )
    b = make_run(
        tmp_path / "b",
        [criterion("two_gpu_scaling", 1.92, "PASS")],
        {"03_scaling": {"factor": {**spread, "median": 1.75}}},
    )
    rows = {r.figure: r for r in compare.compare_runs(compare.load_run(a), compare.load_run(b), 0.05)}
    factor = rows["factor"]
    # the wider one
    assert factor.noise == pytest.approx(0.2 / 1.75) and factor.noise_source == "the runs' own spread"
    assert factor.change == pytest.approx(1.75 / 1.90 - 1) and factor.verdict == "within noise"
    assert rows["two_gpu_scaling"].noise_source == "noise floor"


def test_not_measured_and_missing_values_are_not_compared_as_numbers(tmp_path):
    not_measured = {"measured": False, "reason": "no NVIDIA driver"}
    a = make_run(tmp_path / "a", [criterion("gpu", not_measured, "NOT MEASURED")], {})
    b = make_run(tmp_path / "b", [criterion("gpu", 80.0, "PASS")], {})
    rows = compare.compare_runs(compare.load_run(a), compare.load_run(b))
    assert rows[0].change is None and rows[0].verdict == "improved"  # NOT MEASURED -> PASS
    assert "NOT MEASURED" in compare.table(rows).to_string()


def test_cli_exit_codes_and_json(tmp_path, capsys):
    a = make_run(tmp_path / "a", [criterion("scaling", 1.96, "PASS")], {})
    b = make_run(tmp_path / "b", [criterion("scaling", 1.50, "FAIL")], {})
    assert cli(["compare", str(a), str(a)]) == 0
    assert cli(["compare", str(a), str(b), "--json", str(tmp_path / "c.json")]) == 1
    out = capsys.readouterr().out
    assert "1 criterion regression(s) beyond noise: scaling" in out and "regressed" in out
    assert json.loads((tmp_path / "c.json").read_text())["rows"][0]["verdict"] == "regressed"
    assert cli(["compare", str(a), str(tmp_path / "nowhere")]) == 2
    assert cli(["compare", str(a), str(b), "--noise", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert "perfkit suite --out" in err[0] and "--noise" in err[1]


@pytest.mark.skipif(
    not (PUBLISHED / "2026-11-28-h200-x1").exists(), reason="published reports not in this copy"
)
def test_published_one_and_two_gpu_reports_give_a_readable_table(capsys):
    code = cli(["compare", str(PUBLISHED / "2026-11-28-h200-x1"), str(PUBLISHED / "2026-11-28-h200-x2")])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("A: ") and "commit 4652bec" in lines[0] and lines[1].startswith("B: ")
    header = next(line for line in lines if line.strip().startswith("figure"))
    assert all(word in header for word in ("from", "A", "B", "change", "noise", "verdict"))
    assert any("full_sample_time" in line and "improved" in line for line in lines)  # 0.87 h -> 0.47 h
    assert code == 1  # speedup_vs_v1 fell from 15.6 to 7.8 between those reports


@WHOLE_TINY_SUITE
@pytest.mark.slow
def test_two_smoke_runs_compare_without_a_regression(whole_tiny_suite, tmp_path):
    """The whole tiny smoke suite (conftest.whole_tiny_suite), and a copy of it in which 02 ran again
    (`--only 02`: the other notebooks keep their complete status, 06 judges again): two real runs of 02."""
    import shutil

    _, params, whole = whole_tiny_suite
    again = tmp_path / "again"
    shutil.copytree(whole, again)
    # the copy's other notebooks stay complete only under the same params and code: pin the commit the whole
    # run recorded (a checkout that turned dirty since, or none at all, would read as other code)
    status = json.loads((again / "suite.json").read_text())
    commit = status["environment"].get("commit") or "whole-tiny-suite"
    status["environment"]["commit"] = commit
    (again / "suite.json").write_text(json.dumps(status))
    only_02 = ["suite", "--params", str(params), "--out", str(again), "--only", "02"]
    env = {**os.environ, "PERFKIT_COMMIT": commit}
    subprocess.run(
        [sys.executable, "-m", "perfkit", *only_02], check=True, capture_output=True, cwd=tmp_path, env=env
    )
    kept = json.loads((again / "suite.json").read_text())["notebooks"]
    assert all(
        kept[stem].get("earlier_call")
        for stem in ("01_baseline", "03_scaling", "04_tuning", "05_full_validation")
    )
    runs = [whole, again]
    done = subprocess.run(
        [sys.executable, "-m", "perfkit", "compare", *map(str, runs)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr  # the same code twice: no criterion regressed
    assert "steady_tok_per_s" in done.stdout and "02_profiling" in done.stdout
    assert "no criterion regressed beyond noise" in done.stdout


def test_a_record_renamed_since_a_report_was_published_is_compared_under_its_new_name(tmp_path):
    old = make_run(tmp_path / "old", [], {"05_full_validation": {"projected_hours_full_sample": 2.0}})
    new = make_run(tmp_path / "new", [], {"05_full_validation": {"projected_hours_protein_stage": 1.0}})
    rows = compare.compare_runs(compare.load_run(old), compare.load_run(new))
    names = [row.figure for row in rows]
    assert "projected_hours_protein_stage" in names and "projected_hours_full_sample" not in names
    row = rows[names.index("projected_hours_protein_stage")]
    assert (row.a, row.b, row.verdict) == (2.0, 1.0, "improved")


def test_a_repeated_figure_uses_its_recorded_min_max_as_noise(tmp_path):
    # 01 records the median speed-up and, beside it, `<name>_spread` over its interleaved rounds
    spread = {"median": 5.0, "min": 4.0, "max": 6.0, "values": [4.0, 5.0, 6.0], "repeats": 3}  # +-20 %
    a = make_run(
        tmp_path / "a",
        [criterion("speedup_vs_v1", 5.0, "PASS", metric="speedup_chain_v2_over_v1")],
        {"01_baseline": {"speedup_chain_v2_over_v1": 5.0, "speedup_chain_v2_over_v1_spread": spread}},
    )
    b = make_run(
        tmp_path / "b",
        [criterion("speedup_vs_v1", 4.6, "PASS", metric="speedup_chain_v2_over_v1")],
        {"01_baseline": {"speedup_chain_v2_over_v1": 4.6}},
    )
    rows = {r.figure: r for r in compare.compare_runs(compare.load_run(a), compare.load_run(b), 0.05)}
    assert (
        rows["speedup_vs_v1"].noise == pytest.approx(0.2) and rows["speedup_vs_v1"].verdict == "within noise"
    )
    assert rows["speedup_chain_v2_over_v1"].noise_source == "the runs' own spread"
