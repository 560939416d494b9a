"""OTLP receivers: gRPC and HTTP, both handing decoded requests to one :class:`Consumer`."""

from modeltel_collector.receivers.consumer import Consumer, ExportOutcome
from modeltel_collector.receivers.otlp_grpc import GrpcReceiver
from modeltel_collector.receivers.otlp_http import http_receiver_app

__all__ = ["Consumer", "ExportOutcome", "GrpcReceiver", "http_receiver_app"]
