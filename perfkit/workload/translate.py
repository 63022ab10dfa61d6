"""Six-frame translation and chunking, with the seed system's rules.

Rules:
- standard genetic code; frames F1,F2,F3 = offsets 0,1,2 of the read,
  R1,R2,R3 = offsets 0,1,2 of its reverse complement
- a codon with any non-ACGT base is dropped (the frame continues with the next codon)
- a frame with a stop codon anywhere (TAA, TAG, TGA) is dropped whole
- a frame whose protein is empty is dropped
- proteins are cut to max_residues (ESM-2's limit is 1022); the stop check
  looks at the whole frame, before the cut; pass `truncated` (a Truncation)
  to count the frames cut and the residues dropped, which runs report
- Frame.nucleotides are the bases of the translated codons, in the frame's
  orientation, so len(nucleotides) == 3 * len(protein) always

Speed: reads are translated in batches with numpy. All reads of a batch are
concatenated into one buffer (the reverse complement of the whole buffer holds every
read's reverse complement), each position gets its codon's amino acid from a
codon lookup table, and every (read, frame) is a strided run of positions checked
for stops with one numpy reduction. Python only touches the frames that survive.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

FRAMES = ("F1", "F2", "F3", "R1", "R2", "R3")
FRAME_INDEX = {name: i for i, name in enumerate(FRAMES)}
MAX_RESIDUES = 1022  # ESM-2's longest protein

BASES = "TCAG"
AMINO_ACIDS = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"  # TCAG order
CODON_TABLE = {
    a + b + c: AMINO_ACIDS[16 * i + 4 * j + k]
    for i, a in enumerate(BASES)
    for j, b in enumerate(BASES)
    for k, c in enumerate(BASES)
}

# byte -> base code 0..3 (TCAG order), 4 for anything else (N, IUPAC ambiguity codes, ...)
BASE_CODE = np.full(256, 4, dtype=np.uint8)
for _code, _base in enumerate(BASES):
    BASE_CODE[ord(_base)] = BASE_CODE[ord(_base.lower())] = _code
BASE_CODE[ord("U")] = BASE_CODE[ord("u")] = 0
# codon as a base-5 number c0*25 + c1*5 + c2 -> amino acid byte, 0 if it has a non-ACGT base
AA_OF_CODON5 = np.zeros(125, dtype=np.uint8)
for _c0, _c1, _c2 in np.ndindex(4, 4, 4):
    AA_OF_CODON5[_c0 * 25 + _c1 * 5 + _c2] = ord(AMINO_ACIDS[_c0 * 16 + _c1 * 4 + _c2])
STOP = ord("*")
# upper-case, U -> T; the complement keeps IUPAC codes meaningful
CANONICAL = bytes.maketrans(b"acgtunryswkmbdhv" + b"U", b"ACGTTNRYSWKMBDHV" + b"T")
COMPLEMENT = bytes.maketrans(b"ACGTRYKMBVDHN", b"TGCAYRMKVBHDN")


class Frame(NamedTuple):
    read_id: str
    frame: str  # "F1".."R3"
    frame_index: int  # 0..5, position in FRAMES
    protein: str
    nucleotides: str  # bases of the translated codons, frame orientation

    @property
    def id(self) -> str:
        return f"{self.read_id}_{self.frame}"


@dataclass
class Truncation:
    """Frames longer than max_residues, cut to it: how many, the residues (codons) dropped, and their ids."""

    frames: int = 0
    residues: int = 0
    ids: list[str] = field(default_factory=list)

    def add(self, frames: int, residues: int, ids=()) -> None:
        self.frames += frames
        self.residues += residues
        self.ids.extend(ids)


def translate_batch(
    records: list[tuple[str, str]], max_residues: int = MAX_RESIDUES, truncated: Truncation | None = None
) -> list[Frame]:
    """Surviving frames of a batch of (read_id, sequence), in read order then FRAMES order; frames cut to
    `max_residues` are counted into `truncated` when given."""
    if not records:
        return []
    ids = [r[0] for r in records]
    seqs = [r[1] for r in records]
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    total = int(lengths.sum())

    # one buffer: forward reads, 2 pad bytes, reverse complement of all reads, 2 pad bytes
    forward = "".join(seqs).encode("ascii", "replace").translate(CANONICAL)
    reverse = forward.translate(COMPLEMENT)[::-1]
    both = forward + b"NN" + reverse + b"NN"
    base_codes = BASE_CODE[np.frombuffer(both, dtype=np.uint8)]

    # amino acid of the codon starting at every position (0 = dropped codon)
    aa_at = AA_OF_CODON5[base_codes[:-2] * 25 + base_codes[1:-1] * 5 + base_codes[2:]]

    # every (read, frame): first codon position in `both` and number of codons,
    # ordered read-major, then F1 F2 F3 R1 R2 R3
    offsets = np.arange(3)
    fwd_first = starts[:, None] + offsets
    rev_first = (total + 2) + (total - starts - lengths)[:, None] + offsets
    first = np.concatenate((fwd_first, rev_first), axis=1).ravel()
    n_codons = np.maximum((lengths[:, None] - offsets) // 3, 0)
    n_codons = np.concatenate((n_codons, n_codons), axis=1).ravel()

    # a frame's codons sit at every 3rd position: lay positions out by phase (position % 3)
    # so each frame is one contiguous run, then ask per run "any stop?", "any codon kept?"
    by_phase = [aa_at[phase::3] for phase in range(3)]
    phase_base = np.cumsum([0] + [len(x) for x in by_phase[:2]])
    laid_out = np.concatenate(by_phase + [np.zeros(1, np.uint8)])  # sentinel: runs may end at the end
    lo = phase_base[first % 3] + first // 3
    # reduceat over the sorted bounds lo0, hi0, lo1, hi1, ...; even results are the runs
    order = np.argsort(lo, kind="stable")
    bounds = np.stack((lo[order], lo[order] + n_codons[order]), axis=1).ravel()

    def any_in_run(flags):
        result = np.empty(lo.size, dtype=bool)
        result[order] = np.logical_or.reduceat(flags, bounds)[::2]
        return result & (n_codons > 0)

    survives = any_in_run(laid_out != 0) & ~any_in_run(laid_out == STOP)

    # gather the codons of surviving frames only, drop the non-ACGT ones
    alive = np.flatnonzero(survives)
    seg = np.repeat(np.arange(alive.size), n_codons[alive])
    seg_begin = np.cumsum(n_codons[alive]) - n_codons[alive]
    pos = first[alive][seg] + 3 * (np.arange(seg.size) - seg_begin[seg])
    aa = aa_at[pos]
    kept = aa != 0
    n_kept = np.bincount(seg[kept], minlength=alive.size)
    if truncated is not None:
        over = n_kept[n_kept > max_residues]
        truncated.add(len(over), int(over.sum()) - len(over) * max_residues)
    protein_bytes = aa[kept].tobytes()
    nuc_bytes = np.frombuffer(both, dtype=np.uint8)[pos[kept][:, None] + offsets].tobytes()

    frames = []
    at = 0
    for s, n in zip(alive.tolist(), n_kept.tolist()):
        keep = min(n, max_residues)
        read, frame_index = divmod(s, 6)
        frames.append(
            Frame(
                ids[read],
                FRAMES[frame_index],
                frame_index,
                protein_bytes[at : at + keep].decode("ascii"),
                nuc_bytes[3 * at : 3 * (at + keep)].decode("ascii"),
            )
        )
        if truncated is not None and n > max_residues:
            truncated.ids.append(frames[-1].id)
        at += n
    return frames


def translate_read(read_id: str, seq: str, max_residues: int = MAX_RESIDUES) -> list[Frame]:
    """Surviving frames of one read, in FRAMES order."""
    return translate_batch([(read_id, seq)], max_residues)


def translate_records(
    records: Iterable[tuple[str, str]], max_residues: int = MAX_RESIDUES, batch_size: int = 5_000
) -> Iterator[Frame]:
    """Stream surviving frames of (read_id, sequence) records, translated in batches."""
    batch = []
    for record in records:
        batch.append(record)
        if len(batch) == batch_size:
            yield from translate_batch(batch, max_residues)
            batch = []
    yield from translate_batch(batch, max_residues)


def chunk_sequence(seq: str, size: int, min_tail: int = 3) -> list[str]:
    """Split seq into pieces of `size` bases.

    A sequence no longer than size is returned whole (no chunking). The last,
    shorter piece is kept if it has at least min_tail bases (default: one codon),
    so nothing translatable is lost; shorter tails are dropped.
    """
    if size < 1:
        raise ValueError("chunk size must be >= 1")
    if len(seq) <= size:
        return [seq]
    chunks = [seq[i : i + size] for i in range(0, len(seq), size)]
    if len(chunks[-1]) < min(min_tail, size):
        chunks.pop()
    return chunks


def chunk_records(
    records: Iterable[tuple[str, str]], size: int, min_tail: int = 3
) -> Iterator[tuple[str, str]]:
    """Chunk every record; a chunked read's pieces get ids f"{read_id}_chunk_{k}", k from 1.
    Reads no longer than size pass through with their id unchanged."""
    for read_id, seq in records:
        if len(seq) <= size:
            yield read_id, seq
            continue
        for k, chunk in enumerate(chunk_sequence(seq, size, min_tail), start=1):
            yield f"{read_id}_chunk_{k}", chunk
