"""Tracer, meter and logger providers: use the process's own, or create them from ``OTEL_*``.

A provider that already exists (set up in code, or by ``opentelemetry-instrument``) is
used as it is and never replaced. Where the process has none, modeltel creates an SDK
provider whose exporter follows the standard variables: ``OTEL_{SIGNAL}_EXPORTER``
(``otlp``, ``console`` or ``none``), ``OTEL_EXPORTER_OTLP_[{SIGNAL}_]PROTOCOL``
(``grpc`` or ``http/protobuf``), endpoint, headers, ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``, and registers it globally.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry import _logs, metrics, trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, ConsoleLogRecordExporter
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_SDK_DISABLED,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

_logger = logging.getLogger(__name__)

Protocol = Literal["grpc", "http/protobuf"]
Signal = Literal["traces", "metrics", "logs"]
_PROTOCOLS = ("grpc", "http/protobuf")
_EXPORTERS = ("otlp", "console", "none")

GRPC_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (("grpc.max_reconnect_backoff_ms", 5000),)
"""Channel options of every gRPC exporter modeltel creates. While the collector is unreachable,
gRPC waits longer and longer between connection attempts, up to 120 s by default, and the
exporters' channels to one address share that state: after an outage of a few minutes, exports
kept failing (and queued events were dropped) for up to two minutes after the collector was
back. Capped at 5 s, they resume within seconds."""

# Deferred providers the API hands out before anything is configured.
_PROXIES = {
    ("opentelemetry.trace", "ProxyTracerProvider"),
    ("opentelemetry.metrics._internal", "_ProxyMeterProvider"),
    ("opentelemetry._logs._internal", "ProxyLoggerProvider"),
}


class ConfigurationError(ValueError):
    """An option or ``OTEL_*`` variable has a value modeltel cannot use."""


def env_int(name: str, default: int) -> int:
    """A positive integer from the environment; ``default`` when unset, with a warning when invalid."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        _logger.warning("%s=%r is not an integer; using %d", name, raw, default)
        return default
    return value if value > 0 else default


def sdk_disabled() -> bool:
    """``OTEL_SDK_DISABLED=true``: create no providers and export nothing."""
    return os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"


def is_unconfigured(provider: object) -> bool:
    """True for the API's placeholder provider, before any SDK provider is registered."""
    cls = type(provider)
    return (cls.__module__, cls.__name__) in _PROXIES


def otlp_protocol(signal: Signal, override: str | None = None) -> Protocol:
    """The OTLP protocol of a signal: the option, else the signal's variable, else the general one."""
    source = "protocol="
    value = override
    if value is None:
        source = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
        value = os.environ.get(source)
    if value is None:
        source = OTEL_EXPORTER_OTLP_PROTOCOL
        value = os.environ.get(source, "grpc")
    value = value.strip().lower()
    if value not in _PROTOCOLS:
        raise ConfigurationError(f"{source}={value!r} is not supported: use 'grpc' or 'http/protobuf'")
    return value  # type: ignore[return-value]


def exporter_kind(signal: Signal) -> str:
    """``OTEL_{SIGNAL}_EXPORTER``: otlp (default), console or none."""
    name = f"OTEL_{signal.upper()}_EXPORTER"
    value = os.environ.get(name, "otlp").strip().lower() or "otlp"
    if value not in _EXPORTERS:
        raise ConfigurationError(f"{name}={value!r} is not supported: use one of {', '.join(_EXPORTERS)}")
    return value


def _otlp_exporter(signal: Signal, protocol: Protocol) -> Any:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import (  # type: ignore[assignment]
            OTLPLogExporter,
        )
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]
            OTLPMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    exporters = {"traces": OTLPSpanExporter, "metrics": OTLPMetricExporter, "logs": OTLPLogExporter}
    if protocol == "grpc":
        base = exporters[signal]
        encoding_once = type(base.__name__, (EncodeOnce, base), {"__module__": __name__})
        return encoding_once(channel_options=GRPC_CHANNEL_OPTIONS)
    return exporters[signal]()


class EncodeOnce:
    """For the SDK's gRPC OTLP exporters: translate a batch to protobuf once, not once per retry.

    The gRPC exporters rebuild the request on every attempt: with the collector down or answering
    ``UNAVAILABLE``, a batch of 512 spans was encoded four times in its 10 s export timeout, each
    time holding the GIL for tens of milliseconds, which the app's requests waited out (p99 1.7
    times that of a healthy collector). The OTLP/HTTP exporters already encode once.
    """

    _encoded: tuple[Any, Any] | None = None

    def _translate_data(self, data: Any) -> Any:
        encoded = self._encoded
        if encoded is not None and encoded[0] is data:
            return encoded[1]
        request = super()._translate_data(data)  # type: ignore[misc]
        self._encoded = (data, request)
        return request

    def _export(self, data: Any) -> Any:
        try:
            return super()._export(data)  # type: ignore[misc]
        finally:
            self._encoded = None  # the batch is not kept alive past its export


_CONSOLE_EXPORTERS = {
    "traces": ConsoleSpanExporter,
    "metrics": ConsoleMetricExporter,
    "logs": ConsoleLogRecordExporter,
}


def signal_exporter(signal: Signal, protocol: str | None = None) -> Any:
    """The exporter ``OTEL_{SIGNAL}_EXPORTER`` asks for, or None for ``none``."""
    kind = exporter_kind(signal)
    if kind == "none":
        return None
    if kind == "console":
        return _CONSOLE_EXPORTERS[signal]()
    return _otlp_exporter(signal, otlp_protocol(signal, protocol))


@dataclass
class Providers:
    """The providers modeltel emits through, and which of them it created."""

    tracer_provider: trace.TracerProvider
    meter_provider: metrics.MeterProvider
    logger_provider: _logs.LoggerProvider
    resource: Resource
    owns_logger_provider: bool
    logs_protocol: Protocol


def resolve_providers(protocol: str | None = None) -> Providers:
    """Use the global providers, creating and registering SDK ones where none exist."""
    resource = Resource.create()
    tracer_provider = trace.get_tracer_provider()
    if not sdk_disabled() and is_unconfigured(tracer_provider):
        tracer_provider = TracerProvider(resource=resource)
        if span_exporter := signal_exporter("traces", protocol):
            tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        trace.set_tracer_provider(tracer_provider)

    meter_provider = metrics.get_meter_provider()
    if not sdk_disabled() and is_unconfigured(meter_provider):
        metric_exporter = signal_exporter("metrics", protocol)
        readers = [PeriodicExportingMetricReader(metric_exporter)] if metric_exporter else []
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        metrics.set_meter_provider(meter_provider)

    logger_provider = _logs.get_logger_provider()
    owns_logger_provider = False
    if not sdk_disabled() and is_unconfigured(logger_provider):
        sdk_logger_provider = LoggerProvider(resource=resource)
        if log_exporter := signal_exporter("logs", protocol):
            sdk_logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
        _logs.set_logger_provider(sdk_logger_provider)
        logger_provider = sdk_logger_provider
        owns_logger_provider = exporter_kind("logs") == "otlp"

    existing_resource = getattr(tracer_provider, "resource", None)
    return Providers(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        logger_provider=logger_provider,
        resource=existing_resource if isinstance(existing_resource, Resource) else resource,
        owns_logger_provider=owns_logger_provider,
        logs_protocol=otlp_protocol("logs", protocol),
    )
