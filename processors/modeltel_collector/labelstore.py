"""The label join: predictions wait for their ground truth in SQLite (WAL), labels for their prediction.

Three tables, all keyed by ``(model, prediction_id)``:

``predictions``
    predictions still waiting for their label;
``pending_labels``
    labels that arrived before their prediction (the first label of an id wins);
``joined``
    one row per prediction id that has been joined. Its primary key is what makes the join
    idempotent: a duplicate label, a duplicate prediction or a retried export of either finds
    the id here and is ignored, so every prediction id is counted exactly once.

A joined prediction and its pending label are deleted from the waiting tables in the
same transaction that writes the ``joined`` row, so the waiting tables hold only what is
still unmatched. Every batch is one transaction of ``executemany`` statements (no
per-row commits). :meth:`LabelStore.expire` drops waiting rows older than the TTL and
``joined`` rows whose join completed (``joined_at``, the later of the prediction and
label event times) before it: past the TTL a duplicate can no longer meet its partner,
so those rows are no longer needed to keep the count exact.

The store is used from one thread at a time (the pipeline thread); the connection is
opened with ``check_same_thread=False`` so it may be created on another thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modeltel_collector.batch import LabelBatch, PredictionBatch

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    model TEXT NOT NULL,
    prediction_id TEXT NOT NULL,
    version TEXT NOT NULL,
    time_unix_nano INTEGER NOT NULL,
    value REAL,
    value_class TEXT,
    score REAL,
    PRIMARY KEY (model, prediction_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS predictions_time ON predictions (time_unix_nano);
CREATE TABLE IF NOT EXISTS pending_labels (
    model TEXT NOT NULL,
    prediction_id TEXT NOT NULL,
    time_unix_nano INTEGER NOT NULL,
    value REAL,
    value_class TEXT,
    PRIMARY KEY (model, prediction_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_labels_time ON pending_labels (time_unix_nano);
CREATE TABLE IF NOT EXISTS joined (
    model TEXT NOT NULL,
    prediction_id TEXT NOT NULL,
    version TEXT NOT NULL,
    prediction_time_unix_nano INTEGER NOT NULL,
    prediction REAL,
    prediction_class TEXT,
    score REAL,
    label REAL,
    label_class TEXT,
    label_time_unix_nano INTEGER NOT NULL,
    joined_at_unix_nano INTEGER NOT NULL,
    PRIMARY KEY (model, prediction_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS joined_at ON joined (joined_at_unix_nano);
CREATE TEMP TABLE IF NOT EXISTS incoming (
    prediction_id TEXT PRIMARY KEY,
    time_unix_nano INTEGER,
    value REAL,
    value_class TEXT
);
"""

# The columns a join reads, in JoinedPairs order (p: predictions, l: pending_labels or incoming).
_JOIN_COLUMNS = (
    "p.prediction_id, p.version, p.time_unix_nano, p.value, p.value_class, p.score,"
    " l.value, l.value_class, l.time_unix_nano"
)


def _nullable_float(value: float) -> float | None:
    """SQLite stores NaN as NULL anyway; say so explicitly."""
    return None if value != value else value


def _float_column(values: Iterable[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _class_column(batch_column: np.ndarray | None, n: int) -> list[Any]:
    return [None] * n if batch_column is None else batch_column.tolist()


@dataclass(frozen=True)
class JoinedPairs:
    """Prediction/label pairs newly joined for one model, as columns (one row per prediction id)."""

    model: str
    version: np.ndarray
    """object array of ``str``."""
    prediction_time_unix_nano: np.ndarray
    """int64."""
    prediction: np.ndarray
    """float64, NaN where the prediction was not a number."""
    prediction_class: np.ndarray
    """object array of ``str`` or None (as :attr:`PredictionBatch.prediction_class`)."""
    score: np.ndarray
    """float64, NaN where absent."""
    label: np.ndarray
    """float64, NaN where the label was not a number."""
    label_class: np.ndarray
    """object array of ``str`` or None."""

    def __len__(self) -> int:
        return int(self.version.size)

    @staticmethod
    def from_rows(model: str, rows: Sequence[Sequence[Any]]) -> JoinedPairs:
        """From rows in ``_JOIN_COLUMNS`` order."""
        columns = list(zip(*rows, strict=True)) if rows else [()] * 9
        return JoinedPairs(
            model=model,
            version=np.array(columns[1], dtype=object),
            prediction_time_unix_nano=np.array(columns[2], dtype=np.int64),
            prediction=_float_column(columns[3]),
            prediction_class=np.array(columns[4], dtype=object),
            score=_float_column(columns[5]),
            label=_float_column(columns[6]),
            label_class=np.array(columns[7], dtype=object),
        )


class LabelStore:
    """Joins predictions and labels by ``(model, prediction_id)`` in a SQLite file, exactly once.

    Parameters
    ----------
    path
        The SQLite file (created, with its parent directories, if missing).
    ttl_seconds
        How long a prediction waits for its label and a label for its prediction.
    """

    def __init__(self, path: Path, ttl_seconds: float) -> None:
        self.path = Path(path)
        self.ttl_nanos = int(ttl_seconds * 1e9)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_predictions(self, batch: PredictionBatch) -> JoinedPairs:
        """Store the batch's predictions and join those whose label is already pending.

        A prediction id already stored (waiting or joined) is ignored: the first one wins.
        """
        [pairs] = self.add_prediction_batches([batch])
        return pairs

    def add_prediction_batches(self, batches: Sequence[PredictionBatch]) -> list[JoinedPairs]:
        """:meth:`add_predictions` for several batches in ONE transaction.

        Prediction ids are random, so every insert lands on a random page of the key's
        B-tree: a transaction writes each page it touched once, and many rows per
        transaction write far fewer pages per row than one batch at a time.
        """
        db = self._db
        results = []
        db.execute("BEGIN")
        try:
            for batch in batches:
                results.append(self._insert_predictions(batch))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return results

    def _insert_predictions(self, batch: PredictionBatch) -> JoinedPairs:
        n = len(batch)
        model = batch.model
        rows = zip(
            [model] * n,
            batch.prediction_ids.tolist(),
            [batch.version] * n,
            batch.time_unix_nano.tolist(),
            map(_nullable_float, batch.prediction.tolist()),
            _class_column(batch.prediction_class, n),
            map(_nullable_float, batch.score.tolist()),
            strict=True,
        )
        db = self._db
        db.executemany(
            "INSERT OR IGNORE INTO predictions SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7"
            " WHERE NOT EXISTS (SELECT 1 FROM joined WHERE model = ?1 AND prediction_id = ?2)",
            rows,
        )
        joined_rows: list[Any] = []
        if db.execute("SELECT EXISTS (SELECT 1 FROM pending_labels WHERE model = ?)", (model,)).fetchone()[0]:
            db.execute("DELETE FROM temp.incoming")
            db.executemany(
                "INSERT OR IGNORE INTO temp.incoming (prediction_id) VALUES (?)",
                ((pid,) for pid in batch.prediction_ids.tolist()),
            )
            joined_rows = db.execute(
                # CROSS JOIN fixes SQLite's join order: one key lookup per incoming row,
                # never a scan of everything waiting.
                f"SELECT {_JOIN_COLUMNS} FROM temp.incoming i"
                " CROSS JOIN pending_labels l ON l.model = ?1 AND l.prediction_id = i.prediction_id"
                " CROSS JOIN predictions p ON p.model = ?1 AND p.prediction_id = i.prediction_id",
                (model,),
            ).fetchall()
            self._record_joined(model, joined_rows)
        return JoinedPairs.from_rows(model, joined_rows)

    def add_labels(self, batch: LabelBatch) -> JoinedPairs:
        """Join the batch's labels with their stored predictions; keep the others pending.

        A label whose prediction id was already joined is ignored (a duplicate or a retry);
        of several labels for one id still pending, the first wins.
        """
        n = len(batch)
        model = batch.model
        rows = zip(
            batch.prediction_ids.tolist(),
            batch.time_unix_nano.tolist(),
            map(_nullable_float, batch.value.tolist()),
            _class_column(batch.value_class, n),
            strict=True,
        )
        db = self._db
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM temp.incoming")
            db.executemany("INSERT OR IGNORE INTO temp.incoming VALUES (?, ?, ?, ?)", rows)
            db.execute(
                "DELETE FROM temp.incoming WHERE EXISTS"
                " (SELECT 1 FROM joined j WHERE j.model = ? AND j.prediction_id = incoming.prediction_id)",
                (model,),
            )
            joined_rows = db.execute(
                f"SELECT {_JOIN_COLUMNS} FROM temp.incoming l"  # CROSS JOIN: see add_predictions
                " CROSS JOIN predictions p ON p.model = ? AND p.prediction_id = l.prediction_id",
                (model,),
            ).fetchall()
            self._record_joined(model, joined_rows)
            db.execute(
                "INSERT OR IGNORE INTO pending_labels"
                " SELECT ?1, prediction_id, time_unix_nano, value, value_class FROM temp.incoming i"
                " WHERE NOT EXISTS"
                " (SELECT 1 FROM joined j WHERE j.model = ?1 AND j.prediction_id = i.prediction_id)",
                (model,),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return JoinedPairs.from_rows(model, joined_rows)

    def _record_joined(self, model: str, rows: list[Any]) -> None:
        """Write the ``joined`` rows and drop the matched waiting rows (inside the caller's transaction)."""
        if not rows:
            return
        self._db.executemany(
            "INSERT OR IGNORE INTO joined VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((model, *row, max(row[2], row[8])) for row in rows),
        )
        ids = [(model, row[0]) for row in rows]
        self._db.executemany("DELETE FROM predictions WHERE model = ? AND prediction_id = ?", ids)
        self._db.executemany("DELETE FROM pending_labels WHERE model = ? AND prediction_id = ?", ids)

    def expire(self, now_unix_nano: int) -> int:
        """Delete predictions and pending labels older than the TTL; return how many were deleted.

        ``joined`` rows whose join completed before the TTL are deleted too (not counted).
        """
        cutoff = now_unix_nano - self.ttl_nanos
        db = self._db
        db.execute("BEGIN")
        try:
            deleted = db.execute("DELETE FROM predictions WHERE time_unix_nano < ?", (cutoff,)).rowcount
            deleted += db.execute("DELETE FROM pending_labels WHERE time_unix_nano < ?", (cutoff,)).rowcount
            db.execute("DELETE FROM joined WHERE joined_at_unix_nano < ?", (cutoff,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return int(deleted)

    def counts(self) -> dict[str, int]:
        """Rows per table (for tests and health)."""
        return {
            table: int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            for table in ("predictions", "pending_labels", "joined")
        }
