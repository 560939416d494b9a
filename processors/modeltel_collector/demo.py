"""What ``modeltel demo`` tallies: the telemetry its receiver gets and the load it sends.

A stand-in until the collector proper exists: counts, per-feature means against a
baseline and a recent-window RMSE of predictions joined to their labels.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from modeltel import semconv
from modeltel_collector.otlp_values import attributes
from modeltel_collector.receivers.consumer import ACCEPTED, ExportOutcome

WINDOW = 200
"""Values per recent window, and values making up a feature's baseline."""
MAX_PENDING = 20_000
"""Predictions (or early labels) kept waiting for their counterpart; the oldest go first."""
RATE_WINDOW_S = 5.0


def as_number(value: Any) -> float | None:
    """``value`` as a finite float when it is a real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class _Bounded(OrderedDict[str, float]):
    """A dict that forgets its oldest entries beyond ``MAX_PENDING``."""

    def put(self, key: str, value: float) -> None:
        self[key] = value
        if len(self) > MAX_PENDING:
            self.popitem(last=False)


@dataclass(frozen=True)
class FeatureStats:
    """A numeric feature now against its baseline (its first ``WINDOW`` values)."""

    baseline_count: int
    baseline_mean: float
    baseline_std: float
    recent_mean: float

    @property
    def shift(self) -> float:
        """How far the recent mean moved, in baseline standard deviations.

        nan while the baseline is incomplete or constant.
        """
        if self.baseline_count < WINDOW or not self.baseline_std:
            return math.nan
        return (self.recent_mean - self.baseline_mean) / self.baseline_std


class FeatureWindow:
    """The first ``WINDOW`` values of a feature (its baseline) and the last ``WINDOW``."""

    def __init__(self) -> None:
        self._baseline: list[float] = []
        self._recent: deque[float] = deque(maxlen=WINDOW)

    def add(self, value: float) -> None:
        if len(self._baseline) < WINDOW:
            self._baseline.append(value)
        self._recent.append(value)

    def stats(self) -> FeatureStats:
        return FeatureStats(
            len(self._baseline),
            statistics.fmean(self._baseline),
            statistics.pstdev(self._baseline),
            statistics.fmean(self._recent),
        )


@dataclass(frozen=True)
class TelemetrySnapshot:
    """What the demo receiver has seen so far."""

    spans: int
    server_spans: int
    predictions: int
    labels: int
    labels_joined: int
    metric_points: int
    log_records: int
    rmse: float
    """Root mean squared error of the last ``WINDOW`` joined labels (nan before any)."""
    features: dict[str, FeatureStats]


class DemoConsumer:
    """A receiver :class:`~modeltel_collector.receivers.Consumer` tallying what arrives; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._features: dict[str, FeatureWindow] = {}
        self._predictions = _Bounded()
        self._early_labels = _Bounded()
        self._squared_errors: deque[float] = deque(maxlen=WINDOW)

    def consume_traces(self, request: ExportTraceServiceRequest) -> ExportOutcome:
        spans = [
            span
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        server = sum(span.kind == Span.SpanKind.SPAN_KIND_SERVER for span in spans)
        with self._lock:
            self._counts.update(spans=len(spans), server_spans=server)
        return ACCEPTED

    def consume_metrics(self, request: ExportMetricsServiceRequest) -> ExportOutcome:
        points = 0
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    if kind is not None:
                        points += len(getattr(metric, kind).data_points)
        with self._lock:
            self._counts["metric_points"] += points
        return ACCEPTED

    def consume_logs(self, request: ExportLogsServiceRequest) -> ExportOutcome:
        for resource_logs in request.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    self._consume_record(record)
        return ACCEPTED

    def _consume_record(self, record: LogRecord) -> None:
        name = record.event_name
        attrs = attributes(record.attributes) if name else {}
        with self._lock:
            self._counts["log_records"] += 1
            if name == semconv.PREDICTION_EVENT:
                self._on_prediction(attrs)
            elif name == semconv.LABEL_EVENT:
                self._on_label(attrs)

    def _on_prediction(self, attrs: dict[str, Any]) -> None:
        self._counts["predictions"] += 1
        for key, value in attrs.items():
            number = as_number(value)
            if key.startswith(semconv.FEATURE_PREFIX) and number is not None:
                feature = key.removeprefix(semconv.FEATURE_PREFIX)
                self._features.setdefault(feature, FeatureWindow()).add(number)
        prediction_id = attrs.get(semconv.PREDICTION_ID)
        prediction = as_number(attrs.get(semconv.PREDICTION_VALUE))
        if not isinstance(prediction_id, str) or prediction is None:
            return
        label = self._early_labels.pop(prediction_id, None)
        if label is None:
            self._predictions.put(prediction_id, prediction)
        else:
            self._join(prediction, label)

    def _on_label(self, attrs: dict[str, Any]) -> None:
        self._counts["labels"] += 1
        prediction_id = attrs.get(semconv.PREDICTION_ID)
        label = as_number(attrs.get(semconv.LABEL_VALUE))
        if not isinstance(prediction_id, str) or label is None:
            return
        prediction = self._predictions.pop(prediction_id, None)
        if prediction is None:  # the label came first (or twice): wait for the prediction
            self._early_labels.put(prediction_id, label)
        else:
            self._join(prediction, label)

    def _join(self, prediction: float, label: float) -> None:
        self._counts["labels_joined"] += 1
        self._squared_errors.append((prediction - label) ** 2)

    def snapshot(self) -> TelemetrySnapshot:
        with self._lock:
            counts = dict(self._counts)
            errors = list(self._squared_errors)
            features = {name: window.stats() for name, window in sorted(self._features.items())}
        return TelemetrySnapshot(
            spans=counts.get("spans", 0),
            server_spans=counts.get("server_spans", 0),
            predictions=counts.get("predictions", 0),
            labels=counts.get("labels", 0),
            labels_joined=counts.get("labels_joined", 0),
            metric_points=counts.get("metric_points", 0),
            log_records=counts.get("log_records", 0),
            rmse=math.sqrt(statistics.fmean(errors)) if errors else math.nan,
            features=features,
        )


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
        self._latencies: deque[float] = deque(maxlen=WINDOW)
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
