"""Instrumented loader: wraps any iterable or torch DataLoader and times the *consumer*.

What is measured per batch is how long the consumer was blocked inside `next()`
(the original system timed one worker's fetch of one item, which says nothing
about whether the GPU waited). Also the arrival time of each batch and, for a
multi-process torch DataLoader, how many finished batches were already queued.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator


@dataclass
class Arrival:
    index: int
    wait_s: float  # consumer blocked in next()
    t_arrive_s: float  # seconds since the loader's clock start
    queue_depth: int | None  # finished batches waiting after this one was taken


class InstrumentedLoader:
    """`for batch in InstrumentedLoader(loader): ...`; `loader.last` describes the batch just taken."""

    def __init__(self, iterable: Iterable, clock_start: float | None = None):
        self.iterable = iterable
        self.t0 = time.perf_counter() if clock_start is None else clock_start
        self.last: Arrival | None = None
        self.arrivals: list[Arrival] = []

    def __len__(self):
        return len(self.iterable)

    def __iter__(self) -> Iterator:
        iterator = iter(self.iterable)
        index = 0
        while True:
            before = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            after = time.perf_counter()
            self.last = Arrival(index, after - before, after - self.t0, queue_depth(iterator))
            self.arrivals.append(self.last)
            index += 1
            yield item


def queue_depth(iterator) -> int | None:
    """Finished batches waiting in a torch multi-process DataLoader iterator, else None."""
    data_queue = getattr(iterator, "_data_queue", None)
    if data_queue is None:
        return None
    try:
        waiting = data_queue.qsize()
    except (NotImplementedError, AttributeError):
        return None
    # batches that arrived out of order are parked in _task_info as (worker, data)
    task_info = getattr(iterator, "_task_info", {})
    parked = sum(1 for info in task_info.values() if len(info) == 2)
    return int(waiting + parked)
