"""The three OTLP signals, as both transports serve them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from modeltel_collector.receivers.consumer import (
    Consumer,
    ExportOutcome,
    InvalidPayload,
    export_response,
)
from modeltel_collector.receivers.otlp_json import decode_json


@dataclass(frozen=True)
class Signal:
    grpc_service: str
    http_path: str
    request_type: type[Message]
    response_type: type[Message]
    rejected_field: str
    consumer_method: str
    serialized: bool = False
    """The consumer takes the serialized request (``bytes``) and decodes, or refuses, it itself:
    logs, whose extraction reads the wire format (:mod:`modeltel_collector.wire`)."""

    def parse(self, body: bytes) -> Message:
        """Parse a binary protobuf request; :class:`InvalidPayload` if it is not one."""
        try:
            return self.request_type.FromString(body)
        except DecodeError as error:
            raise InvalidPayload(
                f"the payload is not a valid protobuf {self.request_type.__name__}: {error}"
            ) from None

    def decode_protobuf(self, body: bytes) -> Message | bytes:
        """What the consumer gets for a binary protobuf body: the body itself, or its message."""
        return body if self.serialized else self.parse(body)

    def decode_json(self, body: bytes) -> Message | bytes:
        """What the consumer gets for an OTLP/JSON body; :class:`InvalidPayload` if it is not one."""
        message = decode_json(self.request_type, body)
        return message.SerializeToString() if self.serialized else message

    def bind(self, consumer: Consumer) -> Callable[[Any], ExportOutcome]:
        """The consumer's method for this signal."""
        method: Callable[[Any], ExportOutcome] = getattr(consumer, self.consumer_method)
        return method

    def export(self, consume: Callable[[Any], ExportOutcome], decode: Callable[[], Message | bytes]) -> Any:
        """Decode, hand to the consumer, build the response; exceptions are for ``failure_for``."""
        return export_response(self.response_type, self.rejected_field, consume(decode()))


LOGS = Signal(
    "opentelemetry.proto.collector.logs.v1.LogsService",
    "/v1/logs",
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
    "rejected_log_records",
    "consume_logs",
    serialized=True,
)

SIGNALS = (
    LOGS,
    Signal(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        "/v1/traces",
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
        "rejected_spans",
        "consume_traces",
    ),
    Signal(
        "opentelemetry.proto.collector.metrics.v1.MetricsService",
        "/v1/metrics",
        ExportMetricsServiceRequest,
        ExportMetricsServiceResponse,
        "rejected_data_points",
        "consume_metrics",
    ),
)
