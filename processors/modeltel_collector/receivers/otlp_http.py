"""OTLP/HTTP with protobuf bodies, optionally gzip: ``/v1/logs``, ``/v1/traces``, ``/v1/metrics``."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError
from google.rpc.status_pb2 import Status
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
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modeltel_collector.receivers.consumer import Consumer, ExportOutcome, export_response

PROTOBUF = "application/x-protobuf"
MAX_BODY_BYTES = 20 * 1024 * 1024


def _status(code: int, http_status: int, message: str) -> Response:
    """An error answer: a ``google.rpc.Status`` body, as OTLP/HTTP specifies."""
    body = Status(code=code, message=message).SerializeToString()
    return Response(body, status_code=http_status, media_type=PROTOBUF)


def _endpoint(
    request_type: Any,
    response_type: Any,
    rejected_field: str,
    consume: Callable[[Any], ExportOutcome],
) -> Callable[[Request], Any]:
    async def export(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != PROTOBUF:
            return _status(3, 415, f"unsupported content type; send {PROTOBUF}")
        body = await request.body()
        encoding = request.headers.get("content-encoding", "").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding not in ("", "identity"):
                return _status(3, 415, f"unsupported content-encoding {encoding!r}; use gzip")
        except (OSError, zlib.error, EOFError) as error:
            return _status(3, 400, f"the body is not valid {encoding}: {error}")
        if len(body) > MAX_BODY_BYTES:
            return _status(8, 413, f"the body exceeds {MAX_BODY_BYTES} bytes after decompression")
        try:
            message = request_type.FromString(body)
        except DecodeError as error:
            return _status(3, 400, f"the body is not a valid {request_type.__name__}: {error}")
        response = export_response(response_type, rejected_field, consume(message))
        return Response(response.SerializeToString(), media_type=PROTOBUF)

    return export


def http_receiver_app(consumer: Consumer) -> Starlette:
    """An ASGI app serving the three OTLP/HTTP paths; run it with uvicorn (port 4318)."""
    return Starlette(
        routes=[
            Route(
                "/v1/logs",
                _endpoint(
                    ExportLogsServiceRequest,
                    ExportLogsServiceResponse,
                    "rejected_log_records",
                    consumer.consume_logs,
                ),
                methods=["POST"],
            ),
            Route(
                "/v1/traces",
                _endpoint(
                    ExportTraceServiceRequest,
                    ExportTraceServiceResponse,
                    "rejected_spans",
                    consumer.consume_traces,
                ),
                methods=["POST"],
            ),
            Route(
                "/v1/metrics",
                _endpoint(
                    ExportMetricsServiceRequest,
                    ExportMetricsServiceResponse,
                    "rejected_data_points",
                    consumer.consume_metrics,
                ),
                methods=["POST"],
            ),
        ]
    )
