"""The pipeline: receivers hand requests in, one thread runs the processors on batches.

``consume_*`` run on receiver threads: logs are extracted into columnar batches there
(so rejections are answered in the same call) and queued; a full queue answers
``Overloaded`` so exporters retry later. One pipeline thread hands each batch to every
processor in order, and every ``tick_seconds`` lets them close their windows, so
processors never run concurrently.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from modeltel import semconv
from modeltel_collector.batch import LabelBatch, PredictionBatch
from modeltel_collector.extract import extract_logs
from modeltel_collector.processors.base import Processor
from modeltel_collector.receivers.consumer import ACCEPTED, ExportOutcome, Overloaded
from modeltel_collector.receivers.errors import PayloadTooLarge

_logger = logging.getLogger(__name__)
_STOP = object()
Work = PredictionBatch | LabelBatch | ExportTraceServiceRequest


class Pipeline:
    """A :class:`~modeltel_collector.receivers.Consumer` feeding named processors."""

    def __init__(
        self,
        processors: dict[str, Processor],
        meter: Meter,
        *,
        max_queue_batches: int = 1024,
        tick_seconds: float = 1.0,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.processors = processors
        self._queue: queue.Queue[Any] = queue.Queue(max_queue_batches)
        self._tick_seconds = tick_seconds
        self._clock = clock
        self._lock = threading.Lock()  # held while processors run: checkpoints see a consistent state
        self._enqueue_lock = threading.Lock()
        self._predictions = meter.create_counter(
            semconv.PREDICTIONS_METRIC, unit="{prediction}", description="Prediction events accepted."
        )
        self._accepted = meter.create_counter(
            semconv.RECEIVER_ACCEPTED_METRIC, unit="{record}", description="Records accepted, by signal."
        )
        self._rejected = meter.create_counter(
            semconv.RECEIVER_REJECTED_METRIC, unit="{record}", description="Records rejected, by signal."
        )
        meter.create_observable_gauge(
            semconv.RECEIVER_QUEUE_DEPTH_METRIC,
            callbacks=[self._observe_queue],
            unit="{batch}",
            description="Batches waiting for the processors.",
        )
        self._thread = threading.Thread(target=self._run, name="modeltel-pipeline", daemon=True)
        self._thread.start()

    # Receiver side -----------------------------------------------------------------------

    def _enqueue(self, items: Sequence[Work]) -> None:
        """Queue all of a request's batches or none (a retried request must not count twice).

        A request of more batches (models and versions) than the queue holds could never be
        queued: :class:`PayloadTooLarge` (not retryable) rather than retries forever.
        """
        if len(items) > self._queue.maxsize:
            raise PayloadTooLarge(
                f"the request holds {len(items)} batches (one per model and version), more than the "
                f"collector's queue of {self._queue.maxsize} can ever take: send fewer models per request"
            )
        with self._enqueue_lock:
            if self._queue.maxsize - self._queue.qsize() < len(items):
                raise Overloaded(retry_after_seconds=1.0)
            for item in items:
                self._queue.put_nowait(item)

    def consume_logs(self, payload: bytes) -> ExportOutcome:
        """A serialized ``ExportLogsServiceRequest``: extracted here, its batches queued."""
        if self._queue.full():  # refuse before the work of extracting: the exporter retries later
            raise Overloaded(retry_after_seconds=1.0)
        extraction = extract_logs(payload)  # InvalidPayload if it is not one
        self._enqueue([*extraction.predictions, *extraction.labels])
        for batch in extraction.predictions:
            self._predictions.add(
                len(batch), {semconv.MODEL_NAME: batch.model, semconv.MODEL_VERSION: batch.version}
            )
        accepted = extraction.prediction_count + extraction.label_count
        if accepted:
            self._accepted.add(accepted, {"signal": "logs"})
        if extraction.rejected:
            self._rejected.add(extraction.rejected, {"signal": "logs"})
        return extraction.outcome

    def consume_labels(self, batches: list[LabelBatch]) -> None:
        """Labels from ``POST /v1/labels``: all of them queued, or :class:`Overloaded`."""
        self._enqueue(batches)
        accepted = sum(len(batch) for batch in batches)
        if accepted:
            self._accepted.add(accepted, {"signal": "labels"})

    def consume_traces(self, request: ExportTraceServiceRequest) -> ExportOutcome:
        self._enqueue([request])
        spans = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        self._accepted.add(spans, {"signal": "traces"})
        return ACCEPTED

    def consume_metrics(self, request: ExportMetricsServiceRequest) -> ExportOutcome:
        """Metrics are accepted (the service processor may forward them) but not processed."""
        for processor in self.processors.values():
            forward = getattr(processor, "forward_metrics", None)
            if forward is not None:
                forward(request)
        return ACCEPTED

    def _observe_queue(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._queue.qsize())

    # Pipeline thread ---------------------------------------------------------------------

    def _run(self) -> None:
        next_tick = time.monotonic() + self._tick_seconds
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                self._queue.task_done()
                return
            with self._lock:
                if item is not None:
                    self._dispatch(item)
                    self._queue.task_done()
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self._tick_seconds
                    self._tick()

    def _dispatch(self, item: Work) -> None:
        for name, processor in self.processors.items():
            try:
                if isinstance(item, PredictionBatch):
                    processor.process_predictions(item)
                elif isinstance(item, LabelBatch):
                    processor.process_labels(item)
                else:
                    processor.process_spans(item)
            except Exception:  # one processor's bug must not stop the others or the pipeline
                _logger.exception("modeltel: processor %r failed on a batch", name)

    def _tick(self) -> None:
        now = self._clock()
        for name, processor in self.processors.items():
            try:
                processor.tick(now)
            except Exception:
                _logger.exception("modeltel: processor %r failed to close its windows", name)

    # Lifecycle ---------------------------------------------------------------------------

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every queued batch has been processed; False if ``timeout`` ran out first."""
        deadline = time.monotonic() + timeout
        done = self._queue.all_tasks_done  # notified by task_done once nothing is unfinished
        with done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                done.wait(remaining)
        return True

    def checkpoint(self) -> dict[str, Any]:
        with self._lock:
            return {name: processor.checkpoint() for name, processor in self.processors.items()}

    def restore(self, state: dict[str, Any]) -> None:
        with self._lock:
            for name, processor in self.processors.items():
                if name in state:
                    processor.restore(state[name])

    def shutdown(self) -> None:
        """Process what is queued, stop the thread, shut the processors down."""
        self._queue.put(_STOP)
        self._thread.join()
        for processor in self.processors.values():
            processor.shutdown()
