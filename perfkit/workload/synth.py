"""Reproducible, ORF-rich, viral-like synthetic FASTA samples.

Random DNA rarely keeps a frame free of stops, and real samples do (about 60% of
150 bp reads have at least one frame that survives translation). So the generator
plans, per read, how many frames k survive, and makes exactly those frames stop-free:

1. pick a read length from the profile's length histogram
2. pick k from the profile's frame-count shares for that length, and k target frames
3. draw random bases, then walk the read base by base and replace any base that would
   complete a stop codon in a target frame (TAA/TAG/TGA forward, TTA/CTA/TCA seen from
   the reverse strand) with C or T, which never complete a stop
4. sprinkle N's into a small share of reads
5. count the frames that really survive; a read whose count is not k (a non-target
   frame survived by chance) is drawn again, a few rounds at most

Everything is numpy over blocks of reads; each block has its own seeded generator,
so the same seed and n give byte-identical files.

A profile is a JSON-able dict (schema "perfkit.profile/1"): a read-length histogram,
frame-count shares per length class, and the N rate. Built-ins: reads150, reads300,
contigs; profile_fasta measures one from a real FASTA.
"""

import json
import os
from collections import Counter
from statistics import NormalDist

import numpy as np

from perfkit.errors import UserError
from perfkit.workload.fasta import atomic_output, read_fasta
from perfkit.workload.translate import MAX_RESIDUES, translate_batch

SCHEMA = "perfkit.profile/1"
BLOCK_BASES = 15_000_000  # bases per generated block (bounds memory)
MAX_BLOCK_READS = 100_000
REDRAW_ROUNDS = 12

# base codes: A C G T N
LETTERS = np.frombuffer(b"ACGTN\n", dtype=np.uint8)
A, C, G, T, N = range(5)


def _codon_set(*codons):
    """Lookup over base-5 codon numbers: True for the given codons."""
    table = np.zeros(125, dtype=bool)
    for codon in codons:
        table["ACGT".index(codon[0]) * 25 + "ACGT".index(codon[1]) * 5 + "ACGT".index(codon[2])] = True
    return table


FORWARD_STOP = _codon_set("TAA", "TAG", "TGA")
REVERSE_STOP = _codon_set("TTA", "CTA", "TCA")  # stops read on the other strand
HAS_N = np.array([N in (i // 25, i // 5 % 5, i % 5) for i in range(125)])


# ---- profiles ---------------------------------------------------------------


def _frame_shares(with_frames, per_read_with_frames):
    """Shares of reads with 0..6 surviving frames; per_read_with_frames = shares of 1..6."""
    rest = np.array(per_read_with_frames, dtype=float)
    rest = rest / rest.sum() * with_frames
    return [round(1 - with_frames, 6)] + [round(x, 6) for x in rest] + [0.0] * (6 - len(rest))


def _lognormal_bins(median, sigma, lo, hi, n_bins=40):
    z = [NormalDist().inv_cdf(q) for q in np.linspace(0.01, 0.99, n_bins + 1)]
    edges = np.clip(np.round(median * np.exp(sigma * np.array(z))), lo, hi).astype(int)
    return {
        "lo": edges[:-1].tolist(),
        "hi": (edges[1:] - 1).clip(edges[:-1]).tolist(),
        "weight": [1.0 / n_bins] * n_bins,
    }


def _builtin(name, lengths, shares, n_read_share=0.02, n_base_rate=0.01):
    return {
        "schema": SCHEMA,
        "name": name,
        "lengths": lengths,
        "frame_counts": {"length_edges": [], "shares": [shares]},
        "n_read_share": n_read_share,
        "n_base_rate": n_base_rate,
    }


BUILTIN_PROFILES = {
    # 150 bp reads, a few trimmed shorter; ~60% with frames, ~1.32 frames per such read
    "reads150": _builtin(
        "reads150",
        {"lo": [150, 140], "hi": [150, 149], "weight": [0.92, 0.08]},
        _frame_shares(0.60, [0.72, 0.24, 0.035, 0.005]),
    ),
    "reads300": _builtin(
        "reads300",
        {"lo": [300, 250], "hi": [300, 299], "weight": [0.9, 0.1]},
        _frame_shares(0.45, [0.80, 0.17, 0.025, 0.005]),
    ),
    # long sequences rarely keep a stop-free frame; these exist to exercise chunking
    "contigs": _builtin(
        "contigs", _lognormal_bins(1500, 0.6, 500, 5000), _frame_shares(0.15, [0.85, 0.13, 0.02])
    ),
}


def load_profile(profile) -> dict:
    """A profile from a built-in name, a PROFILE.json path, or a dict; checked."""
    name = os.fspath(profile) if isinstance(profile, (str, os.PathLike)) else None
    if isinstance(profile, dict):
        data, where = profile, "profile"
    elif name in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[name]
    elif name is not None and (name.endswith(".json") or os.path.exists(name)):
        where = name
        try:
            with open(profile) as f:
                data = json.load(f)
        except OSError as e:
            raise UserError(f"{where}: cannot read profile ({e.strerror})", "check the path") from None
        except json.JSONDecodeError as e:
            raise UserError(
                f"{where}:{e.lineno}: not valid JSON ({e.msg})", "give a profile written by `profile_fasta`"
            ) from None
    else:
        raise UserError(
            f"unknown profile {profile!r}", f"use one of {', '.join(BUILTIN_PROFILES)} or a PROFILE.json file"
        )
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise UserError(
            f"{where}: not a {SCHEMA} profile (missing or wrong 'schema')",
            "give a profile written by `profile_fasta`",
        )
    try:
        lengths, counts = data["lengths"], data["frame_counts"]
        lo, hi, weight = (np.asarray(lengths[k], dtype=float) for k in ("lo", "hi", "weight"))
        shares = np.asarray(counts["shares"], dtype=float)
        ok = (
            lo.size > 0
            and lo.shape == hi.shape == weight.shape
            and (lo >= 1).all()
            and (hi >= lo).all()
            and (weight >= 0).all()
            and weight.sum() > 0
            and shares.ndim == 2
            and shares.shape[1] == 7
            and shares.shape[0] == len(counts["length_edges"]) + 1
            and (shares >= 0).all()
            and 0 <= float(data["n_read_share"]) <= 1
            and 0 <= float(data["n_base_rate"]) <= 1
        )
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"{where}: malformed {SCHEMA} profile", "re-create it with `profile_fasta`")
    return data


# ---- statistics shared by synth and profile_fasta ----------------------------


class SampleStats:
    """Accumulates per-read length, surviving-frame count, protein lengths and N's."""

    def __init__(self):
        self.length_frames = np.zeros((0, 7), dtype=np.int64)  # [length, k] -> reads
        self.protein_lengths = np.zeros(MAX_RESIDUES + 1, dtype=np.int64)
        self.reads_with_n = self.bases_in_n_reads = self.n_bases = 0

    def add(self, lengths, frame_counts, protein_lengths, n_counts):
        lengths, n_counts = np.asarray(lengths), np.asarray(n_counts)
        if lengths.size and lengths.max() >= len(self.length_frames):
            grown = np.zeros((int(lengths.max()) + 1, 7), dtype=np.int64)
            grown[: len(self.length_frames)] = self.length_frames
            self.length_frames = grown
        np.add.at(self.length_frames, (lengths, np.asarray(frame_counts)), 1)
        self.protein_lengths += np.bincount(
            np.asarray(protein_lengths, dtype=np.int64), minlength=MAX_RESIDUES + 1
        )
        has_n = n_counts > 0
        self.reads_with_n += int(has_n.sum())
        self.bases_in_n_reads += int(lengths[has_n].sum())
        self.n_bases += int(n_counts.sum())

    def summary(self) -> dict:
        per_k = self.length_frames.sum(0)
        reads = int(per_k.sum())
        with_frames = int(per_k[1:].sum())
        frames = int((per_k * np.arange(7)).sum())
        lengths = self.length_frames.sum(1)
        protein_total = int((self.protein_lengths * np.arange(MAX_RESIDUES + 1)).sum())

        def quantiles(hist):
            cum = np.cumsum(hist)
            return (
                {str(q): int(np.searchsorted(cum, q * cum[-1])) for q in (0.05, 0.25, 0.5, 0.75, 0.95)}
                if cum.size and cum[-1]
                else {}
            )

        return {
            "reads": reads,
            "bases": int((lengths * np.arange(len(lengths))).sum()),
            "mean_read_length": float((lengths * np.arange(len(lengths))).sum() / max(reads, 1)),
            "read_length_quantiles": quantiles(lengths),
            "share_with_frames": with_frames / max(reads, 1),
            "frames": frames,
            "frames_per_read_with_frames": frames / max(with_frames, 1),
            "frame_count_shares": (per_k / max(reads, 1)).tolist(),
            "mean_protein_length": protein_total / max(frames, 1),
            "protein_length_quantiles": quantiles(self.protein_lengths),
            "n_read_share": self.reads_with_n / max(reads, 1),
            "n_base_rate": self.n_bases / max(self.bases_in_n_reads, 1),
        }

    def profile(self, name: str) -> dict:
        reads_per_length = self.length_frames.sum(1)
        present = np.flatnonzero(reads_per_length)
        if present.size <= 500:  # reads: one bin per exact length
            lo = hi = present
            weight = reads_per_length[present]
        else:  # long, spread lengths: 200 bins of equal read count
            cum = np.cumsum(reads_per_length)
            cuts = np.unique(np.searchsorted(cum, np.linspace(0, cum[-1], 201)[1:-1], side="right"))
            lo = np.concatenate(([present[0]], cuts))
            hi = np.concatenate((cuts - 1, [present[-1]]))
            keep = hi >= lo
            lo, hi = lo[keep], hi[keep]
            weight = np.array([reads_per_length[a : b + 1].sum() for a, b in zip(lo, hi)])
        # frame-count shares per length class (deciles of read length)
        cum = np.cumsum(reads_per_length)
        edges = np.unique(np.searchsorted(cum, np.linspace(0, cum[-1], 11)[1:-1], side="right"))
        edges = edges[(edges > present[0]) & (edges <= present[-1])]
        bounds = np.concatenate(([0], edges, [len(reads_per_length)]))
        shares = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            per_k = self.length_frames[a:b].sum(0)
            shares.append((per_k / max(per_k.sum(), 1)).round(8).tolist())
        summary = self.summary()
        return {
            "schema": SCHEMA,
            "name": name,
            "lengths": {
                "lo": lo.tolist(),
                "hi": hi.tolist(),
                "weight": (weight / weight.sum()).round(10).tolist(),
            },
            "frame_counts": {"length_edges": edges.tolist(), "shares": shares},
            "n_read_share": summary["n_read_share"],
            "n_base_rate": summary["n_base_rate"],
            "summary": summary,
        }


def profile_fasta(path, batch_size: int = 5_000) -> dict:
    """Measure a FASTA's shape (lengths, surviving frames, proteins, N's) as a profile."""
    stats = SampleStats()

    def add(batch):
        per_read = Counter()
        proteins = []
        for frame in translate_batch(batch):
            per_read[frame.read_id] += 1
            proteins.append(len(frame.protein))
        stats.add(
            [len(s) for _, s in batch],
            [per_read[rid] for rid, _ in batch],
            proteins,
            [len(s) - sum(map(s.count, "ACGT")) for _, s in batch],
        )

    batch = []
    for record in read_fasta(path):
        batch.append(record)
        if len(batch) == batch_size:
            add(batch)
            batch = []
    if batch:
        add(batch)
    return stats.profile(name=os.path.basename(str(path)))


# ---- generation ---------------------------------------------------------------


def _surviving_frames(codes, lengths):
    """Which of the 6 frames survive translation, and their protein lengths (R, 6)."""
    width = codes.shape[1]
    codon = codes[:, :-2] * 25 + codes[:, 1:-1] * 5 + codes[:, 2:]
    inside = np.arange(width - 2)[None, :] + 3 <= lengths[:, None]
    kept = inside & ~HAS_N[codon]
    f_stop = inside & FORWARD_STOP[codon]
    r_stop = inside & REVERSE_STOP[codon]
    # codons starting at positions of phase q (p % 3 == q) form forward frame F(q+1);
    # seen from the other strand they form reverse frame R((L - q) % 3 + 1)
    kept_by_phase = np.stack([kept[:, q::3].sum(1) for q in range(3)], axis=1)
    f_stop_by_phase = np.stack([f_stop[:, q::3].any(1) for q in range(3)], axis=1)
    r_stop_by_phase = np.stack([r_stop[:, q::3].any(1) for q in range(3)], axis=1)
    phase_of_reverse = (lengths[:, None] - np.arange(3)) % 3
    protein = np.concatenate((kept_by_phase, np.take_along_axis(kept_by_phase, phase_of_reverse, 1)), axis=1)
    stopped = np.concatenate(
        (f_stop_by_phase, np.take_along_axis(r_stop_by_phase, phase_of_reverse, 1)), axis=1
    )
    survives = ~stopped & (protein > 0)
    return survives, np.minimum(protein, MAX_RESIDUES) * survives


def _draw_reads(rng, lengths, targets, n_read_share, n_base_rate):
    """Random reads (codes, padded) whose target frames are free of stops."""
    rows, width = len(lengths), int(lengths.max())
    codes = rng.integers(0, 4, size=(rows, width), dtype=np.uint8)
    planted = np.flatnonzero(targets.any(1))
    sub, sub_len, sub_targets = codes[planted], lengths[planted], targets[planted]
    # the codon at position p belongs to forward frame p % 3 and reverse frame (L - p) % 3
    guard_forward = sub_targets[:, :3]
    guard_reverse = np.take_along_axis(sub_targets[:, 3:], (sub_len[:, None] - np.arange(3)) % 3, 1)
    for i in range(2, width):
        p = i - 2  # the codon p..i is completed by base i
        codon = sub[:, p] * 25 + sub[:, p + 1] * 5 + sub[:, i]
        bad = (p + 3 <= sub_len) & (
            (guard_forward[:, p % 3] & FORWARD_STOP[codon]) | (guard_reverse[:, p % 3] & REVERSE_STOP[codon])
        )
        if bad.any():
            sub[bad, i] = np.where(rng.random(int(bad.sum())) < 0.5, C, T)
    codes[planted] = sub
    # N's: a small share of reads, each base N at n_base_rate, at least one
    with_n = np.flatnonzero(rng.random(rows) < n_read_share)
    if with_n.size:
        # one N is forced; the others come at a rate that keeps the mean N share at n_base_rate
        rate = ((n_base_rate * lengths[with_n] - 1) / np.maximum(lengths[with_n] - 1, 1)).clip(0, 1)
        sprinkle = rng.random((with_n.size, width)) < rate[:, None]
        sprinkle[np.arange(with_n.size), (rng.random(with_n.size) * lengths[with_n]).astype(int)] = True
        block = codes[with_n]
        block[sprinkle] = N
        codes[with_n] = block
    return codes


def _generate_block(rng, n, profile):
    lengths_spec, counts = profile["lengths"], profile["frame_counts"]
    weight = np.asarray(lengths_spec["weight"], dtype=float)
    bin_ = rng.choice(weight.size, size=n, p=weight / weight.sum())
    lo, hi = np.asarray(lengths_spec["lo"])[bin_], np.asarray(lengths_spec["hi"])[bin_]
    lengths = (lo + rng.random(n) * (hi - lo + 1)).astype(np.int64)

    # how many frames survive, per read, from its length class
    shares = np.asarray(counts["shares"], dtype=float)
    cum = np.cumsum(shares / shares.sum(1, keepdims=True), axis=1)
    length_class = np.searchsorted(np.asarray(counts["length_edges"]), lengths, side="right")
    want = (rng.random(n)[:, None] > cum[length_class]).sum(1).clip(0, 6)
    usable = np.concatenate([lengths[:, None] - np.arange(3) >= 3] * 2, axis=1)  # frames with a codon
    want = np.minimum(want, usable.sum(1))
    # which frames: a random ranking of the usable ones
    rank = np.argsort(np.argsort(np.where(usable, rng.random((n, 6)), 2.0), axis=1), axis=1)
    targets = rank < want[:, None]

    codes = np.zeros((n, int(lengths.max())), dtype=np.uint8)
    survives = np.zeros((n, 6), dtype=bool)
    protein = np.zeros((n, 6), dtype=np.int64)
    todo = np.arange(n)
    for _ in range(REDRAW_ROUNDS):  # ~60% of redrawn reads match each round
        drawn = _draw_reads(
            rng, lengths[todo], targets[todo], profile["n_read_share"], profile["n_base_rate"]
        )
        alive, prot = _surviving_frames(drawn, lengths[todo])
        codes[todo, : drawn.shape[1]] = drawn
        survives[todo], protein[todo] = alive, prot
        matched = alive.sum(1) == want[todo]
        todo = todo[~matched]
        if todo.size == 0:
            break
    return codes, lengths, survives, protein


def _fasta_block(codes, lengths, first_index):
    """FASTA text of a block: one '>synth_<i>' header line and one sequence line per read."""
    rows, width = codes.shape
    text = np.full((rows, width + 1), ord("\n"), dtype=np.uint8)
    text[:, :width] = LETTERS[codes]
    text[np.arange(rows), lengths] = ord("\n")
    seqs = text[np.arange(width + 1)[None, :] <= lengths[:, None]].tobytes().split(b"\n")[:-1]
    parts = [b""] * (2 * rows)
    parts[0::2] = [b">synth_%d" % i for i in range(first_index, first_index + rows)]
    parts[1::2] = seqs
    return b"\n".join(parts) + b"\n"


def write_synthetic_fasta(path, n: int, profile="reads150", seed: int = 0) -> dict:
    """Write n synthetic reads shaped by profile to path (.gz ok); return the realised summary."""
    if n < 1:
        raise UserError(f"number of reads must be >= 1, got {n}", "pass a positive count")
    profile = load_profile(profile)
    max_length = max(profile["lengths"]["hi"])
    block_reads = int(min(MAX_BLOCK_READS, max(100, BLOCK_BASES // max_length)))
    stats = SampleStats()
    with atomic_output(path) as out:
        for block, first in enumerate(range(0, n, block_reads)):
            rng = np.random.default_rng([seed, block])
            codes, lengths, survives, protein = _generate_block(rng, min(block_reads, n - first), profile)
            out.write(_fasta_block(codes, lengths, first))
            inside = np.arange(codes.shape[1])[None, :] < lengths[:, None]
            stats.add(lengths, survives.sum(1), protein[survives], ((codes == N) & inside).sum(1))
    summary = stats.summary()
    summary["profile"] = profile.get("name", "custom")
    summary["seed"] = seed
    return summary
