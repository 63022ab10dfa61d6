"""03_scaling: the same work on 1 and on N processes (GPUs; CPU processes with gloo on CPU); the whole
chain at two sizes per side (`perfkit.scaling_maths.end_to_end_scaling` decides the criterion's factor)."""

from __future__ import annotations

import time

import pandas as pd

from perfkit import criteria as crit
from perfkit.errors import UserError
from perfkit.projection import repeated
from perfkit.scaling_maths import embedding_stages_scaling, end_to_end_scaling, rank_scaling
from perfkit.results import NotMeasured, Scaling
from perfkit.suite.context import Context, _target, is_cuda, resolved_device
from perfkit.suite.params import ScalingArgs, SuiteParams
from perfkit.summary import write_json


def scaling_plan(ctx: Context) -> dict:
    """How many processes, whether they are GPUs, and whether that can run here."""
    import torch

    args: ScalingArgs = ctx.args  # type: ignore[assignment]
    nproc = args.gpus or args.nproc or ctx.params.scaling.nproc
    device = resolved_device(ctx.params)
    gpus = is_cuda(device)
    reason = None
    if args.gpus and args.nproc:
        reason = f"gpus={args.gpus} and nproc={args.nproc}: give one (gpus on a GPU machine, nproc for CPU processes)"
    elif args.gpus and not gpus:  # gpus means GPUs: CPU processes are never passed off as them
        reason = (
            f"gpus={args.gpus}: no GPU here (the params run on {device}); pass nproc={args.gpus} to compare "
            "CPU processes instead"
        )
    elif args.nproc and gpus:
        reason = f"nproc={args.nproc} asks for CPU processes but the params run on {device}: pass gpus={args.nproc}"
    elif args.nodes != 1:
        reason = f"nodes={args.nodes}: multi-node runs are not supported (run_multi launches on one host)"
    elif nproc < 2:
        reason = f"gpus={nproc}: scaling needs at least 2 processes"
    elif gpus and torch.cuda.device_count() < nproc:
        reason = f"{nproc} GPUs asked for but {torch.cuda.device_count()} visible"
    return {"nproc": nproc, "gpus": gpus, "device": device, "nodes": args.nodes, "not_measurable": reason}


def normalise_scaling(raw: Scaling, nproc: int) -> dict:
    """03's record of `scaling_maths.rank_scaling`: factor, efficiency, imbalance and the per-rank rates and
    utilisation, keyed by rank as text."""
    return {
        "nproc": nproc,
        "single_tok_per_s": raw.single_steady_tok_per_s,
        "multi_tok_per_s": raw.multi_steady_tok_per_s,
        "factor": raw.factor,
        "efficiency": raw.efficiency,
        "imbalance": raw.imbalance,
        "per_rank_tok_per_s": {rank: v.steady_tok_per_s for rank, v in raw.per_rank.items()},
        "per_rank_gpu_util": {rank: _util_value(v.gpu_utilization_mean) for rank, v in raw.per_rank.items()},
        "raw": raw.to_json(),
    }


def _util_value(value: float | NotMeasured):
    if isinstance(value, NotMeasured):
        return value.to_json()
    return float(value) if isinstance(value, (int, float)) else crit.not_measured("no utilisation value")


def run_scaling(ctx: Context) -> dict:
    """The same work on 1 and on N processes (GPUs; CPU processes with gloo on CPU): the whole chain."""
    plan = scaling_plan(ctx)
    if plan["not_measurable"]:
        marker = crit.not_measured(plan["not_measurable"])
        return {
            "plan": plan,
            "scaling": None,
            "single": None,
            "multi": None,
            "scaling_factor": marker,
            "scaling_efficiency": marker,
            "rank_imbalance": marker,
            "nucleotide": None,
            "embedding_stages": None,
            "end_to_end": None,
            "scaling_factor_nucleotide": marker,
            "scaling_factor_embedding_stages": marker,
            "scaling_factor_end_to_end": marker,
            "scaling_factor_end_to_end_measured": marker,
            "scaling_factor_end_to_end_projected": marker,
            "scaling_factor_end_to_end_source": None,
        }
    return _scaling_by_chains(ctx, plan)


def scaling_sizes(params: SuiteParams, sample_reads: int) -> list[int]:
    """The two chain sizes (reads) of each side in 03: `scaling.fit_reads`, else half and all of `max_reads`
    (else of the sample). A size beyond the sample would silently run the sample: refused."""
    p = params.scaling
    if p.fit_reads:
        sizes = [int(r) for r in p.fit_reads]
    else:
        largest = min(p.max_reads or sample_reads, sample_reads)
        sizes = [max(largest // 2, 1), largest]
    if sizes[1] > sample_reads or sizes[0] >= sizes[1]:
        raise UserError(
            f"scaling sizes {sizes} reads: the sample has {sample_reads:,} reads and the two sizes "
            f"must differ",
            "set scaling.fit_reads to two sizes within the sample, small then large",
        )
    return sizes


def _scaling_by_chains(ctx: Context, plan: dict) -> dict:
    """The whole chain launched by torchrun with 1 rank and with N ranks (the same launch on both sides), at
    two sizes each, in interleaved rounds (1, N at the small size, 1, N at the large one, then again):
    `end_to_end_scaling` fits wall = fixed + per read x reads per side and decides the criterion's factor.
    The per-stage factors (protein, nucleotide, both embedding stages) are measured at the larger size in
    every round: the headline is their median, with min-max; the figures draw the first round."""
    from perfkit.workload.predict import run_predict, stage_summaries

    p = ctx.params.scaling
    sizes = scaling_sizes(ctx.params, ctx.sample_stats["reads"])
    full_reads = ctx.params.full_validation.full_sample_reads
    chain_knobs = {"mode": "v2", "layout": "packed", **p.embed}
    warmup = warmup_chain(ctx, plan, chain_knobs, run_predict)
    rounds = []
    for repeat in range(p.repeats):
        runs = {"single": {}, "multi": {}}
        for reads in sizes:
            for side, nproc in (("single", 1), ("multi", plan["nproc"])):
                name = f"chain-{nproc}-{reads}-r{repeat}"
                cfg = ctx.embed_config(name, **{**chain_knobs, "max_reads": reads})
                chain = run_predict(
                    cfg, hidden=p.classifier_hidden, nproc=nproc, gpus=plan["gpus"], launch=True
                )
                runs[side][reads] = {"run": name, "chain": chain, "stages": stage_summaries(cfg.out_dir)}
        rounds.append(runs)
    end_to_end = {**end_to_end_scaling(rounds, sizes, plan["nproc"], full_reads), "warmup": warmup}
    per_round = [_stage_factors(r, sizes[1], plan["nproc"], ctx.sample_stats, full_reads) for r in rounds]
    # the figures draw the first round; the headline factors are the median over rounds, min-max beside them
    first = per_round[0]
    scaling, nt_scaling, combined = first["protein"], first["nucleotide"], first["embedding_stages"]
    spreads = {
        stage: repeated([r[stage]["factor"] for r in per_round])
        for stage in ("protein", "nucleotide", "embedding_stages")
    }
    write_json(
        ctx.path("scaling.json"),
        {
            "plan": plan,
            "scaling": scaling,
            "nucleotide": nt_scaling,
            "embedding_stages": combined,
            "end_to_end": end_to_end,
            "stage_factors_over_rounds": spreads,
        },
    )
    return {
        "plan": plan,
        "scaling": scaling,
        "single": first["pairs"]["protein_embedding"][0],
        "multi": first["pairs"]["protein_embedding"][1],
        "nucleotide": nt_scaling,
        "embedding_stages": combined,
        "end_to_end": end_to_end,
        "rounds": rounds,
        "scaling_factor": _median_or(spreads["protein"], scaling["factor"]),
        "scaling_efficiency": (
            spreads["protein"]["median"] / plan["nproc"] if spreads["protein"] else scaling["efficiency"]
        ),
        "rank_imbalance": scaling["imbalance"],
        "scaling_factor_nucleotide": _median_or(spreads["nucleotide"], nt_scaling["factor"]),
        "scaling_factor_embedding_stages": _median_or(spreads["embedding_stages"], combined["factor"]),
        "scaling_factor_spread": spreads["protein"],
        "scaling_factor_nucleotide_spread": spreads["nucleotide"],
        "scaling_factor_embedding_stages_spread": spreads["embedding_stages"],
        "scaling_factor_end_to_end": end_to_end["factor"],
        "scaling_factor_end_to_end_source": end_to_end["factor_source"],
        "scaling_factor_end_to_end_measured": end_to_end["measured_factor"]["median"],
        "scaling_factor_end_to_end_projected": end_to_end["projected_factor"]["median"],
    }


def _stage_factors(runs: dict, reads: int, nproc: int, sample_stats: dict, full_reads: int) -> dict:
    """One round's per-stage scaling at `reads`: protein, nucleotide and both embedding stages together."""
    pairs = {
        stage: (runs["single"][reads]["stages"][stage], runs["multi"][reads]["stages"][stage])
        for stage in runs["single"][reads]["stages"]
    }
    return {
        "pairs": pairs,
        "protein": normalise_scaling(rank_scaling(*pairs["protein_embedding"]), nproc),
        "nucleotide": normalise_scaling(rank_scaling(*pairs["nucleotide_embedding"]), nproc),
        "embedding_stages": embedding_stages_scaling(pairs, sample_stats, full_reads),
    }


def _median_or(spread: dict | None, first):
    return spread["median"] if spread else first


def warmup_reads(params: SuiteParams, gpus: bool, nproc: int) -> int:
    """Reads of 03's untimed warm-up chain: `scaling.warmup_reads`, else 4 blocks per rank on GPUs, 0 on CPU."""
    p = params.scaling
    if p.warmup_reads is not None:
        return p.warmup_reads
    block_reads = int(p.embed.get("block_reads", params.embed.get("block_reads", 1024)))
    return 4 * block_reads * nproc if gpus else 0


def warmup_chain(ctx: Context, plan: dict, knobs: dict, run_predict) -> dict | None:
    """One untimed chain of N ranks before the timed rounds: every GPU of either side has compiled both
    models (the inductor cache is per device) and read the sample once, so the fixed seconds of the two
    sizes are those of a warm start and the two-size fit sees no first-launch outlier. Its wall is reported,
    never used; None when there is none."""
    reads = min(warmup_reads(ctx.params, plan["gpus"], plan["nproc"]), ctx.sample_stats["reads"])
    if not reads:
        return None
    cfg = ctx.embed_config(f"chain-warmup-{plan['nproc']}", **{**knobs, "max_reads": reads})
    start = time.perf_counter()
    run_predict(
        cfg, hidden=ctx.params.scaling.classifier_hidden, nproc=plan["nproc"], gpus=plan["gpus"], launch=True
    )
    return {
        "reads": reads,
        "nproc": plan["nproc"],
        "wall_s": time.perf_counter() - start,
        "why": "untimed: compiles both models on every GPU and reads the sample once before the timed rounds",
    }


def scaling_headline(result: dict) -> dict:
    scaling = result["scaling"] or {}
    e2e = result.get("end_to_end") or {}
    return {
        "scaling_factor": result["scaling_factor"],
        "scaling_efficiency": result["scaling_efficiency"],
        "rank_imbalance": result["rank_imbalance"],
        "scaling_nproc": result["plan"]["nproc"],
        "scaling_on_gpus": result["plan"]["gpus"],
        "per_rank_tok_per_s": scaling.get("per_rank_tok_per_s", {}),
        "per_rank_gpu_util": scaling.get("per_rank_gpu_util", {}),
        "single_tok_per_s": scaling.get("single_tok_per_s"),
        "multi_tok_per_s": scaling.get("multi_tok_per_s"),
        "scaling_factor_nucleotide": result.get("scaling_factor_nucleotide", crit.not_measured("not run")),
        "scaling_factor_embedding_stages": result.get(
            "scaling_factor_embedding_stages", crit.not_measured("not run")
        ),
        "embedding_stages_scaling": (result.get("embedding_stages") or {}).get("stages"),
        # the stage factors over the rounds at the larger size (the headline is their median)
        "scaling_factor_spread": result.get("scaling_factor_spread"),
        "scaling_factor_nucleotide_spread": result.get("scaling_factor_nucleotide_spread"),
        "scaling_factor_embedding_stages_spread": result.get("scaling_factor_embedding_stages_spread"),
        # the criterion: the projected factor while the two-size check holds, else the measured one
        "scaling_factor_end_to_end": result.get("scaling_factor_end_to_end", crit.not_measured("not run")),
        "scaling_factor_end_to_end_source": result.get("scaling_factor_end_to_end_source"),
        # the criterion's factor over the interleaved rounds (the median is the criterion), min-max beside it
        "scaling_factor_end_to_end_spread": factor_spread(e2e),
        "scaling_factor_end_to_end_reason": e2e.get("factor_reason"),
        "scaling_factor_end_to_end_measured": result.get(
            "scaling_factor_end_to_end_measured", crit.not_measured("not run")
        ),
        "scaling_factor_end_to_end_projected": result.get(
            "scaling_factor_end_to_end_projected", crit.not_measured("not run")
        ),
        "scaling_fit_check": e2e.get("fit_check"),
        "end_to_end_scaling": {k: v for k, v in e2e.items() if k != "method"} or None,
    }


def factor_spread(e2e: dict) -> dict | None:
    """{median, min, max, values, repeats} of the factor the criterion took (projected or measured)."""
    chosen = e2e.get(f"{e2e.get('factor_source')}_factor") if e2e else None
    if not isinstance(chosen, dict) or not isinstance(chosen.get("min"), (int, float)):
        return None
    return {k: chosen.get(k) for k in ("median", "min", "max", "values")} | {"repeats": e2e.get("repeats")}


def scaling_figures(ctx: Context, result: dict) -> dict:
    from perfkit import plots, scaling_plots

    plan = result["plan"]
    what = f"{plan['nproc']} GPUs" if plan["gpus"] else f"{plan['nproc']} CPU processes (gloo)"
    one = "1 GPU" if plan["gpus"] else "1 CPU process"
    figs = {}
    if result.get("end_to_end"):
        e2e = result["end_to_end"]
        small, large = e2e["sizes"]
        check = e2e["fit_check"]
        measured, projected = e2e["measured_factor"], e2e["projected_factor"]
        rounds = (
            f"{e2e['repeats']} interleaved round(s) (1 rank, {plan['nproc']} ranks at each size, then "
            f"again); factors are the median over rounds with min-max"
            if e2e["repeats"] > 1
            else "1 round (no repeats: no spread measured)"
        )
        definitions = (
            f"Both sides are launched the same way: torchrun with 1 rank vs {plan['nproc']} ranks, `perfkit "
            f"predict` on the first {small:,} and {large:,} reads; wall = the launching process's wall time "
            f"(launch, planning, both embedding stages, scoring, joining). {rounds}. Projected factor: each "
            f"side's wall = fixed + per read x reads through its two sizes, at {e2e['full_sample_reads']:,} "
            f"reads, 1 rank / {plan['nproc']} ranks = {_fmt_factor(projected['median'])}. Measured factor: "
            f"wall at {large:,} reads, 1 rank / {plan['nproc']} ranks = {_fmt_factor(measured['median'])}. Fit "
            f"check: the {small:,}-read run alone, stage by stage, predicts the {large:,}-read wall: "
            f"1 rank {_fmt_pct(check['single'])}, {plan['nproc']} ranks {_fmt_pct(check['multi'])} (tolerance "
            f"{check['tolerance']:.0%}). Criterion (scaling_factor_end_to_end) = the {e2e['factor_source']} "
            f"factor, {_fmt_factor(e2e['factor'])}: {e2e['factor_reason']}."
        )
        figs["scaling_fit"] = scaling_plots.scaling_fit(
            e2e,
            ctx.path("scaling_fit.png"),
            target=_target(ctx.params, "scaling_factor_end_to_end"),
            labels={"single": one, "multi": what},
            title=f"Whole chain, 1 vs {what}: two-size fit, measured and projected factor "
            f"(criterion uses the {e2e['factor_source']} one)",
            caption=definitions,
        )
        table = pd.DataFrame(e2e["stages"])
        table = pd.DataFrame(
            {
                "stage": table["stage"],
                f"{one}: projected s": (table["single_projected_h"] * 3600).clip(lower=0),
                f"{what}: projected s": (table["multi_projected_h"] * 3600).clip(lower=0),
            }
        )
        stagewise = e2e["stagewise_factor"]["median"]
        figs["scaling_end_to_end"] = plots.stage_breakdown(
            table,
            ctx.path("scaling_end_to_end.png"),
            title=f"Whole chain, {e2e['full_sample_reads']:,} reads projected per stage: {one} vs {what}",
            caption=f"Each stage's seconds through its two sizes ({small:,} and {large:,} reads; medians over "
            f"rounds), fixed + per read x {e2e['full_sample_reads']:,} reads (a stage whose fit falls "
            f"with the reads is drawn at 0). End to end (the fit of the whole wall): "
            f"{e2e['single_h']:.3f} h vs {e2e['multi_h']:.3f} h. Cross-check, the {large:,}-read run alone "
            f"projected stage by stage as 05 does (embedding: fixed + tokens / steady tok/s; others linear): "
            f"{_fmt_factor(stagewise)}. Measured at {large:,} reads: {_fmt_factor(measured['median'])}; "
            f"criterion: {e2e['factor_source']}.",
        )
    if result.get("nucleotide"):
        combined = result["embedding_stages"]
        figs["scaling_nucleotide"] = scaling_plots.scaling_bars(
            result["nucleotide"],
            ctx.path("scaling_nucleotide.png"),
            title=f"Nucleotide stage (DNABERT-S) scaling: 1 vs {what}, same work, v2 packed",
            caption="As for the protein stage. Both embedding stages together, projected to "
            f"{combined['full_sample_reads']:,} reads (full-sample tokens / steady tok/s per stage, "
            f"summed): {_fmt_factor(combined['factor'])}.",
            not_measurable=plan["not_measurable"],
        )
    source = (
        f"the first round's {result['end_to_end']['sizes'][1]:,}-read chains (1 rank and N ranks, both "
        f"launched by torchrun)"
        if result.get("end_to_end")
        else "the two stage runs"
    )
    spread = result.get("scaling_factor_spread")
    if spread and spread["repeats"] > 1:
        source += (
            f"; the headline factor is the median over {spread['repeats']} rounds, "
            f"{spread['median']:.3f}x (min {spread['min']:.3f}x, max {spread['max']:.3f}x)"
        )
    return {
        **figs,
        "scaling": scaling_plots.scaling_bars(
            result["scaling"],
            ctx.path("scaling.png"),
            title=f"Scaling: 1 vs {what}, same work, v2 packed",
            caption=f"From {source}. Steady-state tokens/s per rank and summed (never averaged) from each run's "
            "telemetry; factor = N-process tok/s / 1-process tok/s; efficiency = factor / N; imbalance = "
            "slowest rank's wall / mean wall. GPU utilisation per rank: NVML via nvitop, each rank's own "
            "physical GPU.",
            not_measurable=plan["not_measurable"],
        ),
    }


def _fmt_pct(value) -> str:
    return f"{value:+.1%}" if isinstance(value, (int, float)) else "not checked"


def _fmt_factor(value) -> str:
    return f"{value:.3f}x" if isinstance(value, (int, float)) else f"not measured ({value.get('reason')})"
