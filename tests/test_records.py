"""Records: glue in a real papermill-executed notebook, read back values, types and status."""

import math
import textwrap

import matplotlib
import nbformat
import numpy as np
import pandas as pd
import pytest

from perfkit.records import (
    FigureRecord,
    decode_value,
    notebook_status,
    read_records,
    read_run_folder,
    record,
    record_figure,
    to_jsonable,
)

RECORDING_CELLS = [
    """
    import numpy as np, pandas as pd
    import matplotlib.pyplot as plt
    from perfkit.records import record, record_figure
    """,
    """
    results = {
        "int64": record("int64", np.int64(7)),
        "float32": record("float32", np.float32(0.5)),
        "bool_": record("bool_", np.bool_(True)),
        "array": record("array", np.arange(3, dtype=np.int32)),
        "matrix": record("matrix", np.array([[1.5, np.nan], [np.inf, 2.0]])),
        "none": record("none", None),
        "nan": record("nan", float("nan")),
        "text": record("text", "hello"),
        "nested": record("nested", {"a": {"b": [np.float64(1.25), None, (1, 2)]}, 3: np.int8(4)}),
        "frame": record("frame", pd.DataFrame({"n": [1, 2, 3], "x": [0.5, np.nan, 2.0], "s": ["a", "b", "c"]})),
    }
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    results["figure"] = record_figure("figure", fig)
    record("glued_inside_kernel", all(results.values()))
    """,
]


def write_notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent(src)) for src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """Execute one recording and one failing notebook with papermill (~5-8 s)."""
    import papermill as pm

    src = tmp_path_factory.mktemp("src")
    out = tmp_path_factory.mktemp("run")
    write_notebook(src / "recording.ipynb", RECORDING_CELLS)
    write_notebook(src / "failing.ipynb", ["record_me = 1", 'raise ValueError("boom")', "after = 2"])
    pm.execute_notebook(
        str(src / "recording.ipynb"),
        str(out / "recording.ipynb"),
        kernel_name="python3",
        progress_bar=False,
        cwd=str(out),
    )
    with pytest.raises(pm.PapermillExecutionError):
        pm.execute_notebook(
            str(src / "failing.ipynb"),
            str(out / "failing.ipynb"),
            kernel_name="python3",
            progress_bar=False,
            cwd=str(out),
        )
    return out


def test_values_and_types_round_trip(run_folder):
    records = read_records(run_folder / "recording.ipynb")
    assert records["glued_inside_kernel"] is True
    assert records["int64"] == 7 and type(records["int64"]) is int
    assert records["float32"] == 0.5 and type(records["float32"]) is float
    assert records["bool_"] is True
    assert records["array"] == [0, 1, 2]
    assert records["matrix"] == [[1.5, None], [None, 2.0]]
    assert records["none"] is None and "none" in records
    assert records["nan"] is None
    assert records["text"] == "hello"
    assert records["nested"] == {"a": {"b": [1.25, None, [1, 2]]}, "3": 4}


def test_dataframe_comes_back_as_dataframe(run_folder):
    frame = read_records(run_folder / "recording.ipynb")["frame"]
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["n", "x", "s"]
    assert frame["n"].tolist() == [1, 2, 3]
    assert frame["x"].iloc[0] == 0.5 and math.isnan(frame["x"].iloc[1])
    assert frame["s"].tolist() == ["a", "b", "c"]


def test_figure_is_stored_as_png(run_folder):
    figure = read_records(run_folder / "recording.ipynb")["figure"]
    assert isinstance(figure, FigureRecord)
    assert figure.png[:8] == b"\x89PNG\r\n\x1a\n" and len(figure.png) > 1000


def test_status_of_good_and_failing_notebooks(run_folder):
    assert notebook_status(run_folder / "recording.ipynb") == {
        "executed": True,
        "failed": False,
        "error": None,
    }
    status = notebook_status(run_folder / "failing.ipynb")
    assert status["executed"] and status["failed"]
    assert status["error"] == "ValueError: boom"


def test_read_run_folder(run_folder):
    run = read_run_folder(run_folder)
    assert sorted(run) == ["failing", "recording"]
    assert run["failing"]["status"]["failed"] and not run["recording"]["status"]["failed"]
    assert run["recording"]["records"]["int64"] == 7
    assert run["failing"]["records"] == {}


def test_unexecuted_notebook_status(tmp_path):
    write_notebook(tmp_path / "fresh.ipynb", ["x = 1"])
    assert notebook_status(tmp_path / "fresh.ipynb") == {"executed": False, "failed": False, "error": None}


# ---------------------------------------------------------------- outside a kernel
def test_outside_kernel_record_converts_and_returns_false():
    assert record("x", np.float32(1.5)) is False
    assert record("frame", pd.DataFrame({"a": [1]})) is False
    with pytest.raises(TypeError, match="cannot record"):
        record("bad", object())


def test_outside_kernel_record_figure_closes_figure():
    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert record_figure("fig", fig) is False
    assert not plt.fignum_exists(fig.number)


def test_to_jsonable_and_markers():
    assert to_jsonable({"a": np.array([np.float32(1.0), np.nan])}) == {"a": [1.0, None]}
    assert to_jsonable(np.uint8(3)) == 3 and to_jsonable(float("-inf")) is None
    assert decode_value({"__perfkit__": "none"}) is None
    frame = decode_value({"__perfkit__": "dataframe", "columns": {"a": [1, 2]}})
    assert isinstance(frame, pd.DataFrame) and frame["a"].tolist() == [1, 2]
