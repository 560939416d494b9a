"""OTLP transports for pre-encoded log requests.

Both reuse the OpenTelemetry exporters' own machinery, so endpoint, headers, TLS,
compression, timeout and retry (with the receiver's ``RetryInfo`` / ``Retry-After``)
follow the standard ``OTEL_EXPORTER_OTLP_*`` variables exactly as for any OTel app.
Only the payload differs: bytes modeltel already encoded, instead of SDK log records.
"""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
    OTLPLogExporter as _GrpcLogExporter,
)
from opentelemetry.exporter.otlp.proto.http._log_exporter import (
    OTLPLogExporter as _HttpLogExporter,
)
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.sdk._logs.export import LogRecordExportResult

from modeltel.events import EncodedBatch
from modeltel.providers import GRPC_CHANNEL_OPTIONS

_EXPORT_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


def _identity(payload: bytes) -> bytes:
    return payload


class _RawLogsStub:
    """A ``LogsService`` stub whose requests are already serialized."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.Export = channel.unary_unary(
            _EXPORT_METHOD,
            request_serializer=_identity,
            response_deserializer=ExportLogsServiceResponse.FromString,
        )


class GrpcEventTransport(_GrpcLogExporter):
    """OTLP/gRPC: the SDK's gRPC log exporter with a pass-through serializer.

    Keyword arguments are the exporter's; ``channel_options`` defaults to
    :data:`~modeltel.providers.GRPC_CHANNEL_OPTIONS` (reconnect within seconds of an outage).
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("channel_options", GRPC_CHANNEL_OPTIONS)
        super().__init__(**kwargs)

    def _initialize_channel_and_stub(self) -> None:
        super()._initialize_channel_and_stub()
        self._client = _RawLogsStub(self._channel)  # type: ignore[assignment]

    def _translate_data(self, data: Any) -> Any:
        return data.payload

    def _count_data(self, data: Any) -> int:
        return int(data.count)

    def send(self, batch: EncodedBatch) -> bool:
        return self._export(batch) is LogRecordExportResult.SUCCESS  # type: ignore[arg-type]


class HttpEventTransport(_HttpLogExporter):
    """OTLP/HTTP with protobuf bodies: the SDK's HTTP client, given our bytes."""

    def send(self, batch: EncodedBatch) -> bool:
        if self._shutdown:
            return False
        with self._metrics.export_operation(batch.count) as result:
            outcome = self._client.export(batch.payload)
            if not outcome.success:
                result.error = outcome.error
            return bool(outcome.success)
