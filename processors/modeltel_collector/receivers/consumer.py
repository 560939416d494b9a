"""What a receiver hands OTLP requests to, and how the consumer answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

if TYPE_CHECKING:
    from modeltel_collector.labels import LabelError


@dataclass(frozen=True)
class ExportOutcome:
    """How many items of a request were rejected, and why (empty when all were used).

    A non-empty ``error_message`` with ``rejected == 0`` is a warning: OTLP still reports it
    in ``partial_success``.
    """

    rejected: int = 0
    error_message: str = ""


ACCEPTED = ExportOutcome()


@dataclass(frozen=True)
class LabelsOutcome:
    """How a ``POST /v1/labels`` body was taken: labels accepted, and each record refused, by index."""

    accepted: int
    errors: list[LabelError]


class Overloaded(Exception):
    """Raised by a consumer that cannot take the request now (e.g. its bounded queue is full).

    The client is told to retry after ``retry_after_seconds``: gRPC ``UNAVAILABLE`` with a
    ``google.rpc.RetryInfo``, HTTP 429 with ``Retry-After``.
    """

    def __init__(self, retry_after_seconds: float = 1.0, message: str = "") -> None:
        if retry_after_seconds < 0:
            raise ValueError("retry_after_seconds must not be negative")
        self.retry_after_seconds = retry_after_seconds
        self.message = message or (f"the collector is overloaded; retry in {retry_after_seconds:g} seconds")
        super().__init__(self.message)


class InvalidPayload(Exception):
    """The whole request is permanently unusable (undecodable, malformed): never retry it.

    Receivers raise it for payloads they cannot decode; a consumer may raise it too. Answered
    with gRPC ``INVALID_ARGUMENT`` / HTTP 400. Records that are merely unusable one by one
    belong in an :class:`ExportOutcome` instead (a partial success).
    """


class Consumer(Protocol):
    """Receives every request, whichever transport it came by; called from many threads.

    Logs arrive serialized: the bytes of an ``ExportLogsServiceRequest`` as sent over gRPC or
    OTLP/HTTP protobuf (OTLP/JSON bodies re-encoded), which the consumer decodes itself and
    refuses with :class:`InvalidPayload` if they are not one (extraction reads the wire format,
    see :mod:`modeltel_collector.wire`). Traces and metrics arrive decoded.

    May raise :class:`Overloaded` or :class:`InvalidPayload`; any other exception is a bug,
    answered with gRPC ``INTERNAL`` / HTTP 500 and logged.
    """

    def consume_logs(self, payload: bytes) -> ExportOutcome: ...

    def consume_traces(self, request: ExportTraceServiceRequest) -> ExportOutcome: ...

    def consume_metrics(self, request: ExportMetricsServiceRequest) -> ExportOutcome: ...


@runtime_checkable
class LabelConsumer(Protocol):
    """Optional for a :class:`Consumer`: takes ``POST /v1/labels`` bodies (JSON, decompressed).

    The OTLP/HTTP receiver serves ``/v1/labels`` only when its consumer has this method. It
    parses the body (see :mod:`modeltel_collector.labels`), raising :class:`InvalidPayload`
    or ``PayloadTooLarge`` for a body it cannot use, and takes every valid label of it or
    none, raising :class:`Overloaded` when it cannot.
    """

    def consume_labels(self, payload: bytes) -> LabelsOutcome: ...


def export_response(response_type: Any, rejected_field: str, outcome: ExportOutcome) -> Any:
    """The OTLP response: empty ``partial_success`` on full success, else counts and reason."""
    response = response_type()
    if outcome.rejected or outcome.error_message:
        setattr(response.partial_success, rejected_field, outcome.rejected)
        response.partial_success.error_message = outcome.error_message
    return response
