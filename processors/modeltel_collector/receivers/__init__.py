"""OTLP receivers: gRPC and HTTP, both handing decoded requests to one :class:`Consumer`."""

from modeltel_collector.receivers.consumer import (
    ACCEPTED,
    Consumer,
    ExportOutcome,
    InvalidPayload,
    Overloaded,
)
from modeltel_collector.receivers.errors import Failure, failure_for
from modeltel_collector.receivers.otlp_grpc import GrpcReceiver
from modeltel_collector.receivers.otlp_http import http_receiver_app

__all__ = [
    "ACCEPTED",
    "Consumer",
    "ExportOutcome",
    "Failure",
    "GrpcReceiver",
    "InvalidPayload",
    "Overloaded",
    "failure_for",
    "http_receiver_app",
]
