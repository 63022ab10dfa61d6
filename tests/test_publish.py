import json
import subprocess
import sys

import pytest

from perfkit.errors import UserError
from perfkit.publish import criteria_lines, publish, report_files

SUMMARY = {
    "verdict": "FAIL",
    "params_name": "h200x2",
    "criteria": [
        {
            "name": "packing_efficiency",
            "target": 0.9,
            "comparison": ">=",
            "measured": 0.9924,
            "unit": "fraction",
            "status": "PASS",
            "reason": None,
        },
        {
            "name": "two_gpu_scaling",
            "target": 1.9,
            "comparison": ">=",
            "measured": 1.866,
            "unit": "x",
            "status": "FAIL",
            "reason": None,
        },
        {
            "name": "gpu_utilisation",
            "target": 70,
            "comparison": ">=",
            "measured": None,
            "unit": "%",
            "status": "NOT MEASURED",
            "reason": "no NVIDIA driver",
        },
    ],
}


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    (run / "03_scaling" / "runs" / "chain-1" / "protein" / "checkpoints").mkdir(parents=True)
    (run / "03_scaling" / "runs" / "chain-1" / "summary.json").write_text("{}")
    (
        run / "03_scaling" / "runs" / "chain-1" / "protein" / "checkpoints" / "shard-r000-000000.npz"
    ).write_bytes(b"x" * 1000)
    (run / "03_scaling" / "metrics.json").write_text("{}")
    (run / "03_scaling" / "scaling.png").write_bytes(b"png")
    (run / "03_scaling.html").write_text("<html/>")
    (run / "03_scaling.ipynb").write_text("{}")
    (run / "sample.fa").write_text(">r\nACGT\n")
    (run / "summary.json").write_text(json.dumps(SUMMARY))
    (run / "suite.json").write_text(
        json.dumps({"seconds": 404, "notebooks": {"03_scaling": {"status": "complete", "seconds": 145.7}}})
    )
    return run


def test_a_report_holds_html_and_json_never_shards_fasta_or_pngs(run_dir, tmp_path):
    assert sorted(map(str, report_files(run_dir))) == [
        "03_scaling.html",
        "03_scaling/metrics.json",
        "suite.json",
        "summary.json",
    ]
    done = publish(
        run_dir, tmp_path / "ref", command="perfkit suite --params params/h200x2.yaml", commit="abc123"
    )
    ref = tmp_path / "ref"
    assert (ref / "COMMIT").read_text() == "abc123\n" and "params/h200x2.yaml" in (
        ref / "COMMAND"
    ).read_text()
    assert (
        (ref / "GPUS").exists()
        and not (ref / "03_scaling" / "runs").exists()
        and not (ref / "sample.fa").exists()
    )
    readme = (ref / "README.md").read_text()
    assert "verdict **FAIL**" in readme and "| two_gpu_scaling | >= 1.9 x | 1.866 | FAIL |" in readme
    assert "NOT MEASURED (no NVIDIA driver)" in readme and "03_scaling 146 s (complete)" in readme
    assert "- weights: seeded random" in readme and "mean nothing biologically" in readme
    assert done["files"] == 8 and "total 404 s" in readme


def test_a_run_made_in_parts_states_its_notebooks_seconds_not_the_last_parts_wall(run_dir):
    from perfkit.publish import readme

    (run_dir / "suite.json").write_text(
        json.dumps(
            {
                "seconds": 20,
                "notebooks": {
                    "01_baseline": {"status": "complete", "seconds": 200.0, "earlier_call": 1.0},
                    "03_scaling": {"status": "complete", "seconds": 10.0},
                },
            }
        )
    )
    text = readme(
        run_dir, command="perfkit suite ... --only 01; perfkit suite ... --only 03", commit="abc", gpus=[]
    )
    assert "2 calls, notebooks 210 s" in text and "total 20 s" not in text


def test_publishing_refuses_an_unfinished_run_or_a_used_folder(run_dir, tmp_path):
    (run_dir / "summary.json").unlink()
    with pytest.raises(UserError, match="not a finished suite run"):
        publish(run_dir, tmp_path / "ref", command="x")
    (run_dir / "summary.json").write_text(json.dumps(SUMMARY))
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "README.md").write_text("old report")
    with pytest.raises(UserError, match="already holds files"):
        publish(run_dir, tmp_path / "used", command="x")
    assert (tmp_path / "used" / "README.md").read_text() == "old report"


def test_criteria_lines_say_why_a_criterion_did_not_pass():
    lines = criteria_lines(SUMMARY)
    assert lines[0].strip().startswith("PASS  packing_efficiency: 0.9924 fraction (target >= 0.9)")
    assert "FAIL  two_gpu_scaling: 1.866 x (target >= 1.9)" in lines[1]
    assert lines[2].strip() == "NOT MEASURED  gpu_utilisation: – % (target >= 70) — no NVIDIA driver"


def test_the_cli_publishes_and_reports_user_errors_in_one_line(run_dir, tmp_path):
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "perfkit",
            "publish",
            str(run_dir),
            str(tmp_path / "ref"),
            "--command",
            "perfkit suite ...",
            "--commit",
            "abc",
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "published 8 files" in ok.stdout
    again = subprocess.run(
        [sys.executable, "-m", "perfkit", "publish", str(run_dir), str(tmp_path / "ref"), "--command", "x"],
        capture_output=True,
        text=True,
    )
    assert (
        again.returncode == 2
        and again.stderr.startswith("error: ")
        and len(again.stderr.strip().splitlines()) == 1
    )


def test_the_commit_and_gpus_are_the_ones_recorded_when_the_suite_ran(run_dir, tmp_path):
    suite = json.loads((run_dir / "suite.json").read_text())
    suite["environment"] = {
        "commit": "ran-at-this",
        "gpus": ["NVIDIA H200", "NVIDIA H200"],
        "driver": "580.1",
    }
    (run_dir / "suite.json").write_text(json.dumps(suite))
    publish(run_dir, tmp_path / "ref", command="x")
    assert (tmp_path / "ref" / "COMMIT").read_text() == "ran-at-this\n"
    assert (
        tmp_path / "ref" / "GPUS"
    ).read_text() == "0, NVIDIA H200, driver 580.1\n1, NVIDIA H200, driver 580.1\n"
