"""GPU sampler: NVML readings of ONE rank's own physical GPU, in a background thread.

Built on nvitop's `ResourceMetricCollector`. Each sample is a flat, JSON-safe dict.

Two rules this module exists to enforce:
- A rank samples its own physical GPU. CUDA ordinals are renumbered by
  CUDA_VISIBLE_DEVICES; NVML indices are not. `physical_gpu_index` maps one to the other
  (the original system passed the CUDA ordinal to NVML and read the wrong GPU).
- No driver, no GPU numbers. Without NVML the sampler records host CPU/memory only, says
  so once, and leaves GPU fields out (never zeros).

Caveat: NVML "gpu utilisation" is the share of time *any* kernel ran over the driver's
own ~1 s window (longer on some GPUs). Sampling faster than 1 s repeats or aliases that
window; it does not add resolution. Use CUDA-event busy time for fine-grained claims.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import statistics
import threading
import time
from typing import Any, Callable, Mapping

from perfkit.errors import UserError

log = logging.getLogger(__name__)

NO_DRIVER_NOTE = "no NVIDIA driver: sampling host CPU/memory only; GPU utilisation NOT MEASURED"
COARSE_NOTE = "NVML utilisation is a ~1 s driver window; intervals under 1 s do not add resolution"

# nvitop collector metric name -> our sample field (GPU scope)
_GPU_FIELDS = {
    "gpu_utilization (%)": "gpu_utilization_percent",
    "memory_used (MiB)": "memory_used_mib",
    "memory_total (MiB)": "memory_total_mib",
    "memory_utilization (%)": "memory_utilization_percent",
    "power_usage (W)": "power_w",
    "temperature (C)": "temperature_c",
}
# nvitop collector metric name -> our sample field (host scope)
_HOST_FIELDS = {
    "cpu_percent (%)": "host_cpu_percent",
    "memory_percent (%)": "host_memory_percent",
    "memory_used (GiB)": "host_memory_used_gib",
}
# '<scope>/<metric (unit)>/<stat>' once the '<tag>/' prefix is removed
_KEY = re.compile(
    r"^(?P<scope>host|cuda:\d+ \(gpu:[^/]+\)|gpu:[^/]+)/(?P<metric>[^/]+)/(?P<stat>mean|min|max|last)$"
)
_UUID = re.compile(r"^(GPU|MIG)-[0-9A-Za-z-]+$")


# ---------------------------------------------------------------- CUDA -> physical mapping
def visible_device_entries(value: str) -> list[int | str]:
    """Parse CUDA_VISIBLE_DEVICES like the CUDA runtime: the list ends at the first invalid entry."""
    entries: list[int | str] = []
    for token in value.split(","):
        token = token.strip()
        if re.fullmatch(r"\d+", token):
            entry: int | str = int(token)
        elif _UUID.match(token):
            entry = token
        else:  # '', '-1', garbage: CUDA ignores it and everything after it
            break
        if entry in entries:  # a duplicate also ends the list
            break
        entries.append(entry)
    return entries


def physical_gpu_index(cuda_index: int, env: Mapping[str, str] = os.environ) -> int | str:
    """The NVML (physical) index, or GPU-/MIG- UUID, behind CUDA ordinal `cuda_index`.

    Unset CUDA_VISIBLE_DEVICES -> identity. Integer entries assume CUDA_DEVICE_ORDER=PCI_BUS_ID
    (NVML order); with a driver, `GpuSampler` cross-checks against nvitop's own mapping.
    """
    if isinstance(cuda_index, bool) or not isinstance(cuda_index, int) or cuda_index < 0:
        raise UserError(
            f"CUDA index {cuda_index!r} is not a non-negative integer",
            "pass the rank's local CUDA ordinal (0, 1, ...)",
        )
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return cuda_index
    visible = visible_device_entries(raw)
    if cuda_index >= len(visible):
        raise UserError(
            f"CUDA index {cuda_index} is out of range: CUDA_VISIBLE_DEVICES={raw!r} "
            f"makes {len(visible)} device(s) visible",
            "use a CUDA index below that count, or widen CUDA_VISIBLE_DEVICES",
        )
    return visible[cuda_index]


# ---------------------------------------------------------------- nvitop probing
@contextlib.contextmanager
def quiet_nvml_logger():
    """Silence nvitop's 'FATAL ERROR: NVML not found' banner while probing."""
    nvml_logger = logging.getLogger("nvitop.api.libnvml")
    previous = nvml_logger.level
    nvml_logger.setLevel(logging.CRITICAL + 1)  # the banner is logged AT critical level
    try:
        yield
    finally:
        nvml_logger.setLevel(previous)


def nvitop_cuda_mapping(cuda_index: int) -> int | None:
    """nvitop's own answer (asks the CUDA driver; honours CUDA_DEVICE_ORDER), or None."""
    try:
        from nvitop import CudaDevice

        with quiet_nvml_logger():
            index = CudaDevice(cuda_index).physical_index
        return index if isinstance(index, int) else None
    except Exception:  # no driver, no CUDA, bad env: the pure mapping stands
        return None


def open_nvml_device(physical: int | str):
    """An nvitop Device for `physical` (NVML index or UUID); None when no driver is present."""
    try:
        from nvitop import Device

        with quiet_nvml_logger():
            if Device.count() == 0:
                return None
            if isinstance(physical, str):
                return Device(uuid=physical)
            return Device(index=physical)
    except Exception as exc:  # NVMLError_LibraryNotFound and friends
        log.debug("NVML probe failed: %r", exc)
        return None


def parse_collector_metrics(
    metrics: Mapping[str, float], tag: str, stat: str = "last"
) -> dict[str, dict[str, float]]:
    """{'host': {...}, '<gpu scope>': {...}} from nvitop's '<tag>/<scope>/<metric>/<stat>' keys.

    Per-process keys ('pid:...') and non-finite values are dropped.
    """
    parsed: dict[str, dict[str, float]] = {}
    prefix = f"{tag}/"
    for key, value in metrics.items():
        if not key.startswith(prefix):
            continue
        match = _KEY.match(key[len(prefix) :])
        if match is None or match["stat"] != stat:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            parsed.setdefault(match["scope"], {})[match["metric"]] = number
    return parsed


# ---------------------------------------------------------------- the sampler
class GpuSampler:
    """Samples one rank's GPU (NVML via nvitop) plus host CPU/memory every `interval_s`.

    `cuda_index` defaults to LOCAL_RANK (else 0). `device_factory(physical)` returns the
    device to sample or None; it exists so tests can check which physical GPU a rank opens.
    `warn`: log a warning when no GPU can be sampled (off for runs on the CPU, which expect none).
    """

    def __init__(
        self,
        interval_s: float = 0.5,
        cuda_index: int | None = None,
        tag: str = "run",
        *,
        device_factory: Callable[[int | str], Any] | None = None,
        env: Mapping[str, str] | None = None,
        warn: bool = True,
    ):
        if not (isinstance(interval_s, (int, float)) and interval_s > 0):
            raise UserError(
                f"sampling interval {interval_s!r} is not a positive number of seconds",
                "pass interval_s > 0 (NVML utilisation needs >= 1 s to mean much)",
            )
        env = os.environ if env is None else env
        self.interval_s = float(interval_s)
        self.tag = tag
        self.cuda_index = int(env.get("LOCAL_RANK", 0)) if cuda_index is None else cuda_index
        self.physical_index: int | str = physical_gpu_index(self.cuda_index, env)

        if device_factory is None:
            self._cross_check_with_nvitop(env)
            device_factory = open_nvml_device
        self.device = device_factory(self.physical_index)
        self.source = "nvml" if self.device is not None else "host-only"
        self.note = self._make_note()
        if self.source == "host-only" and warn:  # a run on the CPU expects no GPU: nothing to warn about
            log.warning(
                "GPU sampler (cuda:%s -> physical %s): %s",
                self.cuda_index,
                self.physical_index,
                NO_DRIVER_NOTE,
            )

        self._samples: list[dict] = []
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._collector = None

    def _cross_check_with_nvitop(self, env: Mapping[str, str]) -> None:
        # Only meaningful for the real environment: nvitop reads os.environ itself.
        if env is not os.environ or isinstance(self.physical_index, str):
            return
        nvitop_index = nvitop_cuda_mapping(self.cuda_index)
        if nvitop_index is not None and nvitop_index != self.physical_index:
            log.warning(
                "CUDA cuda:%s is physical GPU %s per the CUDA driver, not %s per "
                "CUDA_VISIBLE_DEVICES (set CUDA_DEVICE_ORDER=PCI_BUS_ID); sampling %s",
                self.cuda_index,
                nvitop_index,
                self.physical_index,
                nvitop_index,
            )
            self.physical_index = nvitop_index

    def _make_note(self) -> str:
        if self.source == "host-only":
            return NO_DRIVER_NOTE
        note = f"NVML via nvitop: cuda:{self.cuda_index} -> physical GPU {self.physical_index}"
        return f"{note}; {COARSE_NOTE}" if self.interval_s < 1.0 else note

    # -- lifecycle
    def start(self) -> "GpuSampler":
        if self._thread is not None:
            raise RuntimeError("GpuSampler.start() called twice; create a new sampler per run")
        from nvitop import ResourceMetricCollector

        devices = [self.device] if self.device is not None else []
        with quiet_nvml_logger():
            self._collector = ResourceMetricCollector(
                devices=devices, root_pids=set(), interval=self.interval_s
            )
        self._thread = threading.Thread(target=self._run, name=f"gpu-sampler-{self.tag}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> "GpuSampler":
        """Stop sampling and join the thread (idempotent)."""
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 5 * self.interval_s))
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "GpuSampler":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _run(self) -> None:
        collector = self._collector
        with quiet_nvml_logger():
            collector.activate(self.tag)
        try:
            next_tick = time.monotonic()
            while not self._stop_event.is_set():
                self._take_sample(collector)
                next_tick += self.interval_s
                self._stop_event.wait(max(0.0, next_tick - time.monotonic()))
        finally:
            collector.deactivate(self.tag)

    def _take_sample(self, collector) -> None:
        try:
            with quiet_nvml_logger():
                parsed = parse_collector_metrics(collector.collect(), self.tag, stat="last")
            sample = self._build_sample(parsed)
        except Exception as exc:  # a failed read is a gap, never a zero
            log.debug("sample failed: %r", exc)
            return
        with self._lock:
            self._samples.append(sample)

    def _build_sample(self, parsed: dict[str, dict[str, float]]) -> dict:
        sample: dict[str, Any] = {
            "timestamp": time.time(),
            "source": self.source,
            "tag": self.tag,
            "cuda_index": self.cuda_index,
            "physical_index": self.physical_index,
        }
        for name, field in _HOST_FIELDS.items():
            if name in parsed.get("host", {}):
                sample[field] = parsed["host"][name]
        if self.device is None:
            return sample
        gpu = self._own_gpu_scope(parsed)
        for name, field in _GPU_FIELDS.items():
            if name in gpu:
                sample[field] = gpu[name]
        sm_clock = _finite_or_none(getattr(self.device, "sm_clock", lambda: None)())
        if sm_clock is not None:  # not in the collector's metric set
            sample["sm_clock_mhz"] = sm_clock
        return sample

    def _own_gpu_scope(self, parsed: dict[str, dict[str, float]]) -> dict[str, float]:
        gpu_scopes = {scope: values for scope, values in parsed.items() if scope != "host"}
        wanted = f"gpu:{getattr(self.device, 'index', self.physical_index)}"
        for scope, values in gpu_scopes.items():
            if scope == wanted or scope.endswith(f"({wanted})"):
                return values
        return next(iter(gpu_scopes.values()), {})

    # -- results
    def latest(self) -> dict | None:
        """The newest sample (no copy of the whole list: cheap enough for a progress bar)."""
        with self._lock:
            return dict(self._samples[-1]) if self._samples else None

    def samples(self) -> list[dict]:
        with self._lock:
            return [dict(s) for s in self._samples]

    def summary(self, since: float | None = None, until: float | None = None) -> dict:
        """Counts, interval, per-device util stats (absent when not measured) and a note. `since`/`until`
        (time.time() seconds): only the samples taken in that interval, e.g. a run's steady state."""
        samples = [
            s
            for s in self.samples()
            if (since is None or s["timestamp"] >= since) and (until is None or s["timestamp"] <= until)
        ]
        result: dict[str, Any] = {
            "tag": self.tag,
            "source": self.source,
            "cuda_index": self.cuda_index,
            "physical_index": self.physical_index,
            "count": len(samples),
            "interval_s": self.interval_s,
            "note": self.note,
            "devices": {},
        }
        host_cpu = [s["host_cpu_percent"] for s in samples if "host_cpu_percent" in s]
        if host_cpu:
            result["host_cpu_percent"] = describe(host_cpu)
        util = [s["gpu_utilization_percent"] for s in samples if "gpu_utilization_percent" in s]
        if self.source == "nvml" and util:
            result["devices"][str(self.physical_index)] = {
                "gpu_utilization_percent": describe(util),
                "measured": True,
            }
            result["gpu_utilization_percent"] = {**describe(util), "measured": True}
        else:
            # the not-measured marker that perfkit.criteria understands
            reason = self.note
            if self.source == "nvml" and since is not None:
                reason = (
                    f"no NVML sample inside the steady state ({max((until or since) - since, 0):.1f} s; one "
                    f"sample every {self.interval_s:g} s)"
                )
            result["gpu_utilization_percent"] = {"value": None, "measured": False, "reason": reason}
        if since is not None:
            result["interval"] = {"since": since, "until": until, "scope": "steady state"}
        return result


def describe(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "p50": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "count": len(values),
    }


def _finite_or_none(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
