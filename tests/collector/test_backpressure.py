"""Backpressure: clients producing three times what the collector can take, for 60 s.

The collector's bounded queue answers ``UNAVAILABLE`` with a ``RetryInfo`` delay; the
clients (each one export in flight, as an OTel SDK exporter) wait and send the same
request again, never dropping one. First the sustainable rate is measured (what the
pipeline applies per second with the clients sending as fast as they can), then the
clients produce three times that for 60 s, then they catch up. Afterwards every event
must be counted exactly once, and the collector's resident memory must not have grown
with the backlog (which the clients hold, not the collector). With
``MODELTEL_RELIABILITY_RESULTS`` set, the figures are written there as JSON.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import yaml
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from modeltel import semconv
from tests.conftest import ROOT
from tests.daemons import Daemon, wait_for
from tests.otlp_sink import free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # about 3.5 minutes

BATCH = 500
"""Events per request."""
FEATURES = 40
"""Numeric features per event: the collector's work per event, so that it, not the clients, is the
bottleneck (the clients only patch ids into a template)."""
CLIENTS = 16
MEASURE_S = 10.0
OVERLOAD_S = 60.0
OVERLOAD = 3.0
MAX_QUEUE_BATCHES = 64
WARMED_UP = 200_000
"""Events applied before the sustainable rate is measured (drift references built, caches warm)."""
LOGS_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
_ID_DIGITS = 10


class Requests:
    """Requests of ``BATCH`` prediction events with ids ``n`` to ``n + BATCH - 1``, made by patching the
    ids into one serialized template (cheap enough to make them again for every retry)."""

    def __init__(self) -> None:
        request = ExportLogsServiceRequest()
        records = request.resource_logs.add().scope_logs.add().log_records
        rng = np.random.default_rng(3)
        for i in range(BATCH):
            record = records.add(event_name=semconv.PREDICTION_EVENT)
            for key, value in {
                semconv.MODEL_NAME: AnyValue(string_value="salary"),
                semconv.MODEL_VERSION: AnyValue(string_value="1"),
                semconv.PREDICTION_ID: AnyValue(string_value=f"P{i:0{_ID_DIGITS}d}"),
                **{
                    f"{semconv.FEATURE_PREFIX}x{f}": AnyValue(double_value=float(rng.normal(f, 1)))
                    for f in range(FEATURES)
                },
                f"{semconv.FEATURE_PREFIX}role": AnyValue(string_value=str(rng.choice(["a", "b", "c"]))),
                semconv.PREDICTION_VALUE: AnyValue(double_value=float(rng.normal(50_000, 9_000))),
            }.items():
                record.attributes.append(KeyValue(key=key, value=value))
        self.template = np.frombuffer(request.SerializeToString(), np.uint8)
        data = self.template.tobytes()
        starts = np.array([data.index(b"P%0*d" % (_ID_DIGITS, i)) + 1 for i in range(BATCH)])
        self._where = starts[:, None] + np.arange(_ID_DIGITS)
        self._powers = 10 ** np.arange(_ID_DIGITS - 1, -1, -1, dtype=np.int64)

    def make(self, first: int) -> bytes:
        ids = first + np.arange(BATCH, dtype=np.int64)
        payload = self.template.copy()
        payload[self._where] = (ids[:, None] // self._powers % 10 + ord("0")).astype(np.uint8)
        return payload.tobytes()


class Client(threading.Thread):
    """One exporter: sends its share of requests in order, one in flight, until each is accepted."""

    def __init__(self, number: int, endpoint: str, requests: Requests) -> None:
        super().__init__(daemon=True, name=f"client-{number}")
        self.number = number
        self.requests = requests
        self.channel = grpc.insecure_channel(endpoint)
        self.export = self.channel.unary_unary(LOGS_METHOD)
        self.rate = 0.0
        """Requests per second this client produces (0: as fast as the collector takes them)."""
        self.since = time.monotonic()
        self.produced_before = 0
        self.stop_producing = False
        self.sent = 0
        """Requests accepted."""
        self.unavailable = 0
        self.retry_delays: set[float] = set()
        self.errors: list[str] = []

    def produce(self, rate: float) -> None:
        """From now on, produce ``rate`` requests per second (they queue up at this client)."""
        self.produced_before = self.produced()
        self.since = time.monotonic()
        self.rate = rate

    def produced(self) -> int:
        if self.rate == 0:
            return self.sent + 1  # always one more to send
        produced = self.produced_before + int(self.rate * (time.monotonic() - self.since))
        return produced if not self.stop_producing else min(produced, self.final)

    def finish(self) -> None:
        """Produce nothing more; send what is produced."""
        self.final = self.produced()
        self.stop_producing = True

    @property
    def done(self) -> bool:
        return self.stop_producing and self.sent >= self.final

    def run(self) -> None:
        while not self.done:
            if self.sent >= self.produced():
                time.sleep(0.01)
                continue
            first = (self.sent * CLIENTS + self.number) * BATCH
            try:
                self.export(self.requests.make(first), timeout=60)
                self.sent += 1
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    self.errors.append(f"{error.code()}: {error.details()}")
                    return
                self.unavailable += 1
                delay = 1.0
                for key, value in error.trailing_metadata() or ():
                    if key == "google.rpc.retryinfo-bin":
                        retry = RetryInfo.FromString(value).retry_delay
                        delay = retry.seconds + retry.nanos / 1e9
                self.retry_delays.add(delay)
                time.sleep(delay)
        self.channel.close()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _predictions(metrics_port: int) -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    except httpx.TransportError:
        return -1.0
    match = re.search(r'^ml_predictions_total\{[^}]*ml_model_name="salary"[^}]*\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_three_times_the_sustainable_rate_for_a_minute_loses_nothing_in_bounded_memory(
    tmp_path: Path,
) -> None:
    grpc_port, metrics_port = free_port(), free_port()
    config = {
        "receivers": {"otlp": {
            "protocols": {"grpc": {"endpoint": f"127.0.0.1:{grpc_port}"}, "http": None},
            "max_queue_batches": MAX_QUEUE_BATCHES,
        }},
        # No label join: its cost per event grows (slowly) with the store, which would make the
        # rate measured first too high for the rest of the run.
        "processors": {"drift": {"warmup": 1000}, "performance": None, "service": None, "audit": {}},
        "exporters": {"prometheus": {"endpoint": f"127.0.0.1:{metrics_port}"}},
    }  # fmt: skip
    (tmp_path / "modeltel.yaml").write_text(yaml.safe_dump(config))
    config_path = tmp_path / "modeltel.yaml"
    command = [sys.executable, "-m", "modeltel_collector.cli", "collect", "--config", str(config_path),
               "--data-dir", str(tmp_path / "data"), "--window", "5s"]  # fmt: skip
    collector = Daemon("collector", command, tmp_path / "collector.log", cwd=ROOT)
    rss: list[tuple[str, float, float]] = []
    phase = "sustainable"
    sampling = threading.Event()

    def sample() -> None:
        start = time.monotonic()
        while not sampling.is_set() and collector.running():
            rss.append((phase, round(time.monotonic() - start, 1), _rss_mib(collector.process.pid)))
            sampling.wait(0.5)

    try:
        wait_for(lambda: _predictions(metrics_port) >= 0, 60, "the collector's /metrics", [collector])
        threading.Thread(target=sample, daemon=True).start()
        requests = Requests()
        clients = [Client(i, f"127.0.0.1:{grpc_port}", requests) for i in range(CLIENTS)]
        for client in clients:
            client.start()

        # The sustainable rate: what the pipeline applies while the clients push, past its start.
        wait_until(lambda: _predictions(metrics_port) >= WARMED_UP, 60, "the collector to warm up")
        before, start = _predictions(metrics_port), time.monotonic()
        time.sleep(MEASURE_S)
        sustainable = (_predictions(metrics_port) - before) / (time.monotonic() - start)
        assert sustainable > 0

        phase = "overload"
        overload_start = time.monotonic()
        for client in clients:
            client.produce(OVERLOAD * sustainable / BATCH / CLIENTS)
        time.sleep(OVERLOAD_S)
        for client in clients:
            client.finish()
        phase = "catching up"
        produced = sum(client.final for client in clients) * BATCH
        for client in clients:
            client.join(OVERLOAD * OVERLOAD_S * 3)
        assert not any(client.is_alive() for client in clients), "the clients did not catch up"
        caught_up = time.monotonic()
        assert not [error for client in clients for error in client.errors]
        sent = sum(client.sent for client in clients) * BATCH
        wait_until(lambda: _predictions(metrics_port) >= sent, 120, "the collector to apply every event")
        phase = "done"
        counted = _predictions(metrics_port)
    finally:
        sampling.set()
        collector.stop()

    # Nothing lost, nothing twice: ids are consecutive per client, so the sent ones are all distinct.
    assert sent >= produced
    assert counted == sent
    unavailable = sum(client.unavailable for client in clients)
    assert unavailable > 0, "the collector was never overloaded"
    assert set().union(*(client.retry_delays for client in clients)) == {1.0}  # RetryInfo honoured

    # Memory: the backlog the clients held at the end of the overload was 2/3 of what they
    # produced during it, yet the collector's memory did not grow with it.
    overload = [mib for name, _, mib in rss if name == "overload"]
    settled = max(overload[: len(overload) // 3])
    peak = max(mib for name, _, mib in rss if name in ("overload", "catching up"))
    backlog_events = int((OVERLOAD - 1) * sustainable * OVERLOAD_S)
    results = {
        "sustainable_events_per_s": round(sustainable),
        "offered_events_per_s": round(OVERLOAD * sustainable),
        "overload_seconds": OVERLOAD_S,
        "events_sent": sent,
        "events_counted": int(counted),
        "events_lost": sent - int(counted),
        "unavailable_answers_retried": unavailable,
        "client_backlog_at_end_of_overload_events": backlog_events,
        "catch_up_seconds": round(caught_up - overload_start - OVERLOAD_S, 1),
        "rss_mib_first_third_of_overload": round(settled, 1),
        "rss_mib_peak": round(peak, 1),
        "rss_growth": round(peak / settled - 1, 3),
        "rss_mib_every_10s": [[name, round(mib)] for name, t, mib in rss if t % 10 < 0.5],
        "max_queue_batches": MAX_QUEUE_BATCHES,
    }
    print(json.dumps(results))
    if out := os.environ.get("MODELTEL_RELIABILITY_RESULTS"):
        path = Path(out)
        existing = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps(existing | {"backpressure": results}, indent=2))
    assert peak <= settled * 1.25, results
