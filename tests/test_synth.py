"""Synthetic samples: reproducible, shaped like the profile, profile round trip."""

import json

import pytest

from perfkit.errors import UserError
from perfkit.workload.fasta import read_fasta
from perfkit.workload.synth import BUILTIN_PROFILES, SCHEMA, profile_fasta, write_synthetic_fasta
from perfkit.workload.translate import translate_records


@pytest.fixture(scope="module")
def reads150(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "reads150.fa"
    summary = write_synthetic_fasta(path, 20_000, "reads150", seed=7)
    return path, summary


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a, b, c = (tmp_path / n for n in ("a.fa", "b.fa", "c.fa"))
    write_synthetic_fasta(a, 3_000, "reads150", seed=1)
    write_synthetic_fasta(b, 3_000, "reads150", seed=1)
    write_synthetic_fasta(c, 3_000, "reads150", seed=2)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_gzip_output_is_reproducible(tmp_path):
    a, b = tmp_path / "a.fa.gz", tmp_path / "b.fa.gz"
    write_synthetic_fasta(a, 500, seed=3)
    write_synthetic_fasta(b, 500, seed=3)
    assert a.read_bytes() == b.read_bytes()
    assert len(list(read_fasta(a))) == 500


def test_reads150_statistics(reads150):
    path, summary = reads150
    records = list(read_fasta(path))  # also checks the file is valid FASTA
    assert len(records) == 20_000 == summary["reads"]
    assert len({rid for rid, _ in records}) == 20_000

    # measure with the real translation, independently of the generator's own count
    frames_per_read = {}
    protein_lengths = []
    for frame in translate_records(records):
        frames_per_read[frame.read_id] = frames_per_read.get(frame.read_id, 0) + 1
        protein_lengths.append(len(frame.protein))
    share = len(frames_per_read) / len(records)
    per_read = sum(frames_per_read.values()) / len(frames_per_read)
    mean_protein = sum(protein_lengths) / len(protein_lengths)
    assert share == pytest.approx(0.60, abs=0.05)
    assert per_read == pytest.approx(1.3, abs=0.1)
    assert mean_protein == pytest.approx(49, abs=3)
    # the summary the generator returns is what translation finds
    assert summary["share_with_frames"] == pytest.approx(share)
    assert summary["frames_per_read_with_frames"] == pytest.approx(per_read)
    assert summary["mean_protein_length"] == pytest.approx(mean_protein)
    # a few reads carry N's
    with_n = sum("N" in seq for _, seq in records) / len(records)
    assert 0.005 < with_n < 0.05
    assert all(140 <= len(seq) <= 150 for _, seq in records)


def test_profile_round_trip(reads150, tmp_path):
    path, _ = reads150
    first = profile_fasta(path)
    assert first["schema"] == SCHEMA
    profile_path = tmp_path / "PROFILE.json"
    profile_path.write_text(json.dumps(first))  # must be JSON-serialisable

    again = tmp_path / "again.fa"
    write_synthetic_fasta(again, 20_000, profile_path, seed=99)
    second = profile_fasta(again)["summary"]
    first = first["summary"]
    assert second["mean_read_length"] == pytest.approx(first["mean_read_length"], abs=1)
    assert second["read_length_quantiles"] == first["read_length_quantiles"]
    assert second["share_with_frames"] == pytest.approx(first["share_with_frames"], abs=0.02)
    assert second["frames_per_read_with_frames"] == pytest.approx(
        first["frames_per_read_with_frames"], abs=0.05
    )
    assert second["mean_protein_length"] == pytest.approx(first["mean_protein_length"], abs=1)
    assert second["n_read_share"] == pytest.approx(first["n_read_share"], abs=0.01)


def test_contigs_profile_round_trip(tmp_path):
    path = tmp_path / "contigs.fa"
    summary = write_synthetic_fasta(path, 1_500, "contigs", seed=0)
    assert 1000 < summary["mean_read_length"] < 2500
    profile = profile_fasta(path)
    again = write_synthetic_fasta(tmp_path / "again.fa", 1_500, profile, seed=1)
    assert again["mean_read_length"] == pytest.approx(summary["mean_read_length"], rel=0.1)
    assert again["share_with_frames"] == pytest.approx(summary["share_with_frames"], abs=0.04)


def test_reads300_builtin(tmp_path):
    summary = write_synthetic_fasta(tmp_path / "r300.fa", 2_000, "reads300", seed=0)
    assert 250 <= summary["mean_read_length"] <= 300
    assert summary["mean_protein_length"] == pytest.approx(98, abs=5)


def test_bad_profiles_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown profile 'reads999'"):
        write_synthetic_fasta(tmp_path / "x.fa", 10, "reads999")
    with pytest.raises(UserError, match="no-such.json: cannot read"):
        write_synthetic_fasta(tmp_path / "x.fa", 10, tmp_path / "no-such.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema": "perfkit.profile/1",\n  oops}')
    with pytest.raises(UserError, match="broken.json:2: not valid JSON"):
        write_synthetic_fasta(tmp_path / "x.fa", 10, broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"schema": "something/else"}')
    with pytest.raises(UserError, match="not a perfkit.profile/1 profile"):
        write_synthetic_fasta(tmp_path / "x.fa", 10, wrong)
    malformed = dict(BUILTIN_PROFILES["reads150"], lengths={"lo": [150], "hi": [100], "weight": [1]})
    with pytest.raises(UserError, match="malformed"):
        write_synthetic_fasta(tmp_path / "x.fa", 10, malformed)
    with pytest.raises(UserError, match=">= 1"):
        write_synthetic_fasta(tmp_path / "x.fa", 0)
    assert not list(tmp_path.glob("x.fa*"))
