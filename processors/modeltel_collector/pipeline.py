"""The pipeline: receivers hand requests in, one thread runs the processors on batches.

``consume_*`` run on receiver threads: a logs request (or a ``/v1/labels`` body) is
extracted into columnar batches there (so rejections are answered in the same call),
admitted by the cardinality limits, appended to the write-ahead log and queued; the call
returns once the log has it on disk, so an acknowledged request survives a crash. A full
queue answers ``Overloaded`` so exporters retry later.

One pipeline thread applies each request in log order: it skips a request whose digest
was applied before (a retried export, see :meth:`~modeltel_collector.state.StateDb.seen`),
hands each batch to every processor in order and counts ``ml.predictions``; every
``tick_seconds`` it lets processors close their windows, and every
``checkpoint_seconds`` it commits a checkpoint (see :mod:`modeltel_collector.state`)
and truncates the log before it. At start it restores the last checkpoint and replays the
requests the log holds after it, so every acknowledged request is applied exactly once.
Processors never run concurrently.
"""

from __future__ import annotations

import hashlib
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
from modeltel_collector.labels import MODEL, LabelError, labels_from_records, parse_labels
from modeltel_collector.processors.base import Processor
from modeltel_collector.receivers.consumer import ACCEPTED, ExportOutcome, LabelsOutcome, Overloaded
from modeltel_collector.receivers.errors import PayloadTooLarge
from modeltel_collector.state import StateDb
from modeltel_collector.wal import Entry, WalError, WriteAheadLog

_logger = logging.getLogger(__name__)
_STOP = object()
Work = PredictionBatch | LabelBatch | ExportTraceServiceRequest

LIMITS_CHECKPOINT_KEY = "modeltel.pipeline.limits"
"""Where the checkpoint keeps the admitted models, versions and features."""
TOTALS_CHECKPOINT_KEY = "modeltel.pipeline.predictions"
"""Where the checkpoint keeps the ``ml.predictions`` totals, so they stay cumulative across restarts."""
WAL_WAIT_SECONDS = 30.0
"""Longest a receiver waits for the log to have a request on disk before answering ``UNAVAILABLE``."""
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
    refused_models: dict[str, int] = field(default_factory=dict)
    """Records refused per model beyond ``max_models``."""
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
        refused_models = out.refused_models
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


@dataclass
class _Request:
    """What the pipeline thread applies: one request's admitted batches, in log order."""

    work: list[Work]
    seq: int = 0
    """Its seq in the write-ahead log; 0 for what is not logged (traces)."""
    digest: bytes = b""
    received_unix_nano: int = 0


def _digest(kind: str, payload: bytes) -> bytes:
    """What identifies a retry of a request: its bytes (exporters resend the same request)."""
    return hashlib.blake2b(payload, digest_size=16, person=kind.encode()).digest()


class Pipeline:
    """A :class:`~modeltel_collector.receivers.Consumer` feeding named processors (see the module docstring).

    It takes ownership of ``wal`` and ``state`` (closed by :meth:`shutdown`) and recovers
    from them on construction: the last checkpoint is restored and the log replayed.
    """

    def __init__(
        self,
        processors: dict[str, Processor],
        meter: Meter,
        *,
        wal: WriteAheadLog,
        state: StateDb,
        max_queue_batches: int = 1024,
        tick_seconds: float = 1.0,
        checkpoint_seconds: float = 5.0,
        dedupe_seconds: float = 3600.0,
        clock: Callable[[], int] = time.time_ns,
        limits: Limits | None = None,
    ) -> None:
        self.processors = processors
        self.admission = Admission(limits if limits is not None else Limits())
        self._wal = wal
        self._state = state
        self._queue: queue.Queue[Any] = queue.Queue()
        self._max_queued = max_queue_batches
        self._queued = 0
        """Batches queued and not yet applied (what the bound counts)."""
        self._tick_seconds = tick_seconds
        self._checkpoint_seconds = checkpoint_seconds
        self._dedupe_nanos = int(dedupe_seconds * 1e9)
        self._clock = clock
        self._applied_seq = 0
        self._totals: dict[tuple[str, str], int] = {}
        """``ml.predictions`` per (model, version), applied once each."""
        self._lock = threading.Lock()  # held while processors run: checkpoints see a consistent state
        self._counts_lock = threading.Lock()  # the batches queued, the ml.predictions totals
        self._admission_lock = threading.Lock()  # admit, log and queue a request: one at a time
        meter.create_observable_counter(
            semconv.PREDICTIONS_METRIC,
            callbacks=[self._observe_totals],
            unit="{prediction}",
            description="Prediction events accepted, each once (retries and replays are not counted again).",
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
        self._duplicates = meter.create_counter(
            semconv.RECEIVER_DUPLICATES_METRIC,
            unit="{request}",
            description="Requests received again (retried exports) and not applied twice.",
        )
        meter.create_observable_gauge(
            semconv.RECEIVER_QUEUE_DEPTH_METRIC,
            callbacks=[self._observe_queue],
            unit="{batch}",
            description="Batches waiting for the processors.",
        )
        self._recover()
        self._thread = threading.Thread(target=self._run, name="modeltel-pipeline", daemon=True)
        self._thread.start()

    # Receiver side -----------------------------------------------------------------------

    def _reserve(self, batches: int) -> None:
        """Room for a request's batches in the queue, all or none (else retry, or never)."""
        if batches > self._max_queued:
            raise PayloadTooLarge(
                f"the request holds {batches} batches (one per model and version), more than the "
                f"collector's queue of {self._max_queued} can ever take: send fewer models per request"
            )
        with self._counts_lock:
            if self._queued + batches > self._max_queued:
                raise Overloaded(retry_after_seconds=1.0)
            self._queued += batches

    def _release(self, batches: int) -> None:
        with self._counts_lock:
            self._queued -= batches

    def _log_and_queue(
        self,
        kind: str,
        payload: bytes,
        received: int,
        predictions: Sequence[PredictionBatch],
        labels: Sequence[LabelBatch],
    ) -> _Admitted:
        """Admit, log and queue what the limits let through; return once it is durable."""
        digest = _digest(kind, payload)
        with self._admission_lock:
            admitted = self.admission.admit(predictions, labels)
            work: list[Work] = [*admitted.predictions, *admitted.labels]
            if not work:
                return admitted
            try:
                self._reserve(len(work))
                try:
                    seq = self._wal.append(kind, payload, received)
                except BaseException:
                    self._release(len(work))
                    raise
            except BaseException as error:
                admitted.rollback()
                if isinstance(error, WalError):
                    raise Overloaded(1.0, f"the collector cannot store requests now: {error}") from None
                raise
            self._queue.put(_Request(work, seq, digest, received))
        try:
            self._wal.wait(seq, WAL_WAIT_SECONDS)
        except WalError as error:  # queued all the same: a retry will be recognised as one
            raise Overloaded(1.0, f"the collector could not store the request: {error}; retry") from None
        return admitted

    def consume_logs(self, payload: bytes) -> ExportOutcome:
        """A serialized ``ExportLogsServiceRequest``: extracted, admitted, logged and queued."""
        if self._queued >= self._max_queued:  # refuse before the work of extracting: retry later
            raise Overloaded(retry_after_seconds=1.0)
        received = time.time_ns()
        extraction = extract_logs(payload, received)  # InvalidPayload if it is not one
        admitted = self._log_and_queue("logs", payload, received, extraction.predictions, extraction.labels)
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

    def consume_labels(self, payload: bytes) -> LabelsOutcome:
        """A ``POST /v1/labels`` body: its valid labels logged and queued, or :class:`Overloaded`.

        Records of a model refused by ``limits.max_models`` are refused one by one, by index.
        """
        if self._queued >= self._max_queued:
            raise Overloaded(retry_after_seconds=1.0)
        received = time.time_ns()
        records = parse_labels(payload)
        batches, errors = labels_from_records(records, received)
        admitted = self._log_and_queue("labels", payload, received, (), batches)
        if admitted.refused_models:
            refusal = "; ".join(admitted.messages)
            invalid = {error.index for error in errors}
            errors += [
                LabelError(index, refusal)
                for index, record in enumerate(records)
                if index not in invalid and record.get(MODEL) in admitted.refused_models
            ]
            errors.sort(key=lambda error: error.index)
        accepted = sum(len(batch) for batch in admitted.labels)
        if accepted:
            self._accepted.add(accepted, {"signal": "labels"})
        if admitted.rejected:
            self._rejected.add(admitted.rejected, {"signal": "labels"})
        self._count_limited(admitted, "labels")
        return LabelsOutcome(accepted, errors)

    def _count_limited(self, admitted: _Admitted, signal: str) -> None:
        for limit, count in admitted.limited.items():
            self._limited.add(count, {"limit": limit, "signal": signal})

    def consume_traces(self, request: ExportTraceServiceRequest) -> ExportOutcome:
        """Spans feed the service processor's RED metrics, counters that restart with the
        collector: they are queued, not logged."""
        self._reserve(1)
        self._queue.put(_Request([request]))
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
        yield Observation(self._queued)

    def _observe_totals(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._counts_lock:
            totals = list(self._totals.items())
        for (model, version), count in totals:
            yield Observation(count, {semconv.MODEL_NAME: model, semconv.MODEL_VERSION: version})

    # Pipeline thread ---------------------------------------------------------------------

    def _run(self) -> None:
        next_tick = time.monotonic() + self._tick_seconds
        next_checkpoint = time.monotonic() + self._checkpoint_seconds
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, min(next_tick, next_checkpoint) - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                self._queue.task_done()
                return
            with self._lock:
                if item is not None:
                    self._apply(item)
                    self._release(len(item.work))
                    self._queue.task_done()
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + self._tick_seconds
                    self._tick()
                if now >= next_checkpoint:
                    next_checkpoint = now + self._checkpoint_seconds
                    self._checkpoint()

    def _apply(self, request: _Request) -> None:
        if request.digest and self._state.seen(request.digest, request.received_unix_nano):
            self._duplicates.add(
                1, {"signal": "labels" if isinstance(request.work[0], LabelBatch) else "logs"}
            )
        else:
            for item in request.work:
                if isinstance(item, PredictionBatch):
                    key = (item.model, item.version)
                    with self._counts_lock:
                        self._totals[key] = self._totals.get(key, 0) + len(item)
                self._dispatch(item)
        if request.seq:
            self._applied_seq = request.seq

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

    def _checkpoint(self) -> None:
        """Commit the processors' state with the log position it includes; truncate the log."""
        try:
            snapshot: dict[str, Any] = {name: p.checkpoint() for name, p in self.processors.items()}
            with self._admission_lock:
                snapshot[LIMITS_CHECKPOINT_KEY] = self.admission.checkpoint()
            with self._counts_lock:
                snapshot[TOTALS_CHECKPOINT_KEY] = [[*key, count] for key, count in self._totals.items()]
            self._state.forget_before(self._clock() - self._dedupe_nanos)
            self._state.commit(self._applied_seq, snapshot)
        except Exception:  # the log keeps everything since the last checkpoint: try again later
            _logger.exception("modeltel: checkpoint failed")
            return
        self._wal.truncate(self._applied_seq)

    # Recovery ----------------------------------------------------------------------------

    def _recover(self) -> None:
        """Restore the last checkpoint, replay the log after it, and checkpoint the result."""
        loaded = self._state.load()
        after = 0
        if loaded is not None:
            after, snapshot = loaded
            self._restore(snapshot)
        self._applied_seq = after
        self._wal.start_after(after)
        replayed = 0
        for entry in self._wal.entries(after):
            request = self._replayed(entry)
            if request is not None:
                self._apply(request)
                replayed += 1
            self._applied_seq = entry.seq
        if replayed:
            _logger.warning(
                "modeltel: replayed %d requests acknowledged before the last stop but not checkpointed",
                replayed,
            )
        self._checkpoint()

    def _restore(self, snapshot: dict[str, Any]) -> None:
        self.admission.restore(snapshot.get(LIMITS_CHECKPOINT_KEY, {}))
        self._totals = {
            (model, version): int(n) for model, version, n in snapshot.get(TOTALS_CHECKPOINT_KEY, [])
        }
        for name, processor in self.processors.items():
            if name in snapshot:
                processor.restore(snapshot[name])

    def _replayed(self, entry: Entry) -> _Request | None:
        """The request a log entry was, admitted again (the limits decide as they did)."""
        try:
            if entry.kind == "logs":
                extraction = extract_logs(entry.payload, entry.received_unix_nano)
                predictions, labels = extraction.predictions, extraction.labels
            else:
                predictions, (labels, _) = (
                    [],
                    labels_from_records(parse_labels(entry.payload), entry.received_unix_nano),
                )
        except Exception:
            _logger.exception(
                "modeltel: request %d of the write-ahead log cannot be read again; skipped", entry.seq
            )
            return None
        admitted = self.admission.admit(predictions, labels)
        work: list[Work] = [*admitted.predictions, *admitted.labels]
        return (
            _Request(work, entry.seq, _digest(entry.kind, entry.payload), entry.received_unix_nano)
            if work
            else None
        )

    # Lifecycle ---------------------------------------------------------------------------

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every queued request has been applied; False if ``timeout`` ran out first."""
        deadline = time.monotonic() + timeout
        done = self._queue.all_tasks_done  # notified by task_done once nothing is unfinished
        with done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                done.wait(remaining)
        return True

    def checkpoint(self) -> None:
        """Commit a checkpoint now (the pipeline thread also does every ``checkpoint_seconds``)."""
        with self._lock:
            self._checkpoint()

    def shutdown(self) -> None:
        """Apply what is queued, stop the thread, shut the processors down, checkpoint, close."""
        self._queue.put(_STOP)
        self._thread.join()
        for processor in self.processors.values():
            processor.shutdown()
        self._checkpoint()
        self._wal.close()
        self._state.close()
