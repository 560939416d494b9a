"""The collector down or answering errors: the app answers every request, the SDK's queue stays
bounded, and once the collector is back the events it lost arrive as counts, with their reason.

The app under test runs in its own process (uvicorn), the collectors are real gRPC servers on
a fixed port that comes back with a healthy receiver (:class:`tests.otlp_sink.GrpcSink`).
Timing is never asserted here: ``benchmarks/sdk_resilience.py`` measures latency and memory.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc import trace_exporter as grpc_trace_exporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from modeltel import semconv
from modeltel.providers import signal_exporter
from tests.conftest import AppProcess, telemetry_env
from tests.otlp_sink import GrpcSink, free_port, wait_until

QUEUE = 64
BATCH = 32
SERVICES = ("logs.v1.LogsService", "trace.v1.TraceService", "metrics.v1.MetricsService")


class UnavailableCollector:
    """A gRPC server answering every OTLP Export ``UNAVAILABLE``; notes the prediction ids it saw."""

    def __init__(self, port: int) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.prediction_ids: set[str] = set()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        for service in SERVICES:
            handler = grpc.unary_unary_rpc_method_handler(
                self._refuse_logs if "Logs" in service else self._refuse
            )
            self._server.add_generic_rpc_handlers(
                (
                    grpc.method_handlers_generic_handler(
                        f"opentelemetry.proto.collector.{service}", {"Export": handler}
                    ),
                )
            )
        assert self._server.add_insecure_port(f"127.0.0.1:{port}") == port
        self._server.start()

    def _refuse(self, _payload: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.calls += 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "the collector is unavailable")
        raise AssertionError("unreachable: abort raises")

    def _refuse_logs(self, payload: bytes, context: grpc.ServicerContext) -> bytes:
        request = ExportLogsServiceRequest.FromString(payload)
        ids = {
            kv.value.string_value
            for resource_logs in request.resource_logs
            for scope_logs in resource_logs.scope_logs
            for record in scope_logs.log_records
            if record.event_name == semconv.PREDICTION_EVENT
            for kv in record.attributes
            if kv.key == semconv.PREDICTION_ID
        }
        with self._lock:
            self.prediction_ids |= ids
        return self._refuse(payload, context)

    def stop(self) -> None:
        self._server.stop(0).wait()


def _answers_correctly(app: AppProcess, count: int) -> set[str]:
    """Send ``count`` predictions; every answer must be right. Their prediction ids."""
    ids = set()
    for i in range(count):
        years = i % 7
        response = app.client.post("/predict", json={"years": years, "education": "master"})
        assert response.status_code == 200, response.text
        assert response.json() == {"prediction": 1000.0 * years + 30000.0, "model_version": "v1"}
        assert response.headers[semconv.MODEL_VERSION_HEADER] == "v1"
        ids.add(response.headers[semconv.PREDICTION_ID_HEADER])
    assert len(ids) == count
    return ids


def _sdk_counts(sink: GrpcSink) -> tuple[int, dict[str, int]]:
    """The SDK's own counters as last exported: events exported, and dropped by reason."""
    exported = sum(p.as_int for p in sink.consumer.latest_points(semconv.SDK_EVENTS_EXPORTED_METRIC).values())
    dropped = {
        dict(key)[semconv.DROP_REASON]: point.as_int
        for key, point in sink.consumer.latest_points(semconv.SDK_EVENTS_DROPPED_METRIC).items()
    }
    return exported, dropped


def _accounted_for(sink: GrpcSink, predictions: int) -> Callable[[], tuple[int, dict[str, int]] | None]:
    def check() -> tuple[int, dict[str, int]] | None:
        exported, dropped = _sdk_counts(sink)
        return (exported, dropped) if exported + sum(dropped.values()) == predictions else None

    return check


@pytest.fixture(autouse=True)
def otlp_exporters(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default exporters (OTLP), whatever another test module set in this process."""
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def port() -> Iterator[int]:
    yield free_port()


def test_collector_down_queue_bounded_and_drops_counted_once_it_is_back(
    port: int, start_app: Callable[..., AppProcess]
) -> None:
    """With nothing listening, every request is answered; the queue holds at most QUEUE events and
    the rest are dropped as ``queue_full``; when a collector comes back on the same port, the
    queued events and the drop counts arrive, accounting for every prediction."""
    env = telemetry_env(
        f"http://127.0.0.1:{port}",
        OTEL_BLRP_MAX_QUEUE_SIZE=str(QUEUE),
        OTEL_BLRP_MAX_EXPORT_BATCH_SIZE=str(BATCH),
        # each export keeps retrying for a few seconds, so the queue fills behind it
        OTEL_EXPORTER_OTLP_TIMEOUT="4",
    )
    app = start_app(env)
    predictions = 600
    ids = _answers_correctly(app, predictions)

    sink = GrpcSink(port)  # the collector comes back on the same address
    try:
        exported, dropped = wait_until(
            _accounted_for(sink, predictions), 60, "exported + dropped to account for every prediction"
        )
        # While the collector was down, the SDK held at most the queue and the one batch being
        # retried: that is all that can reach the collector once it is back.
        assert 0 < exported <= QUEUE + BATCH
        assert set(dropped) <= {"queue_full", "export_failed"}
        assert dropped["queue_full"] > 0
        received = [
            e.attributes[semconv.PREDICTION_ID] for e in sink.consumer.events(semconv.PREDICTION_EVENT)
        ]
        assert len(received) == len(set(received)) == exported
        assert set(received) <= ids
        # The app keeps serving once the collector is back, and those events arrive.
        later = _answers_correctly(app, 5)
        wait_until(
            lambda: (
                later
                <= {
                    e.attributes[semconv.PREDICTION_ID]
                    for e in sink.consumer.events(semconv.PREDICTION_EVENT)
                }
            ),
            30,
            "the events of requests after the collector came back",
        )
        app.stop()  # while a collector listens, so the shutdown flush is quick
    finally:
        sink.stop()


def test_collector_answering_unavailable_failures_counted_as_export_failed(
    port: int, start_app: Callable[..., AppProcess]
) -> None:
    """A collector that answers every export ``UNAVAILABLE``: every request is still answered;
    the refused events are counted ``export_failed``, which a healthy collector on the same port
    then receives, and exported + dropped accounts for every prediction."""
    collector = UnavailableCollector(port)
    sink: GrpcSink | None = None
    try:
        env = telemetry_env(f"http://127.0.0.1:{port}", OTEL_BLRP_MAX_EXPORT_BATCH_SIZE=str(BATCH))
        app = start_app(env)
        predictions = 150
        ids = _answers_correctly(app, predictions)
        # Every event has been offered to the failing collector (and refused) at least once.
        wait_until(lambda: collector.prediction_ids >= ids, 30, "every event to reach the erroring collector")
        collector.stop()

        sink = GrpcSink(port)
        exported, dropped = wait_until(
            _accounted_for(sink, predictions), 60, "exported + dropped to account for every prediction"
        )
        assert set(dropped) == {"export_failed"}
        # Only the batch being retried when the collector recovered can have got through.
        assert dropped["export_failed"] >= predictions - BATCH
        assert len(sink.consumer.events(semconv.PREDICTION_EVENT)) == exported
        app.stop()  # while a collector listens, so the shutdown flush is quick
    finally:
        if sink is not None:
            sink.stop()
        collector.stop()


def test_shutdown_with_the_collector_down_ends_by_itself(
    port: int, start_app: Callable[..., AppProcess]
) -> None:
    """The lifespan flush gives up after SHUTDOWN_FLUSH_MILLIS: the app exits on SIGTERM by itself
    (the SDK's batch processors ignore flush timeouts, and the exporters' own warnings refilled the
    log queue, so it used to hang until killed)."""
    app = start_app(telemetry_env(f"http://127.0.0.1:{port}", OTEL_EXPORTER_OTLP_TIMEOUT="10"))
    _answers_correctly(app, 50)
    assert app.stop() == -signal.SIGTERM  # uvicorn re-raises SIGTERM; a kill would be -SIGKILL


def test_grpc_exporters_encode_a_batch_once_however_often_it_is_retried(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's gRPC exporters rebuild the request on every retry; with the collector answering
    ``UNAVAILABLE`` that held the GIL four times per batch and doubled the app's p99. The span
    exporter modeltel creates encodes a batch once, and still retries it."""
    collector = UnavailableCollector(port)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "4")  # attempts at about 0, 1 and 3 s
    encoded: list[int] = []

    def counting_encode_spans(spans: Any) -> Any:
        encoded.append(len(spans))
        return encode_spans(spans)

    monkeypatch.setattr(grpc_trace_exporter, "encode_spans", counting_encode_spans)
    span = TracerProvider().get_tracer("resilience-test").start_span("request")
    span.end()
    exporter = signal_exporter("traces", "grpc")
    try:
        assert exporter.export([span]) is SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
        collector.stop()
    assert collector.calls >= 2  # retried
    assert encoded == [1]  # encoded once


def test_grpc_exporters_cap_the_reconnect_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """gRPC's reconnect backoff grows to 120 s by default, and exporters to one address share it:
    after a long outage, exports failed for up to two minutes after the collector was back.
    Every gRPC exporter modeltel creates caps it."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    from modeltel._transports import GrpcEventTransport

    exporters = [signal_exporter(signal, "grpc") for signal in ("traces", "metrics", "logs")]
    exporters.append(GrpcEventTransport())
    try:
        for exporter in exporters:
            assert ("grpc.max_reconnect_backoff_ms", 5000) in exporter._channel_options
    finally:
        for exporter in exporters:
            exporter.shutdown()
