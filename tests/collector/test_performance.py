"""The performance processor and its label store: real SQLite files, a real OTel MeterProvider."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from scipy.stats import mannwhitneyu

from modeltel.semconv import (
    LABELS_JOINED_METRIC,
    MODEL_NAME,
    MODEL_VERSION,
    PERFORMANCE_METRIC_NAME,
    PERFORMANCE_METRIC_PREFIX,
)
from modeltel_collector.batch import LabelBatch, PredictionBatch
from modeltel_collector.config import Band, ModelSettings
from modeltel_collector.config import PerformanceProcessor as PerformanceConfig
from modeltel_collector.labelstore import LabelStore
from modeltel_collector.processors.base import ProcessorContext
from modeltel_collector.processors.performance import (
    ACCEPTANCE_BOUND_METRICS,
    ACCEPTANCE_METRIC,
    PerformanceProcessor,
    factory,
)
from modeltel_collector.state import StateDb

SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND - (1_700_000_000 * SECOND) % (60 * SECOND)
"""A window boundary for 60 s windows."""


def predictions(
    ids: list[str],
    values: Any,
    times: Any = None,
    *,
    model: str = "m",
    version: str = "v1",
    classes: list[str] | None = None,
    scores: Any = None,
) -> PredictionBatch:
    n = len(ids)
    return PredictionBatch(
        model=model,
        version=version,
        time_unix_nano=np.asarray(times if times is not None else [T0] * n, dtype=np.int64),
        prediction_ids=np.array(ids, dtype=object),
        prediction=np.asarray(values, dtype=np.float64),
        prediction_class=None if classes is None else np.array(classes, dtype=object),
        score=np.full(n, np.nan) if scores is None else np.asarray(scores, dtype=np.float64),
    )


def labels(
    ids: list[str], values: Any, *, model: str = "m", classes: list[str] | None = None, time: int = T0
) -> LabelBatch:
    return LabelBatch(
        model=model,
        time_unix_nano=np.full(len(ids), time, dtype=np.int64),
        prediction_ids=np.array(ids, dtype=object),
        value=np.asarray(values, dtype=np.float64),
        value_class=None if classes is None else np.array(classes, dtype=object),
    )


class Harness:
    """A processor on a real MeterProvider whose metrics are read with an InMemoryMetricReader."""

    def __init__(self, data_dir: Path, models: dict[str, ModelSettings] | None = None, **config: Any):
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.state = StateDb(data_dir)
        self.context = ProcessorContext(
            meter=self.provider.get_meter("test"), data_dir=data_dir, models=models or {}, state=self.state
        )
        self.config = PerformanceConfig(**({"window": 60} | config))
        self.processor: PerformanceProcessor = factory.create(self.config, self.context)  # type: ignore[assignment]

    def points(self, name: str) -> dict[tuple[tuple[str, Any], ...], float]:
        data = self.reader.get_metrics_data()
        result = {}
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            assert isinstance(point, NumberDataPoint) and point.attributes is not None
                            result[tuple(sorted(point.attributes.items()))] = point.value
        return result

    def maybe(self, name: str, model: str = "m", version: str = "v1", **extra: str) -> float | None:
        """The point of ``name`` with these attributes, None if there is none."""
        attributes = {MODEL_NAME: model, MODEL_VERSION: version, **extra}
        return self.points(name).get(tuple(sorted(attributes.items())))

    def value(self, name: str, model: str = "m", version: str = "v1", **extra: str) -> float:
        value = self.maybe(name, model, version, **extra)
        assert value is not None, f"no {name} point"
        return value

    def close(self) -> None:
        """A clean stop: the processor's rows committed with a checkpoint."""
        self.processor.shutdown()
        self.state.commit(0, {})
        self.state.close()
        self.provider.shutdown()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


def gauge(metric: str) -> str:
    return f"{PERFORMANCE_METRIC_PREFIX}{metric}"


# The label store.


@contextmanager
def open_store(data_dir: Path, ttl_seconds: float, **options: Any) -> Iterator[LabelStore]:
    """A label store on a state database, committed and closed at the end (a clean stop)."""
    state = StateDb(data_dir)
    try:
        store = LabelStore(state.connection, ttl_seconds, **options)
        yield store
        store.flush()
        state.commit(0, {})
    finally:
        state.close()


def test_store_uses_wal_and_joins_in_any_order_once(tmp_path: Path) -> None:
    with open_store(tmp_path / "data", ttl_seconds=3600) as store:
        assert store.add_labels(labels(["a", "b"], [10.0, 20.0])).model == "m"
        assert store.counts()["pending_labels"] == 2
        pairs = store.add_predictions(predictions(["a", "b", "c"], [11.0, 19.0, 30.0], [T0, T0 + 1, T0 + 2]))
        assert sorted(zip(pairs.prediction.tolist(), pairs.label.tolist(), strict=True)) == [
            (11.0, 10.0),
            (19.0, 20.0),
        ]
        assert pairs.version.tolist() == ["v1", "v1"]
        assert pairs.prediction_time_unix_nano.dtype == np.int64
        # c is waiting; its label joins; a duplicate label for a, and the same batch retried, are ignored.
        assert len(store.add_labels(labels(["c", "a", "c"], [31.0, 99.0, 32.0]))) == 1
        assert len(store.add_labels(labels(["c", "a"], [31.0, 99.0]))) == 0
        # A duplicate prediction id is ignored too, joined or waiting.
        assert len(store.add_predictions(predictions(["a", "d", "d"], [0.0, 1.0, 2.0]))) == 0
        assert store.counts() == {"predictions": 1, "pending_labels": 0, "joined": 3}
        pairs = store.add_labels(labels(["d"], [5.0]))
        assert pairs.prediction.tolist() == [1.0]  # the first of the duplicates won
    with sqlite3.connect(tmp_path / "data" / "state.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_expires_by_ttl(tmp_path: Path) -> None:
    with open_store(tmp_path, ttl_seconds=10) as store:
        store.add_predictions(predictions(["old", "new"], [1.0, 2.0], [T0, T0 + 20 * SECOND]))
        store.add_labels(labels(["orphan"], [1.0], time=T0))
        assert store.expire(T0 + 25 * SECOND) == 2
        assert store.counts() == {"predictions": 1, "pending_labels": 0, "joined": 0}
        assert len(store.add_labels(labels(["old"], [1.0]))) == 0  # its prediction expired
        assert len(store.add_labels(labels(["new"], [1.0]))) == 1


def test_stored_predictions_join_once_across_flushes_and_restarts(tmp_path: Path) -> None:
    path = tmp_path
    ids = [f"id-{i}" for i in range(3000)]
    with open_store(path, ttl_seconds=3600, flush_rows=1000) as store:
        for chunk in range(3):  # three flushes: three chunks in the key index
            part = ids[chunk * 1000 : (chunk + 1) * 1000]
            store.add_predictions(
                predictions(part, np.arange(chunk * 1000, (chunk + 1) * 1000), [T0 + chunk * SECOND] * 1000)
            )
        # Labels for stored predictions of every chunk, one repeated in the same batch.
        wanted = [ids[5], ids[1500], ids[2999], ids[5]]
        pairs = store.add_labels(labels(wanted, [1.0, 2.0, 3.0, 4.0]))
        assert sorted(zip(pairs.prediction.tolist(), pairs.label.tolist(), strict=True)) == [
            (5.0, 1.0),
            (1500.0, 2.0),
            (2999.0, 3.0),
        ]
        assert pairs.prediction_time_unix_nano.tolist() == sorted(pairs.prediction_time_unix_nano.tolist())
        assert len(store.add_labels(labels([ids[1500]], [9.0]))) == 0  # joined, not yet flushed
    with open_store(path, ttl_seconds=3600) as store:
        assert len(store.add_labels(labels([ids[5], ids[2999]], [9.0, 9.0]))) == 0  # joined before
        assert store.add_labels(labels([ids[6]], [7.0])).prediction.tolist() == [6.0]
        assert store.counts() == {"predictions": 2996, "pending_labels": 0, "joined": 4}


def test_a_hash_collision_misses_a_join_but_never_joins_the_wrong_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every id hashes to the same key: the worst case the 64-bit key can meet.
    monkeypatch.setattr(LabelStore, "keys", lambda self, model, ids: np.zeros(len(ids), dtype=np.int64))
    with open_store(tmp_path, ttl_seconds=3600) as store:
        store.add_predictions(predictions(["a", "b"], [1.0, 2.0]))
        assert store.add_labels(labels(["a"], [10.0], model="other")).prediction.tolist() == []
        assert store.add_labels(labels(["b"], [20.0])).prediction.tolist() == []  # b lost its key to a
        assert store.add_labels(labels(["a"], [10.0])).prediction.tolist() == [1.0]
        store.flush()
        assert store.add_labels(labels(["b"], [20.0])).prediction.tolist() == []


def test_reopened_store_joins_a_label_to_a_prediction_stored_before(tmp_path: Path) -> None:
    path = tmp_path
    with open_store(path, ttl_seconds=3600) as store:
        store.add_predictions(predictions(["a"], [3.0]))
        store.add_labels(labels(["early"], [4.0]))
    with open_store(path, ttl_seconds=3600) as store:
        assert store.add_labels(labels(["a"], [2.0])).prediction.tolist() == [3.0]
        assert store.add_predictions(predictions(["early"], [5.0])).label.tolist() == [4.0]


# Regression.


def test_regression_metrics_equal_numpy_on_the_joined_pairs(harness: Harness) -> None:
    rng = np.random.default_rng(7)
    n = 500
    y = rng.normal(50_000, 12_000, n)
    y[:5] = 0.0  # skipped by the MAPE
    y_hat = y + rng.normal(0, 3_000, n)
    ids = [f"p{i}" for i in range(n)]
    times = T0 + rng.integers(0, 60 * SECOND, n)
    # Half the labels come first, the rest after their predictions, in shuffled order, in batches.
    order = rng.permutation(n)
    first, later = order[: n // 2], order[n // 2 :]
    harness.processor.process_labels(labels([ids[i] for i in first], y[first]))
    for chunk in np.array_split(np.arange(n), 4):
        harness.processor.process_predictions(
            predictions([ids[i] for i in chunk], y_hat[chunk], times[chunk])
        )
    for chunk in np.array_split(later, 3):
        harness.processor.process_labels(labels([ids[i] for i in chunk], y[chunk]))
    harness.processor.process_labels(labels([ids[i] for i in later[:50]], y[later[:50]]))  # duplicates

    error = y - y_hat
    nonzero = y != 0
    expected = {
        "rmse": math.sqrt(np.mean(error**2)),
        "mae": np.mean(np.abs(error)),
        "mape": np.mean(np.abs(error[nonzero]) / np.abs(y[nonzero])),
        "r2": 1 - np.sum(error**2) / np.sum((y - y.mean()) ** 2),
    }
    latest = harness.processor.latest("m", "v1")
    assert set(latest) == set(expected)
    for metric, value in expected.items():
        np.testing.assert_allclose(latest[metric], value, rtol=1e-9, err_msg=metric)
        np.testing.assert_allclose(harness.value(gauge(metric)), value, rtol=1e-9, err_msg=metric)
    assert harness.value(LABELS_JOINED_METRIC) == n
    assert harness.processor.checkpoint()["series"][0]["windows"][0]["ape_skipped"] == 5


def test_late_label_updates_its_window_and_gauges_keep_the_latest(harness: Harness) -> None:
    p = harness.processor
    p.process_predictions(predictions(["a", "b"], [10.0, 20.0], [T0, T0 + 1]))
    p.process_predictions(predictions(["c", "d"], [30.0, 40.0], [T0 + 60 * SECOND, T0 + 61 * SECOND]))
    p.process_labels(labels(["c", "d"], [31.0, 42.0]))
    np.testing.assert_allclose(harness.value(gauge("mae")), 1.5)
    # A late label for window 0 updates window 0, not the latest one the gauges show.
    p.process_labels(labels(["a"], [14.0]))
    np.testing.assert_allclose(harness.value(gauge("mae")), 1.5)
    windows = p.checkpoint()["series"][0]["windows"]
    assert [(w["start_unix_nano"], w["n"], w["sum_abs_error"]) for w in windows] == [
        (T0, 1, 4.0),
        (T0 + 60 * SECOND, 2, 3.0),
    ]
    # Nothing new arrives, time passes: the gauges neither vanish nor reset.
    p.tick(T0 + 3600 * SECOND)
    for _ in range(2):
        np.testing.assert_allclose(harness.value(gauge("mae")), 1.5)
        np.testing.assert_allclose(harness.value(gauge("rmse")), math.sqrt((1 + 4) / 2))
    assert harness.value(LABELS_JOINED_METRIC) == 3


def test_ttl_expiry_through_tick_and_old_windows_dropped(tmp_path: Path) -> None:
    h = Harness(tmp_path, label_ttl=120)
    try:
        p = h.processor
        p.process_predictions(predictions(["a", "b", "c"], [1.0, 2.0, 3.0], [T0, T0 + 300 * SECOND, T0]))
        p.process_labels(labels(["a"], [3.0], time=T0))
        p.process_labels(labels(["b"], [2.5], time=T0 + 300 * SECOND))
        p.process_labels(labels(["orphan"], [1.0], time=T0))
        assert len(p.checkpoint()["series"][0]["windows"]) == 2
        p.tick(T0 + 200 * SECOND)
        # c waited for its label and the orphan for its prediction longer than the TTL.
        assert p.store.counts() == {"predictions": 0, "pending_labels": 0, "joined": 1}
        p.process_labels(labels(["c"], [1.0]))  # too late: c expired
        assert h.value(LABELS_JOINED_METRIC) == 2
        # The window of a ended before the TTL: dropped.
        windows = p.checkpoint()["series"][0]["windows"]
        assert [w["start_unix_nano"] for w in windows] == [T0 + 300 * SECOND]
        p.tick(T0 + 10_000 * SECOND)
        assert len(p.checkpoint()["series"][0]["windows"]) == 1  # the latest always stays
        np.testing.assert_allclose(h.value(gauge("mae")), 0.5)
        assert h.value(LABELS_JOINED_METRIC) == 2
    finally:
        h.close()


def test_model_window_setting_and_version_series(tmp_path: Path) -> None:
    h = Harness(tmp_path, models={"m": ModelSettings(window=10.0)})
    try:
        p = h.processor
        p.process_predictions(predictions(["a", "b"], [1.0, 2.0], [T0, T0 + 15 * SECOND]))
        p.process_predictions(predictions(["c"], [5.0], [T0], version="v2"))
        p.process_labels(labels(["a", "b", "c"], [2.0, 4.0, 5.5]))
        assert [w["start_unix_nano"] for w in p.checkpoint()["series"][0]["windows"]] == [
            T0,
            T0 + 10 * SECOND,
        ]
        assert p.latest("m", "v1")["mae"] == 2.0
        assert p.latest("m", "v2")["mae"] == 0.5
        assert h.value(LABELS_JOINED_METRIC, version="v2") == 1
        assert p.latest("m", "nope") == {}
    finally:
        h.close()


# Classification.


def _classification_reference(y: np.ndarray, y_hat: np.ndarray, positive: str | None) -> dict[str, float]:
    classes = np.union1d(y, y_hat)
    per_class = []
    for c in classes:
        tp = np.sum((y_hat == c) & (y == c))
        precision = tp / np.sum(y_hat == c) if np.sum(y_hat == c) else 0.0
        recall = tp / np.sum(y == c) if np.sum(y == c) else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append((c, precision, recall, f1))
    result = {"accuracy": float(np.mean(y == y_hat))}
    if positive is None:
        result.update(
            precision=np.mean([r[1] for r in per_class]),
            recall=np.mean([r[2] for r in per_class]),
            f1=np.mean([r[3] for r in per_class]),
        )
    else:
        _, precision, recall, f1 = next(r for r in per_class if r[0] == positive)
        result.update(precision=precision, recall=recall, f1=f1)
    return result


def test_binary_classification_metrics_equal_direct_computations(tmp_path: Path) -> None:
    h = Harness(tmp_path, models={"m": ModelSettings(task="classification")})
    try:
        rng = np.random.default_rng(3)
        n = 400
        y = rng.integers(0, 2, n)
        score = np.clip(0.35 * y + rng.uniform(0, 0.65, n), 0, 1)
        score[:3] = [0.0, 1.0, 0.5]  # clipped by the log-loss
        score[10:20] = 0.25  # ties for the AUC
        y_hat = (score > 0.5).astype(int)
        ids = [f"p{i}" for i in range(n)]
        # Integer classes, sent as numbers: the task setting makes them classes "0"/"1".
        h.processor.process_labels(labels(ids[::2], y[::2]))
        h.processor.process_predictions(predictions(ids, y_hat, scores=score))
        h.processor.process_labels(labels(ids[1::2], y[1::2]))

        expected = _classification_reference(y.astype(str), y_hat.astype(str), positive="1")
        p = np.clip(score, 1e-15, 1 - 1e-15)
        expected["log_loss"] = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
        u = mannwhitneyu(score[y == 1], score[y == 0]).statistic
        expected["roc_auc"] = u / (np.sum(y == 1) * np.sum(y == 0))
        latest = h.processor.latest("m", "v1")
        assert set(latest) == set(expected)
        for metric, value in expected.items():
            np.testing.assert_allclose(latest[metric], value, rtol=1e-12, err_msg=metric)
            np.testing.assert_allclose(h.value(gauge(metric)), value, rtol=1e-12, err_msg=metric)
        assert h.maybe(gauge("rmse")) is None
    finally:
        h.close()


def test_multiclass_string_classes_are_inferred_and_macro_averaged(harness: Harness) -> None:
    rng = np.random.default_rng(11)
    n = 300
    classes = np.array(["cat", "dog", "owl"])
    y = rng.choice(classes, n)
    y_hat = np.where(rng.uniform(size=n) < 0.7, y, rng.choice(classes[:2], n))
    ids = [f"p{i}" for i in range(n)]
    harness.processor.process_predictions(
        predictions(ids, np.full(n, np.nan), classes=y_hat.tolist(), scores=rng.uniform(size=n))
    )
    harness.processor.process_labels(labels(ids, np.full(n, np.nan), classes=y.tolist()))
    expected = _classification_reference(y, y_hat, positive=None)
    latest = harness.processor.latest("m", "v1")
    assert set(latest) == set(expected)  # no log-loss/AUC: the score is no positive-class probability
    for metric, value in expected.items():
        np.testing.assert_allclose(latest[metric], value, rtol=1e-12, err_msg=metric)


def test_bool_classes_are_binary_with_true_positive(harness: Harness) -> None:
    y = ["true", "true", "false", "false", "true"]
    y_hat = ["true", "false", "false", "true", "true"]
    ids = list("abcde")
    harness.processor.process_predictions(predictions(ids, np.full(5, np.nan), classes=y_hat))
    harness.processor.process_labels(labels(ids, np.full(5, np.nan), classes=y))
    expected = _classification_reference(np.array(y), np.array(y_hat), positive="true")
    for metric, value in expected.items():
        np.testing.assert_allclose(harness.processor.latest("m", "v1")[metric], value, err_msg=metric)


# Acceptance, state.


def test_acceptance_band_gauge(tmp_path: Path) -> None:
    models = {
        "m": ModelSettings(acceptance={"rmse": Band(max=2.0), "r2": Band(min=0.99), "f1": Band(min=0.5)})
    }
    h = Harness(tmp_path, models=models)
    try:
        h.processor.process_predictions(predictions(["a", "b", "c"], [1.0, 2.0, 4.0], [T0, T0, T0]))
        h.processor.process_labels(labels(["a", "b", "c"], [1.0, 3.0, 5.0]))
        assert h.value(ACCEPTANCE_METRIC, **{PERFORMANCE_METRIC_NAME: "rmse"}) == 1
        assert h.value(ACCEPTANCE_METRIC, **{PERFORMANCE_METRIC_NAME: "r2"}) == 0
        assert len(h.points(ACCEPTANCE_METRIC)) == 2  # no f1 for a regression model
        # The bounds themselves, for dashboards to draw the bands.
        assert h.points(ACCEPTANCE_BOUND_METRICS["max"]) == {
            ((MODEL_NAME, "m"), (PERFORMANCE_METRIC_NAME, "rmse")): 2.0
        }
        assert h.points(ACCEPTANCE_BOUND_METRICS["min"]) == {
            ((MODEL_NAME, "m"), (PERFORMANCE_METRIC_NAME, "f1")): 0.5,
            ((MODEL_NAME, "m"), (PERFORMANCE_METRIC_NAME, "r2")): 0.99,
        }
        # A worse, later window moves rmse out of its band.
        h.processor.process_predictions(predictions(["d"], [10.0], [T0 + 60 * SECOND]))
        h.processor.process_labels(labels(["d"], [0.0]))
        assert h.value(ACCEPTANCE_METRIC, **{PERFORMANCE_METRIC_NAME: "rmse"}) == 0
    finally:
        h.close()


def test_checkpoint_restore_gives_identical_metrics(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    first = Harness(tmp_path)
    n = 200
    y = rng.integers(0, 2, n)
    score = rng.uniform(size=n)
    ids = [f"p{i}" for i in range(n)]
    times = T0 + rng.integers(0, 180 * SECOND, n)
    classes = y.astype(str).tolist()
    first.processor.process_predictions(
        predictions(
            ids,
            np.full(n, np.nan),
            times,
            classes=(score > 0.5).astype(int).astype(str).tolist(),
            scores=score,
        )
    )
    first.processor.process_labels(labels(ids[:150], np.full(150, np.nan), classes=classes[:150]))
    state = json.loads(json.dumps(first.processor.checkpoint()))
    before = first.processor.latest("m", "v1")
    assert {"log_loss", "roc_auc"} <= set(before)
    first.close()

    second = Harness(tmp_path)
    try:
        second.processor.restore(state)
        assert second.processor.latest("m", "v1") == before
        assert second.value(LABELS_JOINED_METRIC) == 150
        assert second.processor.checkpoint() == state
        # The reopened label store still joins the remaining labels to predictions stored before.
        second.processor.process_labels(labels(ids[150:], np.full(50, np.nan), classes=classes[150:]))
        assert second.value(LABELS_JOINED_METRIC) == 200
    finally:
        second.close()
