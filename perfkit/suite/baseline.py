"""01_baseline: v1 vs v2 throughput on the same reads (repeated), the equivalence gates, and the v1.0 and v2
chains on the same reads: the end-to-end speed-up and the prediction agreement."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from perfkit import criteria as crit
from perfkit.projection import project_end_to_end, repeated
from perfkit.records import plain as _plain
from perfkit.suite.context import Context, is_cuda, nucleotide_model, ratio, resolved_device, throughput_row
from perfkit.suite.params import deep_merge
from perfkit.summary import write_json


@dataclass(frozen=True)
class Variant:
    """One row of 01's throughput table: a run's overrides, or why it is not measured here."""

    name: str
    overrides: dict
    skip: str | None = None

    def run_name(self, index: int, repeat: int) -> str:
        o = self.overrides
        return (
            f"{index}-{o.get('model', 'esm')}-{o['mode']}-{o.get('layout', 'v1')}-{o['precision']}-r{repeat}"
        )


def variants(ctx: Context, device: str, precision: str) -> list[Variant]:
    """v1 fp32, v1 fp16 (GPU only), v2 padded, v2 packed; v1 and v2 of the nucleotide stage."""
    p = ctx.params.baseline
    cuda = is_cuda(device)
    fp16_skip = (
        None
        if (cuda and p.v1_fp16)
        else (
            "fp16 runs on GPU only: not measured on " + device if not cuda else "v1_fp16: false in the params"
        )
    )
    nt_skip = None if p.nucleotide else "baseline.nucleotide: false in the params"
    nt = nucleotide_model(ctx.params)
    label = {"dnabert_s": "DNABERT-S"}.get(nt, nt)
    return [
        Variant("v1 fair-esm fp32", dict(mode="v1", precision="fp32")),
        Variant("v1 fair-esm fp16", dict(mode="v1", precision="fp16"), fp16_skip),
        Variant(f"v2 padded SDPA {precision}", dict(mode="v2", layout="padded", precision=precision)),
        Variant(f"v2 packed {precision}", dict(mode="v2", layout="packed", precision=precision)),
        Variant(f"v1 {label} fp32", dict(model=nt, mode="v1", precision="fp32"), nt_skip),
        Variant(
            f"v2 {label} packed {precision}",
            dict(model=nt, mode="v2", layout="packed", precision=precision),
            nt_skip,
        ),
    ]


# (headline name, numerator variant index, denominator variant index, why it can be missing)
RATIOS = (
    ("speedup_v2_over_v1", 3, 0, "v1 fp32 or v2 packed throughput missing"),
    ("speedup_v2_over_v1_fp16", 3, 1, "v1 fp16 not measured on this device"),
    ("speedup_v2_over_padded", 3, 2, "padded or packed throughput missing"),
    ("speedup_nt_v2_over_v1", 5, 4, "nucleotide v1 or v2 throughput missing"),
)


def run_baseline(ctx: Context) -> dict:
    """Every variant on the same first `baseline.reads` reads of the sample, in `baseline.repeats` interleaved
    rounds (each round runs every variant once, in table order): each variant's steady tok/s and each
    speed-up is the median over rounds, with min-max."""
    from perfkit.workload.runner import run_embed

    p = ctx.params.baseline
    device = resolved_device(ctx.params)
    precision = ctx.params.embed.get("precision", "auto")
    if precision == "auto":
        precision = "bf16" if is_cuda(device) else "fp32"
    plan = variants(ctx, device, precision)
    rows: list[list[dict]] = [[] for _ in plan]
    summaries = {}
    for repeat in range(p.repeats):
        for index, variant in enumerate(plan):
            if variant.skip:
                continue
            knobs = {
                **deep_merge(ctx.params.embed, p.embed),
                **variant.overrides,
                "max_reads": p.reads,
                "device": device,
            }
            summary = run_embed(ctx.embed_config(variant.run_name(index, repeat), **knobs))
            summaries.setdefault(variant.name, summary)
            rows[index].append(throughput_row(variant.name, summary))
    table = pd.DataFrame([median_row(variant, rows[i], p.repeats) for i, variant in enumerate(plan)])
    result = {
        "table": table,
        "summaries": summaries,
        "device": device,
        "precision": precision,
        "reads": p.reads,
        "repeats": p.repeats,
        "spreads": {},
    }
    for name, top, bottom, why in RATIOS:
        why = plan[top].skip or plan[bottom].skip or why
        per_round = [ratio(a["tok_per_s"], b["tok_per_s"], why) for a, b in zip(rows[top], rows[bottom])]
        result["spreads"][name] = repeated(per_round)
        result[name] = (
            result["spreads"][name]["median"] if result["spreads"][name] else crit.not_measured(why)
        )
    write_json(ctx.path("throughput.json"), _plain(table))
    return result


def median_row(variant: Variant, rows: list[dict], repeats: int) -> dict:
    """A variant's row: its first round's figures with the steady tok/s and seq/s replaced by the medians
    over rounds, and the tok/s min-max beside them."""
    if not rows:
        return {
            **throughput_row(variant.name, None, note=variant.skip or "not run"),
            "tok_per_s_min": None,
            "tok_per_s_max": None,
            "repeats": 0,
        }
    rates = [r["tok_per_s"] for r in rows if r["tok_per_s"] is not None]
    seqs = [r["seq_per_s"] for r in rows if r["seq_per_s"] is not None]
    return {
        **rows[0],
        "tok_per_s": float(np.median(rates)) if rates else None,
        "seq_per_s": float(np.median(seqs)) if seqs else None,
        "tok_per_s_min": min(rates, default=None),
        "tok_per_s_max": max(rates, default=None),
        "repeats": len(rows),
        "note": "" if len(rows) == repeats else f"{len(rows)} of {repeats} rounds",
    }


# the chains: v1.0 as the original code ran it, v1.0 as refactored (seed-system-notes: fp16, file-order
# batches closed at 2048 raw residues, DNABERT-S one sequence per forward), and v2
CHAIN_FORMS = {
    "original": {"mode": "v1", "precision": "fp32", "v1_batching": "length_sorted"},
    "refactored": {"mode": "v1", "precision": "fp16", "v1_batching": "file_order"},
}


def run_chains(ctx: Context, device: str, precision: str) -> dict:
    """The whole chain (perfkit predict) on the same first `chains.reads` reads as v1.0 (each form of
    `chains.forms`) and as v2, with the same weights (ESM-2 from fair-esm's seeded init, the same seeded
    DNABERT-S and classifier), in `chains.repeats` interleaved rounds. Each chain is projected to the full
    sample by its own stage rates (`projection.project_end_to_end`); a round's speed-up is its faster v1.0
    chain's hours / its v2 hours, and the figure is the median over rounds with min-max. Agreement = share of
    reads with the same call, v1.0 (the original form where it ran) against v2, first round."""
    from perfkit.workload.predict import compare_runs, run_predict

    p = ctx.params.baseline.chains
    if p is None:
        why = crit.not_measured("baseline.chains: null in the params")
        return {"agreement": why, "speedup": why, "details": None, "chains": None}
    model = p.model or ctx.params.embed.get("model", "esm2_t6_8M")
    reads = min(p.reads, ctx.sample_stats["reads"])
    full_reads = ctx.params.full_validation.full_sample_reads
    cuda = is_cuda(device)
    # baseline.embed too: on these few reads v2 needs its smaller packs to reach a steady state, without which
    # its stage seconds (model build included) would be projected as if they grew with the reads
    common = {**deep_merge(ctx.params.embed, ctx.params.baseline.embed), "model": model, "device": device}
    v2 = {"mode": "v2", "layout": "packed", "precision": precision, "random_init": "fair-esm"}
    warmup = (
        p.warmup_reads
        if p.warmup_reads is not None
        else (int(ctx.params.embed.get("block_reads", 1024)) if cuda else 0)
    )
    if warmup:  # untimed: compiles both models, so the timed v2 chain is not charged for it
        run_predict(
            ctx.embed_config("chain-v2-warmup", **{**common, **v2}, max_reads=min(warmup, reads)),
            hidden=p.hidden,
        )
    rounds = [
        run_chain_round(ctx, p, common, v2, reads, full_reads, repeat, cuda) for repeat in range(p.repeats)
    ]
    per_round = [
        ratio(
            min(r[f]["projected_hours"] for f in p.forms), r["v2"]["projected_hours"], "a chain has no hours"
        )
        for r in rounds
    ]
    spread_ = repeated(per_round)
    speedup = spread_["median"] if spread_ else per_round[0]
    sides = {
        form: {
            **side,
            "projected_hours": float(np.median([r[form]["projected_hours"] for r in rounds])),
            "end_to_end_s": float(np.median([r[form]["end_to_end_s"] for r in rounds])),
        }
        for form, side in rounds[0].items()
    }
    fastest = min(p.forms, key=lambda form: sides[form]["projected_hours"])
    against = "original" if "original" in p.forms else p.forms[0]
    details = compare_runs(ctx.out / "runs" / f"chain-{against}-r0", ctx.out / "runs" / "chain-v2-r0")
    details.update(
        model=model,
        reads=reads,
        v1_form=against,
        precision_v1=sides[against]["precision"],
        precision_v2=precision,
        device=device,
        end_to_end_s={form: side["end_to_end_s"] for form, side in sides.items()},
    )
    write_json(ctx.path("agreement.json"), details)
    write_json(
        ctx.path("chains.json"),
        {
            "reads": reads,
            "full_sample_reads": full_reads,
            "fastest_v1": fastest,
            "speedup": speedup,
            "speedup_spread": spread_,
            "chains": sides,
            "rounds": rounds,
        },
    )
    agreement = (
        details["agreement"]
        if details.get("same_classifier")
        else crit.not_measured("the chains used different classifier weights")
    )
    return {
        "agreement": agreement,
        "details": details,
        "speedup": speedup,
        "speedup_spread": spread_,
        "fastest_v1": fastest,
        "chains": sides,
        "reads": reads,
        "repeats": p.repeats,
    }


def run_chain_round(
    ctx: Context, p, common: dict, v2: dict, reads: int, full_reads: int, repeat: int, cuda: bool
) -> dict:
    """One round: every v1.0 form, then v2, on the same reads; each chain projected by its stage rates."""
    from perfkit.workload.predict import run_predict, stage_summaries

    sides = {}
    for form in [*p.forms, "v2"]:
        knobs = v2 if form == "v2" else {**CHAIN_FORMS[form]}
        if form == "refactored" and not cuda:
            knobs["precision"] = "fp32"  # fp16 matmuls are a GPU feature
        cfg = ctx.embed_config(f"chain-{form}-r{repeat}", **{**common, **knobs}, max_reads=reads)
        chain = run_predict(cfg, hidden=p.hidden)
        projection = project_end_to_end(chain, stage_summaries(cfg.out_dir), reads, full_reads, {})
        sides[form] = {
            "form": form,
            "precision": cfg.precision,
            "batching": cfg.batch_rule(nucleotide=False),
            "end_to_end_s": chain["end_to_end_s"],
            "projected_hours": projection["hours"],
            "stages_s": chain["stages_s"],
            # an embedding stage without a steady rate is projected linearly, fixed seconds included
            "no_steady_rate": [
                row["stage"]
                for row in projection["stages"]
                if row["stage"].endswith("_embedding") and not (row["steady_tok_per_s"] or 0) > 0
            ],
            "projection": projection,
        }
    return sides


def chains_table(chains: dict | None) -> pd.DataFrame | None:
    """One row per chain: form, precision, batching, measured seconds, projected hours for the full sample."""
    if not chains or not chains.get("chains"):
        return None
    return pd.DataFrame(
        [
            {k: side[k] for k in ("form", "precision", "batching", "end_to_end_s", "projected_hours")}
            for side in chains["chains"].values()
        ]
    )


def run_equivalence(ctx: Context, device: str, precision: str) -> dict:
    """The equivalence gate (fair-esm fp32 padded vs our packed path) on the run's device/precision."""
    from perfkit.workload.equivalence import KERNEL_KNOBS, default_proteins, run_equivalence_gate

    p = ctx.params.baseline.equivalence
    model = p.model or ctx.params.embed.get("model", "esm2_t6_8M")
    result = run_equivalence_gate(
        model_name=model,
        proteins=default_proteins(n=p.proteins, seed=p.seed),
        device=device,
        precision=precision,
        seed=p.seed,
        token_budget=p.token_budget,
        **{knob: ctx.params.embed[knob] for knob in KERNEL_KNOBS if knob in ctx.params.embed},
    )
    write_json(ctx.path("equivalence.json"), result)
    return result


def run_nt_equivalence(ctx: Context, device: str, precision: str) -> dict:
    """DNABERT-S gate: packed path at the run's precision vs the fp32 padded path, same weights, same device.
    The path is the one the nucleotide stage takes: its kernel (`nt_attention`: auto = flex in half precision
    on CUDA) and, with `compile`, its compiled blocks (`embed.nucleotide` overrides both)."""
    from perfkit.workload import dnabert

    p = ctx.params.baseline
    if not p.nucleotide:
        return {
            "passed": crit.not_measured("baseline.nucleotide: false in the params"),
            "tokens_per_base": None,
        }
    stage = {
        **ctx.params.embed,
        **{k: v for k, v in (ctx.params.embed.get("nucleotide") or {}).items() if v is not None},
    }
    result = dnabert.run_nt_equivalence(
        device=device,
        precision=precision,
        n=p.nt_equivalence_reads,
        config=dnabert.CONFIGS[nucleotide_model(ctx.params)],
        packed_attention=stage.get("nt_attention", "auto"),
        compile=bool(stage.get("compile", False)),
    )
    write_json(ctx.path("nt_equivalence.json"), result)
    return result


def agreement_interval(details: dict | None):
    """[low, high] Wilson 95 % interval of the reads' agreement, or NOT MEASURED."""
    if not details or not details.get("reads_union"):
        return crit.not_measured("no agreement run")
    return list(crit.wilson_interval(int(details["same_prediction"]), int(details["reads_union"])))


def baseline_headline(
    result: dict, gate: dict, chains: dict | None = None, nt_gate: dict | None = None
) -> dict:
    agreement = chains or {
        "agreement": crit.not_measured("not run"),
        "speedup": crit.not_measured("not run"),
        "details": None,
        "chains": None,
    }
    nt_gate = nt_gate or {"passed": crit.not_measured("not run"), "tokens_per_base": None}
    return {
        "nt_equivalence_gate_passed": nt_gate["passed"],
        "nt_tokens_per_base": nt_gate["tokens_per_base"],
        "nt_equivalence_gate": {
            k: nt_gate.get(k)
            for k in ("passed", "precision", "device", "attention_path", "num_reads", "thresholds", "stats")
        },
        "speedup_nt_v2_over_v1": result["speedup_nt_v2_over_v1"],
        "prediction_agreement_v1_v2": agreement["agreement"],
        # on a few hundred reads the share alone hides its uncertainty: the Wilson 95 % interval beside it
        "prediction_agreement_v1_v2_ci95": agreement_interval(agreement["details"]),
        "prediction_agreement": agreement["details"],
        # the seed's "over v1.0": the whole chain, v2 against the faster v1.0 form, same reads, projected
        "speedup_chain_v2_over_v1": agreement["speedup"],
        "speedup_chain_v2_over_v1_spread": agreement.get("speedup_spread"),
        "v1_chains": {
            form: {k: side[k] for k in ("precision", "batching", "end_to_end_s", "projected_hours")}
            for form, side in (agreement.get("chains") or {}).items()
        }
        or None,
        # the protein stage alone (secondary figures): medians over the rounds, spreads beside them
        "speedup_v2_over_v1": result["speedup_v2_over_v1"],
        "speedup_v2_over_v1_fp16": result["speedup_v2_over_v1_fp16"],
        "speedup_v2_over_padded": result["speedup_v2_over_padded"],
        **{f"{name}_spread": value for name, value in result["spreads"].items()},
        "baseline_reads": result["reads"],
        "baseline_repeats": result["repeats"],
        "equivalence_gate_passed": bool(gate["passed"]),
        "equivalence_gate": {
            k: gate.get(k)
            for k in (
                "passed",
                "precision",
                "device",
                "model_name",
                "attention_path",
                "compiled",
                "thresholds",
            )
        }
        | {"stats": gate["stats"]},
        "throughput": result["table"],
        "baseline_device": result["device"],
    }


def baseline_figures(ctx: Context, result: dict) -> dict:
    from perfkit import plots

    model = ctx.params.embed.get("model", "esm2_t6_8M")
    rounds = (
        f"median of {result['repeats']} interleaved rounds" if result["repeats"] > 1 else "1 round, no spread"
    )
    fig = plots.throughput_bars(
        result["table"],
        ctx.path("throughput.png"),
        title=f"ESM-2 {model} and DNABERT-S on {result['device']}: v1 vs v2, the same {result['reads']:,} reads",
        caption=f"Steady-state tokens/s ({rounds}; real tokens incl. BOS/EOS, counted from the end of the warm-up "
        "batches to the end of the loop) from each run's telemetry; token utilisation = real tokens / "
        "(batches x budget); padding waste = pad slots / all slots. Bars marked 'not measured' did not run "
        "on this device.",
    )
    return {"throughput": fig}
