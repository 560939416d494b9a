"""``modeltel demo``: the real command end to end, and how its receiver joins labels."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from modeltel import semconv
from modeltel_collector.demo import DemoConsumer
from tests.otlp_sink import free_port

SCRIPT = Path(sys.executable).with_name("modeltel")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "modeltel_collector.cli"]


def modeltel(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the command line; ``COLUMNS`` wide enough that rich never wraps a table row."""
    return subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, COLUMNS="200"),
    )


def cell(output: str, label: str) -> int:
    """The number in the table cell next to ``label``."""
    match = re.search(rf"{re.escape(label)}[\s│]+([\d,]+)", output)
    assert match, f"no {label!r} row in:\n{output}"
    return int(match.group(1).replace(",", ""))


def test_help_and_version() -> None:
    top = modeltel("--help")
    assert top.returncode == 0, top.stderr
    assert "demo" in top.stdout
    demo = modeltel("demo", "--help")
    assert demo.returncode == 0, demo.stderr
    assert "--drift-at" in demo.stdout
    version = modeltel("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("modeltel ")


def test_demo_sends_load_and_receives_its_telemetry() -> None:
    result = modeltel(
        "demo",
        "--duration", "8",
        "--rate", "20",
        "--drift-at", "3",
        "--concept-drift-at", "6",
        "--label-delay", "0.5",
        "--app-port", str(free_port()),
        "--otlp-port", str(free_port()),
        timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    _, marker, summary = result.stdout.partition("modeltel demo summary")
    assert marker, result.stdout + result.stderr

    assert cell(summary, "requests sent") > 0
    assert cell(summary, "data drift") > 0  # the phase was reached
    assert cell(summary, "prediction events") > 0
    assert cell(summary, "spans received") > 0
    assert cell(summary, "labels received") > 0
    assert "Traceback" not in result.stderr


def test_demo_refuses_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = modeltel("demo", "--otlp-port", port, "--app-port", str(free_port()))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in result.stderr
    assert "--otlp-port" in result.stderr


def events(name: str, *attribute_sets: dict[str, str | float]) -> ExportLogsServiceRequest:
    """A logs request holding one ``name`` event per attribute set."""
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    for attrs in attribute_sets:
        record = records.add(event_name=name)
        for key, value in attrs.items():
            kind = "string_value" if isinstance(value, str) else "double_value"
            record.attributes.append(KeyValue(key=key, value=AnyValue(**{kind: value})))
    return request


def test_demo_consumer_joins_labels_in_either_order_once() -> None:
    consumer = DemoConsumer()
    label = {semconv.PREDICTION_ID: "a", semconv.LABEL_VALUE: 100.0}
    consumer.consume_logs(events(semconv.LABEL_EVENT, label))  # before its prediction
    prediction = {semconv.PREDICTION_ID: "a", semconv.PREDICTION_VALUE: 101.0}
    consumer.consume_logs(events(semconv.PREDICTION_EVENT, prediction))
    consumer.consume_logs(events(semconv.LABEL_EVENT, label))  # a duplicate: not joined again
    later = {semconv.PREDICTION_ID: "b", semconv.PREDICTION_VALUE: 93.0, semconv.FEATURE_PREFIX + "x": 2.0}
    consumer.consume_logs(events(semconv.PREDICTION_EVENT, later))
    consumer.consume_logs(events(semconv.LABEL_EVENT, {**label, semconv.PREDICTION_ID: "b"}))

    snapshot = consumer.snapshot()
    assert (snapshot.predictions, snapshot.labels, snapshot.labels_joined) == (2, 3, 2)
    assert snapshot.rmse == pytest.approx(5.0)  # sqrt((1² + 7²) / 2)
    assert snapshot.features["x"].recent_mean == 2.0
