"""Per-batch telemetry: a versioned record schema and a background JSONL writer.

One line per event; `pandas.read_json(path, lines=True)` reads the file directly.
The hot path only appends to a queue: a thread does the JSON encoding and disk writes.
Device times come from `perfkit.busy` spans and are resolved lazily: a batch record
waits in a small pending queue until its span is done (checked without syncing).

Schema `perfkit.batch/1` (kind = "batch"):
  run_id, rank, stage          which run, which process, which pipeline stage
  batch                        0-based batch index within (run, rank, stage)
  t_arrive_s                   seconds since the measured loop started when the batch reached the consumer
  loader_wait_s                time the consumer was blocked in next() for this batch
  queue_depth                  batches ready in the loader's queue after next() (null if unknown)
  host_s                       host time from arrival until the step returned (launch + Python)
  device_s                     device-busy time of the batch (CUDA events; host clock on CPU)
  device_start_s               when the device began the batch, on t_arrive_s's clock (null when unknown, and in
                               files written before the field existed)
  sequences, real_tokens       work in the batch
  slot_tokens                  token slots computed (real + padding)
  budget_tokens                the batch token budget (packing denominator)
  packing_efficiency           real_tokens / budget_tokens
  padding_waste                (slot_tokens - real_tokens) / slot_tokens
Kind "checkpoint": run_id, rank, t_s, sequences_done, write_s, bytes, path.
Kind "stage": run_id, rank, stage, start_s, end_s, seconds.
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
import time
from collections import deque
from pathlib import Path, PurePath

from perfkit.errors import UserError

SCHEMA = "perfkit.batch/1"

BATCH_FIELDS = (
    "schema",
    "kind",
    "run_id",
    "rank",
    "stage",
    "batch",
    "t_arrive_s",
    "loader_wait_s",
    "queue_depth",
    "host_s",
    "device_s",
    "device_start_s",
    "sequences",
    "real_tokens",
    "slot_tokens",
    "budget_tokens",
    "packing_efficiency",
    "padding_waste",
)


def jsonable(value, strict: bool = False):
    """Plain Python types only: numpy scalars/arrays and tensors converted, NaN/inf -> None, keys -> str.

    Anything else becomes its str() (paths, enums), or a TypeError when `strict`.
    """
    if isinstance(value, dict):
        return {str(jsonable(k, strict)): jsonable(v, strict) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, strict) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    elif hasattr(value, "tolist"):
        return jsonable(value.tolist(), strict)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if strict and not isinstance(value, PurePath):
        raise TypeError(f"cannot record a {type(value).__name__}; convert it to numbers/lists/dicts first")
    return str(value)


class JsonlWriter:
    """Appends dicts as JSON lines from a background thread."""

    def __init__(self, path: str | Path, flush_every_s: float = 1.0):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", encoding="utf-8")
        except OSError as err:
            raise UserError(
                f"cannot write telemetry to {self.path}: {err.strerror}", "choose a writable output folder"
            ) from err
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._flush_every_s = flush_every_s
        self.lines = 0
        self._thread = threading.Thread(target=self._run, name="perfkit-telemetry", daemon=True)
        self._thread.start()

    def write(self, record: dict) -> None:
        self._queue.put(record)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._file.close()

    def _run(self) -> None:
        last_flush = time.monotonic()
        while True:
            record = self._queue.get()
            if record is None:
                break
            self._file.write(json.dumps(jsonable(record), separators=(",", ":")) + "\n")
            self.lines += 1
            if time.monotonic() - last_flush > self._flush_every_s:
                self._file.flush()
                last_flush = time.monotonic()
        self._file.flush()


class Telemetry:
    """The run's recorder: batch records, checkpoints, stages -> `telemetry.jsonl`."""

    def __init__(
        self, path: str | Path, run_id: str = "run", rank: int = 0, clock_start: float | None = None
    ):
        self.run_id, self.rank = run_id, rank
        self.t0 = time.perf_counter() if clock_start is None else clock_start
        self.writer = JsonlWriter(path)
        self._pending: deque = deque()
        self._batch_index: dict[str, int] = {}
        self.stages: dict[str, float] = {}

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def batch(
        self,
        *,
        stage: str,
        t_arrive_s: float,
        loader_wait_s: float,
        host_s: float,
        span=None,
        sequences: int,
        real_tokens: int,
        slot_tokens: int,
        budget_tokens: int,
        queue_depth: int | None = None,
        clock_start: float | None = None,
    ) -> None:
        """`clock_start`: the perf_counter origin of t_arrive_s, to put the span's device start on its clock."""
        index = self._batch_index.get(stage, 0)
        self._batch_index[stage] = index + 1
        record = {
            "schema": SCHEMA,
            "kind": "batch",
            "run_id": self.run_id,
            "rank": self.rank,
            "stage": stage,
            "batch": index,
            "t_arrive_s": t_arrive_s,
            "loader_wait_s": loader_wait_s,
            "queue_depth": queue_depth,
            "host_s": host_s,
            "device_s": None,
            "device_start_s": None,
            "sequences": int(sequences),
            "real_tokens": int(real_tokens),
            "slot_tokens": int(slot_tokens),
            "budget_tokens": int(budget_tokens),
            "packing_efficiency": real_tokens / budget_tokens if budget_tokens else None,
            "padding_waste": (slot_tokens - real_tokens) / slot_tokens if slot_tokens else 0.0,
        }
        self._pending.append((record, span, clock_start))
        self._emit_resolved()

    def _emit_resolved(self, wait: bool = False) -> None:
        while self._pending:
            record, span, clock_start = self._pending[0]
            seconds = None
            if span is not None:
                seconds = span.wait() if wait else span.seconds
                if seconds is None:
                    return  # device still busy with it: try again later, no sync
                started = span.start_host if clock_start is not None else None
                if started is not None:
                    record["device_start_s"] = started - clock_start
            record["device_s"] = seconds
            self.writer.write(record)
            self._pending.popleft()

    def checkpoint(self, *, sequences_done: int, write_s: float, nbytes: int, path: str) -> None:
        self.writer.write(
            {
                "schema": SCHEMA,
                "kind": "checkpoint",
                "run_id": self.run_id,
                "rank": self.rank,
                "t_s": self.now(),
                "sequences_done": sequences_done,
                "write_s": write_s,
                "bytes": nbytes,
                "path": os.fspath(path),
            }
        )

    def stage(self, name: str):
        return _StageTimer(self, name)

    def stage_total(self, name: str, seconds: float, start_s: float, end_s: float) -> None:
        """A stage done in interleaved pieces (e.g. chunk by chunk with another stage): `seconds` is their
        summed time; start_s/end_s bound the pieces and may overlap another stage's (never use end - start)."""
        self.stages[name] = self.stages.get(name, 0.0) + seconds
        self.writer.write(
            {
                "schema": SCHEMA,
                "kind": "stage",
                "run_id": self.run_id,
                "rank": self.rank,
                "stage": name,
                "start_s": start_s,
                "end_s": end_s,
                "seconds": seconds,
            }
        )

    def close(self) -> None:
        self._emit_resolved(wait=True)
        self.writer.close()


class _StageTimer:
    def __init__(self, telemetry: Telemetry, name: str):
        self.telemetry, self.name = telemetry, name

    def __enter__(self):
        self.start = self.telemetry.now()
        return self

    def __exit__(self, *exc):
        end = self.telemetry.now()
        tel = self.telemetry
        tel.stages[self.name] = tel.stages.get(self.name, 0.0) + end - self.start
        tel.writer.write(
            {
                "schema": SCHEMA,
                "kind": "stage",
                "run_id": tel.run_id,
                "rank": tel.rank,
                "stage": self.name,
                "start_s": self.start,
                "end_s": end,
                "seconds": end - self.start,
            }
        )
        return False
