"""The whole chain, each stage timed: translation -> nucleotide embedding -> protein embedding ->
merge -> classifier -> per-read consensus.

Both embedding stages are ordinary `perfkit embed` runs (same runner, telemetry, checkpoints
and resume; 1 or N processes) into OUT/nucleotide/ and OUT/protein/. Chunking and six-frame
translation run inside their DataLoader workers, overlapped with the GPU; `translation_s` is a
separate single-process pass that says what translation alone costs. Counts are checked at
every stage boundary: frames translated = embedded (each stage), nucleotide ids = protein ids
(same order), rows merged = rows classified, reads in the consensus = reads with a frame.
"""
from __future__ import annotations

import time
from pathlib import Path

from perfkit.environment import environment
from perfkit.errors import UserError
from perfkit.summary import write_json
from perfkit.workload import classifier as clf
from perfkit.workload import esm2
from perfkit.workload.config import EmbedConfig
from perfkit.workload.data import count_frames
from perfkit.workload.runner import run_embed
from perfkit.workload.store import read_embeddings

NUCLEOTIDE_MODEL = "dnabert_s"


def run_predict(cfg: EmbedConfig, *, classifier_weights=None, hidden: int = 512, nproc: int = 1,
                gpus: bool = False) -> dict:
    """`cfg` is the protein stage's config (its out_dir is the chain's folder); returns summary.json's content."""
    if cfg.model not in esm2.CONFIGS:
        raise UserError(f"predict's --model is the protein (ESM-2) model, got {cfg.model!r}",
                        f"pass an ESM-2 model; the nucleotide stage always runs {NUCLEOTIDE_MODEL}")
    out = Path(cfg.out_dir)
    stages: dict[str, float] = {}
    t = time.perf_counter()
    frames = count_frames(cfg.input, max_reads=cfg.max_reads, chunk_bp=cfg.chunk_bp, max_residues=cfg.max_residues)
    stages["translation"] = time.perf_counter() - t

    runs = {}
    for stage, model in (("nucleotide_embedding", NUCLEOTIDE_MODEL), ("protein_embedding", cfg.model)):
        stage_cfg = cfg.model_copy(update={"model": model, "out_dir": out / stage.split("_")[0],
                                           "weights": None if model == NUCLEOTIDE_MODEL else cfg.weights})
        t = time.perf_counter()
        runs[stage] = _embed(stage_cfg, nproc, gpus)
        stages[stage] = time.perf_counter() - t
        embedded = runs[stage]["run"]["output"]["count"]
        if embedded != frames:
            raise RuntimeError(f"count check failed after {stage}: {frames} frames translated, {embedded} embedded")

    t = time.perf_counter()
    nt_ids, nt_vectors = read_embeddings(out / "nucleotide" / "embeddings.h5")
    pr_ids, pr_vectors = read_embeddings(out / "protein" / "embeddings.h5")
    ids, nt_vectors, pr_vectors = clf.align_by_ids(nt_ids, nt_vectors, pr_ids, pr_vectors)
    protein_dim = esm2.get_config(cfg.model).embed_dim
    features = clf.merge_features(nt_vectors, pr_vectors, protein_dim=protein_dim)
    stages["merge"] = time.perf_counter() - t

    t = time.perf_counter()
    model, classifier_info = clf.load_classifier(classifier_weights, hidden=hidden, in_dim=features.shape[1],
                                                 seed=cfg.seed)
    probs = clf.predict_frames(model, features, device="cpu")
    stages["classifier"] = time.perf_counter() - t
    if len(probs) != len(ids):
        raise RuntimeError(f"count check failed after classifier: {len(ids)} frames in, {len(probs)} scored")

    t = time.perf_counter()
    reads = clf.consensus(ids, probs)
    written = clf.write_predictions(out, ids, probs, reads)
    stages["consensus"] = time.perf_counter() - t
    reads_with_frames = len({i.rsplit("_", 1)[0] for i in ids})
    if len(reads) != reads_with_frames:
        raise RuntimeError(f"count check failed after consensus: {reads_with_frames} reads with frames, {len(reads)} called")

    embedding_s = stages["nucleotide_embedding"] + stages["protein_embedding"]
    summary = {
        "schema": "perfkit.predict/1",
        "stages_s": stages,
        "end_to_end_s": sum(v for k, v in stages.items() if k != "translation"),
        "bottleneck_stage": max((k for k in stages if k != "translation"), key=stages.get),
        "stage_share": {k: v / embedding_s for k, v in stages.items() if k.endswith("embedding")},
        "counts": {"frames": frames, "reads_called": len(reads),
                   "virus_reads": int((reads["prediction"] == "virus").sum())},
        "stage_throughput": {k: {"steady_tok_per_s": r["throughput"]["steady_tok_per_s"],
                                 "seq_per_s": r["throughput"]["seq_per_s"], "ranks": r["throughput"]["ranks"]}
                             for k, r in runs.items()},
        "classifier": classifier_info,
        "predictions": written,
        "note": "translation_s is a separate single-process pass; in the embedding runs translation is "
                "done by the DataLoader workers, overlapped with the model",
        "environment": environment(),
    }
    write_json(out / "summary.json", summary)
    return summary


def _embed(cfg: EmbedConfig, nproc: int, gpus: bool) -> dict:
    if nproc > 1 or gpus:
        from perfkit.workload.distributed import run_multi

        return run_multi(cfg, nproc, gpus=gpus)
    return run_embed(cfg)
