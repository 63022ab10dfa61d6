"""06_summary: the run's verdict (`perfkit.verdict.evaluate_run`) written to summary.json, as a table and
a figure."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from perfkit import compare
from perfkit.errors import UserError
from perfkit.suite.context import REPO, Context
from perfkit.summary import write_json
from perfkit.verdict import evaluate_run


def write_summary(ctx: Context) -> dict:
    result = evaluate_run(ctx.run_dir, ctx.params)
    result["params_file"] = str(ctx.params_file)
    write_json(ctx.run_dir / "summary.json", result)
    write_json(ctx.path("metrics.json"), {"notebook": ctx.notebook, "status": "complete", "records":
                                          {"verdict": result["verdict"], "counts": result["counts"]}})
    return result


def criteria_table(result: dict) -> pd.DataFrame:
    table = pd.DataFrame(result["criteria"])
    return table[["name", "comparison", "target", "measured", "unit", "margin", "status", "source", "reason"]]


def summary_figures(ctx: Context, result: dict) -> dict:
    from perfkit import plots

    return {"criteria": plots.criteria_margins(
        pd.DataFrame(result["criteria"]), ctx.path("criteria.png"),
        title=f"Criteria of {ctx.params.name}: verdict {result['verdict']}",
        caption="Relative margin = (measured - target) / |target| on the passing side (positive passes). "
                "FAIL without a bar: source notebook missing or failed; NOT MEASURED: no measurement on this "
                "hardware (counts as not passing).")}


def comparison(ctx: Context, result: dict) -> pd.DataFrame | None:
    """This run beside `compare_to` of the params (None when unset): `perfkit compare`'s table, also written
    to 06_summary/comparison.json with the criteria that regressed beyond noise."""
    if not ctx.params.compare_to:
        return None
    earlier = Path(ctx.params.compare_to).expanduser()
    earlier = earlier if earlier.is_absolute() else REPO / earlier
    try:
        run_a = compare.load_run(earlier)
    except UserError as err:
        raise UserError(f"compare_to: {err.problem}", err.fix) from None
    rows = compare.compare_runs(run_a, compare.load_run(ctx.run_dir))
    regressed = [r.figure for r in compare.regressions(rows)]
    write_json(ctx.path("comparison.json"), {"a": str(earlier), "b": str(ctx.run_dir), "regressed": regressed,
                                             "rows": [vars(r) for r in rows]})
    return compare.table(rows)
