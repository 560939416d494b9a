"""Tracer, meter and logger providers: use the process's own, or create them from ``OTEL_*``.

A provider that already exists (set up in code, or by ``opentelemetry-instrument``) is
used as it is and never replaced. Where the process has none, modeltel creates an SDK
provider whose exporter follows the standard variables: ``OTEL_{SIGNAL}_EXPORTER``
(``otlp``, ``console`` or ``none``), ``OTEL_EXPORTER_OTLP_[{SIGNAL}_]PROTOCOL``
(``grpc`` or ``http/protobuf``), endpoint, headers, ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``, and registers it globally.
"""

from __future__ import annotations

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
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from modeltel import semconv

Protocol = Literal["grpc", "http/protobuf"]
Signal = Literal["traces", "metrics", "logs"]
_PROTOCOLS = ("grpc", "http/protobuf")
_EXPORTERS = ("otlp", "console", "none")

# Deferred providers the API hands out before anything is configured.
_PROXIES = {
    ("opentelemetry.trace", "ProxyTracerProvider"),
    ("opentelemetry.metrics._internal", "_ProxyMeterProvider"),
    ("opentelemetry._logs._internal", "ProxyLoggerProvider"),
}


class ConfigurationError(ValueError):
    """An option or ``OTEL_*`` variable has a value modeltel cannot use."""


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
        if signal == "traces":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter()
        if signal == "metrics":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            return OTLPMetricExporter()
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        return OTLPLogExporter()
    if signal == "traces":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpans,
        )

        return HttpSpans()
    if signal == "metrics":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetrics,
        )

        return HttpMetrics()
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs

    return HttpLogs()


def metric_views() -> list[View]:
    """Views modeltel's histograms need: exponential buckets, since feature scales vary.

    Add these to a ``MeterProvider`` you create yourself to get the same resolution.
    """
    return [
        View(instrument_name=name, aggregation=ExponentialBucketHistogramAggregation())
        for name in (semconv.FEATURE_VALUE_METRIC, semconv.PREDICTION_OUTPUT_METRIC)
    ]


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
    disabled = os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"
    resource = Resource.create()
    tracer_provider = trace.get_tracer_provider()
    if not disabled and is_unconfigured(tracer_provider):
        tracer_provider = TracerProvider(resource=resource)
        kind = exporter_kind("traces")
        if kind != "none":
            span_exporter = (
                ConsoleSpanExporter()
                if kind == "console"
                else _otlp_exporter("traces", otlp_protocol("traces", protocol))
            )
            tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        trace.set_tracer_provider(tracer_provider)

    meter_provider = metrics.get_meter_provider()
    if not disabled and is_unconfigured(meter_provider):
        kind = exporter_kind("metrics")
        readers = []
        if kind != "none":
            metric_exporter = (
                ConsoleMetricExporter()
                if kind == "console"
                else _otlp_exporter("metrics", otlp_protocol("metrics", protocol))
            )
            readers.append(PeriodicExportingMetricReader(metric_exporter))
        meter_provider = MeterProvider(resource=resource, metric_readers=readers, views=metric_views())
        metrics.set_meter_provider(meter_provider)

    logger_provider = _logs.get_logger_provider()
    owns_logger_provider = False
    if not disabled and is_unconfigured(logger_provider):
        sdk_logger_provider = LoggerProvider(resource=resource)
        kind = exporter_kind("logs")
        if kind != "none":
            log_exporter = (
                ConsoleLogRecordExporter()
                if kind == "console"
                else _otlp_exporter("logs", otlp_protocol("logs", protocol))
            )
            sdk_logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
        _logs.set_logger_provider(sdk_logger_provider)
        logger_provider = sdk_logger_provider
        owns_logger_provider = kind == "otlp"

    existing_resource = getattr(tracer_provider, "resource", None)
    return Providers(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        logger_provider=logger_provider,
        resource=existing_resource if isinstance(existing_resource, Resource) else resource,
        owns_logger_provider=owns_logger_provider,
        logs_protocol=otlp_protocol("logs", protocol),
    )
