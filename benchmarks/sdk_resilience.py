"""The instrumented app's latency and memory with the collector healthy, down, slow or erroring.

The salary example app (``examples.salary.app:app``, instrumented with one line) is served by
uvicorn in a child process and exports over OTLP to one of four collector conditions, each app
process fresh:

- ``healthy``: a real OTLP receiver (``modeltel_collector.receivers``) that accepts and counts;
- ``down``: nothing listens on the port (connections are refused);
- ``slow``: the same receiver, but every Export call is answered after ``--slow-seconds``;
- ``erroring``: a real gRPC server answering every Export ``UNAVAILABLE`` (HTTP: 503).

Each faulty condition runs side by side with a healthy twin (two apps, two collectors, two load
generators, started together): whatever else the machine runs meanwhile slows both alike, so
the ratio of the two holds where absolute times on a small, shared machine do not. A load
generator per app, in its own process, sends ``POST /predict`` at a fixed rate (open loop,
``--rate`` requests/s over a pool of keep-alive connections; latency is measured from each
request's scheduled time, so a stalled server cannot hide its stall by slowing the load):
``--warmup`` seconds, then ``--duration`` measured seconds. It checks every answer (200, a
``prediction`` and an ``X-Prediction-ID``). The apps' resident memory and thread count are
sampled every half second. Per condition the benchmark reports client-side p50/p99/max, the
ratio ``p99(condition) / p99(healthy twin)`` (target <= 1.10; median over ``--rounds``), the
app's CPU time per request and its ratio to the twin's, and the app's RSS at the start and
end of the measured phase, its peak and its slope.

Then the collector "comes back": the faulty server is stopped and a healthy receiver started
on the same port; the run waits until the SDK's own counters, exported as metrics, account
for every prediction (``modeltel.sdk.events.exported`` plus ``modeltel.sdk.events.dropped``
by ``modeltel.drop.reason`` equals the predictions answered). A run is invalid (exit code 1)
if a request failed, the counters never account for every prediction, a healthy twin dropped
anything, or the faulty server was never called. Missing the target is a result, not an error.

The apps run with the default ``OTEL_*`` settings (export timeout 10 s, 2048-event queue,
512-event batches) except ``OTEL_METRIC_EXPORT_INTERVAL=5000``, so metric export, and the
drop counters' arrival, happen within a short run.

Run from the repository root::

    python benchmarks/sdk_resilience.py --duration 60

Results go to ``benchmarks/results/sdk_resilience.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _apps import ROOT, base_env, free_port, request_bytes, serves, versions

if str(ROOT) not in sys.path:  # run as a script: make ``examples`` and ``modeltel`` importable
    sys.path.insert(0, str(ROOT))

FAULTS = ("down", "slow", "erroring")
TARGET = 1.10
"""p99(condition) / p99(healthy) at most this."""
APP_TARGET = "examples.salary.app:app"
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "sdk_resilience.json"
PREDICTION_EVENT = "ml.prediction"
EXPORTED_METRIC = "modeltel.sdk.events.exported"
DROPPED_METRIC = "modeltel.sdk.events.dropped"
DROP_REASON = "modeltel.drop.reason"
EXPORT_METHODS = (
    "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
)


# --------------------------------------------------------------------------------------
# The collector conditions (each runs in its own process)
# --------------------------------------------------------------------------------------
class CountingConsumer:
    """Counts what arrives and keeps the SDK's own event counters (latest cumulative values).

    With ``delay`` it answers each request only after that many seconds (a slow collector);
    ``stopping`` cuts the wait short, so the process can exit at once.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.calls = 0
        self.prediction_events = 0
        self.spans = 0
        self.metric_requests = 0
        self.sdk: dict[str, int] = {}

    def _wait(self) -> None:
        """Count the call and wait the delay; refuse it (retryable) if the process stops meanwhile."""
        from modeltel_collector.receivers.consumer import Overloaded

        with self._lock:
            self.calls += 1
        if self.delay and self.stopping.wait(self.delay):
            raise Overloaded(0.1, "the collector is stopping")

    def consume_logs(self, payload: bytes) -> Any:
        from modeltel_collector.receivers.consumer import ACCEPTED
        from modeltel_collector.receivers.signals import LOGS

        self._wait()
        request = LOGS.parse(payload)
        events = sum(
            record.event_name == PREDICTION_EVENT
            for resource_logs in request.resource_logs
            for scope_logs in resource_logs.scope_logs
            for record in scope_logs.log_records
        )
        with self._lock:
            self.prediction_events += events
        return ACCEPTED

    def consume_traces(self, request: Any) -> Any:
        from modeltel_collector.receivers.consumer import ACCEPTED

        self._wait()
        spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self._lock:
            self.spans += spans
        return ACCEPTED

    def consume_metrics(self, request: Any) -> Any:
        from modeltel_collector.receivers.consumer import ACCEPTED

        self._wait()
        found: dict[str, int] = {}
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name not in (EXPORTED_METRIC, DROPPED_METRIC):
                        continue
                    for point in metric.sum.data_points:
                        reason = next(
                            (a.value.string_value for a in point.attributes if a.key == DROP_REASON), ""
                        )
                        key = f"dropped:{reason}" if metric.name == DROPPED_METRIC else "exported"
                        found[key] = max(found.get(key, 0), int(point.as_int))
        with self._lock:
            self.metric_requests += 1
            for key, value in found.items():  # cumulative: the largest value seen is the total
                self.sdk[key] = max(self.sdk.get(key, 0), value)
        return ACCEPTED

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": self.calls,
                "prediction_events": self.prediction_events,
                "spans": self.spans,
                "metric_requests": self.metric_requests,
                "sdk": dict(self.sdk),
            }


class ErroringGrpcServer:
    """A gRPC server answering every OTLP Export ``UNAVAILABLE`` (no ``RetryInfo``)."""

    def __init__(self, port: int) -> None:
        from concurrent import futures

        import grpc

        self.calls = 0
        self._lock = threading.Lock()

        def refuse(_request: bytes, context: grpc.ServicerContext) -> bytes:
            with self._lock:
                self.calls += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "the collector is unavailable")
            return b""  # unreachable: abort raises

        handler = grpc.unary_unary_rpc_method_handler(refuse)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        for method in EXPORT_METHODS:
            service, _, name = method.strip("/").partition("/")
            services.setdefault(service, {})[name] = handler
        self._server.add_generic_rpc_handlers(
            tuple(grpc.method_handlers_generic_handler(s, handlers) for s, handlers in services.items())
        )
        if self._server.add_insecure_port(f"127.0.0.1:{port}") == 0:
            raise OSError(f"cannot listen on 127.0.0.1:{port}")
        self._server.start()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"calls": self.calls, "prediction_events": 0, "spans": 0, "metric_requests": 0, "sdk": {}}

    def stop(self) -> None:
        self._server.stop(0).wait()


class ErroringHttpApp:
    """An ASGI app answering every request 503 (a retryable OTLP/HTTP failure)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 503, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    def snapshot(self) -> dict[str, Any]:
        return {"calls": self.calls, "prediction_events": 0, "spans": 0, "metric_requests": 0, "sdk": {}}


class ThreadedUvicorn:
    """An ASGI app served by uvicorn in a thread of this process."""

    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="error", timeout_graceful_shutdown=1, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise OSError(f"cannot serve HTTP on 127.0.0.1:{port}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def run_collector(argv: list[str]) -> None:
    """One collector condition on ``--port``; commands ``stats`` and ``quit`` on stdin."""
    parser = argparse.ArgumentParser(prog="sdk_resilience.py _collector")
    parser.add_argument("--condition", choices=("healthy", "slow", "erroring"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--protocol", choices=("grpc", "http/protobuf"), default="grpc")
    parser.add_argument("--slow-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)

    from modeltel_collector.receivers import GrpcReceiver, http_receiver_app

    consumer = CountingConsumer(args.slow_seconds if args.condition == "slow" else 0.0)
    source: Any = consumer
    stop: Callable[[], None]
    if args.condition == "erroring" and args.protocol == "grpc":
        erroring = ErroringGrpcServer(args.port)
        source, stop = erroring, erroring.stop
    elif args.condition == "erroring":
        app = ErroringHttpApp()
        source, stop = app, ThreadedUvicorn(app, args.port).stop
    elif args.protocol == "grpc":
        # Enough workers that every exporter's call waits the full delay, none queues behind another.
        receiver = GrpcReceiver(consumer, f"127.0.0.1:{args.port}", max_workers=16).start()
        stop = lambda: receiver.stop(0)  # noqa: E731
    else:
        stop = ThreadedUvicorn(http_receiver_app(consumer), args.port).stop
    print(json.dumps({"port": args.port}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "stats":
            print(json.dumps(source.snapshot()), flush=True)
        elif command == "quit":
            break
    consumer.stopping.set()
    stop()
    print(json.dumps(source.snapshot()), flush=True)


class CollectorProcess:
    """A collector condition in a child process, seen from the orchestrator."""

    def __init__(self, condition: str, port: int, args: argparse.Namespace) -> None:
        self.condition = condition
        self.process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "_collector",
                "--condition",
                condition,
                "--port",
                str(port),
                "--protocol",
                args.protocol,
                "--slow-seconds",
                str(args.slow_seconds),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=base_env(),
        )
        self._readline()

    def _readline(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.condition} collector exited (code {self.process.poll()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def stats(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        return self._readline()

    def stop(self) -> dict[str, Any]:
        """Stop serving (the port is free again once this returns); the final counts."""
        assert self.process.stdin is not None
        final: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
            final = self._readline()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return final


# --------------------------------------------------------------------------------------
# The load generator (runs in its own process)
# --------------------------------------------------------------------------------------


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> bool:
    """One keep-alive request; True when the answer is a 200 with a prediction and its id."""
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    start = lower.find(b"\r\ncontent-length:")
    if start < 0:
        raise RuntimeError(f"a response without content-length: {head[:200]!r}")
    end = lower.index(b"\r\n", start + 2)
    body = await reader.readexactly(int(head[start + 17 : end]))
    return head.startswith(b"HTTP/1.1 200") and b"\r\nx-prediction-id:" in lower and b'"prediction":' in body


def _percentiles(latencies_ms: list[float]) -> dict[str, float]:
    import numpy as np

    if not latencies_ms:
        return {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "p999_ms": 0.0, "max_ms": 0.0}
    values = np.asarray(latencies_ms)
    p50, p90, p99, p999 = (float(v) for v in np.percentile(values, [50, 90, 99, 99.9]))
    return {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "p999_ms": p999, "max_ms": float(values.max())}


async def _load(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import psutil

    from examples.salary.model import generate

    rows, _ = generate(2000, np.random.default_rng(args.seed))
    payloads = [request_bytes(args.port, json.dumps(row).encode()) for row in rows]
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(args.connections):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", args.port))
    loop = asyncio.get_running_loop()
    total = round((args.warmup + args.duration) * args.rate)
    measured_from = round(args.warmup * args.rate)
    latencies: list[float] = [0.0] * total
    ok = [False] * total
    server = psutil.Process(args.server_pid)

    async def one(i: int, scheduled: float) -> None:
        reader, writer = await pool.get()
        try:
            ok[i] = await _exchange(reader, writer, payloads[i % len(payloads)])
        except (OSError, asyncio.IncompleteReadError, RuntimeError):
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        latencies[i] = (loop.time() - scheduled) * 1000
        pool.put_nowait((reader, writer))

    tasks: set[asyncio.Task[None]] = set()
    start = loop.time() + 0.1
    measured_start_unix = time.time() + 0.1 + args.warmup
    cpu_start = 0.0
    for i in range(total):
        scheduled = start + i / args.rate
        if (delay := scheduled - loop.time()) > 0:
            await asyncio.sleep(delay)
        if i == measured_from:
            times = server.cpu_times()
            cpu_start = times.user + times.system
        task = asyncio.create_task(one(i, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*tasks)
    times = server.cpu_times()
    cpu_used = times.user + times.system - cpu_start
    measured_end_unix = time.time()
    while not pool.empty():
        _reader, writer = pool.get_nowait()
        writer.close()

    measured = latencies[measured_from:]
    slice_size = max(1, round(args.rate * 10))  # p99 of each 10 s of the measured phase
    slices = [measured[k : k + slice_size] for k in range(0, len(measured), slice_size)]
    return {
        "requests": total,
        "measured_requests": len(measured),
        "answered": sum(ok),
        "failures": total - sum(ok),
        "measured_start_unix": measured_start_unix,
        "measured_end_unix": measured_end_unix,
        **_percentiles(measured),
        "p99_per_10s_ms": [_percentiles(s)["p99_ms"] for s in slices if len(s) >= slice_size // 2],
        "warmup_p99_ms": _percentiles(latencies[:measured_from])["p99_ms"],
        "server_cpu_us_per_request": cpu_used / max(1, len(measured)) * 1e6,
    }


def run_loadgen(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="sdk_resilience.py _loadgen")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    print(json.dumps(asyncio.run(_load(parser.parse_args(argv)))), flush=True)


# --------------------------------------------------------------------------------------
# The orchestrator
# --------------------------------------------------------------------------------------


class AppServer:
    """uvicorn serving the instrumented salary example in a child process (one worker)."""

    def __init__(self, endpoint: str, protocol: str) -> None:
        self.port = free_port()
        env = base_env()
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
            OTEL_SERVICE_NAME="salary-api",
            OTEL_METRIC_EXPORT_INTERVAL="5000",
        )
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                APP_TARGET,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env=env,
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        deadline = time.monotonic() + 60
        while not serves(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"the app exited with code {self.process.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the app did not start within 60 s")
            time.sleep(0.1)

    def _drain_stderr(self) -> None:
        """Keep the app's log lines (the exporters' failure warnings) without blocking it."""
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if len(self._stderr) < 10_000:
                self._stderr.append(line)

    def stderr(self) -> str:
        return "".join(self._stderr[-20:])

    def log_lines(self) -> int:
        return len(self._stderr)

    def stop(self) -> int:
        """SIGTERM: a graceful shutdown (its lifespan flushes buffered telemetry)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class ResourceSampler:
    """The app process's resident memory and thread count, every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        import psutil

        self._process = psutil.Process(pid)
        self._interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (unix time, RSS bytes, threads)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.samples.append(
                    (time.time(), self._process.memory_info().rss, self._process.num_threads())
                )
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self, start: float, end: float) -> dict[str, Any]:
        """RSS over the measured phase ``[start, end]``: first, last, peak, growth and slope."""
        import numpy as np

        window = [s for s in self.samples if start <= s[0] <= end]
        if len(window) < 2:
            return {}
        times = np.array([s[0] - start for s in window])
        rss = np.array([s[1] for s in window], dtype=np.float64) / 2**20
        half = window[len(window) // 2][1] / 2**20
        return {
            "rss_start_mib": float(rss[0]),
            "rss_middle_mib": float(half),
            "rss_end_mib": float(rss[-1]),
            "rss_peak_mib": float(rss.max()),
            "rss_growth_mib": float(rss[-1] - rss[0]),
            "rss_growth_second_half_mib": float(rss[-1] - half),
            "rss_slope_mib_per_min": float(np.polyfit(times, rss, 1)[0] * 60),
            "threads_min": min(s[2] for s in window),
            "threads_max": max(s[2] for s in window),
            "rss_timeline_mib": [round(float(v), 2) for v in rss[:: max(1, len(rss) // 30)]],
        }


def _accounted(stats: dict[str, Any], predictions: int) -> bool:
    sdk = stats.get("sdk", {})
    dropped = sum(v for k, v in sdk.items() if k.startswith("dropped:"))
    return "exported" in sdk and sdk["exported"] + dropped == predictions


class Trial:
    """One app exporting to one collector condition, with its load generator and memory sampler."""

    def __init__(self, condition: str, args: argparse.Namespace) -> None:
        self.condition = condition
        self.args = args
        self.port = free_port()
        self.collector = CollectorProcess(condition, self.port, args) if condition != "down" else None
        self.app = AppServer(f"http://127.0.0.1:{self.port}", args.protocol)
        self.sampler = ResourceSampler(self.app.process.pid)
        self.load: subprocess.Popen[str] | None = None

    def start_load(self) -> None:
        args = self.args
        self.load = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "_loadgen",
                "--port",
                str(self.app.port),
                "--server-pid",
                str(self.app.process.pid),
                "--rate",
                str(args.rate),
                "--warmup",
                str(args.warmup),
                "--duration",
                str(args.duration),
                "--connections",
                str(args.connections),
                "--seed",
                str(args.seed),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=base_env(),
        )

    def finish(self) -> dict[str, Any]:
        """Wait for the load; then the collector comes back (a healthy one on the same port) and
        the run waits until the SDK's counters account for every prediction."""
        result: dict[str, Any] = {"condition": self.condition}
        assert self.load is not None
        stdout, stderr = self.load.communicate(timeout=self.args.warmup + self.args.duration + 600)
        self.sampler.stop()
        if self.load.returncode != 0:
            raise RuntimeError(f"the load generator failed:\n{stderr}")
        load: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
        result.update(load)
        result.update(self.sampler.summary(load["measured_start_unix"], load["measured_end_unix"]))
        result["app_log_lines_during_load"] = self.app.log_lines()

        if self.condition != "healthy":
            result["faulty_collector"] = self.collector.stop() if self.collector is not None else {}
            self.collector = CollectorProcess("healthy", self.port, self.args)
        assert self.collector is not None
        back = time.monotonic()
        deadline = back + self.args.recovery_timeout
        stats = self.collector.stats()
        while not _accounted(stats, load["answered"]) and time.monotonic() < deadline:
            time.sleep(0.5)
            stats = self.collector.stats()
        result["recovery_s"] = time.monotonic() - back
        result["collector_after"] = stats
        sdk = stats.get("sdk", {})
        result["exported"] = sdk.get("exported", 0)
        result["dropped"] = {k.partition(":")[2]: v for k, v in sdk.items() if k.startswith("dropped:")}
        result["accounted"] = _accounted(stats, load["answered"])
        faulty = result.get("faulty_collector", {})
        result["events_received"] = stats["prediction_events"] + faulty.get("prediction_events", 0)
        result["problems"] = _problems(result)
        return result

    def stop(self) -> None:
        self.sampler.stop()
        if self.load is not None and self.load.poll() is None:
            self.load.kill()
            self.load.wait()
        self.app.stop()
        if self.collector is not None:
            self.collector.stop()


def run_pair(condition: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """``condition`` and a healthy twin side by side, loaded at the same time: whatever else runs
    on the machine meanwhile slows both alike, so their ratio holds where absolute times do not."""
    trials: list[Trial] = []
    try:
        for name in ("healthy", condition):
            trials.append(Trial(name, args))
        for trial in trials:
            trial.start_load()
        return [trial.finish() for trial in trials]
    finally:
        for trial in trials:
            trial.stop()


def _problems(run: dict[str, Any]) -> list[str]:
    """Why a run does not show what it claims to (empty when it does)."""
    problems = []
    if run["failures"]:
        problems.append(f"{run['failures']} of {run['requests']} requests did not get a correct answer")
    if not run["accounted"]:
        sdk = run["collector_after"].get("sdk", {})
        problems.append(f"the SDK's counters {sdk} never accounted for {run['answered']} predictions")
    if run["events_received"] < run["exported"]:
        problems.append(f"{run['exported']} events counted exported but {run['events_received']} received")
    if run["condition"] == "healthy" and sum(run["dropped"].values()):
        problems.append(f"the healthy baseline dropped events: {run['dropped']}")
    if run["condition"] in ("slow", "erroring") and not run["faulty_collector"].get("calls"):
        problems.append(f"the {run['condition']} collector was never called")
    return problems


def _ratios(
    mine: list[dict[str, Any]], twins: dict[tuple[int, str], dict[str, Any]], key: str
) -> list[float]:
    """``key`` of each run over that of its healthy twin (same round, same pair)."""
    out = []
    for run in mine:
        twin = twins.get((run["round"], run["pair"]))
        if twin is not None and twin[key]:
            out.append(run[key] / twin[key])
    return out


def summarise(runs: list[dict[str, Any]], faults: list[str]) -> dict[str, Any]:
    """Per condition: medians over rounds, and ratios to the healthy twin that ran alongside."""
    twins = {(run["round"], run["pair"]): run for run in runs if run["condition"] == "healthy"}
    summary: dict[str, Any] = {}
    for condition in ["healthy", *faults]:
        mine = [run for run in runs if run["condition"] == condition]
        if not mine:
            continue
        ratios = _ratios(mine, twins, "p99_ms") if condition != "healthy" else []
        p50_ratios = _ratios(mine, twins, "p50_ms") if condition != "healthy" else []
        cpu_ratios = _ratios(mine, twins, "server_cpu_us_per_request") if condition != "healthy" else []
        summary[condition] = {
            "rounds": len(mine),
            "p50_ms": statistics.median(run["p50_ms"] for run in mine),
            "p99_ms": statistics.median(run["p99_ms"] for run in mine),
            "max_ms": max(run["max_ms"] for run in mine),
            "p99_over_healthy": statistics.median(ratios) if ratios else None,
            "p99_over_healthy_per_round": ratios,
            "p50_over_healthy": statistics.median(p50_ratios) if p50_ratios else None,
            "cpu_over_healthy": statistics.median(cpu_ratios) if cpu_ratios else None,
            "server_cpu_us_per_request": statistics.median(run["server_cpu_us_per_request"] for run in mine),
            "rss_start_mib": statistics.median(run.get("rss_start_mib", 0.0) for run in mine),
            "rss_end_mib": statistics.median(run.get("rss_end_mib", 0.0) for run in mine),
            "rss_peak_mib": max(run.get("rss_peak_mib", 0.0) for run in mine),
            "rss_growth_mib": max(run.get("rss_growth_mib", 0.0) for run in mine),
            "rss_growth_second_half_mib": max(run.get("rss_growth_second_half_mib", 0.0) for run in mine),
            "threads_max": max(run.get("threads_max", 0) for run in mine),
            "failures": sum(run["failures"] for run in mine),
            "predictions": sum(run["answered"] for run in mine),
            "exported": sum(run["exported"] for run in mine),
            "dropped": {
                reason: sum(run["dropped"].get(reason, 0) for run in mine)
                for reason in sorted({r for run in mine for r in run["dropped"]})
            },
            "recovery_s": max(run["recovery_s"] for run in mine),
            "accounted": all(run["accounted"] for run in mine),
        }
    ratios = [row["p99_over_healthy"] for c, row in summary.items() if c != "healthy"]
    met = bool(ratios) and all(r is not None and r <= TARGET for r in ratios)
    return {"conditions": summary, "target_met": met}


def report(summary: dict[str, Any], runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    table = Table(
        title=(
            f"SDK resilience: POST /predict at {args.rate:g}/s for {args.duration:g} s per condition, "
            f"each beside a healthy twin ({args.protocol}, {args.rounds} round(s), medians)"
        )
    )
    for column in (
        "condition",
        "p50 ms",
        "p99 ms",
        "max ms",
        "p99 / healthy",
        "CPU µs/req",
        "CPU / healthy",
        "RSS start→end MiB",
        "RSS peak",
        "threads",
        "predictions",
        "exported",
        "dropped (reason)",
        "counted after",
    ):
        table.add_column(column, justify="left" if column in ("condition", "dropped (reason)") else "right")
    for condition, row in summary["conditions"].items():
        ratio = row["p99_over_healthy"]
        verdict = "" if ratio is None else ("[green]" if ratio <= TARGET else "[red]") + f"{ratio:.3f}[/]"
        table.add_row(
            condition,
            f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
            f"{row['max_ms']:.1f}",
            verdict if condition != "healthy" else "1",
            f"{row['server_cpu_us_per_request']:.0f}",
            f"{row['cpu_over_healthy']:.3f}" if row["cpu_over_healthy"] is not None else "1",
            f"{row['rss_start_mib']:.1f}→{row['rss_end_mib']:.1f}",
            f"{row['rss_peak_mib']:.1f}",
            str(row["threads_max"]),
            str(row["predictions"]),
            str(row["exported"]),
            ", ".join(f"{k} {v}" for k, v in row["dropped"].items()) or "0",
            f"{row['recovery_s']:.1f} s" if row["accounted"] else "[red]never[/]",
        )
    console.print(table)
    for run in runs:
        slices = " ".join(f"{v:.1f}" for v in run["p99_per_10s_ms"])
        where = f"round {run['round']} pair {run['pair']:8s} {run['condition']:8s}"
        console.print(f"{where} p99 {run['p99_ms']:7.2f} ms, per 10 s: {slices}")
        for problem in run["problems"]:
            console.print(f"[red]{where}: {problem}[/]")
    verdict = "[green]MET[/]" if summary["target_met"] else "[red]NOT MET[/]"
    console.print(f"Target p99(condition) / p99(healthy) <= {TARGET:.2f}: {verdict}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds per condition")
    parser.add_argument("--warmup", type=float, default=10.0, help="unmeasured seconds first")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (open loop)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--rounds", type=int, default=1, help="each round runs every condition")
    parser.add_argument("--slow-seconds", type=float, default=5.0, help="the slow collector's delay")
    parser.add_argument("--protocol", choices=("grpc", "http/protobuf"), default="grpc")
    parser.add_argument(
        "--conditions",
        default=",".join(FAULTS),
        help="comma-separated subset (each runs beside a healthy twin)",
    )
    parser.add_argument("--recovery-timeout", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    faults = [c.strip() for c in args.conditions.split(",") if c.strip() and c.strip() != "healthy"]
    if unknown := set(faults) - set(FAULTS):
        parser.error(f"unknown condition(s): {', '.join(sorted(unknown))}")

    runs: list[dict[str, Any]] = []
    started = time.time()
    for round_index in range(args.rounds):
        # Rotate the order so no condition always runs first (or last) on a warming machine.
        shift = round_index % len(faults)
        for condition in faults[shift:] + faults[:shift]:
            for run in run_pair(condition, args):
                run.update(round=round_index, pair=condition)
                runs.append(run)
                print(
                    f"round {round_index} {condition:9s} {run['condition']:9s} p50 {run['p50_ms']:6.2f} ms "
                    f"p99 {run['p99_ms']:6.2f} ms max {run['max_ms']:7.1f} ms "
                    f"RSS {run.get('rss_start_mib', 0):.1f}->{run.get('rss_end_mib', 0):.1f} MiB "
                    f"exported {run['exported']} dropped {run['dropped']} "
                    f"counted after {run['recovery_s']:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )

    summary = summarise(runs, faults)
    report(summary, runs, args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "sdk_resilience",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": time.time() - started,
        "config": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rate": args.rate,
            "connections": args.connections,
            "rounds": args.rounds,
            "slow_seconds": args.slow_seconds,
            "protocol": args.protocol,
            "conditions": faults,
            "app": APP_TARGET,
            "app_env": {"OTEL_METRIC_EXPORT_INTERVAL": "5000"},
        },
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "versions": versions(
                "modeltel", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-grpc", "grpcio", "uvicorn"
            ),
        },
        "target": {"p99_over_healthy_max": TARGET, "met": summary["target_met"]},
        "valid": not any(run["problems"] for run in runs),
        "summary": summary,
        "runs": runs,
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results written to {args.output}", file=sys.stderr)
    return 1 if any(run["problems"] for run in runs) else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_collector":
        run_collector(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_loadgen":
        run_loadgen(sys.argv[2:])
    else:
        sys.exit(main(sys.argv[1:]))
