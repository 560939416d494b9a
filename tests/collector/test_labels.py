"""Labels by HTTP (``POST /v1/labels``) and in bulk (``modeltel labels import``), to the RMSE on /metrics."""

from __future__ import annotations

import gzip
import json
import math
import re
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import uvicorn
import yaml
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modeltel import semconv
from modeltel_collector.batch import LabelBatch
from modeltel_collector.labels import MAX_LABELS_PER_REQUEST, labels_from_records
from modeltel_collector.receivers import http_receiver_app
from tests.conftest import ROOT, telemetry_env
from tests.otlp_sink import HttpSink, NullProcessor, free_port, open_pipeline, wait_until

NOW = 1_700_000_000_000_000_000


class RecordingProcessor(NullProcessor):
    """Keeps the label batches it is given; ``block`` holds the pipeline thread in ``process_labels``."""

    def __init__(self) -> None:
        self.labels: list[LabelBatch] = []
        self.block = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.busy = threading.Event()

    def process_labels(self, batch: LabelBatch) -> None:
        self.busy.set()
        self.release.wait(30)
        self.labels.append(batch)


class LabelServer:
    """A real Pipeline with a :class:`RecordingProcessor`, behind uvicorn serving ``http_receiver_app``."""

    def __init__(self, data_dir: Path, max_queue_batches: int = 64) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.processor = RecordingProcessor()
        self.pipeline = open_pipeline(
            {"recording": self.processor},
            self.provider.get_meter("test"),
            data_dir,
            max_queue_batches=max_queue_batches,
        )
        port = free_port()
        config = uvicorn.Config(
            http_receiver_app(self.pipeline), host="127.0.0.1", port=port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, 10, "the OTLP/HTTP receiver to start")
        self.url = f"http://127.0.0.1:{port}/v1/labels"

    def post(self, body: Any, **kwargs: Any) -> httpx.Response:
        if "content" not in kwargs:
            kwargs["json"] = body
        return httpx.post(self.url, timeout=10, **kwargs)

    def batches(self) -> list[LabelBatch]:
        assert self.pipeline.drain(10)
        return list(self.processor.labels)

    def accepted(self, signal_name: str) -> int:
        data = self.reader.get_metrics_data()
        total = 0
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == semconv.RECEIVER_ACCEPTED_METRIC:
                        for point in metric.data.data_points:
                            if point.attributes.get("signal") == signal_name:
                                total += int(point.value)
        return total

    def stop(self) -> None:
        self.processor.release.set()
        self.server.should_exit = True
        self.thread.join(10)
        self.pipeline.shutdown()
        self.provider.shutdown()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LabelServer]:
    label_server = LabelServer(tmp_path)
    yield label_server
    label_server.stop()


def _answer(accepted: int, errors: list[dict[str, Any]] | None = None, not_shown: int = 0) -> dict[str, Any]:
    errors = errors or []
    return {
        "accepted": accepted,
        "rejected": len(errors) + not_shown,
        "errors": errors,
        "errors_not_shown": not_shown,
    }


# --- the endpoint ----------------------------------------------------------------------


def test_valid_labels_become_one_batch(server: LabelServer) -> None:
    labels = [
        {"model": "m", "prediction_id": "a", "value": 1.5, "time_unix_nano": NOW},
        {"model": "m", "prediction_id": "b", "value": 2, "time_unix_nano": str(NOW + 1)},
        {"model": "m", "prediction_id": "c", "value": -3.25, "extra": "ignored"},
    ]
    response = server.post(labels)
    assert response.status_code == 200, response.text
    assert response.json() == _answer(3)
    [batch] = server.batches()
    assert batch.model == "m"
    assert batch.prediction_ids.tolist() == ["a", "b", "c"]
    assert batch.value.dtype == np.float64
    assert batch.value.tolist() == [1.5, 2.0, -3.25]
    assert batch.value_class is None
    assert batch.time_unix_nano.dtype == np.int64
    assert batch.time_unix_nano[:2].tolist() == [NOW, NOW + 1]
    assert batch.time_unix_nano[2] > NOW  # received now
    assert server.accepted("labels") == 3


def test_object_form_and_gzip(server: LabelServer) -> None:
    body = gzip.compress(json.dumps({"labels": [{"model": "m", "prediction_id": "a", "value": 1}]}).encode())
    response = server.post(
        None, content=body, headers={"content-type": "application/json", "content-encoding": "gzip"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == _answer(1)
    assert [b.prediction_ids.tolist() for b in server.batches()] == [["a"]]


def test_invalid_items_are_reported_by_index_and_the_others_used(server: LabelServer) -> None:
    labels = [
        {"model": "m", "prediction_id": "ok1", "value": 1},
        {"model": "m", "value": 1},
        {"model": 7, "prediction_id": "x", "value": 1},
        {"prediction_id": "x", "value": 1},
        {"model": "m", "prediction_id": "", "value": 1},
        {"model": "m", "prediction_id": "x"},
        {"model": "m", "prediction_id": "x", "value": None},
        {"model": "m", "prediction_id": "x", "value": [1, 2]},
        {"model": "m", "prediction_id": "x", "value": ""},
        "not an object",
        {"model": "m", "prediction_id": "x", "value": 1, "time_unix_nano": "yesterday"},
        {"model": "m", "prediction_id": "x", "value": 1, "time_unix_nano": -5},
        {"model": "m", "prediction_id": "ok2", "value": 2},
    ]
    response = server.post(labels)
    assert response.status_code == 200, response.text
    errors = [
        (1, "missing prediction_id"),
        (2, "model is a number, not a string"),
        (3, "missing model"),
        (4, "prediction_id is empty"),
        (5, "missing value"),
        (6, "missing value"),
        (7, "value is a list, not a number, string or bool"),
        (8, "value is empty"),
        (9, "the item is a string, not an object"),
        (10, "time_unix_nano is a string, not an integer (nanoseconds since the Unix epoch)"),
        (11, "time_unix_nano is out of range (0 to 2**63 - 1)"),
    ]
    assert response.json() == _answer(2, [{"index": i, "error": e} for i, e in errors])
    [batch] = server.batches()
    assert batch.prediction_ids.tolist() == ["ok1", "ok2"]


def test_non_finite_numbers_are_rejected(server: LabelServer) -> None:
    body = b'[{"model": "m", "prediction_id": "a", "value": NaN},'
    body += b' {"model": "m", "prediction_id": "b", "value": 1e999}]'
    response = server.post(None, content=body, headers={"content-type": "application/json"})
    assert response.json() == _answer(
        0,
        [
            {"index": 0, "error": "value is not a finite number"},
            {"index": 1, "error": "value is not a finite number"},
        ],
    )
    assert server.batches() == []


def test_numbers_strings_and_bools_follow_the_ml_label_conventions(server: LabelServer) -> None:
    labels = [
        {"model": "m", "prediction_id": "a", "value": 1},
        {"model": "m", "prediction_id": "b", "value": "cat"},
        {"model": "m", "prediction_id": "c", "value": True},
        {"model": "m", "prediction_id": "d", "value": 2.5},
        {"model": "m", "prediction_id": "e", "value": False},
    ]
    assert server.post(labels).json() == _answer(5)
    [batch] = server.batches()
    assert np.array_equal(batch.value, [1.0, np.nan, np.nan, 2.5, np.nan], equal_nan=True)
    assert batch.value_class is not None
    assert batch.value_class.tolist() == ["1", "cat", "true", "2.5", "false"]


def test_several_models_give_one_batch_each_in_order_of_appearance(server: LabelServer) -> None:
    labels = [
        {"model": "b", "prediction_id": "b1", "value": 1.0},
        {"model": "a", "prediction_id": "a1", "value": "x"},
        {"model": "b", "prediction_id": "b2", "value": 2.0},
        {"model": "c", "prediction_id": "c1", "value": 3},
        {"model": "a", "prediction_id": "a2", "value": "y"},
    ]
    assert server.post(labels).json() == _answer(5)
    batches = server.batches()
    assert [(b.model, b.prediction_ids.tolist()) for b in batches] == [
        ("b", ["b1", "b2"]),
        ("a", ["a1", "a2"]),
        ("c", ["c1"]),
    ]
    assert batches[0].value.tolist() == [1.0, 2.0] and batches[0].value_class is None
    assert batches[1].value_class is not None and batches[1].value_class.tolist() == ["x", "y"]
    assert batches[2].value_class is None
    assert server.accepted("labels") == 5


def test_error_list_is_capped(server: LabelServer) -> None:
    labels = [{"model": "m", "value": 1}] * 150 + [{"model": "m", "prediction_id": "ok", "value": 1}]
    answer = server.post(labels).json()
    assert answer["accepted"] == 1 and answer["rejected"] == 150
    assert len(answer["errors"]) == 100 and answer["errors_not_shown"] == 50
    assert answer["errors"][99] == {"index": 99, "error": "missing prediction_id"}


def test_too_many_items_is_413_and_nothing_is_taken(server: LabelServer) -> None:
    labels = [{"model": "m", "prediction_id": str(i), "value": i} for i in range(MAX_LABELS_PER_REQUEST + 1)]
    response = server.post(labels)
    assert response.status_code == 413
    status = response.json()
    assert status["code"] == 8  # RESOURCE_EXHAUSTED
    assert f"the limit is {MAX_LABELS_PER_REQUEST}" in status["message"]
    assert server.batches() == []
    ok = server.post(labels[:MAX_LABELS_PER_REQUEST])
    assert ok.status_code == 200 and ok.json()["accepted"] == MAX_LABELS_PER_REQUEST


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[{not json", "the body is not valid JSON"),
        (b"\xff\xfe garbage", "the body is not valid JSON"),
        (b"42", "the body must be a JSON list of labels"),
        (b'{"model": "m"}', "the body must be a JSON list of labels"),
        (b'{"labels": 3}', "the body must be a JSON list of labels"),
    ],
)
def test_unparseable_body_is_400_with_a_status(server: LabelServer, body: bytes, message: str) -> None:
    response = server.post(None, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    status = response.json()
    assert status["code"] == 3  # INVALID_ARGUMENT
    assert status["message"].startswith(message)
    assert status["details"][0]["@type"].endswith("google.rpc.BadRequest")
    assert server.batches() == []


def test_other_content_types_are_415(server: LabelServer) -> None:
    response = server.post(None, content=b"[]", headers={"content-type": "application/x-protobuf"})
    assert response.status_code == 415


def test_overloaded_is_429_with_retry_after_and_all_or_nothing(tmp_path: Path) -> None:
    label_server = LabelServer(tmp_path, max_queue_batches=2)
    processor = label_server.processor
    try:
        processor.release.clear()
        assert label_server.post([{"model": "a", "prediction_id": "1", "value": 1}]).status_code == 200
        wait_until(processor.busy.is_set, 10, "the pipeline to take the first batch")
        assert label_server.post([{"model": "b", "prediction_id": "2", "value": 1}]).status_code == 200
        # One slot left in the queue, two models in the request: nothing of it is queued.
        two = [
            {"model": "c", "prediction_id": "3", "value": 1},
            {"model": "d", "prediction_id": "4", "value": 1},
        ]
        response = label_server.post(two)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        assert response.json()["code"] == 14  # UNAVAILABLE
        processor.release.set()
        assert [b.model for b in label_server.batches()] == ["a", "b"]
        assert label_server.post(two).status_code == 200  # the retry succeeds
        assert [b.model for b in label_server.batches()] == ["a", "b", "c", "d"]
    finally:
        label_server.stop()


def test_consumer_without_consume_labels_has_no_labels_path() -> None:
    sink = HttpSink()  # its RecordingConsumer takes OTLP only
    try:
        response = httpx.post(f"{sink.endpoint}/v1/labels", json=[], timeout=10)
        assert response.status_code == 404
    finally:
        sink.stop()


def test_labels_from_records_directly() -> None:
    batches, errors = labels_from_records(
        [
            {"model": "m", "prediction_id": "a", "value": 10**400},
            {"model": "m", "prediction_id": "b", "value": 1},
        ],
        now_unix_nano=NOW,
    )
    assert [e.to_dict() for e in errors] == [{"index": 0, "error": "value is too large for a float"}]
    assert batches[0].time_unix_nano.tolist() == [NOW]


# --- end to end: predictions by the SDK, labels by `modeltel labels import`, RMSE on /metrics ---------

N = 200
SENDER = textwrap.dedent(
    """
    import sys
    import modeltel
    for line in sys.stdin:
        pid, x, prediction = line.split()
        modeltel.log_prediction({"x": float(x)}, float(prediction), model="m", version="1", prediction_id=pid)
    assert modeltel.force_flush()
    """
)


def _metrics(port: int) -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.TransportError:
        return ""


def _sample(text: str, metric: str, **labels: str) -> float | None:
    for match in re.finditer(rf"^{metric}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE):
        if all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            return float(match.group(2))
    return None


def _import(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "modeltel_collector.cli", "labels", "import", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _send_predictions(grpc_port: int, ids: list[str], x: np.ndarray, predictions: np.ndarray) -> None:
    rows = zip(ids, x.tolist(), predictions.tolist(), strict=True)
    lines = "".join(f"{pid} {xi!r} {p!r}\n" for pid, xi, p in rows)
    env = telemetry_env(
        f"http://127.0.0.1:{grpc_port}", OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none"
    )
    subprocess.run(
        [sys.executable, "-c", SENDER], input=lines, text=True, env=env, cwd=ROOT, check=True, timeout=120
    )


def test_imported_labels_are_joined_once_and_give_the_numpy_rmse(tmp_path: Path) -> None:
    ports = {"grpc": free_port(), "http": free_port(), "prometheus": free_port()}
    config = {
        "receivers": {"otlp": {"protocols": {
            "grpc": {"endpoint": f"127.0.0.1:{ports['grpc']}"},
            "http": {"endpoint": f"127.0.0.1:{ports['http']}"},
        }}},
        "processors": {"drift": {"warmup": 20, "min_samples": 10}},
        "exporters": {"prometheus": {"endpoint": f"127.0.0.1:{ports['prometheus']}"}},
    }  # fmt: skip
    config_path = tmp_path / "modeltel.yaml"
    config_path.write_text(yaml.safe_dump(config))
    endpoint = f"http://127.0.0.1:{ports['http']}"

    rng = np.random.default_rng(3)
    ids = [f"pred-{i:04d}" for i in range(N + 1)]  # the last one is labelled last, on its own
    x = rng.normal(10, 2, N + 1)
    predictions = 3 * x + rng.normal(0, 1, N + 1)
    truth = 3 * x + rng.normal(0, 2, N + 1)
    csv_rows, parquet_rows = slice(0, 120), slice(120, N)
    csv_path = tmp_path / "labels.csv"
    csv_table = pa.table(
        {
            "model": ["m"] * 121,
            "prediction_id": [*ids[csv_rows], "pred-bad"],
            "label": [*truth[csv_rows].tolist(), None],  # the last row has no label: rejected
        }
    )
    pacsv.write_csv(csv_table, csv_path)
    parquet_path = tmp_path / "labels.parquet"
    pq.write_table(
        pa.table({"id": ids[parquet_rows], "y": truth[parquet_rows]}), parquet_path, row_group_size=30
    )
    last_path = tmp_path / "last.csv"
    pacsv.write_csv(pa.table({"prediction_id": [ids[N]], "label": [truth[N]]}), last_path)

    command = [sys.executable, "-m", "modeltel_collector.cli", "collect", "--config", str(config_path),
               "--data-dir", str(tmp_path / "data"), "--window", "1d"]  # fmt: skip
    collector = subprocess.Popen(command, cwd=ROOT)
    try:
        wait_until(lambda: "target_info" in _metrics(ports["prometheus"]), 30, "the collector's /metrics")
        _send_predictions(ports["grpc"], ids, x, predictions)
        wait_until(
            lambda: (
                _sample(_metrics(ports["prometheus"]), "ml_predictions_total", ml_model_name="m") == N + 1
            ),
            30,
            "the predictions to arrive",
        )

        def import_all() -> None:
            result = _import(str(csv_path), "--endpoint", endpoint, "--chunk-size", "50")
            assert result.returncode == 0, result.stderr
            assert "121 rows read, 120 accepted, 1 rejected" in result.stdout
            assert re.search(r"121\s+│\s+missing value", result.stdout), result.stdout
            result = _import(
                str(parquet_path),
                "--endpoint",
                endpoint,
                "--model",
                "m",
                "--id-column",
                "id",
                "--value-column",
                "y",
            )
            assert result.returncode == 0, result.stderr
            assert f"{N - 120} rows read, {N - 120} accepted, 0 rejected" in result.stdout

        import_all()

        def joined() -> float | None:
            return _sample(_metrics(ports["prometheus"]), "ml_labels_joined_total", ml_model_name="m")

        wait_until(lambda: joined() == N, 30, f"{N} labels joined")
        text = _metrics(ports["prometheus"])
        pairs = slice(0, N)
        expected = math.sqrt(np.mean((predictions[pairs] - truth[pairs]) ** 2))
        assert _sample(text, "ml_performance_rmse", ml_model_name="m") == pytest.approx(expected, rel=1e-9)

        import_all()  # again: every label is a duplicate now
        # The last label, queued after the duplicates, shows when they have been processed.
        result = _import(str(last_path), "--endpoint", endpoint, "--model", "m")
        assert result.returncode == 0, result.stderr
        wait_until(lambda: joined() is not None and joined() >= N + 1, 30, "the last label joined")
        text = _metrics(ports["prometheus"])
        assert _sample(text, "ml_labels_joined_total", ml_model_name="m") == N + 1
        expected = math.sqrt(np.mean((predictions - truth) ** 2))
        assert _sample(text, "ml_performance_rmse", ml_model_name="m") == pytest.approx(expected, rel=1e-9)
        assert _sample(text, "modeltel_receiver_accepted_total", signal="labels") == 2 * N + 1
    finally:
        collector.send_signal(signal.SIGTERM)
        assert collector.wait(60) == 0


def test_missing_column_is_named_with_the_file_columns(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("prediction_id,truth,model\na,1,m\n")
    result = _import(str(path), "--endpoint", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "has no column 'label'" in result.stderr
    assert "--value-column" in result.stderr
    assert "its columns: prediction_id, truth, model" in result.stderr

    parquet = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"prediction_id": ["a"], "label": [1.0]}), parquet)
    result = _import(str(parquet), "--endpoint", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "has no column 'model'" in result.stderr and "--model" in result.stderr
    assert "its columns: prediction_id, label" in result.stderr


def test_unreachable_collector_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("prediction_id,label,model\na,1,m\n")
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = _import(str(path), "--endpoint", endpoint)
    assert result.returncode == 1
    assert f"no collector answers at {endpoint}: start `modeltel collect` first" in result.stderr


def test_busy_collector_is_retried_after_its_retry_after(tmp_path: Path) -> None:
    busy = [429, 503]  # then 200
    received: list[int] = []

    async def labels(request: Request) -> Response:
        records = json.loads(gzip.decompress(await request.body()))
        if records and busy:
            return Response(status_code=busy.pop(0), headers={"Retry-After": "0"})
        received.append(len(records))
        return JSONResponse({"accepted": len(records), "rejected": 0, "errors": [], "errors_not_shown": 0})

    port = free_port()
    app = Starlette(routes=[Route("/v1/labels", labels, methods=["POST"])])
    fake = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=fake.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: fake.started, 10, "the fake collector to start")
        path = tmp_path / "labels.csv"
        path.write_text("prediction_id,label\na,1\nb,2\nc,x\n")
        result = _import(str(path), "--endpoint", f"http://127.0.0.1:{port}", "--model", "m")
        assert result.returncode == 0, result.stderr
        assert "3 rows read, 3 accepted, 0 rejected" in result.stdout
        assert busy == [] and received == [0, 3]  # the handshake, then the chunk once
    finally:
        fake.should_exit = True
        thread.join(10)
