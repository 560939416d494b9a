"""Load generator and labelling job for the salary service.

It sends paced ``POST /predict`` requests with synthetic rows: a baseline first, then
(from ``drift_at``) rows whose experience is shifted, then (from ``concept_drift_at``)
rows whose true salary follows the concept-drifted relationship. Like a labelling job,
it sends each prediction's true salary ``label_delay`` seconds later with
:func:`modeltel.log_label`, exported over OTLP as the ``OTEL_*`` variables say::

    python -m examples.salary.loadgen --url http://127.0.0.1:8000 --rate 50 --duration 60 \\
        --drift-at 20 --concept-drift-at 40 --label-delay 2 --seed 1

``--record FILE`` writes every request's :class:`RequestResult` to ``FILE`` as JSON
lines, prediction and true salary included, so the monitoring can be checked against them.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import numpy as np

import modeltel
from examples.salary.model import generate
from modeltel import semconv

Phase = Literal["baseline", "data_drift", "concept_drift"]
MODEL = "salary"


@dataclass(frozen=True)
class RequestResult:
    """One request: when it was sent (epoch seconds), how long it took and how it ended."""

    timestamp: float
    latency_s: float
    status: int
    """HTTP status, or 0 when no response came (connection error, timeout)."""
    prediction_id: str | None
    phase: Phase
    error: str | None = None
    prediction: float | None = None
    """The predicted salary the service answered, if it answered."""
    label: float | None = None
    """The row's true salary, sent as its label when the request succeeded."""


@dataclass
class LoadStats:
    """Totals of a run; latency percentiles (seconds) are over requests that got a response."""

    sent: int = 0
    ok: int = 0
    errors: int = 0
    labels_sent: int = 0
    p50: float = float("nan")
    p95: float = float("nan")
    p99: float = float("nan")
    elapsed_s: float = 0.0
    phases: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        rate = self.sent / self.elapsed_s if self.elapsed_s else 0.0
        phases = ", ".join(f"{name}={count}" for name, count in self.phases.items())
        return (
            f"sent={self.sent} ok={self.ok} errors={self.errors} labels_sent={self.labels_sent} "
            f"rate={rate:.1f}/s latency p50={self.p50 * 1e3:.1f}ms p95={self.p95 * 1e3:.1f}ms "
            f"p99={self.p99 * 1e3:.1f}ms phases: {phases}"
        )


def phase_at(elapsed: float, drift_at: float | None, concept_drift_at: float | None) -> Phase:
    """The phase of the run ``elapsed`` seconds after its start."""
    if concept_drift_at is not None and elapsed >= concept_drift_at:
        return "concept_drift"
    if drift_at is not None and elapsed >= drift_at:
        return "data_drift"
    return "baseline"


class _Labeller:
    """Ground-truth labels waiting for their due time, sent in batches."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.pending: deque[tuple[float, str, float]] = deque()  # due times only grow
        self.sent = 0

    def add(self, now: float, prediction_id: str, value: float) -> None:
        self.pending.append((now + self.delay, prediction_id, value))

    def next_due(self) -> float | None:
        return self.pending[0][0] if self.pending else None

    def send_due(self, now: float) -> None:
        while self.pending and self.pending[0][0] <= now:
            _, prediction_id, value = self.pending.popleft()
            modeltel.log_label(prediction_id, value, model=MODEL)
            self.sent += 1


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run(
    url: str,
    *,
    rate: float,
    duration: float,
    drift_at: float | None = None,
    concept_drift_at: float | None = None,
    drift_shift: float = 10.0,
    label_delay: float = 2.0,
    seed: int = 0,
    stop: threading.Event | None = None,
    on_result: Callable[[RequestResult], None] | None = None,
) -> LoadStats:
    """Send ``rate`` requests a second for ``duration`` seconds, then the remaining labels.

    Requests are open-loop paced on a monotonic clock; a slow response delays the next
    ones but never causes a burst to catch up. Errors (non-2xx, connection failures)
    are counted, never raised. Setting ``stop`` ends the run early and sends the
    pending labels at once instead of waiting for their delay.
    """
    if rate <= 0 or duration < 0:
        raise ValueError("rate must be positive and duration not negative")
    stop = stop or threading.Event()
    rng = np.random.default_rng(seed)
    interval = 1.0 / rate
    labeller = _Labeller(label_delay)
    stats = LoadStats()
    phases: Counter[str] = Counter()
    latencies: list[float] = []
    endpoint = url.rstrip("/") + "/predict"

    with httpx.Client(timeout=10.0) as client:
        start = time.monotonic()
        next_send = start
        while not stop.is_set():
            now = time.monotonic()
            elapsed = now - start
            if elapsed >= duration:
                break
            labeller.send_due(now)
            if now < next_send:
                stop.wait(next_send - now)
                continue
            # Behind schedule by more than a slot, the schedule restarts from now: missed
            # slots are skipped, never made up in a burst.
            next_send = max(next_send + interval, now)

            phase = phase_at(elapsed, drift_at, concept_drift_at)
            shift = drift_shift if drift_at is not None and elapsed >= drift_at else 0.0
            rows, salaries = generate(1, rng, shift=shift, concept_drift=phase == "concept_drift")
            result = _send(client, endpoint, rows[0], phase, float(salaries[0]))
            stats.sent += 1
            phases[phase] += 1
            if result.status:
                latencies.append(result.latency_s)
            if 200 <= result.status < 300:
                stats.ok += 1
                if result.prediction_id:
                    labeller.add(time.monotonic(), result.prediction_id, float(salaries[0]))
            else:
                stats.errors += 1
            if on_result is not None:
                on_result(result)
        stats.elapsed_s = time.monotonic() - start

    # The remaining labels: at their due time, or all at once when stopped.
    while (due := labeller.next_due()) is not None:
        if not stop.is_set():
            stop.wait(max(0.0, due - time.monotonic()))
        labeller.send_due(float("inf") if stop.is_set() else time.monotonic())

    stats.labels_sent = labeller.sent
    stats.p50, stats.p95, stats.p99 = (_percentile(latencies, q) for q in (50, 95, 99))
    stats.phases = dict(phases)
    return stats


def _send(
    client: httpx.Client, endpoint: str, row: dict[str, object], phase: Phase, label: float
) -> RequestResult:
    timestamp = time.time()
    began = time.perf_counter()
    try:
        response = client.post(endpoint, json=row)
    except httpx.HTTPError as error:
        return RequestResult(
            timestamp,
            time.perf_counter() - began,
            0,
            None,
            phase,
            f"{type(error).__name__}: {error}",
            label=label,
        )
    latency = time.perf_counter() - began
    failure = None if response.is_success else response.text[:200]
    prediction_id = response.headers.get(semconv.PREDICTION_ID_HEADER)
    prediction = float(response.json()["prediction"]) if response.is_success else None
    return RequestResult(
        timestamp, latency, response.status_code, prediction_id, phase, failure, prediction, label
    )


def main(argv: list[str] | None = None) -> None:
    """The command line: run, flush the labels' telemetry, print the totals."""
    parser = argparse.ArgumentParser(description="Load generator and labelling job for the salary service.")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the salary service")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--drift-at", type=float, default=None, help="seconds until data drift")
    parser.add_argument("--concept-drift-at", type=float, default=None, help="seconds until concept drift")
    parser.add_argument(
        "--drift-shift", type=float, default=10.0, help="years of experience added by data drift"
    )
    parser.add_argument("--label-delay", type=float, default=2.0, help="seconds from prediction to label")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", type=Path, default=None, help="write each request as a JSON line here")
    args = parser.parse_args(argv)

    stop = threading.Event()
    outcome: list[LoadStats] = []
    record = args.record.open("w", encoding="utf-8") if args.record is not None else None

    def write(result: RequestResult) -> None:
        assert record is not None
        record.write(json.dumps(asdict(result)) + "\n")

    def work() -> None:
        outcome.append(
            run(
                args.url,
                rate=args.rate,
                duration=args.duration,
                drift_at=args.drift_at,
                concept_drift_at=args.concept_drift_at,
                drift_shift=args.drift_shift,
                label_delay=args.label_delay,
                seed=args.seed,
                stop=stop,
                on_result=write if record is not None else None,
            )
        )

    worker = threading.Thread(target=work, name="loadgen")
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.5)
    except KeyboardInterrupt:  # stop early, still sending the pending labels
        stop.set()
        worker.join()
    finally:
        modeltel.force_flush()
        if record is not None:
            record.close()
    if not outcome:
        raise SystemExit("the load generator failed (see the traceback above)")
    print(outcome[0])


if __name__ == "__main__":
    main()
