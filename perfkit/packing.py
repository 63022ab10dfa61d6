"""Token-budget packing over a streaming buffer.

Algorithm: *two-ended greedy over a length-sorted buffer* (a first-fit-decreasing
variant). Sequences accumulate in a buffer; once it holds `buffer_size` of them it
is sorted by length, longest first, and each batch is filled from the longest
remaining sequences until the next one would not fit, then topped up with the
shortest remaining ones. Why this one:
- the gap left in every batch is smaller than the shortest sequence still waiting
  (~10 tokens for viral reads), so efficiency at a 16,384 budget is > 99.9 %;
- each batch costs a couple of `searchsorted` calls on a prefix sum, so planning
  runs at millions of sequences per second on one core (no per-sequence Python);
- the last, not-yet-full batch of a buffer is *carried over* into the next buffer
  instead of being flushed, so no under-filled batch appears mid-stream (the
  original system emitted a ~74-sequence batch at every buffer flush). Only the
  end of the stream emits a partial batch.

Packing efficiency = sum of real tokens / (batches x budget); padding waste (slots
holding padding / all slots) is reported separately. Both exist per batch.

The same API yields padded batches (for baselines): length-sorted, a batch closes
when (sequences x longest length) would exceed the budget, like fair-esm's
`get_batch_indices`.

Nothing is ever dropped: every key put in comes out exactly once. A sequence
longer than the budget raises a UserError or is truncated to the budget
(`on_oversize`), counted in `truncated`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Literal

import numpy as np

from perfkit.errors import UserError

Layout = Literal["packed", "padded"]


@dataclass
class Batch:
    """One batch: which sequences, their lengths and (optionally) their tokens.

    Packed layout: `tokens` is flat [sum(lengths)], `cu_seqlens` [B+1] int32.
    Padded layout: `tokens` is [B, max_len] filled with `pad_id` after each sequence.
    """

    keys: np.ndarray  # int64 [B], the caller's sequence ids
    lengths: np.ndarray  # int32 [B], tokens per sequence
    budget: int
    layout: Layout
    tokens: np.ndarray | None = None
    cu_seqlens: np.ndarray | None = None

    @property
    def num_sequences(self) -> int:
        return int(self.keys.shape[0])

    @property
    def real_tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def max_len(self) -> int:
        return int(self.lengths.max()) if self.lengths.size else 0

    @property
    def slot_tokens(self) -> int:
        """Token slots the device computes on: real tokens when packed, B x max_len when padded."""
        if self.layout == "packed":
            return self.real_tokens
        return self.num_sequences * self.max_len

    @property
    def packing_efficiency(self) -> float:
        """Real tokens / budget."""
        return self.real_tokens / self.budget

    @property
    def padding_waste(self) -> float:
        """Padding slots / all slots (0 for packed batches)."""
        slots = self.slot_tokens
        return (slots - self.real_tokens) / slots if slots else 0.0


def plan_packed(lengths: np.ndarray, budget: int, *, final: bool) -> tuple[list[np.ndarray], np.ndarray]:
    """Split positions 0..n-1 of `lengths` into batches of total length <= budget.

    Returns (batches, carried): each batch an array of positions; `carried` holds the
    positions of the last, unfinished batch when `final` is False (else it is empty).
    """
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order].astype(np.int64)
    prefix = np.concatenate(([0], np.cumsum(sorted_lengths)))
    batches: list[np.ndarray] = []
    lo, hi = 0, len(order)  # waiting: order[lo:hi], longest first
    while lo < hi:
        # longest first: the most sequences from lo that fit
        big_end = int(np.searchsorted(prefix, prefix[lo] + budget, side="right")) - 1
        big_end = min(big_end, hi)
        room = budget - int(prefix[big_end] - prefix[lo])
        # then the shortest: the most sequences from hi downwards that fit in the room
        small_start = int(np.searchsorted(prefix, prefix[hi] - room, side="left"))
        small_start = max(small_start, big_end)
        members = np.concatenate((order[lo:big_end], order[small_start:hi]))
        lo, hi = big_end, small_start
        if lo >= hi and not final and room >= _smallest_possible_gap(sorted_lengths):
            # this is the buffer's last batch and it is not full: carry it over
            return batches, members
        batches.append(members)
    return batches, np.empty(0, dtype=np.int64)


def _smallest_possible_gap(sorted_lengths: np.ndarray) -> int:
    # A batch counts as full when no waiting sequence could still fit in its gap.
    return int(sorted_lengths[-1]) if sorted_lengths.size else 1


def plan_padded(lengths: np.ndarray, budget: int, *, final: bool) -> tuple[list[np.ndarray], np.ndarray]:
    """Length-sorted padded batches: sequences x longest length <= budget."""
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    batches: list[np.ndarray] = []
    lo, n = 0, len(order)
    while lo < n:
        count = max(1, budget // int(sorted_lengths[lo]))
        members = order[lo : lo + count]
        lo += count
        if lo >= n and not final and members.size < count:
            return batches, members
        batches.append(members)
    return batches, np.empty(0, dtype=np.int64)


@dataclass
class TokenBudgetPacker:
    """Streaming packer. Feed arrays with `add`, take batches from `ready()`, end with `flush()`.

    `add(keys, lengths, tokens=None)`: `tokens` is the flat concatenation of the
    sequences' tokens (optional; without it batches carry keys and lengths only).
    """

    budget: int
    buffer_size: int = 4096
    layout: Layout = "packed"
    on_oversize: Literal["error", "truncate"] = "error"
    pad_id: int = 0
    truncated: int = field(default=0, init=False)

    def __post_init__(self):
        if self.budget < 1:
            raise UserError(f"token budget must be >= 1, got {self.budget}", "set a positive token budget")
        if self.buffer_size < 1:
            raise UserError(
                f"packing buffer size must be >= 1, got {self.buffer_size}", "set a positive buffer size"
            )
        if self.layout not in ("packed", "padded"):
            raise UserError(f"unknown packing layout {self.layout!r}", "use 'packed' or 'padded'")
        if self.on_oversize not in ("error", "truncate"):
            raise UserError(f"unknown on_oversize {self.on_oversize!r}", "use 'error' or 'truncate'")
        self._keys: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []
        self._tokens: list[np.ndarray] = []
        self._waiting = 0
        self._with_tokens: bool | None = None

    # -- input ---------------------------------------------------------------
    def add(self, keys, lengths, tokens=None) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int32)
        if keys.shape != lengths.shape:
            raise ValueError("keys and lengths must have the same shape")
        with_tokens = tokens is not None
        if self._with_tokens is None:
            self._with_tokens = with_tokens
        elif self._with_tokens != with_tokens:
            raise ValueError("either always or never pass tokens to add()")
        if with_tokens:
            tokens = np.asarray(tokens)
            if tokens.shape[0] != int(lengths.sum()):
                raise ValueError("tokens must be the concatenation of the sequences (sum of lengths)")
        if keys.size and int(lengths.min()) < 1:
            raise ValueError("every sequence needs at least one token")
        too_long = lengths > self.budget
        if too_long.any():
            keys, lengths, tokens = self._handle_oversize(keys, lengths, tokens, too_long)
        self._keys.append(keys)
        self._lengths.append(lengths)
        if with_tokens:
            self._tokens.append(tokens)
        self._waiting += keys.size

    def _handle_oversize(self, keys, lengths, tokens, too_long):
        first = int(np.flatnonzero(too_long)[0])
        if self.on_oversize == "error":
            raise UserError(
                f"sequence {int(keys[first])} has {int(lengths[first])} tokens, more than the token budget "
                f"{self.budget}",
                "raise the token budget, or build the packer with on_oversize='truncate'",
            )
        self.truncated += int(too_long.sum())
        if tokens is not None:
            starts = np.concatenate(([0], np.cumsum(lengths[:-1], dtype=np.int64)))
            kept = np.minimum(lengths, self.budget)
            tokens = tokens[_ranges(starts, kept)]
        return keys, np.minimum(lengths, self.budget).astype(np.int32), tokens

    # -- output --------------------------------------------------------------
    def ready(self) -> Iterator[Batch]:
        """Batches that are full; the unfinished remainder stays buffered."""
        if self._waiting >= self.buffer_size:
            yield from self._drain(final=False)

    def flush(self) -> Iterator[Batch]:
        """Everything still buffered, the last batch possibly partial."""
        if self._waiting:
            yield from self._drain(final=True)

    def pack(self, chunks: Iterable[tuple]) -> Iterator[Batch]:
        """Convenience: iterate over (keys, lengths[, tokens]) chunks and yield every batch."""
        for chunk in chunks:
            self.add(*chunk)
            yield from self.ready()
        yield from self.flush()

    def _drain(self, final: bool) -> Iterator[Batch]:
        keys = np.concatenate(self._keys)
        lengths = np.concatenate(self._lengths)
        tokens = np.concatenate(self._tokens) if self._with_tokens else None
        starts = (
            np.concatenate(([0], np.cumsum(lengths[:-1], dtype=np.int64))) if tokens is not None else None
        )
        planner = plan_packed if self.layout == "packed" else plan_padded
        batches, carried = planner(lengths, self.budget, final=final)
        self._keys, self._lengths, self._tokens, self._waiting = [], [], [], 0
        if carried.size:
            carried = np.sort(carried)  # keep arrival order among carried sequences
            self._keys = [keys[carried]]
            self._lengths = [lengths[carried]]
            if tokens is not None:
                self._tokens = [tokens[_ranges(starts[carried], lengths[carried])]]
            self._waiting = carried.size
        for members in batches:
            yield self._build(
                keys[members], lengths[members], tokens, None if starts is None else starts[members]
            )

    def _build(self, keys, lengths, tokens, starts) -> Batch:
        batch = Batch(keys=keys, lengths=lengths, budget=self.budget, layout=self.layout)
        if tokens is None:
            return batch
        flat = tokens[_ranges(starts, lengths)]
        if self.layout == "packed":
            batch.tokens = flat
            batch.cu_seqlens = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
        else:
            padded = np.full((keys.size, int(lengths.max())), self.pad_id, dtype=tokens.dtype)
            padded[np.arange(padded.shape[1])[None, :] < lengths[:, None]] = flat
            batch.tokens = padded
        return batch


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges [s, s+l) for each (s, l), vectorised."""
    lengths = lengths.astype(np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    offsets = np.repeat(starts.astype(np.int64) - np.concatenate(([0], np.cumsum(lengths[:-1]))), lengths)
    return np.arange(total, dtype=np.int64) + offsets


def efficiency(batches: Iterable[Batch]) -> dict:
    """Run-level packing figures: efficiency = sum real / (batches x budget)."""
    n = real = slots = budget_total = 0
    for b in batches:
        n += 1
        real += b.real_tokens
        slots += b.slot_tokens
        budget_total += b.budget
    return {
        "batches": n,
        "real_tokens": real,
        "packing_efficiency": real / budget_total if budget_total else float("nan"),
        "padding_waste": (slots - real) / slots if slots else 0.0,
    }
