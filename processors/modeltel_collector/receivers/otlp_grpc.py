"""OTLP over gRPC: the three OTLP services on one grpcio server."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from modeltel_collector.receivers.consumer import Consumer, ExportOutcome, export_response


def _servicer(
    base: type, consume: Callable[[Any], ExportOutcome], response_type: Any, rejected_field: str
) -> Any:
    """A servicer whose ``Export`` hands the request on and reports partial success."""

    class Servicer(base):  # type: ignore[misc, valid-type]
        def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
            return export_response(response_type, rejected_field, consume(request))

    return Servicer()


class GrpcReceiver:
    """An OTLP/gRPC server (default port 4317) feeding a :class:`Consumer`."""

    def __init__(self, consumer: Consumer, endpoint: str = "0.0.0.0:4317", max_workers: int = 4) -> None:
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="otlp-grpc"),
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(
            _servicer(
                logs_service_pb2_grpc.LogsServiceServicer,
                consumer.consume_logs,
                logs_service_pb2.ExportLogsServiceResponse,
                "rejected_log_records",
            ),
            self._server,
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
            _servicer(
                trace_service_pb2_grpc.TraceServiceServicer,
                consumer.consume_traces,
                trace_service_pb2.ExportTraceServiceResponse,
                "rejected_spans",
            ),
            self._server,
        )
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _servicer(
                metrics_service_pb2_grpc.MetricsServiceServicer,
                consumer.consume_metrics,
                metrics_service_pb2.ExportMetricsServiceResponse,
                "rejected_data_points",
            ),
            self._server,
        )
        self.port = self._server.add_insecure_port(endpoint)
        if self.port == 0:
            raise OSError(f"cannot listen on {endpoint}: the address is in use or invalid")

    def start(self) -> GrpcReceiver:
        self._server.start()
        return self

    def stop(self, grace: float | None = 1.0) -> None:
        self._server.stop(grace).wait()
