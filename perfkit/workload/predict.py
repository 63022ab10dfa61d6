"""The whole chain, each stage timed: translation -> nucleotide embedding -> protein embedding ->
merge -> classifier -> per-read consensus.

Both embedding stages are ordinary `perfkit embed` runs (same runner, telemetry, checkpoints
and resume; 1 or N processes) into OUT/nucleotide/ and OUT/protein/. Chunking and six-frame
translation run inside their DataLoader workers, overlapped with the GPU; the `translation` stage
is the single-process count pass the conservation checks need. Every stage's span goes into
OUT/telemetry.jsonl and OUT/summary.json. Counts are checked at
every stage boundary: frames translated = embedded (each stage), nucleotide ids = protein ids
(same order), rows merged = rows classified, reads in the consensus = reads with a frame.
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from perfkit.environment import environment
from perfkit.errors import UserError
from perfkit.summary import write_json
from perfkit.telemetry import Telemetry
from perfkit.workload import classifier as clf
from perfkit.workload import esm2
from perfkit.workload.config import EmbedConfig
from perfkit.workload.data import count_frames
from perfkit.workload.runner import run_embed
from perfkit.workload.store import open_complete

NUCLEOTIDE_MODEL = "dnabert_s"
MERGE_CHUNK_ROWS = 65_536  # frames merged and classified at a time (~0.9 GB of 3B features)


def run_predict(cfg: EmbedConfig, *, classifier_weights=None, hidden: int = 512, nproc: int = 1,
                gpus: bool = False) -> dict:
    """`cfg` is the protein stage's config (its out_dir is the chain's folder); returns summary.json's content."""
    if cfg.model not in esm2.CONFIGS:
        raise UserError(f"predict's --model is the protein (ESM-2) model, got {cfg.model!r}",
                        f"pass an ESM-2 model; the nucleotide stage always runs {NUCLEOTIDE_MODEL}")
    if cfg.max_seconds is not None:
        raise UserError("predict cannot be capped by time: the two embedding stages would stop at different reads",
                        "cap it by reads (max_reads / --max-reads)")
    if cfg.mode == "v1" and nproc > 1:
        raise UserError("v1 mode runs in one process, as VirNucPro v1.0 did", "drop --nproc or use --mode v2")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)  # no summary of an earlier chain survives a failed one
    telemetry = Telemetry(out / "telemetry.jsonl", run_id=f"predict-{cfg.mode}")
    stages: dict[str, float] = {}
    started: dict[str, float] = {}

    def timed(name):
        started[name] = time.time()
        return telemetry.stage(name)

    try:
        with timed("translation"):
            frames = count_frames(cfg.input, max_reads=cfg.max_reads, chunk_bp=cfg.chunk_bp,
                                  max_residues=cfg.max_residues)

        runs = {}
        for stage, model in (("nucleotide_embedding", NUCLEOTIDE_MODEL), ("protein_embedding", cfg.model)):
            stage_cfg = cfg.model_copy(update={
                "model": model, "out_dir": out / stage.split("_")[0],
                "weights": None if model == NUCLEOTIDE_MODEL else cfg.weights,
                "random_init": "perfkit" if model == NUCLEOTIDE_MODEL else cfg.random_init})
            with timed(stage):
                runs[stage] = _embed(stage_cfg, nproc, gpus)
            embedded = runs[stage]["run"]["output"]["count"]
            if embedded != frames:
                raise RuntimeError(f"count check failed after {stage}: {frames} frames translated, {embedded} embedded")

        started["merge"] = started["classifier"] = time.time()
        ids, probs, classifier_info = _merge_and_classify(out, cfg, classifier_weights, hidden, telemetry)
        with timed("consensus"):
            reads = clf.consensus(ids, probs)
            written = clf.write_predictions(out, ids, probs, reads)
    finally:
        telemetry.close()
    stages = dict(telemetry.stages)
    reads_with_frames = len({i.rsplit("_", 1)[0] for i in ids})
    if len(reads) != reads_with_frames:
        raise RuntimeError(f"count check failed after consensus: {reads_with_frames} reads with frames, {len(reads)} called")

    embedding_s = stages["nucleotide_embedding"] + stages["protein_embedding"]
    summary = {
        "schema": "perfkit.predict/1",
        "mode": cfg.mode,
        "stages_s": stages,
        "stage_started_unix": started,
        "end_to_end_s": sum(stages.values()),
        "bottleneck_stage": max(stages, key=stages.get),
        "stage_share": {k: v / embedding_s for k, v in stages.items() if k.endswith("embedding")},
        "counts": {"frames": frames, "reads_called": len(reads),
                   "virus_reads": int((reads["prediction"] == "virus").sum())},
        "stage_runs": {k: stage_run(r) for k, r in runs.items()},
        "stage_throughput": {k: {"steady_tok_per_s": r["throughput"]["steady_tok_per_s"],
                                 "seq_per_s": r["throughput"]["seq_per_s"], "ranks": r["throughput"]["ranks"]}
                             for k, r in runs.items()},
        "classifier": classifier_info,
        "predictions": written,
        "note": "translation = the count pass over the input (frames translated, for the conservation checks); "
                "the embedding stages translate again inside their DataLoader workers, overlapped with the model",
        "environment": environment(),
    }
    write_json(out / "summary.json", summary)
    return summary


def stage_run(summary: dict) -> dict:
    """What a projection needs from one embedding stage's summary."""
    t = summary["throughput"]
    return {"model": summary["config"]["model"], "sequences": t["sequences"], "real_tokens": t["real_tokens"],
            "tokens_per_sequence": t["real_tokens"] / t["sequences"] if t["sequences"] else None,
            "steady_tok_per_s": t["steady_tok_per_s"], "wall_s": t["wall_s"],
            "model_load_s": float((summary.get("stages_s") or {}).get("model_load", 0.0)),
            "ranks": t.get("ranks", 1)}


def _merge_and_classify(out: Path, cfg: EmbedConfig, classifier_weights, hidden: int, telemetry: Telemetry):
    """Merge and classify chunk by chunk, straight from both embeddings.h5 files: memory stays at one
    chunk (a 6M-read sample holds ~64 GB of features). The two stages' times are summed over chunks."""
    clock = telemetry.now()
    merge_s, classify_s, scored_rows = 0.0, 0.0, 0
    t = time.perf_counter()
    with ExitStack() as files:
        nt, nt_ids = open_complete(out / "nucleotide" / "embeddings.h5")
        files.enter_context(nt)
        pr, pr_ids = open_complete(out / "protein" / "embeddings.h5")
        files.enter_context(pr)
        ids, nt_vectors, pr_vectors = clf.align_by_ids(nt_ids, nt["embeddings"], pr_ids, pr["embeddings"])
        protein_dim = esm2.get_config(cfg.model).embed_dim
        model, info = clf.load_classifier(classifier_weights, hidden=hidden, in_dim=clf.NT_DIM + protein_dim,
                                          seed=cfg.seed)
        probs = np.empty((len(ids), len(clf.CLASSES)), dtype=np.float32)
        merge_s += time.perf_counter() - t
        for start in range(0, len(ids), MERGE_CHUNK_ROWS):
            stop = min(start + MERGE_CHUNK_ROWS, len(ids))
            t = time.perf_counter()
            features = clf.merge_features(nt_vectors[start:stop], pr_vectors[start:stop], protein_dim=protein_dim)
            merge_s += time.perf_counter() - t
            t = time.perf_counter()
            scored = clf.predict_frames(model, features, device="cpu")
            if len(scored) != stop - start:
                raise RuntimeError(f"count check failed in the classifier: rows {start}-{stop} in, {len(scored)} scored")
            probs[start:stop] = scored
            scored_rows += len(scored)
            classify_s += time.perf_counter() - t
        if scored_rows != len(ids):
            raise RuntimeError(f"count check failed after classifier: {len(ids)} frames in, {scored_rows} scored")
    end = telemetry.now()
    telemetry.stage_total("merge", merge_s, clock, end)
    telemetry.stage_total("classifier", classify_s, clock, end)
    return ids, probs, info


def compare_runs(dir_a, dir_b) -> dict:
    """Prediction agreement of two chains (e.g. v1 and v2) from their prediction CSVs and summaries."""
    import json

    frames_a, reads_a = clf.read_predictions(dir_a)
    frames_b, reads_b = clf.read_predictions(dir_b)
    info = [json.loads((Path(d) / "summary.json").read_text())["classifier"] for d in (dir_a, dir_b)]
    return clf.prediction_agreement(reads_a, reads_b, frames_a, frames_b, info[0], info[1])


def _embed(cfg: EmbedConfig, nproc: int, gpus: bool) -> dict:
    if cfg.mode == "v2" and (nproc > 1 or gpus):
        from perfkit.workload.distributed import run_multi

        return run_multi(cfg, nproc, gpus=gpus)
    return run_embed(cfg)
