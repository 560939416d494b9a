"""OTLP over gRPC: the three OTLP services on one grpcio server.

Requests arrive as raw bytes (no grpcio deserializer) and are decoded here (logs: by the
consumer, which takes them serialized), so an undecodable payload is answered
``INVALID_ARGUMENT`` rather than grpcio's own ``INTERNAL``. gzip (and deflate) request
compression is handled by grpcio itself.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from typing import Any, NoReturn

import grpc
from grpc_status import rpc_status

from modeltel_collector.receivers.consumer import Consumer, ExportOutcome
from modeltel_collector.receivers.errors import Failure, failure_for
from modeltel_collector.receivers.security import BearerAuthInterceptor, BearerTokens, TlsFiles
from modeltel_collector.receivers.signals import SIGNALS, Signal

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def abort(context: grpc.ServicerContext, failure: Failure) -> NoReturn:
    """End the call with the failure's code and ``google.rpc.Status``.

    Besides the standard ``grpc-status-details-bin`` trailer, each detail also travels in its own
    ``<full name>-bin`` trailer (``google.rpc.retryinfo-bin``), which is where the OpenTelemetry
    Python exporter looks for ``RetryInfo``.
    """
    status = rpc_status.to_status(failure.status())
    per_detail = tuple(
        (f"{detail.DESCRIPTOR.full_name.lower()}-bin", detail.SerializeToString())
        for detail in failure.details
    )
    context.set_trailing_metadata(tuple(status.trailing_metadata) + per_detail)
    context.abort(status.code, status.details)
    raise AssertionError("unreachable: grpc's abort raises")  # for type checkers


def _export_handler(signal: Signal, consume: Callable[[Any], ExportOutcome]) -> grpc.RpcMethodHandler:
    def export(payload: bytes, context: grpc.ServicerContext) -> Any:
        try:
            return signal.export(consume, lambda: signal.decode_protobuf(payload))
        except Exception as error:
            abort(context, failure_for(error))

    return grpc.unary_unary_rpc_method_handler(
        export,
        request_deserializer=None,  # raw bytes: decoded, and refused, by us
        response_serializer=lambda response: response.SerializeToString(),
    )


class GrpcReceiver:
    """An OTLP/gRPC server (default port 4317) feeding a :class:`Consumer`."""

    def __init__(
        self,
        consumer: Consumer,
        endpoint: str = "0.0.0.0:4317",
        max_workers: int = 4,
        *,
        tokens: BearerTokens | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        """``tokens``: refuse calls without one of them (``UNAUTHENTICATED``); ``tls``: serve TLS."""
        credentials = tls.grpc_credentials() if tls is not None else None  # refused before binding
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="otlp-grpc"),
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
            interceptors=[BearerAuthInterceptor(tokens)] if tokens is not None else None,
        )
        self._server.add_generic_rpc_handlers(
            tuple(
                grpc.method_handlers_generic_handler(
                    signal.grpc_service, {"Export": _export_handler(signal, signal.bind(consumer))}
                )
                for signal in SIGNALS
            )
        )
        if credentials is not None:
            self.port = self._server.add_secure_port(endpoint, credentials)
        else:
            self.port = self._server.add_insecure_port(endpoint)
        if self.port == 0:
            raise OSError(f"cannot listen on {endpoint}: the address is in use or invalid")

    def start(self) -> GrpcReceiver:
        self._server.start()
        return self

    def stop(self, grace: float | None = 1.0) -> None:
        self._server.stop(grace).wait()
