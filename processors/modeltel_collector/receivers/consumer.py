"""What a receiver hands decoded OTLP requests to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


@dataclass(frozen=True)
class ExportOutcome:
    """How many items of a request were rejected, and why (empty when all were used)."""

    rejected: int = 0
    error_message: str = ""


ACCEPTED = ExportOutcome()


class Consumer(Protocol):
    """Receives every decoded request, whichever transport it came by."""

    def consume_logs(self, request: ExportLogsServiceRequest) -> ExportOutcome: ...

    def consume_traces(self, request: ExportTraceServiceRequest) -> ExportOutcome: ...

    def consume_metrics(self, request: ExportMetricsServiceRequest) -> ExportOutcome: ...


def export_response(response_type: Any, rejected_field: str, outcome: ExportOutcome) -> Any:
    """The OTLP response: empty ``partial_success`` on full success, else counts and reason."""
    response = response_type()
    if outcome.rejected or outcome.error_message:
        setattr(response.partial_success, rejected_field, outcome.rejected)
        response.partial_success.error_message = outcome.error_message
    return response
