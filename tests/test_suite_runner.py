"""perfkit.suite.runner: the whole smoke suite through papermill, and a failing notebook turning the verdict to FAIL."""

import json
from pathlib import Path

import nbformat
import pytest

from conftest import WHOLE_TINY_SUITE
from perfkit.errors import UserError
from perfkit.records import notebook_status
from perfkit.suite import runner
from perfkit.suite.params import NOTEBOOKS

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "params" / "smoke.yaml"
PNGS = {
    "01_baseline": ["throughput.png"],
    "02_profiling": ["timeline.png", "utilisation.png", "windows.png", "kernels.png", "stages.png"],
    "03_scaling": ["scaling.png", "scaling_nucleotide.png", "scaling_end_to_end.png", "scaling_fit.png"],
    "04_tuning": ["tuning.png", "tuning_heatmap.png"],
    "05_full_validation": ["projection.png", "stages.png"],
    "06_summary": ["criteria.png"],
}


def test_select():
    assert runner.select(None) == list(NOTEBOOKS)
    assert runner.select(["03", "01_baseline"]) == ["01_baseline", "03_scaling", "06_summary"]
    with pytest.raises(UserError, match="unknown notebook"):
        runner.select(["07"])


def test_notebooks_are_stored_without_outputs_and_parametrised():
    for stem in NOTEBOOKS:
        nb = nbformat.read(str(ROOT / "notebooks" / f"{stem}.ipynb"), as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), stem
        assert "parameters" in code[0].metadata.get("tags", []), stem
        # defaults that do not depend on the folder papermill runs in (the checkout's smoke params)
        assert "params_file = None" in code[0].source and "run_dir = None" in code[0].source
        assert "context.setup(" in code[1].source and "namespace=globals()" in code[1].source
        for cell in code:
            if "records.record" in cell.source or "ctx.finish(" in cell.source:
                assert cell.source.startswith("# NBVAL_IGNORE_OUTPUT"), (stem, cell.source[:60])


def test_bad_params_fail_before_anything_runs(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text() + "\nunknown_section: 1\n")
    with pytest.raises(UserError, match="unknown_section"):
        runner.run_suite(bad, tmp_path / "run")
    assert not (tmp_path / "run" / "suite.json").exists()


@WHOLE_TINY_SUITE
@pytest.mark.slow
def test_whole_smoke_suite(whole_tiny_suite):
    """Every notebook through the runner, as `make demo` runs them, on the smoke params made tiny
    (suite_helpers.TINY: fewer reads, the same code path; nbval runs the notebooks on the smoke params)."""
    from suite_helpers import TINY

    rc, _, out = whole_tiny_suite
    status = json.loads((out / "suite.json").read_text())
    assert rc == 0, status
    reads = TINY["sample"]["reads"]
    assert (out / "sample.fa").exists() and json.loads((out / "sample.json").read_text())["stats"][
        "reads"
    ] == reads
    for stem in NOTEBOOKS:
        assert status["notebooks"][stem]["status"] == "complete"
        assert status["notebooks"][stem]["seconds"] > 0
        executed = out / f"{stem}.ipynb"
        assert executed.exists() and (out / f"{stem}.html").stat().st_size > 10_000
        assert notebook_status(executed) == {"executed": True, "failed": False, "error": None}
        for png in PNGS[stem]:
            assert (out / stem / png).stat().st_size > 5_000, (stem, png)
        metrics = json.loads((out / stem / "metrics.json").read_text())
        assert metrics["status"] == "complete"
    assert (out / "04_tuning" / "best_params.yaml").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "FAIL"  # CPU: GPU utilisation is NOT MEASURED, which never passes
    assert status["verdict"] == "FAIL"
    rows = {r["name"]: r for r in summary["criteria"]}
    assert set(rows) == {
        "full_sample_time",
        "gpu_utilisation",
        "packing_efficiency",
        "two_gpu_scaling",
        "speedup_vs_v1",
        "equivalence_gate",
        "prediction_agreement",
        "nt_equivalence_gate",
    }
    for row in rows.values():
        assert {"name", "target", "measured", "unit", "status", "source"} <= set(row)
        assert row["status"] in ("PASS", "FAIL", "NOT MEASURED")
        assert row["source"] in NOTEBOOKS
    assert rows["gpu_utilisation"]["status"] == "NOT MEASURED"
    assert rows["equivalence_gate"]["status"] == "PASS" and rows["nt_equivalence_gate"]["status"] == "PASS"
    assert rows["prediction_agreement"]["status"] == "PASS"  # fp32 on both sides on CPU: the same calls
    for name in ("full_sample_time", "packing_efficiency", "two_gpu_scaling", "speedup_vs_v1"):
        assert isinstance(rows[name]["measured"], float), name  # measured (pass or fail), not missing


@pytest.mark.slow
def test_failing_notebook_makes_the_verdict_fail(tmp_path):
    """01 fails (an unknown parameter is an error, not papermill's warning); 06 still runs and FAILs 01's criteria."""
    out = tmp_path / "run"
    rc = runner.run_suite(SMOKE, out, only=["01"], parameters={"01_baseline": {"bogus": 1}})
    assert rc != 0
    status = json.loads((out / "suite.json").read_text())["notebooks"]
    assert status["01_baseline"]["status"] == "failed" and "bogus" in status["01_baseline"]["error"]
    assert status["06_summary"]["status"] == "complete"
    assert status["03_scaling"]["status"] == "skipped"
    assert notebook_status(out / "01_baseline.ipynb")["failed"]
    assert (out / "01_baseline.html").exists()
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["name"]: r for r in summary["criteria"]}
    assert summary["verdict"] == "FAIL"
    for name in ("speedup_vs_v1", "equivalence_gate"):
        assert rows[name]["status"] == "FAIL" and "01_baseline failed" in rows[name]["reason"]
    assert rows["two_gpu_scaling"]["status"] == "FAIL"  # skipped notebook: FAIL, not NOT MEASURED


def test_notebooks_name_the_perfkit_kernel_and_the_runner_falls_back_to_python3(monkeypatch):
    """A kernel name of our own, so another Jupyter's `python3` is never taken; where only ipykernel's
    python3 exists (a GPU node's --target install) the suite still runs, on the same interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager

    for stem in NOTEBOOKS:
        notebook = nbformat.read(runner.NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4)
        assert notebook.metadata["kernelspec"]["name"] == runner.KERNEL_NAME == "perfkit"
    monkeypatch.setattr(
        KernelSpecManager, "find_kernel_specs", lambda self: {"perfkit": "/k/perfkit", "python3": "/k/p"}
    )
    assert runner.kernel_name() == "perfkit"
    monkeypatch.setattr(KernelSpecManager, "find_kernel_specs", lambda self: {"python3": "/k/p"})
    assert runner.kernel_name() == "python3"


def test_a_suite_run_in_parts_keeps_the_earlier_parts_status(tmp_path):
    """`--only 03` after `--only 01` in the same folder, same params and commit: 01 stays complete, not skipped;
    another commit or params file, or a notebook run again now, starts afresh."""
    params = tmp_path / "p.yaml"
    (tmp_path / "01_baseline.ipynb").write_text("{}")
    earlier = {
        "params_file": str(params),
        "started": 1.0,
        "environment": {"commit": "abc"},
        "notebooks": {
            "01_baseline": {"status": "complete", "seconds": 5.0, "error": None},
            "02_profiling": {"status": "complete", "seconds": 5.0, "error": None},
            "03_scaling": {"status": "skipped", "seconds": 0.0, "error": None},
        },
    }
    (tmp_path / "suite.json").write_text(json.dumps(earlier))
    kept = runner._earlier_statuses(tmp_path, params, "abc", skip=["03_scaling"])
    # 02 has no executed notebook in the folder: it is not claimed
    assert kept == {"01_baseline": {"status": "complete", "seconds": 5.0, "error": None, "earlier_call": 1.0}}
    assert runner._earlier_statuses(tmp_path, params, "abc", skip=["01_baseline"]) == {}
    assert runner._earlier_statuses(tmp_path, params, "def", skip=[]) == {}
    assert runner._earlier_statuses(tmp_path, tmp_path / "other.yaml", "abc", skip=[]) == {}
    assert runner._earlier_statuses(tmp_path, params, None, skip=[]) == {}
