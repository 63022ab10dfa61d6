"""Six-frame translation and chunking against hand-checked cases and a slow reference."""

import random

import pytest

from perfkit.workload.translate import (
    CODON_TABLE,
    FRAME_INDEX,
    FRAMES,
    chunk_records,
    chunk_sequence,
    translate_read,
    translate_records,
)


def proteins(read_id, seq, **kw):
    return {f.frame: f.protein for f in translate_read(read_id, seq, **kw)}


def reference_translate(seq, max_residues=1022):
    """Slow, obvious version of the rules: {frame: (protein, nucleotides)}."""
    rc = seq[::-1].translate(str.maketrans("ACGTN", "TGCAN"))
    out = {}
    for name in FRAMES:
        strand = seq if name[0] == "F" else rc
        offset = int(name[1]) - 1
        codons = [strand[i : i + 3] for i in range(offset, len(strand) - 2, 3)]
        codons = [c for c in codons if c in CODON_TABLE]  # drop codons with N
        protein = "".join(CODON_TABLE[c] for c in codons)
        if protein and "*" not in protein:
            out[name] = (protein[:max_residues], "".join(codons)[: 3 * max_residues])
    return out


def test_frame_constants():
    assert FRAMES == ("F1", "F2", "F3", "R1", "R2", "R3")
    assert [FRAME_INDEX[f] for f in FRAMES] == list(range(6))


def test_hand_checked_six_frames():
    # ATG GCC AAA TTT GGG; reverse complement CCC AAA TTT GGC CAT
    assert proteins("r", "ATGGCCAAATTTGGG") == {
        "F1": "MAKFG",
        "F2": "WPNL",
        "F3": "GQIW",
        "R1": "PKFGH",
        "R2": "PNLA",
        "R3": "QIWP",
    }


def test_stop_anywhere_drops_the_frame():
    # F1 = ATG TAA GCC has a stop; reverse complement GGCTTACAT
    assert proteins("r", "ATGTAAGCC") == {"F2": "CK", "F3": "VS", "R1": "GLH", "R2": "AY", "R3": "LT"}
    # a stop in the last codon drops it too
    assert "F1" not in proteins("r", "GCC" * 30 + "TGA")


def test_codons_with_n_are_dropped_not_fatal():
    frames = {f.frame: f for f in translate_read("r", "ATGNCCAAAT")}
    assert frames["F1"].protein == "MK" and frames["F1"].nucleotides == "ATGAAA"
    assert frames["F2"].protein == "PN"  # TGN dropped, CCA AAT
    assert frames["R2"].protein == "FH"  # rc ATTTGGNCAT: TTT GGN CAT
    assert "F1" not in proteins("r", "NNNNNN")  # nothing left -> dropped
    assert proteins("r", "NNNNNNNN") == {}


def test_lowercase_and_u():
    assert proteins("r", "auggccaaauuuggg") == proteins("r", "ATGGCCAAATTTGGG")


def test_frame_fields_and_ids():
    frames = translate_read("read7", "ATGGCCAAATTTGGG")
    assert [f.frame for f in frames] == list(FRAMES)
    r1 = frames[3]
    assert (r1.read_id, r1.frame, r1.frame_index, r1.id) == ("read7", "R1", 3, "read7_R1")
    assert r1.nucleotides == "CCCAAATTTGGCCAT"
    assert all(len(f.nucleotides) == 3 * len(f.protein) for f in frames)


def test_truncation_to_max_residues():
    frames = {f.frame: f for f in translate_read("r", "GCC" * 1100)}
    assert frames["F1"].protein == "A" * 1022
    assert len(frames["F1"].nucleotides) == 3 * 1022
    assert frames["R1"].protein == "G" * 1022
    assert proteins("r", "GCC" * 10, max_residues=4)["F1"] == "AAAA"
    # the stop check covers the whole frame, also past the cut
    assert "F1" not in proteins("r", "GCC" * 1100 + "TAA")


def test_short_reads():
    assert proteins("r", "") == {} and proteins("r", "AT") == {}
    assert proteins("r", "ATG") == {"F1": "M", "R1": "H"}


def test_matches_slow_reference_on_random_reads():
    rng = random.Random(42)
    records = []
    for i in range(400):
        n = rng.choice([0, 2, 3, 5, 30, 60, 150, 151, 152, 300, 3200])
        alphabet = "ACGT" if i % 3 else "ACGTACGTACGTN"
        # sense-codon-rich reads so that many frames survive
        if i % 2:
            seq = "".join(rng.choice(alphabet) for _ in range(n))
        else:
            seq = "".join(rng.choice("CT") + rng.choice(alphabet) * 2 for _ in range(n // 3 + 1))[:n]
        records.append((f"r{i}", seq))
    got = {}
    for f in translate_records(records, batch_size=37):  # odd batch size crosses batch edges
        got[f.id] = (f.protein, f.nucleotides)
    want = {f"{rid}_{name}": v for rid, seq in records for name, v in reference_translate(seq).items()}
    assert len(want) > 200
    assert got == want
    # single-read API agrees with the batched one
    rid, seq = records[10]
    assert {f.id: (f.protein, f.nucleotides) for f in translate_read(rid, seq)} == {
        k: v for k, v in want.items() if k.startswith(rid + "_")
    }


def test_translate_records_order():
    records = [("a", "ATGGCCAAATTTGGG"), ("b", "ATGTAAGCC")]
    ids = [f.id for f in translate_records(records)]
    assert ids == [f"a_{f}" for f in FRAMES] + ["b_F2", "b_F3", "b_R1", "b_R2", "b_R3"]


def test_chunk_sequence():
    assert chunk_sequence("A" * 150, 300) == ["A" * 150]  # shorter: no chunking
    assert chunk_sequence("A" * 300, 300) == ["A" * 300]  # exactly size: whole
    assert chunk_sequence("A" * 700, 300) == ["A" * 300, "A" * 300, "A" * 100]
    assert chunk_sequence("A" * 602, 300) == ["A" * 300, "A" * 300]  # 2-base tail dropped
    assert chunk_sequence("A" * 603, 300) == ["A" * 300, "A" * 300, "AAA"]
    assert chunk_sequence("A" * 650, 300, min_tail=100) == ["A" * 300, "A" * 300]
    with pytest.raises(ValueError):
        chunk_sequence("ACGT", 0)


def test_chunk_records_ids():
    seq = "".join(random.Random(1).choice("ACGT") for _ in range(1100))
    out = list(chunk_records([("short", "ACGT"), ("long", seq)], 500))
    assert out == [
        ("short", "ACGT"),
        ("long_chunk_1", seq[:500]),
        ("long_chunk_2", seq[500:1000]),
        ("long_chunk_3", seq[1000:]),
    ]


def test_truncation_is_counted_frames_and_residues():
    from perfkit.workload.translate import Truncation, translate_batch

    long_orf = "GCT" * 1100  # no stop in any frame: F1/R1 1100 codons, the other four 1099
    short = "ATGGCTGCT"  # F1/R1 3 codons, the other four 2
    counted = Truncation()
    frames = translate_batch([("long", long_orf), ("short", short)], max_residues=1022, truncated=counted)
    assert [len(f.protein) for f in frames if f.read_id == "long"] == [1022] * 6
    assert (counted.frames, counted.residues) == (6, 2 * 78 + 4 * 77)
    none = Truncation()
    translate_batch([("short", short)], max_residues=1022, truncated=none)
    assert (none.frames, none.residues) == (0, 0)
    # the cut is the knob's: with max_residues 2 the short read's F1 and R1 lose a residue
    small = Truncation()
    translate_batch([("short", short)], max_residues=2, truncated=small)
    assert (small.frames, small.residues) == (2, 2)
