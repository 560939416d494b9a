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


@dataclass(frozen=True)
class Signal:
    grpc_service: str
    http_path: str
    request_type: type[Message]
    response_type: type[Message]
    rejected_field: str
    consumer_method: str

    def decode_protobuf(self, body: bytes) -> Message:
        """Parse a binary protobuf request; :class:`InvalidPayload` if it is not one."""
        try:
            return self.request_type.FromString(body)
        except DecodeError as error:
            raise InvalidPayload(
                f"the payload is not a valid protobuf {self.request_type.__name__}: {error}"
            ) from None

    def bind(self, consumer: Consumer) -> Callable[[Any], ExportOutcome]:
        """The consumer's method for this signal."""
        method: Callable[[Any], ExportOutcome] = getattr(consumer, self.consumer_method)
        return method

    def export(self, consume: Callable[[Any], ExportOutcome], decode: Callable[[], Message]) -> Any:
        """Decode, hand to the consumer, build the response; exceptions are for ``failure_for``."""
        return export_response(self.response_type, self.rejected_field, consume(decode()))


SIGNALS = (
    Signal(
        "opentelemetry.proto.collector.logs.v1.LogsService",
        "/v1/logs",
        ExportLogsServiceRequest,
        ExportLogsServiceResponse,
        "rejected_log_records",
        "consume_logs",
    ),
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
