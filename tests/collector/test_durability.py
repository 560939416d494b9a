"""Crash recovery: the collector is SIGKILLed again and again while OTel exporters stream events.

Every event the exporters got acknowledged must be counted exactly once afterwards: in
``ml.predictions``, in the audit log and in the joined labels. The exporters are the OTel
Python SDK's own (gRPC), which retry on ``UNAVAILABLE`` and connection failures; a call
that still fails (the collector was down longer than its retry deadline) is sent again.
With ``MODELTEL_RELIABILITY_RESULTS`` set, the figures are written there as JSON.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import httpx
import yaml
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    InMemoryLogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

from modeltel import semconv
from modeltel_collector.batch import PredictionBatch
from modeltel_collector.wal import WriteAheadLog
from tests.collector.test_cardinality import prediction, request
from tests.conftest import ROOT
from tests.daemons import Daemon, wait_for
from tests.otlp_sink import NullProcessor, free_port, open_pipeline, wait_until

EVENTS = 200_000
BATCH = 2_000
"""Predictions per request; their labels follow in the next request."""
KILLS = 6
SENDERS = 2
MODEL = "salary"


# The write-ahead log and the pipeline, in process.


def test_log_group_commits_concurrent_appends_and_replays_them_in_order(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    seqs: list[int] = []

    def append(worker: int) -> None:
        for i in range(50):
            seq = wal.append("logs", f"{worker}-{i}".encode(), i)
            wal.wait(seq, 30)
            seqs.append(seq)

    threads = [threading.Thread(target=append, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wal.close()
    assert sorted(seqs) == list(range(1, 201))
    reopened = WriteAheadLog(tmp_path)
    entries = list(reopened.entries(after=150))
    assert [e.seq for e in entries] == list(range(151, 201))
    assert entries[0].kind == "logs" and entries[0].payload.count(b"-") == 1
    reopened.close()


def test_log_cuts_a_torn_tail_and_truncates_whole_segments(tmp_path: Path, caplog: Any) -> None:
    wal = WriteAheadLog(tmp_path)
    for i in range(3):
        wal.wait(wal.append("labels", b"[]", i), 30)
    wal.close()
    (segment,) = tmp_path.glob("*.wal")
    with segment.open("ab") as file:  # a frame cut short by a crash: never acknowledged
        file.write(b"\x40\x00\x00\x00\x01\x02")
    wal = WriteAheadLog(tmp_path)
    assert "incomplete write" in caplog.text
    assert [e.seq for e in wal.entries(0)] == [1, 2, 3]
    wal.truncate(3)  # a checkpoint took everything: the segment goes, numbering goes on
    wait_until(lambda: segment not in set(tmp_path.glob("*.wal")), 10, "the old segment to be deleted")
    assert wal.append("logs", b"x", 0) == 4
    wal.close()


class Recorder(NullProcessor):
    def __init__(self) -> None:
        self.predictions: list[PredictionBatch] = []

    def process_predictions(self, batch: PredictionBatch) -> None:
        self.predictions.append(batch)


def test_a_retried_request_is_applied_once_and_counted_as_a_duplicate(tmp_path: Path) -> None:
    reader = InMemoryMetricReader()
    recorder = Recorder()
    pipeline = open_pipeline(
        {"recorder": recorder}, MeterProvider(metric_readers=[reader]).get_meter("t"), tmp_path
    )
    payload = request(*(prediction("m", i=i) for i in range(3)))
    try:
        pipeline.consume_logs(payload)
        pipeline.consume_logs(payload)  # the exporter's retry: the same bytes
        pipeline.consume_logs(request(prediction("m", i=3)))
        assert pipeline.drain(10)
        assert [len(batch) for batch in recorder.predictions] == [3, 1]
        points = {
            metric.name: sum(point.value for point in metric.data.data_points)
            for resource in reader.get_metrics_data().resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }
        assert points[semconv.PREDICTIONS_METRIC] == 4
        assert points[semconv.RECEIVER_DUPLICATES_METRIC] == 1
        assert points[semconv.RECEIVER_ACCEPTED_METRIC] == 7  # what the receiver took, retry included
    finally:
        pipeline.shutdown()


def test_requests_after_the_last_checkpoint_are_replayed_once(tmp_path: Path) -> None:
    """A crash after the log took requests and before a checkpoint: the restart applies them."""
    first = Recorder()
    meter = MeterProvider().get_meter("t")
    pipeline = open_pipeline({"recorder": first}, meter, tmp_path, checkpoint_seconds=3600)
    pipeline.consume_logs(request(prediction("m", i=0)))
    pipeline.checkpoint()
    pipeline.consume_logs(request(prediction("m", i=1), prediction("m", i=2)))
    assert pipeline.drain(10)
    pipeline._wal.close()  # the crash: nothing else is written, the state is not committed
    pipeline._state.connection.close()

    second = Recorder()
    restarted = open_pipeline({"recorder": second}, meter, tmp_path)
    try:
        assert [batch.prediction_ids.tolist() for batch in second.predictions] == [["m-1-1", "m-1-2"]]
        restarted.consume_logs(request(prediction("m", i=1), prediction("m", i=2)))  # a late retry
        assert restarted.drain(10)
        assert len(second.predictions) == 1
    finally:
        restarted.shutdown()


# The collector, killed.


def _metric(text: str, name: str) -> float:
    match = re.search(rf'^{name}\{{[^}}]*ml_model_name="{MODEL}"[^}}]*\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@dataclass
class Collector:
    """``modeltel collect`` as a child process that can be killed and started again."""

    workdir: Path
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    starts: int = 0
    daemon: Daemon | None = None

    def __post_init__(self) -> None:
        config = {
            "receivers": {"otlp": {"protocols": {
                "grpc": {"endpoint": f"127.0.0.1:{self.grpc_port}"}, "http": None,
            }}},
            "processors": {"drift": {"warmup": 500}, "performance": {}, "service": None, "audit": {}},
            "exporters": {"prometheus": {"endpoint": f"127.0.0.1:{self.metrics_port}"}},
            "models": {MODEL: {"task": "regression"}},
            "durability": {"checkpoint_interval": "1s"},
        }  # fmt: skip
        self.config = self.workdir / "modeltel.yaml"
        self.config.write_text(yaml.safe_dump(config))

    def start(self) -> None:
        self.starts += 1
        command = [sys.executable, "-m", "modeltel_collector.cli", "collect", "--config", str(self.config),
                   "--data-dir", str(self.workdir / "data"), "--window", "2s"]  # fmt: skip
        self.daemon = Daemon("collector", command, self.workdir / f"collector-{self.starts}.log", cwd=ROOT)
        wait_for(lambda: self.scrape() != "", 60, "the collector's /metrics", [self.daemon])

    def kill(self) -> None:
        assert self.daemon is not None
        self.daemon.assert_running()
        os.kill(self.daemon.process.pid, signal.SIGKILL)
        self.daemon.process.wait()
        self.daemon.stop()  # closes the log

    def stop(self) -> None:
        assert self.daemon is not None
        assert self.daemon.stop(60) == 0, self.daemon.tail()

    def scrape(self) -> str:
        try:
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        except httpx.TransportError:
            return ""

    def logs(self) -> str:
        return "".join(
            path.read_text(errors="replace") for path in sorted(self.workdir.glob("collector-*.log"))
        )


class Stream:
    """Batches of predictions, then their labels, exported by OTel SDK exporters until acknowledged."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.acknowledged_predictions = 0
        self.acknowledged_labels = 0
        self.calls = 0
        self.failed_calls = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()

    @staticmethod
    def _records(batch: int, kind: str) -> list[Any]:
        memory = InMemoryLogRecordExporter()
        provider = LoggerProvider(resource=Resource.create({"service.name": "salary-api"}))
        provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
        logger = provider.get_logger("modeltel.durability")
        rng = random.Random(batch)
        for i in range(batch * BATCH, (batch + 1) * BATCH):
            attributes: dict[str, Any] = {semconv.MODEL_NAME: MODEL, semconv.PREDICTION_ID: f"p{i}"}
            if kind == "predictions":
                years = rng.uniform(0, 40)
                attributes |= {
                    semconv.MODEL_VERSION: "1",
                    f"{semconv.FEATURE_PREFIX}years_experience": years,
                    f"{semconv.FEATURE_PREFIX}role": rng.choice(["engineer", "manager", "analyst"]),
                    semconv.PREDICTION_VALUE: 30_000 + 1_500 * years,
                }
                logger.emit(event_name=semconv.PREDICTION_EVENT, attributes=attributes)
            else:
                attributes[semconv.LABEL_VALUE] = 30_000 + 1_500 * rng.uniform(0, 40)
                logger.emit(event_name=semconv.LABEL_EVENT, attributes=attributes)
        return list(memory.get_finished_logs())

    def _export(self, exporter: OTLPLogExporter, records: list[Any]) -> None:
        while True:  # the exporter retries for up to its timeout; then the application sends again
            with self._lock:
                self.calls += 1
            if exporter.export(records) == LogRecordExportResult.SUCCESS:
                return
            with self._lock:
                self.failed_calls += 1

    def send(self, batches: range) -> None:
        try:
            exporter = OTLPLogExporter(endpoint=self.endpoint, insecure=True, timeout=10)
            for batch in batches:
                self._export(exporter, self._records(batch, "predictions"))
                with self._lock:
                    self.acknowledged_predictions += BATCH
                self._export(exporter, self._records(batch, "labels"))
                with self._lock:
                    self.acknowledged_labels += BATCH
            exporter.shutdown()
        except BaseException as error:  # surfaced by the test
            self.errors.append(error)


def test_sigkill_during_a_stream_loses_nothing_and_counts_nothing_twice(tmp_path: Path) -> None:
    collector = Collector(tmp_path)
    collector.start()
    stream = Stream(f"127.0.0.1:{collector.grpc_port}")
    batches = EVENTS // BATCH
    senders = [
        threading.Thread(target=stream.send, args=(range(i, batches, SENDERS),), daemon=True)
        for i in range(SENDERS)
    ]
    started = time.monotonic()
    for sender in senders:
        sender.start()
    rng = random.Random(5)
    kill_times = []
    for kill in range(1, KILLS + 1):  # spread over the stream: after each sixth of it, a random moment
        wait_until(
            lambda kill=kill: (
                stream.acknowledged_predictions >= EVENTS * kill // (KILLS + 2) or stream.errors
            ),
            300,
            f"the stream to reach kill {kill}",
        )
        time.sleep(rng.uniform(0.0, 0.5))
        kill_times.append(round(time.monotonic() - started, 2))
        collector.kill()
        collector.start()
    for sender in senders:
        sender.join(600)
    assert not stream.errors, stream.errors
    assert stream.acknowledged_predictions == stream.acknowledged_labels == EVENTS

    def settled() -> str | None:
        text = collector.scrape()
        joined = _metric(text, "ml_labels_joined_total")
        return text if _metric(text, "ml_predictions_total") >= EVENTS and joined >= EVENTS else None

    text = wait_until(settled, 120, "every acknowledged event to be applied")
    collector.stop()
    collector.start()  # the totals are cumulative across restarts, kills included
    restarted = collector.scrape()
    collector.stop()
    predictions = _metric(restarted, "ml_predictions_total")
    joined = _metric(restarted, "ml_labels_joined_total")
    assert (_metric(text, "ml_predictions_total"), _metric(text, "ml_labels_joined_total")) == (
        EVENTS,
        EVENTS,
    )
    assert (predictions, joined) == (EVENTS, EVENTS)

    audit = tmp_path / "data" / "audit"
    counts = "select count(*), count(distinct prediction_id) from read_parquet('{}/**/*.parquet')"
    rows, distinct = duckdb.sql(counts.format(audit / "predictions")).fetchall()[0]
    label_rows, label_distinct = duckdb.sql(counts.format(audit / "labels")).fetchall()[0]
    assert (rows, distinct) == (EVENTS, EVENTS)
    assert (label_rows, label_distinct) == (EVENTS, EVENTS)

    logs = collector.logs()
    replayed = sum(int(n) for n in re.findall(r"replayed (\d+) requests", logs))
    results = {
        "events": EVENTS,
        "labels": EVENTS,
        "kills": len(kill_times),
        "kill_times_s": kill_times,
        "export_calls": stream.calls,
        "export_calls_failed_after_retries": stream.failed_calls,
        "requests_replayed_after_kills": replayed,
        "ml_predictions": predictions,
        "labels_joined": joined,
        "audit_prediction_rows": rows,
        "audit_label_rows": label_rows,
        "events_lost": EVENTS - distinct,
        "duplicates_counted": rows - distinct + label_rows - label_distinct + int(predictions - EVENTS),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(results))
    if out := os.environ.get("MODELTEL_RELIABILITY_RESULTS"):
        path = Path(out)
        existing = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps(existing | {"sigkill": results}, indent=2))
