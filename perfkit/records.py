"""Notebook records: glue values into executed notebooks and read them back.

The ONLY module that imports scrapbook (0.5.0, unmaintained). It avoids the calls that
break with pandas 3 (`papermill_dataframe`, `Scrapbook.scrap_dataframe`, `reglue`) and the
encoders scrapbook lacks, by converting values first:

- numpy scalars -> int/float/bool; ndarrays and tuples -> lists; dicts/lists recursively;
  dict keys -> str (JSON).
- NaN / +-inf -> None (JSON null). None inside containers stays null.
- A top-level None is glued as the marker {"__perfkit__": "none"} (scrapbook's JSON encoder
  refuses bare None) and read back as None.
- pandas DataFrames are glued with scrapbook's parquet encoder and read back as DataFrames;
  if that fails, as {"__perfkit__": "dataframe", "columns": {col: [...]}}, also read back
  as a DataFrame.
- Figures are rendered to PNG here (any matplotlib backend) and glued as display-only
  scraps; they read back as `FigureRecord`.

Outside a Jupyter kernel `record`/`record_figure` convert and return False (nothing to
glue into); inside they return True.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd

from perfkit.telemetry import jsonable

MARKER = "__perfkit__"


@dataclass(frozen=True)
class FigureRecord:
    """A figure read back from a notebook: its display mime bundle."""

    mime: dict

    @property
    def png(self) -> bytes | None:
        data = self.mime.get("image/png")
        return base64.b64decode(data) if data else None


# ---------------------------------------------------------------- conversion
def to_jsonable(value: Any) -> Any:
    """A JSON-safe copy (numpy -> Python, arrays -> lists, NaN/inf -> None); other types are a TypeError."""
    return jsonable(value, strict=True)


def plain(value: Any) -> Any:
    """JSON-able form (DataFrames as lists of rows)."""
    if isinstance(value, pd.DataFrame):
        return to_jsonable(value.astype(object).where(value.notna(), None).to_dict(orient="records"))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return to_jsonable(value)


def _dataframe_fallback(frame: pd.DataFrame) -> dict:
    columns = {str(col): to_jsonable(frame[col].to_numpy()) for col in frame.columns}
    return {MARKER: "dataframe", "columns": columns}


def decode_value(value: Any) -> Any:
    """Undo the markers written by `record`."""
    if isinstance(value, dict) and MARKER in value:
        kind = value[MARKER]
        if kind == "none":
            return None
        if kind == "dataframe":
            return pd.DataFrame(value["columns"])
    return value


# ---------------------------------------------------------------- writing
def in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def record(name: str, value: Any) -> bool:
    """Glue `value` under `name` into the running notebook. False when not in a kernel."""
    if isinstance(value, pd.DataFrame):
        return _record_dataframe(name, value)
    payload = to_jsonable(value)
    if payload is None:
        payload = {MARKER: "none"}
    if not in_kernel():
        return False
    import scrapbook

    encoder = "text" if isinstance(payload, str) else "json"
    scrapbook.glue(name, payload, encoder=encoder)
    return True


def _record_dataframe(name: str, frame: pd.DataFrame) -> bool:
    fallback = _dataframe_fallback(frame)  # also validates the cells are recordable
    if not in_kernel():
        return False
    import scrapbook

    try:
        scrapbook.glue(name, frame, encoder="pandas")
    except Exception:  # parquet refused it (odd column names, object cells, ...)
        scrapbook.glue(name, fallback, encoder="json")
    return True


def record_figure(name: str, fig, *, dpi: int = 100) -> bool:
    """Glue `fig` as a PNG display and close it. False (figure still closed) outside a kernel."""
    import matplotlib.pyplot as plt

    try:
        if not in_kernel():
            return False
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        import scrapbook
        from IPython.display import Image

        scrapbook.glue(name, Image(data=buffer.getvalue(), format="png"), display=True)
        return True
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- reading
def read_records(notebook_path: str | Path) -> dict[str, Any]:
    """{name: value} for every scrap in an executed notebook, markers decoded."""
    import scrapbook

    scraps = scrapbook.read_notebook(str(notebook_path)).scraps
    values: dict[str, Any] = {}
    for name, scrap in scraps.items():
        if scrap.encoder == "display" or (scrap.data is None and scrap.display is not None):
            mime = dict((scrap.display or {}).get("data", {}))
            values[name] = FigureRecord(mime)
        else:
            values[name] = decode_value(scrap.data)
    return values


def notebook_status(notebook_path: str | Path) -> dict:
    """{'executed', 'failed', 'error'} from papermill metadata and error outputs."""
    nb = nbformat.read(str(notebook_path), as_version=4)
    papermill = nb.metadata.get("papermill", {})
    error = None
    executed = bool(papermill.get("end_time"))
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        executed = executed or cell.get("execution_count") is not None
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error" and error is None:
                error = f"{output.get('ename')}: {output.get('evalue')}"
    failed = bool(papermill.get("exception")) or error is not None
    if failed and error is None:
        error = "papermill recorded an exception"
    return {"executed": executed, "failed": failed, "error": error}


def read_run_folder(folder: str | Path) -> dict[str, dict]:
    """{notebook stem: {'path', 'status', 'records'}} for every *.ipynb in `folder`."""
    results: dict[str, dict] = {}
    for path in sorted(Path(folder).glob("*.ipynb")):
        results[path.stem] = {
            "path": str(path),
            "status": notebook_status(path),
            "records": read_records(path),
        }
    return results
