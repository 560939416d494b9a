"""The SDK sends through bearer-token, TLS and mutual-TLS receivers with the standard variables
only, and never logs the token.

Receivers are the collector's own (:class:`GrpcReceiver`, ``http_receiver_app`` under uvicorn
with TLS) recording what arrives; certificates come from ``tests/collector/test_security.py``'s
``pki`` fixture (made with openssl). The app under test runs in its own process, configured by
``OTEL_EXPORTER_OTLP_HEADERS``, ``_CERTIFICATE``, ``_CLIENT_CERTIFICATE`` and ``_CLIENT_KEY``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

from modeltel import semconv
from modeltel._otlp import LogsRequestFramer, encode_event
from modeltel.events import BatchEventProcessor, EventCounters
from modeltel_collector.receivers import GrpcReceiver, http_receiver_app
from modeltel_collector.receivers.security import TlsFiles, load_bearer_tokens
from tests.collector.test_security import TOKEN, Pki, pki  # noqa: F401  (``pki`` is a fixture)
from tests.conftest import AppProcess, telemetry_env
from tests.otlp_sink import RecordingConsumer, free_port, wait_until

WRONG_TOKEN = "wr0ng-t0ken-Pq7r"
PROTOCOLS = ["grpc", "http/protobuf"]


class SecureReceiver:
    """A receiver requiring ``TOKEN`` over TLS (client certificates too when ``mutual``)."""

    def __init__(self, protocol: str, certs: Pki, mutual: bool) -> None:
        self.consumer = RecordingConsumer()
        tokens = load_bearer_tokens([TOKEN], None)
        tls = TlsFiles(certs.server_cert, certs.server_key, certs.ca if mutual else None)
        self._stop: Callable[[], None]
        if protocol == "grpc":
            receiver = GrpcReceiver(self.consumer, "127.0.0.1:0", tokens=tokens, tls=tls).start()
            port = receiver.port
            self._stop = lambda: receiver.stop(0)
        else:
            port = free_port()
            app = http_receiver_app(self.consumer, tokens=tokens)
            config = uvicorn.Config(
                app, host="127.0.0.1", port=port, log_level="warning", **tls.uvicorn_options()
            )
            server = uvicorn.Server(config)
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            wait_until(lambda: server.started, 10, "the HTTPS receiver to start")

            def stop() -> None:
                server.should_exit = True
                thread.join(10)

            self._stop = stop
        self.endpoint = f"https://localhost:{port}"

    def stop(self) -> None:
        self._stop()


@pytest.fixture
def receivers() -> Iterator[Callable[[str, Pki, bool], SecureReceiver]]:
    started: list[SecureReceiver] = []

    def start(protocol: str, certs: Pki, mutual: bool) -> SecureReceiver:
        receiver = SecureReceiver(protocol, certs, mutual)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def _secure_env(
    endpoint: str, protocol: str, certs: Pki, *, client_cert: bool, token: str = TOKEN
) -> dict[str, str]:
    env = telemetry_env(
        endpoint,
        protocol,
        OTEL_EXPORTER_OTLP_HEADERS=f"authorization=Bearer%20{token}",
        OTEL_EXPORTER_OTLP_CERTIFICATE=str(certs.ca),
    )
    if client_cert:
        env.update(
            OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=str(certs.client_cert),
            OTEL_EXPORTER_OTLP_CLIENT_KEY=str(certs.client_key),
        )
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # requests lets these override the CA given
        env.pop(name, None)
    return env


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_app_exports_with_token_and_tls_from_the_standard_variables(
    protocol: str,
    mutual: bool,
    pki: Pki,  # noqa: F811
    receivers: Callable[[str, Pki, bool], SecureReceiver],
    start_app: Callable[..., AppProcess],
) -> None:
    """Events (with their trace), spans, the SDK's counters and the feature statistics all reach
    a receiver that requires the bearer token over TLS, or mutual TLS."""
    receiver = receivers(protocol, pki, mutual)
    app = start_app(_secure_env(receiver.endpoint, protocol, pki, client_cert=mutual))

    ids = set()
    for years in range(5):
        response = app.client.post("/predict", json={"years": years})
        assert response.status_code == 200
        ids.add(response.headers[semconv.PREDICTION_ID_HEADER])

    consumer = receiver.consumer
    events = wait_until(
        lambda: (
            {e.attributes[semconv.PREDICTION_ID]: e for e in consumer.events(semconv.PREDICTION_EVENT)}
            if len(consumer.events(semconv.PREDICTION_EVENT)) >= 5
            else None
        ),
        what="the prediction events",
    )
    assert set(events) == ids
    trace_ids = {span.trace_id.hex() for span in wait_until(consumer.spans, what="the spans")}
    wait_until(
        lambda: {e.trace_id for e in events.values()} <= {s.trace_id.hex() for s in consumer.spans()},
        what="every event's span",
    )
    assert trace_ids
    wait_until(
        lambda: (
            sum(p.as_int for p in consumer.latest_points(semconv.SDK_EVENTS_EXPORTED_METRIC).values()) == 5
        ),
        what="the SDK's exported counter",
    )
    wait_until(
        lambda: consumer.latest_points(semconv.PREDICTION_OUTPUT_METRIC), what="the feature statistics"
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_refused_token_is_counted_and_never_logged(
    protocol: str,
    pki: Pki,  # noqa: F811
    receivers: Callable[[str, Pki, bool], SecureReceiver],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a wrong token the receiver refuses the events (UNAUTHENTICATED / 401): the SDK's event
    pipeline counts them ``export_failed`` and logs the failure, but neither the token sent nor
    the one expected appears in any log record."""
    receiver = receivers(protocol, pki, False)
    for name, value in _secure_env(
        receiver.endpoint, protocol, pki, client_cert=False, token=WRONG_TOKEN
    ).items():
        if name.startswith("OTEL_"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    caplog.set_level(logging.DEBUG)
    # The exporters' loggers drop a message identical to the previous one within 20 s (OTel's
    # DuplicateFilter): forget earlier tests' failures, so this one's is logged and checked.
    for name, logger in logging.root.manager.loggerDict.items():
        if name.startswith("opentelemetry.exporter") and isinstance(logger, logging.Logger):
            for log_filter in logger.filters:
                if hasattr(log_filter, "last_log"):
                    monkeypatch.setattr(log_filter, "last_log", None)
    from modeltel._transports import GrpcEventTransport, HttpEventTransport

    reader = InMemoryMetricReader()
    counters = EventCounters(MeterProvider(metric_readers=[reader]))
    transport = GrpcEventTransport() if protocol == "grpc" else HttpEventTransport()
    framer = LogsRequestFramer(Resource.create({"service.name": "secure-test"}), semconv.SCOPE_NAME, "test")
    processor = BatchEventProcessor(transport, framer, counters)
    try:
        for i in range(3):
            attributes = {
                semconv.MODEL_NAME: "m",
                semconv.PREDICTION_ID: f"p{i}",
                semconv.PREDICTION_VALUE: 1.0,
            }
            processor.emit(
                encode_event(time_unix_nano=1, event_name=semconv.PREDICTION_EVENT, attributes=attributes)
            )
        assert processor.force_flush(30_000)
    finally:
        processor.shutdown()

    assert _dropped(reader) == {"export_failed": 3}
    assert not receiver.consumer.events(semconv.PREDICTION_EVENT)
    refusal = "UNAUTHENTICATED" if protocol == "grpc" else "401"
    assert any(refusal in record.getMessage() for record in caplog.records), caplog.text
    for record in caplog.records:
        logged = record.getMessage() + repr(record.args) + repr(record.exc_info) + repr(record.__dict__)
        assert WRONG_TOKEN not in logged and TOKEN not in logged


def _dropped(reader: InMemoryMetricReader) -> dict[str, int]:
    data: Any = reader.get_metrics_data()
    return {
        point.attributes[semconv.DROP_REASON]: point.value
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
        if metric.name == semconv.SDK_EVENTS_DROPPED_METRIC
        for point in metric.data.data_points
    }
