"""`perfkit` command line. Every user-fixable problem ends as one `error: ...` line and exit code 2; a failed
internal check (counts, alignment, uniqueness) as one `error: ...` line and exit code 3."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from perfkit.errors import CheckFailed, UserError
from perfkit.results import as_summary


def _config_from_args(args):
    from perfkit.params import load_params
    from perfkit.workload.config import make_config

    values = load_params(args.params).get("embed", {}) if args.params else {}
    sources = {key: f"embed.{key} in {args.params}" for key in values}
    flags = {
        "model": args.model,
        "weights": args.weights,
        "mode": args.mode,
        "precision": args.precision,
        "token_budget": args.token_budget,
        "resume": args.resume or None,
        "device": args.device,
        "num_workers": args.num_workers,
        "prefetch_factor": args.prefetch_factor,
        "buffer_size": args.buffer_size,
        "layout": args.layout,
        "checkpoint_every_sequences": args.checkpoint_every,
        "checkpoint_every_seconds": args.checkpoint_seconds,
        "max_reads": args.max_reads,
        "max_seconds": args.max_seconds,
        "seed": args.seed,
        "chunk_bp": args.chunk_bp,
        "block_reads": args.block_reads,
        "copy_stream": False if args.no_copy_stream else None,
        "tokenizer": args.tokenizer,
        "progress": False if args.no_progress else None,
        "nt_model": getattr(args, "nt_model", None),
        "nt_weights": getattr(args, "nt_weights", None),
    }
    given = {k: v for k, v in flags.items() if v is not None}
    values.update(given)
    sources.update({k: FLAG_OF.get(k, "--" + k.replace("_", "-")) for k in given})
    return make_config(sources, input=args.input, out_dir=args.out, **values)


# config settings whose flag is not --<setting-with-dashes>
FLAG_OF = {
    "checkpoint_every_sequences": "--checkpoint-every",
    "checkpoint_every_seconds": "--checkpoint-seconds",
    "copy_stream": "--no-copy-stream",
    "progress": "--no-progress",
    "resume": "--resume",
}


def _nodes(args):
    """The node flags as a Nodes (one node when none is given); they only mean something to a launcher."""
    from perfkit.workload.distributed import Nodes

    given = (
        ("--nnodes", args.nnodes),
        ("--node-rank", args.node_rank),
        ("--rdzv-endpoint", args.rdzv_endpoint),
    )
    typed = [f"{flag} {value}" for flag, value in given if value is not None]
    if typed and args.gpus is None and args.nproc is None:
        raise UserError(
            f"{typed[0]}: the node flags place torchrun ranks, and no --gpus/--nproc asks for any",
            "add --gpus N (GPUs per node) or --nproc N (CPU processes per node)",
        )
    nodes = Nodes(
        nnodes=1 if args.nnodes is None else args.nnodes,
        node_rank=args.node_rank or 0,
        rdzv_endpoint=args.rdzv_endpoint,
    )
    nodes.check()
    return nodes


def _embed(args) -> int:
    from perfkit.workload import distributed, launch
    from perfkit.workload.runner import run_embed

    nodes = _nodes(args)
    cfg = _config_from_args(args)
    # launcher: the same command in N ranks under torchrun
    if args.gpus is not None or args.nproc is not None:
        if args.gpus is not None and args.nproc is not None:
            raise UserError(
                "both --gpus and --nproc given", "--gpus N for GPU ranks, --nproc N for CPU ranks"
            )
        nproc = args.gpus if args.gpus is not None else args.nproc
        code = launch.launch(cfg, nproc, gpus=args.gpus is not None, nodes=nodes, verbose=args.verbose)
        if code != 0:
            rendezvous = (
                (
                    "; RendezvousTimeoutError: the nodes never met (give every node the same --nnodes, "
                    "--rdzv-endpoint and --out, and let them reach node 0 on that port); "
                    "RendezvousConnectionError: node 0 stopped"
                )
                if nodes.rendezvous
                else ""
            )
            print(
                f"error: the {nodes.describe(nproc)} failed (torchrun exit code {code}); the failing rank "
                f"and its error are reported above{rendezvous}",
                file=sys.stderr,
            )
            return code
        if nodes.node_rank != 0:  # node 0's launcher reports the run
            return 0
        summary = json.loads((cfg.out_dir / "summary.json").read_text())
    elif (rank := distributed.torchrun_rank()) is not None:  # `perfkit embed` in a torchrun the user started
        summary = distributed.rank_main(cfg, rank)
        if summary is None:  # only rank 0 reports
            return 0
    else:
        summary = run_embed(cfg)
    t = as_summary(summary).throughput
    run = summary["run"]
    ranks = f" x {t.ranks} ranks" if t.ranks > 1 else ""
    where = "" if run["capped"] else f" -> {run['output'].get('path') or run['output']['checkpoints']}"
    if not t.sequences:  # nothing embedded now: no rates to print (they are None)
        done = run["output"]["count"] if not run["capped"] else 0
        print(
            f"nothing left to do: {done} sequences already embedded{where}"
            if cfg.resume and done
            else f"nothing to embed: {run['frames_translated']} frames survived translation{where}"
        )
        return 0
    print(
        f"{cfg.mode} {cfg.model} {run['precision']} on {run['device']}{ranks}: {t.sequences} sequences, "
        f"{_figure(t.seq_per_s, '.1f')} seq/s, {_figure(t.tok_per_s, '.0f')} tok/s, "
        f"packing {_figure(summary['packing']['efficiency'], '.1%')}{where}"
    )
    _warn_random([cfg.model] if (run.get("weights") or {}).get("source") == "random" else [])
    return 0


def _warn_random(models: list[str]) -> None:
    """One loud line when any part of the result came from random weights."""
    if models:
        print(
            f"note: random weights ({', '.join(models)}): the vectors and calls mean nothing biologically; "
            "the throughput and timing figures stand (real weights: --weights, --nt-weights, --classifier)",
            file=sys.stderr,
        )


def _figure(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _predict(args) -> int:
    from perfkit.workload import distributed
    from perfkit.workload.predict import predict_rank, run_predict

    if args.gpus is not None and args.nproc is not None:
        raise UserError("both --gpus and --nproc given", "--gpus N for GPU ranks, --nproc N for CPU ranks")
    nodes = _nodes(args)
    cfg = _config_from_args(args)
    rank = distributed.torchrun_rank()
    if rank is not None and args.gpus is None and args.nproc is None:  # a rank of a torchrun launch
        summary = predict_rank(cfg, rank, classifier_weights=args.classifier, hidden=args.hidden)
        if summary is None:  # only rank 0 reports
            return 0
    else:
        summary = run_predict(
            cfg,
            classifier_weights=args.classifier,
            hidden=args.hidden,
            nproc=args.gpus or args.nproc or 1,
            gpus=args.gpus is not None,
            nodes=nodes,
        )
        if summary is None:  # another node's launcher: node 0's reports the run
            return 0
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in summary["stages_s"].items())
    counts = summary["counts"]
    frameless = (
        f", {counts['reads_without_frames']} without a frame (no_frames)"
        if counts.get("reads_without_frames")
        else ""
    )
    print(
        f"{counts['input_reads']} reads in: {counts['reads_called']} called ({counts['virus_reads']} virus) from "
        f"{counts['frames']} frames{frameless}; {summary['ranks']} process(es); {stages}; "
        f"bottleneck: {summary['bottleneck_stage']}"
    )
    _warn_random(random_parts(summary))
    return 0


def random_parts(chain: dict) -> list[str]:
    """The parts of a chain whose weights were random: embedding models, then the classifier."""
    parts = [
        f"{stage.split('_')[0]} model {run.get('model')}"
        for stage, run in (chain.get("stage_runs") or {}).items()
        if (run.get("weights") or {}).get("source") == "random"
    ]
    if str((chain.get("classifier") or {}).get("source", "")).startswith("random"):
        parts.append("classifier")
    return parts


def _synth(args) -> int:
    from perfkit.workload.synth import write_synthetic_fasta

    stats = write_synthetic_fasta(args.out, args.n, profile=args.profile, seed=args.seed)
    print(json.dumps(stats, indent=1))
    return 0


def _profile(args) -> int:
    from perfkit.summary import write_json
    from perfkit.workload.synth import profile_fasta

    write_json(args.out, profile_fasta(args.input))
    print(f"profile of {args.input} -> {args.out}")
    return 0


def _env(args) -> int:
    from perfkit.environment import environment

    print(json.dumps(environment(), indent=1))
    return 0


def _wheelhouse(args) -> int:
    from perfkit.wheelhouse import build_wheelhouse

    build_wheelhouse(
        Path(args.out), python_version=args.python, platforms=args.platform or None, skip=args.skip or ()
    )
    return 0


def _suite(args) -> int:
    from perfkit.suite.runner import run_suite

    return run_suite(Path(args.params), Path(args.out), only=args.only)


def _publish(args) -> int:
    from perfkit.publish import publish

    done = publish(args.run_dir, args.dest, command=args.command, commit=args.commit)
    print(f"published {done['files']} files ({done['bytes'] / 2**20:.1f} MiB) -> {done['dest']}")
    return 0


def _compare(args) -> int:
    from perfkit.compare import main as compare

    return compare(args.run_a, args.run_b, noise=args.noise, json_out=args.json)


EMBED_OUT = (
    "output folder: embeddings.h5 (ids + vectors), summary.json, telemetry.jsonl, checkpoints/ (shards, "
    "for --resume)"
)
PREDICT_OUT = (
    "output folder: predictions_per_read.csv (the calls, one row per input read, reads without a frame "
    "included), predictions_per_frame.csv, summary.json, telemetry.jsonl; nucleotide/ and protein/ (each "
    "embedding stage's shards and summary, for --resume), parts/ (each rank's calls before rank 0 joins "
    "them); no embeddings.h5"
)


def _add_run_arguments(e: argparse.ArgumentParser, out_help: str) -> None:
    e.add_argument("input", type=Path, help="FASTA file (plain or .gz)")
    e.add_argument("-o", "--out", type=Path, required=True, help=out_help)
    e.add_argument(
        "--params", type=Path, help="YAML params file; its `embed:` section sets defaults, flags win"
    )
    e.add_argument("--model", help="esm2_t6_8M ... esm2_t36_3B ... esm2_t48_15B, or dnabert_s (nucleotides)")
    e.add_argument(
        "--weights", type=Path, help="fair-esm .pt checkpoint or HuggingFace folder (default: seeded random)"
    )
    e.add_argument("--mode", choices=["v2", "v1"])
    e.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"])
    e.add_argument(
        "--layout", choices=["packed", "padded"], help="v2 batching: packed varlen (default) or padded SDPA"
    )
    e.add_argument("--token-budget", type=int)
    e.add_argument("--buffer-size", type=int, help="sequences per packing buffer")
    e.add_argument("--num-workers", type=int)
    e.add_argument("--prefetch-factor", type=int)
    e.add_argument(
        "--no-copy-stream", action="store_true", help="copy inputs on the compute stream (no overlap)"
    )
    e.add_argument("--checkpoint-every", type=int, help="checkpoint every N sequences")
    e.add_argument("--checkpoint-seconds", type=float, help="checkpoint at least every S seconds")
    e.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoints")
    e.add_argument("--max-reads", type=int, help="embed only the first N reads")
    e.add_argument("--max-seconds", type=float, help="stop after S seconds (benchmark: no embeddings.h5)")
    e.add_argument(
        "--chunk-bp", type=int, choices=[300, 500], help="chunk reads/contigs first, as the seed does"
    )
    e.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    e.add_argument("--seed", type=int)
    e.add_argument(
        "--block-reads", type=int, help="reads per work unit (a worker's, and a rank's unit of balance)"
    )
    e.add_argument("--gpus", type=int, help="run N GPU ranks (NCCL) through torchrun on this node")
    e.add_argument("--nproc", type=int, help="run N CPU ranks (gloo) through torchrun on this node")
    # several hosts: torchrun's own names; the same command on every node, --gpus/--nproc per node
    e.add_argument("--nnodes", type=int, help="with --gpus/--nproc: the run spans this many nodes (hosts)")
    e.add_argument(
        "--node-rank", type=int, help="with --nnodes: this node's number, 0 to N-1 (0 hosts the rendezvous)"
    )
    e.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="with --nnodes: node 0's address and a free port, the same on every node",
    )
    e.add_argument("--no-progress", action="store_true")
    e.add_argument(
        "--tokenizer", type=Path, help="dnabert_s: a DNABERT-S tokenizer.json (default: stand-in BPE)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perfkit", description="Measure, validate and tune a GPU batch-embedding pipeline."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    e = sub.add_parser(
        "embed", help="embed a FASTA: six-frame translation -> ESM-2 (v2 packed or v1 fair-esm) or DNABERT-S"
    )
    _add_run_arguments(e, EMBED_OUT)
    e.set_defaults(func=_embed)

    pr = sub.add_parser(
        "predict", help="the whole chain: nucleotide + protein embeddings -> classifier -> per-read calls"
    )
    _add_run_arguments(pr, PREDICT_OUT)
    pr.add_argument("--classifier", type=Path, help="classifier state_dict (.pt); default: seeded random")
    pr.add_argument(
        "--hidden", type=int, default=512, help="classifier hidden size (must match --classifier)"
    )
    pr.add_argument(
        "--nt-model",
        help="the nucleotide stage's model: dnabert_s (default) or dnabert_mini (2 layers, 128 wide: smoke "
        "runs on a CPU)",
    )
    pr.add_argument(
        "--nt-weights",
        type=Path,
        help="DNABERT-S weights: a HuggingFace folder, a .safetensors or a .bin file (default: seeded random)",
    )
    pr.set_defaults(func=_predict)

    d = sub.add_parser("data", help="synthetic samples and sample profiles")
    dsub = d.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    s = dsub.add_parser("synth", help="write a reproducible ORF-rich viral-like FASTA")
    s.add_argument("-n", type=int, required=True, help="number of reads")
    s.add_argument("--profile", default="reads150", help="reads150 | reads300 | contigs | PROFILE.json")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--out", type=Path, required=True)
    s.set_defaults(func=_synth)
    p = dsub.add_parser("profile", help="record a real sample's length and frame statistics (no sequences)")
    p.add_argument("input", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True)
    p.set_defaults(func=_profile)

    su = sub.add_parser("suite", help="run the notebook suite (01-06) with papermill into a run folder")
    su.add_argument("--params", required=True, help="params YAML, e.g. params/smoke.yaml")
    su.add_argument("--out", required=True, help="run folder, e.g. outputs/smoke")
    su.add_argument("--only", nargs="*", help="run only these notebooks (stems), then the summary")
    su.set_defaults(func=_suite)

    pu = sub.add_parser(
        "publish",
        help="copy a finished suite run's report (HTML, JSON; no shards) into a folder, "
        "with COMMIT, COMMAND, GPUS and a README of its criteria",
    )
    pu.add_argument("run_dir", type=Path, help="the suite's --out folder")
    pu.add_argument("dest", type=Path, help="new folder, e.g. outputs/reference/2026-11-30-h200-x2")
    pu.add_argument(
        "--command", required=True, help="the command that made the run, as a reader would re-run it"
    )
    pu.add_argument("--commit", help="the code's commit (default: the one the suite recorded when it ran)")
    pu.set_defaults(func=_publish)

    co = sub.add_parser(
        "compare",
        help="two suite runs or published reports side by side: every criterion and headline "
        "figure, the change, improved / regressed / within noise; exit 1 on a "
        "criterion regression",
    )
    co.add_argument("run_a", type=Path, help="the earlier run (a suite --out folder or a published report)")
    co.add_argument("run_b", type=Path, help="the later run")
    co.add_argument(
        "--noise",
        type=float,
        default=0.05,
        help="noise floor as a fraction (default 0.05): changes within it, or within the runs' own "
        "recorded spread when larger, are within noise",
    )
    co.add_argument("--json", type=Path, help="also write the table as JSON here")
    co.set_defaults(func=_compare)

    w = sub.add_parser(
        "wheelhouse", help="download wheels of every runtime dependency (not torch) for an offline GPU node"
    )
    w.add_argument("--out", default="wheelhouse")
    w.add_argument("--python", default="3.12", help="target Python version")
    w.add_argument(
        "--platform", action="append", help="pip platform tag (repeatable); default manylinux x86_64 tags"
    )
    w.add_argument("--skip", nargs="*", help="packages the node already has (left out, also as dependencies)")
    w.set_defaults(func=_wheelhouse)

    v = sub.add_parser("env", help="print the environment a run would record (GPUs, driver, torch, commit)")
    v.set_defaults(func=_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (UserError, CheckFailed) as err:
        print(err.one_line(), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`perfkit compare A B | head`): not an error of the command
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
