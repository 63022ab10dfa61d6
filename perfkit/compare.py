"""`perfkit compare RUN_A RUN_B`: did a change make it faster or slower?

Two suite runs (the folders given to `perfkit suite --out`, or reports copied by `perfkit publish`) side
by side: every criterion and every scalar headline record of every notebook (`<notebook>/metrics.json`),
the value in each run, the relative change B vs A, and a verdict:

- *within noise* when |change| ≤ the noise of that figure;
- *improved* / *regressed* when it moved beyond the noise in a known direction (a criterion's direction is
  its comparison; other names by what they measure: rates, factors and MFU up; hours, seconds, waits down);
- *changed* when the direction is not known.

Noise of a figure: the larger relative spread of the two runs where a run records one (a `{median, min,
max}` record: half its min–max range over the median; a projection's `relative_error`), never below the
noise floor (`--noise`, default 5 %: one-run figures of the same code on the same H200 kind moved by up to
3.5 % for the protein stage in the published reports, more for short nucleotide runs). A row says which
noise it used. A criterion whose status went from PASS to FAIL, or whose value moved beyond the noise in
the wrong direction, is a regression: the command then exits 1.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from perfkit.errors import UserError
from perfkit.projection import finite_number
from perfkit.results import NotMeasured

DEFAULT_NOISE = 0.05
# figures whose projection error is recorded beside them (metric -> record holding `relative_error`)
ERROR_RECORDS = {
    "projected_hours_protein_stage": "projection",
    "projected_hours_end_to_end": "end_to_end_projection",
}
# records renamed since reports were first published: an older report is read under today's names
# (2026-12-01: the projected hours are one stage's)
RENAMED_RECORDS = {"projected_hours_full_sample": "projected_hours_protein_stage"}
HIGHER_IS_BETTER = (
    "tok_per_s",
    "seq_per_s",
    "mfu",
    "factor",
    "efficiency",
    "speedup",
    "packing",
    "agreement",
    "busy",
    "gpu_util",
    "passed",
)
LOWER_IS_BETTER = ("hours", "seconds", "imbalance", "waste", "wait", "overhead", "error", "deviation")
# how much work or which setting, not how well it ran: compared, never judged
CONTEXT = ("reads", "sequences", "runs", "nproc", "count", "capped", "on_gpus", "device", "frames")


@dataclass
class Row:
    figure: str
    kind: str  # "criterion" or the notebook the record comes from
    a: object
    b: object
    change: float | None  # (b - a) / |a|
    noise: float | None
    noise_source: str
    verdict: str
    status_a: str | None = None
    status_b: str | None = None


def load_run(path) -> dict:
    """A run's criteria (from summary.json, when 06 ran) and every notebook's scalar records."""
    root = Path(path)
    summary_file = root / "summary.json"
    metric_files = sorted(root.glob("*/metrics.json"))
    if not root.is_dir() or (not summary_file.exists() and not metric_files):
        raise UserError(
            f"{path} is not a suite run or published report: no summary.json and no */metrics.json",
            "pass a folder given to `perfkit suite --out`, or one written by `perfkit publish`",
        )
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    records = {}
    for file in metric_files:
        found = json.loads(file.read_text()).get("records") or {}
        records[file.parent.name] = {RENAMED_RECORDS.get(name, name): value for name, value in found.items()}
    commit = (root / "COMMIT").read_text().strip() if (root / "COMMIT").exists() else None
    return {
        "path": str(root),
        "summary": summary,
        "records": records,
        "commit": commit,
        "verdict": summary.get("verdict"),
    }


def _number(value) -> float | None:
    """A figure as a finite float: a plain number, or the median of a `{median, min, max}` record."""
    if isinstance(value, dict):
        value = value.get("median")
    return finite_number(value)


def relative_spread(value, records: dict, name: str) -> float | None:
    """This run's own relative spread of a figure, where it records one."""
    if isinstance(value, dict) and all(
        isinstance(value.get(k), (int, float)) for k in ("median", "min", "max")
    ):
        return (value["max"] - value["min"]) / 2 / abs(value["median"]) if value["median"] else None
    repeated = records.get(f"{name}_spread")  # a figure's min-max over interleaved rounds (01, 03)
    if (
        isinstance(repeated, dict)
        and isinstance(value, (int, float))
        and value
        and all(isinstance(repeated.get(k), (int, float)) for k in ("min", "max"))
    ):
        return (repeated["max"] - repeated["min"]) / 2 / abs(value)
    holder = records.get(ERROR_RECORDS.get(name, ""), None)
    if isinstance(holder, dict) and isinstance(holder.get("relative_error"), (int, float)):
        return abs(float(holder["relative_error"]))
    return None


def direction(name: str, comparison: str | None = None) -> int:
    """+1 when higher is better, -1 when lower is, 0 when unknown."""
    if comparison in (">=", ">"):
        return 1
    if comparison in ("<=", "<"):
        return -1
    if comparison == "==":
        return 0
    lowered = name.lower()
    # a judged word wins over a context word: device_busy_fraction is a busy share, not a device setting
    if any(key in lowered for key in HIGHER_IS_BETTER):
        return 1
    if any(key in lowered for key in LOWER_IS_BETTER):
        return -1
    if any(key in lowered for key in CONTEXT):
        return 0
    return -1 if lowered.endswith("_s") else 0


def judge(a, b, noise: float, sign: int) -> tuple[float | None, str]:
    x, y = _number(a), _number(b)
    if x is None or y is None:
        if a == b:
            return None, "same"
        return None, "not comparable" if (x is None) != (y is None) or not isinstance(a, bool) else "changed"
    change = (y - x) / abs(x) if x else (0.0 if y == x else math.inf)
    if abs(change) <= noise:
        return change, "within noise"
    if sign == 0:
        return change, "changed"
    return change, "improved" if change * sign > 0 else "regressed"


def compare_runs(run_a: dict, run_b: dict, noise_floor: float = DEFAULT_NOISE) -> list[Row]:
    rows: list[Row] = []
    by_name_b = {c["name"]: c for c in run_b["summary"].get("criteria") or []}
    flat_a = {name: v for recs in run_a["records"].values() for name, v in recs.items()}
    flat_b = {name: v for recs in run_b["records"].values() for name, v in recs.items()}

    def noise_of(name, a, b):
        spreads = [
            s for s in (relative_spread(a, flat_a, name), relative_spread(b, flat_b, name)) if s is not None
        ]
        if spreads and max(spreads) > noise_floor:
            return max(spreads), "the runs' own spread"
        return noise_floor, "noise floor"

    for crit_a in run_a["summary"].get("criteria") or []:
        crit_b = by_name_b.get(crit_a["name"])
        if crit_b is None:
            continue
        a, b = crit_a.get("measured"), crit_b.get("measured")
        noise, source = noise_of(crit_a.get("metric", crit_a["name"]), a, b)
        change, verdict = judge(a, b, noise, direction(crit_a["name"], crit_a.get("comparison")))
        if crit_a.get("status") == "PASS" and crit_b.get("status") != "PASS":
            verdict = "regressed"
        elif crit_a.get("status") != "PASS" and crit_b.get("status") == "PASS" and verdict != "regressed":
            verdict = "improved"
        rows.append(
            Row(
                crit_a["name"],
                "criterion",
                a,
                b,
                change,
                noise,
                source,
                verdict,
                crit_a.get("status"),
                crit_b.get("status"),
            )
        )
    for notebook in sorted(set(run_a["records"]) & set(run_b["records"])):
        recs_a, recs_b = run_a["records"][notebook], run_b["records"][notebook]
        for name in sorted(set(recs_a) & set(recs_b)):
            a, b = recs_a[name], recs_b[name]

            def scalar(v):
                return isinstance(v, (int, float, bool, str)) or _number(v) is not None

            if not (scalar(a) and scalar(b)) or isinstance(a, str) or isinstance(b, str):
                continue
            noise, source = noise_of(name, a, b)
            change, verdict = judge(a, b, noise, direction(name))
            rows.append(Row(name, notebook, a, b, change, noise, source, verdict))
    return rows


def one_sided(run_a: dict, run_b: dict) -> dict:
    """Figures only one of the runs recorded (a notebook not run, a record added or dropped between
    commits): named, so that a missing figure is never mistaken for an unchanged one."""

    def names(run):
        return {f"{notebook}/{name}" for notebook, recs in run["records"].items() for name in recs}

    return {
        "only in A": sorted(names(run_a) - names(run_b)),
        "only in B": sorted(names(run_b) - names(run_a)),
    }


def regressions(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.kind == "criterion" and r.verdict == "regressed"]


def _show(value) -> str:
    x = _number(value)
    if isinstance(value, bool):
        return str(value)
    if x is None:
        return "NOT MEASURED" if NotMeasured.found(value) else "—"
    return f"{x:.4g}"


def table(rows: list[Row]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "figure": r.figure,
                "from": r.kind,
                "A": _show(r.a) + (f" {r.status_a}" if r.status_a else ""),
                "B": _show(r.b) + (f" {r.status_b}" if r.status_b else ""),
                "change": "—" if r.change is None else f"{r.change:+.1%}",
                "noise": "—"
                if r.noise is None
                else f"±{r.noise:.1%}" + ("" if r.noise_source == "noise floor" else " (spread)"),
                "verdict": r.verdict,
            }
            for r in rows
        ]
    )


def render(run_a: dict, run_b: dict, rows: list[Row]) -> str:
    head = [
        f"A: {run_a['path']} (commit {run_a['commit'] or 'unknown'}, verdict {run_a['verdict'] or 'none'})",
        f"B: {run_b['path']} (commit {run_b['commit'] or 'unknown'}, verdict {run_b['verdict'] or 'none'})",
        "change = (B - A) / |A|; noise = the runs' own spread where recorded, else the noise floor",
    ]
    body = table(rows).to_string(index=False) if rows else "(no figure in common)"
    bad = regressions(rows)
    tail = (
        (f"{len(bad)} criterion regression(s) beyond noise: " + ", ".join(r.figure for r in bad))
        if bad
        else "no criterion regressed beyond noise"
    )
    counts = pd.Series([r.verdict for r in rows]).value_counts().to_dict() if rows else {}
    missing = [
        f"{side} ({len(found)}): {', '.join(found)}"
        for side, found in one_sided(run_a, run_b).items()
        if found
    ]
    return "\n".join(
        head + ["", body, "", tail + "; " + ", ".join(f"{v} {k}" for k, v in counts.items())] + missing
    )


def main(run_a_path, run_b_path, *, noise: float = DEFAULT_NOISE, json_out=None) -> int:
    """Print the comparison; exit code 1 when a criterion regressed beyond noise, else 0."""
    if not 0 <= noise < 1:
        raise UserError(f"--noise {noise} is not a fraction in [0, 1)", "give e.g. --noise 0.05 for 5 %")
    run_a, run_b = load_run(run_a_path), load_run(run_b_path)
    rows = compare_runs(run_a, run_b, noise)
    print(render(run_a, run_b, rows))
    if json_out:
        Path(json_out).write_text(
            json.dumps(
                {
                    "a": run_a["path"],
                    "b": run_b["path"],
                    "noise_floor": noise,
                    "rows": [asdict(r) for r in rows],
                    **one_sided(run_a, run_b),
                },
                indent=1,
                default=str,
            )
        )
    return 1 if regressions(rows) else 0
