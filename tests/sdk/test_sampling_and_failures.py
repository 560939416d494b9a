"""Sampling keeps aggregates exact; a dead, slow or hostile world never breaks the app."""

from __future__ import annotations

import json
import threading

import psutil

from modeltel import semconv
from modeltel_collector.receivers import GrpcReceiver
from modeltel_collector.receivers.consumer import ACCEPTED
from tests.conftest import telemetry_env
from tests.otlp_sink import GrpcSink, RecordingConsumer, free_port, wait_until


def test_sampling_sends_a_share_of_events_but_aggregates_see_every_prediction(grpc_sink, start_app):
    options = {"sample_rate": 0.25}
    app = start_app(telemetry_env(grpc_sink.endpoint, MODELTEL_TEST_OPTIONS=json.dumps(options)))
    years = [float(i % 17) - 4.5 for i in range(200)]  # negative values too
    educations = ["bsc", "msc", "phd"]
    ids = []
    for i, value in enumerate(years):
        response = app.client.post("/predict", json={"years": value, "education": educations[i % 3]})
        ids.append(response.headers[semconv.PREDICTION_ID_HEADER])
    app.stop()  # graceful: the lifespan shutdown flushes everything

    # The sampling decision is a function of the id, so the expected set is exact.
    expected = {i for i in ids if int(i[-8:], 16) < 0.25 * 2**32}
    sent = {e.attributes[semconv.PREDICTION_ID] for e in grpc_sink.consumer.events(semconv.PREDICTION_EVENT)}
    assert sent == expected
    assert 20 < len(sent) < 90

    years_points = grpc_sink.consumer.latest_points(semconv.FEATURE_VALUE_METRIC)
    positive = next(p for k, p in years_points.items() if semconv.VALUE_SIGN not in dict(k))
    negative = next(p for k, p in years_points.items() if dict(k).get(semconv.VALUE_SIGN) == "negative")
    assert positive.count + negative.count == 200
    assert positive.sum - negative.sum == sum(years)
    assert negative.max == 4.5 and positive.max == 11.5
    [outputs] = grpc_sink.consumer.latest_points(semconv.PREDICTION_OUTPUT_METRIC).values()
    assert outputs.count == 200
    assert outputs.sum == sum(1000.0 * y + 30000.0 for y in years)
    categories = {
        dict(key)[semconv.FEATURE_CATEGORY]: point.as_int
        for key, point in grpc_sink.consumer.latest_points(semconv.FEATURE_CATEGORY_METRIC).items()
    }
    assert categories == {name: sum(1 for i in range(200) if i % 3 == k) for k, name in enumerate(educations)}


def test_category_cardinality_is_capped(grpc_sink, start_app):
    app = start_app(
        telemetry_env(grpc_sink.endpoint, MODELTEL_TEST_OPTIONS=json.dumps({"max_categories": 5}))
    )
    for i in range(12):
        app.client.post("/predict", json={"years": 1, "city": f"city-{i}"})
    app.stop()
    counts = {
        dict(key)[semconv.FEATURE_CATEGORY]: p.as_int
        for key, p in grpc_sink.consumer.latest_points(semconv.FEATURE_CATEGORY_METRIC).items()
    }
    assert counts == {**{f"city-{i}": 1 for i in range(5)}, "__other__": 7}


def test_collector_down_then_back_every_request_served_memory_bounded_drops_counted(start_app):
    port = free_port()
    env = telemetry_env(
        f"http://127.0.0.1:{port}",
        OTEL_BLRP_MAX_QUEUE_SIZE="64",
        OTEL_BLRP_MAX_EXPORT_BATCH_SIZE="32",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
    )
    app = start_app(env)
    process = psutil.Process(app.process.pid)
    body = {"years": 3, "education": "master", "notes": "x" * 200}

    statuses = [app.client.post("/predict", json=body).status_code for _ in range(300)]
    rss_after_warmup = process.memory_info().rss
    statuses += [app.client.post("/predict", json=body).status_code for _ in range(2700)]
    rss_after = process.memory_info().rss

    assert statuses == [200] * 3000
    assert rss_after - rss_after_warmup < 20 * 1024 * 1024, "memory grows while the collector is down"

    sink = GrpcSink(port)  # the collector comes back on the same address
    try:

        def accounted():
            exported = sum(
                p.as_int for p in sink.consumer.latest_points(semconv.SDK_EVENTS_EXPORTED_METRIC).values()
            )
            dropped = sum(
                p.as_int for p in sink.consumer.latest_points(semconv.SDK_EVENTS_DROPPED_METRIC).values()
            )
            return exported + dropped == 3000 and (exported, dropped)

        exported, dropped = wait_until(accounted, 30, "exported + dropped to account for all 3000 events")
        assert dropped > 0
        reasons = {
            dict(k)[semconv.DROP_REASON]
            for k in sink.consumer.latest_points(semconv.SDK_EVENTS_DROPPED_METRIC)
        }
        assert reasons <= {"queue_full", "export_failed"}
        received = len(sink.consumer.events(semconv.PREDICTION_EVENT))
        assert received == exported
    finally:
        sink.stop()


def test_malformed_and_unusual_bodies_never_become_errors(grpc_sink, start_app):
    options = {"max_body_bytes": 16384}
    app = start_app(telemetry_env(grpc_sink.endpoint, MODELTEL_TEST_OPTIONS=json.dumps(options)))
    odd = [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b"\xff\xfe\x00garbage", "application/octet-stream"),
        (b"[1, 2, 3]", "application/json"),
        (b'"just a string"', "application/json"),
        (json.dumps({"big": "y" * 20_000}).encode(), "application/json"),
        (json.dumps({"deep": {"a": {"b": {"c": [1, {"d": None}]}}}}).encode(), "application/json"),
        (
            b'{"huge_int": 123456789012345678901234567890, "neg": -5, "nan": NaN, "s": "\\ud800"}',
            "application/json",
        ),
        (json.dumps({f"f{i}": i for i in range(1000)}).encode(), "application/json"),
    ]
    ids = []
    for body, content_type in odd:
        response = app.client.post("/predict/raw", content=body, headers={"content-type": content_type})
        assert response.status_code == 200, body[:40]
        ids.append(response.headers[semconv.PREDICTION_ID_HEADER])
    # Handler-level validation errors are the app's answer, not a capture failure.
    assert (
        app.client.post(
            "/predict", content=b"{oops", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )
    # A non-JSON response is served as is.
    assert app.client.post("/predict/text", json={"years": 2}).text == "32000.0"

    events = wait_until(
        lambda: (
            len(grpc_sink.consumer.events(semconv.PREDICTION_EVENT)) >= 3
            and grpc_sink.consumer.events(semconv.PREDICTION_EVENT)
        ),
        what="three events",
    )
    by_id = {e.attributes[semconv.PREDICTION_ID]: e.attributes for e in events}
    deep = by_id[ids[6]]
    assert deep["ml.feature.deep.a.b.c.0"] == 1 and "ml.feature.deep.a.b.c.1.d" not in deep
    unusual = by_id[ids[7]]
    assert unusual["ml.feature.huge_int"] == float(123456789012345678901234567890)
    assert unusual["ml.feature.neg"] == -5
    assert unusual["ml.feature.s"] == "?"
    wide = by_id[ids[8]]
    assert len([k for k in wide if k.startswith(semconv.FEATURE_PREFIX)]) == 256
    for failed in (0, 1, 2, 3, 4, 5):
        assert ids[failed] not in by_id
    app.stop()
    dropped = grpc_sink.consumer.latest_points(semconv.SDK_EVENTS_DROPPED_METRIC)
    capture_errors = sum(
        p.as_int for k, p in dropped.items() if dict(k)[semconv.DROP_REASON] == "capture_error"
    )
    assert capture_errors == 7  # six odd bodies and the text response


class _FailingLogs(RecordingConsumer):
    """A collector whose log pipeline errors for the first requests, then answers slowly."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.slow = threading.Event()

    def consume_logs(self, request):
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("the log pipeline is broken")
        if not self.slow.is_set():
            self.slow.set()
            # A stalled pipeline: held past the exporter's 2 s deadline, then lost.
            threading.Event().wait(3)
            return ACCEPTED
        return super().consume_logs(request)


def test_collector_erroring_or_slow_requests_still_served_and_every_event_accounted(start_app):
    consumer = _FailingLogs(failures=2)
    receiver = GrpcReceiver(consumer, "127.0.0.1:0").start()
    try:
        env = telemetry_env(f"http://127.0.0.1:{receiver.port}", OTEL_BLRP_MAX_EXPORT_BATCH_SIZE="20")
        app = start_app(env)
        statuses = [app.client.post("/predict", json={"years": i % 5}).status_code for i in range(400)]
        assert statuses == [200] * 400

        def accounted():
            exported = sum(
                p.as_int for p in consumer.latest_points(semconv.SDK_EVENTS_EXPORTED_METRIC).values()
            )
            dropped = sum(
                p.as_int for p in consumer.latest_points(semconv.SDK_EVENTS_DROPPED_METRIC).values()
            )
            return exported + dropped == 400 and (exported, dropped)

        exported, dropped = wait_until(accounted, 30, "exported + dropped to account for 400 events")
        assert dropped > 0
        reasons = {
            dict(k)[semconv.DROP_REASON] for k in consumer.latest_points(semconv.SDK_EVENTS_DROPPED_METRIC)
        }
        assert reasons == {"export_failed"}  # the two failed batches and the timed-out one
        assert exported == len(consumer.events(semconv.PREDICTION_EVENT))
    finally:
        receiver.stop(0)
