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
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from modeltel import semconv
from modeltel_collector.batch import LabelBatch, PredictionBatch
from modeltel_collector.config import Limits
from modeltel_collector.extract import extract_logs
from modeltel_collector.processors.base import Processor
from modeltel_collector.receivers.consumer import ACCEPTED, ExportOutcome, Overloaded
from modeltel_collector.receivers.errors import PayloadTooLarge

_logger = logging.getLogger(__name__)
_STOP = object()
Work = PredictionBatch | LabelBatch | ExportTraceServiceRequest

LIMITS_CHECKPOINT_KEY = "modeltel.pipeline.limits"
"""Where :meth:`Pipeline.checkpoint` keeps the admitted models, versions and features."""
MAX_NAMES_SHOWN = 3
"""Refused names spelled out per limit in an error message; the others are counted."""
_MAX_NAME_CHARS = 64


def _shown(name: str) -> str:
    return repr(name if len(name) <= _MAX_NAME_CHARS else f"{name[:_MAX_NAME_CHARS]}...")


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_SHOWN])
    others = len(names) - MAX_NAMES_SHOWN
    return f"{shown} and {others} other{'s' if others > 1 else ''}" if others > 0 else shown


@dataclass
class _ModelAdmission:
    versions: set[str] = field(default_factory=set)
    features: set[str] = field(default_factory=set)


@dataclass
class _Admitted:
    """What the limits let through of one request, and what they refused."""

    predictions: list[PredictionBatch] = field(default_factory=list)
    labels: list[LabelBatch] = field(default_factory=list)
    rejected: int = 0
    """Records refused (of a model or version beyond its limit)."""
    messages: list[str] = field(default_factory=list)
    limited: dict[str, int] = field(default_factory=dict)
    """Refusals per limit: records for models and versions, feature columns for features."""
    undo: list[Callable[[], object]] = field(default_factory=list)
    """Forgets what this request admitted (when it could not be queued after all)."""

    def rollback(self) -> None:
        for step in reversed(self.undo):
            step()


class Admission:
    """The models, versions per model and features per model admitted so far, within ``limits``.

    Not thread-safe: the pipeline calls it under a lock.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.models: dict[str, _ModelAdmission] = {}

    def _model(self, model: str, undo: list[Callable[[], object]]) -> _ModelAdmission | None:
        state = self.models.get(model)
        if state is None and len(self.models) < self.limits.max_models:
            state = self.models[model] = _ModelAdmission()
            undo.append(partial(self.models.pop, model, None))
        return state

    def admit(self, predictions: Sequence[PredictionBatch], labels: Sequence[LabelBatch]) -> _Admitted:
        limits = self.limits
        out = _Admitted()
        refused_models: dict[str, int] = {}
        refused_versions: dict[tuple[str, str], int] = {}
        dropped: dict[tuple[str, str], None] = {}
        for batch in predictions:
            state = self._model(batch.model, out.undo)
            if state is None:
                refused_models[batch.model] = refused_models.get(batch.model, 0) + len(batch)
                continue
            if batch.version not in state.versions:
                if len(state.versions) >= limits.max_versions_per_model:
                    key = (batch.model, batch.version)
                    refused_versions[key] = refused_versions.get(key, 0) + len(batch)
                    continue
                state.versions.add(batch.version)
                out.undo.append(partial(state.versions.discard, batch.version))
            names = [name for name in (*batch.numeric, *batch.categorical) if name not in state.features]
            if names:
                new = sorted(set(names))  # admitted in name order when not all fit
                room = max(0, limits.max_features_per_model - len(state.features))
                state.features.update(new[:room])
                out.undo.append(partial(state.features.difference_update, new[:room]))
                if len(new) > room:
                    dropped.update(((batch.model, name), None) for name in new[room:])
                    keep = state.features
                    batch = replace(
                        batch,
                        numeric={k: v for k, v in batch.numeric.items() if k in keep},
                        categorical={k: v for k, v in batch.categorical.items() if k in keep},
                    )
            out.predictions.append(batch)
        for label_batch in labels:
            model = label_batch.model
            if self._model(model, out.undo) is None:
                refused_models[model] = refused_models.get(model, 0) + len(label_batch)
            else:
                out.labels.append(label_batch)
        if refused_models:
            count = sum(refused_models.values())
            out.rejected += count
            out.limited["max_models"] = count
            out.messages.append(
                f"{count} record{'s' if count > 1 else ''} rejected: model limit reached "
                f"({limits.max_models} models): {semconv.MODEL_NAME} "
                f"{_listed([_shown(name) for name in refused_models])} refused; raise limits.max_models"
            )
        if refused_versions:
            count = sum(refused_versions.values())
            out.rejected += count
            out.limited["max_versions_per_model"] = count
            pairs = [f"{_shown(version)} of model {_shown(model)}" for model, version in refused_versions]
            out.messages.append(
                f"{count} record{'s' if count > 1 else ''} rejected: version limit reached "
                f"({limits.max_versions_per_model} versions per model): {semconv.MODEL_VERSION} "
                f"{_listed(pairs)} refused; raise limits.max_versions_per_model"
            )
        if dropped:
            out.limited["max_features_per_model"] = len(dropped)
            pairs = [f"{_shown(name)} of model {_shown(model)}" for model, name in dropped]
            out.messages.append(
                f"{len(dropped)} feature{'s' if len(dropped) > 1 else ''} left out of the records, which "
                f"were accepted: feature limit reached ({limits.max_features_per_model} features per "
                f"model): {semconv.FEATURE_PREFIX}* {_listed(pairs)} dropped; "
                "raise limits.max_features_per_model"
            )
        return out

    def checkpoint(self) -> dict[str, Any]:
        return {
            model: {"versions": sorted(state.versions), "features": sorted(state.features)}
            for model, state in self.models.items()
        }

    def restore(self, data: dict[str, Any]) -> None:
        """What a checkpoint admitted stays admitted, even beyond limits lowered since."""
        self.models = {
            str(model): _ModelAdmission(set(map(str, entry["versions"])), set(map(str, entry["features"])))
            for model, entry in data.items()
        }


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
        limits: Limits | None = None,
    ) -> None:
        self.processors = processors
        self.admission = Admission(limits if limits is not None else Limits())
        self._queue: queue.Queue[Any] = queue.Queue(max_queue_batches)
        self._tick_seconds = tick_seconds
        self._clock = clock
        self._lock = threading.Lock()  # held while processors run: checkpoints see a consistent state
        self._enqueue_lock = threading.Lock()
        self._admission_lock = threading.Lock()  # admitting and queueing a request: one at a time
        self._predictions = meter.create_counter(
            semconv.PREDICTIONS_METRIC, unit="{prediction}", description="Prediction events accepted."
        )
        self._accepted = meter.create_counter(
            semconv.RECEIVER_ACCEPTED_METRIC, unit="{record}", description="Records accepted, by signal."
        )
        self._rejected = meter.create_counter(
            semconv.RECEIVER_REJECTED_METRIC, unit="{record}", description="Records rejected, by signal."
        )
        self._limited = meter.create_counter(
            semconv.RECEIVER_LIMITED_METRIC,
            unit="{refusal}",
            description="Refusals by the cardinality limits: records of a refused model or version, "
            "features left out of a batch; by limit and signal.",
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
        admitted = self._admit_and_enqueue(extraction.predictions, extraction.labels)
        for batch in admitted.predictions:
            self._predictions.add(
                len(batch), {semconv.MODEL_NAME: batch.model, semconv.MODEL_VERSION: batch.version}
            )
        accepted = sum(len(batch) for batch in admitted.predictions) + sum(len(b) for b in admitted.labels)
        if accepted:
            self._accepted.add(accepted, {"signal": "logs"})
        rejected = extraction.rejected + admitted.rejected
        if rejected:
            self._rejected.add(rejected, {"signal": "logs"})
        self._count_limited(admitted, "logs")
        if not admitted.messages:
            return extraction.outcome
        message = "; ".join([m for m in (extraction.error_message,) if m] + admitted.messages)
        return ExportOutcome(rejected, message)

    def consume_labels(self, batches: list[LabelBatch]) -> None:
        """Labels from ``POST /v1/labels``: all of them queued, or :class:`Overloaded`.

        Batches of a model refused by ``limits.max_models`` are removed from ``batches`` (so
        the caller's count of accepted labels stays true), logged and counted.
        """
        admitted = self._admit_and_enqueue((), batches)
        batches[:] = admitted.labels
        accepted = sum(len(batch) for batch in batches)
        if accepted:
            self._accepted.add(accepted, {"signal": "labels"})
        if admitted.rejected:
            self._rejected.add(admitted.rejected, {"signal": "labels"})
            _logger.warning("modeltel: POST /v1/labels: %s", "; ".join(admitted.messages))
        self._count_limited(admitted, "labels")

    def _admit_and_enqueue(
        self, predictions: Sequence[PredictionBatch], labels: Sequence[LabelBatch]
    ) -> _Admitted:
        """Apply the limits and queue what they let through; nothing admitted if it cannot be queued."""
        with self._admission_lock:
            admitted = self.admission.admit(predictions, labels)
            try:
                self._enqueue([*admitted.predictions, *admitted.labels])
            except BaseException:
                admitted.rollback()
                raise
        return admitted

    def _count_limited(self, admitted: _Admitted, signal: str) -> None:
        for limit, count in admitted.limited.items():
            self._limited.add(count, {"limit": limit, "signal": signal})

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
        """Each processor's state by name, and the admitted names under :data:`LIMITS_CHECKPOINT_KEY`."""
        with self._lock:
            state = {name: processor.checkpoint() for name, processor in self.processors.items()}
        with self._admission_lock:
            state[LIMITS_CHECKPOINT_KEY] = self.admission.checkpoint()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        if LIMITS_CHECKPOINT_KEY in state:
            with self._admission_lock:
                self.admission.restore(state[LIMITS_CHECKPOINT_KEY])
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
