"""04_tuning: a sweep of the speed knobs (coordinate or grid), and the params file with the best ones."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd

from perfkit.errors import UserError
from perfkit.params import load_params
from perfkit.records import plain as _plain
from perfkit.suite.context import Context
from perfkit.suite.params import SuiteParams, load_suite_params
from perfkit.summary import write_json
from perfkit.results import as_summary


def tuning_points(params: SuiteParams):
    """Candidate knob settings, lazily: grid = product; coordinate = one knob at a time (see run_tuning)."""
    grid = params.tuning.grid
    names = list(grid)
    return names, [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def _base_knobs(params: SuiteParams) -> dict:
    from perfkit.workload.config import EmbedConfig

    defaults = EmbedConfig.model_fields
    return {k: params.embed.get(k, defaults[k].default) for k in params.tuning.grid}


def run_tuning(ctx: Context, measure=None) -> dict:
    """Sweep the knobs of params.tuning; stop when the runs budget is spent or the target is met.

    `measure(knobs) -> row` runs one capped point (injectable for tests).
    """
    p = ctx.params.tuning
    if not p.grid:
        raise UserError("tuning.grid is empty", "list at least one knob and its values in the params")
    measure = measure or (lambda knobs, index: measure_point(ctx, knobs, index))
    rows: list[dict] = []
    stop_reason = None

    def best_row():
        ok = [r for r in rows if r["status"] == "ok" and r["tok_per_s"] is not None]
        return max(ok, key=lambda r: r["tok_per_s"]) if ok else None

    def try_point(knobs) -> bool:
        nonlocal stop_reason
        if any(all(r[k] == v for k, v in knobs.items()) for r in rows):
            return True  # measured already
        if len(rows) >= p.max_runs:
            stop_reason = f"budget of {p.max_runs} runs spent"
            return False
        rows.append({**knobs, **measure(knobs, len(rows))})
        best = best_row()
        if p.target_tok_per_s and best and best["tok_per_s"] >= p.target_tok_per_s:
            stop_reason = f"target {p.target_tok_per_s:,.0f} tok/s met"
            return False
        return True

    if p.strategy == "grid":
        for knobs in tuning_points(ctx.params)[1]:
            if not try_point(knobs):
                break
    else:
        current = _base_knobs(ctx.params)
        if try_point(current):
            for knob, values in p.grid.items():
                go = True
                for value in values:
                    go = try_point({**current, knob: value})
                    if not go:
                        break
                best = best_row()
                if best is not None:
                    current = {k: best[k] for k in p.grid}
                if not go:
                    break
    table = pd.DataFrame(rows)
    best = best_row()
    if best is None:
        errors = "; ".join(sorted({str(r.get("error")) for r in rows}))
        raise RuntimeError(f"every tuning run failed: {errors}")
    best_knobs = {k: best[k] for k in p.grid}
    write_json(
        ctx.path("tuning.json"), {"rows": _plain(table), "best": best_knobs, "stop_reason": stop_reason}
    )
    return {
        "table": table,
        "best_config": best_knobs,
        "best_tok_per_s": best["tok_per_s"],
        "best": best,
        "stop_reason": stop_reason or "all points measured",
        "knobs": list(p.grid),
    }


def measure_point(ctx: Context, knobs: dict, index: int) -> dict:
    """One capped v2 run at these knob values -> its row (status 'error' instead of raising)."""
    from perfkit.workload.runner import run_embed

    p = ctx.params.tuning
    try:
        summary = run_embed(
            ctx.embed_config(
                f"point-{index:02d}",
                mode="v2",
                layout="packed",
                max_seconds=p.max_seconds,
                max_reads=p.max_reads,
                **knobs,
            )
        )
    except Exception as err:  # a point that cannot run is a result of the sweep, not its end
        return {
            "status": "error",
            "error": f"{type(err).__name__}: {err}",
            "tok_per_s": None,
            "seq_per_s": None,
            "packing_efficiency": None,
            "device_busy_fraction": None,
            "loader_wait_fraction": None,
        }
    t = as_summary(summary).throughput
    return {
        "status": "ok",
        "error": None,
        "tok_per_s": t.steady_tok_per_s,
        "seq_per_s": t.steady_seq_per_s,
        "packing_efficiency": t.packing_efficiency,
        "device_busy_fraction": t.device_busy_fraction,
        "loader_wait_fraction": t.loader_wait_fraction,
        "checkpoint_share": summary["checkpoint"]["share_of_wall"],
    }


def write_best_params(ctx: Context, best_config: dict, path: Path | None = None) -> Path:
    """The params file with the best knob values in its embed section: usable as --params as is."""
    import yaml

    path = path or ctx.path("best_params.yaml")
    data = load_params(ctx.params_file)
    data["embed"] = {**(data.get("embed") or {}), **best_config}
    data["name"] = f"{data.get('name', 'params')}-tuned"
    header = (
        f"# written by 04_tuning from {ctx.params_file}: embed knobs set to the best point of the sweep\n"
        f"# ({', '.join(f'{k}={v}' for k, v in best_config.items())})\n"
    )
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    load_suite_params(path)  # still a valid params file
    return path


def tuning_figures(ctx: Context, result: dict) -> dict:
    from perfkit import plots

    p = ctx.params.tuning
    caps = ", ".join(f"{k}={v}" for k, v in (("max_seconds", p.max_seconds), ("max_reads", p.max_reads)) if v)
    figs = {
        "tuning": plots.tuning_lines(
            result["table"],
            result["knobs"],
            ctx.path("tuning.png"),
            best=result["best_config"],
            title=f"Tuning sweep ({p.strategy}): steady tok/s per knob value, {len(result['table'])} runs",
            caption=f"Each point is one capped v2 run ({caps or 'uncapped'}) on the same sample; y = steady-state "
            f"tokens/s from its telemetry. Star = best run; stop: {result['stop_reason']}.",
        )
    }
    varied = [k for k in result["knobs"] if result["table"][k].astype(str).nunique() > 1]
    if len(varied) >= 2:
        figs["tuning_heatmap"] = plots.tuning_heatmap(
            result["table"],
            varied[0],
            varied[1],
            ctx.path("tuning_heatmap.png"),
            title=f"Steady tok/s over {varied[0]} x {varied[1]}",
            caption="Mean steady tokens/s of the runs at each pair of values (other knobs at whatever the sweep "
            "had them); blank = not run.",
        )
    return figs
