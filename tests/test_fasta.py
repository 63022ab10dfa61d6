"""FASTA reading: formats accepted, one UserError (file:line) per kind of bad input, streaming."""

import gzip
import os

import pytest

from perfkit.errors import UserError
from perfkit.workload.fasta import count_records, read_fasta, write_fasta


def write(tmp_path, text, name="in.fa", mode="w"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def records(path):
    return list(read_fasta(path))


def error_of(path):
    with pytest.raises(UserError) as e:
        records(path)
    return str(e.value)


def test_plain_wrapped_lowercase_blank_lines(tmp_path):
    path = write(tmp_path, ">r1 some description\nacgt\nACGU\n\n>r2\n\nNNRY\n")
    assert records(path) == [("r1", "ACGTACGT"), ("r2", "NNRY")]


def test_crlf(tmp_path):
    path = write(tmp_path, b">r1 x\r\nACGT\r\nAC\r\n>r2\r\nGG\r\n")
    assert records(path) == [("r1", "ACGTAC"), ("r2", "GG")]


def test_gzip_detected_by_magic_not_suffix(tmp_path):
    data = gzip.compress(b">r1\nACGT\n>r2\nTTTT\n")
    for name in ("in.fa.gz", "in.fa"):
        assert records(write(tmp_path, data, name)) == [("r1", "ACGT"), ("r2", "TTTT")]


def test_write_then_read_round_trip(tmp_path):
    recs = [("a", "ACGT" * 50), ("b", "A")]
    for name in ("out.fa", "out.fa.gz"):
        path = tmp_path / name
        assert write_fasta(path, recs, width=60) == 2
        assert records(path) == recs
        assert count_records(path) == 2
    assert max(map(len, (tmp_path / "out.fa").read_text().splitlines())) == 60
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_write_is_atomic(tmp_path):
    path = tmp_path / "out.fa"

    def broken():
        yield "a", "ACGT"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_fasta(path, broken())
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("", None, "no FASTA records"),
        ("\n\n", None, "no FASTA records"),
        ("ACGT\n>r1\nACGT\n", 1, "before the first"),
        (">r1\nACGT\n>\nACGT\n", 3, "empty record id"),
        (">r1\nACGT\n> desc\nACGT\n", 3, "empty record id"),
        (">r1\nACGT\n>r2\nAC\n>r1\nGG\n", 5, "duplicate record id 'r1'"),
        (">r1\nACGT\nACJT\n", 3, "'J' is not an IUPAC"),
        (">r1\nAC-GT\n", 2, "gap character '-'"),
        (">r1\nACGT\n>r2\n>r3\nAC\n", 3, "'r2' has an empty sequence"),
        (">r1\nACGT\n>r2\n", 3, "'r2' has an empty sequence"),
        (b">r1\nAC\x00GT\n", 2, "binary data"),
        (b">r1\nAC\xc3\xa9GT\n", 2, "binary data"),
        (b">r\xe91\nACGT\n", 1, "non-ASCII"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", 1, "binary data"),
    ],
)
def test_errors_name_file_and_line(tmp_path, text, line, words):
    path = write(tmp_path, text)
    message = error_of(path)
    where = f"{path}:{line}:" if line else f"{path}:"
    assert message.startswith(where), message
    assert words in message


def test_missing_and_unreadable(tmp_path):
    assert "no such file" in error_of(tmp_path / "nope.fa")
    assert "is a directory" in error_of(tmp_path)


def test_corrupt_gzip(tmp_path):
    data = gzip.compress(b">r1\n" + b"ACGT\n" * 10000)
    path = write(tmp_path, data[: len(data) // 2], "cut.fa.gz")
    assert "corrupt or truncated" in error_of(path)


def test_streaming_reads_only_what_it_needs(tmp_path):
    # a big file whose last record is broken: taking the first record must not see it
    path = tmp_path / "big.fa"
    with open(path, "w") as f:
        for i in range(200_000):
            f.write(f">r{i}\nACGTACGTAC\n")
        f.write(">bad\nXXXX\n")
    stream = read_fasta(path)
    assert next(stream) == ("r0", "ACGTACGTAC")
    assert next(stream) == ("r1", "ACGTACGTAC")
    with pytest.raises(UserError, match=r"big.fa:400002: character 'X'"):
        for _ in stream:
            pass


def test_streaming_memory_does_not_grow_with_file_size(tmp_path):
    import tracemalloc

    path = tmp_path / "many.fa"
    line = "ACGT" * 20 + "\n"
    with open(path, "w") as f:
        for i in range(5_000):
            f.write(f">r{i}\n" + line * 50)  # 4 kb per record, ~20 MB in all
    size = path.stat().st_size
    tracemalloc.start()
    n = sum(1 for _ in read_fasta(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 5_000
    assert peak < size / 10, (peak, size)  # only the id set and one record are held
