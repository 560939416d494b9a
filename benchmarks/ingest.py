"""How fast the collector ingests prediction events, against the bare protobuf ceiling.

Events are ``ml.prediction`` log records with 10 numeric and 2 categorical features
(plus model, version, id, task and the prediction: 17 attributes), encoded with the
SDK's own encoder (:mod:`modeltel._otlp`) into ``ExportLogsServiceRequest`` s of
``--batch`` records. Every figure below comes from the same run, on the same payloads:

- **decode only**: ``ExportLogsServiceRequest.FromString`` (upb) on every request;
- **decode + iterate (ceiling)**: decoding plus the barest Python loop that reads every
  attribute's key and value (``kv.key``, ``kv.value``, ``WhichOneof`` and the field):
  any Python code that looks at each attribute pays at least this;
- **extract_logs in-process**: decoding plus :func:`modeltel_collector.extract.extract_logs`,
  which builds the columnar batches the processors get;
- **end-to-end gRPC**: an OTLP/gRPC client in another process (a plain grpcio channel
  sending pre-encoded request bytes, ``--concurrency`` calls in flight, each request's
  prediction ids made unique with one ``bytes.replace``) to
  :class:`modeltel_collector.receivers.GrpcReceiver` in this process, whose consumer
  runs ``extract_logs`` and counts rows. Events/s from the client's first measured call
  to its last response, after a warm-up.

The ratio end-to-end / ceiling is the figure to watch (target >= 0.5 once the drift and
performance processors run too). The server's CPU time per event is reported as well:
on a 2-core machine the client shares the cores, so events/s moves with it.

Resident memory of this (the server) process is sampled when the measured phase starts,
half-way and at the end, and its peak noted: it should stay flat (+-10%).

A run is invalid (exit code 1, ``"valid": false`` in the JSON) if the server did not
extract exactly one row per event sent, rejected anything, or a call failed.
``--alternatives`` also times ways to read an attribute value with upb (µs/record).

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
def build_pool(batch: int, seed: int = 1) -> list[bytes]:
    """``POOL`` encoded requests of ``batch`` prediction events each."""
    from opentelemetry.sdk.resources import Resource

    from modeltel import semconv
    from modeltel._otlp import LogsRequestFramer, encode_event

    rnd = random.Random(seed)
    framer = LogsRequestFramer(
        Resource.create({"service.name": "salary-api", "service.version": "1.0"}), semconv.SCOPE_NAME, "0.1"
    )
    pool = []
    now = time.time_ns()
    for request in range(POOL):
        records = []
        for i in range(batch):
            attrs: dict[str, Any] = {
                semconv.MODEL_NAME: "salary",
                semconv.MODEL_VERSION: "v1",
                semconv.PREDICTION_ID: f"{ID_SLOT.decode()}-{request:02d}{i:07d}",
                semconv.MODEL_TASK: semconv.TASK_REGRESSION,
            }
            for j in range(NUMERIC):
                attrs[f"{semconv.FEATURE_PREFIX}x{j}"] = rnd.gauss(j, 1.0 + j)
            for name, values in CATEGORIES.items():
                attrs[semconv.FEATURE_PREFIX + name] = rnd.choice(values)
            attrs[semconv.PREDICTION_VALUE] = rnd.gauss(50_000, 9_000)
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
        pool.append(framer.frame(records))
    return pool


def unique(payload: bytes, n: int) -> bytes:
    return payload.replace(ID_SLOT, b"B%07d" % (n % 10_000_000))


# --------------------------------------------------------------------------------------
# The client (its own process)
# --------------------------------------------------------------------------------------
def client_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ingest.py _client")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args(argv)

    import grpc

    pool = build_pool(args.batch)
    channel = grpc.insecure_channel(
        f"127.0.0.1:{args.port}",
        options=[("grpc.max_send_message_length", 256 * 1024 * 1024)],
    )
    grpc.channel_ready_future(channel).result(timeout=30)
    export = channel.unary_unary(METHOD)  # bytes in, bytes out: no client-side (de)serialisation
    failures: list[str] = []

    def run(first: int, count: int) -> float:
        inflight: deque[Any] = deque()

        def settle(call: Any) -> None:
            try:
                response = call.result()
            except grpc.RpcError as error:
                failures.append(f"{error.code()}: {error.details()}")
                return
            if response:  # an empty ExportLogsServiceResponse encodes to b""
                failures.append(f"partial success: {response!r}")

        start = time.perf_counter()
        for n in range(first, first + count):
            if len(inflight) >= args.concurrency:
                settle(inflight.popleft())
            inflight.append(export.future(unique(pool[n % POOL], n), timeout=120))
        while inflight:
            settle(inflight.popleft())
        return time.perf_counter() - start

    run(0, args.warmup)
    elapsed = run(args.warmup, args.requests)
    channel.close()
    print(json.dumps({"elapsed_s": elapsed, "failures": failures[:5], "failed": len(failures)}), flush=True)
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
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    from modeltel_collector.extract import extract_logs

    decode = ExportLogsServiceRequest.FromString
    return sum(extract_logs(decode(payload)).prediction_count for payload in payloads)


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
        """What extract_logs does for float features: a non-zero double settles the type."""
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
class ExtractingConsumer:
    """Runs extraction on every logs request and counts what it yields."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows = 0
        self.rejected = 0
        self.requests = 0

    def consume_logs(self, request: Any) -> Any:
        from modeltel_collector.extract import extract_logs

        extraction = extract_logs(request)
        with self._lock:
            self.rows += extraction.prediction_count
            self.rejected += extraction.rejected
            self.requests += 1
        return extraction.outcome

    def consume_traces(self, request: Any) -> Any:
        from modeltel_collector.receivers.consumer import ACCEPTED

        return ACCEPTED

    def consume_metrics(self, request: Any) -> Any:
        from modeltel_collector.receivers.consumer import ACCEPTED

        return ACCEPTED


class MemorySampler(threading.Thread):
    """RSS of this process at the start, middle and end of the measured phase, and its peak."""

    def __init__(self, consumer: ExtractingConsumer, warmup_rows: int, rows: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self._process = psutil.Process()
        self._consumer = consumer
        self._marks = {"start": warmup_rows, "middle": warmup_rows + rows // 2, "end": warmup_rows + rows}
        self.samples: dict[str, int] = {}
        self.peak = 0
        self.cpu_start: float | None = None
        self.cpu_end: float | None = None
        self._done = threading.Event()

    def _cpu(self) -> float:
        times = self._process.cpu_times()
        return float(times.user + times.system)

    def run(self) -> None:
        while not self._done.is_set():
            rss = self._process.memory_info().rss
            rows = self._consumer.rows
            for mark, threshold in self._marks.items():
                if mark not in self.samples and rows >= threshold:
                    self.samples[mark] = rss
                    if mark == "start":
                        self.cpu_start = self._cpu()
                    elif mark == "end":
                        self.cpu_end = self._cpu()
            if "start" in self.samples:
                self.peak = max(self.peak, rss)
            self._done.wait(0.02)

    def stop(self) -> None:
        self._done.set()
        self.join(5)


def end_to_end(args: argparse.Namespace, requests: int, warmup: int) -> dict[str, Any]:
    from modeltel_collector.receivers import GrpcReceiver

    consumer = ExtractingConsumer()
    receiver = GrpcReceiver(consumer, "127.0.0.1:0", max_workers=args.concurrency).start()
    sampler = MemorySampler(consumer, warmup * args.batch, requests * args.batch)
    sampler.start()
    try:
        client = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "_client",
                f"--port={receiver.port}",
                f"--requests={requests}",
                f"--warmup={warmup}",
                f"--batch={args.batch}",
                f"--concurrency={args.concurrency}",
            ],
            capture_output=True,
            text=True,
            timeout=3600,
            cwd=ROOT,
        )
        time.sleep(0.1)  # let the sampler see the last rows
    finally:
        sampler.stop()
        receiver.stop()
    if client.returncode != 0:
        raise RuntimeError(f"the client failed:\n{client.stderr[-3000:]}")
    result = json.loads(client.stdout.strip().splitlines()[-1])
    events = requests * args.batch
    cpu = (
        sampler.cpu_end - sampler.cpu_start
        if sampler.cpu_end is not None and sampler.cpu_start is not None
        else float("nan")
    )
    memory = {mark: sampler.samples.get(mark, 0) for mark in ("start", "middle", "end")}
    base = memory["start"] or 1
    return {
        "events": events,
        "seconds": result["elapsed_s"],
        "events_per_s": events / result["elapsed_s"],
        "us_per_event": result["elapsed_s"] / events * 1e6,
        "server_cpu_s": cpu,
        "server_cpu_us_per_event": cpu / events * 1e6,
        "events_per_server_cpu_s": events / cpu if cpu else float("nan"),
        "rows_extracted": consumer.rows,
        "rows_expected": (requests + warmup) * args.batch,
        "rejected": consumer.rejected,
        "failed_calls": result["failed"],
        "failures": result["failures"],
        "rss_bytes": memory,
        "rss_peak_bytes": sampler.peak,
        "rss_change": (memory["end"] - base) / base,
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
        ("end-to-end gRPC", result["end_to_end"]),
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
    mib = 1024 * 1024
    memory = Table(title="Server resident memory over the measured phase")
    for column in ("start", "middle", "end", "peak", "end vs start", "peak vs start"):
        memory.add_column(column, justify="right")
    memory.add_row(
        *(f"{e2e['rss_bytes'][mark] / mib:.1f} MiB" for mark in ("start", "middle", "end")),
        f"{e2e['rss_peak_bytes'] / mib:.1f} MiB",
        f"{e2e['rss_change']:+.1%}",
        f"{e2e['rss_peak_change']:+.1%}",
    )
    console.print(memory)
    console.print(
        f"server CPU: {e2e['server_cpu_us_per_event']:.2f} µs/event "
        f"({e2e['events_per_server_cpu_s']:,.0f} events per CPU-second, all threads)"
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
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests first")
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

    started = time.time()
    pool = build_pool(args.batch)
    per_round = max(1, min(args.in_process_events, args.events) // args.batch)
    payloads = [unique(pool[n % POOL], n) for n in range(per_round)]
    measurements = {"decode": decode_only, "decode_iterate": decode_iterate, "extract": decode_extract}
    in_process = best_rates(measurements, payloads, args.rounds)
    requests = args.events // args.batch
    e2e = end_to_end(args, requests, args.warmup)

    problems = []
    if e2e["rows_extracted"] != e2e["rows_expected"]:
        problems.append(f"extracted {e2e['rows_extracted']} rows, expected {e2e['rows_expected']}")
    if e2e["rejected"]:
        problems.append(f"{e2e['rejected']} records rejected")
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
