"""`perfkit suite`: run the notebooks 01-06 with papermill into one run folder.

- the params file is validated before anything runs (a bad key is one error line, exit 2);
- the synthetic sample is generated once (run folder's sample.fa) and shared by all notebooks;
- a failing notebook never stops the chain: it is recorded and the next one runs; 06_summary
  always runs and turns the failed notebook's criteria into FAIL;
- each executed notebook is saved as <stem>.ipynb and exported as <stem>.html;
- suite.json (status, seconds, error per notebook) is rewritten after every notebook, so
  06_summary sees the statuses of the notebooks before it;
- the return code is non-zero when any notebook failed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from perfkit.errors import UserError
from perfkit.summary import write_json

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
SUITE_SCHEMA = "perfkit.suite/1"


# installed by `make venv`; unique, so another Jupyter's `python3` kernel is never taken
KERNEL_NAME = "perfkit"
FALLBACK_KERNEL = "python3"  # ipykernel's own: what a bare install (a GPU node's --target folder) has


def kernel_name() -> str:
    """The perfkit kernel when this Jupyter knows it, else ipykernel's python3 (same interpreter either way)."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL_NAME if KERNEL_NAME in KernelSpecManager().find_kernel_specs() else FALLBACK_KERNEL


def select(only) -> list[str]:
    """Stems to run, in order; `only` names stems or their number prefixes ('01', '03_scaling'); 06 always."""
    from perfkit.suite.params import NOTEBOOKS

    if not only:
        return list(NOTEBOOKS)
    wanted = set()
    for name in only:
        matches = [s for s in NOTEBOOKS if s == name or s.split("_")[0] == name]
        if not matches:
            raise UserError(f"unknown notebook {name!r}", f"use one of {', '.join(NOTEBOOKS)} (or 01..06)")
        wanted.update(matches)
    wanted.add(NOTEBOOKS[-1])
    return [s for s in NOTEBOOKS if s in wanted]


def export_html(notebook: Path, html: Path) -> None:
    import logging
    import warnings

    from nbconvert import HTMLExporter

    logging.getLogger("traitlets").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        # scrapbook's JSON scraps have no HTML form: nbconvert warns per scrap
        warnings.simplefilter("ignore")
        body, _ = HTMLExporter().from_filename(str(notebook))
    html.write_text(body, encoding="utf-8")


def _earlier_statuses(out_dir: Path, params_path: Path, commit, skip) -> dict:
    """Notebooks an earlier `--only` call ran in this folder, with the same params and code, keep their status
    (the suite may be run in parts, e.g. one device call each); anything else is skipped, as before."""
    try:
        earlier = json.loads((out_dir / "suite.json").read_text())
    except (OSError, ValueError):
        return {}
    same_code = (earlier.get("environment") or {}).get("commit") == commit and commit is not None
    if earlier.get("params_file") != str(params_path) or not same_code:
        return {}
    return {
        stem: {**entry, "earlier_call": earlier.get("started")}
        for stem, entry in (earlier.get("notebooks") or {}).items()
        if stem not in skip
        and entry.get("status") in ("complete", "failed")
        and (out_dir / f"{stem}.ipynb").exists()
    }


def _one_line(err: BaseException) -> str:
    name = getattr(err, "ename", None) or type(err).__name__
    value = getattr(err, "evalue", None) or str(err)
    text = " ".join(f"{name}: {value}".split())
    return text if len(text) < 500 else text[:497] + "..."


def run_suite(
    params_path, out_dir, only=None, *, parameters: dict | None = None, notebook_dir: Path | None = None
) -> int:
    """Run the suite; 0 when every notebook that ran succeeded.

    `parameters`: extra papermill parameters per notebook stem, e.g. {"03_scaling": {"gpus": 2}}.
    """
    import papermill

    from perfkit.suite.context import ensure_sample
    from perfkit.suite.params import NOTEBOOKS, load_suite_params

    params_path = Path(params_path).resolve()
    out_dir = Path(out_dir).resolve()
    notebook_dir = Path(notebook_dir or NOTEBOOK_DIR)
    params = load_suite_params(params_path)
    stems = select(only)

    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    print(f"perfkit suite: params {params.name} ({params_path}) -> {out_dir}", flush=True)
    sample, stats = ensure_sample(params, out_dir)
    print(f"sample: {sample} ({stats['reads']:,} reads, {stats['frames']:,} frames)", flush=True)
    from perfkit.environment import environment

    status = {s: {"status": "skipped", "seconds": 0.0, "error": None} for s in NOTEBOOKS if s not in stems}
    env = environment()
    status.update(_earlier_statuses(out_dir, params_path, env.get("commit"), skip=stems))

    # what ran, recorded when it ran (a report published later must not take a later checkout's commit)
    suite = {
        "schema": SUITE_SCHEMA,
        "params_file": str(params_path),
        "params_name": params.name,
        "run_dir": str(out_dir),
        "notebooks": status,
        "started": started,
        "environment": env,
    }
    write_json(out_dir / "suite.json", suite)
    for index, stem in enumerate(stems, 1):
        source = notebook_dir / f"{stem}.ipynb"
        output = out_dir / f"{stem}.ipynb"
        output.unlink(missing_ok=True)
        print(f"[{index}/{len(stems)}] {stem} ...", flush=True)
        t0 = time.perf_counter()
        entry = {"status": "running", "seconds": None, "error": None}
        status[stem] = entry
        write_json(out_dir / "suite.json", suite)
        try:
            papermill.execute_notebook(
                str(source),
                str(output),
                parameters={
                    "params_file": str(params_path),
                    "run_dir": str(out_dir),
                    **(parameters or {}).get(stem, {}),
                },
                kernel_name=kernel_name(),
                cwd=str(notebook_dir),
                progress_bar=False,
                log_output=False,
                execution_timeout=params.notebook_timeout_s,
            )
            entry["status"] = "complete"
        except Exception as err:  # papermill's PapermillExecutionError, a dead kernel, a timeout ...
            entry.update(status="failed", error=_one_line(err))
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        if output.exists():
            try:
                export_html(output, out_dir / f"{stem}.html")
            except Exception as err:  # an unexportable notebook is reported, not fatal
                entry["html_error"] = _one_line(err)
        print(
            f"[{index}/{len(stems)}] {stem}: {entry['status']} in {entry['seconds']:.1f} s"
            + (f" — {entry['error']}" if entry["error"] else ""),
            flush=True,
        )
        write_json(out_dir / "suite.json", suite)
    suite["seconds"] = round(time.time() - started, 2)
    summary_path = out_dir / "summary.json"
    summary = None
    if summary_path.exists() and status.get("06_summary", {}).get("status") == "complete":
        summary = json.loads(summary_path.read_text())
        suite["verdict"] = summary.get("verdict")
    write_json(out_dir / "suite.json", suite)
    failed = [s for s, e in status.items() if e["status"] == "failed"]
    print(
        f"perfkit suite: {len(stems) - len(failed)}/{len(stems)} notebooks complete in {suite['seconds']:.0f} s; "
        f"verdict {suite.get('verdict', 'unknown')}" + (f"; failed: {', '.join(failed)}" if failed else ""),
        flush=True,
    )
    if summary:  # the verdict's reasons on the terminal, not only in 06_summary.html
        from perfkit.publish import criteria_lines

        print("\n".join(criteria_lines(summary)), flush=True)
    return 1 if failed else 0
