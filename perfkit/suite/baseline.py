"""01_baseline: v1 vs v2 throughput on the same sample, the equivalence gates and the v1/v2 prediction
agreement."""
from __future__ import annotations

import pandas as pd

from perfkit import criteria as crit
from perfkit.records import plain as _plain
from perfkit.suite.context import NUCLEOTIDE_MODEL, Context, is_cuda, ratio, resolved_device, throughput_row
from perfkit.summary import write_json


def run_baseline(ctx: Context) -> dict:
    """v1 fp32, v1 fp16 (GPU only), v2 padded, v2 packed on the same sample and device; speedups."""
    from perfkit.workload.runner import run_embed

    p = ctx.params.baseline
    device = resolved_device(ctx.params)
    cuda = is_cuda(device)
    caps = {"max_seconds": p.max_seconds, "max_reads": p.max_reads}
    v1_caps = {**caps, "max_seconds": p.v1_max_seconds or p.max_seconds}
    v2_precision = ctx.params.embed.get("precision", "auto")
    if v2_precision == "auto":
        v2_precision = "bf16" if cuda else "fp32"
    plan = [
        ("v1 fair-esm fp32", dict(mode="v1", precision="fp32", **v1_caps), None),
        ("v1 fair-esm fp16", dict(mode="v1", precision="fp16", **v1_caps),
         None if (cuda and p.v1_fp16) else ("fp16 runs on GPU only: not measured on " + device if not cuda
                                            else "v1_fp16: false in the params")),
        (f"v2 padded SDPA {v2_precision}", dict(mode="v2", layout="padded", precision=v2_precision, **caps), None),
        (f"v2 packed {v2_precision}", dict(mode="v2", layout="packed", precision=v2_precision, **caps), None),
    ]
    nt_skip = None if p.nucleotide else "baseline.nucleotide: false in the params"
    plan += [
        ("v1 DNABERT-S fp32", dict(model=NUCLEOTIDE_MODEL, mode="v1", precision="fp32", **v1_caps), nt_skip),
        (f"v2 DNABERT-S packed {v2_precision}", dict(model=NUCLEOTIDE_MODEL, mode="v2", layout="packed",
                                                     precision=v2_precision, **caps), nt_skip),
    ]
    rows, summaries = [], {}
    for index, (variant, overrides, skip) in enumerate(plan):
        if skip:
            rows.append(throughput_row(variant, None, note=skip))
            continue
        name = (f"{index}-{overrides.get('model', 'esm')}-{overrides['mode']}-{overrides.get('layout', 'v1')}"
                f"-{overrides['precision']}")
        summary = run_embed(ctx.embed_config(name, device=device, **overrides))
        summaries[variant] = summary
        rows.append(throughput_row(variant, summary))
    table = pd.DataFrame(rows)
    tok = dict(zip(table["variant"], table["tok_per_s"]))
    v1, v1_16, padded, packed, nt_v1, nt_v2 = (tok[plan[i][0]] for i in range(6))
    result = {
        "table": table,
        "summaries": summaries,
        "device": device,
        "precision": v2_precision,
        "speedup_v2_over_v1": ratio(packed, v1, "v1 fp32 or v2 packed throughput missing"),
        "speedup_v2_over_v1_fp16": ratio(packed, v1_16, "v1 fp16 not measured on this device"),
        "speedup_v2_over_padded": ratio(packed, padded, "padded or packed throughput missing"),
        "speedup_nt_v2_over_v1": ratio(nt_v2, nt_v1, nt_skip or "nucleotide v1 or v2 throughput missing"),
    }
    write_json(ctx.path("throughput.json"), _plain(table))
    return result


def run_agreement(ctx: Context, device: str, precision: str) -> dict:
    """The whole chain twice on the same reads, v1 (fp32, fair-esm, fixed nucleotide batches) and v2
    (packed, the run's precision), with the same weights: ESM-2 from fair-esm's seeded init on both
    sides, the same seeded DNABERT-S and classifier. Agreement = share of reads with the same call."""
    from perfkit.workload.predict import compare_runs, run_predict

    p = ctx.params.baseline.agreement
    if p is None:
        return {"agreement": crit.not_measured("baseline.agreement: null in the params"), "details": None}
    model = p.model or ctx.params.embed.get("model", "esm2_t6_8M")
    sides = {}
    for mode, precision_ in (("v1", "fp32"), ("v2", precision)):
        extra = {"random_init": "fair-esm"} if mode == "v2" else {}
        cfg = ctx.embed_config(f"agreement-{mode}", model=model, mode=mode, layout="packed", precision=precision_,
                               device=device, max_reads=p.reads, **extra)
        sides[mode] = run_predict(cfg, hidden=p.hidden)
    details = compare_runs(ctx.out / "runs" / "agreement-v1", ctx.out / "runs" / "agreement-v2")
    details.update(model=model, reads=p.reads, precision_v1="fp32", precision_v2=precision, device=device,
                   end_to_end_s={m: sides[m]["end_to_end_s"] for m in sides})
    write_json(ctx.path("agreement.json"), details)
    if not details.get("same_classifier"):
        return {"agreement": crit.not_measured("the two chains used different classifier weights"),
                "details": details}
    return {"agreement": details["agreement"], "details": details}


def run_equivalence(ctx: Context, device: str, precision: str) -> dict:
    """The equivalence gate (fair-esm fp32 padded vs our packed path) on the run's device/precision."""
    from perfkit.workload.equivalence import default_proteins, run_equivalence_gate

    p = ctx.params.baseline.equivalence
    model = p.model or ctx.params.embed.get("model", "esm2_t6_8M")
    result = run_equivalence_gate(model_name=model, proteins=default_proteins(n=p.proteins, seed=p.seed),
                                  device=device, precision=precision, seed=p.seed, token_budget=p.token_budget,
                                  compile=bool(ctx.params.embed.get("compile", False)),
                                  compile_scope=ctx.params.embed.get("compile_scope", "blocks"),
                                  attention=ctx.params.embed.get("attention", "auto"),
                                  gelu_epilogue=bool(ctx.params.embed.get("gelu_epilogue", False)))
    write_json(ctx.path("equivalence.json"), result)
    return result


def run_nt_equivalence(ctx: Context, device: str, precision: str) -> dict:
    """DNABERT-S gate: packed path at the run's precision vs the fp32 padded path, same weights, same device.
    The path is the one the nucleotide stage takes: its kernel (`nt_attention`: auto = flex in half precision
    on CUDA) and, with `compile`, its compiled blocks (`embed.nucleotide` overrides both)."""
    from perfkit.workload import dnabert

    p = ctx.params.baseline
    if not p.nucleotide:
        return {"passed": crit.not_measured("baseline.nucleotide: false in the params"), "tokens_per_base": None}
    stage = {**ctx.params.embed, **{k: v for k, v in (ctx.params.embed.get("nucleotide") or {}).items()
                                    if v is not None}}
    result = dnabert.run_nt_equivalence(device=device, precision=precision, n=p.nt_equivalence_reads,
                                        packed_attention=stage.get("nt_attention", "auto"),
                                        compile=bool(stage.get("compile", False)))
    write_json(ctx.path("nt_equivalence.json"), result)
    return result


def agreement_interval(details: dict | None):
    """[low, high] Wilson 95 % interval of the reads' agreement, or NOT MEASURED."""
    if not details or not details.get("reads_union"):
        return crit.not_measured("no agreement run")
    return list(crit.wilson_interval(int(details["same_prediction"]), int(details["reads_union"])))


def baseline_headline(result: dict, gate: dict, agreement: dict | None = None, nt_gate: dict | None = None) -> dict:
    agreement = agreement or {"agreement": crit.not_measured("not run"), "details": None}
    nt_gate = nt_gate or {"passed": crit.not_measured("not run"), "tokens_per_base": None}
    return {
        "nt_equivalence_gate_passed": nt_gate["passed"],
        "nt_tokens_per_base": nt_gate["tokens_per_base"],
        "nt_equivalence_gate": {k: nt_gate.get(k) for k in ("passed", "precision", "device", "attention_path",
                                                            "num_reads", "thresholds", "stats")},
        "speedup_nt_v2_over_v1": result["speedup_nt_v2_over_v1"],
        "prediction_agreement_v1_v2": agreement["agreement"],
        # on a few hundred reads the share alone hides its uncertainty: the Wilson 95 % interval beside it
        "prediction_agreement_ci95": agreement_interval(agreement["details"]),
        "prediction_agreement": agreement["details"],
        "speedup_v2_over_v1": result["speedup_v2_over_v1"],
        "speedup_v2_over_v1_fp16": result["speedup_v2_over_v1_fp16"],
        "speedup_v2_over_padded": result["speedup_v2_over_padded"],
        "equivalence_gate_passed": bool(gate["passed"]),
        "equivalence_gate": {k: gate.get(k) for k in ("passed", "precision", "device", "model_name", "attention_path",
                                                       "compiled", "thresholds")} | {"stats": gate["stats"]},
        "throughput": result["table"],
        "baseline_device": result["device"],
    }


def baseline_figures(ctx: Context, result: dict) -> dict:
    from perfkit import plots

    model = ctx.params.embed.get("model", "esm2_t6_8M")
    reads = ctx.sample_stats["reads"]
    fig = plots.throughput_bars(
        result["table"], ctx.path("throughput.png"),
        title=f"ESM-2 {model} and DNABERT-S on {result['device']}: v1 vs v2, same {reads:,}-read sample",
        caption="Steady-state tokens/s (real tokens incl. BOS/EOS, first warm-up batches excluded) from each "
                "run's telemetry; token utilisation = real tokens / (batches x budget); padding waste = pad slots / "
                "all slots. Bars marked 'not measured' did not run on this device.")
    return {"throughput": fig}
