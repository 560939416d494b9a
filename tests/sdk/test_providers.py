"""Providers: existing ones are used, never replaced; OTEL_* variables are honoured."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modeltel import semconv
from modeltel.providers import ConfigurationError, exporter_kind, otlp_protocol
from tests.conftest import ROOT, telemetry_env
from tests.otlp_sink import wait_until


def test_existing_providers_are_used_and_not_replaced(grpc_sink, start_app):
    app = start_app(telemetry_env(grpc_sink.endpoint), target="tests.sdk.existing_providers_app:create_app")

    response = app.client.post("/predict", json={"x": 4})

    assert app.client.get("/health").json() == {"same_providers": True}
    prediction_id = response.headers[semconv.PREDICTION_ID_HEADER]
    [event] = wait_until(
        lambda: [
            e
            for e in grpc_sink.consumer.events(semconv.PREDICTION_EVENT)
            if e.attributes[semconv.PREDICTION_ID] == prediction_id
        ],
        what="the event, through the user's LoggerProvider",
    )
    assert event.resource["service.name"] == "configured-by-the-user"
    assert event.attributes["ml.feature.x"] == 4
    assert event.attributes[semconv.PREDICTION_VALUE] == 8.0
    spans = wait_until(
        lambda: [s for s in grpc_sink.consumer.spans() if s.trace_id.hex() == event.trace_id],
        what="the request's span",
    )
    assert len([s for s in spans if s.kind == 2]) == 1


def test_labels_from_a_separate_labelling_job(grpc_sink):
    script = (
        "import modeltel\n"
        "modeltel.log_label('abc123', 61000.0, model='salary')\n"
        "modeltel.log_label('abc124', 'spam', model='filter')\n"
        "assert modeltel.force_flush()\n"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        env=telemetry_env(grpc_sink.endpoint),
        cwd=ROOT,
        check=True,
        timeout=60,
    )

    labels = {
        e.attributes[semconv.PREDICTION_ID]: e.attributes
        for e in grpc_sink.consumer.events(semconv.LABEL_EVENT)
    }
    assert labels == {
        "abc123": {
            semconv.MODEL_NAME: "salary",
            semconv.PREDICTION_ID: "abc123",
            semconv.LABEL_VALUE: 61000.0,
        },
        "abc124": {
            semconv.MODEL_NAME: "filter",
            semconv.PREDICTION_ID: "abc124",
            semconv.LABEL_VALUE: "spam",
        },
    }


def test_log_prediction_outside_a_request(http_sink):
    script = (
        "import modeltel\n"
        "pid = modeltel.log_prediction({'x': 1}, 3.0, model='batch-job', version='7')\n"
        "assert modeltel.force_flush()\n"
        "print(pid)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=telemetry_env(http_sink.endpoint, "http/protobuf"),
        cwd=ROOT,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout.strip()
    [event] = http_sink.consumer.events(semconv.PREDICTION_EVENT)
    assert event.attributes[semconv.PREDICTION_ID] == out
    assert event.attributes[semconv.MODEL_NAME] == "batch-job"
    assert event.attributes[semconv.MODEL_VERSION] == "7"


def test_protocol_and_exporter_variables(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    assert otlp_protocol("logs") == "grpc"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert otlp_protocol("traces") == "http/protobuf"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "grpc")
    assert otlp_protocol("logs") == "grpc"
    assert otlp_protocol("logs", "http/protobuf") == "http/protobuf"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json")
    with pytest.raises(
        ConfigurationError, match="OTEL_EXPORTER_OTLP_METRICS_PROTOCOL='http/json' is not supported"
    ):
        otlp_protocol("metrics")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ConfigurationError, match="OTEL_TRACES_EXPORTER='zipkin'"):
        exporter_kind("traces")


def test_log_label_refuses_bad_values():
    import modeltel

    with pytest.raises(TypeError, match="a label must be a str, bool, int or float, not dict"):
        modeltel.log_label("id", {"a": 1}, model="m")
    with pytest.raises(ValueError, match="needs a prediction_id and a model"):
        modeltel.log_label("", 1.0, model="m")
