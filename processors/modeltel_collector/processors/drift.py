"""The drift processor: per model version and feature, tumbling windows against a reference.

The reference of a version is the profile stored for it in the collector's store (built
from a training sample with ``modeltel reference build``), looked up when the version is
first seen; without one, it is the version's first ``warmup`` predictions, and that
profile is saved to the store in turn (versioned by content hash, kept across restarts).
Windows are tumbling in event time (``window`` seconds, per model overridable); when a
window closes with at least ``min_samples`` events, every feature is compared with its
reference (:func:`modeltel_collector.drift.detector.compare`) and the results become the
``ml.drift.*`` gauges, which keep reporting that window until the next one closes: a
pause in traffic neither removes nor resets them. Events older than the current window
count in the current window. Every reported window is also recorded in the store's
window history (processor ``"drift"``) as ``{"n": events, "features": {feature:
FeatureDrift.gauges()}, "means": {feature: mean}}``; a store that fails is logged and
processing goes on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from opentelemetry.metrics import CallbackOptions, Observation

from modeltel import semconv
from modeltel_collector.batch import PredictionBatch
from modeltel_collector.config import DriftProcessor as DriftConfig
from modeltel_collector.config import FeatureDrift as FeatureDriftConfig
from modeltel_collector.drift.detector import FeatureDrift, compare
from modeltel_collector.drift.profile import ModelProfile, ModelProfileBuilder
from modeltel_collector.drift.window import FeatureWindow
from modeltel_collector.processors.base import ProcessorContext, ProcessorFactory

_logger = logging.getLogger(__name__)
_NS = 1_000_000_000
GAUGES = (
    "psi", "kl", "js", "hellinger", "ks.statistic", "ks.pvalue", "wasserstein",
    "chi2.statistic", "chi2.pvalue", "tv", "missing_share",
)  # fmt: skip
"""``ml.drift.<name>`` gauges, besides ``ml.drift.detected``."""
HISTORY_PROCESSOR = "drift"
"""The processor name of drift windows in the store's window history."""


def _columns(batch: PredictionBatch) -> dict[str, np.ndarray]:
    """One column per feature: numeric where the feature arrived as numbers."""
    return {**batch.categorical, **batch.numeric}


@dataclass
class _Report:
    """The latest window reported for a version: drift per feature and numeric means."""

    window_end: int
    drift: dict[str, FeatureDrift]
    means: dict[str, float]


@dataclass
class _VersionState:
    model: str
    version: str
    window_ns: int
    reference: ModelProfile | None = None
    warmup: list[dict[str, np.ndarray]] = field(default_factory=list)
    warmup_rows: int = 0
    window_index: int | None = None
    rows: int = 0
    windows: dict[str, FeatureWindow] = field(default_factory=dict)
    report: _Report | None = None


class DriftProcessor:
    """Data drift per (model, version, feature); see the module docstring."""

    def __init__(self, config: DriftConfig, context: ProcessorContext) -> None:
        self._config = config
        self._context = context
        self._versions: dict[tuple[str, str], _VersionState] = {}
        meter = context.meter
        for name in GAUGES:
            meter.create_observable_gauge(
                semconv.DRIFT_METRIC_PREFIX + name, callbacks=[self._observer(name)]
            )
        meter.create_observable_gauge(
            semconv.DRIFT_DETECTED_METRIC,
            callbacks=[self._observer("detected")],
            description="1 when the feature drifted in the latest reported window.",
        )
        meter.create_observable_gauge(
            semconv.FEATURE_MEAN_METRIC,
            callbacks=[self._observe_means],
            description="Mean of each numeric feature in the latest reported window.",
        )

    # Configuration --------------------------------------------------------------------

    def _window_ns(self, model: str) -> int:
        settings = self._context.models.get(model)
        seconds = settings.window if settings is not None and settings.window else self._config.window
        return max(1, int(seconds * _NS))

    def _feature_rule(self, model: str, feature: str) -> FeatureDriftConfig | None:
        settings = self._context.models.get(model)
        if settings is not None and feature in settings.features:
            return settings.features[feature]
        return self._config.features.get(feature)

    # Processing ------------------------------------------------------------------------

    def _state(self, model: str, version: str) -> _VersionState:
        state = self._versions.get((model, version))
        if state is None:
            state = _VersionState(
                model, version, self._window_ns(model), self._stored_reference(model, version)
            )
            self._versions[(model, version)] = state
        return state

    def _stored_reference(self, model: str, version: str) -> ModelProfile | None:
        """The profile stored for the version, if any (a store that fails means warmup)."""
        store = self._context.store
        if store is None:
            return None
        try:
            return store.load_profile(model, version)
        except Exception:
            _logger.exception("modeltel: cannot load the reference of %s %s; warming up", model, version)
            return None

    def _save_reference(self, profile: ModelProfile) -> None:
        store = self._context.store
        if store is None:
            return
        try:
            store.save_profile(profile)
        except Exception:
            _logger.exception("modeltel: cannot save the reference of %s %s", profile.model, profile.version)

    def process_predictions(self, batch: PredictionBatch) -> None:
        state = self._state(batch.model, batch.version)
        columns, times = _columns(batch), batch.time_unix_nano
        if state.reference is None:
            used = self._take_warmup(state, columns, len(batch))
            columns = {name: values[used:] for name, values in columns.items()}
            times = times[used:]
            if not times.size:
                return
        indexes = times // state.window_ns
        if state.window_index is not None:
            indexes = np.maximum(indexes, state.window_index)  # late rows count in the current window
        for index in np.unique(indexes):
            if state.window_index is None:
                state.window_index = int(index)
            elif index > state.window_index:  # a later window: close the current one first
                self._close(state)
                state.window_index = int(index)
            rows = indexes == index
            self._update(state, {name: values[rows] for name, values in columns.items()}, int(rows.sum()))

    def _take_warmup(self, state: _VersionState, columns: dict[str, np.ndarray], size: int) -> int:
        """Keep rows until ``warmup`` of them form the reference; return how many were taken."""
        used = min(self._config.warmup - state.warmup_rows, size)
        state.warmup.append({name: values[:used] for name, values in columns.items()})
        state.warmup_rows += used
        if state.warmup_rows >= self._config.warmup:
            builder = ModelProfileBuilder(
                state.model, state.version, max_categories=self._config.max_categories
            )
            for chunk in state.warmup:
                builder.update(chunk)
            state.reference = builder.build()
            state.warmup = []
            self._save_reference(state.reference)
        return used

    def _update(self, state: _VersionState, columns: Mapping[str, np.ndarray], rows: int) -> None:
        assert state.reference is not None
        state.rows += rows
        for name, profile in state.reference.features.items():
            window = state.windows.get(name)
            if window is None:
                window = state.windows[name] = FeatureWindow(profile, max_unseen=self._config.max_categories)
            values = columns.get(name)
            if values is None:  # absent from every row: all missing
                values = np.full(rows, np.nan) if profile.kind == "numeric" else np.full(rows, None)
            window.update(values)

    def _close(self, state: _VersionState) -> None:
        """Evaluate the current window if it is big enough, then start an empty one."""
        if state.reference is not None and state.rows >= self._config.min_samples:
            n_features = len(state.reference.features)
            drift, means = {}, {}
            for name, window in state.windows.items():
                rule = self._feature_rule(state.model, name)
                method = rule.method if rule is not None else "default"
                drift[name] = compare(
                    state.reference.features[name],
                    window,
                    n_features=n_features,
                    alpha=self._config.alpha,
                    min_samples=self._config.min_samples,
                    method=method,  # type: ignore[arg-type]
                    threshold=rule.threshold if rule is not None else None,
                )
                if window.profile.kind == "numeric" and window.moments.count:
                    means[name] = float(window.moments.mean)
            assert state.window_index is not None
            state.report = _Report((state.window_index + 1) * state.window_ns, drift, means)
            self._record_window(state, state.rows)
        state.rows = 0
        state.windows = {}

    def _record_window(self, state: _VersionState, rows: int) -> None:
        """Add the version's just-reported window to the store's window history."""
        store, report = self._context.store, state.report
        if store is None or report is None:
            return
        metrics = {
            "n": rows,
            "features": {name: drift.gauges() for name, drift in report.drift.items()},
            "means": report.means,
        }
        try:
            store.record_window(
                state.model,
                state.version,
                HISTORY_PROCESSOR,
                report.window_end - state.window_ns,
                report.window_end,
                metrics,
            )
        except Exception:
            _logger.exception("modeltel: cannot record a drift window of %s %s", state.model, state.version)

    def tick(self, now_unix_nano: int) -> None:
        for state in self._versions.values():
            if state.window_index is not None and now_unix_nano // state.window_ns > state.window_index:
                self._close(state)
                state.window_index = now_unix_nano // state.window_ns

    def process_labels(self, batch: Any) -> None:
        """Labels do not change data drift."""

    def process_spans(self, request: Any) -> None:
        """Spans do not change data drift."""

    def shutdown(self) -> None:
        """Nothing to release."""

    # Metrics -----------------------------------------------------------------------------

    def _observer(self, gauge: str) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            for (model, version), state in list(self._versions.items()):
                if state.report is None:
                    continue
                for feature, drift in state.report.drift.items():
                    value = drift.gauges().get(gauge)
                    if value is not None and math.isfinite(value):
                        yield Observation(value, _attributes(model, version, feature))

        return observe

    def _observe_means(self, options: CallbackOptions) -> Iterable[Observation]:
        for (model, version), state in list(self._versions.items()):
            if state.report is not None:
                for feature, mean in state.report.means.items():
                    yield Observation(mean, _attributes(model, version, feature))

    def versions(self) -> list[tuple[str, str]]:
        """The (model, version) pairs seen, in the order they first arrived."""
        return list(self._versions)

    def latest(self, model: str, version: str) -> dict[str, FeatureDrift]:
        """Drift per feature in the latest reported window of a version (empty before one)."""
        state = self._versions.get((model, version))
        return dict(state.report.drift) if state is not None and state.report is not None else {}

    # Checkpoint ----------------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        return {
            "versions": [
                {
                    "model": s.model,
                    "version": s.version,
                    "window_ns": s.window_ns,
                    "reference": s.reference.to_dict() if s.reference is not None else None,
                    "warmup": [{k: v.tolist() for k, v in chunk.items()} for chunk in s.warmup],
                    "warmup_rows": s.warmup_rows,
                    "window_index": s.window_index,
                    "rows": s.rows,
                    "windows": {name: window.to_dict() for name, window in s.windows.items()},
                    "report": _report_to_dict(s.report),
                }
                for s in self._versions.values()
            ]
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._versions = {}
        for item in state.get("versions", []):
            reference = ModelProfile.from_dict(item["reference"]) if item["reference"] else None
            restored = _VersionState(
                item["model"],
                item["version"],
                int(item["window_ns"]),
                reference,
                [{k: np.asarray(v) for k, v in chunk.items()} for chunk in item["warmup"]],
                int(item["warmup_rows"]),
                item["window_index"],
                int(item["rows"]),
                {
                    name: FeatureWindow.from_dict(data, reference.features[name])
                    for name, data in item["windows"].items()
                }
                if reference is not None
                else {},
                _report_from_dict(item["report"]),
            )
            self._versions[(restored.model, restored.version)] = restored


def _attributes(model: str, version: str, feature: str) -> dict[str, str]:
    return {semconv.MODEL_NAME: model, semconv.MODEL_VERSION: version, semconv.FEATURE_NAME: feature}


def _report_to_dict(report: _Report | None) -> dict[str, Any] | None:
    if report is None:
        return None
    return {
        "window_end": report.window_end,
        "drift": {name: _drift_to_dict(drift) for name, drift in report.drift.items()},
        "means": report.means,
    }


def _drift_to_dict(drift: FeatureDrift) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(drift).items()}


def _report_from_dict(data: dict[str, Any] | None) -> _Report | None:
    if data is None:
        return None
    drift = {}
    for name, values in data["drift"].items():
        fields: dict[str, Any] = {k: (math.nan if v is None else v) for k, v in values.items()}
        drift[name] = FeatureDrift(**fields)
    return _Report(int(data["window_end"]), drift, dict(data["means"]))


factory = ProcessorFactory(type="drift", config_type=DriftConfig, create=DriftProcessor)
