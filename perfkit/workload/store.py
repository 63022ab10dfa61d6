"""Embeddings on disk: checkpoint shards while running, one `embeddings.h5` at the end.

Every shard holds keys, ids and vectors *together* (keys: read index x 6 + frame
index), so a resumed run can never pair an id with another sequence's vector: the
original system rebuilt its id list from an unordered set and misaligned them.
Shards are written by a background thread, temp file then rename; their write time
goes to telemetry so the checkpoint overhead is measured. A shard that cannot be read
back (a kill mid-write leaves only a temp file; a corrupt file fails its zip CRC) is
set aside and its sequences are recomputed.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path

import h5py
import numpy as np

from perfkit.errors import UserError

log = logging.getLogger(__name__)

SHARD_GLOB = "shard-*.npz"


class CheckpointStore:
    def __init__(self, out_dir: str | Path, *, rank: int = 0, every_sequences: int = 10_000,
                 every_seconds: float = 300.0, telemetry=None):
        self.dir = Path(out_dir) / "checkpoints"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create {self.dir}: {err.strerror}", "choose a writable output folder") from err
        self.rank = rank
        self.every_sequences = every_sequences
        self.every_seconds = every_seconds
        self.telemetry = telemetry
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_count = 0
        self._last_write = time.monotonic()
        self._next_index = 1 + max((_shard_index(p) for p in self.dir.glob(f"shard-r{rank:03d}-*.npz")), default=-1)
        self.sequences_done = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._writer, name="perfkit-checkpoint", daemon=True)
        self._thread.start()

    def add(self, keys: np.ndarray, ids: list[str], embeddings: np.ndarray) -> None:
        self._pending.append((keys, np.asarray(ids), embeddings))
        self._pending_count += len(keys)
        self.sequences_done += len(keys)
        due = self._pending_count >= self.every_sequences or time.monotonic() - self._last_write >= self.every_seconds
        if due:
            self._submit()

    def _submit(self) -> None:
        if self._error:
            raise self._error
        if not self._pending:
            return
        keys = np.concatenate([p[0] for p in self._pending])
        ids = np.concatenate([p[1] for p in self._pending])
        vectors = np.concatenate([p[2] for p in self._pending])
        path = self.dir / f"shard-r{self.rank:03d}-{self._next_index:06d}.npz"
        self._next_index += 1
        self._pending, self._pending_count = [], 0
        self._last_write = time.monotonic()
        self._queue.put((path, keys, ids, vectors, self.sequences_done))

    def _writer(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            path, keys, ids, vectors, done = job
            try:
                start = time.perf_counter()
                tmp = path.with_suffix(".tmp")
                with open(tmp, "wb") as f:
                    np.savez(f, keys=keys, ids=ids, embeddings=vectors)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
                seconds = time.perf_counter() - start
                if self.telemetry is not None:
                    self.telemetry.checkpoint(sequences_done=done, write_s=seconds, nbytes=path.stat().st_size, path=str(path))
            except BaseException as err:  # surfaced on the next add/close
                self._error = err

    def close(self) -> None:
        self._submit()
        self._queue.put(None)
        self._thread.join()
        if self._error:
            raise UserError(f"writing a checkpoint failed: {self._error}", "check free space and permissions of the output folder")


def _shard_index(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[1])


def read_shard(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        keys, ids, vectors = data["keys"], data["ids"], data["embeddings"]
    if not (len(keys) == len(ids) == len(vectors)):
        raise ValueError("keys, ids and embeddings differ in length")
    return keys, ids, vectors


def read_shard_keys(path: Path) -> np.ndarray:
    """Only the keys of a shard (npz members load lazily): no embeddings read."""
    with np.load(path, allow_pickle=False) as data:
        return data["keys"]


def completed_keys(out_dir: str | Path) -> np.ndarray:
    """Sorted keys of every readable shard; unreadable shards are renamed *.corrupt (recomputed)."""
    folder = Path(out_dir) / "checkpoints"
    found = []
    for tmp in folder.glob("*.tmp"):
        tmp.unlink()  # a write that a kill interrupted
    for path in sorted(folder.glob(SHARD_GLOB)):
        try:
            found.append(read_shard(path)[0])  # read whole: a resume must also catch a damaged vector member
        except Exception as err:  # zip CRC error, truncation, bad arrays
            log.warning("checkpoint %s is unreadable (%s): its sequences will be recomputed", path.name, err)
            path.rename(path.with_suffix(".corrupt"))
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
            _, ids, vectors = read_shard(path)
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
            raise RuntimeError("uniqueness check failed: two rows carry the same id")
        for k, v in attrs.items():
            h5.attrs[k] = v
        h5.attrs["count"] = expected_count
        h5.attrs["complete"] = True
    os.replace(tmp, final)
    return {"path": str(final), "count": expected_count, "dim": dim, "duplicates_dropped": int(index.duplicates),
            "shards": len(index.paths)}


def _check_count(index: "ShardIndex", expected_count: int) -> None:
    if len(index.keys) != expected_count:
        raise RuntimeError(f"count check failed: {expected_count} frames translated, {len(index.keys)} embedded")


def _check_frames(path: Path, keys: np.ndarray, ids: np.ndarray, frame_names: tuple[str, ...]) -> None:
    """Each id's frame suffix must be its key's frame (key = read index x 6 + frame index)."""
    frames = np.array(frame_names)[keys % len(frame_names)]
    if not np.all(np.char.endswith(ids.astype(str), np.char.add("_", frames))):
        raise RuntimeError(f"alignment check failed in {path.name}: an id's frame differs from its key's frame")


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
    """Where each key's vector lives among a folder's shards, without reading any vector.

    A key found in two shards (a resume after a config change) counts once: the first shard in
    name order wins, as in `assemble`."""

    def __init__(self, out_dir: str | Path):
        self.paths = sorted((Path(out_dir) / "checkpoints").glob(SHARD_GLOB))
        parts = [read_shard_keys(p) for p in self.paths]
        all_keys = np.concatenate(parts) if parts else np.empty(0, np.int64)
        shard = np.repeat(np.arange(len(parts)), [len(k) for k in parts])
        row = np.concatenate([np.arange(len(k)) for k in parts]) if parts else np.empty(0, np.int64)
        self.keys, first = np.unique(all_keys, return_index=True)
        self.shard, self.row = shard[first], row[first]
        self.duplicates = len(all_keys) - len(self.keys)

    def between(self, lo: int, hi: int) -> slice:
        """Positions (in self.keys) of the keys in [lo, hi)."""
        return slice(int(np.searchsorted(self.keys, lo)), int(np.searchsorted(self.keys, hi)))

    def take(self, keys: np.ndarray, field: int = 2, read=read_shard) -> np.ndarray:
        """Vectors (field 2) or ids (field 1) of `keys` (all present), in that order; `read(path)` ->
        (keys, ids, vectors) of a shard, e.g. a cached read_shard."""
        at = np.searchsorted(self.keys, keys)
        if len(keys) and (at.max() >= len(self.keys) or not np.array_equal(self.keys[at], keys)):
            raise RuntimeError("alignment check failed: a key is missing from the checkpoint shards")
        out = None
        for number in np.unique(self.shard[at]):
            pick = np.flatnonzero(self.shard[at] == number)
            values = read(self.paths[number])[field]
            if out is None:
                out = (np.empty((len(keys), values.shape[1]), dtype=np.float32) if field == 2
                       else np.empty(len(keys), dtype=object))  # shards' id widths differ: never truncate
            out[pick] = values[self.row[at[pick]]]
        if out is None:
            return np.empty((0, 0), dtype=np.float32) if field == 2 else np.empty(0, dtype=object)
        return out

    def vectors(self, keys: np.ndarray) -> np.ndarray:
        return self.take(keys, 2)


def check_shards(out_dir: str | Path, *, expected_count: int, frame_names: tuple[str, ...]) -> tuple[dict, ShardIndex]:
    """The shards as a run's output (no embeddings.h5): the same count and id <-> key checks as `assemble`."""
    index = ShardIndex(out_dir)
    _check_count(index, expected_count)
    for number, path in enumerate(index.paths):
        with np.load(path, allow_pickle=False) as data:
            ids = data["ids"]  # the keys are in the index already
        rows = np.flatnonzero(index.shard == number)
        _check_frames(path, index.keys[rows], ids[index.row[rows]], frame_names)
    return {"count": expected_count, "assembled": False, "checkpoints": str(Path(out_dir) / "checkpoints"),
            "duplicates_dropped": int(index.duplicates), "shards": len(index.paths)}, index


def read_shards(out_dir: str | Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """keys, ids and vectors of every key in a folder's shards, in key order (small runs and tests)."""
    index = ShardIndex(out_dir)
    return index.keys, [str(i) for i in index.take(index.keys, 1)], index.take(index.keys, 2)
