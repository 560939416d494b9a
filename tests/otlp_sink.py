"""A real OTLP endpoint for tests: modeltel's gRPC and HTTP receivers recording what arrives."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from modeltel_collector.otlp_values import any_value, attributes
from modeltel_collector.pipeline import Pipeline
from modeltel_collector.receivers import GrpcReceiver, http_receiver_app
from modeltel_collector.receivers.consumer import ACCEPTED, ExportOutcome
from modeltel_collector.receivers.signals import LOGS
from modeltel_collector.state import StateDb
from modeltel_collector.wal import WriteAheadLog


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Event:
    name: str
    attributes: dict[str, Any]
    trace_id: str
    span_id: str
    resource: dict[str, Any]
    severity_text: str
    body: Any


class RecordingConsumer:
    """Keeps every request it receives, logs decoded (they arrive serialized); thread-safe.

    Logs that are not an ``ExportLogsServiceRequest`` are refused as the collector refuses
    them (:class:`InvalidPayload`, INVALID_ARGUMENT / 400) and not kept.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.logs: list[ExportLogsServiceRequest] = []
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []

    def consume_logs(self, payload: bytes) -> ExportOutcome:
        request = LOGS.parse(payload)
        with self._lock:
            self.logs.append(request)
        return ACCEPTED

    def consume_traces(self, request: ExportTraceServiceRequest) -> ExportOutcome:
        with self._lock:
            self.traces.append(request)
        return ACCEPTED

    def consume_metrics(self, request: ExportMetricsServiceRequest) -> ExportOutcome:
        with self._lock:
            self.metrics.append(request)
        return ACCEPTED

    def records(self) -> Iterator[Event]:
        with self._lock:
            requests = list(self.logs)
        for request in requests:
            for resource_logs in request.resource_logs:
                resource = attributes(resource_logs.resource.attributes)
                for scope_logs in resource_logs.scope_logs:
                    for record in scope_logs.log_records:
                        yield Event(
                            record.event_name,
                            attributes(record.attributes),
                            record.trace_id.hex(),
                            record.span_id.hex(),
                            resource,
                            record.severity_text,
                            any_value(record.body),
                        )

    def events(self, name: str) -> list[Event]:
        return [event for event in self.records() if event.name == name]

    def spans(self) -> list[Any]:
        with self._lock:
            requests = list(self.traces)
        return [
            span
            for request in requests
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]

    def metric_points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """Every data point of a metric, in arrival order, with its attributes."""
        with self._lock:
            requests = list(self.metrics)
        points: list[tuple[dict[str, Any], Any]] = []
        for request in requests:
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        if metric.name != name:
                            continue
                        data = getattr(metric, metric.WhichOneof("data"))
                        points.extend((attributes(p.attributes), p) for p in data.data_points)
        return points

    def latest_points(self, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        """The last point of each attribute set (cumulative metrics: the current total)."""
        latest = {}
        for attrs, point in self.metric_points(name):
            latest[tuple(sorted(attrs.items()))] = point
        return latest


class GrpcSink:
    def __init__(self, port: int = 0) -> None:
        self.consumer = RecordingConsumer()
        self.receiver = GrpcReceiver(self.consumer, f"127.0.0.1:{port}").start()
        self.endpoint = f"http://127.0.0.1:{self.receiver.port}"

    def stop(self) -> None:
        self.receiver.stop()


class HttpServer:
    """An ASGI app served by uvicorn in a thread, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        port = free_port()
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_until(lambda: self._server.started, 10, "the HTTP server to start")
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


class HttpSink:
    def __init__(self) -> None:
        self.consumer = RecordingConsumer()
        self._server = HttpServer(http_receiver_app(self.consumer))
        self.endpoint = self._server.url

    def stop(self) -> None:
        self._server.stop()


class NullProcessor:
    """A pipeline processor that does nothing: tests subclass it and override what they record."""

    def process_predictions(self, batch: Any) -> None:
        pass

    def process_labels(self, batch: Any) -> None:
        pass

    def process_spans(self, request: Any) -> None:
        pass

    def tick(self, now_unix_nano: int) -> None:
        pass

    def checkpoint(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass

    def shutdown(self) -> None:
        pass


def open_pipeline(processors: dict[str, Any], meter: Any, data_dir: Path, **options: Any) -> Pipeline:
    """A pipeline with its write-ahead log and state database in ``data_dir``, as the collector builds it."""
    return Pipeline(
        processors, meter, wal=WriteAheadLog(data_dir / "wal"), state=StateDb(data_dir), **options
    )
