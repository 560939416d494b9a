"""The service processor: RED metrics from real SDK spans, and forwarding to a real OTLP/gRPC receiver."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from modeltel_collector.config import ServiceProcessor as ServiceConfig
from modeltel_collector.config import parse_config
from modeltel_collector.processors.base import ProcessorContext
from modeltel_collector.processors.service import (
    DROPPED_METRIC,
    DURATION_BUCKETS,
    DURATION_METRIC,
    OtlpForwarder,
    ServiceProcessor,
    factory,
)
from modeltel_collector.receivers import ACCEPTED, ExportOutcome, GrpcReceiver
from tests.otlp_sink import GrpcSink, RecordingConsumer, free_port, wait_until

T0 = 1_700_000_000_000_000_000  # a fixed start time, in Unix nanoseconds
MS = 1_000_000
LOGGER = "modeltel_collector.processors.service"


class Spans:
    """Real SDK spans of one service, with exact start and end times, encoded as OTLP."""

    def __init__(self, service: str | None = "salary-api") -> None:
        self.exporter = InMemorySpanExporter()
        attributes = {} if service is None else {"service.name": service}
        self.provider = TracerProvider(resource=Resource(attributes))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def span(
        self,
        name: str,
        duration_ms: float,
        attributes: dict[str, Any] | None = None,
        kind: SpanKind = SpanKind.SERVER,
        error: BaseException | None = None,
        status: StatusCode | None = None,
    ) -> None:
        span = self.tracer.start_span(name, kind=kind, attributes=attributes, start_time=T0)
        if error is not None:
            span.record_exception(error)
        if status is not None:
            span.set_status(Status(status))
        span.end(end_time=T0 + int(duration_ms * MS))

    def request(self) -> ExportTraceServiceRequest:
        encoded = encode_spans(self.exporter.get_finished_spans())
        # Through the wire format, as the receiver would hand it over.
        return ExportTraceServiceRequest.FromString(encoded.SerializeToString())


def http(route: str | None, method: str, status: int) -> dict[str, Any]:
    attributes: dict[str, Any] = {"http.request.method": method, "http.response.status_code": status}
    if route is not None:
        attributes["http.route"] = route
    return attributes


class Harness:
    def __init__(self, tmp_path: Path, config: ServiceConfig | None = None) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        context = ProcessorContext(meter=self.provider.get_meter("modeltel.service"), data_dir=tmp_path)
        self.processor = factory.create(config or ServiceConfig(), context)

    def metric(self, name: str) -> Any:
        data = self.reader.get_metrics_data()
        for resource_metrics in data.resource_metrics if data else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        return metric
        return None

    def points(self) -> dict[tuple[tuple[str, Any], ...], Any]:
        metric = self.metric(DURATION_METRIC)
        if metric is None:
            return {}
        return {tuple(sorted(p.attributes.items())): p for p in metric.data.data_points}


def key(
    route: str,
    method: str | None = None,
    status: int | None = None,
    error: str | None = None,
    service: str = "salary-api",
) -> tuple[tuple[str, Any], ...]:
    """The sorted attributes of a ``http.server.request.duration`` series."""
    attributes = {
        "service.name": service,
        "http.route": route,
        "http.request.method": method,
        "http.response.status_code": status,
        "error.type": error,
    }
    return tuple(sorted((k, v) for k, v in attributes.items() if v is not None))


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.processor.shutdown()
    harness.provider.shutdown()


def test_factory_builds_the_processor_from_its_config_section(tmp_path: Path) -> None:
    assert factory.type == "service"
    assert factory.config_type is ServiceConfig
    config = parse_config({"processors": {"service": {}}}).processors.service
    assert isinstance(config, ServiceConfig)
    harness = Harness(tmp_path, config)
    assert isinstance(harness.processor, ServiceProcessor)
    assert harness.processor.forwarder is None
    harness.processor.tick(T0)
    assert harness.processor.checkpoint() == {}
    harness.processor.restore({})
    harness.processor.shutdown()


def test_duration_histogram_per_service_route_method_and_status(harness: Harness) -> None:
    spans = Spans()
    durations = {  # (route, method, status) -> durations in ms
        ("/predict", "POST", 200): [12.5, 30.0, 240.0],
        ("/predict", "POST", 422): [3.0],
        ("/health", "GET", 200): [1.0, 2.0],
    }
    for (route, method, status), values in durations.items():
        for value in values:
            spans.span(f"{method} {route}", value, http(route, method, status))
    harness.processor.process_spans(spans.request())

    metric = harness.metric(DURATION_METRIC)
    assert metric.unit == "s"
    points = harness.points()
    assert len(points) == len(durations)
    for (route, method, status), values in durations.items():
        point = points[key(route, method=method, status=status)]
        assert point.count == len(values)
        assert point.sum == pytest.approx(sum(values) / 1000)
        assert list(point.explicit_bounds) == list(DURATION_BUCKETS)
    predict_ok = points[key("/predict", method="POST", status=200)]
    # 12.5 ms and 30 ms fall in (0.01, 0.025] and (0.025, 0.05]; 240 ms in (0.1, 0.25].
    assert predict_ok.bucket_counts[DURATION_BUCKETS.index(0.025)] == 1
    assert predict_ok.bucket_counts[DURATION_BUCKETS.index(0.05)] == 1
    assert predict_ok.bucket_counts[DURATION_BUCKETS.index(0.25)] == 1
    assert predict_ok.min == pytest.approx(0.0125) and predict_ok.max == pytest.approx(0.24)

    # A second request adds to the same cumulative series (the cached attribute sets are reused).
    again = Spans()
    again.span("POST /predict", 7.0, http("/predict", "POST", 200))
    harness.processor.process_spans(again.request())
    assert harness.points()[key("/predict", method="POST", status=200)].count == 4


def test_error_type_on_5xx_and_on_error_status_only(harness: Harness) -> None:
    spans = Spans()
    spans.span("POST /predict", 5, http("/predict", "POST", 500), status=StatusCode.ERROR)
    spans.span("POST /predict", 5, http("/predict", "POST", 503))
    spans.span("POST /predict", 5, http("/predict", "POST", 404))
    spans.span("GET /jobs", 5, {"http.route": "/jobs"}, error=KeyError("x"), status=StatusCode.ERROR)
    spans.span("GET /other", 5, {"http.route": "/other"}, status=StatusCode.ERROR)
    harness.processor.process_spans(spans.request())

    points = harness.points()
    assert set(points) == {
        key("/predict", method="POST", status=500, error="500"),
        key("/predict", method="POST", status=503, error="503"),
        # a client error is not a server error
        key("/predict", method="POST", status=404),
        key("/jobs", error="KeyError"),
        key("/other", error="_OTHER"),
    }


def test_only_server_spans_count(harness: Harness) -> None:
    spans = Spans()
    for kind in (SpanKind.INTERNAL, SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER):
        spans.span("GET", 5, http("/predict", "GET", 200), kind=kind)
    harness.processor.process_spans(spans.request())
    assert harness.points() == {}

    spans.span("GET /predict", 5, http("/predict", "GET", 200))
    harness.processor.process_spans(spans.request())
    assert [p.count for p in harness.points().values()] == [1]


def test_old_http_attribute_names_and_span_name_fallback(harness: Harness) -> None:
    spans = Spans()
    old = {"http.method": "GET", "http.status_code": 200, "http.target": "/users/42?x=1"}
    spans.span("GET /users/{id}", 10, old)  # no http.route: the span name
    spans.span("", 20, {"http.method": "POST", "http.status_code": 502, "http.target": "/jobs?a=b"})
    # stable names win over old ones when both are present
    spans.span("GET /both", 30, {**old, **http("/both", "PUT", 201)})
    harness.processor.process_spans(spans.request())

    points = harness.points()
    assert set(points) == {
        key("GET /users/{id}", method="GET", status=200),
        key("/jobs", method="POST", status=502, error="502"),
        key("/both", method="PUT", status=201),
    }
    assert sum(p.sum for p in points.values()) == pytest.approx(0.060)


def test_services_come_from_each_resource(harness: Harness) -> None:
    first, second, anonymous = Spans("salary-api"), Spans("pricing"), Spans(None)
    first.span("GET /a", 1, http("/a", "GET", 200))
    second.span("GET /a", 2, http("/a", "GET", 200))
    anonymous.span("GET /a", 3, http("/a", "GET", 200))
    request = first.request()
    request.resource_spans.extend(second.request().resource_spans)
    request.resource_spans.extend(anonymous.request().resource_spans)
    harness.processor.process_spans(request)

    services = {dict(k)["service.name"]: p.sum for k, p in harness.points().items()}
    # an SDK resource without service.name gets the SDK default, unknown_service:<process>
    assert services.pop("salary-api") == pytest.approx(0.001)
    assert services.pop("pricing") == pytest.approx(0.002)
    [(anonymous_name, anonymous_sum)] = services.items()
    assert anonymous_name.startswith("unknown_service")
    assert anonymous_sum == pytest.approx(0.003)


def test_unfinished_spans_and_empty_requests_are_skipped(harness: Harness) -> None:
    spans = Spans()
    spans.span("GET /a", 1, http("/a", "GET", 200))
    request = spans.request()
    request.resource_spans[0].scope_spans[0].spans[0].end_time_unix_nano = 0
    harness.processor.process_spans(request)
    harness.processor.process_spans(ExportTraceServiceRequest())
    assert harness.points() == {}


def test_forwards_traces_and_metrics_unchanged(tmp_path: Path) -> None:
    sink = GrpcSink()
    harness = Harness(tmp_path, ServiceConfig(forward_endpoint=sink.endpoint))
    try:
        spans = Spans()
        spans.span("POST /predict", 12, http("/predict", "POST", 200))
        spans.span("internal", 1, kind=SpanKind.INTERNAL)
        traces = spans.request()
        harness.processor.process_spans(traces)
        metrics = encode_metrics(harness.reader.get_metrics_data())
        harness.processor.forward_metrics(metrics)

        wait_until(lambda: sink.consumer.traces and sink.consumer.metrics, what="the forwarded requests")
        assert sink.consumer.traces == [traces]
        assert sink.consumer.metrics == [metrics]
        assert len(sink.consumer.spans()) == 2  # every span, not only server spans
        forwarder = harness.processor.forwarder
        assert forwarder is not None
        wait_until(lambda: forwarder.sent == 2, what="both exports to complete")
        assert (forwarder.dropped, forwarder.failed) == (0, 0)
    finally:
        harness.processor.shutdown()
        sink.stop()


class BlockingConsumer(RecordingConsumer):
    """Holds every trace export until released, so the forwarder's queue fills up."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def consume_traces(self, request: ExportTraceServiceRequest) -> ExportOutcome:
        self.entered.set()
        self.release.wait(30)
        super().consume_traces(request)
        return ACCEPTED


def test_full_queue_drops_counts_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    consumer = BlockingConsumer()
    receiver = GrpcReceiver(consumer, "127.0.0.1:0").start()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    counter = provider.get_meter("test").create_counter(DROPPED_METRIC)
    forwarder = OtlpForwarder(f"127.0.0.1:{receiver.port}", max_queue=2, dropped_counter=counter)
    try:
        requests = []
        for i in range(8):
            spans = Spans(f"service-{i}")
            spans.span("GET /a", 1, http("/a", "GET", 200))
            requests.append(spans.request())
        assert forwarder.forward_traces(requests[0])
        assert consumer.entered.wait(10)  # the background thread is now stuck in the first export
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            accepted = [forwarder.forward_traces(request) for request in requests[1:]]
        assert accepted == [True, True, False, False, False, False, False]
        assert forwarder.dropped == 5
        [warning] = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert "queue is full" in warning and DROPPED_METRIC in warning

        consumer.release.set()
        wait_until(lambda: len(consumer.traces) == 3, what="the queued requests")
        assert consumer.traces == requests[:3]
        data = reader.get_metrics_data()
        [point] = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
        assert point.value == 5
        assert dict(point.attributes) == {"signal": "traces", "reason": "queue_full"}
    finally:
        consumer.release.set()
        forwarder.shutdown()
        receiver.stop()
        provider.shutdown()


def test_unreachable_endpoint_counts_failures_without_blocking(caplog: pytest.LogCaptureFixture) -> None:
    forwarder = OtlpForwarder(f"http://127.0.0.1:{free_port()}", timeout=5)
    try:
        spans = Spans()
        spans.span("GET /a", 1, http("/a", "GET", 200))
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            for _ in range(3):
                assert forwarder.forward_traces(spans.request())
            wait_until(lambda: forwarder.failed == 3, what="the failed exports")
        assert forwarder.sent == 0
        [warning] = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert "failed" in warning and "UNAVAILABLE" in warning
    finally:
        forwarder.shutdown()
    assert not forwarder.forward_traces(spans.request())  # after shutdown: dropped, not queued
    assert forwarder.dropped == 1


def test_bad_forward_endpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="forward_endpoint"):
        Harness(tmp_path, ServiceConfig(forward_endpoint="ftp://collector:4317"))
