"""The ``service`` processor: RED metrics from received spans, and optional OTLP forwarding.

Every SERVER span of a received ``ExportTraceServiceRequest`` is recorded into the OpenTelemetry
semantic-convention metric ``http.server.request.duration`` (a histogram in seconds, with the
semconv's advisory bucket boundaries), with the attributes ``service.name`` (resource
attribute), ``http.route``, ``http.request.method``, ``http.response.status_code`` and, for
failed requests, ``error.type``. That is the metric an instrumented app would emit itself, so
the usual queries work unchanged: request rate and error rate from the histogram's count by
status or ``error.type``, p95 latency from ``histogram_quantile(0.95, ...)`` over its buckets.

Attributes are read with the stable HTTP semconv names first, then the old ones
(``http.method``, ``http.status_code``); the route is ``http.route``, else the span name (low
cardinality by the semconv's span-naming rule), else ``http.target`` without its query string.

With ``forward_endpoint`` set, received trace requests (:meth:`ServiceProcessor.process_spans`)
and metrics requests (:meth:`ServiceProcessor.forward_metrics`) are also forwarded unchanged to
that OTLP/gRPC endpoint by :class:`OtlpForwarder`: a bounded queue drained by one background
thread, so the pipeline never waits on the network; requests that do not fit are dropped and
counted in ``modeltel.forwarder.dropped``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import grpc
from opentelemetry.metrics import Counter, Meter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import MetricsServiceStub
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from modeltel_collector.batch import LabelBatch, PredictionBatch
from modeltel_collector.config import ServiceProcessor as ServiceConfig
from modeltel_collector.processors.base import ProcessorContext, ProcessorFactory

_log = logging.getLogger(__name__)

DURATION_METRIC = "http.server.request.duration"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
"""The semconv's advisory explicit bucket boundaries for ``http.server.request.duration``."""
DROPPED_METRIC = "modeltel.forwarder.dropped"
UNKNOWN_SERVICE = "unknown_service"
"""``service.name`` of spans whose resource has none (the SDKs' default)."""
OTHER_ERROR = "_OTHER"

_SERVER = Span.SpanKind.SPAN_KIND_SERVER
_STATUS_ERROR = Status.StatusCode.STATUS_CODE_ERROR
_MAX_CACHED_ATTRIBUTE_SETS = 10_000

# Span attribute keys read, and which slot each fills: stable names win over old ones.
_ROUTE, _METHOD, _STATUS, _OLD_METHOD, _OLD_STATUS, _TARGET = range(6)
_KEYS = {
    "http.route": _ROUTE,
    "http.request.method": _METHOD,
    "http.response.status_code": _STATUS,
    "http.method": _OLD_METHOD,
    "http.status_code": _OLD_STATUS,
    "http.target": _TARGET,
}

_AttributeKey = tuple[str, str, "str | None", "int | None", "str | None"]


def _scalar(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


def _status_code(value: Any) -> int | None:
    """An HTTP status code from an int, a float or a numeric string (as some instrumentations send)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _exception_type(span: Span) -> str:
    """``exception.type`` of the span's last ``exception`` event, else ``_OTHER``."""
    for event in reversed(span.events):
        if event.name == "exception":
            for kv in event.attributes:
                if kv.key == "exception.type" and kv.value.string_value:
                    return kv.value.string_value
    return OTHER_ERROR


class OtlpForwarder:
    """Sends OTLP requests unchanged to an OTLP/gRPC endpoint, from one background thread.

    :meth:`forward_traces` and :meth:`forward_metrics` never block: a request that finds the
    queue full is dropped, counted in :attr:`dropped` (and on ``dropped_counter``) and logged
    once. Export failures are counted in :attr:`failed` and logged once; nothing is retried.
    ``endpoint`` is ``host:port`` or ``http://host:port`` (plaintext) or ``https://host:port`` (TLS).
    """

    def __init__(
        self,
        endpoint: str,
        max_queue: int = 1024,
        timeout: float = 10.0,
        dropped_counter: Counter | None = None,
    ) -> None:
        target, secure = _grpc_target(endpoint)
        self.endpoint = endpoint
        self._channel = (
            grpc.secure_channel(target, grpc.ssl_channel_credentials())
            if secure
            else grpc.insecure_channel(target)
        )
        self._export_traces = TraceServiceStub(self._channel).Export
        self._export_metrics = MetricsServiceStub(self._channel).Export
        self._timeout = timeout
        self._queue: queue.Queue[tuple[Callable[..., Any], Any, str] | None] = queue.Queue(max_queue)
        self._dropped_counter = dropped_counter
        self._lock = threading.Lock()
        self.sent = 0
        self.dropped = 0
        self.failed = 0
        self._logged_drop = False
        self._logged_failure = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="modeltel-forwarder", daemon=True)
        self._thread.start()

    def forward_traces(self, request: ExportTraceServiceRequest) -> bool:
        """Queue ``request`` for sending; False if it was dropped. Do not mutate it afterwards."""
        return self._submit(self._export_traces, request, "traces")

    def forward_metrics(self, request: ExportMetricsServiceRequest) -> bool:
        """Queue ``request`` for sending; False if it was dropped. Do not mutate it afterwards."""
        return self._submit(self._export_metrics, request, "metrics")

    def _submit(self, export: Callable[..., Any], request: Any, signal: str) -> bool:
        if self._closed:
            self._count_drop(signal, "shutdown")
            return False
        try:
            self._queue.put_nowait((export, request, signal))
            return True
        except queue.Full:
            pass
        self._count_drop(signal, "queue_full")
        if not self._logged_drop:
            self._logged_drop = True
            _log.warning(
                "forwarding to %s cannot keep up: its queue is full, so %s requests are being "
                "dropped (counted in %s; logged once)",
                self.endpoint,
                signal,
                DROPPED_METRIC,
            )
        return False

    def _count_drop(self, signal: str, reason: str) -> None:
        with self._lock:
            if reason == "export_failed":
                self.failed += 1
            else:
                self.dropped += 1
        if self._dropped_counter is not None:
            self._dropped_counter.add(1, {"signal": signal, "reason": reason})

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            export, request, signal = item
            try:
                export(request, timeout=self._timeout)
            except Exception as error:  # grpc.RpcError, or a closed channel at shutdown
                self._count_drop(signal, "export_failed")
                if not self._logged_failure:
                    self._logged_failure = True
                    _log.warning(
                        "forwarding %s to %s failed (%s); further failures are only counted in %s",
                        signal,
                        self.endpoint,
                        error.code() if isinstance(error, grpc.RpcError) else error,
                        DROPPED_METRIC,
                    )
            else:
                with self._lock:
                    self.sent += 1

    def pending(self) -> int:
        return self._queue.qsize()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Send what is queued, waiting at most ``timeout`` seconds, then close the channel."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._channel.close()


def _grpc_target(endpoint: str) -> tuple[str, bool]:
    """``(host:port, use TLS)`` for an OTLP/gRPC endpoint written with or without a scheme."""
    if "://" not in endpoint:
        return endpoint, False
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"forward_endpoint {endpoint!r} is not host:port, http://host:port or https://...")
    return parts.netloc, parts.scheme == "https"


class ServiceProcessor:
    """RED metrics per service and route from SERVER spans; optional forwarding of traces and metrics."""

    def __init__(self, config: ServiceConfig, context: ProcessorContext) -> None:
        meter: Meter = context.meter
        self._duration = meter.create_histogram(
            DURATION_METRIC,
            unit="s",
            description="Duration of HTTP server requests, derived from received server spans.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._attribute_sets: dict[_AttributeKey, dict[str, Any]] = {}
        self.forwarder: OtlpForwarder | None = None
        if config.forward_endpoint:
            dropped = meter.create_counter(
                DROPPED_METRIC,
                unit="{request}",
                description="OTLP requests not forwarded: queue full, export failed or shut down.",
            )
            self.forwarder = OtlpForwarder(config.forward_endpoint, dropped_counter=dropped)

    def process_predictions(self, batch: PredictionBatch) -> None:
        pass

    def process_labels(self, batch: LabelBatch) -> None:
        pass

    def process_spans(self, request: ExportTraceServiceRequest) -> None:
        if self.forwarder is not None:
            self.forwarder.forward_traces(request)
        record = self._duration.record
        attribute_sets = self._attribute_sets
        keys_get = _KEYS.get
        for resource_spans in request.resource_spans:
            service = UNKNOWN_SERVICE
            for kv in resource_spans.resource.attributes:
                if kv.key == "service.name":
                    service = str(_scalar(kv.value))
                    break
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    if span.kind != _SERVER:
                        continue
                    start, end = span.start_time_unix_nano, span.end_time_unix_nano
                    if not start or end < start:
                        continue  # not a finished span: no duration to record
                    found: list[Any] = [None] * 6
                    for kv in span.attributes:
                        slot = keys_get(kv.key)
                        if slot is not None:
                            found[slot] = _scalar(kv.value)
                    route = found[_ROUTE] or span.name
                    if not route and found[_TARGET]:
                        route = str(found[_TARGET]).split("?", 1)[0]
                    method = found[_METHOD] or found[_OLD_METHOD]
                    status = _status_code(
                        found[_STATUS] if found[_STATUS] is not None else found[_OLD_STATUS]
                    )
                    if status is not None and status >= 500:
                        error_type: str | None = str(status)
                    elif span.status.code == _STATUS_ERROR:
                        error_type = _exception_type(span)
                    else:
                        error_type = None
                    key = (service, str(route), None if method is None else str(method), status, error_type)
                    attributes = attribute_sets.get(key)
                    if attributes is None:
                        attributes = self._attributes(key)
                    record((end - start) / 1e9, attributes)

    def _attributes(self, key: _AttributeKey) -> dict[str, Any]:
        service, route, method, status, error_type = key
        attributes: dict[str, Any] = {"service.name": service, "http.route": route}
        if method is not None:
            attributes["http.request.method"] = method
        if status is not None:
            attributes["http.response.status_code"] = status
        if error_type is not None:
            attributes["error.type"] = error_type
        if len(self._attribute_sets) >= _MAX_CACHED_ATTRIBUTE_SETS:
            self._attribute_sets.clear()  # unbounded routes (e.g. raw paths as span names)
        self._attribute_sets[key] = attributes
        return attributes

    def forward_metrics(self, request: ExportMetricsServiceRequest) -> None:
        """Forward a received metrics request unchanged, if a forward endpoint is configured."""
        if self.forwarder is not None:
            self.forwarder.forward_metrics(request)

    def tick(self, now_unix_nano: int) -> None:
        pass  # no windows: the histogram is cumulative

    def checkpoint(self) -> dict[str, Any]:
        return {}  # cumulative SDK state; a restart is a counter reset, which Prometheus handles

    def restore(self, state: dict[str, Any]) -> None:
        pass

    def shutdown(self) -> None:
        if self.forwarder is not None:
            self.forwarder.shutdown()


def _create(config: ServiceConfig, context: ProcessorContext) -> ServiceProcessor:
    return ServiceProcessor(config, context)


factory = ProcessorFactory(type="service", config_type=ServiceConfig, create=_create)
