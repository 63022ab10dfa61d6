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
    write_json(
        ctx.path("metrics.json"),
        {
            "notebook": ctx.notebook,
            "status": "complete",
            "records": {"verdict": result["verdict"], "counts": result["counts"]},
        },
    )
    return result


def criteria_table(result: dict) -> pd.DataFrame:
    table = pd.DataFrame(result["criteria"])
    return table[["name", "comparison", "target", "measured", "unit", "margin", "status", "source", "reason"]]


def _shown(value, unit: str, gate: bool) -> str:
    """A figure as a reader wants it: gates as true/false, numbers with 4 significant digits and the unit."""
    if value is None:
        return "—"
    if gate or isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{value:.4g}" + (f" {unit}" if unit else "")
    return str(value)


def readable_criteria(result: dict) -> pd.DataFrame:
    """The criteria table for people: what each criterion means, target and measured with units, the
    margin, the status and the whole reason where there is one."""
    rows = []
    for c in result["criteria"]:
        unit = c.get("unit") or ""
        gate = c.get("comparison") == "==" and isinstance(c.get("target"), (bool, int, float)) and unit == ""
        target = c.get("target")
        target_text = (
            ("true" if target else "false")
            if gate
            else f"{c.get('comparison')} {_shown(target, unit, False)}"
        )
        margin = c.get("relative_margin")
        spread = c.get("spread")
        rows.append(
            {
                "criterion": c["name"],
                "what it measures": c.get("description") or "",
                "target": target_text,
                "measured": _shown(c.get("measured"), unit, gate),
                "spread": "—"
                if not spread
                else (
                    f"{_shown(spread['min'], '', False)}–"
                    f"{_shown(spread['max'], unit, False)}, "
                    + (spread["interval"] if spread.get("interval") else f"{spread['repeats']} repeats")
                ),
                "margin": "—" if gate or margin is None else f"{margin:+.1%}",
                "status": c["status"],
                "source": c.get("source") or "",
                "reason": c.get("reason") or "",
            }
        )
    return pd.DataFrame(rows)


def show_criteria(result: dict):
    """readable_criteria, styled: nothing cut off, the status coloured."""
    colours = {"PASS": "#2e7d32", "FAIL": "#c62828", "NOT MEASURED": "#757575"}
    return (
        readable_criteria(result)
        .style.hide(axis="index")
        .map(lambda s: f"color: {colours.get(s, 'inherit')}; font-weight: bold", subset=["status"])
        .set_properties(**{"white-space": "pre-wrap", "text-align": "left"})
    )


def conclusion(result: dict) -> str:
    """One line that says why the verdict is what it is, from the same rows as the table."""
    by_status: dict[str, list[str]] = {}
    for c in result["criteria"]:
        by_status.setdefault(c["status"], []).append(c["name"])
    parts = [
        f"{len(names)} {status}" + ("" if status == "PASS" else f" ({', '.join(names)})")
        for status, names in sorted(
            by_status.items(),
            key=lambda kv: (
                ("PASS", "FAIL", "NOT MEASURED").index(kv[0])
                if kv[0] in ("PASS", "FAIL", "NOT MEASURED")
                else 3
            ),
        )
    ]
    why = "every criterion passed" if result["verdict"] == "PASS" else "not every criterion passed"
    return f"verdict {result['verdict']}: {why}; " + ", ".join(parts)


def summary_figures(ctx: Context, result: dict) -> dict:
    from perfkit import plots

    return {
        "criteria": plots.criteria_margins(
            pd.DataFrame(result["criteria"]),
            ctx.path("criteria.png"),
            title=f"Criteria of {ctx.params.name}: verdict {result['verdict']}",
            caption="Relative margin = (measured - target) / |target| on the passing side (positive passes). "
            "FAIL without a bar: source notebook missing or failed; NOT MEASURED: no measurement on this "
            "hardware (counts as not passing).",
        )
    }


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
    write_json(
        ctx.path("comparison.json"),
        {"a": str(earlier), "b": str(ctx.run_dir), "regressed": regressed, "rows": [vars(r) for r in rows]},
    )
    return compare.table(rows)
