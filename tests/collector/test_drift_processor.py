"""The drift processor: warmup reference, tumbling windows, gauges that persist, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from modeltel import semconv
from modeltel_collector.batch import PredictionBatch
from modeltel_collector.config import DriftProcessor as DriftConfig
from modeltel_collector.config import FeatureDrift, ModelSettings
from modeltel_collector.processors.base import ProcessorContext
from modeltel_collector.processors.drift import DriftProcessor

S = 1_000_000_000
WINDOW = 60  # seconds


def batch(rng, n, start_s, *, shift=0.0, version="v1", children_shift=0.0):
    times = (start_s * S + np.linspace(0, (WINDOW - 1) * S, n)).astype(np.int64)
    return PredictionBatch(
        model="salary",
        version=version,
        time_unix_nano=times,
        prediction_ids=np.array([f"id-{start_s}-{i}" for i in range(n)], dtype=object),
        numeric={
            "years": rng.normal(10 + shift * 5, 5, n),
            "children": np.clip(rng.poisson(1.5, n) + children_shift, 0, 6).astype(float),
        },
        categorical={"city": rng.choice(np.array(["berlin", "paris", "rome"], dtype=object), n)},
        prediction=rng.normal(60_000, 5_000, n),
        score=np.full(n, np.nan),
    )


@pytest.fixture
def processor_and_reader(tmp_path: Path):
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    config = DriftConfig(window=WINDOW, warmup=2000, min_samples=100)
    context = ProcessorContext(meter=provider.get_meter("test"), data_dir=tmp_path)
    return DriftProcessor(config, context), reader, context


def gauges(reader, name):
    data = reader.get_metrics_data()
    found = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        found[point.attributes[semconv.FEATURE_NAME]] = point.value
    return found


def test_shifted_feature_drifts_others_do_not_and_gauges_persist(processor_and_reader):
    processor, reader, _ = processor_and_reader
    rng = np.random.default_rng(0)
    processor.process_predictions(batch(rng, 2000, 0))  # the warmup: becomes the reference
    assert gauges(reader, semconv.DRIFT_DETECTED_METRIC) == {}

    processor.process_predictions(batch(rng, 1000, 60))  # a stable window
    processor.process_predictions(batch(rng, 1000, 120, shift=1.0))  # closes it; years shifted 1 sd
    stable = processor.latest("salary", "v1")
    assert not any(d.drifted for d in stable.values())
    assert set(stable) == {"years", "children", "city"}

    processor.tick(180 * S)  # the shifted window closes with no newer traffic
    detected = gauges(reader, semconv.DRIFT_DETECTED_METRIC)
    assert detected == {"years": 1.0, "children": 0.0, "city": 0.0}
    assert gauges(reader, semconv.DRIFT_METRIC_PREFIX + "psi")["years"] > 0.2
    assert set(gauges(reader, semconv.DRIFT_METRIC_PREFIX + "ks.pvalue")) == {"years", "children"}
    assert set(gauges(reader, semconv.DRIFT_METRIC_PREFIX + "chi2.pvalue")) == {"city"}
    means = gauges(reader, semconv.FEATURE_MEAN_METRIC)
    assert means["years"] == pytest.approx(15, abs=0.5)

    processor.tick(3600 * S)  # an hour of silence: gauges keep the last reported window
    assert gauges(reader, semconv.DRIFT_DETECTED_METRIC) == detected


def test_small_windows_are_not_reported(processor_and_reader):
    processor, _, _ = processor_and_reader
    rng = np.random.default_rng(1)
    processor.process_predictions(batch(rng, 2000, 0))
    processor.process_predictions(batch(rng, 50, 60, shift=3.0))
    processor.tick(120 * S)
    assert processor.latest("salary", "v1") == {}


def test_versions_have_their_own_reference(processor_and_reader):
    processor, _, _ = processor_and_reader
    rng = np.random.default_rng(2)
    processor.process_predictions(batch(rng, 2000, 0, version="v1"))
    processor.process_predictions(batch(rng, 2000, 0, version="v2", shift=2.0))  # v2's own reference
    processor.process_predictions(batch(rng, 500, 60, version="v2", shift=2.0))
    processor.tick(120 * S)
    assert not processor.latest("salary", "v2")["years"].drifted


def test_per_feature_method_override(tmp_path):
    reader = InMemoryMetricReader()
    context = ProcessorContext(
        meter=MeterProvider(metric_readers=[reader]).get_meter("t"),
        data_dir=tmp_path,
        models={"salary": ModelSettings(features={"years": FeatureDrift(method="psi", threshold=10.0)})},
    )
    processor = DriftProcessor(DriftConfig(window=WINDOW, warmup=2000, min_samples=100), context)
    rng = np.random.default_rng(3)
    processor.process_predictions(batch(rng, 2000, 0))
    processor.process_predictions(batch(rng, 1000, 60, shift=1.0))
    processor.tick(120 * S)
    assert not processor.latest("salary", "v1")["years"].drifted  # PSI > 10 never happens


def test_checkpoint_restore_continues_the_open_window(processor_and_reader, tmp_path):
    processor, _, context = processor_and_reader
    rng = np.random.default_rng(4)
    processor.process_predictions(batch(rng, 1500, 0))  # mid-warmup
    state = json.loads(json.dumps(processor.checkpoint()))  # checkpoints are JSON
    restored = DriftProcessor(DriftConfig(window=WINDOW, warmup=2000, min_samples=100), context)
    restored.restore(state)
    for p in (processor, restored):
        p.process_predictions(batch(np.random.default_rng(5), 500, 0))  # completes the warmup
        p.process_predictions(batch(np.random.default_rng(6), 600, 60, shift=1.0))
    mid = json.loads(json.dumps(processor.checkpoint()))
    again = DriftProcessor(DriftConfig(window=WINDOW, warmup=2000, min_samples=100), context)
    again.restore(mid)
    for p in (processor, restored, again):
        p.tick(120 * S)
    results = [p.latest("salary", "v1")["years"] for p in (processor, restored, again)]
    assert results[0] == results[1] == results[2]
    assert results[0].drifted


def test_categories_beyond_max_categories_are_pooled(tmp_path):
    """One client sending ever new categories cannot grow the reference or a window."""
    config = DriftConfig(window=WINDOW, warmup=200, min_samples=10, max_categories=3)
    processor = DriftProcessor(
        config, ProcessorContext(meter=MeterProvider().get_meter("t"), data_dir=tmp_path)
    )
    rng = np.random.default_rng(8)
    for start, prefix in ((0, "reference"), (60, "window")):
        data = batch(rng, 500, start)
        cities = np.array([f"{prefix}-{i}" for i in range(500)], dtype=object)
        processor.process_predictions(PredictionBatch(**{**data.__dict__, "categorical": {"city": cities}}))
    state = processor.checkpoint()

    def counters(node):
        if isinstance(node, dict):
            if "max_categories" in node:  # a window's counter of categories unseen in the reference
                yield node
            if "categories" in node:  # the warm-up reference's profile
                yield {"max_categories": 3, "counts": node["categories"]}
            for value in node.values():
                yield from counters(value)
        elif isinstance(node, list):
            for value in node:
                yield from counters(value)

    found = list(counters(state))
    assert found and all(c["max_categories"] == 3 and len(c["counts"]) <= 3 for c in found), found
