"""Feature statistics: the exponential histograms equal the OTel SDK's own aggregation."""

from __future__ import annotations

import numpy as np
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View

from modeltel import semconv
from modeltel.stats import FOLD_AT, ExponentialHistogramState, FeatureStatistics


def _sdk_histogram(values: np.ndarray):
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader],
        views=[View(instrument_name="h", aggregation=ExponentialBucketHistogramAggregation())],
    )
    histogram = provider.get_meter("test").create_histogram("h")
    for value in values:
        histogram.record(float(value))
    [point] = reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
    return point


@pytest.mark.parametrize(
    "values",
    [
        np.array([1.0, 2.0, 4.0, 8.0]),
        np.random.default_rng(1).lognormal(10, 1, 2_000),
        np.random.default_rng(2).uniform(0, 40, 2_000).round(1),  # zeros and exact repeats
        np.array([1e-300, 1e300, 3.0]),
        np.array([0.0, 0.0]),
    ],
)
def test_buckets_equal_the_sdk_aggregation(values):
    state = ExponentialHistogramState()
    for batch in np.array_split(values, 3):  # folding in several batches changes nothing
        state.add(batch)
    expected = _sdk_histogram(values)

    assert state.count == expected.count
    assert state.zero_count == expected.zero_count
    assert state.sum == pytest.approx(expected.sum)
    assert (state.min, state.max) == (expected.min, expected.max)
    if values.any():  # with no positive value the scale means nothing
        assert state.scale == expected.scale
    ours = dict(enumerate(state.counts.tolist(), start=state.offset))
    theirs = dict(enumerate(expected.positive.bucket_counts, start=expected.positive.offset))
    assert {k: v for k, v in ours.items() if v} == {k: v for k, v in theirs.items() if v}


def test_collect_reports_histograms_counters_and_the_other_category():
    statistics = FeatureStatistics()
    for i in range(FOLD_AT + 10):  # past the fold threshold: folded early, nothing lost
        statistics.record("m", "1", {"x": float(i % 7) - 3, "city": f"c{i % 4}"}, 2.0, max_categories=3)
    metrics = {metric.name: metric for metric in statistics.collect()}

    n = FOLD_AT + 10
    points = {
        tuple(sorted(p.attributes.items())): p for p in metrics[semconv.FEATURE_VALUE_METRIC].data.data_points
    }
    positive = points[(("ml.feature.name", "x"), ("ml.model.name", "m"), ("ml.model.version", "1"))]
    negative = next(p for p in points.values() if p.attributes.get(semconv.VALUE_SIGN) == "negative")
    expected = [float(i % 7) - 3 for i in range(n)]
    assert positive.count + negative.count == n
    assert positive.sum - negative.sum == pytest.approx(sum(expected))
    categories = {
        p.attributes[semconv.FEATURE_CATEGORY]: p.value
        for p in metrics[semconv.FEATURE_CATEGORY_METRIC].data.data_points
    }
    assert categories == {
        "c0": len(range(0, n, 4)),
        "c1": len(range(1, n, 4)),
        "c2": len(range(2, n, 4)),
        "__other__": len(range(3, n, 4)),
    }
    [output] = metrics[semconv.PREDICTION_OUTPUT_METRIC].data.data_points
    assert (output.count, output.sum) == (n, 2.0 * n)
    assert semconv.PREDICTION_CLASS_METRIC not in metrics
