"""One checkpoint shard on disk: its name, its format (an uncompressed .npz read in place), its checksum manifest.

A shard is an uncompressed `.npz` (np.savez stores its members, ZIP_STORED) named
`shard-rRRR-NNNNNN-kLO-HI.npz`, LO..HI the smallest and largest key it holds. Readers find the members
where they lie in the file (`open_shard`) and read them in place: keys and ids through a memory map,
vectors with pread (store.ShardIndex.fill). Truncation is caught when a shard is opened; `verify_shard`
also checks the keys' and ids' CRCs and the blake2b manifest written beside the shard
(`sum-<shard stem>.blake2b`). store.py keeps the writer, the resume and the assembly."""

from __future__ import annotations

import hashlib
import io
import logging
import mmap
import os
import re
import weakref
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perfkit.errors import UserError

log = logging.getLogger(__name__)

# the manifest beside each shard, sum-<shard stem>.blake2b: blake2b of its arrays
CHECKSUM_SUFFIX = ".blake2b"
SHARD_NAME = re.compile(r"shard-r(\d+)-(\d+)(?:-k(\d+)-(\d+))?\.npz")
MEMBERS = ("keys", "ids", "embeddings")
# fill copies vectors with pread (the kernel copies out of the page cache, no page of the file is mapped):
# on the 2 x H200 host 15 % faster than copying from the memory maps, 25 % with two ranks copying at once
COPY_BY_READ = True


def _write_shard(f, keys: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> None:
    np.savez(f, keys=keys, ids=ids, embeddings=vectors)


def checksum(keys: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> str:
    """blake2b of the three arrays as stored (dtype, shape and bytes): what a shard must still hold."""
    h = hashlib.blake2b(digest_size=20)
    for array in (np.asarray(keys, dtype=np.int64), np.asarray(ids), np.asarray(vectors)):
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype.str}{array.shape};".encode())
        h.update(array.reshape(-1).view(np.uint8) if array.size else b"")
    return h.hexdigest()


def checksum_path(path: Path) -> Path:
    return path.with_name(f"sum-{path.stem}{CHECKSUM_SUFFIX}")  # not shard-*: globs of shards never see it


def _write_checksum(path: Path, digest: str) -> None:
    target = checksum_path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(digest + "\n")
    os.replace(tmp, target)


def check_checksum(path: Path, keys: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> None:
    """ValueError when the shard's arrays differ from its manifest's checksum (no manifest: not checked)."""
    try:
        recorded = checksum_path(path).read_text().strip()
    except FileNotFoundError:
        return
    if checksum(keys, ids, vectors) != recorded:
        raise ValueError("its keys, ids or vectors differ from the checksum written with it (altered)")


def set_aside(path: Path) -> None:
    """A damaged shard renamed *.corrupt (its manifest too): not read again, its sequences recomputed."""
    path.rename(path.with_suffix(".corrupt"))
    manifest = checksum_path(path)
    if manifest.exists():
        manifest.rename(manifest.with_suffix(".corrupt"))


def shard_name(rank: int, index: int, keys: np.ndarray) -> str:
    return f"shard-r{rank:03d}-{index:06d}-k{int(keys.min())}-{int(keys.max())}.npz"


def _shard_index(path: Path) -> int:
    match = SHARD_NAME.fullmatch(path.name)
    if not match:
        raise RuntimeError(f"{path.name} is not a shard name")
    return int(match.group(2))


def key_span(path: Path) -> tuple[int, int] | None:
    """(smallest, largest) key of a shard from its name; None for a name without a range (earlier versions)."""
    match = SHARD_NAME.fullmatch(path.name)
    if not match or match.group(3) is None:
        return None
    return int(match.group(3)), int(match.group(4))


@dataclass
class Shard:
    """An open shard: its members as read-only arrays on a memory map of the file (nothing read yet), and
    `read_rows` for vectors by pread."""

    path: Path
    keys: np.ndarray
    ids: np.ndarray
    embeddings: np.ndarray
    _map: mmap.mmap
    _members: dict  # member -> (zip info, first byte of its .npy in the file, first byte of its array)
    _fd: int  # for pread, closed with the shard

    def __post_init__(self):
        weakref.finalize(self, os.close, self._fd)

    def __len__(self) -> int:
        return len(self.keys)

    def read_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        """out[i] = embeddings[rows[i]] for ascending rows: one pread of the rows' span, straight into `out`
        when they are a run of rows, else into a scratch block and a take (a few rows far apart: from the map)."""
        vectors = self.embeddings
        first, span = int(rows[0]), int(rows[-1]) - int(rows[0]) + 1
        if (
            not COPY_BY_READ
            or span > 2 * len(rows)
            or vectors.dtype != out.dtype
            or not (vectors.flags.c_contiguous and out.flags.c_contiguous)
        ):
            _copy_rows(vectors, rows, out)
            return
        at = self._members["embeddings"][2] + first * vectors.strides[0]
        if span == len(rows):
            _pread_into(self._fd, out, at, self.path)
        else:
            scratch = np.empty((span,) + vectors.shape[1:], dtype=vectors.dtype)
            _pread_into(self._fd, scratch, at, self.path)
            np.take(scratch, rows - first, axis=0, out=out, mode="clip")

    def prefetch(self) -> None:
        """Ask the kernel to read the vectors ahead (a shard about to be gathered from in row order)."""
        start = self._members["embeddings"][2]
        aligned = start - start % mmap.PAGESIZE
        try:
            self._map.madvise(mmap.MADV_WILLNEED, aligned, start + self.embeddings.nbytes - aligned)
        except (AttributeError, OSError, ValueError):  # a hint only: platforms without madvise
            pass

    def verify(self) -> None:
        """The zip CRC of the keys and ids members (not of the vectors: that rereads every vector)."""
        for name in ("keys", "ids"):
            info, start, _ = self._members[name]
            if zlib.crc32(memoryview(self._map)[start : start + info.file_size]) != info.CRC:
                raise ValueError(f"member {name} fails its CRC check")


def open_shard(path: str | Path) -> Shard:
    """Memory-map a shard's members; ValueError/zipfile.BadZipFile when the file is not a whole shard."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        with open(fd, "rb", closefd=False) as f:
            size = os.fstat(fd).st_size
            with zipfile.ZipFile(f) as archive:  # its directory sits at the end: a truncated file has none
                infos = {info.filename: info for info in archive.infolist()}
        data = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        return _shard_of(path, fd, size, infos, data)
    except BaseException:
        os.close(fd)
        raise


def _shard_of(path: Path, fd: int, size: int, infos: dict, data: mmap.mmap) -> Shard:
    arrays, members = {}, {}
    for name in MEMBERS:
        info = infos.get(f"{name}.npy")
        if info is None:
            raise ValueError(f"member {name} missing")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"member {name} is compressed")
        local = data[info.header_offset : info.header_offset + 30]
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise ValueError(f"member {name}: no local header")
        start = (
            info.header_offset
            + 30
            + int.from_bytes(local[26:28], "little")
            + int.from_bytes(local[28:30], "little")
        )
        if start + info.file_size > size:
            raise ValueError(f"member {name} runs past the end of the file (truncated)")
        arrays[name], at = _npy_view(data, start, info.file_size, name)
        members[name] = (info, start, at)
    keys, ids, vectors = arrays["keys"], arrays["ids"], arrays["embeddings"]
    if keys.ndim != 1 or keys.dtype.kind not in "iu" or ids.ndim != 1 or vectors.ndim != 2:
        raise ValueError(
            f"unexpected member shapes or types: keys {keys.dtype}{keys.shape}, ids {ids.shape}, "
            f"embeddings {vectors.shape}"
        )
    if not (len(keys) == len(ids) == len(vectors)):
        raise ValueError("keys, ids and embeddings differ in length")
    return Shard(path, keys, ids, vectors, data, members, fd)


def _npy_view(data: mmap.mmap, start: int, size: int, name: str) -> tuple[np.ndarray, int]:
    """The array of the .npy bytes at data[start:start + size], without copying them, and where its data begins."""
    prefix = data[start : start + 12]  # magic (6), version (2), header length (2 in version 1, else 4)
    if len(prefix) < 10 or prefix[:6] != b"\x93NUMPY":
        raise ValueError(f"member {name} is not a .npy array")
    length = (
        10 + int.from_bytes(prefix[8:10], "little")
        if prefix[6] == 1
        else 12 + int.from_bytes(prefix[8:12], "little")
    )
    head = io.BytesIO(data[start : start + min(length, size)])
    version = np.lib.format.read_magic(head)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = reader(head)
    offset = head.tell()
    if dtype.hasobject:
        raise ValueError(f"member {name} holds Python objects")
    if offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != size:
        raise ValueError(f"member {name}: its header's shape does not fill its bytes")
    return np.ndarray(
        shape, dtype, buffer=data, offset=start + offset, order="F" if fortran else "C"
    ), start + offset


def read_shard(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """keys, ids and vectors of a shard (memory-mapped, read-only)."""
    shard = open_shard(path)
    return shard.keys, shard.ids, shard.embeddings


def read_shard_keys(path: Path) -> np.ndarray:
    """Only the keys of a shard: no vector read."""
    return np.array(open_shard(path).keys)


def verify_shard(path: Path) -> np.ndarray:
    """The keys of a shard that opens whole, whose keys and ids pass their CRC and whose arrays match the
    checksum written with them (this reads every vector: a resume's check, not the hot path); raises otherwise."""
    shard = open_shard(path)
    shard.verify()
    check_checksum(path, shard.keys, shard.ids, shard.embeddings)
    return np.array(shard.keys)


def _pread_into(fd: int, out: np.ndarray, at: int, path: Path) -> None:
    view = memoryview(out).cast("B")
    while len(view):
        n = os.preadv(fd, [view], at)
        if n == 0:
            raise UserError(
                f"checkpoint {path} ends early (truncated after it was opened)",
                "rerun that stage with --resume",
            )
        view, at = view[n:], at + n


def _copy_rows(source: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """out[i] = source[rows[i]] for ascending rows, straight from the memory map."""
    if rows[-1] - rows[0] + 1 == len(rows):
        out[...] = source[rows[0] : rows[-1] + 1]  # a run of rows: one slice copy
    elif source.dtype == out.dtype:
        # rows are in range: 'clip' skips the buffered check
        np.take(source, rows, axis=0, out=out, mode="clip")
    else:
        out[...] = source[rows]
