"""Reference profiles: the store, ``modeltel reference build``, and the drift processor using them."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from modeltel_collector.batch import PredictionBatch
from modeltel_collector.collector import Collector
from modeltel_collector.config import CollectorConfig, parse_config
from modeltel_collector.config import DriftProcessor as DriftConfig
from modeltel_collector.drift.profile import ModelProfile, ModelProfileBuilder
from modeltel_collector.processors.base import ProcessorContext
from modeltel_collector.processors.drift import DriftProcessor
from modeltel_collector.store import FILE_NAME, Store, config_hash
from tests.conftest import ROOT

S = 1_000_000_000
WINDOW = 60


class Clock:
    """A controllable clock in Unix seconds."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _profile(version: str = "v1", shift: float = 0.0, n: int = 2000, seed: int = 0) -> ModelProfile:
    rng = np.random.default_rng(seed)
    builder = ModelProfileBuilder("salary", version)
    builder.update(
        {
            "years": rng.normal(10 + 5 * shift, 5, n),
            "city": rng.choice(np.array(["berlin", "paris", "rome"], dtype=object), n),
        }
    )
    return builder.build()


# --- store ---------------------------------------------------------------------------------


def test_store_is_sqlite_in_wal_mode_in_the_data_dir(tmp_path: Path) -> None:
    with Store(tmp_path / "data") as store:
        assert store.path == tmp_path / "data" / FILE_NAME
    with sqlite3.connect(tmp_path / "data" / FILE_NAME) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"reference_profiles", "current_profiles", "config_versions"} <= tables


def test_profiles_are_saved_once_per_hash_and_the_latest_saved_is_current(tmp_path: Path) -> None:
    clock = Clock()
    first, second = _profile(), _profile(shift=1.0)
    with Store(tmp_path, clock=clock) as store:
        assert store.load_profile("salary", "v1") is None
        digest = store.save_profile(first)
        clock.now += 10
        assert store.save_profile(first) == digest == first.content_hash()
        history = store.profile_history("salary", "v1")
        assert [(r.hash, r.current) for r in history] == [(digest, True)]
        assert history[0].created_at.timestamp() == pytest.approx(clock.now - 10)

        clock.now += 10
        other = store.save_profile(second)
        assert other != digest
        loaded = store.load_profile("salary", "v1")
        assert loaded is not None and loaded.content_hash() == other
        assert [(r.hash, r.current) for r in store.profile_history("salary", "v1")] == [
            (digest, False),
            (other, True),
        ]
        older = store.load_profile("salary", "v1", digest)
        assert older is not None and older.content_hash() == digest

        clock.now += 10
        store.save_profile(first)  # saving an older profile again makes it current again
        current = store.load_profile("salary", "v1")
        assert current is not None and current.content_hash() == digest
        assert len(store.profile_history("salary", "v1")) == 2
        assert store.load_profile("salary", "v2") is None

    with Store(tmp_path) as reopened:  # it survives the process
        restored = reopened.load_profile("salary", "v1")
        assert restored is not None
        assert restored.content_hash() == digest
        np.testing.assert_array_equal(restored.features["years"].sample, first.features["years"].sample)


def test_config_versions_are_recorded_with_first_and_last_applied(tmp_path: Path) -> None:
    clock = Clock()
    config = parse_config({"processors": {"drift": {"window": "10s"}}})
    changed = parse_config({"processors": {"drift": {"window": "20s"}}})
    with Store(tmp_path, clock=clock) as store:
        digest = store.record_config(config)
        assert digest == config_hash(config)
        clock.now += 60
        assert store.record_config(parse_config({"processors": {"drift": {"window": 10}}})) == digest
        clock.now += 60
        other = store.record_config(changed)
        assert other != digest
        history = store.config_history()
    assert [version.hash for version in history] == [digest, other]
    first = history[0]
    assert first.first_applied_at.timestamp() == pytest.approx(1_700_000_000.0)
    assert first.last_applied_at.timestamp() == pytest.approx(1_700_000_060.0)
    assert first.config == config.model_dump(mode="json")
    assert first.config["processors"]["drift"]["window"] == 10.0
    assert history[1].first_applied_at == history[1].last_applied_at


# --- modeltel reference build ----------------------------------------------------------------


def _training_table(n: int = 3000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    years = rng.normal(10, 5, n)
    years[::17] = np.nan
    children = [None if i % 23 == 0 else int(v) for i, v in enumerate(rng.poisson(1.5, n))]
    city = [None if i % 11 == 0 else str(v) for i, v in enumerate(rng.choice(["berlin", "paris", "rome"], n))]
    remote = [None if i % 13 == 0 else bool(v) for i, v in enumerate(rng.integers(0, 2, n))]
    return pa.table(
        {
            "years": pa.array(years, from_pandas=True),  # NaN → null
            "children": pa.array(children, pa.int64()),
            "city": pa.array(city, pa.string()),
            "remote": pa.array(remote, pa.bool_()),
            "salary": rng.normal(60_000, 5_000, n),
            "row_id": np.arange(n),
        }
    )


def _reference(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "modeltel_collector.cli", "reference", "build", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_reference_build_from_csv_and_parquet_gives_the_same_stored_profile(tmp_path: Path) -> None:
    table = _training_table()
    csv_path, parquet_path = tmp_path / "train.csv", tmp_path / "train.parquet"
    pa_csv.write_csv(table, csv_path)
    pq.write_table(table, parquet_path, row_group_size=700)  # batching unlike the CSV reader's
    data_dir = tmp_path / "data"
    options = ("--model", "salary", "--target", "salary", "--exclude", "row_id", "--data-dir", data_dir)
    options += ("--chunk-size", "500")

    from_csv = _reference(csv_path, "--version", "csv", *options)
    assert from_csv.returncode == 0, from_csv.stderr
    from_parquet = _reference(parquet_path, "--version", "parquet", *options)
    assert from_parquet.returncode == 0, from_parquet.stderr

    with Store(data_dir) as store:
        csv_profile = store.load_profile("salary", "csv")
        parquet_profile = store.load_profile("salary", "parquet")
    assert csv_profile is not None and parquet_profile is not None
    assert csv_profile.content_hash() in from_csv.stdout
    assert parquet_profile.content_hash() in from_parquet.stdout

    features = csv_profile.features
    assert set(features) == {"years", "children", "city", "remote"}  # target and excluded dropped
    assert {name: f.kind for name, f in features.items()} == {
        "years": "numeric",
        "children": "numeric",
        "city": "categorical",
        "remote": "categorical",
    }
    for name in features:
        column = table.column(name)
        assert features[name].count == len(column) - column.null_count, name
        assert features[name].missing == column.null_count, name
    assert set(features["remote"].categories) == {"true", "false"}
    assert set(features["city"].categories) == {"berlin", "paris", "rome"}
    assert features["years"].moments.mean == pytest.approx(np.nanmean(table.column("years").to_numpy()))
    for name in ("years", "children", "city", "remote"):
        assert name in from_csv.stdout
    assert "numeric" in from_csv.stdout and "categorical" in from_csv.stdout

    # The same data gives the same profile whatever the file format.
    same = {name: profile.content_hash() for name, profile in parquet_profile.features.items()}
    assert same == {name: profile.content_hash() for name, profile in features.items()}
    assert (
        ModelProfile("salary", "x", csv_profile.features).content_hash()
        == ModelProfile("salary", "x", parquet_profile.features).content_hash()
    )

    # Building the same version twice stores one profile.
    again = _reference(csv_path, "--version", "csv", *options)
    assert again.returncode == 0, again.stderr
    assert "already stored" in again.stdout
    with Store(data_dir) as store:
        assert len(store.profile_history("salary", "csv")) == 1


def test_reference_build_memory_stays_bounded_for_a_large_csv(tmp_path: Path) -> None:
    big, small = tmp_path / "big.csv", tmp_path / "small.csv"
    rng = np.random.default_rng(0)
    rows, step = 2_000_000, 250_000
    with big.open("wb") as sink:
        for start in range(0, rows, step):
            chunk = pa.table(
                {
                    "x": rng.normal(0, 1, step),
                    "k": rng.integers(0, 100, step),
                    "c": rng.choice(np.array(["a", "b", "c", "d"]), step),
                    "y": rng.normal(0, 1, step),
                }
            )
            pa_csv.write_csv(chunk, sink, write_options=pa_csv.WriteOptions(include_header=start == 0))
            if start == 0:
                pa_csv.write_csv(chunk.slice(0, 1000), small)
    size = big.stat().st_size
    assert size > 80 * 2**20
    bigger = tmp_path / "bigger.csv"  # the same rows twice: twice the file
    with bigger.open("wb") as sink, big.open("rb") as source:
        body = source.read()
        sink.write(body)
        sink.write(body.split(b"\n", 1)[1])

    def peak_rss(path: Path, version: str) -> int:
        """Peak RSS (bytes) of a build in a fresh wrapper process (its only child)."""
        script = textwrap.dedent(
            f"""
            import resource, subprocess, sys
            done = subprocess.run([sys.executable, "-m", "modeltel_collector.cli", "reference", "build",
                {str(path)!r}, "--model", "m", "--version", {version!r}, "--chunk-size", "2000",
                "--data-dir", {str(tmp_path / "data")!r}], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return int(result.stdout.strip()) * 1024  # kilobytes on Linux

    baseline = peak_rss(small, "small")
    peak = peak_rss(big, "big")
    peak_twice = peak_rss(bigger, "bigger")
    # Memory beyond the interpreter's own is a fraction of the file, and does not grow with it.
    assert peak - baseline < size / 2, (peak, baseline, size)
    assert peak_twice - peak < size / 10, (peak_twice, peak, size)
    with Store(tmp_path / "data") as store:
        profile = store.load_profile("m", "big")
    assert profile is not None
    assert profile.features["x"].count == rows
    assert profile.features["c"].count == rows


def test_reference_build_errors_name_the_problem(tmp_path: Path) -> None:
    csv_path = tmp_path / "train.csv"
    pa_csv.write_csv(_training_table(100), csv_path)
    base = ("--model", "salary", "--version", "1", "--data-dir", tmp_path / "data")

    unknown_target = _reference(csv_path, *base, "--target", "income")
    assert unknown_target.returncode == 1
    message = _flat(unknown_target.stderr)
    assert "--target 'income' is not a column" in message
    assert "years, children, city, remote, salary, row_id" in message

    unknown_exclude = _reference(csv_path, *base, "--exclude", "nope")
    assert unknown_exclude.returncode == 1
    assert "'nope'" in unknown_exclude.stderr and "row_id" in _flat(unknown_exclude.stderr)

    excel = tmp_path / "train.xlsx"
    excel.write_bytes(b"not really")
    unsupported = _reference(excel, *base)
    assert unsupported.returncode == 1
    assert "unsupported file type" in _flat(unsupported.stderr)

    missing = _reference(tmp_path / "absent.csv", *base)
    assert missing.returncode == 1 and "no such file" in missing.stderr

    everything = _reference(csv_path, *base, "--target", "salary", *[
        arg for name in ("years", "children", "city", "remote", "row_id") for arg in ("--exclude", name)
    ])  # fmt: skip
    assert everything.returncode == 1 and "no feature left" in everything.stderr
    assert not (tmp_path / "data" / FILE_NAME).exists()  # nothing was stored


# --- the drift processor and the store -------------------------------------------------------------


def _batch(rng: np.random.Generator, n: int, start_s: int, *, shift: float = 0.0) -> PredictionBatch:
    times = (start_s * S + np.linspace(0, (WINDOW - 1) * S, n)).astype(np.int64)
    return PredictionBatch(
        model="salary",
        version="v1",
        time_unix_nano=times,
        prediction_ids=np.array([f"id-{start_s}-{i}" for i in range(n)], dtype=object),
        numeric={"years": rng.normal(10 + shift * 5, 5, n)},
        categorical={"city": rng.choice(np.array(["berlin", "paris", "rome"], dtype=object), n)},
        prediction=rng.normal(60_000, 5_000, n),
        score=np.full(n, np.nan),
    )


def _processor(tmp_path: Path, store: Store) -> DriftProcessor:
    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("test")
    context = ProcessorContext(meter=meter, data_dir=tmp_path, store=store)
    return DriftProcessor(DriftConfig(window=WINDOW, warmup=2000, min_samples=100), context)


def test_a_stored_reference_is_used_instead_of_warmup(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.save_profile(_profile(n=5000, seed=1))
        processor = _processor(tmp_path, store)
        rng = np.random.default_rng(2)
        processor.process_predictions(_batch(rng, 500, 0, shift=1.0))  # the very first window, shifted
        processor.tick(WINDOW * S)
        drift = processor.latest("salary", "v1")
        assert drift["years"].drifted  # compared with the stored reference: no warmup
        assert not drift["city"].drifted
        assert len(store.profile_history("salary", "v1")) == 1  # nothing new saved


def test_a_warmup_reference_is_saved_to_the_store(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        processor = _processor(tmp_path, store)
        rng = np.random.default_rng(3)
        processor.process_predictions(_batch(rng, 1500, 0))
        assert store.load_profile("salary", "v1") is None  # still warming up
        processor.process_predictions(_batch(rng, 1000, 60))
        saved = store.load_profile("salary", "v1")
        assert saved is not None
        assert saved.features["years"].count == 2000
        reference = ModelProfile.from_dict(processor.checkpoint()["versions"][0]["reference"])
        assert saved.content_hash() == reference.content_hash()

        # A restarted collector without a checkpoint finds it: no warmup the second time.
        restarted = _processor(tmp_path, store)
        restarted.process_predictions(_batch(rng, 500, 120, shift=1.0))
        restarted.tick(180 * S)
        assert restarted.latest("salary", "v1")["years"].drifted


def test_the_collector_records_its_configuration_and_gives_processors_the_store(tmp_path: Path) -> None:
    config = CollectorConfig.model_validate(
        {
            "receivers": {"otlp": {"protocols": {"grpc": None, "http": None}}},
            "exporters": {"prometheus": None},
            "data_dir": str(tmp_path / "data"),
        }
    )
    with Store(tmp_path / "data") as store:
        store.save_profile(_profile(version="v9"))
    collector = Collector(config).start()
    try:
        drift = collector.pipeline.processors["drift"]
        assert isinstance(drift, DriftProcessor)
        assert drift._context.store is collector.store
    finally:
        collector.stop()
    Collector(config).start().stop()  # the same configuration applied again
    with Store(tmp_path / "data") as store:
        history = store.config_history()
    assert [version.hash for version in history] == [config_hash(config)]
    assert history[0].last_applied_at > history[0].first_applied_at
