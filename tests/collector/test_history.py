"""Window history in the store: drift and performance windows recorded, updated, and kept."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.sdk.metrics import MeterProvider

from modeltel_collector.config import DriftProcessor as DriftConfig
from modeltel_collector.config import PerformanceProcessor as PerformanceConfig
from modeltel_collector.processors.base import ProcessorContext
from modeltel_collector.processors.drift import DriftProcessor
from modeltel_collector.processors.performance import PerformanceProcessor
from modeltel_collector.state import StateDb
from modeltel_collector.store import Store
from tests.collector.test_drift_processor import WINDOW, S, batch
from tests.collector.test_performance import T0, labels, predictions


def _context(tmp_path: Path, store: Store | None) -> ProcessorContext:
    meter = MeterProvider().get_meter("test")
    return ProcessorContext(meter=meter, data_dir=tmp_path, store=store, state=StateDb(tmp_path))


def test_store_records_upserts_filters_and_keeps_windows(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.record_window("m", "v1", "drift", 0, 10, {"n": 5, "x": math.nan})
        store.record_window("m", "v1", "performance", 0, 10, {"n": 1, "rmse": 2.0})
        store.record_window("m", "v2", "drift", 10, 20, {"n": 7})
        store.record_window("m", "v1", "performance", 0, 10, {"n": 2, "rmse": 1.5})  # replaces
        store.record_window("other", "v1", "drift", 0, 10, {"n": 9})
        rows = store.window_history("m")
        assert [(r.version, r.processor, r.window_start_unix_nano) for r in rows] == [
            ("v1", "drift", 0),
            ("v1", "performance", 0),
            ("v2", "drift", 10),
        ]
        assert rows[0].metrics == {"n": 5, "x": None}  # JSON has no NaN
        assert rows[1].metrics == {"n": 2, "rmse": 1.5}
        assert [r.version for r in store.window_history("m", version="v2")] == ["v2"]
        assert [r.processor for r in store.window_history("m", processor="performance")] == ["performance"]
        assert [r.window_end_unix_nano for r in store.window_history("m", since=10)] == [20]
    with Store(tmp_path) as reopened:  # it survives the process
        assert [r.metrics["n"] for r in reopened.window_history("m")] == [5, 2, 7]


def test_drift_windows_are_recorded_with_the_reported_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    store = Store(tmp_path)
    processor = DriftProcessor(
        DriftConfig(window=WINDOW, warmup=2000, min_samples=100), _context(tmp_path, store)
    )
    start = 1_700_000_040  # a window boundary (a multiple of 60 s)
    processor.process_predictions(batch(rng, 2000, start - 10 * WINDOW))  # warmup
    processor.process_predictions(batch(rng, 500, start))
    processor.process_predictions(batch(rng, 50, start + WINDOW))  # closes the first window
    first = processor.latest("salary", "v1")
    processor.process_predictions(batch(rng, 500, start + 2 * WINDOW, shift=1.0))  # 50 rows: not reported
    processor.tick((start + 4 * WINDOW) * S)  # closes the shifted window
    second = processor.latest("salary", "v1")
    store.close()

    with Store(tmp_path) as reopened:
        rows = reopened.window_history("salary", processor="drift")
    assert [(r.version, r.window_start_unix_nano, r.window_end_unix_nano) for r in rows] == [
        ("v1", start * S, (start + WINDOW) * S),
        ("v1", (start + 2 * WINDOW) * S, (start + 3 * WINDOW) * S),
    ]
    assert [r.metrics["n"] for r in rows] == [500, 500]
    for row, latest in zip(rows, (first, second), strict=True):
        assert row.metrics["features"] == {name: drift.gauges() for name, drift in latest.items()}
        assert set(row.metrics["features"]) == {"years", "children", "city"}
        assert set(row.metrics["means"]) == {"years", "children"}
    assert rows[0].metrics["features"]["years"]["detected"] == 0.0
    assert rows[1].metrics["features"]["years"]["detected"] == 1.0


def test_performance_windows_are_recorded_and_a_late_label_updates_its_row(tmp_path: Path) -> None:
    store = Store(tmp_path)
    context = _context(tmp_path, store)
    processor = PerformanceProcessor(PerformanceConfig(window=60), context)
    processor.process_predictions(predictions(["a", "b", "c"], [10.0, 20.0, 30.0], [T0, T0 + S, T0 + 2 * S]))
    processor.process_labels(labels(["a", "b"], [12.0, 20.0]))
    processor.process_predictions(predictions(["d"], [5.0], [T0 + 60 * S]))
    processor.process_labels(labels(["d"], [4.0]))
    processor.tick(T0 + 90 * S)
    rows = store.window_history("m", "v1", "performance")
    assert [(r.window_start_unix_nano, r.window_end_unix_nano) for r in rows] == [
        (T0, T0 + 60 * S),
        (T0 + 60 * S, T0 + 120 * S),
    ]
    assert rows[0].metrics["n"] == 2
    assert rows[0].metrics["rmse"] == pytest.approx(math.sqrt((4 + 0) / 2))
    assert rows[1].metrics["n"] == 1
    assert rows[1].metrics["mae"] == pytest.approx(1.0)
    assert processor.latest("m", "v1") == {k: v for k, v in rows[1].metrics.items() if k != "n"}

    first_recorded = rows[1].recorded_at
    processor.tick(T0 + 91 * S)  # nothing changed: nothing rewritten
    assert store.window_history("m", "v1", "performance")[1].recorded_at == first_recorded

    processor.process_labels(labels(["c"], [36.0], time=T0 + 100 * S))  # late label for the first window
    processor.shutdown()  # records what changed since the last tick
    store.close()
    with Store(tmp_path) as reopened:
        rows = reopened.window_history("m", "v1", "performance")
    assert len(rows) == 2
    assert rows[0].metrics["n"] == 3
    assert rows[0].metrics["rmse"] == pytest.approx(math.sqrt((4 + 0 + 36) / 3))
    assert rows[1].metrics["n"] == 1


def test_a_failing_store_is_logged_and_processing_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path)
    store.close()  # every call now fails
    rng = np.random.default_rng(1)
    drift = DriftProcessor(DriftConfig(window=WINDOW, warmup=200, min_samples=100), _context(tmp_path, store))
    performance = PerformanceProcessor(PerformanceConfig(window=60), _context(tmp_path / "perf", store))
    with caplog.at_level(logging.ERROR):
        drift.process_predictions(batch(rng, 200, 1_700_000_040 - WINDOW))
        drift.process_predictions(batch(rng, 300, 1_700_000_040))
        drift.tick((1_700_000_040 + 2 * WINDOW) * S)
        performance.process_predictions(predictions(["a"], [1.0]))
        performance.process_labels(labels(["a"], [2.0]))
        performance.tick(T0 + S)
    assert drift.latest("salary", "v1")
    assert performance.latest("m", "v1")["mae"] == 1.0
    assert "cannot record a drift window" in caplog.text
    assert "cannot record a performance window" in caplog.text
    performance.shutdown()
