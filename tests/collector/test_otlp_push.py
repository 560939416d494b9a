"""``exporters.otlp``: the collector pushes its metrics to an OTLP endpoint (gRPC and HTTP/protobuf)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

from modeltel import semconv
from modeltel_collector.collector import Collector, otlp_http_metrics_url
from modeltel_collector.config import parse_config
from tests.otlp_sink import GrpcSink, HttpSink, wait_until

EVENTS = 200
WARMUP = 100


def _value(value: Any) -> AnyValue:
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def _predictions(n: int, seed: int = 0) -> ExportLogsServiceRequest:
    """``n`` ``ml.prediction`` events of model ``salary`` version ``v1``, stamped now."""
    rng = np.random.default_rng(seed)
    now = time.time_ns()
    records = []
    for i in range(n):
        attributes = {
            semconv.MODEL_NAME: "salary",
            semconv.MODEL_VERSION: "v1",
            semconv.PREDICTION_ID: f"p{i}",
            semconv.PREDICTION_VALUE: float(rng.normal(50_000, 5_000)),
            semconv.FEATURE_PREFIX + "years": float(rng.normal(10, 5)),
            semconv.FEATURE_PREFIX + "city": str(rng.choice(["berlin", "paris", "rome"])),
        }
        records.append(
            LogRecord(
                event_name=semconv.PREDICTION_EVENT,
                time_unix_nano=now,
                attributes=[KeyValue(key=k, value=_value(v)) for k, v in attributes.items()],
            )
        )
    return ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=records)])])


def _collector(tmp_path: Path, exporter: dict[str, Any]) -> Collector:
    config = parse_config(
        {
            "receivers": {"otlp": {"protocols": {"grpc": None, "http": None}}},
            "processors": {
                "drift": {"window": "1s", "warmup": WARMUP, "min_samples": 20},
                "performance": None,
                "service": None,
                "audit": None,
            },
            "exporters": {"prometheus": None, "otlp": exporter},
            "data_dir": str(tmp_path / "data"),
        }
    )
    return Collector(config)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_drift_and_prediction_metrics_are_pushed_over_otlp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")  # read when the reader is built
    sink: GrpcSink | HttpSink = GrpcSink() if protocol == "grpc" else HttpSink()
    collector = _collector(tmp_path, {"endpoint": sink.endpoint, "protocol": protocol}).start()
    try:
        outcome = collector.pipeline.consume_logs(_predictions(EVENTS).SerializeToString())
        assert outcome.rejected == 0, outcome.error_message
        # The pipeline ticks every second on the real clock: the 1 s window closes soon.
        psi = wait_until(
            lambda: sink.consumer.latest_points(semconv.DRIFT_METRIC_PREFIX + "psi"),
            20,
            "ml.drift.psi at the OTLP sink",
        )
        predictions = wait_until(
            lambda: sink.consumer.latest_points(semconv.PREDICTIONS_METRIC),
            20,
            "ml.predictions at the OTLP sink",
        )
    finally:
        collector.stop()
        sink.stop()

    features = {dict(key)[semconv.FEATURE_NAME] for key in psi}
    assert features == {"years", "city"}
    for key, point in psi.items():
        attributes = dict(key)
        assert attributes[semconv.MODEL_NAME] == "salary"
        assert attributes[semconv.MODEL_VERSION] == "v1"
        assert point.as_double >= 0.0
    [(key, point)] = predictions.items()
    assert dict(key) == {semconv.MODEL_NAME: "salary", semconv.MODEL_VERSION: "v1"}
    assert point.as_int == EVENTS


def test_http_endpoints_get_the_metrics_path() -> None:
    assert otlp_http_metrics_url("http://sink:4318") == "http://sink:4318/v1/metrics"
    assert otlp_http_metrics_url("http://sink:4318/") == "http://sink:4318/v1/metrics"
    assert otlp_http_metrics_url("http://sink:4318/v1/metrics") == "http://sink:4318/v1/metrics"
