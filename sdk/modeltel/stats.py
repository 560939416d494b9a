"""Aggregate statistics of every prediction, recorded as OpenTelemetry metrics.

Events may be sampled; these never are, so means and distributions of features and
predictions stay exact whatever ``sample_rate`` is. Numeric values go to histograms,
categorical ones to counters keyed by value, with a cap on distinct values per feature
so a free-text field cannot explode metric cardinality.

OpenTelemetry histograms take non-negative values only, so a negative value is
recorded as its magnitude on a series with ``ml.value.sign="negative"``: count, sum
and quantiles of the whole distribution follow from the two series exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from opentelemetry import metrics

from modeltel import semconv

OTHER_CATEGORY = "__other__"


class FeatureStatistics:
    """Records features and predictions into four instruments, one pass per prediction."""

    def __init__(self, meter_provider: metrics.MeterProvider, max_categories: int = 50) -> None:
        meter = meter_provider.get_meter(semconv.SCOPE_NAME)
        self._values = meter.create_histogram(
            semconv.FEATURE_VALUE_METRIC, description="Distribution of each numeric input feature."
        )
        self._categories = meter.create_counter(
            semconv.FEATURE_CATEGORY_METRIC,
            unit="{prediction}",
            description="Occurrences of each value of each categorical input feature.",
        )
        self._outputs = meter.create_histogram(
            semconv.PREDICTION_OUTPUT_METRIC, description="Distribution of numeric predictions."
        )
        self._classes = meter.create_counter(
            semconv.PREDICTION_CLASS_METRIC,
            unit="{prediction}",
            description="Occurrences of each predicted class.",
        )
        self._max_categories = max_categories
        self._attributes: dict[tuple[str, str, str, bool], dict[str, str]] = {}
        self._category_attributes: dict[tuple[str, str, str], dict[str, dict[str, str]]] = {}

    def _base(self, model: str, version: str, feature: str, negative: bool = False) -> dict[str, str]:
        key = (model, version, feature, negative)
        attributes = self._attributes.get(key)
        if attributes is None:
            attributes = {semconv.MODEL_NAME: model, semconv.MODEL_VERSION: version}
            if feature:
                attributes[semconv.FEATURE_NAME] = feature
            if negative:
                attributes[semconv.VALUE_SIGN] = "negative"
            self._attributes[key] = attributes
        return attributes

    def _category(self, model: str, version: str, feature: str, value: str) -> dict[str, str]:
        by_value = self._category_attributes.setdefault((model, version, feature), {})
        attributes = by_value.get(value)
        if attributes is None:
            if len(by_value) >= self._max_categories:
                value = OTHER_CATEGORY
                attributes = by_value.get(value)
            if attributes is None:
                attributes = {
                    **self._base(model, version, feature),
                    semconv.FEATURE_CATEGORY: value,
                }
                by_value[value] = attributes
        return attributes

    def record(self, model: str, version: str, features: Mapping[str, Any], prediction: Any) -> None:
        """Record one prediction's features (already flattened and privacy-filtered)."""
        for name, value in features.items():
            kind = type(value)
            if (kind is float or kind is int) and math.isfinite(value):
                if value >= 0:
                    self._values.record(value, self._base(model, version, name))
                else:
                    self._values.record(-value, self._base(model, version, name, negative=True))
            else:
                self._categories.add(1, self._category(model, version, name, str(value)))
        kind = type(prediction)
        if (kind is float or kind is int) and math.isfinite(prediction):
            if prediction >= 0:
                self._outputs.record(prediction, self._base(model, version, ""))
            else:
                self._outputs.record(-prediction, self._base(model, version, "", negative=True))
        elif prediction is not None:
            self._classes.add(1, self._category(model, version, "", str(prediction)))
