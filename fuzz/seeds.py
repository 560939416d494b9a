"""Seed corpora, generated (no committed blobs): valid inputs in each target's input format.

The requests are what the OpenTelemetry SDK really sends: log records emitted through its
``LoggerProvider`` with ``ml.prediction`` / ``ml.label`` attributes, encoded by the OTLP
exporters' own encoder. Nothing here imports the code under test.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from base64 import b64decode
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from modeltel import semconv

REPO = Path(__file__).resolve().parent.parent
F = semconv.FEATURE_PREFIX

# The HTTP target's header: path, Content-Type, Content-Encoding, compression (see fuzz.http_body).
HTTP_PATHS = ["/v1/logs", "/v1/traces", "/v1/metrics", "/v1/labels"]
HTTP_CONTENT_TYPES = [
    "application/x-protobuf",
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    " application/x-protobuf ;q=1",
    "application/vnd.modeltel+json",
    "text/plain",
    "",
    None,
]
HTTP_ENCODINGS = ["identity", "gzip", "deflate", "GZIP ", "", "br", "gzip, gzip", None]
COMPRESS_NONE, COMPRESS_ONCE = 0, 1
"""Byte 3 of an HTTP input: 0 sends the body as is, 1 compresses it as the header says;
bytes above 1 compress that many copies of it (a small bomb, over the body limit)."""


def _log_records() -> Any:
    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create({"service.name": "salary-api"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger("modeltel.fuzz", "0.1.0")
    model = {semconv.MODEL_NAME: "salary", semconv.MODEL_VERSION: "3"}
    for i in range(3):
        logger.emit(
            event_name=semconv.PREDICTION_EVENT,
            body="predicted",
            attributes={
                **model,
                semconv.PREDICTION_ID: f"p{i}",
                semconv.PREDICTION_VALUE: 40_000.0 + i,
                F + "years": float(i),
                F + "level": "senior" if i else "junior",
                F + "remote": bool(i % 2),
                F + "teams": i,
            },
        )
    logger.emit(
        event_name=semconv.PREDICTION_EVENT,
        attributes={
            **model,
            semconv.PREDICTION_ID: "c1",
            semconv.PREDICTION_VALUE: "fraud",
            semconv.PREDICTION_SCORE: 0.93,
            F + "tags": ["a", "b"],
        },
    )
    logger.emit(
        event_name=semconv.LABEL_EVENT,
        attributes={semconv.MODEL_NAME: "salary", semconv.PREDICTION_ID: "p1", semconv.LABEL_VALUE: 41_250.0},
    )
    logger.emit(  # the legacy event name attribute, and an ordinary application log
        attributes={
            "event.name": semconv.LABEL_EVENT,
            semconv.MODEL_NAME: "salary",
            semconv.PREDICTION_ID: "c1",
        }
        | {semconv.LABEL_VALUE: "fraud"}
    )
    logger.emit(body="GET /health 200", attributes={"http.route": "/health"})
    return memory.get_finished_logs()


def logs_requests() -> list[ExportLogsServiceRequest]:
    """SDK-encoded logs requests: all the records together, and each on its own."""
    records = list(_log_records())
    return [encode_logs(records), *(encode_logs([record]) for record in records)]


def traces_request() -> Message:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "salary-api"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("modeltel.fuzz")
    with tracer.start_as_current_span("POST /predict") as span:
        span.set_attribute("http.route", "/predict")
        with tracer.start_as_current_span("model.predict"):
            pass
    message: Message = encode_spans(memory.get_finished_spans())
    return message


def metrics_request() -> Message:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("modeltel.fuzz")
    meter.create_counter("ml.predictions").add(7, {semconv.MODEL_NAME: "salary"})
    meter.create_histogram("ml.prediction.output").record(41_250.0, {semconv.MODEL_NAME: "salary"})
    data = reader.get_metrics_data()
    assert data is not None
    message: Message = encode_metrics(data)
    return message


_HEX_IDS = {"traceId", "spanId", "parentSpanId"}


def otlp_json(message: Message) -> bytes:
    """OTLP/JSON as the specification writes it: camelCase, ids in hex (not protobuf's base64)."""

    def hex_ids(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: b64decode(v).hex() if k in _HEX_IDS else hex_ids(v) for k, v in value.items()}
        if isinstance(value, list):
            return [hex_ids(item) for item in value]
        return value

    return json.dumps(hex_ids(MessageToDict(message))).encode()


def label_documents() -> list[Any]:
    """``/v1/labels`` bodies: a list, the ``{"labels": ...}`` form, and every kind of record."""
    records: list[Any] = [
        {"model": "salary", "prediction_id": "p1", "value": 41250.0, "time_unix_nano": 1718000000000000000},
        {
            "model": "salary",
            "prediction_id": "p2",
            "value": "senior",
            "time_unix_nano": "1718000000000000000",
        },
        {"model": "churn", "prediction_id": "c1", "value": True},
        {"model": "churn", "prediction_id": "c2", "value": 1, "time_unix_nano": 0},
        {"model": "", "prediction_id": "x", "value": 1},
        {"model": "m", "prediction_id": "p", "value": None},
        None,
    ]
    return [records, {"labels": records}, records[:1], []]


def config_files() -> list[bytes]:
    """The repository's collector configurations, and a few small ones."""
    files = [path.read_bytes() for path in sorted((REPO / "collector-config").glob("modeltel*.yaml"))]
    return [
        *files,
        b"",
        b"processors:\n  drift:\n    window: 10s\n    warmup: 100\n",
        b"receivers:\n  otlp:\n    protocols:\n      http:\n        endpoint: 127.0.0.1:0\n",
        b"models:\n  salary:\n    task: classification\n",
        b"data_dir: /tmp/x\nlimits:\n  max_models: 3\n",
    ]


def http_inputs() -> list[bytes]:
    """Header (path, Content-Type, Content-Encoding, compression, Content-Length, chunks) and body
    for each route (see fuzz.http_body)."""
    logs = logs_requests()[0]
    labels = json.dumps(label_documents()[0]).encode()
    bodies = [
        ("/v1/logs", "application/x-protobuf", logs.SerializeToString()),
        ("/v1/logs", "application/json", otlp_json(logs)),
        ("/v1/traces", "application/x-protobuf", traces_request().SerializeToString()),
        ("/v1/traces", "application/json", otlp_json(traces_request())),
        ("/v1/metrics", "application/x-protobuf", metrics_request().SerializeToString()),
        ("/v1/metrics", "application/json", otlp_json(metrics_request())),
        ("/v1/labels", "application/json", labels),
    ]
    right, none = 0, 2  # Content-Length: the body's, or absent
    out = []
    for path, content_type, body in bodies:
        head = [HTTP_PATHS.index(path), HTTP_CONTENT_TYPES.index(content_type)]
        out.append(bytes([*head, HTTP_ENCODINGS.index("identity"), COMPRESS_NONE, right, 0]) + body)
        out.append(bytes([*head, HTTP_ENCODINGS.index("gzip"), COMPRESS_ONCE, none, 3]) + body)
    # a body sent compressed as it is (Content-Encoding honest, yet compressed by the client)
    out.append(
        bytes([0, 0, HTTP_ENCODINGS.index("gzip"), COMPRESS_NONE, right, 0]) + gzip.compress(b"\x0a\x00")
    )
    out.append(bytes([0, 0, HTTP_ENCODINGS.index("deflate"), 40, right, 1]) + bytes(1000))
    return out


STRUCTURED = b"\x01" + bytes(range(256))
"""An input for a target's structured mode (odd first byte): the rest feeds its generator."""


def seeds(target: str) -> list[bytes]:
    """The seed inputs of ``target``, in its own input format."""
    builders: dict[str, Callable[[], list[bytes]]] = {
        "extract": lambda: [b"\x00" + m.SerializeToString() for m in logs_requests()],
        "otlp-json": lambda: [
            *(b"\x00" + otlp_json(m) for m in logs_requests()[:2]),
            b"\x02" + otlp_json(traces_request()),
            b"\x04" + otlp_json(metrics_request()),
        ],
        "http": http_inputs,
        "labels": lambda: [b"\x00" + json.dumps(d).encode() for d in label_documents()],
        "config": lambda: [b"\x00" + f for f in config_files()],
    }
    return [*builders[target](), STRUCTURED, STRUCTURED[::-1]]


def write_seeds(target: str, directory: Path) -> int:
    """Write ``target``'s seeds into ``directory`` (named by content, as libFuzzer does); how many."""
    directory.mkdir(parents=True, exist_ok=True)
    inputs = seeds(target)
    for data in inputs:
        (directory / f"seed-{hashlib.sha1(data).hexdigest()}").write_bytes(data)
    return len(inputs)
