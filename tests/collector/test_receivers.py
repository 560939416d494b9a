"""The OTLP receivers answer every kind of request as the OTLP specification says.

Real servers (grpcio on an ephemeral port, the Starlette app under uvicorn in a thread) and real
clients: the OpenTelemetry Python exporters, raw grpc calls, httpx, and OTLP/JSON bodies written
by hand from the specification.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
import time
import tracemalloc
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
from google.protobuf.message import DecodeError
from google.rpc.error_details_pb2 import BadRequest, RetryInfo
from google.rpc.status_pb2 import Status
from grpc_status import rpc_status
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc import LogsServiceStub
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.proto.trace.v1.trace_pb2 import Status as SpanStatus
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    InMemoryLogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from modeltel_collector.extract import Extraction, extract_logs
from modeltel_collector.otlp_values import any_value, attributes
from modeltel_collector.receivers import (
    ExportOutcome,
    GrpcReceiver,
    InvalidPayload,
    Overloaded,
    http_receiver_app,
)
from modeltel_collector.receivers.errors import PayloadTooLarge
from modeltel_collector.receivers.otlp_http import MAX_BODY_BYTES, inflate
from tests.otlp_sink import RecordingConsumer, free_port, wait_until

PROTOBUF = {"Content-Type": "application/x-protobuf"}
PROTOBUF_GZIP = {**PROTOBUF, "Content-Encoding": "gzip"}
JSON = {"Content-Type": "application/json"}
SERVICES = {
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
}
GARBAGE = b"\xff\xff\xff\xff not protobuf"
TRACE_ID = "5b8efff798038103d269b633813fc60c"
SPAN_ID = "eee19b7ec3c1b174"


# --------------------------------------------------------------------------- servers and clients


class ScriptedConsumer(RecordingConsumer):
    """Records like the sink; answers calls from a script first (an outcome or an exception)."""

    def __init__(self) -> None:
        super().__init__()
        self._script: deque[ExportOutcome | Exception] = deque()
        self.calls = 0

    def then(self, *answers: ExportOutcome | Exception) -> None:
        self._script.extend(answers)

    def _answer(self, record: Callable[[], ExportOutcome]) -> ExportOutcome:
        with self._lock:
            self.calls += 1
            answer = self._script.popleft() if self._script else None
        if isinstance(answer, Exception):
            raise answer
        outcome = record()
        return outcome if answer is None else answer

    def consume_logs(self, payload: bytes) -> ExportOutcome:
        return self._answer(lambda: RecordingConsumer.consume_logs(self, payload))

    def consume_traces(self, request: ExportTraceServiceRequest) -> ExportOutcome:
        return self._answer(lambda: RecordingConsumer.consume_traces(self, request))

    def consume_metrics(self, request: ExportMetricsServiceRequest) -> ExportOutcome:
        return self._answer(lambda: RecordingConsumer.consume_metrics(self, request))


class UvicornThread:
    """An ASGI app served by uvicorn in a daemon thread, as ``tests.otlp_sink.HttpSink`` does."""

    def __init__(self, app: Any) -> None:
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_until(lambda: self._server.started, 10, "the OTLP/HTTP receiver to start")
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


@pytest.fixture
def consumer() -> ScriptedConsumer:
    return ScriptedConsumer()


@pytest.fixture
def grpc_receiver(consumer: ScriptedConsumer) -> Iterator[GrpcReceiver]:
    receiver = GrpcReceiver(consumer, "127.0.0.1:0").start()
    yield receiver
    receiver.stop()


@pytest.fixture
def channel(grpc_receiver: GrpcReceiver) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_receiver.port}") as channel:
        yield channel


@pytest.fixture
def http_server(consumer: ScriptedConsumer) -> Iterator[UvicornThread]:
    server = UvicornThread(http_receiver_app(consumer))
    yield server
    server.stop()


@pytest.fixture
def client(http_server: UvicornThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=http_server.url, timeout=30) as client:
        yield client


# --------------------------------------------------------------------------- telemetry to export


def some_logs() -> Any:
    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create({"service.name": "salary-api"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger("modeltel.test")
    for i in range(3):
        logger.emit(
            event_name="ml.prediction",
            body="predicted",
            attributes={"ml.model.name": "salary", "ml.feature.years": float(i), "index": i},
        )
    return memory.get_finished_logs()


def some_spans() -> Any:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "salary-api"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("modeltel.test").start_as_current_span("POST /predict") as span:
        span.set_attribute("http.route", "/predict")
    return memory.get_finished_spans()


def some_metrics() -> Any:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("modeltel.test").create_counter("ml.predictions").add(7, {"ml.model.name": "salary"})
    return reader.get_metrics_data()


def log_request(**record: Any) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.add(**record)
    return request


def exported_records(consumer: RecordingConsumer) -> list[dict[str, Any]]:
    return [event.attributes for event in consumer.events("ml.prediction")]


def check_all_three_signals_arrived(consumer: ScriptedConsumer) -> None:
    assert [a["index"] for a in exported_records(consumer)] == [0, 1, 2]
    assert {e.resource["service.name"] for e in consumer.records()} == {"salary-api"}
    [span] = consumer.spans()
    assert span.name == "POST /predict" and len(span.trace_id) == 16
    [(attrs, point)] = consumer.metric_points("ml.predictions")
    assert attrs == {"ml.model.name": "salary"} and point.as_int == 7


# --------------------------------------------------------------------------- gRPC


@pytest.mark.parametrize("compression", [None, grpc.Compression.Gzip], ids=["plain", "gzip"])
def test_grpc_exporters_deliver_all_three_signals(grpc_receiver, consumer, compression):
    endpoint = f"http://127.0.0.1:{grpc_receiver.port}"
    logs = GrpcLogExporter(endpoint=endpoint, insecure=True, compression=compression)
    spans = GrpcSpanExporter(endpoint=endpoint, insecure=True, compression=compression)
    metrics = GrpcMetricExporter(endpoint=endpoint, insecure=True, compression=compression)
    try:
        assert logs.export(some_logs()) == LogRecordExportResult.SUCCESS
        assert spans.export(some_spans()) == SpanExportResult.SUCCESS
        assert metrics.export(some_metrics()) == MetricExportResult.SUCCESS
    finally:
        for exporter in (logs, spans, metrics):
            exporter.shutdown()
    check_all_three_signals_arrived(consumer)


def test_grpc_full_success_leaves_partial_success_unset(channel, consumer):
    response = LogsServiceStub(channel).Export(log_request(event_name="ml.prediction"), timeout=10)
    assert not response.HasField("partial_success")
    assert len(consumer.logs) == 1


def test_grpc_partial_success_reaches_the_client(channel, consumer):
    consumer.then(ExportOutcome(rejected=2, error_message="2 events lack the attribute 'ml.model.name'"))
    response = LogsServiceStub(channel).Export(log_request(event_name="ml.prediction"), timeout=10)
    assert response.partial_success.rejected_log_records == 2
    assert response.partial_success.error_message == "2 events lack the attribute 'ml.model.name'"

    consumer.then(ExportOutcome(rejected=1, error_message="span without a route"))
    spans = ExportTraceServiceRequest()
    spans.resource_spans.add().scope_spans.add().spans.add(name="x")
    trace_response: ExportTraceServiceResponse = TraceServiceStub(channel).Export(spans, timeout=10)
    assert trace_response.partial_success.rejected_spans == 1
    assert trace_response.partial_success.error_message == "span without a route"


@pytest.mark.parametrize("signal", sorted(SERVICES))
def test_grpc_undecodable_payload_is_invalid_argument(channel, consumer, signal):
    with pytest.raises(DecodeError):
        ExportLogsServiceRequest.FromString(GARBAGE)
    export = channel.unary_unary(SERVICES[signal], request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as raised:
        export(GARBAGE, timeout=10)
    error: Any = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid protobuf Export" in error.details()
    status = rpc_status.from_call(error)
    assert status is not None and status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad_request = BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert "not a valid protobuf" in bad_request.field_violations[0].description
    # Logs reach the consumer serialized, and it refuses them (here RecordingConsumer, as the
    # collector's extraction does); traces and metrics are refused before.
    called = 1 if signal == "logs" else 0
    assert consumer.calls == called
    assert consumer.logs == []

    # the server goes on serving
    assert export(b"", timeout=10) == b""  # an empty request is a valid, empty, export
    assert consumer.calls == called + 1


class ExtractingConsumer(RecordingConsumer):
    """Logs go through the collector's extraction, as in ``Pipeline.consume_logs``."""

    def __init__(self) -> None:
        super().__init__()
        self.extracted: list[Extraction] = []

    def consume_logs(self, payload: bytes) -> ExportOutcome:
        extraction = extract_logs(payload)
        self.extracted.append(extraction)
        return extraction.outcome


def test_grpc_logs_the_extraction_cannot_decode_are_invalid_argument_with_upb_message():
    consumer = ExtractingConsumer()
    receiver = GrpcReceiver(consumer, "127.0.0.1:0").start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
            stub = LogsServiceStub(channel)
            good = log_request(event_name="ml.prediction")
            attrs = good.resource_logs[0].scope_logs[0].log_records[0].attributes
            for key, value in (("ml.model.name", "m"), ("ml.model.version", "v"), ("ml.prediction.id", "p")):
                attrs.add(key=key).value.string_value = value
            assert not stub.Export(good, timeout=10).HasField("partial_success")
            assert consumer.extracted[-1].prediction_count == 1

            # A string that is not UTF-8 (the encoder does not check): upb refuses the request.
            payload = good.SerializeToString().replace(b"\x0a\x01p", b"\x0a\x01\xff")
            with pytest.raises(DecodeError) as upb:
                ExportLogsServiceRequest.FromString(payload)
            export = channel.unary_unary(
                SERVICES["logs"], request_serializer=None, response_deserializer=None
            )
            with pytest.raises(grpc.RpcError) as raised:
                export(payload, timeout=10)
            error: Any = raised.value
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error.details() == (
                f"the payload is not a valid protobuf ExportLogsServiceRequest: {upb.value}"
            )
            assert len(consumer.extracted) == 1
    finally:
        receiver.stop()


def test_grpc_overload_is_unavailable_with_retry_info_in_details_and_trailer(channel, consumer):
    consumer.then(Overloaded(retry_after_seconds=0.25))
    with pytest.raises(grpc.RpcError) as raised:
        LogsServiceStub(channel).Export(log_request(event_name="ml.prediction"), timeout=10)
    error: Any = raised.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "overloaded" in error.details()

    trailer = dict(error.trailing_metadata())["google.rpc.retryinfo-bin"]
    retry_info = RetryInfo.FromString(trailer)
    assert retry_info.retry_delay.ToNanoseconds() == 250_000_000

    status = rpc_status.from_call(error)
    assert status is not None and status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    detail = RetryInfo()
    assert status.details[0].Unpack(detail) and detail == retry_info
    assert consumer.logs == []


def test_grpc_exporter_waits_the_retry_delay_then_succeeds(grpc_receiver, consumer, caplog):
    consumer.then(Overloaded(retry_after_seconds=0.3))  # overloaded for the first call only
    exporter = GrpcLogExporter(endpoint=f"http://127.0.0.1:{grpc_receiver.port}", insecure=True, timeout=10)
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING):
            assert exporter.export(some_logs()) == LogRecordExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert time.monotonic() - started >= 0.3
    assert consumer.calls == 2
    assert len(exported_records(consumer)) == 3  # delivered once
    # the exporter took its delay from RetryInfo (its own backoff would be 0.8 to 1.2 s)
    assert "retrying in 0.30s" in caplog.text


def test_grpc_consumer_bug_is_internal_logged_and_the_server_keeps_serving(channel, consumer, caplog):
    consumer.then(RuntimeError("the drift processor exploded"))
    stub = LogsServiceStub(channel)
    with (
        caplog.at_level(logging.ERROR, logger="modeltel_collector.receivers"),
        pytest.raises(grpc.RpcError) as raised,
    ):
        stub.Export(log_request(event_name="ml.prediction"), timeout=10)
    error: Any = raised.value
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "RuntimeError: the drift processor exploded" in error.details()
    assert "the drift processor exploded" in caplog.text  # logged with its traceback
    assert any(r.exc_info for r in caplog.records)

    response = stub.Export(log_request(event_name="ml.prediction"), timeout=10)
    assert not response.HasField("partial_success")
    assert len(consumer.logs) == 1


def test_grpc_consumer_may_refuse_a_whole_request_as_invalid(channel, consumer):
    consumer.then(InvalidPayload("the resource has no service.name"))
    with pytest.raises(grpc.RpcError) as raised:
        LogsServiceStub(channel).Export(log_request(), timeout=10)
    error: Any = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "the resource has no service.name"


# --------------------------------------------------------------------------- HTTP with protobuf


@pytest.mark.parametrize(
    "compression",
    [HttpCompression.NoCompression, HttpCompression.Gzip, HttpCompression.Deflate],
    ids=["plain", "gzip", "deflate"],
)
def test_http_exporters_deliver_all_three_signals(http_server, consumer, compression):
    url = http_server.url
    logs = HttpLogExporter(endpoint=f"{url}/v1/logs", compression=compression)
    spans = HttpSpanExporter(endpoint=f"{url}/v1/traces", compression=compression)
    metrics = HttpMetricExporter(endpoint=f"{url}/v1/metrics", compression=compression)
    try:
        assert logs.export(some_logs()) == LogRecordExportResult.SUCCESS
        assert spans.export(some_spans()) == SpanExportResult.SUCCESS
        assert metrics.export(some_metrics()) == MetricExportResult.SUCCESS
    finally:
        for exporter in (logs, spans, metrics):
            exporter.shutdown()
    check_all_three_signals_arrived(consumer)


def test_http_protobuf_full_and_partial_success(client, consumer):
    body = log_request(event_name="ml.prediction").SerializeToString()
    response = client.post("/v1/logs", content=body, headers=PROTOBUF)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    assert not ExportLogsServiceResponse.FromString(response.content).HasField("partial_success")

    consumer.then(ExportOutcome(rejected=2, error_message="attribute 'ml.model.name' is missing"))
    response = client.post("/v1/logs", content=gzip.compress(body), headers=PROTOBUF_GZIP)
    assert response.status_code == 200
    partial = ExportLogsServiceResponse.FromString(response.content).partial_success
    assert (partial.rejected_log_records, partial.error_message) == (
        2,
        "attribute 'ml.model.name' is missing",
    )

    # an empty request is a success too
    response = client.post("/v1/traces", content=b"", headers=PROTOBUF)
    assert response.status_code == 200 and response.content == b""


def test_http_undecodable_protobuf_is_400_with_a_status_body(client, consumer):
    response = client.post("/v1/logs", content=GARBAGE, headers=PROTOBUF)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/x-protobuf"
    status = Status.FromString(response.content)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "not a valid protobuf ExportLogsServiceRequest" in status.message
    assert status.details[0].Is(BadRequest.DESCRIPTOR)

    response = client.post("/v1/logs", content=b"not gzip at all", headers=PROTOBUF_GZIP)
    assert response.status_code == 400
    assert "not valid gzip" in Status.FromString(response.content).message

    truncated = gzip.compress(log_request(event_name="x").SerializeToString())[:-6]
    response = client.post("/v1/logs", content=truncated, headers=PROTOBUF_GZIP)
    assert response.status_code == 400
    assert "truncated" in Status.FromString(response.content).message
    assert consumer.calls == 1  # only the garbage reached it (logs are decoded by the consumer)
    assert consumer.logs == []


def test_http_unsupported_media_is_415(client, consumer):
    response = client.post("/v1/logs", content=b"hello", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert "unsupported Content-Type 'text/plain'" in Status.FromString(response.content).message

    headers = {**PROTOBUF, "Content-Encoding": "br"}
    response = client.post("/v1/logs", content=b"hello", headers=headers)
    assert response.status_code == 415
    assert "Content-Encoding 'br'" in Status.FromString(response.content).message
    assert consumer.calls == 0


def test_http_wrong_method_and_unknown_path(client):
    assert client.get("/v1/logs").status_code == 405
    assert client.get("/").status_code == 404
    assert client.post("/v1/unknown", content=b"", headers=PROTOBUF).status_code == 404


def test_http_overload_is_429_with_retry_after_and_retry_info(client, consumer):
    consumer.then(Overloaded(retry_after_seconds=0.25))
    body = log_request(event_name="ml.prediction").SerializeToString()
    response = client.post("/v1/logs", content=body, headers=PROTOBUF)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"  # whole seconds, rounded up
    status = Status.FromString(response.content)
    retry_info = RetryInfo()
    assert status.details[0].Unpack(retry_info)
    assert retry_info.retry_delay.ToNanoseconds() == 250_000_000
    assert consumer.logs == []


def test_http_exporter_honours_retry_after_then_succeeds(http_server, consumer, caplog):
    consumer.then(Overloaded(retry_after_seconds=1))  # overloaded for the first call only
    exporter = HttpLogExporter(endpoint=f"{http_server.url}/v1/logs", timeout=10)
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING):
            assert exporter.export(some_logs()) == LogRecordExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert time.monotonic() - started >= 1
    assert consumer.calls == 2
    assert len(exported_records(consumer)) == 3
    assert "retrying in 1.00s" in caplog.text


def test_http_consumer_bug_is_500_and_the_server_keeps_serving(client, consumer, caplog):
    consumer.then(ZeroDivisionError("division by zero in a processor"))
    body = log_request(event_name="ml.prediction").SerializeToString()
    with caplog.at_level(logging.ERROR, logger="modeltel_collector.receivers"):
        response = client.post("/v1/logs", content=body, headers=PROTOBUF)
    assert response.status_code == 500
    status = Status.FromString(response.content)
    assert status.code == grpc.StatusCode.INTERNAL.value[0]
    assert "ZeroDivisionError: division by zero in a processor" in status.message
    assert "division by zero in a processor" in caplog.text

    assert client.post("/v1/logs", content=body, headers=PROTOBUF).status_code == 200
    assert len(consumer.logs) == 1


# --------------------------------------------------------------------------- HTTP size limits


def logs_of_size(size: int) -> bytes:
    """A valid ExportLogsServiceRequest serialising to exactly ``size`` bytes."""
    request = log_request(event_name="ml.prediction")
    record = request.resource_logs[0].scope_logs[0].log_records[0]
    padding = size
    for _ in range(10):
        record.body.string_value = "x" * padding
        excess = request.ByteSize() - size
        if excess == 0:
            return request.SerializeToString()
        padding -= excess
    raise AssertionError(f"cannot build a request of exactly {size} bytes")


def test_http_body_over_20_mib_after_gunzip_is_413(client, consumer):
    headers = PROTOBUF_GZIP
    at_limit = gzip.compress(logs_of_size(MAX_BODY_BYTES), compresslevel=1)
    response = client.post("/v1/logs", content=at_limit, headers=headers)
    assert response.status_code == 200
    assert len(consumer.logs) == 1

    over = gzip.compress(logs_of_size(MAX_BODY_BYTES + 1), compresslevel=1)
    assert len(over) < MAX_BODY_BYTES // 100  # small on the wire, too big inflated
    response = client.post("/v1/logs", content=over, headers=headers)
    assert response.status_code == 413
    assert "exceeds 20971520 bytes after decompression" in Status.FromString(response.content).message
    assert consumer.calls == 1


def test_http_body_over_20_mib_uncompressed_is_413_even_without_content_length(client, consumer):
    body = logs_of_size(MAX_BODY_BYTES + 1)

    def chunked() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for start in range(0, len(body), 1 << 20):
            yield body[start : start + (1 << 20)]

    response = client.post("/v1/logs", content=chunked(), headers=PROTOBUF)
    assert response.status_code == 413
    assert consumer.calls == 0


def test_http_declared_oversize_body_is_refused_before_it_is_sent(http_server, consumer):
    """A Content-Length over the limit is answered 413 at once: the server never waits for the body."""
    with socket.create_connection(("127.0.0.1", http_server.port), timeout=10) as connection:
        connection.sendall(
            b"POST /v1/logs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1)
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = connection.recv(65536)
            assert chunk, "the server closed the connection without answering"
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert consumer.calls == 0


def test_inflate_stops_a_compression_bomb_at_the_limit():
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(512)) + compressor.flush()  # 512 MiB
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge):
            inflate(bomb, "gzip", limit=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # never inflated past the 1 MiB limit (plus working buffers)


def test_inflate_reads_concatenated_gzip_members_and_deflate():
    assert inflate(gzip.compress(b"abc") + gzip.compress(b"def"), "gzip", 100) == b"abcdef"
    assert inflate(zlib.compress(b"abc"), "deflate", 100) == b"abc"
    assert inflate(gzip.compress(b"x" * 100), "gzip", 100) == b"x" * 100
    with pytest.raises(PayloadTooLarge):
        inflate(gzip.compress(b"x" * 101), "gzip", 100)
    with pytest.raises(InvalidPayload):
        inflate(gzip.compress(b"abc") + b"trailing garbage", "gzip", 100)


# --------------------------------------------------------------------------- HTTP with OTLP/JSON


def json_logs() -> dict[str, Any]:
    """Written from the OTLP specification and its examples/logs.json, plus fields from the future."""
    return {
        "resourceLogs": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "salary-api"}}],
                    "droppedAttributesCount": 0,
                    "entityRefs": [{"type": "service", "idKeys": ["service.name"]}],
                },
                "scopeLogs": [
                    {
                        "scope": {"name": "modeltel", "version": "0.1.0", "attributes": []},
                        "logRecords": [
                            {
                                "timeUnixNano": "1544712660300000000",
                                "observedTimeUnixNano": "1544712660300000001",
                                "severityNumber": 9,
                                "severityText": "INFO",
                                "eventName": "ml.prediction",
                                "traceId": TRACE_ID.upper(),
                                "spanId": SPAN_ID,
                                "flags": 1,
                                "body": {"stringValue": "predicted"},
                                "attributes": [
                                    {"key": "ml.model.name", "value": {"stringValue": "salary"}},
                                    {"key": "ml.feature.years", "value": {"doubleValue": 3.5}},
                                    {"key": "ml.feature.rooms", "value": {"intValue": "9007199254740993"}},
                                    {"key": "ml.feature.remote", "value": {"boolValue": True}},
                                    {
                                        "key": "ml.feature.tags",
                                        "value": {"arrayValue": {"values": [{"stringValue": "a"}]}},
                                    },
                                ],
                                "aFieldFromTheFuture": {"nested": [1, "two"]},
                            },
                            {
                                "timeUnixNano": 1544712660300000000,
                                "eventName": "ml.prediction",
                                "traceId": TRACE_ID,
                                "spanId": SPAN_ID.upper(),
                                "attributes": [
                                    {"key": "ml.model.name", "value": {"stringValue": "salary"}},
                                    {"key": "ml.feature.rooms", "value": {"intValue": 9007199254740993}},
                                    {"key": "ml.feature.score", "value": {"doubleValue": "NaN"}},
                                ],
                            },
                        ],
                    }
                ],
                "schemaUrl": "https://opentelemetry.io/schemas/1.26.0",
            }
        ]
    }


def test_http_json_logs_decode_per_the_spec(client, consumer):
    response = client.post("/v1/logs", content=json.dumps(json_logs()), headers=JSON)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {}

    [request] = consumer.logs
    resource_logs = request.resource_logs[0]
    assert attributes(resource_logs.resource.attributes) == {"service.name": "salary-api"}
    assert resource_logs.schema_url == "https://opentelemetry.io/schemas/1.26.0"
    first, second = resource_logs.scope_logs[0].log_records
    for record in (first, second):
        assert record.trace_id.hex() == TRACE_ID  # hex, case-insensitive; not base64
        assert record.span_id.hex() == SPAN_ID
        assert record.time_unix_nano == 1544712660300000000  # as a string and as a number
        assert record.event_name == "ml.prediction"
    assert first.observed_time_unix_nano == 1544712660300000001
    assert first.severity_number == 9 and first.severity_text == "INFO" and first.flags == 1
    assert any_value(first.body) == "predicted"
    assert attributes(first.attributes) == {
        "ml.model.name": "salary",
        "ml.feature.years": 3.5,
        "ml.feature.rooms": 9007199254740993,  # int64 beyond 2**53, exact
        "ml.feature.remote": True,
        "ml.feature.tags": ["a"],
    }
    second_attributes = attributes(second.attributes)
    assert second_attributes["ml.feature.rooms"] == 9007199254740993
    assert second_attributes["ml.feature.score"] != second_attributes["ml.feature.score"]  # NaN
    assert second.severity_number == 0 and not second.HasField("body")


def test_http_json_traces_and_metrics_decode_per_the_spec(client, consumer):
    traces = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "salary-api"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "fastapi"},
                        "spans": [
                            {
                                "traceId": TRACE_ID,
                                "spanId": SPAN_ID,
                                "parentSpanId": "eee19b7ec3c1b173",
                                "name": "POST /predict",
                                "kind": 2,
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": 1544712661000000000,
                                "attributes": [{"key": "http.route", "value": {"stringValue": "/predict"}}],
                                "events": [{"timeUnixNano": "1544712660500000000", "name": "ml.prediction"}],
                                "links": [{"traceId": TRACE_ID.upper(), "spanId": "eee19b7ec3c1b172"}],
                                "status": {"code": 2, "message": "boom"},
                                "unknownSpanField": 42,
                            }
                        ],
                    }
                ],
            }
        ]
    }
    response = client.post("/v1/traces", content=json.dumps(traces), headers=JSON)
    assert (response.status_code, response.json()) == (200, {})
    [span] = consumer.spans()
    assert span.trace_id.hex() == TRACE_ID and span.span_id.hex() == SPAN_ID
    assert span.parent_span_id.hex() == "eee19b7ec3c1b173"
    assert span.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (1544712660000000000, 1544712661000000000)
    assert attributes(span.attributes) == {"http.route": "/predict"}
    assert span.events[0].time_unix_nano == 1544712660500000000 and span.events[0].name == "ml.prediction"
    assert span.links[0].trace_id.hex() == TRACE_ID and span.links[0].span_id.hex() == "eee19b7ec3c1b172"
    assert span.status.code == SpanStatus.StatusCode.STATUS_CODE_ERROR and span.status.message == "boom"

    metrics = {
        "resourceMetrics": [
            {
                "scopeMetrics": [
                    {
                        "metrics": [
                            {
                                "name": "ml.predictions",
                                "unit": "1",
                                "sum": {
                                    "aggregationTemporality": 2,
                                    "isMonotonic": True,
                                    "dataPoints": [
                                        {
                                            "startTimeUnixNano": "1544712660000000000",
                                            "timeUnixNano": 1544712661000000000,
                                            "asInt": "7",
                                            "attributes": [
                                                {"key": "ml.model.name", "value": {"stringValue": "salary"}}
                                            ],
                                        }
                                    ],
                                },
                            },
                            {
                                "name": "ml.latency",
                                "histogram": {
                                    "aggregationTemporality": 1,
                                    "dataPoints": [
                                        {
                                            "count": "3",
                                            "sum": 0,
                                            "bucketCounts": ["1", 2],
                                            "explicitBounds": [0.5],
                                            "exemplars": [{"asDouble": 0.1, "traceId": TRACE_ID}],
                                        }
                                    ],
                                },
                            },
                        ]
                    }
                ]
            }
        ]
    }
    response = client.post("/v1/metrics", content=json.dumps(metrics), headers=JSON)
    assert (response.status_code, response.json()) == (200, {})
    [(attrs, point)] = consumer.metric_points("ml.predictions")
    assert attrs == {"ml.model.name": "salary"} and point.as_int == 7
    assert point.time_unix_nano == 1544712661000000000
    [(_, histogram)] = consumer.metric_points("ml.latency")
    assert histogram.count == 3 and list(histogram.bucket_counts) == [1, 2]
    assert histogram.HasField("sum") and histogram.sum == 0  # an explicit optional zero stays present
    assert not histogram.HasField("min")
    assert histogram.exemplars[0].trace_id.hex() == TRACE_ID


def test_http_json_partial_success_is_json(client, consumer):
    consumer.then(ExportOutcome(rejected=2, error_message="2 events lack the attribute 'ml.model.name'"))
    response = client.post("/v1/logs", content=json.dumps(json_logs()), headers=JSON)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "partialSuccess": {
            "rejectedLogRecords": "2",  # int64: a string in proto3 JSON
            "errorMessage": "2 events lack the attribute 'ml.model.name'",
        }
    }


def test_http_json_with_gzip(client, consumer):
    body = gzip.compress(json.dumps(json_logs()).encode())
    response = client.post("/v1/logs", content=body, headers={**JSON, "Content-Encoding": "gzip"})
    assert (response.status_code, response.json()) == (200, {})
    assert len(consumer.events("ml.prediction")) == 2


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"{not json", "Expecting property name"),
        (b"", "Expecting value"),
        (b"[]", "expected <class 'dict'>"),
        (b'{"resourceLogs": {}}', "expected <class 'list'>"),
        (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "xyz"}]}]}]}', "trace_id"),
        (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "soon"}]}]}]}', "soon"),
        (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"droppedAttributesCount": -1}]}]}]}', "-1"),
        (
            b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"doubleValue": 1%s}}]}]}]}'
            % (b"0" * 400),
            "large",
        ),
        (b"[" * 100_000, "recursion"),
    ],
    ids=[
        "syntax",
        "empty",
        "array",
        "wrong-type",
        "bad-hex",
        "bad-int64",
        "uint32-range",
        "double-range",
        "deep",
    ],
)
def test_http_bad_json_is_400_with_a_json_status(client, consumer, body, complaint):
    response = client.post("/v1/logs", content=body, headers=JSON)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    status = response.json()
    assert status["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "not a valid OTLP/JSON ExportLogsServiceRequest" in status["message"]
    assert complaint in status["message"]
    assert status["details"][0]["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert consumer.calls == 0


def test_http_json_overload_and_bug_answer_json(client, consumer):
    consumer.then(Overloaded(retry_after_seconds=2), RuntimeError("bug"))
    response = client.post("/v1/logs", content=json.dumps(json_logs()), headers=JSON)
    assert response.status_code == 429 and response.headers["retry-after"] == "2"
    assert response.json()["details"][0]["retryDelay"] == "2s"
    response = client.post("/v1/logs", content=json.dumps(json_logs()), headers=JSON)
    assert response.status_code == 500 and "RuntimeError: bug" in response.json()["message"]
    response = client.post("/v1/logs", content=json.dumps(json_logs()), headers=JSON)
    assert (response.status_code, response.json()) == (200, {})
