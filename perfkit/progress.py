"""Live progress: one tqdm bar (text in terminals and papermill logs, a widget in JupyterLab).

Shows seq/s, tok/s, GPU utilisation, packing efficiency and the ETA; the postfix is
refreshed at most once per `min_interval_s` so the bar costs nothing on the hot path.
"""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


class LiveProgress:
    def __init__(
        self,
        total: int | None = None,
        desc: str = "embedding",
        unit: str = "seq",
        min_interval_s: float = 1.0,
        disable: bool | None = None,
        file=None,
    ):
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            mininterval=min_interval_s,
            dynamic_ncols=True,
            disable=disable,
            file=file or sys.stderr,
            smoothing=0.1,
        )
        self.min_interval_s = min_interval_s
        self.t0 = time.perf_counter()
        self._last_postfix = 0.0
        self.sequences = 0
        self.tokens = 0
        self.real_tokens = 0
        self.budget_tokens = 0
        self.gpu_util: float | None = None
        self.postfix_updates = 0

    def update(
        self, sequences: int, real_tokens: int, budget_tokens: int, advance: int | None = None
    ) -> None:
        """`advance`: what the bar counts when that is not sequences (e.g. input reads, whose total is known
        before any frame is translated)."""
        self.sequences += sequences
        self.real_tokens += real_tokens
        self.budget_tokens += budget_tokens
        self.bar.update(sequences if advance is None else advance)
        now = time.perf_counter()
        if now - self._last_postfix >= self.min_interval_s:
            self._last_postfix = now
            self.bar.set_postfix_str(self.postfix(now), refresh=False)
            self.postfix_updates += 1

    def set_description(self, desc: str) -> None:
        self.bar.set_description_str(desc, refresh=True)

    def set_gpu_util(self, percent: float | None) -> None:
        self.gpu_util = percent

    def postfix(self, now: float | None = None) -> str:
        elapsed = max((now or time.perf_counter()) - self.t0, 1e-9)
        eff = self.real_tokens / self.budget_tokens if self.budget_tokens else float("nan")
        util = f"{self.gpu_util:.0f}%" if self.gpu_util is not None else "n/a"
        rates = f"seq/s={self.sequences / elapsed:,.0f} tok/s={self.real_tokens / elapsed:,.0f}"
        return f"{rates} gpu={util} pack={eff:.1%}"

    def close(self) -> None:
        self.bar.set_postfix_str(self.postfix(), refresh=True)
        self.bar.close()
