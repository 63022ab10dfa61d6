"""v2 input path: FASTA blocks -> translation -> tokens -> packed batches, all inside DataLoader workers.

Each worker owns a share of the FASTA's blocks (block = `block_reads` consecutive
reads; in a multi-process run, a share of its rank's blocks) and its own packer:
nothing stateful crosses a process boundary, and the main process receives
ready-made batches (flat tokens, positions, cu_seqlens, pooling weights) — no
per-sequence Python on the hot path. On a plain FASTA file every block's byte range
is known before the run (`block_offsets`, one vectorised scan): a worker seeks to its
own blocks and parses nothing else. Gzipped input and chunked reads cannot be cut by
bytes; there every worker parses the stream and skips the blocks that are not its own.

A sequence's key is read_index x 6 + frame_index: sorting by key gives the
translated input order. Batches whose keys are all in `done_keys` (a resumed run)
are skipped after packing, so a resumed run computes exactly the batches the
interrupted one would have (bit-identical on CPU fp32). Every batch carries how many
frames its worker translated since its last batch, so the run can check
frames translated = frames embedded at the end, and how many of them were cut to
max_residues (and the residues dropped), so the run can report them.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from perfkit.errors import UserError
from perfkit.packing import TokenBudgetPacker
from perfkit.workload.encoders import Encoder
from perfkit.workload.fasta import read_fasta
from perfkit.workload.translate import FRAMES, Truncation, chunk_records, translate_batch

FRAMES_PER_READ = len(FRAMES)


@dataclass(frozen=True)
class Shard:
    """Which blocks this process handles: an explicit sorted tuple of block indices, or None = all.

    A multi-process run assigns blocks to ranks by their bytes (see perfkit.workload.plan);
    within a process the DataLoader workers take turns over its blocks.
    """

    blocks: tuple[int, ...] | None = None
    planned_blocks: int | None = None  # blocks the plan split between ranks: the input must not hold more
    # byte offset of every block's first header, then the end of the last block (len = blocks + 1); None:
    # the input cannot be cut by bytes (gzip, chunked reads) and workers parse it whole
    offsets: tuple[int, ...] | None = None

    def positions(self) -> dict[int, int] | None:
        """block index -> its position among this shard's blocks (None: every block, position = index)."""
        return None if self.blocks is None else {b: i for i, b in enumerate(self.blocks)}

    def reads(self, fasta, block_reads: int) -> int | None:
        """Input reads in this shard's blocks (every block holds `block_reads` but the file's last, whose
        headers are counted); None without offsets (gzip, chunked reads: the total is unknown up front)."""
        if self.offsets is None:
            return None
        last = len(self.offsets) - 2
        mine = range(last + 1) if self.blocks is None else self.blocks
        total = len(mine) * block_reads
        if last >= 0 and last in mine:
            tail = np.memmap(fasta, dtype=np.uint8, mode="r")[self.offsets[last] : self.offsets[last + 1]]
            total -= block_reads - len(header_starts(tail))  # the block starts at a header: a line start
        return total

    def worker_blocks(self, worker: int, workers: int) -> list[int]:
        """With offsets: the blocks DataLoader worker `worker` of `workers` embeds (they take turns)."""
        mine = range(len(self.offsets) - 1) if self.blocks is None else self.blocks
        return [block for position, block in enumerate(mine) if position % workers == worker]


def read_blocks_at(path, blocks, offsets, block_reads: int):
    """(block_index, first_read_index, records) of the given blocks only, each parsed from its own bytes."""
    from perfkit.workload.fasta import read_fasta_range

    for block in blocks:
        records = list(read_fasta_range(path, offsets[block], offsets[block + 1]))
        if len(records) > block_reads:
            raise RuntimeError(
                f"count check failed: block {block} holds {len(records)} reads, "
                f"the plan cut blocks of {block_reads}"
            )
        yield block, block * block_reads, records


def read_blocks(path, block_reads: int, max_reads: int | None = None, chunk_bp: int | None = None):
    """(block_index, first_read_index, records) for consecutive blocks of reads."""
    records = read_fasta(path)
    if chunk_bp:
        records = chunk_records(records, chunk_bp)
    if max_reads is not None:
        records = islice(records, max_reads)
    start, index = 0, 0
    while True:
        block = list(islice(records, block_reads))
        if not block:
            return
        yield index, start, block
        start += len(block)
        index += 1


def translate_block(
    first_read: int, records, max_residues: int, field: str = "protein", truncated: Truncation | None = None
):
    """Keys, ids and `field` (protein or nucleotides) of every surviving frame of a block, in input order;
    frames cut to `max_residues` are counted into `truncated` when given."""
    frames = translate_batch(records, max_residues=max_residues, truncated=truncated)
    read_pos = {rid: first_read + i for i, (rid, _) in enumerate(records)}
    keys = np.fromiter(
        (read_pos[f.read_id] * FRAMES_PER_READ + f.frame_index for f in frames),
        dtype=np.int64,
        count=len(frames),
    )
    return keys, [f.id for f in frames], [getattr(f, field) for f in frames]


def check_fits(keys: np.ndarray, ids: list[str], lengths: np.ndarray, token_budget: int) -> None:
    """A frame longer than a whole pack can never be embedded: one error naming it by id, with a fix that
    works (the packer itself only knows keys)."""
    too_long = np.flatnonzero(np.asarray(lengths) > token_budget)
    if len(too_long):
        first = int(too_long[0])
        need = int(np.asarray(lengths)[too_long].max())
        raise UserError(
            f"frame {ids[first]} has {int(lengths[first])} tokens, more than the token budget "
            f"{token_budget} ({len(too_long)} such frame(s) in its block)",
            f"raise --token-budget (embed.token_budget) to at least {need}, or lower max_residues",
        )


def frameless_reads(first_read: int, records, keys: np.ndarray) -> list[tuple[int, str]]:
    """(read index, id) of a block's reads that kept no frame: every frame of the read was shorter than the
    minimum protein length once cut at its stops (the six-frame rules of `translate`)."""
    have = set((np.asarray(keys, np.int64) // FRAMES_PER_READ).tolist())
    return [(first_read + i, rid) for i, (rid, _) in enumerate(records) if first_read + i not in have]


# per rank: "read index<TAB>id" of the reads that kept no frame, in input order (predict writes them as no_frame)
FRAMELESS_FILE = "reads_without_frames.r{rank}.tsv"


def write_frameless(out_dir, rank: int, frameless: list[tuple[int, str]]) -> Path:
    """OUT/reads_without_frames.rNNN.tsv of one rank, temp file then rename (written even when empty, so a
    reader can tell 'none' from 'not written')."""
    path = Path(out_dir) / FRAMELESS_FILE.format(rank=f"{rank:03d}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{index}\t{rid}\n" for index, rid in sorted(frameless)))
    os.replace(tmp, path)
    return path


def read_frameless(out_dir, lo_read: int = 0, hi_read: int | None = None) -> tuple[np.ndarray, list[str]]:
    """(read indices, ids) of every rank's reads without a frame with index in [lo_read, hi_read), sorted."""
    pairs = []
    for path in sorted(Path(out_dir).glob(FRAMELESS_FILE.format(rank="*"))):
        for line in path.read_text().splitlines():
            index, rid = line.split("\t", 1)
            if int(index) >= lo_read and (hi_read is None or int(index) < hi_read):
                pairs.append((int(index), rid))
    pairs.sort()
    return np.array([p[0] for p in pairs], dtype=np.int64), [p[1] for p in pairs]


class PackedFrames(IterableDataset):
    """Yields dicts of numpy arrays / tensors ready for `ESM2.forward_packed` (or padded batches)."""

    def __init__(
        self,
        fasta,
        *,
        token_budget: int,
        buffer_size: int = 4096,
        layout: str = "packed",
        block_reads: int = 1024,
        max_reads: int | None = None,
        chunk_bp: int | None = None,
        max_residues: int = 1022,
        done_keys: np.ndarray | None = None,
        shard: Shard = Shard(),
        encoder: Encoder = Encoder("esm2_t6_8M"),
    ):
        self.fasta = str(fasta)
        self.token_budget, self.buffer_size, self.layout = token_budget, buffer_size, layout
        self.block_reads, self.max_reads, self.chunk_bp = block_reads, max_reads, chunk_bp
        self.max_residues = max_residues
        self.done_keys = np.empty(0, np.int64) if done_keys is None else np.asarray(done_keys, np.int64)
        self.shard = shard
        self.encoder = encoder

    def __iter__(self) -> Iterator[dict]:
        try:
            yield from self._batches()
        except UserError as err:  # travels to the main process as data, not as a worker traceback
            yield {"user_error": (err.problem, err.fix), "frames_translated": 0, "sequences": 0}

    def _counts(self, translated: int, truncated: Truncation, reads: int, frameless: list) -> dict:
        """What a worker translated since its last batch: every batch carries these counts."""
        return {
            "frames_translated": translated,
            **_truncation_fields(truncated),
            "reads_seen": reads,
            "frameless_reads": frameless,
        }

    def _batches(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        packer = TokenBudgetPacker(
            budget=self.token_budget,
            buffer_size=self.buffer_size,
            layout=self.layout,
            on_oversize="error",
            pad_id=self.encoder.pad_id,
        )
        ids_of: dict[int, str] = {}
        # since the last batch: each batch carries its worker's counts
        translated, truncated, reads, frameless = 0, Truncation(), 0, []
        for block, first_read, records in self._my_blocks(worker, workers):
            keys, ids, sequences = translate_block(
                first_read, records, self.max_residues, self.encoder.frame_field, truncated
            )
            translated += len(keys)
            reads += len(records)
            frameless += frameless_reads(first_read, records, keys)
            if not len(keys):
                continue
            ids_of.update(zip(keys.tolist(), ids))
            tokens, lengths = self.encoder.encode(sequences)
            check_fits(keys, ids, lengths, self.token_budget)
            packer.add(keys, lengths, tokens)
            for batch in packer.ready():
                out = self._emit(batch, ids_of, self._counts(translated, truncated, reads, frameless))
                translated, truncated, reads, frameless = 0, Truncation(), 0, []
                if out is not None:
                    yield out
        for batch in packer.flush():
            out = self._emit(batch, ids_of, self._counts(translated, truncated, reads, frameless))
            translated, truncated, reads, frameless = 0, Truncation(), 0, []
            if out is not None:
                yield out
        if translated or reads:  # translated but every batch skipped, or reads without a frame: still counted
            yield {**self._counts(translated, truncated, reads, frameless), "sequences": 0}

    def _my_blocks(self, worker: int, workers: int):
        """This worker's blocks: read at their byte offsets, or picked out of the whole parsed stream."""
        if self.shard.offsets is not None:
            yield from read_blocks_at(
                self.fasta, self.shard.worker_blocks(worker, workers), self.shard.offsets, self.block_reads
            )
            return
        positions = self.shard.positions()
        for block, first_read, records in read_blocks(
            self.fasta, self.block_reads, self.max_reads, self.chunk_bp
        ):
            if self.shard.planned_blocks is not None and block >= self.shard.planned_blocks:
                raise RuntimeError(
                    f"count check failed: the input holds more than the {self.shard.planned_blocks} "
                    "blocks the ranks were planned for; its reads would be embedded by no rank"
                )
            position = block if positions is None else positions.get(block)
            if position is not None and position % workers == worker:
                yield block, first_read, records

    def _emit(self, batch, ids_of: dict, counts: dict) -> dict | None:
        ids = [ids_of.pop(k) for k in batch.keys.tolist()]
        if self.done_keys.size and np.isin(batch.keys, self.done_keys).all():
            return {**counts, "sequences": 0, "skipped": len(ids)}
        out = {
            "keys": torch.from_numpy(batch.keys),
            "ids": ids,
            "sequences": batch.num_sequences,
            "real_tokens": batch.real_tokens,
            "slot_tokens": batch.slot_tokens,
            "budget_tokens": batch.budget,
            **counts,
            "lengths": torch.from_numpy(batch.lengths),
        }
        if self.layout == "packed":
            arrays = self.encoder.packed_inputs(batch.tokens, batch.lengths)
            out["max_seqlen"] = int(arrays.pop("max_seqlen"))
            out.update({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})
            out["tokens"] = torch.from_numpy(batch.tokens)
        else:
            out["tokens"] = torch.from_numpy(batch.tokens)
        return out


def _truncation_fields(truncated: Truncation) -> dict:
    return {
        "truncated_sequences": truncated.frames,
        "residues_dropped": truncated.residues,
        "truncated_ids": list(truncated.ids),
    }


def count_frames(fasta, *, max_reads=None, chunk_bp=None, max_residues=1022, block_reads=4096) -> int:
    """Frames that survive translation: the count every run must reproduce at its end."""
    return sum(
        len(translate_block(first, recs, max_residues)[0])
        for _, first, recs in read_blocks(fasta, block_reads, max_reads, chunk_bp)
    )


def header_starts(part: np.ndarray, byte_before: int = ord("\n")) -> np.ndarray:
    """Positions in `part` of every '>' at a line start (a FASTA header); `byte_before`: the byte preceding
    `part` in the file (a newline at the file's start)."""
    at = np.flatnonzero(part == ord(">"))
    before = np.where(at > 0, part[np.maximum(at - 1, 0)], byte_before)
    return at[before == ord("\n")]


def block_offsets(
    fasta, *, block_reads: int, max_reads=None, chunk_bp=None, scan_bytes: int = 1 << 26
) -> np.ndarray | None:
    """Byte offset of the first header of every block of `block_reads` reads, then the end of the last
    block (len = blocks + 1), from one vectorised scan for line-start '>' of a plain FASTA file. None when
    the input cannot be cut by bytes: gzipped input, or reads chunked into several records."""
    from perfkit.workload.fasta import _open_binary

    with _open_binary(fasta) as probe:
        plain = not isinstance(probe, gzip.GzipFile)
    if chunk_bp or not plain:
        return None
    data = np.memmap(fasta, dtype=np.uint8, mode="r") if os.path.getsize(fasta) else np.empty(0, np.uint8)
    heads = []
    for start in range(0, len(data), scan_bytes):
        heads.append(
            header_starts(data[start : start + scan_bytes], data[start - 1] if start else ord("\n")) + start
        )
    heads = np.concatenate(heads) if heads else np.empty(0, np.int64)
    reads = len(heads) if max_reads is None else min(len(heads), max_reads)
    check_unique_ids(fasta, data, heads[:reads])
    firsts = heads[:reads:block_reads]
    end = heads[reads] if reads < len(heads) else len(data)
    return np.append(firsts, end).astype(np.int64)


ID_END = np.zeros(256, dtype=bool)
ID_END[[ord(" "), ord("\t"), ord("\r"), ord("\n")]] = True  # a record id is the header up to whitespace


def check_unique_ids(fasta, data: np.ndarray, heads: np.ndarray, rows: int = 1 << 20) -> None:
    """UserError naming a record id that two headers share. Workers that parse only their own blocks see
    only their own ids, so the planning scan checks the whole file: a 64-bit polynomial hash of every id,
    vectorised over the headers (no Python per record), and a byte comparison to confirm a repeated hash."""
    if len(heads) < 2:
        return
    hashes = np.empty(len(heads), dtype=np.uint64)
    ends = np.empty(len(heads), dtype=np.int64)
    with np.errstate(over="ignore"):  # the hash wraps around 2^64 on purpose
        for lo in range(0, len(heads), rows):
            at = heads[lo : lo + rows] + 1  # first byte after '>'
            h = np.full(len(at), 1469598103934665603, dtype=np.uint64)
            open_ = np.ones(len(at), dtype=bool)
            while open_.any():
                alive = np.flatnonzero(open_)
                pos = at[alive]
                inside = pos < len(data)
                byte = np.where(inside, data[np.minimum(pos, len(data) - 1)], ord("\n"))
                stop = ID_END[byte]
                go = alive[~stop]
                h[go] = (h[go] ^ byte[~stop].astype(np.uint64)) * np.uint64(1099511628211)
                open_[alive[stop]] = False
                at[go] += 1
            hashes[lo : lo + rows], ends[lo : lo + rows] = h, at
    order = np.argsort(hashes, kind="stable")
    same = np.flatnonzero(hashes[order][1:] == hashes[order][:-1])
    for k in same:  # a repeated hash: compare the bytes (a collision of different ids is not an error)
        first, second = order[k], order[k + 1]
        a, b = (bytes(data[heads[i] + 1 : ends[i]]) for i in (first, second))
        if a == b:
            raise UserError(
                f"{fasta}: duplicate record id {a.decode('ascii', 'replace')!r} (records "
                f"{min(first, second) + 1:,} and {max(first, second) + 1:,})",
                "make record ids unique",
            )


def block_sizes(
    fasta, *, block_reads: int, max_reads=None, chunk_bp=None, scan_bytes: int = 1 << 26
) -> np.ndarray:
    """Size of every block of `block_reads` reads, for splitting work without translating: bytes from
    its first header to the next block's (a plain FASTA: `block_offsets`), or bases (gzipped input or
    chunked reads: the records are parsed)."""
    offsets = block_offsets(
        fasta, block_reads=block_reads, max_reads=max_reads, chunk_bp=chunk_bp, scan_bytes=scan_bytes
    )
    if offsets is not None:
        return np.diff(offsets)
    return np.array(
        [
            sum(len(seq) for _, seq in records)
            for _, _, records in read_blocks(fasta, block_reads, max_reads, chunk_bp)
        ],
        dtype=np.int64,
    )
