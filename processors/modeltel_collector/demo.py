"""What ``modeltel demo`` shows: the load it sends and what the embedded collector computes.

:class:`LoadTally` collects the load generator's results; :func:`quality_snapshot`
reads the collector's drift and performance processors for the live table.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from modeltel_collector.collector import Collector

LATENCY_WINDOW = 200
"""Requests the latency percentiles are computed over."""
RATE_WINDOW_S = 5.0
MODEL = "salary"


@dataclass(frozen=True)
class FeatureRow:
    """One feature in the latest closed drift window."""

    name: str
    psi: float
    ks_pvalue: float
    effect: float
    """Normalised Wasserstein (numeric) or total variation (categorical)."""
    drifted: bool


@dataclass(frozen=True)
class QualitySnapshot:
    """The collector's view of the example model: drift per feature and accuracy."""

    version: str
    features: list[FeatureRow]
    performance: dict[str, float]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.nan


def quality_snapshot(collector: Collector) -> QualitySnapshot | None:
    """The latest drift and performance of the example model, or None before any window."""
    drift: Any = collector.pipeline.processors.get("drift")
    performance: Any = collector.pipeline.processors.get("performance")
    versions = [version for model, version in drift.versions() if model == MODEL] if drift else []
    if not versions:
        return None
    version = versions[-1]
    rows = []
    for name, result in sorted(drift.latest(MODEL, version).items()):
        effect = result.wasserstein if math.isfinite(result.wasserstein) else result.tv
        row = FeatureRow(
            name, _finite(result.psi), _finite(result.ks_pvalue), _finite(effect), result.drifted
        )
        rows.append(row)
    metrics = performance.latest(MODEL, version) if performance is not None else {}
    return QualitySnapshot(version, rows, dict(metrics))


class RequestResult(Protocol):
    """One request as the load generator reports it (``examples.salary.loadgen``)."""

    @property
    def latency_s(self) -> float: ...
    @property
    def status(self) -> int: ...
    @property
    def phase(self) -> str: ...


class LoadStats(Protocol):
    """The totals of a load generator run (``examples.salary.loadgen``)."""

    sent: int
    ok: int
    errors: int
    p50: float
    p95: float
    elapsed_s: float
    phases: dict[str, int]


@dataclass(frozen=True)
class LoadSnapshot:
    """The load generator's progress; times in seconds."""

    elapsed_s: float
    sent: int
    ok: int
    errors: int
    rate: float
    p50: float
    p95: float
    phase: str
    phases: dict[str, int]

    @classmethod
    def from_stats(cls, stats: LoadStats, phase: str) -> LoadSnapshot:
        """The totals of a finished run (latency percentiles over all its requests)."""
        rate = stats.sent / stats.elapsed_s if stats.elapsed_s else 0.0
        return cls(
            stats.elapsed_s,
            stats.sent,
            stats.ok,
            stats.errors,
            rate,
            stats.p50,
            stats.p95,
            phase,
            stats.phases,
        )


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


class LoadTally:
    """Collects the load generator's results (its ``on_result`` callback); thread-safe.

    Create it as the load starts: its clock gives the elapsed time and early request rates.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._phases: Counter[str] = Counter()
        self._phase = "baseline"
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._done_at: deque[float] = deque()
        self._started = time.monotonic()

    def record(self, result: RequestResult) -> None:
        now = time.monotonic()
        with self._lock:
            self._counts["sent"] += 1
            self._counts["ok" if 200 <= result.status < 300 else "errors"] += 1
            self._phases[result.phase] += 1
            self._phase = result.phase
            if result.status:
                self._latencies.append(result.latency_s)
            self._done_at.append(now)
            while self._done_at[0] < now - RATE_WINDOW_S:
                self._done_at.popleft()

    def snapshot(self) -> LoadSnapshot:
        """Totals so far; rate and latency percentiles over recent requests."""
        now = time.monotonic()
        with self._lock:
            counts = dict(self._counts)
            latencies = list(self._latencies)
            in_window = sum(t >= now - RATE_WINDOW_S for t in self._done_at)
            phase, phases = self._phase, dict(self._phases)
        elapsed = now - self._started
        span = min(RATE_WINDOW_S, elapsed)
        return LoadSnapshot(
            elapsed_s=elapsed,
            sent=counts.get("sent", 0),
            ok=counts.get("ok", 0),
            errors=counts.get("errors", 0),
            rate=in_window / span if span > 0 else 0.0,
            p50=_percentile(latencies, 50),
            p95=_percentile(latencies, 95),
            phase=phase,
            phases=phases,
        )
