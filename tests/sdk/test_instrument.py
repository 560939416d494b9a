"""``modeltel.instrument(app)`` end to end: a real app process, OTLP exporters and receiver."""

from __future__ import annotations

import json

import pytest

from modeltel import semconv
from tests.conftest import telemetry_env
from tests.otlp_sink import wait_until

SERVER = 2  # Span.SpanKind.SPAN_KIND_SERVER


def _one_event(sink, prediction_id):
    def find():
        events = [
            e
            for e in sink.consumer.events(semconv.PREDICTION_EVENT)
            if e.attributes[semconv.PREDICTION_ID] == prediction_id
        ]
        return events

    return wait_until(find, what=f"the event of prediction {prediction_id}")


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_prediction_request_yields_span_duration_metric_and_event(protocol, grpc_sink, http_sink, start_app):
    sink = grpc_sink if protocol == "grpc" else http_sink
    app = start_app(telemetry_env(sink.endpoint, protocol))

    response = app.client.post(
        "/predict", json={"years": 5, "education": "master", "address": {"city": "Berlin"}}
    )

    assert response.status_code == 200
    prediction_id = response.headers[semconv.PREDICTION_ID_HEADER]
    assert response.headers[semconv.MODEL_VERSION_HEADER] == "v1"
    [event] = _one_event(sink, prediction_id)
    assert event.attributes == {
        semconv.MODEL_NAME: "salary",
        semconv.MODEL_VERSION: "v1",
        semconv.PREDICTION_ID: prediction_id,
        "ml.feature.years": 5,
        "ml.feature.education": "master",
        "ml.feature.address.city": "Berlin",
        semconv.PREDICTION_VALUE: 35000.0,
    }
    assert event.resource["service.name"] == "salary-api"
    assert event.resource["deployment.environment.name"] == "test"

    spans = wait_until(
        lambda: [s for s in sink.consumer.spans() if s.trace_id.hex() == event.trace_id],
        what="the request's spans",
    )
    server = [s for s in spans if s.kind == SERVER]
    assert len(server) == 1, "exactly one server span per request"
    assert server[0].span_id.hex() == event.span_id
    assert server[0].name == "POST /predict"
    assert not [s for s in spans if s.name.endswith((" http receive", " http send"))]

    points = wait_until(
        lambda: sink.consumer.metric_points("http.server.request.duration"),
        what="http.server.request.duration",
    )
    routes = {attrs.get("http.route") for attrs, _ in points}
    assert "/predict" in routes


def test_health_urls_get_no_span(grpc_sink, start_app):
    app = start_app(telemetry_env(grpc_sink.endpoint))
    app.client.post("/predict", json={"years": 1})
    wait_until(lambda: grpc_sink.consumer.spans(), what="a span")
    for _ in range(3):
        assert app.client.get("/health").status_code == 200
    app.client.post("/predict", json={"years": 2})
    wait_until(lambda: len([s for s in grpc_sink.consumer.spans() if s.kind == SERVER]) >= 2, what="spans")
    assert all("/health" not in s.name for s in grpc_sink.consumer.spans())


def test_batch_route_emits_one_event_per_instance(grpc_sink, start_app):
    app = start_app(telemetry_env(grpc_sink.endpoint))
    instances = [{"years": i} for i in range(4)]

    response = app.client.post("/predict/batch", json=instances)

    assert response.status_code == 200
    request_id = response.headers[semconv.PREDICTION_ID_HEADER]
    events = wait_until(
        lambda: (e := grpc_sink.consumer.events(semconv.PREDICTION_EVENT)) and len(e) == 4 and e,
        what="four events",
    )
    by_id = {e.attributes[semconv.PREDICTION_ID]: e for e in events}
    assert sorted(by_id) == [f"{request_id}-{i}" for i in range(4)]
    for i in range(4):
        event = by_id[f"{request_id}-{i}"]
        assert event.attributes["ml.feature.years"] == i
        assert event.attributes[semconv.PREDICTION_VALUE] == 1000.0 * i + 30000.0
    assert len({e.trace_id for e in events}) == 1


def test_explicit_log_prediction_uses_request_ids_and_replaces_capture(grpc_sink, start_app):
    app = start_app(telemetry_env(grpc_sink.endpoint))

    response = app.client.post("/predict/explicit", json={"years": 3})

    request_id = response.headers[semconv.PREDICTION_ID_HEADER]
    assert response.json()["ids"] == [request_id, f"{request_id}-1"]
    events = wait_until(
        lambda: (
            len(grpc_sink.consumer.events(semconv.PREDICTION_EVENT)) == 2
            and grpc_sink.consumer.events(semconv.PREDICTION_EVENT)
        ),
        what="two events",
    )
    first = next(e for e in events if e.attributes[semconv.PREDICTION_ID] == request_id)
    assert first.attributes[semconv.PREDICTION_SCORE] == 0.9
    assert first.attributes["ml.feature.years"] == 3


def test_classifier_with_score_and_custom_keys(grpc_sink, start_app):
    options = {
        "prediction_key": "label",
        "score_key": "proba",
        "predict_paths": ["/classify"],
        "task": "classification",
        "version": None,
    }
    app = start_app(telemetry_env(grpc_sink.endpoint, MODELTEL_TEST_OPTIONS=json.dumps(options)))

    response = app.client.post("/classify", json={"years": 7})

    assert response.headers[semconv.MODEL_VERSION_HEADER] == "9.9.9", "falls back to service.version"
    [event] = _one_event(grpc_sink, response.headers[semconv.PREDICTION_ID_HEADER])
    assert event.attributes[semconv.PREDICTION_VALUE] == "high"
    assert event.attributes[semconv.PREDICTION_SCORE] == 0.75
    assert event.attributes[semconv.MODEL_TASK] == "classification"
    assert event.attributes[semconv.MODEL_VERSION] == "9.9.9"


def test_streaming_response_passes_through(grpc_sink, start_app):
    app = start_app(telemetry_env(grpc_sink.endpoint))

    response = app.client.post("/predict/stream", json={"years": 1})

    assert response.status_code == 200
    assert response.text == "".join(f"chunk {i}\n" for i in range(5))
    assert semconv.PREDICTION_ID_HEADER in response.headers


def test_instrument_twice_is_harmless(grpc_sink, start_app):
    app = start_app(telemetry_env(grpc_sink.endpoint, MODELTEL_TEST_INSTRUMENT_TWICE="1"))

    response = app.client.post("/predict", json={"years": 2})

    [event] = _one_event(grpc_sink, response.headers[semconv.PREDICTION_ID_HEADER])
    spans = wait_until(
        lambda: [
            s for s in grpc_sink.consumer.spans() if s.trace_id.hex() == event.trace_id and s.kind == SERVER
        ],
        what="the server span",
    )
    assert len(spans) == 1
    app.stop()
    assert len(grpc_sink.consumer.events(semconv.PREDICTION_EVENT)) == 1


def test_app_logging_goes_out_as_otlp_logs_with_trace_context(grpc_sink, start_app):
    app = start_app(telemetry_env(grpc_sink.endpoint))

    response = app.client.post("/predict", json={"years": 2})

    [event] = _one_event(grpc_sink, response.headers[semconv.PREDICTION_ID_HEADER])
    logs = wait_until(
        lambda: [r for r in grpc_sink.consumer.records() if r.body == "scored a request"],
        what="the app's log record",
    )
    assert logs[0].trace_id == event.trace_id
    assert logs[0].severity_text == "INFO"


def test_privacy_options(grpc_sink, start_app):
    options = {
        "exclude_features": ["ssn", "address"],
        "hash_features": ["user_id"],
        "max_string_length": 8,
        "hash_salt": "pepper",
    }
    app = start_app(telemetry_env(grpc_sink.endpoint, MODELTEL_TEST_OPTIONS=json.dumps(options)))

    response = app.client.post(
        "/predict",
        json={
            "years": 1,
            "ssn": "123-45-6789",
            "address": {"street": "x"},
            "user_id": 42,
            "notes": "a" * 100,
        },
    )

    [event] = _one_event(grpc_sink, response.headers[semconv.PREDICTION_ID_HEADER])
    features = {k: v for k, v in event.attributes.items() if k.startswith(semconv.FEATURE_PREFIX)}
    import hashlib

    assert features == {
        "ml.feature.years": 1,
        "ml.feature.user_id": hashlib.sha256(b"pepper42").hexdigest()[:16],
        "ml.feature.notes": "a" * 8,
    }


def test_extractor_reads_shapes_the_default_does_not(grpc_sink, start_app):
    app = start_app(telemetry_env(grpc_sink.endpoint, MODELTEL_TEST_EXTRACTOR="1"))

    response = app.client.post(
        "/predict/score", json={"rows": [{"inputs": {"years": 1}}, {"inputs": {"years": 2}}]}
    )

    request_id = response.headers[semconv.PREDICTION_ID_HEADER]
    events = wait_until(
        lambda: (e := grpc_sink.consumer.events(semconv.PREDICTION_EVENT)) and len(e) == 2 and e,
        what="two events",
    )
    assert {e.attributes[semconv.PREDICTION_ID]: e.attributes[semconv.PREDICTION_VALUE] for e in events} == {
        f"{request_id}-0": 31000.0,
        f"{request_id}-1": 32000.0,
    }


def test_gzip_compressed_responses_are_read(grpc_sink, start_app):
    app = start_app(telemetry_env(grpc_sink.endpoint, MODELTEL_TEST_GZIP="1"))

    response = app.client.post("/predict", json={"years": 4}, headers={"accept-encoding": "gzip"})

    assert response.headers["content-encoding"] == "gzip"
    [event] = _one_event(grpc_sink, response.headers[semconv.PREDICTION_ID_HEADER])
    assert event.attributes[semconv.PREDICTION_VALUE] == 34000.0
