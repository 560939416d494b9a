"""The audit log: every accepted prediction and label, appended to Parquet files.

Files are partitioned Hive-style by model and day, under the data directory::

    audit/predictions/model=salary/date=2026-11-27/part-<generation>-<writer>-<n>.parquet
    audit/labels/model=salary/date=2026-11-27/part-...parquet

Rows are buffered per (model, day) and written as a new file when ``flush_rows`` are
waiting, every ``flush_interval`` and at shutdown, so files stay a bounded size
(rotation). Every row is accounted for exactly once across crashes: at each checkpoint
the rows buffered since the previous one are saved in the state database
(``audit_pending``, Arrow IPC), in the transaction of the checkpoint, and a file's
rows leave that table when the file is written. A file written after the last
checkpoint (its *generation*, in its name, is higher) is deleted on restore, since the
rows it holds are restored from ``audit_pending`` or replayed from the write-ahead log.
Features are columns named
``feature.<name>`` (float64 or string); since the feature set of a model can change,
read the files with the schema merged by name, e.g. DuckDB's
``read_parquet('audit/predictions/**/*.parquet', hive_partitioning=true, union_by_name=true)``
or ``pyarrow.dataset.dataset(..., partitioning="hive")`` with ``unify_schemas``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import re
import secrets
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from modeltel_collector.batch import LabelBatch, PredictionBatch
from modeltel_collector.config import AuditProcessor as AuditConfig
from modeltel_collector.processors.base import ProcessorContext, ProcessorFactory

_logger = logging.getLogger(__name__)
_NS = 1_000_000_000
_DAY_NS = 86_400 * _NS
_PART = re.compile(r"part-(\d+)-[0-9a-f]+-\d+\.parquet")
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS audit_pending"
    " (kind TEXT NOT NULL, model TEXT NOT NULL, day TEXT NOT NULL, data BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_pending_key ON audit_pending (kind, model, day)",
)


def _day(time_unix_nano: int) -> str:
    return dt.datetime.fromtimestamp(time_unix_nano // _NS, dt.timezone.utc).date().isoformat()


def _prediction_table(batch: PredictionBatch) -> pa.Table:
    columns: dict[str, Any] = {
        "time": pa.array(batch.time_unix_nano, pa.timestamp("ns", tz="UTC")),
        "version": pa.array(np.full(len(batch), batch.version, dtype=object), pa.string()),
        "prediction_id": pa.array(batch.prediction_ids, pa.string()),
        "prediction": pa.array(batch.prediction, pa.float64(), from_pandas=True),
        "score": pa.array(batch.score, pa.float64(), from_pandas=True),
    }
    if batch.prediction_class is not None:
        columns["prediction_class"] = pa.array(batch.prediction_class, pa.string())
    for name, values in batch.numeric.items():
        columns[f"feature.{name}"] = pa.array(values, pa.float64(), from_pandas=True)
    for name, values in batch.categorical.items():
        key = f"feature.{name}" if name not in batch.numeric else f"feature.{name}.text"
        columns[key] = pa.array(values, pa.string())
    return pa.table(columns)


def _label_table(batch: LabelBatch) -> pa.Table:
    columns: dict[str, Any] = {
        "time": pa.array(batch.time_unix_nano, pa.timestamp("ns", tz="UTC")),
        "prediction_id": pa.array(batch.prediction_ids, pa.string()),
        "value": pa.array(batch.value, pa.float64(), from_pandas=True),
    }
    if batch.value_class is not None:
        columns["value_class"] = pa.array(batch.value_class, pa.string())
    return pa.table(columns)


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


Key = tuple[str, str, str]
"""(kind, model, day)."""


class AuditLog:
    """Buffers tables per (kind, model, day), writes them as Parquet parts, saves the rest at checkpoints."""

    def __init__(self, root: Path, flush_rows: int, db: sqlite3.Connection) -> None:
        self.root = root
        self._flush_rows = flush_rows
        self._db = db
        for statement in _SCHEMA:
            db.execute(statement)
        self._buffers: defaultdict[Key, list[pa.Table]] = defaultdict(list)
        self._rows: defaultdict[Key, int] = defaultdict(int)
        self._unsaved: defaultdict[Key, list[pa.Table]] = defaultdict(list)
        """Buffered since the last checkpoint (not in ``audit_pending`` yet)."""
        self._generation = 1
        self._writer = secrets.token_hex(4)
        self._sequence = itertools.count()

    def append(self, kind: str, model: str, table: pa.Table, times: np.ndarray) -> None:
        days = times // _DAY_NS
        unique_days = np.unique(days)
        for day in unique_days:
            part = table if unique_days.size == 1 else table.filter(pa.array(days == day))
            key = (kind, model, _day(int(day) * _DAY_NS))
            self._buffers[key].append(part)
            self._unsaved[key].append(part)
            self._rows[key] += part.num_rows
            if self._rows[key] >= self._flush_rows:
                self._write(key)

    def _write(self, key: Key) -> None:
        tables = self._buffers.pop(key, [])
        self._rows.pop(key, None)
        self._unsaved.pop(key, None)
        self._db.execute("DELETE FROM audit_pending WHERE kind = ? AND model = ? AND day = ?", key)
        if not tables:
            return
        kind, model, day = key
        table = pa.concat_tables(tables, promote_options="permissive")
        directory = self.root / kind / f"model={model}" / f"date={day}"
        directory.mkdir(parents=True, exist_ok=True)
        name = f"part-{self._generation:010d}-{self._writer}-{next(self._sequence):06d}.parquet"
        temporary = directory / f".{name}.tmp"
        pq.write_table(table, temporary, compression="zstd")
        temporary.rename(directory / name)  # readers never see a half-written file

    def flush(self) -> None:
        for key in list(self._buffers):
            self._write(key)

    def save(self) -> int:
        """Save the rows buffered since the last call in ``audit_pending``; the generation saved."""
        for key, tables in self._unsaved.items():
            table = pa.concat_tables(tables, promote_options="permissive")
            self._db.execute("INSERT INTO audit_pending VALUES (?, ?, ?, ?)", (*key, _to_ipc(table)))
        self._unsaved.clear()
        saved = self._generation
        self._generation += 1
        return saved

    def load(self, generation: int) -> None:
        """Back to checkpoint ``generation``: delete the files written after it, buffer the saved rows."""
        for path in self.root.glob("*/model=*/date=*/part-*.parquet"):
            match = _PART.fullmatch(path.name)
            if match and int(match.group(1)) > generation:
                path.unlink()
                _logger.info(
                    "modeltel: removed %s, written after the last checkpoint (its rows are replayed)", path
                )
        self._generation = generation + 1
        self._buffers.clear()
        self._rows.clear()
        self._unsaved.clear()
        for kind, model, day, data in self._db.execute(
            "SELECT kind, model, day, data FROM audit_pending ORDER BY rowid"
        ).fetchall():
            table = pa.ipc.open_stream(data).read_all()
            self._buffers[(kind, model, day)].append(table)
            self._rows[(kind, model, day)] += table.num_rows


class AuditProcessor:
    """Writes the audit log; see the module docstring."""

    def __init__(self, config: AuditConfig, context: ProcessorContext) -> None:
        self._log = AuditLog(context.data_dir / "audit", config.flush_rows, context.state_connection("audit"))
        self._interval_ns = int(config.flush_interval * _NS)
        self._last_flush = context.clock()

    @property
    def root(self) -> Path:
        return self._log.root

    def process_predictions(self, batch: PredictionBatch) -> None:
        self._log.append("predictions", batch.model, _prediction_table(batch), batch.time_unix_nano)

    def process_labels(self, batch: LabelBatch) -> None:
        self._log.append("labels", batch.model, _label_table(batch), batch.time_unix_nano)

    def process_spans(self, request: Any) -> None:
        """Spans are not audited."""

    def tick(self, now_unix_nano: int) -> None:
        if now_unix_nano - self._last_flush >= self._interval_ns:
            self._log.flush()
            self._last_flush = now_unix_nano

    def checkpoint(self) -> dict[str, Any]:
        """Save the buffered rows with the checkpoint (see the module docstring)."""
        return {"generation": self._log.save()}

    def restore(self, state: dict[str, Any]) -> None:
        self._log.load(int(state.get("generation", 0)))

    def shutdown(self) -> None:
        self._log.flush()


factory = ProcessorFactory(type="audit", config_type=AuditConfig, create=AuditProcessor)
