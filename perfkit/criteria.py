"""Performance criteria: a target per metric, evaluated to PASS / FAIL / NOT MEASURED.

Metrics are a (nested) dict; a criterion names its metric by dotted path ("scaling.factor").
A value is a number, a bool, or a marker dict `{"value": x, "measured": bool, "reason": str}`.

Not-measured convention: any dict on the path with `"measured": False` (e.g. the sampler's
host-only summary, made by `not_measured(reason)`) means "this is not a real measurement on
this hardware". That, a missing path, None, NaN, a non-number, or `measurable=False` gives
NOT MEASURED, which never passes: `evaluate_all` returns FAIL while any criterion is not
measured (a claim without a measurement is not met). `count_by_status` shows them apart.
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping

from perfkit.errors import UserError
from perfkit.results import NotMeasured

PASS, FAIL, NOT_MEASURED = "PASS", "FAIL", "NOT MEASURED"

_COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
COMPARISONS = (*_COMPARE, "==")


def not_measured(reason: str) -> dict:
    """The JSON marker for a number that is not a real measurement here (`results.NotMeasured` written out)."""
    return NotMeasured(reason).to_json()


@dataclass(frozen=True)
class Criterion:
    name: str
    target: float
    comparison: str
    metric: str  # dotted path into the metrics dict
    unit: str = ""
    source: str | None = None  # notebook that produces the metric
    description: str = ""

    def __post_init__(self):
        if self.comparison not in COMPARISONS:
            raise UserError(
                f"criterion {self.name!r}: unknown comparison {self.comparison!r}",
                f"use one of {', '.join(COMPARISONS)}",
            )
        if isinstance(self.target, bool):  # true/false targets only make sense for ==
            if self.comparison != "==":
                raise UserError(
                    f"criterion {self.name!r}: a true/false target needs comparison '=='",
                    "set comparison: '==' or give a numeric target",
                )
            object.__setattr__(self, "target", float(self.target))
        elif isinstance(self.target, (int, float)) and math.isfinite(self.target):
            object.__setattr__(self, "target", float(self.target))
        else:
            raise UserError(
                f"criterion {self.name!r}: target {self.target!r} is not a finite number",
                "give a number (or true/false with '==')",
            )
        if not self.metric or not isinstance(self.metric, str):
            raise UserError(f"criterion {self.name!r}: no metric path", "set metric: e.g. 'scaling.factor'")


def criteria_from_params(items: Iterable[Mapping[str, Any]]) -> list[Criterion]:
    """Criteria from params (YAML/papermill list of dicts), with errors that name the fix."""
    allowed = {f.name for f in fields(Criterion)}
    required = {"name", "target", "comparison", "metric"}
    criteria: list[Criterion] = []
    for position, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise UserError(
                f"criterion #{position + 1} is not a mapping: {item!r}",
                "write each criterion as {name, target, comparison, metric, ...}",
            )
        label = item.get("name", f"#{position + 1}")
        missing = sorted(required - item.keys())
        if missing:
            raise UserError(
                f"criterion {label!r} lacks {', '.join(missing)}", "add those keys to the criterion"
            )
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise UserError(
                f"criterion {label!r} has unknown key(s) {', '.join(unknown)}",
                f"use only {', '.join(sorted(allowed))}",
            )
        criteria.append(Criterion(**item))
    names = [c.name for c in criteria]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(
            f"duplicate criterion name(s) {', '.join(duplicates)}", "give each criterion its own name"
        )
    return criteria


def lookup_metric(metrics: Mapping[str, Any], path: str) -> tuple[float | None, str | None]:
    """(number, None) or (None, why it is not measured) for a dotted path."""
    if path in metrics:  # a flat key that itself contains dots
        node: Any = metrics[path]
    else:
        node = metrics
        for part in path.split("."):
            if marker := NotMeasured.found(node):
                return None, _reason(marker, path)
            if not isinstance(node, Mapping) or part not in node:
                return None, f"metric {path!r} not found"
            node = node[part]
    if marker := NotMeasured.found(node):
        return None, _reason(marker, path)
    if isinstance(node, Mapping):
        if "value" not in node:
            return None, f"metric {path!r} is a group, not a number"
        node = node["value"]
    if node is None:
        return None, f"metric {path!r} is empty"
    if isinstance(node, bool):
        return float(node), None
    try:
        number = float(node)
    except (TypeError, ValueError):
        return None, f"metric {path!r} is not a number: {node!r}"
    if not math.isfinite(number):
        return None, f"metric {path!r} is {number}"
    return number, None


def _reason(marker: NotMeasured, path: str) -> str:
    return marker.reason or f"metric {path!r} is marked not measured"


def evaluate(criterion: Criterion, metrics: Mapping[str, Any], *, measurable: bool = True) -> dict:
    """One row: measured, margin (positive = passing side), relative margin, status."""
    row = {
        **asdict(criterion),
        "measured": None,
        "margin": None,
        "relative_margin": None,
        "status": NOT_MEASURED,
        "reason": None,
    }
    if not measurable:
        row["reason"] = "not measurable on this hardware"
        return row
    measured, reason = lookup_metric(metrics, criterion.metric)
    if measured is None:
        row["reason"] = reason
        return row
    target, comparison = criterion.target, criterion.comparison
    if comparison in (">=", ">"):
        margin = measured - target
    elif comparison in ("<=", "<"):
        margin = target - measured
    else:  # '==': distance from target, 0 at best
        margin = -abs(measured - target)
    if comparison == "==":
        passed = math.isclose(measured, target, rel_tol=1e-9, abs_tol=1e-12)
    else:
        passed = _COMPARE[comparison](measured, target)
    row.update(
        measured=measured,
        margin=margin,
        relative_margin=margin / abs(target) if target != 0 else None,
        status=PASS if passed else FAIL,
    )
    return row


def evaluate_all(
    criteria: Iterable[Criterion],
    metrics: Mapping[str, Any],
    *,
    unmeasurable: Iterable[str] = (),
) -> tuple[str, list[dict]]:
    """('PASS' | 'FAIL', rows). PASS only if every criterion passes; NOT MEASURED counts as not passing.

    `unmeasurable`: criterion names that cannot be measured on this hardware.
    """
    skip = set(unmeasurable)
    rows = [evaluate(c, metrics, measurable=c.name not in skip) for c in criteria]
    if not rows:
        raise UserError("no criteria to evaluate", "list at least one criterion in the params")
    verdict = PASS if all(r["status"] == PASS for r in rows) else FAIL
    return verdict, rows


def count_by_status(rows: Iterable[dict]) -> dict[str, int]:
    counts = {PASS: 0, FAIL: 0, NOT_MEASURED: 0}
    for row in rows:
        counts[row["status"]] += 1
    return counts


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval (95 % for z = 1.96) of a proportion: honest near 0 and 1, where the normal
    approximation would claim 0.991 ± 0.01 reaches past 1. None without trials."""
    if trials <= 0:
        return None
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)
