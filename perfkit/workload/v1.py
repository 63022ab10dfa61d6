"""v1.0 as the seed system ran it, the baseline v2 is measured against: fair-esm's own ESM-2 batched by
`get_batch_indices`, and the nucleotide stage in fixed padded batches in file order; both synchronous, in
one process, over the input translated into files of `v1_file_sequences` sequences."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from perfkit.workload import esm2
from perfkit.workload.config import EmbedConfig

if TYPE_CHECKING:
    from perfkit.workload.runner import Run


def build_fairesm_model(cfg: EmbedConfig, device: torch.device):
    """fair-esm's own ESM2 module: a checkpoint when given, else seeded random init (fair-esm's init)."""
    import esm

    if cfg.weights is not None:
        model, _ = esm.pretrained.load_model_and_alphabet_local(str(cfg.weights))
        info = {"source": "fair-esm", "path": str(cfg.weights)}
    else:
        conf = esm2.get_config(cfg.model)
        torch.manual_seed(cfg.seed)
        with torch.device(device):
            model = esm.model.esm2.ESM2(
                num_layers=conf.num_layers,
                embed_dim=conf.embed_dim,
                attention_heads=conf.attention_heads,
                alphabet=esm.data.Alphabet.from_architecture("ESM-1b"),
                token_dropout=True,
            )
        info = {"source": "random (fair-esm init)", "seed": cfg.seed}
    model = model.to(device).eval()
    if cfg.precision == "fp16":
        model = model.half()
    elif cfg.precision == "bf16":
        model = model.to(torch.bfloat16)
    return model, info


def v1_files(run: "Run", done_keys):
    """v1 translated the input into files of `v1_file_sequences` sequences and embedded file by file."""
    from perfkit.workload.data import frameless_reads, read_blocks, translate_block

    cfg = run.cfg
    keys_buf, ids_buf, proteins_buf = [], [], []
    for _, first, records in read_blocks(cfg.input, 1024, cfg.max_reads, cfg.chunk_bp):
        keys, ids, proteins = translate_block(
            first, records, cfg.max_residues, run.encoder.frame_field, run.truncated
        )
        run.frames_translated += len(keys)
        run.reads_seen += len(records)
        run.frameless += frameless_reads(first, records, keys)
        if done_keys.size:
            keep = ~np.isin(keys, done_keys)
            keys, ids, proteins = (
                keys[keep],
                [i for i, k in zip(ids, keep) if k],
                [p for p, k in zip(proteins, keep) if k],
            )
        keys_buf.append(keys)
        ids_buf += ids
        proteins_buf += proteins
        if len(ids_buf) >= cfg.v1_file_sequences:
            yield np.concatenate(keys_buf), ids_buf, proteins_buf
            keys_buf, ids_buf, proteins_buf = [], [], []
    if ids_buf:
        yield np.concatenate(keys_buf), ids_buf, proteins_buf


def file_order_batches(proteins: list[str], residues_per_batch: int) -> list[list[int]]:
    """The refactored v1.0's batches: file order, a batch closed once adding the next sequence would pass
    `residues_per_batch` raw residues (a longer sequence alone makes its own batch)."""
    batches, current, residues = [], [], 0
    for index, protein in enumerate(proteins):
        if current and residues + len(protein) > residues_per_batch:
            batches.append(current)
            current, residues = [], 0
        current.append(index)
        residues += len(protein)
    if current:
        batches.append(current)
    return batches


def loop_protein(run: "Run", model, done_keys, progress) -> bool:
    """fair-esm extract style, synchronous, one process: batches by get_batch_indices (the original code) or
    in file order (the refactored v1.0, `v1_batching: file_order`), fair-esm's batch converter."""
    import esm

    cfg, device = run.cfg, run.device
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    converter = alphabet.get_batch_converter(truncation_seq_length=cfg.max_residues)
    layer = model.num_layers
    from perfkit.workload.runner import TimeCap

    cap = TimeCap(cfg.max_seconds, cfg.warmup_batches)
    batch_index = 0
    waited_since = time.perf_counter()
    for keys, ids, proteins in v1_files(run, done_keys):
        dataset = esm.data.FastaBatchedDataset(list(range(len(ids))), proteins)
        batches = (
            file_order_batches(proteins, cfg.v1_toks_per_batch)
            if cfg.v1_batching == "file_order"
            else dataset.get_batch_indices(cfg.v1_toks_per_batch, extra_toks_per_seq=1)
        )
        for indices in batches:
            labels, strs, toks = converter([dataset[i] for i in indices])
            arrive = time.perf_counter()
            host_start = arrive
            with run.busy.measure() as span, torch.no_grad():
                out = model(toks.to(device, non_blocking=True), repr_layers=[layer], return_contacts=False)
                reps = out["representations"][layer]
                vectors = torch.stack(
                    [reps[i, 1 : len(s) + 1].float().mean(0) for i, s in enumerate(strs)]
                ).cpu()
            picked = keys[labels]
            run.store.add(picked, [ids[i] for i in labels], vectors.numpy())
            lengths = np.array([len(s) + 2 for s in strs])
            real = int(lengths.sum())
            run.keep_for_verification(picked, toks[0].numpy(), lengths, batch_index)
            run.telemetry.batch(
                stage=run.stage,
                t_arrive_s=arrive - run.loop_t0,
                loader_wait_s=arrive - waited_since,
                host_s=time.perf_counter() - host_start,
                span=span,
                sequences=len(strs),
                real_tokens=real,
                slot_tokens=int(toks.numel()),
                budget_tokens=cfg.v1_toks_per_batch,
                clock_start=run.loop_t0,
            )
            progress.update(len(strs), real, cfg.v1_toks_per_batch)
            batch_index += 1
            waited_since = time.perf_counter()
            if cap.reached(batch_index):
                return True
    return False


def loop_nucleotide(run: "Run", model, done_keys, progress) -> bool:
    """v1.0's nucleotide stage: fixed batches of `v1_nt_batch_sequences` in file order, padded, synchronous."""
    from perfkit.workload.dnabert import pad_batch

    cfg, device, encoder = run.cfg, run.device, run.encoder
    size = cfg.v1_nt_batch_sequences
    from perfkit.workload.runner import TimeCap

    cap = TimeCap(cfg.max_seconds, cfg.warmup_batches)
    batch_index = 0
    waited_since = time.perf_counter()
    for keys, ids, sequences in v1_files(run, done_keys):
        for lo in range(0, len(ids), size):
            tokens, lengths = encoder.encode(sequences[lo : lo + size])
            padded = torch.from_numpy(pad_batch(tokens, lengths, encoder.pad_id))
            arrive = host_start = time.perf_counter()
            with run.busy.measure() as span, torch.no_grad():
                vectors = model.forward_padded(padded.to(device), pad_id=encoder.pad_id).float().cpu()
            run.store.add(keys[lo : lo + size], ids[lo : lo + size], vectors.numpy())
            run.keep_for_verification(keys[lo : lo + size], tokens, lengths, batch_index)
            real = int(lengths.sum())
            run.telemetry.batch(
                stage=run.stage,
                t_arrive_s=arrive - run.loop_t0,
                loader_wait_s=arrive - waited_since,
                host_s=time.perf_counter() - host_start,
                span=span,
                sequences=len(lengths),
                real_tokens=real,
                slot_tokens=int(padded.numel()),
                budget_tokens=int(padded.numel()),
                clock_start=run.loop_t0,
            )
            progress.update(len(lengths), real, int(padded.numel()))
            batch_index += 1
            waited_since = time.perf_counter()
            if cap.reached(batch_index):
                return True
    return False
