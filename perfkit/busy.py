"""Device-busy timer: how long the device spent on each batch, without syncing the hot path.

On CUDA a span is a pair of timing events recorded on the compute stream; it is
resolved later with `Event.query()` (non-blocking), never with a sync per batch.
On CPU the same API measures host compute time with `time.perf_counter`.

Caveat: the span is "from the stream reaching the start marker to it reaching the
end marker". A host too slow to enqueue kernels *inside* a batch shows up as busy
time; gaps *between* batches (loader, Python, syncs) show up as idle. Use the
profiler capture to see inside a batch.

Each span also says when the device began it, on the host's clock (`start_host`): the
timer syncs once, at its first span, and times later starts against that anchor. A host
that runs ahead of the device launches a batch long before the device starts it.
"""

from __future__ import annotations

import time
from collections import deque

import torch


class Span:
    """One batch's device work. `seconds` is None until the device has finished it."""

    __slots__ = ("_start", "_end", "_seconds", "_anchor")

    def __init__(self, start, end=None, seconds=None, anchor=None):
        self._start, self._end, self._seconds = start, end, seconds
        self._anchor = anchor  # (event, perf_counter seconds) recorded with the device idle

    @property
    def start_host(self) -> float | None:
        """perf_counter seconds at which the device began this span; None until it has finished it."""
        if self._anchor is None:  # host clock: the start is the host's own
            return self._start if self._seconds is not None else None
        if self.seconds is None:
            return None
        event, host = self._anchor
        return host + event.elapsed_time(self._start) / 1e3

    @property
    def seconds(self) -> float | None:
        if self._seconds is None and self._end is not None and self._end.query():
            self._seconds = self._start.elapsed_time(self._end) / 1e3
        return self._seconds

    def wait(self) -> float:
        if self._seconds is None and self._end is not None:
            self._end.synchronize()
        return self.seconds


class DeviceBusyTimer:
    """`span = timer.start(); ...device work...; timer.stop(span)`, or `with timer.measure() as span:`."""

    def __init__(self, device: torch.device | str = "cpu", stream=None):
        self.device = torch.device(device)
        self.uses_cuda_events = self.device.type == "cuda"
        self.source = "cuda-events" if self.uses_cuda_events else "host-clock"
        self._stream = stream
        self._open: deque = deque()
        self._anchor = None

    def start(self) -> Span:
        if not self.uses_cuda_events:
            return Span(time.perf_counter())
        stream = self._stream or torch.cuda.current_stream(self.device)
        if self._anchor is None:  # once: an event the idle device reaches at a known host time
            torch.cuda.synchronize(self.device)
            anchor = torch.cuda.Event(enable_timing=True)
            anchor.record(stream)
            anchor.synchronize()
            self._anchor = (anchor, time.perf_counter())
        begin = torch.cuda.Event(enable_timing=True)
        begin.record(stream)
        return Span(begin, anchor=self._anchor)

    def stop(self, span: Span) -> Span:
        if not self.uses_cuda_events:
            span._seconds = time.perf_counter() - span._start
            return span
        end = torch.cuda.Event(enable_timing=True)
        end.record(self._stream or torch.cuda.current_stream(self.device))
        span._end = end
        return span

    def measure(self):
        return _Measure(self)


class _Measure:
    def __init__(self, timer: DeviceBusyTimer):
        self.timer = timer

    def __enter__(self) -> Span:
        self.span = self.timer.start()
        return self.span

    def __exit__(self, *exc):
        self.timer.stop(self.span)
        return False
