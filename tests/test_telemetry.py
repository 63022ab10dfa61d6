import json

import numpy as np
import pandas as pd

from perfkit.telemetry import BATCH_FIELDS, SCHEMA, Telemetry, jsonable


class ManualSpan:
    """A span whose device work finishes when the test says so (tests the deferral, measures nothing)."""

    def __init__(self, seconds):
        self._seconds, self.done = seconds, False

    @property
    def seconds(self):
        return self._seconds if self.done else None

    def wait(self):
        self.done = True
        return self._seconds


def _batch(tel, span, n):
    tel.batch(
        stage="embed",
        t_arrive_s=float(n),
        loader_wait_s=0.01,
        host_s=0.002,
        span=span,
        sequences=10,
        real_tokens=900,
        slot_tokens=1000,
        budget_tokens=1024,
        queue_depth=n,
    )


def test_records_wait_for_their_device_time_then_land_in_jsonl(tmp_path):
    path = tmp_path / "telemetry.jsonl"
    tel = Telemetry(path, run_id="r1", rank=1)
    first, second = ManualSpan(0.5), ManualSpan(0.25)
    _batch(tel, first, 0)
    _batch(tel, second, 1)
    assert len(tel._pending) == 2  # neither resolved: nothing written, nothing synced
    first.done = True
    _batch(tel, None, 2)  # resolution happens on the next record, in order
    assert len(tel._pending) == 2
    with tel.stage("embed"):
        pass
    tel.checkpoint(sequences_done=30, write_s=0.1, nbytes=123, path="x")
    tel.close()
    df = pd.read_json(path, lines=True)
    b = df[df.kind == "batch"].sort_values("batch")
    assert set(BATCH_FIELDS) <= set(df.columns)
    assert (b["schema"] == SCHEMA).all() and (b["rank"] == 1).all()
    assert b["device_s"].tolist()[:2] == [0.5, 0.25]
    assert b["packing_efficiency"].tolist() == [900 / 1024] * 3
    assert b["padding_waste"].tolist() == [0.1] * 3
    assert set(df.kind) == {"batch", "stage", "checkpoint"}


def test_jsonable_converts_numpy_and_nan():
    out = jsonable({"a": np.float32(1.5), "b": np.arange(3), "c": float("nan"), "d": (np.int64(2),)})
    assert json.dumps(out) == '{"a": 1.5, "b": [0, 1, 2], "c": null, "d": [2]}'


def test_device_start_lands_on_the_arrival_clock(tmp_path):
    """The span's start (the host clock on CPU) is written relative to the clock t_arrive_s counts from."""
    import time

    from perfkit.busy import DeviceBusyTimer

    path = tmp_path / "telemetry.jsonl"
    tel, timer = Telemetry(path), DeviceBusyTimer("cpu")
    loop_t0 = time.perf_counter() - 5.0  # the loop began 5 s ago
    with timer.measure() as span:
        began = time.perf_counter() - loop_t0
    tel.batch(
        stage="embed",
        t_arrive_s=4.9,
        loader_wait_s=0.0,
        host_s=0.1,
        span=span,
        sequences=1,
        real_tokens=10,
        slot_tokens=10,
        budget_tokens=16,
        clock_start=loop_t0,
    )
    _batch(tel, None, 1)  # no span: no device start
    tel.close()
    b = pd.read_json(path, lines=True).sort_values("batch")
    assert abs(b["device_start_s"].iloc[0] - began) < 0.01 and b["device_start_s"].iloc[0] > 4.9
    assert pd.isna(b["device_start_s"].iloc[1])
