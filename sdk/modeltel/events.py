"""Where ``ml.prediction`` and ``ml.label`` events go.

Two sinks share one small interface:

- :class:`OTLPEventSink`, used when modeltel set up the process's telemetry itself:
  events are encoded straight to OTLP bytes (:mod:`modeltel._otlp`) and handed to a
  :class:`BatchEventProcessor`, a bounded queue drained by one thread that batches
  them into ``ExportLogsServiceRequest`` s.
- :class:`LoggerEventSink`, used when the process already had a ``LoggerProvider``
  (``opentelemetry-instrument``, or providers set up in code): events go through
  it, so they follow the pipeline the user configured.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import metrics
from opentelemetry._logs import Logger
from opentelemetry.sdk.environment_variables import (
    OTEL_BLRP_EXPORT_TIMEOUT,
    OTEL_BLRP_MAX_EXPORT_BATCH_SIZE,
    OTEL_BLRP_MAX_QUEUE_SIZE,
    OTEL_BLRP_SCHEDULE_DELAY,
)
from opentelemetry.trace import SpanContext

from modeltel import semconv
from modeltel._otlp import LogsRequestFramer, encode_event
from modeltel.providers import env_int

_logger = logging.getLogger(__name__)


class EventSink(Protocol):
    """Receives finished events; never blocks and never raises into the caller."""

    def emit(
        self, event_name: str, attributes: Mapping[str, Any], span_context: SpanContext | None
    ) -> None: ...

    def force_flush(self, timeout_millis: int = 30_000) -> bool: ...

    def shutdown(self) -> None: ...


class LoggerEventSink:
    """Emits events through an OpenTelemetry ``Logger`` (the user's own pipeline)."""

    def __init__(self, logger: Logger, provider: Any) -> None:
        self._logger = logger
        self._provider = provider

    def emit(self, event_name: str, attributes: Mapping[str, Any], span_context: SpanContext | None) -> None:
        # The Logs API takes the trace context from the current context, which is the
        # request's span wherever modeltel emits.
        self._logger.emit(event_name=event_name, attributes=dict(attributes))

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        flush = getattr(self._provider, "force_flush", None)
        return bool(flush(timeout_millis)) if flush else True

    def shutdown(self) -> None:
        """The provider belongs to the user, who shuts it down."""


class EventCounters:
    """The SDK's own health metrics: events exported, and events dropped by reason."""

    def __init__(self, meter_provider: metrics.MeterProvider) -> None:
        meter = meter_provider.get_meter(semconv.SCOPE_NAME)
        self._exported = meter.create_counter(
            semconv.SDK_EVENTS_EXPORTED_METRIC,
            unit="{event}",
            description="Prediction and label events the receiver accepted.",
        )
        self._dropped = meter.create_counter(
            semconv.SDK_EVENTS_DROPPED_METRIC,
            unit="{event}",
            description="Events lost on the app side, by reason.",
        )
        self._reasons: dict[str, dict[str, str]] = {}

    def exported(self, count: int) -> None:
        self._exported.add(count)

    def dropped(self, count: int, reason: str) -> None:
        attributes = self._reasons.setdefault(reason, {semconv.DROP_REASON: reason})
        self._dropped.add(count, attributes)


@dataclass(frozen=True)
class EncodedBatch:
    """A framed ``ExportLogsServiceRequest`` and the number of records in it."""

    payload: bytes
    count: int


class EventTransport(Protocol):
    """Sends one framed request; True when the receiver accepted it."""

    def send(self, batch: EncodedBatch) -> bool: ...

    def shutdown(self) -> None: ...


MAX_QUEUE_BYTES = 32 * 1024 * 1024
"""Queued events never hold more memory than this, whatever their count."""


class BatchEventProcessor:
    """A bounded queue of encoded events drained by one background thread.

    ``emit`` never blocks: when the queue is full (the receiver is down or slow) the
    event is dropped and counted in ``modeltel.sdk.events.dropped``. Sizes and delays
    follow the ``OTEL_BLRP_*`` variables of the SDK's BatchLogRecordProcessor.
    """

    def __init__(
        self,
        transport: EventTransport,
        framer: LogsRequestFramer,
        counters: EventCounters,
    ) -> None:
        self._transport = transport
        self._framer = framer
        self._max_queue_size = env_int(OTEL_BLRP_MAX_QUEUE_SIZE, 2048)
        self._max_batch = min(env_int(OTEL_BLRP_MAX_EXPORT_BATCH_SIZE, 512), self._max_queue_size)
        self._delay = env_int(OTEL_BLRP_SCHEDULE_DELAY, 1000) / 1000
        self._export_timeout = env_int(OTEL_BLRP_EXPORT_TIMEOUT, 30_000) / 1000
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._exporting = 0
        self._shutdown = False
        self._counters = counters
        self._start_worker()
        os.register_at_fork(after_in_child=self._after_fork_in_child)
        atexit.register(self.shutdown)

    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self._run, name="modeltel-events", daemon=True)
        self._worker.start()

    def _after_fork_in_child(self) -> None:
        self._queue.clear()
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._exporting = 0
        self._start_worker()

    def emit(self, record: bytes) -> None:
        with self._lock:
            if self._shutdown:
                full_reason = "shutdown"
            elif (
                len(self._queue) >= self._max_queue_size or self._queued_bytes + len(record) > MAX_QUEUE_BYTES
            ):
                full_reason = "queue_full"
            else:
                self._queue.append(record)
                self._queued_bytes += len(record)
                if len(self._queue) >= self._max_batch:
                    self._wake.set()
                return
        self._counters.dropped(1, full_reason)

    def _take_batch(self) -> list[bytes]:
        with self._lock:
            count = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(count)]
            self._queued_bytes -= sum(map(len, batch))
            self._exporting += 1
            return batch

    def _export(self, batch: list[bytes]) -> None:
        try:
            if batch:
                encoded = EncodedBatch(self._framer.frame(batch), len(batch))
                try:
                    accepted = self._transport.send(encoded)
                except Exception:  # a transport bug must not kill the worker thread
                    _logger.exception("modeltel: exporting %d events failed", len(batch))
                    accepted = False
                if accepted:
                    self._counters.exported(len(batch))
                else:
                    self._counters.dropped(len(batch), "export_failed")
        finally:
            with self._lock:
                self._exporting -= 1
                self._idle.notify_all()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._delay)
            self._wake.clear()
            while True:
                batch = self._take_batch()
                self._export(batch)
                if len(batch) < self._max_batch:
                    break
            if self._shutdown:
                return

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait until every queued event has been exported (or dropped)."""
        deadline = time.monotonic() + timeout_millis / 1000
        with self._lock:
            while self._queue or self._exporting:
                self._wake.set()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.05))
        return True

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self.force_flush(int(self._export_timeout * 1000))
        self._shutdown = True
        self._wake.set()
        self._worker.join(self._export_timeout)
        self._transport.shutdown()


class OTLPEventSink:
    """Encodes events to OTLP bytes and queues them on a :class:`BatchEventProcessor`."""

    def __init__(self, processor: BatchEventProcessor) -> None:
        self.processor = processor

    def emit(self, event_name: str, attributes: Mapping[str, Any], span_context: SpanContext | None) -> None:
        if span_context is not None and span_context.is_valid:
            record = encode_event(
                time_unix_nano=time.time_ns(),
                event_name=event_name,
                attributes=attributes,
                trace_id=span_context.trace_id,
                span_id=span_context.span_id,
                trace_flags=span_context.trace_flags,
            )
        else:
            record = encode_event(time_unix_nano=time.time_ns(), event_name=event_name, attributes=attributes)
        self.processor.emit(record)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.processor.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.processor.shutdown()
