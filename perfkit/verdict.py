"""The verdict of a run folder: every criterion evaluated against the records of the notebooks that ran.

`collect_run` reads each measuring notebook's status and records (its executed notebook, else its own
<stem>/metrics.json); `evaluate_run` turns the params' criteria into PASS / FAIL / NOT MEASURED rows
and one verdict (`perfkit.criteria`). The run folder layout is the suite's (`perfkit.suite`), which
this module reads but never imports.
"""

from __future__ import annotations

import json
from pathlib import Path

from perfkit import criteria as crit

# the suite's notebooks, in the order `perfkit suite` runs them; all but the last one measure
NOTEBOOKS = ("01_baseline", "02_profiling", "03_scaling", "04_tuning", "05_full_validation", "06_summary")
MEASURING_NOTEBOOKS = NOTEBOOKS[:-1]
SUMMARY_SCHEMA = "perfkit.suite-summary/1"


def _suite_status(run_dir: Path) -> dict:
    path = run_dir / "suite.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text()).get("notebooks", {})
    except (OSError, json.JSONDecodeError):
        return {}


def collect_run(run_dir: str | Path, stems=MEASURING_NOTEBOOKS) -> dict:
    """{stem: {status: complete|failed|missing, error, records, from}} for the measuring notebooks.

    The values are always the notebook's own <stem>/metrics.json, which it writes as its last step: the
    single record (the scraps in an executed notebook are for display). An executed notebook in run_dir
    (written by `perfkit suite`) decides whether the notebook failed, and suite.json whether it was run.
    """
    from perfkit import records

    run_dir = Path(run_dir)
    suite = _suite_status(run_dir)
    out = {}
    for stem in stems:
        executed = run_dir / f"{stem}.ipynb"
        metrics = run_dir / stem / "metrics.json"
        entry = {
            "status": "missing",
            "error": f"{stem} was not run (no {executed.name}, no {stem}/metrics.json)",
            "records": {},
            "from": None,
        }
        if suite.get(stem, {}).get("status") == "failed":
            entry.update(
                status="failed", error=suite[stem].get("error") or "failed", **{"from": "suite.json"}
            )
        elif suite.get(stem, {}).get("status") == "skipped":
            entry.update(error=f"{stem} was skipped in this suite run")
        elif executed.exists():
            status = records.notebook_status(executed)
            if status["failed"]:
                entry.update(status="failed", error=status["error"], **{"from": executed.name})
            elif metrics.exists():
                entry.update(
                    status="complete",
                    error=None,
                    records=json.loads(metrics.read_text()).get("records", {}),
                    **{"from": f"{stem}/metrics.json"},
                )
            else:
                entry.update(
                    status="failed",
                    error=f"{stem}.ipynb did not reach its end (no metrics.json)",
                    **{"from": executed.name},
                )
        elif metrics.exists():
            data = json.loads(metrics.read_text())
            entry.update(
                status="complete" if data.get("status") == "complete" else "failed",
                error=None,
                records=data.get("records", {}),
                **{"from": f"{stem}/metrics.json"},
            )
        out[stem] = entry
    return out


def metric_spread(records: dict, metric: str) -> dict | None:
    """How far a criterion's figure can be trusted, where its notebook measured that: `<metric>_spread`
    (the median, which the criterion uses, with min-max over interleaved rounds) as {min, max, repeats}, or
    `<metric>_ci95` ([low, high], a 95 % interval of a proportion) as {min, max, interval: "95 % CI"};
    None otherwise."""
    found = records.get(f"{metric}_spread")
    if isinstance(found, dict) and all(isinstance(found.get(k), (int, float)) for k in ("min", "max")):
        return {
            "min": float(found["min"]),
            "max": float(found["max"]),
            "repeats": int(found.get("repeats") or len(found.get("values") or ())),
        }
    interval = records.get(f"{metric}_ci95")
    if (
        isinstance(interval, (list, tuple))
        and len(interval) == 2
        and all(isinstance(v, (int, float)) for v in interval)
    ):
        return {"min": float(interval[0]), "max": float(interval[1]), "interval": "95 % CI"}
    return None


def evaluate_run(run_dir: str | Path, params) -> dict:
    """Every criterion: target, measured, margin, PASS / FAIL / NOT MEASURED, source.

    `params`: the suite's params (`perfkit.suite.params.SuiteParams`: its `criteria` and `name`).

    A criterion whose source notebook is missing or failed is FAIL. The verdict is PASS
    only when every criterion passes.
    """
    rules = crit.criteria_from_params(params.criteria)
    notebooks = collect_run(run_dir, sorted({r.source for r in rules} | set(MEASURING_NOTEBOOKS)))
    rows = []
    for rule in rules:
        nb = notebooks[rule.source]
        if nb["status"] != "complete":
            row = {
                **crit.evaluate(rule, {}, measurable=False),
                "status": crit.FAIL,
                "reason": f"source notebook {rule.source} {nb['status']}: {nb['error']}",
            }
        else:
            row = crit.evaluate(rule, nb["records"])
        rows.append(
            {
                **{
                    k: row[k]
                    for k in (
                        "name",
                        "metric",
                        "target",
                        "comparison",
                        "measured",
                        "unit",
                        "margin",
                        "relative_margin",
                        "status",
                        "source",
                        "reason",
                        "description",
                    )
                },
                "spread": metric_spread(nb.get("records") or {}, rule.metric),
            }
        )
    verdict = crit.PASS if rows and all(r["status"] == crit.PASS for r in rows) else crit.FAIL
    return {
        "schema": SUMMARY_SCHEMA,
        "verdict": verdict,
        "criteria": rows,
        "counts": crit.count_by_status(rows),
        "notebooks": {
            k: {"status": v["status"], "error": v["error"], "from": v["from"]} for k, v in notebooks.items()
        },
        "params_name": params.name,
    }
