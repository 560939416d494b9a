"""The audit log: every prediction and label once, in Parquet readable by pyarrow, pandas and DuckDB."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
from opentelemetry.sdk.metrics import MeterProvider

from modeltel_collector.batch import LabelBatch, PredictionBatch
from modeltel_collector.config import AuditProcessor as AuditConfig
from modeltel_collector.processors.audit import AuditProcessor
from modeltel_collector.processors.base import ProcessorContext
from modeltel_collector.state import StateDb

DAY1 = int(dt.datetime(2026, 11, 26, 23, 59, tzinfo=dt.timezone.utc).timestamp()) * 1_000_000_000


def predictions(model, start, n, *, features):
    times = start + np.arange(n, dtype=np.int64) * 1_000_000_000  # one per second: crosses midnight
    return PredictionBatch(
        model=model,
        version="v1",
        time_unix_nano=times,
        prediction_ids=np.array([f"{model}-{start}-{i}" for i in range(n)], dtype=object),
        numeric={name: np.arange(n, dtype=float) for name in features},
        categorical={"city": np.array(["berlin", None] * (n // 2), dtype=object)},
        prediction=np.arange(n, dtype=float) * 2,
        score=np.full(n, np.nan),
    )


def processor(tmp_path, state=None, **config):
    context = ProcessorContext(
        meter=MeterProvider().get_meter("t"),
        data_dir=tmp_path,
        clock=lambda: DAY1,
        state=state or StateDb(tmp_path),
    )
    return AuditProcessor(AuditConfig(**config), context)


def audited_ids(root):
    return duckdb.sql(
        f"select prediction_id from read_parquet('{root}/predictions/**/*.parquet', hive_partitioning=true)"
    ).fetchall()


def test_every_row_once_partitioned_by_model_and_day(tmp_path):
    audit = processor(tmp_path, flush_rows=50)
    audit.process_predictions(predictions("salary", DAY1, 120, features=["x"]))
    audit.process_predictions(predictions("churn", DAY1, 20, features=["x", "y"]))  # another feature set
    audit.process_labels(
        LabelBatch("salary", np.array([DAY1, DAY1 + 1], dtype=np.int64),
                   np.array(["salary-a", "salary-b"], dtype=object), np.array([1.0, np.nan]),
                   np.array([None, "spam"], dtype=object))
    )  # fmt: skip
    audit.shutdown()  # writes what is buffered

    root = audit.root
    days = sorted(p.name for p in (root / "predictions" / "model=salary").iterdir())
    assert days == ["date=2026-11-26", "date=2026-11-27"]

    files = f"read_parquet('{root}/predictions/**/*.parquet', hive_partitioning=true, union_by_name=true)"
    query = f"""select model, count(*) as n, count(distinct prediction_id) as ids, sum(prediction) as total
                from {files} group by model order by model"""
    assert duckdb.sql(query).fetchall() == [("churn", 20, 20, float(sum(range(20)) * 2)),
                                           ("salary", 120, 120, float(sum(range(120)) * 2))]  # fmt: skip
    churn_y = duckdb.sql(
        f"select sum(\"feature.y\") from read_parquet('{root}/predictions/**/*.parquet', "
        "hive_partitioning=true, union_by_name=true) where model = 'churn'"
    ).fetchall()
    assert churn_y == [(float(sum(range(20))),)]

    dataset = ds.dataset(root / "labels", format="parquet", partitioning="hive")
    labels = dataset.to_table().to_pandas()
    assert sorted(labels["prediction_id"]) == ["salary-a", "salary-b"]
    assert labels.set_index("prediction_id")["value_class"]["salary-b"] == "spam"

    frame = pd.read_parquet(next((root / "predictions" / "model=salary").rglob("*.parquet")))
    assert {"time", "version", "prediction_id", "prediction", "feature.x", "feature.city"} <= set(
        frame.columns
    )
    assert str(frame["time"].dtype) == "datetime64[ns, UTC]"


def test_interval_flush_and_no_half_written_files(tmp_path):
    audit = processor(tmp_path, flush_rows=10_000, flush_interval=60)
    audit.process_predictions(predictions("m", DAY1, 10, features=["x"]))
    assert not list(tmp_path.rglob("*.parquet"))
    audit.tick(DAY1 + 30 * 1_000_000_000)
    assert not list(tmp_path.rglob("*.parquet")), "not before the interval"
    audit.tick(DAY1 + 61 * 1_000_000_000)
    files = list(tmp_path.rglob("*"))
    assert [f for f in files if f.suffix == ".parquet"]
    assert not [f for f in files if f.name.endswith(".tmp")]


def test_files_rotate_at_flush_rows(tmp_path):
    audit = processor(tmp_path, flush_rows=50)
    noon = DAY1 + 12 * 3600 * 1_000_000_000
    for i in range(4):
        audit.process_predictions(predictions("m", noon + i * 10**11, 30, features=["x"]))
    audit.shutdown()
    sizes = sorted(duckdb.sql(
        f"select count(*) from read_parquet('{tmp_path}/audit/predictions/**/*.parquet', filename=true) "
        "group by filename"
    ).fetchall())  # fmt: skip
    assert sizes == [(60,), (60,)]


def test_a_crash_neither_loses_nor_repeats_a_row(tmp_path):
    """Rows buffered at a checkpoint are saved with it; files written after it are removed on
    restore, since the pipeline replays what came after the checkpoint."""
    noon = DAY1 + 12 * 3600 * 1_000_000_000
    batches = [predictions("m", noon + i * 10**11, 30, features=["x"]) for i in range(5)]
    state = StateDb(tmp_path)
    audit = processor(tmp_path, state, flush_rows=50)
    for batch in batches[:3]:  # 90 rows: one file of 60 written, 30 buffered
        audit.process_predictions(batch)
    state.commit(3, {"audit": audit.checkpoint()})
    for batch in batches[3:]:  # after the checkpoint: a file (60 rows) is written, then the crash
        audit.process_predictions(batch)
    assert len(audited_ids(audit.root)) == 120
    state.close()  # the crash: what was written since the commit is rolled back

    state = StateDb(tmp_path)
    restarted = processor(tmp_path, state, flush_rows=50)
    restarted.restore(state.load()[1]["audit"])
    assert len(audited_ids(restarted.root)) == 60  # the file written after the checkpoint is gone
    for batch in batches[3:]:  # the replay
        restarted.process_predictions(batch)
    restarted.shutdown()
    ids = [row[0] for row in audited_ids(restarted.root)]
    expected = [pid for batch in batches for pid in batch.prediction_ids]
    assert sorted(ids) == sorted(expected)
