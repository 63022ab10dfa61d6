"""Typed results passed between the kit's layers: a run's throughput, its summary, a scaling pair, and
"not measured" as a type of its own.

JSON files (summary.json, metrics.json) keep their keys: each type writes itself with `to_json()` and reads
itself back with `from_json()`, which tolerates keys that older files lack (they read as None).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping


@dataclass(frozen=True)
class NotMeasured:
    """A figure that is not a real measurement here, and why. In JSON: {"value": null, "measured": false,
    "reason": ...}; a criterion reading it is NOT MEASURED, never PASS."""

    reason: str

    def to_json(self) -> dict:
        return {"value": None, "measured": False, "reason": self.reason}

    @classmethod
    def found(cls, value: Any) -> NotMeasured | None:
        """The marker in `value` (typed, or its JSON form), else None."""
        if isinstance(value, NotMeasured):
            return value
        if isinstance(value, Mapping) and value.get("measured") is False:
            return cls(str(value.get("reason") or ""))
        return None


def number_or_none(value: Any) -> float | None:
    """A measured number as float; None for a marker, None, a bool or anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class _Json:
    """to_json / from_json over a dataclass's fields, in field order."""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping | None):
        data = data or {}
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class RankThroughput(_Json):
    """One rank's loop. Overall rates use the loop's wall time; steady rates count from the first batch after
    `warmup_batches` to the loop's end (`steady_wall_s`). MFU: steady tok/s x FLOPs per token / peak_flops
    (the matmul peak measured on this rank's GPU); mfu_spec against the GPU's data-sheet peak."""

    batches: int
    sequences: int
    real_tokens: int
    wall_s: float
    seq_per_s: float | None
    tok_per_s: float | None
    warmup_batches: int | None
    steady_wall_s: float | None
    steady_seq_per_s: float | None
    steady_tok_per_s: float | None
    device_busy_fraction: float | None
    loader_wait_fraction: float | None
    packing_efficiency: float | None
    padding_waste: float | None
    loader_wait_s: dict | None
    device_s: dict | None
    mfu: float | None
    peak_flops: float | None = None
    mfu_spec: float | None = None


@dataclass(frozen=True)
class Throughput(_Json):
    """The run's figures over its ranks: counts and rates summed (never averaged), busy / wait / MFU averaged,
    wall time the slowest rank's; rank_imbalance = slowest rank's wall / mean wall."""

    ranks: int
    sequences: int
    real_tokens: int
    batches: int
    wall_s: float
    seq_per_s: float | None
    tok_per_s: float | None
    steady_seq_per_s: float | None
    steady_tok_per_s: float | None
    device_busy_fraction: float | None
    loader_wait_fraction: float | None
    mfu: float | None
    mfu_spec: float | None
    rank_imbalance: float | None
    packing_efficiency: float | None
    padding_waste: float | None


@dataclass(frozen=True)
class RunSummary:
    """The typed view of a run's summary.json (schema perfkit.summary/1): what readers use by name.
    Everything else stays in `data`, the file as read."""

    stage: str | None
    throughput: Throughput
    per_rank: dict[int, RankThroughput]
    gpu: dict
    config: dict
    data: dict = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping) -> RunSummary:
        data = dict(data)
        return cls(
            stage=data.get("stage"),
            throughput=Throughput.from_json(data.get("throughput")),
            per_rank={int(r): RankThroughput.from_json(v) for r, v in (data.get("per_rank") or {}).items()},
            gpu=data.get("gpu") or {},
            config=data.get("config") or {},
            data=data,
        )

    @classmethod
    def load(cls, path: str | Path) -> RunSummary:
        return cls.from_json(json.loads(Path(path).read_text()))

    @property
    def distributed(self) -> dict:
        return self.data.get("distributed") or {}

    def rank_gpu(self, rank: int | str) -> dict:
        """The GPU sampler's entry for one rank (multi-rank summaries key it by rank as text)."""
        return self.gpu.get(str(rank)) or self.gpu.get(rank) or {}


def as_summary(summary: RunSummary | Mapping) -> RunSummary:
    return summary if isinstance(summary, RunSummary) else RunSummary.from_json(summary)


@dataclass(frozen=True)
class RankScaling(_Json):
    steady_tok_per_s: float | None
    tok_per_s: float | None
    wall_s: float | None
    physical_gpu: int | None
    gpu_utilization_mean: float | NotMeasured

    def to_json(self) -> dict:
        out = asdict(self)
        if isinstance(self.gpu_utilization_mean, NotMeasured):
            out["gpu_utilization_mean"] = self.gpu_utilization_mean.to_json()
        return out


@dataclass(frozen=True)
class Scaling:
    """The same work on one process and on `ranks`: factor = summed steady tok/s of the ranks / steady tok/s
    of one process; efficiency = factor / ranks; wall_factor = one process's wall / the N-rank run's
    (slowest rank), only when both embedded the same sequences; imbalance = slowest rank's wall / mean."""

    ranks: int
    factor: float | None
    wall_factor: float | NotMeasured | None
    efficiency: float | None
    imbalance: float | None
    planned_token_imbalance: float | None
    single_steady_tok_per_s: float | None
    multi_steady_tok_per_s: float | None
    per_rank: dict[str, RankScaling]

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if isinstance(self.wall_factor, NotMeasured):
            out["wall_factor"] = self.wall_factor.to_json()
        out["per_rank"] = {rank: figures.to_json() for rank, figures in self.per_rank.items()}
        return out
