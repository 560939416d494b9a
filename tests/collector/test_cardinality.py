"""Cardinality guards: limits on models, versions per model and features per model.

Real pipelines behind the real gRPC and HTTP receivers, fed real OTLP requests: a model or
version beyond its limit is rejected (partial success naming the limit and the key), features
beyond a model's limit are left out of accepted records, labels of refused models are refused,
the refusals are counted in ``modeltel.receiver.limited``, admitted models keep working, and
the admitted sets stay bounded under a stream of distinct names.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from modeltel import semconv
from modeltel_collector.batch import LabelBatch, PredictionBatch
from modeltel_collector.collector import Collector
from modeltel_collector.config import ConfigError, Limits, load_config, parse_config
from modeltel_collector.pipeline import LIMITS_CHECKPOINT_KEY
from modeltel_collector.receivers import GrpcReceiver, http_receiver_app
from modeltel_collector.receivers.errors import PayloadTooLarge
from modeltel_collector.state import StateDb
from tests.otlp_sink import HttpServer, NullProcessor, open_pipeline

pytestmark = pytest.mark.timeout(120)

LOGS_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
PROTOBUF = {"Content-Type": "application/x-protobuf"}
F = semconv.FEATURE_PREFIX


def _value(v: Any) -> AnyValue:
    if isinstance(v, str):
        return AnyValue(string_value=v)
    return AnyValue(double_value=float(v))


def request(*records: dict[str, Any]) -> bytes:
    """A serialized ``ExportLogsServiceRequest``; ``"_event"`` in a record names its event."""
    out = ExportLogsServiceRequest()
    logs = out.resource_logs.add().scope_logs.add().log_records
    for attributes in records:
        record = logs.add(event_name=attributes.get("_event", semconv.PREDICTION_EVENT))
        for key, v in attributes.items():
            if key != "_event":
                record.attributes.append(KeyValue(key=key, value=_value(v)))
    return out.SerializeToString()


def prediction(model: str, version: str = "1", i: int = 0, **features: Any) -> dict[str, Any]:
    return {
        semconv.MODEL_NAME: model,
        semconv.MODEL_VERSION: version,
        semconv.PREDICTION_ID: f"{model}-{version}-{i}",
        semconv.PREDICTION_VALUE: 1.0,
        **{F + name: v for name, v in features.items()},
    }


def label(model: str, i: int = 0) -> dict[str, Any]:
    return {
        "_event": semconv.LABEL_EVENT,
        semconv.MODEL_NAME: model,
        semconv.PREDICTION_ID: f"{model}-1-{i}",
        semconv.LABEL_VALUE: 1.0,
    }


class Recorder(NullProcessor):
    """A processor keeping every batch it is handed."""

    def __init__(self) -> None:
        self.predictions: list[PredictionBatch] = []
        self.labels: list[LabelBatch] = []

    def process_predictions(self, batch: PredictionBatch) -> None:
        self.predictions.append(batch)

    def process_labels(self, batch: LabelBatch) -> None:
        self.labels.append(batch)


class Harness:
    def __init__(self, limits: Limits, data_dir: Path, **kwargs: Any) -> None:
        self.reader = InMemoryMetricReader()
        self.recorder = Recorder()
        meter = MeterProvider(metric_readers=[self.reader]).get_meter("t")
        self.pipeline = open_pipeline({"recorder": self.recorder}, meter, data_dir, limits=limits, **kwargs)

    def counter(self, name: str, **attributes: str) -> int:
        data = self.reader.get_metrics_data()
        total = 0
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            if all(point.attributes.get(k) == v for k, v in attributes.items()):
                                total += int(point.value)
        return total

    def limited(self, limit: str, signal: str = "logs") -> int:
        return self.counter(semconv.RECEIVER_LIMITED_METRIC, limit=limit, signal=signal)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(Limits(max_models=2, max_versions_per_model=2, max_features_per_model=3), tmp_path)
    yield h
    h.pipeline.shutdown()


@pytest.fixture
def export(harness: Harness) -> Iterator[Any]:
    """Export a logs request over gRPC to the harness's pipeline; the response."""
    receiver = GrpcReceiver(harness.pipeline, "127.0.0.1:0").start()
    with grpc.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
        call = channel.unary_unary(LOGS_METHOD, request_serializer=None, response_deserializer=None)
        yield lambda payload: ExportLogsServiceResponse.FromString(call(payload, timeout=30))
    receiver.stop()


@pytest.fixture
def client(harness: Harness) -> Iterator[httpx.Client]:
    server = HttpServer(http_receiver_app(harness.pipeline))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
    server.stop()


def test_config_limits_defaults_and_validation() -> None:
    limits = parse_config(None).limits
    assert (limits.max_models, limits.max_versions_per_model, limits.max_features_per_model) == (100, 50, 500)
    assert parse_config({"limits": {"max_models": 7}}).limits.max_models == 7
    with pytest.raises(ConfigError, match=r"limits\.max_model: unknown key; known keys: max_models"):
        parse_config({"limits": {"max_model": 7}})
    with pytest.raises(ConfigError, match=r"limits\.max_features_per_model: .*greater than 0"):
        parse_config({"limits": {"max_features_per_model": 0}})


def test_shipped_config_documents_the_defaults() -> None:
    shipped = Path(__file__).parents[2] / "collector-config" / "modeltel.yaml"
    assert load_config(shipped).limits == Limits()


def test_model_beyond_the_limit_is_rejected_over_grpc(harness: Harness, export: Any) -> None:
    response = export(request(prediction("a"), prediction("b")))
    assert not response.HasField("partial_success")
    response = export(request(prediction("a", i=1), prediction("x", i=1), prediction("x", i=2), label("x")))
    assert response.partial_success.rejected_log_records == 3
    assert response.partial_success.error_message == (
        "3 records rejected: model limit reached (2 models): ml.model.name 'x' refused; "
        "raise limits.max_models"
    )
    assert harness.pipeline.drain()
    assert [(b.model, len(b)) for b in harness.recorder.predictions] == [("a", 1), ("b", 1), ("a", 1)]
    assert harness.recorder.labels == []
    assert harness.limited("max_models") == 3
    assert harness.counter(semconv.RECEIVER_REJECTED_METRIC, signal="logs") == 3
    assert harness.counter(semconv.RECEIVER_ACCEPTED_METRIC, signal="logs") == 3
    # Admitted models keep working, labels included.
    response = export(request(prediction("b", i=5), label("a")))
    assert not response.HasField("partial_success")
    assert harness.pipeline.drain()
    assert [b.model for b in harness.recorder.labels] == ["a"]


def test_extraction_rejections_and_limit_rejections_add_up(harness: Harness, export: Any) -> None:
    export(request(prediction("a"), prediction("b")))
    missing_id = {semconv.MODEL_NAME: "a", semconv.MODEL_VERSION: "1"}
    response = export(request(missing_id, *(prediction(f"new{i}") for i in range(5))))
    assert response.partial_success.rejected_log_records == 6
    message = response.partial_success.error_message
    assert message.startswith("1 ml.prediction record rejected: ")
    assert message.endswith(
        "; 5 records rejected: model limit reached (2 models): ml.model.name 'new0', 'new1', 'new2' "
        "and 2 others refused; raise limits.max_models"
    )


def test_version_beyond_the_limit_is_rejected_over_http(harness: Harness, client: httpx.Client) -> None:
    payload = request(
        prediction("a", "1"), prediction("a", "2"), prediction("a", "3"), prediction("a", "3", 1)
    )
    response = client.post("/v1/logs", content=payload, headers=PROTOBUF)
    assert response.status_code == 200
    answer = ExportLogsServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_log_records == 2
    assert answer.partial_success.error_message == (
        "2 records rejected: version limit reached (2 versions per model): ml.model.version '3' of "
        "model 'a' refused; raise limits.max_versions_per_model"
    )
    assert harness.pipeline.drain()
    assert [(b.model, b.version) for b in harness.recorder.predictions] == [("a", "1"), ("a", "2")]
    assert harness.limited("max_versions_per_model") == 2
    # Another model has its own versions.
    response = client.post("/v1/logs", content=request(prediction("b", "3")), headers=PROTOBUF)
    assert not ExportLogsServiceResponse.FromString(response.content).HasField("partial_success")


def test_features_beyond_the_limit_are_left_out_of_accepted_records(harness: Harness, export: Any) -> None:
    response = export(request(prediction("a", f1=1, f2=2), prediction("a", "2", f3="x", f4=4, f5=5)))
    assert response.partial_success.rejected_log_records == 0
    assert response.partial_success.error_message == (
        "2 features left out of the records, which were accepted: feature limit reached (3 features "
        "per model): ml.feature.* 'f4' of model 'a', 'f5' of model 'a' dropped; raise "
        "limits.max_features_per_model"
    )
    assert harness.pipeline.drain()
    kept = [sorted({*b.numeric, *b.categorical}) for b in harness.recorder.predictions]
    assert kept == [["f1", "f2"], ["f3"]]
    assert [len(b) for b in harness.recorder.predictions] == [1, 1]
    assert harness.limited("max_features_per_model") == 2
    assert harness.counter(semconv.RECEIVER_ACCEPTED_METRIC, signal="logs") == 2
    # Admitted features keep arriving; new ones keep being left out, per model.
    response = export(request(prediction("a", f1=3, f6=6), prediction("b", g1=1, g2=2, g3=3)))
    assert "'f6' of model 'a' dropped" in response.partial_success.error_message
    assert harness.pipeline.drain()
    assert sorted(harness.recorder.predictions[-2].numeric) == ["f1"]
    assert sorted(harness.recorder.predictions[-1].numeric) == ["g1", "g2", "g3"]


def test_labels_api_refuses_models_beyond_the_limit(harness: Harness, client: httpx.Client) -> None:
    client.post("/v1/logs", content=request(prediction("a"), prediction("b")), headers=PROTOBUF)
    records = [
        {"model": "a", "prediction_id": "a-1-0", "value": 1.0},
        {"model": "zz", "prediction_id": "zz-1-0", "value": 1.0},
        {"model": "zz", "prediction_id": "zz-1-1"},  # invalid as well: its own error only
    ]
    response = client.post("/v1/labels", json=records)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["accepted"], answer["rejected"]) == (1, 2)
    assert [error["index"] for error in answer["errors"]] == [1, 2]
    assert "model limit reached (2 models)" in answer["errors"][0]["error"]
    assert "'zz' refused; raise limits.max_models" in answer["errors"][0]["error"]
    assert answer["errors"][1]["error"] == "missing value"
    assert harness.pipeline.drain()
    assert [b.model for b in harness.recorder.labels] == ["a"]
    assert harness.limited("max_models", signal="labels") == 1
    assert harness.counter(semconv.RECEIVER_REJECTED_METRIC, signal="labels") == 1


def test_labels_of_a_new_model_within_the_limit_admit_it(harness: Harness, export: Any) -> None:
    response = export(request(label("a"), label("b"), label("c")))
    assert response.partial_success.rejected_log_records == 1
    assert "ml.model.name 'c' refused" in response.partial_success.error_message
    assert sorted(harness.pipeline.admission.models) == ["a", "b"]


def test_memory_bounded_under_ten_thousand_distinct_models(tmp_path: Path) -> None:
    harness = Harness(Limits(), tmp_path)  # the defaults
    try:
        rejected = 0
        for start in range(0, 10_000, 500):
            payload = request(*(prediction(f"model-{i}", i=i, x=i, y=i) for i in range(start, start + 500)))
            outcome = harness.pipeline.consume_logs(payload)
            rejected += outcome.rejected
            assert len(outcome.error_message) < 300  # names listed: a few, the rest counted
            harness.pipeline.drain()
        assert len(harness.pipeline.admission.models) == 100
        assert rejected == 9_900
        assert harness.limited("max_models") == 9_900
        assert sum(len(b) for b in harness.recorder.predictions) == 100
        assert {b.model for b in harness.recorder.predictions} == {f"model-{i}" for i in range(100)}
        # So do versions and features of one model under a stream of new ones.
        for start in range(0, 1_000, 100):
            versions = (prediction("model-0", f"v{i}", i) for i in range(start, start + 100))
            harness.pipeline.consume_logs(request(*versions))
            features = (prediction("model-0", "1", i, **{f"f{i}": i}) for i in range(start, start + 100))
            harness.pipeline.consume_logs(request(*features))
        state = harness.pipeline.admission.models["model-0"]
        assert (len(state.versions), len(state.features)) == (50, 500)
    finally:
        harness.pipeline.shutdown()


def test_admitted_names_survive_a_restart(tmp_path: Path) -> None:
    limits = Limits(max_models=2, max_versions_per_model=1, max_features_per_model=1)
    first = Harness(limits, tmp_path)
    first.pipeline.consume_logs(request(prediction("a", x=1), prediction("b")))
    first.pipeline.shutdown()
    state = StateDb(tmp_path)
    checkpoint = state.load()
    state.close()
    assert checkpoint is not None and checkpoint[1][LIMITS_CHECKPOINT_KEY] == {
        "a": {"versions": ["1"], "features": ["x"]},
        "b": {"versions": ["1"], "features": []},
    }
    second = Harness(limits, tmp_path)
    try:
        outcome = second.pipeline.consume_logs(request(prediction("c"), prediction("a", x=2, y=3)))
        assert outcome.rejected == 1
        assert "ml.model.name 'c' refused" in outcome.error_message
        assert "'y' of model 'a' dropped" in outcome.error_message
        second.pipeline.drain()
        assert [(b.model, sorted(b.numeric)) for b in second.recorder.predictions] == [("a", ["x"])]
    finally:
        second.pipeline.shutdown()


def test_a_request_that_cannot_be_queued_admits_nothing(tmp_path: Path) -> None:
    harness = Harness(Limits(max_models=2), tmp_path, max_queue_batches=1)
    try:
        with pytest.raises(PayloadTooLarge):
            harness.pipeline.consume_logs(request(prediction("a"), prediction("b")))
        assert harness.pipeline.admission.models == {}
        assert harness.pipeline.consume_logs(request(prediction("c"))).rejected == 0
    finally:
        harness.pipeline.shutdown()


def test_concurrent_requests_never_admit_beyond_the_limit(tmp_path: Path) -> None:
    harness = Harness(Limits(max_models=10), tmp_path, max_queue_batches=100_000)
    try:

        def send(worker: int) -> None:
            for i in range(50):
                harness.pipeline.consume_logs(request(prediction(f"w{worker}-{i}")))

        threads = [threading.Thread(target=send, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert harness.pipeline.drain()
        assert len(harness.pipeline.admission.models) == 10
        assert len({b.model for b in harness.recorder.predictions}) == 10
        assert harness.limited("max_models") == 400 - 10
    finally:
        harness.pipeline.shutdown()


def test_collector_applies_the_configured_limits(tmp_path: Path) -> None:
    config = parse_config(
        {"limits": {"max_models": 3}, "data_dir": str(tmp_path), "exporters": {"prometheus": None}}
    )
    collector = Collector(config)
    try:
        assert collector.pipeline.admission.limits.max_models == 3
    finally:
        collector.pipeline.shutdown()
