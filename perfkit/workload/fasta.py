"""Streaming FASTA reader and atomic writer.

read_fasta yields (record_id, sequence) one record at a time, so memory does not
grow with the file (only the set of ids seen, for the duplicate check).

Rules (every violation is a UserError naming file and line):
- plain or gzip (detected by magic bytes), CRLF or LF, wrapped lines, blank lines ok
- sequence letters are IUPAC nucleotide codes ACGTUNRYSWKMBDHV, any case;
  the sequence is upper-cased and U becomes T
- gaps ('-', '.') are rejected: this reads raw sequences, not alignments, and a
  gap would silently shift the reading frame
- a record with an empty sequence is an error (it usually means a truncated file)
- the id is the header up to the first whitespace; it must be non-empty and unique
"""

import contextlib
import gzip
import os
import zlib
from collections.abc import Iterable, Iterator

from perfkit.errors import UserError

GZIP_MAGIC = b"\x1f\x8b"
IUPAC = b"ACGTUNRYSWKMBDHV"
# lower -> upper and U -> T, every other byte unchanged
CANONICAL = bytes.maketrans(IUPAC.lower() + b"U", IUPAC + b"T")
ALLOWED = IUPAC + IUPAC.lower()


def _open_binary(path):
    """Open path for reading bytes, un-gzipping if it starts with the gzip magic."""
    try:
        with open(path, "rb") as probe:
            magic = probe.read(2)
        return gzip.open(path, "rb") if magic == GZIP_MAGIC else open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file", "check the path") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a FASTA file", "give a FASTA file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})", "check the path and permissions") from None


def _lines(path) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, line without its CR/LF), turning read failures into UserErrors."""
    with _open_binary(path) as f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, start=1):
                yield lineno, line.rstrip(b"\r\n")
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(
                f"{path}:{lineno + 1}: cannot read, corrupt or truncated data ({e})",
                "re-create or re-download the file",
            ) from None


def _bad_char_error(where: str, bad: bytes) -> UserError:
    c = bad[0]
    if c == 0 or c > 127:
        return UserError(
            f"{where}: binary data (byte 0x{c:02x}), not a FASTA text file",
            "give a plain or gzipped FASTA file",
        )
    if bad[:1] in b"-.":
        return UserError(
            f"{where}: gap character '{chr(c)}' (alignments are not supported)",
            "remove the gaps from the sequences",
        )
    return UserError(
        f"{where}: character {chr(c)!r} is not an IUPAC nucleotide code", "fix or remove that record"
    )


def read_fasta(path) -> Iterator[tuple[str, str]]:
    """Yield (id, sequence) per record, streaming; raise UserError on any bad input."""
    return _records(_lines(path), path, lambda lineno: f"{path}:{lineno}", set())


def read_fasta_range(path, start: int, end: int) -> Iterator[tuple[str, str]]:
    """The records whose headers lie in bytes [start, end) of a plain FASTA file, `start` being a header's
    first byte (a block boundary of the plan): a worker parses its own blocks only, never the whole file.
    Same rules as read_fasta; ids are checked for uniqueness within the range."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})", "check the path and permissions") from None
    if len(data) != end - start:
        raise UserError(
            f"{path}: shorter than when its blocks were planned (changed while running?)",
            "do not change the input during a run; run it again",
        )
    lines = ((n, line.rstrip(b"\r")) for n, line in enumerate(data.split(b"\n"), start=1))
    return _records(lines, path, lambda lineno: f"{path}: line {lineno} of the block at byte {start}", set())


def _records(lines, path, where, seen_ids: set) -> Iterator[tuple[str, str]]:
    """(id, sequence) from (line number, line) pairs; `where(lineno)` names a place in error messages."""
    record_id, header_line, parts = None, 0, []

    def finish():
        if not parts:
            raise UserError(
                f"{where(header_line)}: record {record_id!r} has an empty sequence",
                "remove that record or fix the truncated file",
            )
        return record_id, b"".join(parts).translate(CANONICAL).decode("ascii")

    for lineno, line in lines:
        if line.startswith(b">"):
            if record_id is not None:
                yield finish()
            if not line.isascii() or b"\0" in line:
                raise UserError(
                    f"{where(lineno)}: binary or non-ASCII bytes in header",
                    "give a plain or gzipped FASTA file with ASCII headers",
                )
            header = line[1:]
            if not header[:1].strip():  # nothing, or whitespace right after '>'
                raise UserError(f"{where(lineno)}: empty record id after '>'", "give every record an id")
            record_id, header_line, parts = header.split(maxsplit=1)[0].decode("ascii"), lineno, []
            if record_id in seen_ids:
                raise UserError(
                    f"{where(lineno)}: duplicate record id {record_id!r}", "make record ids unique"
                )
            seen_ids.add(record_id)
        elif line.strip():
            line = line.strip()
            bad = line.translate(None, ALLOWED)
            if bad:
                raise _bad_char_error(where(lineno), bad)
            if record_id is None:
                raise UserError(
                    f"{where(lineno)}: sequence data before the first '>' header",
                    "start the file with a '>id' header line",
                )
            parts.append(line)

    if record_id is None:
        raise UserError(
            f"{path}: no FASTA records (empty file or no '>' header)",
            "give a FASTA file with at least one record",
        )
    yield finish()


def count_records(path) -> int:
    """Number of '>' header lines (fast, does not validate; use for progress bars)."""
    return sum(1 for _, line in _lines(path) if line.startswith(b">"))


@contextlib.contextmanager
def atomic_output(path):
    """Binary file handle for path, written to a temp file and renamed on success,
    so a half-written file never looks complete. Gzips if path ends in .gz."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        raw = open(tmp, "wb")
    except OSError as e:
        raise UserError(
            f"{path}: cannot write ({e.strerror})", "check the directory exists and is writable"
        ) from None
    try:
        with raw:
            if path.endswith(".gz"):
                # mtime=0 and no file name: same content -> same bytes
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                    yield gz
            else:
                yield raw
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_fasta(path, records: Iterable[tuple[str, str]], width: int = 80) -> int:
    """Write (id, sequence) records, lines wrapped at width (0: no wrapping). Returns the count."""
    n = 0
    with atomic_output(path) as f:
        for record_id, seq in records:
            if width and len(seq) > width:
                seq = "\n".join(seq[i : i + width] for i in range(0, len(seq), width))
            f.write(f">{record_id}\n{seq}\n".encode("ascii"))
            n += 1
    return n
