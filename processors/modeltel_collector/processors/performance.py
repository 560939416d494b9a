"""The performance processor: joins labels to predictions and exports model quality per window.

Predictions and labels meet in a :class:`~modeltel_collector.labelstore.LabelStore`
(SQLite, WAL, retention TTL, every prediction id joined once). Each newly joined pair
goes to the tumbling window of its *prediction* time (the model's ``window`` setting,
else the processor's), per ``(model, version)``, so a late label updates the window its
prediction belongs to. A window keeps sufficient statistics only, so the metrics are
exact and its memory is bounded:

regression
    n, sums of errors (``prediction - label``), squared errors, absolute errors, absolute
    percentage errors (rows whose label is 0 are skipped and counted) and the labels'
    count, mean and sum of squared deviations (merged batch by batch with Chan's formula,
    which avoids the cancellation of ``sum(y**2) - sum(y)**2 / n``). RMSE, MAE, MAPE (a
    fraction, as scikit-learn's, not a percentage) and R2 = 1 - SSE/SST, where SST is the
    window's labels' sum of squared deviations (R2 is not reported while SST is 0).
classification
    the confusion counts per (label class, predicted class). Accuracy always. For a
    binary model, i.e. one whose classes are all within ``{"0", "1"}`` or within
    ``{"false", "true"}``, precision, recall and F1 are those of the positive class
    (``"1"``/``"true"``), as scikit-learn's default ``average="binary"``; for any other
    model they are macro averages over the union of label and predicted classes (the F1
    is the mean of per-class F1s). A ratio whose denominator is 0 counts as 0, as
    scikit-learn's ``zero_division`` default. When scores exist and the model is binary,
    the score is the positive-class probability: log-loss (probabilities clipped to
    ``[1e-15, 1 - 1e-15]``) from its running sum, and ROC AUC from the (score, label)
    pairs of the window, kept up to :data:`AUC_SAMPLE_CAP` per window (pairs beyond the
    cap are not kept, so past it the AUC is that of the window's first pairs), computed
    with the rank (Mann-Whitney U) formula on ``scipy.stats.rankdata``.

A class is ``prediction_class``/``value_class`` where present, else the number written
as extraction does (``"1"`` when integral, else ``repr``). The task is the model's
``task`` setting, else inferred from its first joined pairs: numeric prediction and
numeric label give regression, anything else classification. (A classifier that sends
integer classes needs ``task: classification`` in its model settings.)

The last ``ceil(label_ttl / window) + 1`` windows (at most :data:`MAX_WINDOWS`) of each
series stay open for late labels; ``tick`` expires the label store and drops windows
that ended before the TTL, except each series' latest. The ``ml.performance.<metric>``
gauges report the latest window holding at least one joined pair, so they neither
vanish nor reset while traffic pauses. ``ml.labels.joined`` is an observable counter of
the pairs joined per series, kept in the checkpoint, so it stays cumulative across
restarts. ``ml.performance.acceptance`` is 1 when the latest value of a metric given an
acceptance band in the model settings lies within it, else 0.

Every ``tick`` (and at shutdown) the windows that joined pairs since the previous one are
recorded in the store's window history (processor ``"performance"``) as ``{"n": pairs,
**metrics}``, replacing the window's earlier row, so a late label updates the history too;
a store that fails is logged and processing goes on.
"""

from __future__ import annotations

import logging
import math
import threading
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from scipy.stats import rankdata

from modeltel.semconv import (
    LABELS_JOINED_METRIC,
    MODEL_NAME,
    MODEL_VERSION,
    PERFORMANCE_METRIC_NAME,
    PERFORMANCE_METRIC_PREFIX,
    TASK_CLASSIFICATION,
    TASK_REGRESSION,
)
from modeltel_collector.batch import LabelBatch, PredictionBatch
from modeltel_collector.config import PerformanceProcessor as PerformanceConfig
from modeltel_collector.labelstore import JoinedPairs, LabelStore
from modeltel_collector.processors.base import ProcessorContext, ProcessorFactory

REGRESSION_METRICS = ("rmse", "mae", "mape", "r2")
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "log_loss", "roc_auc")
METRICS = REGRESSION_METRICS + CLASSIFICATION_METRICS

ACCEPTANCE_METRIC = f"{PERFORMANCE_METRIC_PREFIX}acceptance"
"""0/1 gauge: the latest value of a metric lies within its acceptance band."""
ACCEPTANCE_BOUND_METRICS = {"min": f"{ACCEPTANCE_METRIC}.min", "max": f"{ACCEPTANCE_METRIC}.max"}
"""Gauges of the configured bands' bounds (per model and metric), for dashboards to draw."""

MAX_WINDOWS = 2016
"""Windows kept open per (model, version) for late labels, whatever the TTL (a week of 5-minute windows)."""
AUC_SAMPLE_CAP = 100_000
"""(score, label) pairs kept per window for the ROC AUC (9 bytes each)."""
PROBABILITY_EPS = 1e-15
HISTORY_PROCESSOR = "performance"
"""The processor name of performance windows in the store's window history."""

_logger = logging.getLogger(__name__)

_BINARY_CLASS_SETS = ({"0", "1"}, {"false", "true"})
_POSITIVE = {"1", "true"}
_NEGATIVE = {"0", "false"}


def _class_name(value_class: Any, value: float) -> str | None:
    """The class of one row: its string form, else its number written as extraction writes it."""
    if value_class is not None:
        return str(value_class)
    if not math.isfinite(value):
        return None
    return str(int(value)) if value.is_integer() else repr(value)


def _positive_class(classes: Iterable[str]) -> str | None:
    """``"1"``/``"true"`` when the classes are within ``{"0", "1"}``/``{"false", "true"}``, else None."""
    present = set(classes)
    for binary in _BINARY_CLASS_SETS:
        if present <= binary:
            return next(iter(binary & _POSITIVE))
    return None


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall)


@dataclass
class WindowStats:
    """Sufficient statistics of the joined pairs of one window (by prediction time)."""

    start_unix_nano: int
    n: int = 0
    """Joined pairs in the window (whatever their usability)."""
    # Regression.
    reg_n: int = 0
    sum_error: float = 0.0
    sum_squared_error: float = 0.0
    sum_abs_error: float = 0.0
    sum_abs_percentage_error: float = 0.0
    ape_n: int = 0
    ape_skipped: int = 0
    """Rows left out of the MAPE because their label is 0."""
    label_mean: float = 0.0
    label_m2: float = 0.0
    # Classification.
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(label class, predicted class) -> count."""
    log_loss_sum: float = 0.0
    log_loss_n: int = 0
    auc_scores: array = field(default_factory=lambda: array("d"))
    auc_positive: array = field(default_factory=lambda: array("b"))
    auc_seen: int = 0
    """Scored binary pairs seen, kept or not (the first AUC_SAMPLE_CAP are kept)."""
    _metrics: dict[str, float] | None = field(default=None, repr=False, compare=False)

    def add_regression(self, prediction: np.ndarray, label: np.ndarray) -> None:
        usable = np.isfinite(prediction) & np.isfinite(label)
        y_hat, y = prediction[usable], label[usable]
        n = int(y.size)
        if n == 0:
            return
        error = y_hat - y
        abs_error = np.abs(error)
        self.sum_error += float(error.sum())
        self.sum_squared_error += float(np.square(error).sum())
        self.sum_abs_error += float(abs_error.sum())
        nonzero = y != 0
        self.sum_abs_percentage_error += float((abs_error[nonzero] / np.abs(y[nonzero])).sum())
        self.ape_n += int(nonzero.sum())
        self.ape_skipped += n - int(nonzero.sum())
        # Chan et al.'s merge of (count, mean, M2).
        batch_mean = float(y.mean())
        batch_m2 = float(np.square(y - batch_mean).sum())
        total = self.reg_n + n
        delta = batch_mean - self.label_mean
        self.label_mean += delta * n / total
        self.label_m2 += batch_m2 + delta * delta * self.reg_n * n / total
        self.reg_n = total
        self._metrics = None

    def add_classification(
        self, predicted: list[str | None], actual: list[str | None], score: np.ndarray
    ) -> None:
        self.confusion.update(
            (a, p) for a, p in zip(actual, predicted, strict=True) if a is not None and p is not None
        )
        binary_label = np.array([a in _POSITIVE or a in _NEGATIVE for a in actual], dtype=bool)
        scored = binary_label & np.isfinite(score)
        if scored.any():
            positive = np.array([a in _POSITIVE for a in actual], dtype=bool)[scored]
            probability = np.clip(score[scored], PROBABILITY_EPS, 1 - PROBABILITY_EPS)
            losses = -np.where(positive, np.log(probability), np.log1p(-probability))
            self.log_loss_sum += float(losses.sum())
            self.log_loss_n += int(losses.size)
            room = max(AUC_SAMPLE_CAP - len(self.auc_scores), 0)
            self.auc_scores.extend(score[scored][:room].tolist())
            self.auc_positive.extend(positive[:room].astype(np.int8).tolist())
            self.auc_seen += int(positive.size)
        self._metrics = None

    def metrics(self, task: str | None) -> dict[str, float]:
        """The metrics of this window for ``task`` (only those defined on its data)."""
        if self._metrics is None:
            if task == TASK_REGRESSION:
                self._metrics = self._regression_metrics()
            elif task == TASK_CLASSIFICATION:
                self._metrics = self._classification_metrics()
            else:
                self._metrics = {}
        return self._metrics

    def _regression_metrics(self) -> dict[str, float]:
        if self.reg_n == 0:
            return {}
        result = {
            "rmse": math.sqrt(self.sum_squared_error / self.reg_n),
            "mae": self.sum_abs_error / self.reg_n,
        }
        if self.ape_n:
            result["mape"] = self.sum_abs_percentage_error / self.ape_n
        if self.label_m2 > 0:
            result["r2"] = 1.0 - self.sum_squared_error / self.label_m2
        return result

    def _classification_metrics(self) -> dict[str, float]:
        total = sum(self.confusion.values())
        if total == 0:
            return {}
        classes = sorted({c for pair in self.confusion for c in pair})
        true_positive: Counter[str] = Counter()
        predicted: Counter[str] = Counter()
        actual: Counter[str] = Counter()
        for (label, prediction), count in self.confusion.items():
            predicted[prediction] += count
            actual[label] += count
            if label == prediction:
                true_positive[label] += count
        result = {"accuracy": sum(true_positive.values()) / total}
        positive = _positive_class(classes)
        if positive is not None:
            precision = _ratio(true_positive[positive], predicted[positive])
            recall = _ratio(true_positive[positive], actual[positive])
            result.update(precision=precision, recall=recall, f1=_f1(precision, recall))
            if self.log_loss_n:
                result["log_loss"] = self.log_loss_sum / self.log_loss_n
            auc = self._roc_auc()
            if auc is not None:
                result["roc_auc"] = auc
        else:
            precisions = [_ratio(true_positive[c], predicted[c]) for c in classes]
            recalls = [_ratio(true_positive[c], actual[c]) for c in classes]
            result.update(
                precision=float(np.mean(precisions)),
                recall=float(np.mean(recalls)),
                f1=float(np.mean([_f1(p, r) for p, r in zip(precisions, recalls, strict=True)])),
            )
        return result

    def _roc_auc(self) -> float | None:
        scores = np.frombuffer(self.auc_scores, dtype=np.float64)
        positive = np.frombuffer(self.auc_positive, dtype=np.int8).astype(bool)
        n_positive = int(positive.sum())
        n_negative = int(positive.size) - n_positive
        if n_positive == 0 or n_negative == 0:
            return None
        ranks = rankdata(scores)
        u = float(ranks[positive].sum()) - n_positive * (n_positive + 1) / 2
        return u / (n_positive * n_negative)

    def to_dict(self) -> dict[str, Any]:
        return {
            "start_unix_nano": self.start_unix_nano,
            "n": self.n,
            "reg_n": self.reg_n,
            "sum_error": self.sum_error,
            "sum_squared_error": self.sum_squared_error,
            "sum_abs_error": self.sum_abs_error,
            "sum_abs_percentage_error": self.sum_abs_percentage_error,
            "ape_n": self.ape_n,
            "ape_skipped": self.ape_skipped,
            "label_mean": self.label_mean,
            "label_m2": self.label_m2,
            "confusion": [
                [label, prediction, count] for (label, prediction), count in self.confusion.items()
            ],
            "log_loss_sum": self.log_loss_sum,
            "log_loss_n": self.log_loss_n,
            "auc_scores": self.auc_scores.tolist(),
            "auc_positive": self.auc_positive.tolist(),
            "auc_seen": self.auc_seen,
        }

    @staticmethod
    def from_dict(state: dict[str, Any]) -> WindowStats:
        state = dict(state)
        confusion = Counter(
            {(label, prediction): count for label, prediction, count in state.pop("confusion")}
        )
        scores = array("d", state.pop("auc_scores"))
        positive = array("b", state.pop("auc_positive"))
        return WindowStats(**state, confusion=confusion, auc_scores=scores, auc_positive=positive)


@dataclass
class _Series:
    """The open windows of one (model, version)."""

    windows: dict[int, WindowStats] = field(default_factory=dict)
    joined: int = 0

    def latest(self) -> WindowStats | None:
        return self.windows[max(self.windows)] if self.windows else None


class PerformanceProcessor:
    """Label join and windowed model-quality metrics (see the module docstring)."""

    def __init__(self, config: PerformanceConfig, context: ProcessorContext) -> None:
        self.config = config
        self.context = context
        self.store = LabelStore(context.state_connection("performance"), config.label_ttl)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], _Series] = {}
        self._tasks: dict[str, str] = {}
        self._changed: set[tuple[str, str, int]] = set()
        """Windows ``(model, version, start)`` that joined pairs since they were last recorded."""
        meter = context.meter
        for metric in METRICS:
            meter.create_observable_gauge(
                f"{PERFORMANCE_METRIC_PREFIX}{metric}",
                callbacks=[partial(self._observe_metric, metric)],
                description=f"{metric} of the latest window with joined labels, by prediction time",
            )
        meter.create_observable_gauge(
            ACCEPTANCE_METRIC,
            callbacks=[self._observe_acceptance],
            description="1 when the latest value of the metric is within its acceptance band, else 0",
        )
        for bound, name in ACCEPTANCE_BOUND_METRICS.items():
            meter.create_observable_gauge(
                name,
                callbacks=[partial(self._observe_bound, bound)],
                description=f"The {bound} of the metric's acceptance band, from the configuration",
            )
        meter.create_observable_counter(
            LABELS_JOINED_METRIC,
            callbacks=[self._observe_joined],
            description="Predictions joined with their label (each prediction id once)",
        )

    # Settings.

    def window_nanos(self, model: str) -> int:
        settings = self.context.models.get(model)
        seconds = (
            settings.window if settings is not None and settings.window is not None else self.config.window
        )
        return max(int(seconds * 1e9), 1)

    def max_windows(self, model: str) -> int:
        return min(MAX_WINDOWS, math.ceil(self.config.label_ttl * 1e9 / self.window_nanos(model)) + 1)

    def task(self, model: str) -> str | None:
        settings = self.context.models.get(model)
        if settings is not None and settings.task is not None:
            return settings.task
        return self._tasks.get(model)

    def _infer_task(self, pairs: JoinedPairs) -> str | None:
        task = self.task(pairs.model)
        if task is not None:
            return task
        has_class = any(c is not None for c in pairs.prediction_class) or any(
            c is not None for c in pairs.label_class
        )
        if has_class:
            task = TASK_CLASSIFICATION
        elif (np.isfinite(pairs.prediction) & np.isfinite(pairs.label)).any():
            task = TASK_REGRESSION
        else:
            return None
        self._tasks[pairs.model] = task
        return task

    # Pipeline.

    def process_predictions(self, batch: PredictionBatch) -> None:
        """Hand predictions to the label store (which buffers them), joining pending labels."""
        self._add(self.store.add_predictions(batch))

    def process_labels(self, batch: LabelBatch) -> None:
        self._add(self.store.add_labels(batch))

    def process_spans(self, request: ExportTraceServiceRequest) -> None:
        """Spans carry no labels."""

    def _add(self, pairs: JoinedPairs) -> None:
        if not len(pairs):
            return
        model = pairs.model
        width = self.window_nanos(model)
        limit = self.max_windows(model)
        starts = pairs.prediction_time_unix_nano // width * width
        with self._lock:
            task = self._infer_task(pairs)
            for version in np.unique(pairs.version.astype(str)):
                in_version = pairs.version == version
                series = self._series.setdefault((model, str(version)), _Series())
                series.joined += int(in_version.sum())
                for start in np.unique(starts[in_version]):
                    rows = in_version & (starts == start)
                    window = self._window(series, int(start), limit)
                    if window is not None:
                        self._update(window, task, pairs, rows)
                        self._changed.add((model, str(version), int(start)))

    @staticmethod
    def _window(series: _Series, start: int, limit: int) -> WindowStats | None:
        """The window starting at ``start``, created if needed; None if it is older than all kept ones."""
        window = series.windows.get(start)
        if window is not None:
            return window
        if len(series.windows) >= limit and start < min(series.windows):
            return None
        window = series.windows[start] = WindowStats(start)
        while len(series.windows) > limit:
            del series.windows[min(series.windows)]
        return window

    @staticmethod
    def _update(window: WindowStats, task: str | None, pairs: JoinedPairs, rows: np.ndarray) -> None:
        window.n += int(rows.sum())
        if task == TASK_REGRESSION:
            window.add_regression(pairs.prediction[rows], pairs.label[rows])
        elif task == TASK_CLASSIFICATION:
            predicted = [
                _class_name(c, v)
                for c, v in zip(
                    pairs.prediction_class[rows].tolist(), pairs.prediction[rows].tolist(), strict=True
                )
            ]
            actual = [
                _class_name(c, v)
                for c, v in zip(pairs.label_class[rows].tolist(), pairs.label[rows].tolist(), strict=True)
            ]
            window.add_classification(predicted, actual, pairs.score[rows])

    def tick(self, now_unix_nano: int) -> None:
        """Record changed windows; expire the label store; drop windows ended before the TTL
        (each series keeps its latest)."""
        self.store.flush()
        self._record_changed()
        self.store.expire(now_unix_nano)
        cutoff = now_unix_nano - int(self.config.label_ttl * 1e9)
        with self._lock:
            for (model, _), series in self._series.items():
                width = self.window_nanos(model)
                latest = max(series.windows, default=None)
                for start in [s for s in series.windows if s + width < cutoff and s != latest]:
                    del series.windows[start]

    def _record_changed(self) -> None:
        """Write the windows changed since the last call to the store's window history."""
        with self._lock:
            changed, self._changed = self._changed, set()
            records = []
            for model, version, start in sorted(changed):
                series = self._series.get((model, version))
                window = series.windows.get(start) if series is not None else None
                if window is not None:
                    metrics = {"n": window.n, **window.metrics(self.task(model))}
                    records.append((model, version, start, start + self.window_nanos(model), metrics))
        history = self.context.store
        if history is None:
            return
        for model, version, start, end, metrics in records:
            try:
                history.record_window(model, version, HISTORY_PROCESSOR, start, end, metrics)
            except Exception:
                _logger.exception("modeltel: cannot record a performance window of %s %s", model, version)

    # Reading.

    def latest(self, model: str, version: str) -> dict[str, float]:
        """The metrics of the latest window of (model, version) holding joined pairs; {} if none."""
        with self._lock:
            return dict(self._latest_metrics(model, version))

    def _latest_metrics(self, model: str, version: str) -> dict[str, float]:
        series = self._series.get((model, version))
        window = series.latest() if series is not None else None
        return window.metrics(self.task(model)) if window is not None else {}

    def _observe_metric(self, metric: str, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            observations = []
            for model, version in self._series:
                value = self._latest_metrics(model, version).get(metric)
                if value is not None:
                    observations.append(Observation(value, {MODEL_NAME: model, MODEL_VERSION: version}))
            return observations

    def _observe_acceptance(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            observations = []
            for model, version in self._series:
                settings = self.context.models.get(model)
                if settings is None or not settings.acceptance:
                    continue
                metrics = self._latest_metrics(model, version)
                for metric, band in settings.acceptance.items():
                    value = metrics.get(metric)
                    if value is None:
                        continue
                    inside = (band.min is None or value >= band.min) and (
                        band.max is None or value <= band.max
                    )
                    attributes = {
                        MODEL_NAME: model,
                        MODEL_VERSION: version,
                        PERFORMANCE_METRIC_NAME: metric,
                    }
                    observations.append(Observation(int(inside), attributes))
            return observations

    def _observe_bound(self, bound: str, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(value, {MODEL_NAME: model, PERFORMANCE_METRIC_NAME: metric})
            for model, settings in self.context.models.items()
            for metric, band in (settings.acceptance or {}).items()
            if (value := getattr(band, bound)) is not None
        ]

    def _observe_joined(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            return [
                Observation(series.joined, {MODEL_NAME: model, MODEL_VERSION: version})
                for (model, version), series in self._series.items()
            ]

    # State.

    def checkpoint(self) -> dict[str, Any]:
        self.store.flush()
        with self._lock:
            return {
                "tasks": dict(self._tasks),
                "series": [
                    {
                        "model": model,
                        "version": version,
                        "joined": series.joined,
                        "windows": [series.windows[s].to_dict() for s in sorted(series.windows)],
                    }
                    for (model, version), series in self._series.items()
                ],
            }

    def restore(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._tasks = dict(state.get("tasks", {}))
            self._series = {}
            for entry in state.get("series", []):
                windows = [WindowStats.from_dict(w) for w in entry["windows"]]
                self._series[(entry["model"], entry["version"])] = _Series(
                    windows={w.start_unix_nano: w for w in windows}, joined=int(entry["joined"])
                )

    def shutdown(self) -> None:
        self.store.flush()
        self._record_changed()


def _create(config: PerformanceConfig, context: ProcessorContext) -> PerformanceProcessor:
    return PerformanceProcessor(config, context)


factory = ProcessorFactory(type="performance", config_type=PerformanceConfig, create=_create)
