"""How fast the collector ingests prediction events, against the bare protobuf ceiling.

Events are ``ml.prediction`` log records with 10 numeric and 2 categorical features
(plus model, version, id, task and the prediction: 17 attributes), encoded with the
SDK's own encoder (:mod:`modeltel._otlp`) into ``ExportLogsServiceRequest`` s of
``--batch`` records. Every figure below comes from the same run, on the same payloads:

- **decode only**: ``ExportLogsServiceRequest.FromString`` (upb) on every request;
- **decode + iterate (ceiling)**: decoding plus the barest Python loop that reads every
  attribute's key and value (``kv.key``, ``kv.value``, ``WhichOneof`` and the field):
  any Python code that looks at each attribute pays at least this;
- **extract_logs in-process**: :func:`modeltel_collector.extract.extract_logs` on the
  request's bytes (it decodes them itself), which builds the columnar batches the
  processors get;
- **end-to-end gRPC**: the real collector, a :class:`modeltel_collector.collector.Collector`
  started from a configuration in this process (temporary data directory, OTLP/gRPC on a
  free port, OTLP/HTTP off, Prometheus on a free port; processors ``drift``,
  ``performance`` and ``service`` on, ``audit`` off; drift and performance windows of
  ``--window`` seconds so windows close and are compared during the run). An OTLP/gRPC
  client in another process (a plain grpcio channel sending pre-encoded request bytes,
  ``--concurrency`` calls in flight, each request's prediction ids made unique with one
  ``bytes.replace``) sends the prediction requests and, after each, a request of
  ``ml.label`` events for ``--label-share`` of its predictions (the performance processor
  joins them in its SQLite label store). A call answered ``UNAVAILABLE`` (the pipeline
  queue is full) is retried after a short pause, as an OTLP exporter would, and counted.
  The client sends ``--warmup`` requests, waits until the pipeline has processed them,
  then sends the measured ones. Events/s are measured predictions divided by the time from
  the client's first measured call to the moment the pipeline thread finished processing
  the last batch (a counting processor placed after the others records it), so queued
  work is not counted as done.

The ratio end-to-end / ceiling is the figure to watch (target >= 0.5 on one core). CPU
time is accounted per thread (``time.thread_time``): the receiver threads' ``consume_logs``
(extraction and enqueueing), each processor on the pipeline thread (batches, and window
closing on ``tick``), and the rest of the process (gRPC, decoding, the metrics SDK). On a
2-core machine the client shares the cores, so events/s moves with it; CPU per event does not.

Resident memory of this (the server) process is sampled when the measured phase starts,
after every tenth of it and at the end, and its peak noted: it should stay flat (+-10%).

A run is invalid (exit code 1, ``"valid": false`` in the JSON) if the pipeline did not
process exactly one row per prediction and label sent, Prometheus's ``ml_predictions``
counter does not equal the predictions sent, the drift or performance gauges are missing
from ``/metrics``, anything was rejected, or a call failed (other than retried
``UNAVAILABLE``). ``--alternatives`` also times ways to read an attribute value with upb
(µs/record).

Run from the repository root::

    python benchmarks/ingest.py --events 1000000 --batch 500

Results go to ``benchmarks/results/ingest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "ingest.json"
TARGET = 0.5
METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
POOL = 8
"""Distinct pre-built requests, cycled."""
ID_SLOT = b"B0000000"
"""Fixed-width part of every prediction id, replaced per request to keep ids unique."""
NUMERIC = 10
CATEGORIES = {"city": ["paris", "lyon", "nice", "lille", "nantes"], "level": ["junior", "mid", "senior"]}


# --------------------------------------------------------------------------------------
# Payloads (built identically in both processes)
# --------------------------------------------------------------------------------------
def build_pools(batch: int, label_share: float = 0.0, seed: int = 1) -> tuple[list[bytes], list[bytes]]:
    """``POOL`` encoded prediction requests of ``batch`` events each, and their label requests.

    Label request ``k`` holds an ``ml.label`` event (the prediction plus noise) for every
    ``round(1 / label_share)``-th prediction of prediction request ``k``, with the same id,
    so :func:`unique` with the same ``n`` keeps them matched. Empty when ``label_share`` is 0.
    """
    from opentelemetry.sdk.resources import Resource

    from modeltel import semconv
    from modeltel._otlp import LogsRequestFramer, encode_event

    rnd = random.Random(seed)
    framer = LogsRequestFramer(
        Resource.create({"service.name": "salary-api", "service.version": "1.0"}), semconv.SCOPE_NAME, "0.1"
    )
    label_framer = LogsRequestFramer(
        Resource.create({"service.name": "labelling-job"}), semconv.SCOPE_NAME, "0.1"
    )
    every = round(1 / label_share) if label_share > 0 else 0
    pool, labels = [], []
    now = time.time_ns()
    for request in range(POOL):
        records, label_records = [], []
        for i in range(batch):
            prediction_id = f"{ID_SLOT.decode()}-{request:02d}{i:07d}"
            attrs: dict[str, Any] = {
                semconv.MODEL_NAME: "salary",
                semconv.MODEL_VERSION: "v1",
                semconv.PREDICTION_ID: prediction_id,
                semconv.MODEL_TASK: semconv.TASK_REGRESSION,
            }
            for j in range(NUMERIC):
                attrs[f"{semconv.FEATURE_PREFIX}x{j}"] = rnd.gauss(j, 1.0 + j)
            for name, values in CATEGORIES.items():
                attrs[semconv.FEATURE_PREFIX + name] = rnd.choice(values)
            prediction = rnd.gauss(50_000, 9_000)
            attrs[semconv.PREDICTION_VALUE] = prediction
            records.append(
                encode_event(
                    time_unix_nano=now + i,
                    event_name=semconv.PREDICTION_EVENT,
                    attributes=attrs,
                    trace_id=rnd.getrandbits(128) or 1,
                    span_id=rnd.getrandbits(64) or 1,
                    trace_flags=1,
                )
            )
            if every and i % every == 0:
                label = {
                    semconv.MODEL_NAME: "salary",
                    semconv.PREDICTION_ID: prediction_id,
                    semconv.LABEL_VALUE: prediction + rnd.gauss(0, 5_000),
                }
                label_records.append(
                    encode_event(time_unix_nano=now + i, event_name=semconv.LABEL_EVENT, attributes=label)
                )
        pool.append(framer.frame(records))
        if label_records:
            labels.append(label_framer.frame(label_records))
    return pool, labels


def build_pool(batch: int, seed: int = 1) -> list[bytes]:
    """``POOL`` encoded requests of ``batch`` prediction events each."""
    return build_pools(batch, 0.0, seed)[0]


def labels_per_request(batch: int, label_share: float) -> int:
    every = round(1 / label_share) if label_share > 0 else 0
    return len(range(0, batch, every)) if every else 0


def unique(payload: bytes, n: int) -> bytes:
    return payload.replace(ID_SLOT, b"B%07d" % (n % 10_000_000))


# --------------------------------------------------------------------------------------
# The client (its own process)
# --------------------------------------------------------------------------------------
def client_main(argv: list[str]) -> int:
    """Warm up, report ``{"warm": true}``, wait for ``go`` on stdin, send the measured requests."""
    parser = argparse.ArgumentParser(prog="ingest.py _client")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--label-share", type=float, required=True)
    args = parser.parse_args(argv)

    import grpc

    pool, label_pool = build_pools(args.batch, args.label_share)
    channel = grpc.insecure_channel(
        f"127.0.0.1:{args.port}",
        options=[("grpc.max_send_message_length", 256 * 1024 * 1024)],
    )
    grpc.channel_ready_future(channel).result(timeout=30)
    export = channel.unary_unary(METHOD)  # bytes in, bytes out: no client-side (de)serialisation
    failures: list[str] = []
    retries = 0

    def settle(call: Any, payload: bytes) -> None:
        nonlocal retries
        while True:
            try:
                response = call.result()
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE:  # queue full: back off, send again
                    retries += 1
                    time.sleep(0.005)
                    call = export.future(payload, timeout=120)
                    continue
                failures.append(f"{error.code()}: {error.details()}")
                return
            if response:  # an empty ExportLogsServiceResponse encodes to b""
                failures.append(f"partial success: {response!r}")
            return

    def run(first: int, count: int) -> tuple[float, float]:
        inflight: deque[tuple[Any, bytes]] = deque()

        def send(payload: bytes) -> None:
            if len(inflight) >= args.concurrency:
                settle(*inflight.popleft())
            inflight.append((export.future(payload, timeout=120), payload))

        start = time.monotonic()  # CLOCK_MONOTONIC: comparable with the server process's
        for n in range(first, first + count):
            send(unique(pool[n % POOL], n))
            if label_pool:
                send(unique(label_pool[n % POOL], n))
        while inflight:
            settle(*inflight.popleft())
        return start, time.monotonic()

    run(0, args.warmup)
    print(json.dumps({"warm": True}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2
    start, end = run(args.warmup, args.requests)
    channel.close()
    print(
        json.dumps(
            {
                "start_monotonic": start,
                "end_monotonic": end,
                "retries": retries,
                "failures": failures[:5],
                "failed": len(failures),
            }
        ),
        flush=True,
    )
    return 0


# --------------------------------------------------------------------------------------
# In-process measurements
# --------------------------------------------------------------------------------------
def decode_only(payloads: list[bytes]) -> int:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    decode = ExportLogsServiceRequest.FromString
    n = 0
    for payload in payloads:
        request = decode(payload)
        n += sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
    return n


def decode_iterate(payloads: list[bytes]) -> int:
    """The ceiling: decode, then read every attribute's key and value, nothing else."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    decode = ExportLogsServiceRequest.FromString
    which = AnyValue.WhichOneof
    n = 0
    for payload in payloads:
        for resource_logs in decode(payload).resource_logs:
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    for kv in record.attributes:
                        _key = kv.key
                        value = kv.value
                        kind = which(value, "value")
                        if kind is not None:
                            getattr(value, kind)
                    n += 1
    return n


def decode_extract(payloads: list[bytes]) -> int:
    """What the collector does with a request: ``extract_logs`` on its bytes (decoding included)."""
    from modeltel_collector.extract import extract_logs

    return sum(extract_logs(payload).prediction_count for payload in payloads)


def best_rates(
    measurements: Mapping[str, Callable[[list[bytes]], int]], payloads: list[bytes], rounds: int
) -> dict[str, dict[str, float]]:
    """Best of ``rounds`` per measurement, the rounds interleaved.

    The machine may be shared: the minimum time is the cleanest figure, and interleaving
    spreads a burst of outside load over all measurements rather than one.
    """
    best = dict.fromkeys(measurements, float("inf"))
    counts = dict.fromkeys(measurements, 0)
    for _ in range(rounds):
        for name, fn in measurements.items():
            start = time.perf_counter()
            counts[name] = fn(payloads)
            best[name] = min(best[name], time.perf_counter() - start)
    return {
        name: {
            "events": counts[name],
            "seconds": best[name],
            "events_per_s": counts[name] / best[name],
            "us_per_event": best[name] / counts[name] * 1e6,
        }
        for name in measurements
    }


def attribute_access_alternatives(payload: bytes, rounds: int = 7) -> dict[str, float]:
    """µs per record (17 attributes) of ways to read every attribute's key and typed value."""
    import timeit

    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    records = [
        record
        for rl in ExportLogsServiceRequest.FromString(payload).resource_logs
        for sl in rl.scope_logs
        for record in sl.log_records
    ]
    which, has_field, list_fields = AnyValue.WhichOneof, AnyValue.HasField, AnyValue.ListFields

    def key_and_value_wrapper() -> None:
        for record in records:
            for kv in record.attributes:
                _ = kv.key
                _ = kv.value

    def which_oneof() -> None:
        for record in records:
            for kv in record.attributes:
                _ = kv.key
                value = kv.value
                kind = which(value, "value")
                if kind == "double_value":
                    _ = value.double_value
                elif kind == "string_value":
                    _ = value.string_value
                elif kind == "int_value":
                    _ = value.int_value
                elif kind == "bool_value":
                    _ = value.bool_value

    def has_field_chain() -> None:
        for record in records:
            for kv in record.attributes:
                _ = kv.key
                value = kv.value
                if has_field(value, "double_value"):
                    _ = value.double_value
                elif has_field(value, "string_value"):
                    _ = value.string_value
                elif has_field(value, "int_value"):
                    _ = value.int_value
                elif has_field(value, "bool_value"):
                    _ = value.bool_value

    def list_fields_type() -> None:
        for record in records:
            for kv in record.attributes:
                _ = kv.key
                for _, x in list_fields(kv.value):
                    _ = type(x)

    def double_first() -> None:
        """What extract_logs did for float features before it read the wire format: a non-zero
        double settles the type."""
        for record in records:
            for kv in record.attributes:
                _ = kv.key
                value = kv.value
                if not value.double_value:
                    kind = which(value, "value")
                    if kind is not None:
                        getattr(value, kind)

    methods = (key_and_value_wrapper, which_oneof, has_field_chain, list_fields_type, double_first)
    best = dict.fromkeys((fn.__name__ for fn in methods), float("inf"))
    for _ in range(rounds):  # interleaved, like the main measurements
        for fn in methods:
            best[fn.__name__] = min(best[fn.__name__], timeit.timeit(fn, number=5) / 5)
    return {name: seconds / len(records) * 1e6 for name, seconds in best.items()}


# --------------------------------------------------------------------------------------
# The server side of the end-to-end run (this process)
# --------------------------------------------------------------------------------------
class CountingProcessor:
    """Placed after the real processors: counts the rows the pipeline thread has finished."""

    def __init__(self) -> None:
        self.predictions = 0
        self.labels = 0
        self.last_monotonic = 0.0

    def process_predictions(self, batch: Any) -> None:
        self.predictions += len(batch)
        self.last_monotonic = time.monotonic()

    def process_labels(self, batch: Any) -> None:
        self.labels += len(batch)
        self.last_monotonic = time.monotonic()

    def process_spans(self, request: Any) -> None:
        pass

    def tick(self, now_unix_nano: int) -> None:
        pass

    def checkpoint(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass

    def shutdown(self) -> None:
        pass


class TimedProcessor:
    """Delegates to a processor and adds up the pipeline thread's CPU time in each of its calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.cpu: dict[str, float] = {"predictions": 0.0, "labels": 0.0, "spans": 0.0, "tick": 0.0}

    def _timed(self, kind: str, method: Callable[[Any], None], argument: Any) -> None:
        start = time.thread_time()
        try:
            method(argument)
        finally:
            self.cpu[kind] += time.thread_time() - start

    def process_predictions(self, batch: Any) -> None:
        self._timed("predictions", self.inner.process_predictions, batch)

    def process_labels(self, batch: Any) -> None:
        self._timed("labels", self.inner.process_labels, batch)

    def process_spans(self, request: Any) -> None:
        self._timed("spans", self.inner.process_spans, request)

    def tick(self, now_unix_nano: int) -> None:
        self._timed("tick", self.inner.tick, now_unix_nano)

    def __getattr__(self, name: str) -> Any:  # checkpoint, restore, shutdown, forward_metrics
        return getattr(self.inner, name)


class TimedConsumeLogs:
    """Wraps ``Pipeline.consume_logs`` (extraction and enqueueing, on the receiver threads)."""

    def __init__(self, consume: Callable[[Any], Any]) -> None:
        self._consume = consume
        self._lock = threading.Lock()
        self.cpu = 0.0
        self.calls = 0

    def __call__(self, request: Any) -> Any:
        start = time.thread_time()
        try:
            return self._consume(request)
        finally:
            spent = time.thread_time() - start
            with self._lock:
                self.cpu += spent
                self.calls += 1


class MemorySampler(threading.Thread):
    """RSS of this process over the measured phase: at its start, every tenth of it, its end, peak."""

    def __init__(self, counter: CountingProcessor) -> None:
        super().__init__(daemon=True)
        import psutil

        self._process = psutil.Process()
        self._counter = counter
        self._first = 0
        self._rows = 0
        self.samples: dict[str, int] = {}
        self.peak = 0
        self._active = False
        self._done = threading.Event()

    def rss(self) -> int:
        return int(self._process.memory_info().rss)

    def cpu(self) -> float:
        times = self._process.cpu_times()
        return float(times.user + times.system)

    def begin(self, first_row: int, rows: int) -> None:
        self._first, self._rows = first_row, rows
        self.samples["0%"] = self.peak = self.rss()
        self._active = True

    def finish(self) -> None:
        self._active = False
        rss = self.rss()
        self.samples["100%"] = rss
        self.peak = max(self.peak, rss)

    def run(self) -> None:
        while not self._done.is_set():
            if self._active:
                rss = self.rss()
                self.peak = max(self.peak, rss)
                done = (self._counter.predictions - self._first) / max(1, self._rows)
                for tenth in range(1, 10):
                    mark = f"{tenth * 10}%"
                    if mark not in self.samples and done >= tenth / 10:
                        self.samples[mark] = rss
            self._done.wait(0.02)

    def stop(self) -> None:
        self._done.set()
        self.join(5)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.002)


def scrape(port: int) -> dict[str, list[tuple[str, float]]]:
    """Prometheus samples by metric name: ``[(labels, value), ...]``."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    samples: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        samples.setdefault(name, []).append((labels.rstrip("}"), float(value)))
    return samples


def collector_config(data_dir: Path, window: float, prometheus_port: int) -> Any:
    from modeltel_collector.config import parse_config

    return parse_config(
        {
            "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "127.0.0.1:0"}, "http": None}}},
            "processors": {
                "drift": {"window": window},
                "performance": {"window": window},
                "service": {},
                "audit": None,
            },
            "exporters": {"prometheus": {"endpoint": f"127.0.0.1:{prometheus_port}"}},
            "data_dir": str(data_dir),
        }
    )


def end_to_end(args: argparse.Namespace, requests: int, warmup: int) -> dict[str, Any]:
    import tempfile

    from modeltel_collector.collector import Collector

    per_request_labels = labels_per_request(args.batch, args.label_share)
    prometheus_port = _free_port()
    with tempfile.TemporaryDirectory(prefix="modeltel-ingest-") as data_dir:
        collector = Collector(collector_config(Path(data_dir), args.window, prometheus_port))
        pipeline = collector.pipeline
        counter = CountingProcessor()
        with pipeline._lock:  # the pipeline thread is already running (idle): swap under its lock
            timed = {name: TimedProcessor(processor) for name, processor in pipeline.processors.items()}
            pipeline.processors = {**timed, "_count": counter}
        consume = TimedConsumeLogs(pipeline.consume_logs)
        pipeline.consume_logs = consume  # type: ignore[method-assign]  # before start(): the receiver binds it
        collector.start()
        sampler = MemorySampler(counter)
        sampler.start()
        client = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "_client",
                f"--port={collector.grpc_port}",
                f"--requests={requests}",
                f"--warmup={warmup}",
                f"--batch={args.batch}",
                f"--concurrency={args.concurrency}",
                f"--label-share={args.label_share}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert client.stdout is not None and client.stdin is not None
            line = client.stdout.readline()
            if not line:
                raise RuntimeError(
                    f"the client failed:\n{client.stderr.read()[-3000:] if client.stderr else ''}"
                )
            warm_predictions, warm_labels = warmup * args.batch, warmup * per_request_labels
            _wait_for(
                lambda: counter.predictions >= warm_predictions and counter.labels >= warm_labels,
                300,
                "the warm-up to be processed",
            )
            pipeline.drain()
            cpu_start = sampler.cpu()
            consume_start = consume.cpu
            processors_start = {name: dict(p.cpu) for name, p in timed.items()}
            sampler.begin(counter.predictions, requests * args.batch)
            client.stdin.write("go\n")
            client.stdin.flush()
            line = client.stdout.readline()
            if not line:
                raise RuntimeError(
                    f"the client failed:\n{client.stderr.read()[-3000:] if client.stderr else ''}"
                )
            result = json.loads(line)
            total_predictions = (warmup + requests) * args.batch
            total_labels = (warmup + requests) * per_request_labels
            timeout = 120 + requests * args.batch / 2_000
            _wait_for(
                lambda: counter.predictions >= total_predictions and counter.labels >= total_labels,
                timeout,
                "the pipeline to process every row",
            )
            pipeline.drain()
            sampler.finish()
            cpu = sampler.cpu() - cpu_start
            consume_cpu = consume.cpu - consume_start
            processors_cpu = {
                name: {kind: p.cpu[kind] - processors_start[name][kind] for kind in p.cpu}
                for name, p in timed.items()
            }
            metrics = scrape(prometheus_port)
            drift_processor = timed["drift"].inner
            drift_windows = sum(1 for _ in drift_processor.versions() if drift_processor.latest(*_))
        finally:
            client.wait(timeout=60)
            sampler.stop()
            collector.stop()
    if client.returncode != 0:
        raise RuntimeError(f"the client exited with {client.returncode}")

    events = requests * args.batch
    labels = requests * per_request_labels
    seconds = counter.last_monotonic - result["start_monotonic"]
    client_seconds = result["end_monotonic"] - result["start_monotonic"]
    pipeline_cpu = sum(sum(kinds.values()) for kinds in processors_cpu.values())
    breakdown = {
        "receiver: extract_logs + enqueue (consume_logs)": consume_cpu,
        **{
            f"pipeline: {name} {kind}": spent
            for name, kinds in processors_cpu.items()
            for kind, spent in kinds.items()
            if spent > 0.0005 * cpu
        },
        "rest: gRPC, protobuf decode, metrics SDK, GC": cpu - consume_cpu - pipeline_cpu,
    }
    memory = dict(sampler.samples)
    base = memory["0%"] or 1

    def total(name: str) -> float:
        return sum(value for _, value in metrics.get(name, []))

    return {
        "events": events,
        "labels": labels,
        "seconds": seconds,
        "events_per_s": events / seconds,
        "records_per_s": (events + labels) / seconds,
        "us_per_event": seconds / events * 1e6,
        "client_seconds": client_seconds,
        "processing_lag_s": counter.last_monotonic - result["end_monotonic"],
        "server_cpu_s": cpu,
        "server_cpu_us_per_event": cpu / events * 1e6,
        "events_per_server_cpu_s": events / cpu if cpu else float("nan"),
        "cpu_breakdown_s": breakdown,
        "rows_processed": counter.predictions,
        "rows_expected": total_predictions,
        "labels_processed": counter.labels,
        "labels_expected": total_labels,
        "retried_calls": result["retries"],
        "failed_calls": result["failed"],
        "failures": result["failures"],
        "prometheus": {
            "ml_predictions_total": total("ml_predictions_total"),
            "ml_labels_joined_total": total("ml_labels_joined_total"),
            "modeltel_receiver_rejected_total": total("modeltel_receiver_rejected_total"),
            "ml_drift_ks_statistic_series": len(metrics.get("ml_drift_ks_statistic", [])),
            "ml_performance_rmse_series": len(metrics.get("ml_performance_rmse", [])),
        },
        "drift_versions_reported": drift_windows,
        "rss_bytes": memory,
        "rss_peak_bytes": sampler.peak,
        "rss_change": (memory["100%"] - base) / base,
        "rss_peak_change": (sampler.peak - base) / base,
    }


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    from google.protobuf.internal import api_implementation

    versions: dict[str, str | None] = {}
    for dist in ("modeltel", "protobuf", "grpcio", "numpy", "opentelemetry-proto"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "protobuf_backend": api_implementation.Type(),
        "versions": versions,
    }


def report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    ceiling = result["in_process"]["decode_iterate"]["events_per_s"]
    table = Table(
        title=f"Ingest: {result['config']['batch']} events/request, "
        f"{NUMERIC} numeric + {len(CATEGORIES)} categorical features"
    )
    for column in ("measurement", "events", "events/s", "µs/event", "vs ceiling"):
        table.add_column(column, justify="left" if column == "measurement" else "right")
    rows = [
        ("decode only", result["in_process"]["decode"]),
        ("decode + iterate (ceiling)", result["in_process"]["decode_iterate"]),
        ("extract_logs in-process", result["in_process"]["extract"]),
        ("end-to-end gRPC, drift + performance + service", result["end_to_end"]),
    ]
    for label, figures in rows:
        table.add_row(
            label,
            f"{figures['events']:,}",
            f"{figures['events_per_s']:,.0f}",
            f"{figures['us_per_event']:.2f}",
            f"{figures['events_per_s'] / ceiling:.2f}",
        )
    console.print(table)
    e2e = result["end_to_end"]
    console.print(
        f"end to end: {e2e['events']:,} predictions and {e2e['labels']:,} labels in {e2e['seconds']:.1f} s "
        f"({e2e['records_per_s']:,.0f} records/s); the client's calls were all answered after "
        f"{e2e['client_seconds']:.1f} s, the pipeline finished {e2e['processing_lag_s']:.2f} s later; "
        f"{e2e['retried_calls']} calls retried after UNAVAILABLE"
    )
    mib = 1024 * 1024
    memory = Table(title="Server resident memory over the measured phase (MiB)")
    marks = {"0%": "start", "50%": "middle", "100%": "end"}  # every tenth is in the JSON
    for column in (*marks.values(), "peak", "end vs start", "peak vs start"):
        memory.add_column(column, justify="right")
    memory.add_row(
        *(f"{e2e['rss_bytes'][mark] / mib:.1f}" for mark in marks),
        f"{e2e['rss_peak_bytes'] / mib:.1f}",
        f"{e2e['rss_change']:+.1%}",
        f"{e2e['rss_peak_change']:+.1%}",
    )
    console.print(memory)
    cpu = Table(title="Server CPU over the measured phase, by thread activity")
    for column in ("where", "CPU s", "µs/event", "share"):
        cpu.add_column(column, justify="left" if column == "where" else "right")
    for where, seconds in e2e["cpu_breakdown_s"].items():
        cpu.add_row(
            where,
            f"{seconds:.2f}",
            f"{seconds / e2e['events'] * 1e6:.2f}",
            f"{seconds / e2e['server_cpu_s']:.0%}",
        )
    cpu.add_row(
        "total (process, all threads)",
        f"{e2e['server_cpu_s']:.2f}",
        f"{e2e['server_cpu_us_per_event']:.2f}",
        "100%",
        style="bold",
    )
    console.print(cpu)
    console.print(
        f"server CPU: {e2e['server_cpu_us_per_event']:.2f} µs/event "
        f"({e2e['events_per_server_cpu_s']:,.0f} events per CPU-second, all threads; "
        f"ceiling {1e6 / ceiling:.2f} µs/event)"
    )
    if "alternatives_us_per_record" in result:
        alternatives = Table(title="Reading every attribute (17 per record), no decode")
        alternatives.add_column("method")
        alternatives.add_column("µs/record", justify="right")
        for name, us in result["alternatives_us_per_record"].items():
            alternatives.add_row(name, f"{us:.2f}")
        console.print(alternatives)
    verdict = "meets" if result["ratio"] >= TARGET else "below"
    console.print(
        f"end-to-end / ceiling = [bold]{result['ratio']:.2f}[/bold] ({verdict} the {TARGET} target)"
        + ("" if result["valid"] else "  [red]INVALID RUN: " + "; ".join(result["problems"]) + "[/red]")
    )


def main(argv: list[str]) -> int:
    if argv[:1] == ["_client"]:
        return client_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="measured end-to-end events")
    parser.add_argument("--batch", type=int, default=500, help="events per request")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="unmeasured requests first (default: 2/5 of the measured ones, at least 20: enough for "
        "the label store's first large key-index merge, during which the queue fills once, so "
        "resident memory is measured in its steady state)",
    )
    parser.add_argument(
        "--label-share", type=float, default=0.1, help="share of predictions that get an ml.label event"
    )
    parser.add_argument(
        "--window", type=float, default=2.0, help="drift and performance window, seconds (closes in the run)"
    )
    parser.add_argument(
        "--in-process-events",
        type=int,
        default=100_000,
        help="events per in-process measurement (best of --rounds)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="in-process rounds (best kept)")
    parser.add_argument("--alternatives", action="store_true", help="also time attribute access methods")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.events < args.batch:
        parser.error("--events must be at least --batch, and --batch at least 1")
    if not 0 <= args.label_share <= 1:
        parser.error("--label-share must be between 0 and 1")
    if args.warmup is None:
        args.warmup = max(20, args.events // args.batch * 2 // 5)
    if args.warmup * args.batch < 1000:
        parser.error("--warmup x --batch must cover the drift processor's 1,000-prediction warm-up")

    started = time.time()
    pool = build_pool(args.batch)
    per_round = max(1, min(args.in_process_events, args.events) // args.batch)
    payloads = [unique(pool[n % POOL], n) for n in range(per_round)]
    measurements = {"decode": decode_only, "decode_iterate": decode_iterate, "extract": decode_extract}
    in_process = best_rates(measurements, payloads, args.rounds)
    requests = args.events // args.batch
    e2e = end_to_end(args, requests, args.warmup)

    problems = []
    if e2e["rows_processed"] != e2e["rows_expected"]:
        problems.append(f"processed {e2e['rows_processed']} predictions, expected {e2e['rows_expected']}")
    if e2e["labels_processed"] != e2e["labels_expected"]:
        problems.append(f"processed {e2e['labels_processed']} labels, expected {e2e['labels_expected']}")
    scraped = e2e["prometheus"]
    if scraped["ml_predictions_total"] != e2e["rows_expected"]:
        problems.append(
            f"ml_predictions_total is {scraped['ml_predictions_total']:.0f}, not {e2e['rows_expected']}"
        )
    if scraped["modeltel_receiver_rejected_total"]:
        problems.append(f"{scraped['modeltel_receiver_rejected_total']:.0f} records rejected")
    if not scraped["ml_drift_ks_statistic_series"]:
        problems.append("no ml_drift_ks_statistic on /metrics: no drift window was reported")
    if args.label_share and not scraped["ml_performance_rmse_series"]:
        problems.append("no ml_performance_rmse on /metrics: no label was joined")
    if e2e["failed_calls"]:
        problems.append(f"{e2e['failed_calls']} calls failed: {e2e['failures']}")
    result: dict[str, Any] = {
        "benchmark": "ingest",
        "command": " ".join([Path(sys.argv[0]).name, *argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": None,
        "config": {
            "events": requests * args.batch,
            "batch": args.batch,
            "concurrency": args.concurrency,
            "warmup_requests": args.warmup,
            "label_share": args.label_share,
            "labels_per_request": labels_per_request(args.batch, args.label_share),
            "window_s": args.window,
            "processors": ["drift", "performance", "service"],
            "in_process_events": per_round * args.batch,
            "rounds": args.rounds,
            "attributes_per_event": 17,
            "numeric_features": NUMERIC,
            "categorical_features": len(CATEGORIES),
        },
        "environment": environment(),
        "in_process": in_process,
        "end_to_end": e2e,
        "ratio": e2e["events_per_s"] / in_process["decode_iterate"]["events_per_s"],
        "target": TARGET,
        "valid": not problems,
        "problems": problems,
    }
    if args.alternatives:
        result["alternatives_us_per_record"] = attribute_access_alternatives(pool[0], args.rounds + 2)
    result["duration_s"] = round(time.time() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    report(result)
    print(f"results: {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    return 0 if result["valid"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
