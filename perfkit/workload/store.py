"""Embeddings on disk: checkpoint shards while running, one `embeddings.h5` at the end.

Every shard holds keys, ids and vectors *together* (keys: read index x 6 + frame
index), so a resumed run can never pair an id with another sequence's vector: the
original system rebuilt its id list from an unordered set and misaligned them.
Shards are written by a background thread, temp file then rename; their write time
goes to telemetry so the checkpoint overhead is measured.

The shard file itself (name, format, in-place reading, checksum manifest) is shard_file.py.
A shard is an uncompressed `.npz` (np.savez stores its members, ZIP_STORED) named
`shard-rRRR-NNNNNN-kLO-HI.npz`, LO..HI the smallest and largest key it holds. Readers
find the members where they lie in the file (`open_shard`) and read them in place:
keys and ids through a memory map, vectors with pread straight into the caller's block
(`ShardIndex.fill`); no zip CRC pass, no intermediate copy, only the rows asked for.
np.load went through zipfile: a CRC pass and two copies of every member. The key range
in the name lets a rank open only the shards that can hold its keys. Shards named
without a range (earlier versions) are the same format and are read the same way,
their keys looked at first.
Truncation is caught when a shard is opened (the zip directory at the file's end is
gone, or a member runs past the end); a resume also checks the CRC of the keys and
ids members (`verify_shard`); a shard that fails is set aside and its sequences are
recomputed. The vectors' CRC is not recomputed: it would read every vector again.
The writer thread also keeps a blake2b checksum of each shard's keys, ids and vectors in a manifest beside it
(`sum-<shard stem>.blake2b`), written before the shard is renamed into place: a resume (`completed_keys`) and the
assembly check it, so a valid zip whose arrays were altered (finding 7: the zip CRCs are rewritten with it)
is set aside as *.corrupt, with one warning line, and its sequences recomputed. The chain's scoring reads
shards without hashing (it follows the run's own resume check); a shard without a manifest (earlier
versions) is used as before.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import zipfile
from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np

from perfkit.errors import CheckFailed, UserError
from perfkit.workload.shard_file import (
    CHECKSUM_SUFFIX,
    Shard,
    _shard_index,
    _write_checksum,
    _write_shard,
    check_checksum,
    checksum,
    key_span,
    open_shard,
    read_shard,
    set_aside,
    shard_name,
    verify_shard,
)

log = logging.getLogger(__name__)

SHARD_GLOB = "shard-*.npz"
COPY_ROWS = 2048  # rows per copy job of ShardIndex.fill (~20 MB of 2560-wide vectors)


class CheckpointStore:
    def __init__(
        self,
        out_dir: str | Path,
        *,
        rank: int = 0,
        every_sequences: int = 10_000,
        every_seconds: float = 300.0,
        telemetry=None,
    ):
        self.dir = Path(out_dir) / "checkpoints"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(
                f"cannot create {self.dir}: {err.strerror}", "choose a writable output folder"
            ) from err
        self.rank = rank
        self.every_sequences = every_sequences
        self.every_seconds = every_seconds
        self.telemetry = telemetry
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_count = 0
        self._last_write = time.monotonic()
        self._next_index = 1 + max(
            (_shard_index(p) for p in self.dir.glob(f"shard-r{rank:03d}-*.npz")), default=-1
        )
        self.sequences_done = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._error_path: Path | None = None
        self._thread = threading.Thread(target=self._writer, name="perfkit-checkpoint", daemon=True)
        self._thread.start()

    def add(self, keys: np.ndarray, ids: list[str], embeddings: np.ndarray) -> None:
        self._pending.append((keys, np.asarray(ids), embeddings))
        self._pending_count += len(keys)
        self.sequences_done += len(keys)
        due = (
            self._pending_count >= self.every_sequences
            or time.monotonic() - self._last_write >= self.every_seconds
        )
        if due:
            self._submit()

    def _raise_if_failed(self) -> None:
        # the writer thread cannot raise into the run: its error waits here for the next add/close, as a UserError
        # (a full disk is the user's to fix, not a traceback)
        if self._error is None:
            return
        err = self._error
        what = err.strerror if isinstance(err, OSError) and err.strerror else f"{type(err).__name__}: {err}"
        raise UserError(
            f"writing a checkpoint failed: {what} ({self._error_path})",
            "check free space and permissions of the output folder, then rerun with --resume",
        ) from err

    def _submit(self) -> None:
        self._raise_if_failed()
        if not self._pending:
            return
        keys = np.concatenate([p[0] for p in self._pending]).astype(np.int64, copy=False)
        ids = np.concatenate([p[1] for p in self._pending])
        vectors = np.concatenate([p[2] for p in self._pending])
        self._pending, self._pending_count = [], 0
        self._last_write = time.monotonic()
        if not len(keys):
            return  # nothing to record (and no key range to name)
        path = self.dir / shard_name(self.rank, self._next_index, keys)
        self._next_index += 1
        self._queue.put((path, keys, ids, vectors, self.sequences_done))

    def _writer(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            path, keys, ids, vectors, done = job
            tmp = path.with_suffix(".tmp")
            try:
                start = time.perf_counter()
                with open(tmp, "wb") as f:
                    _write_shard(f, keys, ids, vectors)
                    f.flush()
                    os.fsync(f.fileno())
                # the manifest first: a shard in place always has its checksum (a kill in between leaves a
                # manifest without a shard, removed on resume)
                _write_checksum(path, checksum(keys, ids, vectors))
                os.replace(tmp, path)
                seconds = time.perf_counter() - start
                if self.telemetry is not None:
                    self.telemetry.checkpoint(
                        sequences_done=done, write_s=seconds, nbytes=path.stat().st_size, path=str(path)
                    )
            except BaseException as err:  # surfaced on the next add/close
                try:
                    # a half-written shard: its sequences are recomputed on resume
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass
                if self._error is None:  # the first failure is the one to report
                    self._error, self._error_path = err, path

    def close(self) -> None:
        try:
            self._submit()
        finally:  # the writer stops and is joined even when a write failed
            self._queue.put(None)
            self._thread.join()
        self._raise_if_failed()


def completed_keys(out_dir: str | Path) -> np.ndarray:
    """Sorted keys of every readable shard; unreadable shards are renamed *.corrupt (recomputed)."""
    folder = Path(out_dir) / "checkpoints"
    found = []
    for tmp in folder.glob("*.tmp"):
        tmp.unlink()  # a write that a kill interrupted
    for manifest in folder.glob(f"sum-shard-*{CHECKSUM_SUFFIX}"):
        if not manifest.with_name(manifest.name[len("sum-") : -len(CHECKSUM_SUFFIX)] + ".npz").exists():
            manifest.unlink()  # killed between the manifest and its shard's rename
    for path in sorted(folder.glob(SHARD_GLOB)):
        try:
            found.append(verify_shard(path))
        except Exception as err:  # truncation, CRC error, bad arrays, checksum mismatch
            log.warning("checkpoint %s is unreadable (%s): its sequences will be recomputed", path.name, err)
            set_aside(path)
    return np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)


def assemble(out_dir: str | Path, *, expected_count: int, frame_names: tuple[str, ...], attrs: dict) -> dict:
    """Merge shards into `embeddings.h5` in key order (= translated input order), verified.

    Checks: count = expected, keys unique, each id's frame suffix = its key's frame.
    Writes to a temp file and renames it, with attribute complete=True, only when all hold.
    """
    out_dir = Path(out_dir)
    index = ShardIndex(out_dir)  # vectors are read once, in the write pass below
    _check_count(index, expected_count)
    dim = None
    final = out_dir / "embeddings.h5"
    tmp = out_dir / "embeddings.h5.tmp"
    with h5py.File(tmp, "w") as h5:
        ids_ds = embeddings_ds = None
        for number, path in enumerate(index.paths):
            keys, ids, vectors = read_shard(path)
            try:  # assembly reads every vector anyway: check them against the shard's checksum
                check_checksum(path, keys, ids, vectors)
            except ValueError as err:
                set_aside(path)
                log.warning("checkpoint %s is unreadable (%s): set aside", path.name, err)
                raise UserError(
                    f"checkpoint {path} was altered after it was written (set aside as .corrupt)",
                    "rerun with --resume: its sequences are recomputed",
                ) from None
            rows = np.flatnonzero(index.shard == number)  # where this shard's kept keys go, ascending
            mine = index.row[rows]
            _check_frames(path, index.keys[rows], ids[mine], frame_names)
            if embeddings_ds is None:
                dim = vectors.shape[1]
                embeddings_ds = h5.create_dataset("embeddings", (expected_count, dim), dtype="float32")
                ids_ds = h5.create_dataset("ids", (expected_count,), dtype=h5py.string_dtype("utf-8"))
                h5.create_dataset("keys", data=index.keys)
            embeddings_ds[rows] = vectors[mine].astype(np.float32)
            ids_ds[rows] = ids[mine].astype(object)
        if embeddings_ds is None:
            h5.create_dataset("embeddings", (0, 0), dtype="float32")
            h5.create_dataset("ids", (0,), dtype=h5py.string_dtype("utf-8"))
            h5.create_dataset("keys", data=index.keys)
        id_values = h5["ids"][:]
        if len(set(id_values)) != len(id_values):
            raise CheckFailed("uniqueness check failed: two rows carry the same id")
        for k, v in attrs.items():
            h5.attrs[k] = v
        h5.attrs["count"] = expected_count
        h5.attrs["complete"] = True
    os.replace(tmp, final)
    return {
        "path": str(final),
        "count": expected_count,
        "dim": dim,
        "duplicates_dropped": int(index.duplicates),
        "shards": len(index.paths),
    }


def _check_count(index: "ShardIndex", expected_count: int) -> None:
    if len(index.keys) != expected_count:
        raise CheckFailed(
            f"count check failed: {expected_count} frames translated, {len(index.keys)} embedded"
        )


def _check_frames(path: Path, keys: np.ndarray, ids: np.ndarray, frame_names: tuple[str, ...]) -> None:
    """Each id's frame suffix must be its key's frame (key = read index x 6 + frame index)."""
    frames = np.array(frame_names)[keys % len(frame_names)]
    if not np.all(np.char.endswith(ids.astype(str), np.char.add("_", frames))):
        raise CheckFailed(
            f"alignment check failed in {path.name}: an id's frame differs from its key's frame"
        )


def open_complete(path: str | Path) -> tuple[h5py.File, list[str]]:
    """An open *complete* embeddings.h5 and its ids (refuses an incomplete one); vectors stay on disk."""
    h5 = h5py.File(path, "r")
    try:
        if not h5.attrs.get("complete", False):
            raise UserError(f"{path} is not marked complete", "rerun the embed command with --resume")
        return h5, [i.decode() if isinstance(i, bytes) else i for i in h5["ids"][:]]
    except BaseException:
        h5.close()
        raise


def read_embeddings(path: str | Path) -> tuple[list[str], np.ndarray]:
    """ids and vectors of a *complete* embeddings.h5 (refuses an incomplete one)."""
    h5, ids = open_complete(path)
    with h5:
        return ids, h5["embeddings"][:]


# ---------------------------------------------------------------------------- shards as the output


class ShardIndex:
    """Where each key in [lo, hi) lives among a folder's shards, without reading any vector.

    Only shards whose key range (in their name) meets [lo, hi) are opened, and only their keys are
    read: with a contiguous plan a rank opens its own shards alone, and after a resume with another
    number of ranks (a shard of any rank may then hold any keys) every shard that can hold one of its
    keys. A key found in two shards (a resume after a config change) counts once: the first shard in
    name order wins, as in `assemble`. Vectors are read on demand; at most `cache` shards stay open
    (the page cache, not the process, holds their bytes)."""

    def __init__(self, out_dir: str | Path, lo: int = 0, hi: int | None = None, *, cache: int = 16):
        hi = np.iinfo(np.int64).max if hi is None else hi
        self.paths: list[Path] = []
        parts, rows = [], []
        for path in sorted((Path(out_dir) / "checkpoints").glob(SHARD_GLOB)):
            span = key_span(path)
            if span is not None and (span[1] < lo or span[0] >= hi):
                continue
            keys = _open_for_reading(path).keys
            if span is not None and len(keys) and (keys.min() < span[0] or keys.max() > span[1]):
                raise RuntimeError(f"{path.name} holds keys outside the range in its name")
            mine = np.flatnonzero((keys >= lo) & (keys < hi))
            if len(mine):
                self.paths.append(path)
                parts.append(keys[mine].astype(np.int64))
                rows.append(mine)
        all_keys = np.concatenate(parts) if parts else np.empty(0, np.int64)
        shard = np.repeat(np.arange(len(parts), dtype=np.int64), [len(k) for k in parts])
        row = np.concatenate(rows) if rows else np.empty(0, np.int64)
        order = np.argsort(all_keys, kind="stable")  # stable: a duplicate's first shard comes first
        ordered = all_keys[order]
        first = np.ones(len(ordered), dtype=bool)
        first[1:] = ordered[1:] != ordered[:-1]
        self.keys, self.shard, self.row = ordered[first], shard[order[first]], row[order[first]]
        self.duplicates = len(all_keys) - len(self.keys)
        self.cache = max(int(cache), 1)
        self._open: OrderedDict[int, Shard] = OrderedDict()
        self._stride = int(self.row.max()) + 1 if len(self.row) else 1  # (shard, row) as one sortable number
        self._plan = None  # the last chunk's segments: fill and ids_at of one chunk sort once

    def between(self, lo: int, hi: int) -> slice:
        """Positions (in self.keys) of the keys in [lo, hi)."""
        return slice(int(np.searchsorted(self.keys, lo)), int(np.searchsorted(self.keys, hi)))

    def read_chunks(self, rows: int, frames_per_read: int) -> list[tuple[int, int]]:
        """[start, stop) positions of about `rows` keys each, cut between reads (key // frames_per_read) only."""
        reads = self.keys // frames_per_read
        chunks, start = [], 0
        while start < len(reads):
            stop = min(start + max(rows, 1), len(reads))
            if stop < len(reads):
                # the first frame of the read at `stop`
                cut = int(np.searchsorted(reads, reads[stop], "left"))
                stop = cut if cut > start else int(np.searchsorted(reads, reads[stop], "right"))
            chunks.append((start, stop))
            start = stop
        return chunks

    def opened(self, number: int) -> Shard:
        """Shard `number` of self.paths, kept open among the `cache` most recently used."""
        shard = self._open.get(number)
        if shard is None:
            shard = self._open[number] = _open_for_reading(self.paths[number])
            if len(self._open) > self.cache:
                self._open.popitem(last=False)  # arrays taken from it stay valid: they hold the map
        else:
            self._open.move_to_end(number)
        return shard

    def take(self, keys: np.ndarray, field: int = 2) -> np.ndarray:
        """Vectors (field 2) or ids (field 1, as objects) of `keys` (all present), in that order."""
        at = np.searchsorted(self.keys, keys)
        if len(keys) and (at.max() >= len(self.keys) or not np.array_equal(self.keys[at], keys)):
            raise CheckFailed("alignment check failed: a key is missing from the checkpoint shards")
        out = None
        for number in np.unique(self.shard[at]):
            pick = np.flatnonzero(self.shard[at] == number)
            values = self.opened(int(number)).embeddings if field == 2 else self.opened(int(number)).ids
            if out is None:
                # shards' id widths differ: never truncate
                out = (
                    np.empty((len(keys), values.shape[1]), dtype=np.float32)
                    if field == 2
                    else np.empty(len(keys), dtype=object)
                )
            out[pick] = values[self.row[at[pick]]]
        if out is None:
            return np.empty((0, 0), dtype=np.float32) if field == 2 else np.empty(0, dtype=object)
        return out

    def vectors(self, keys: np.ndarray) -> np.ndarray:
        return self.take(keys, 2)

    def _segments(self, start: int, stop: int):
        """The keys at positions [start, stop) grouped by shard, rows ascending: (where, [(shard, rows, a, b)]),
        the group of shard s filling rows a:b of a block and where[i] the block row of key start + i."""
        if self._plan is not None and self._plan[0] == (start, stop):
            return self._plan[1]
        shard, row = self.shard[start:stop], self.row[start:stop]
        order = np.argsort(shard * self._stride + row)  # unique numbers: any sort gives the same order
        where = np.empty(len(order), dtype=np.int64)
        where[order] = np.arange(len(order))
        shard, row = shard[order], row[order]
        cuts = np.concatenate(([0], np.flatnonzero(shard[1:] != shard[:-1]) + 1, [len(order)]))
        plan = (
            where,
            [(int(shard[a]), row[a:b], int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:]) if b > a],
        )
        self._plan = ((start, stop), plan)
        return plan

    def fill(self, start: int, stop: int, out: np.ndarray, *, pool=None) -> np.ndarray:
        """Vectors of the keys at positions [start, stop) into out[:stop - start], each shard's in one
        sequential pass over its rows (no scatter, no temporary); returns `where`: the vector of key
        self.keys[start + i] is out[where[i]]. `pool` (an Executor) copies several shards at once."""
        where, segments = self._segments(start, stop)
        jobs = []
        for number, rows, a, b in segments:
            shard = self.opened(number)
            if shard.embeddings.shape[1] != out.shape[1]:
                raise RuntimeError(
                    f"{shard.path.name} holds vectors of width {shard.embeddings.shape[1]}, "
                    f"expected {out.shape[1]}"
                )
            if b - a > len(shard) // 4:
                shard.prefetch()
            for lo in range(a, b, COPY_ROWS):  # pieces: every thread of the pool gets work
                hi = min(lo + COPY_ROWS, b)
                jobs.append((shard, rows[lo - a : hi - a], out[lo:hi]))
        if pool is None or len(jobs) < 2:
            for shard, rows, part in jobs:
                shard.read_rows(rows, part)
        else:
            list(pool.map(lambda job: job[0].read_rows(job[1], job[2]), jobs))
        return where

    def ids_at(self, start: int, stop: int) -> np.ndarray:
        """ids of the keys at positions [start, stop), in key order, as text of the widest id among their
        shards (never truncated)."""
        where, segments = self._segments(start, stop)
        sources = [(self.opened(number).ids, rows, a, b) for number, rows, a, b in segments]
        out = np.empty(
            stop - start, dtype=np.result_type(*(s[0].dtype for s in sources)) if sources else "U1"
        )
        for ids, rows, a, b in sources:
            out[a:b] = ids[rows]
        return out[where]


def _open_for_reading(path: Path) -> Shard:
    """open_shard for a stage's output: a damaged shard is the user's to recompute (a resume sets it aside)."""
    try:
        return open_shard(path)
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise UserError(
            f"checkpoint {path} is unreadable ({err})",
            f"rerun that stage into {path.parent.parent} with --resume: unreadable shards are set "
            "aside and their sequences recomputed",
        ) from err


def check_shards(
    out_dir: str | Path, *, expected_count: int, frame_names: tuple[str, ...]
) -> tuple[dict, ShardIndex]:
    """The shards as a run's output (no embeddings.h5): the same count and id <-> key checks as `assemble`."""
    index = ShardIndex(out_dir)
    _check_count(index, expected_count)
    for number, path in enumerate(index.paths):
        ids = open_shard(path).ids  # the keys are in the index already
        rows = np.flatnonzero(index.shard == number)
        _check_frames(path, index.keys[rows], ids[index.row[rows]], frame_names)
    return {
        "count": expected_count,
        "assembled": False,
        "checkpoints": str(Path(out_dir) / "checkpoints"),
        "duplicates_dropped": int(index.duplicates),
        "shards": len(index.paths),
    }, index


def read_shards(out_dir: str | Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """keys, ids and vectors of every key in a folder's shards, in key order (small runs and tests)."""
    index = ShardIndex(out_dir)
    return index.keys, [str(i) for i in index.take(index.keys, 1)], index.take(index.keys, 2)
