"""An app that sets up its own OpenTelemetry providers before ``modeltel.instrument``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from opentelemetry import _logs, metrics, trace
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import modeltel


def create_app() -> FastAPI:
    resource = Resource.create({"service.name": "configured-by-the-user"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    meter_provider = MeterProvider(
        resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
    )
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    _logs.set_logger_provider(logger_provider)

    app = FastAPI()
    modeltel.instrument(app, model="salary", version="v2")

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {
            "same_providers": trace.get_tracer_provider() is tracer_provider
            and metrics.get_meter_provider() is meter_provider
            and _logs.get_logger_provider() is logger_provider
        }

    @app.post("/predict")
    def predict(features: dict[str, Any]) -> dict[str, float]:
        return {"prediction": 2.0 * features["x"]}

    return app
