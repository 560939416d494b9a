"""The label join: predictions wait for their ground truth, labels for their prediction, exactly once.

Every prediction must be findable by its id for as long as its label may come (the TTL),
so the store writes every prediction once; that write is what this module keeps cheap:

- **Chunks.** Predictions are buffered in memory and flushed (every ``flush_rows`` rows, and
  on :meth:`LabelStore.flush`) as one Arrow IPC blob per (model, version, partition) in the
  ``prediction_chunks`` table: one SQLite row for thousands of predictions.
- **Key index.** Each prediction's key, a 64-bit hash of ``(model, prediction id)``
  (:func:`prediction_keys`, seeded per store), goes into the key index of its time
  partition with its chunk and row and a ``joined`` flag. A label finds its prediction
  through the key, and the join then checks the chunk's model and id, so a hash collision
  can at worst miss a join, never join the wrong pair.
- **Sorted runs.** Keys are random, so one growing B-tree would rewrite a page for nearly
  every key once it outgrows a flush: the cost per prediction would grow with the index. Each
  flush instead writes its keys, sorted, as a new ``INTEGER PRIMARY KEY`` table (a *run*);
  every ``MERGE_FANOUT`` runs of one level are merged, in key order, into one run of the next
  level, as in a log-structured merge tree. Writes are sequential and a key is rewritten once
  per level (a logarithmic number of times); a lookup probes each run, at most
  ``MERGE_FANOUT - 1`` per level.
- **Partitions.** The key index is split by prediction time into partitions an eighth of
  the TTL wide; :meth:`LabelStore.expire` drops whole partitions (and their chunks) once they
  end before ``now - ttl``, so expiry never deletes row by row. A prediction therefore stays
  stored for between 1 and 1.125 TTLs, but never joins once it is older than the
  cutoff of the last :meth:`~LabelStore.expire`.
- **Pending labels**, which arrive before their prediction and are usually few, wait row by
  row in ``pending_labels`` (keyed the same way) and expire row by row.

Idempotency: a prediction key already stored is ignored (the first prediction of an id
wins); a joined prediction keeps its index row with ``joined = 1`` until its partition
expires, so a duplicate or retried label finds it joined and is ignored. Every prediction
id is thus joined at most once while it is within the TTL.

The store's tables live in the collector's state database
(:class:`~modeltel_collector.state.StateDb`): it writes inside the transaction the
pipeline keeps open, so its rows are committed with the checkpoint that accounts for them.
It is used from one thread at a time (the pipeline thread).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import logging
import secrets
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from modeltel_collector.batch import LabelBatch, PredictionBatch
from modeltel_collector.state import atomic

_logger = logging.getLogger(__name__)

FLUSH_ROWS = 20_000
"""Buffered predictions written together: one chunk and one sorted index insert per flush."""

PARTITIONS_PER_TTL = 8
"""Key-index partitions per TTL: predictions are kept between 1 and 1 + 1/8 TTLs."""

MERGE_FANOUT = 4
"""Sorted runs of one size merged into one run of the next size (see the module docstring)."""

CACHED_CHUNKS = 4
"""Decoded chunks kept in memory for label joins (recent predictions are the likely ones)."""

_ROW_BITS = 24
"""``loc = chunk << _ROW_BITS | row``: a chunk holds fewer than 2**24 rows."""
_ROW_MASK = (1 << _ROW_BITS) - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS partitions (
    part INTEGER PRIMARY KEY,
    start_unix_nano INTEGER NOT NULL,
    end_unix_nano INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS key_runs (
    run INTEGER PRIMARY KEY,
    part INTEGER NOT NULL,
    level INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS prediction_chunks (
    chunk INTEGER PRIMARY KEY,
    part INTEGER NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS prediction_chunks_part ON prediction_chunks (part);
CREATE TABLE IF NOT EXISTS pending_labels (
    key INTEGER PRIMARY KEY,
    model TEXT NOT NULL,
    prediction_id TEXT NOT NULL,
    time_unix_nano INTEGER NOT NULL,
    value REAL,
    value_class TEXT
);
CREATE INDEX IF NOT EXISTS pending_labels_time ON pending_labels (time_unix_nano)
"""

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, elementwise on uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def prediction_keys(model: str, ids: np.ndarray, seed: int) -> np.ndarray:
    """int64 keys of ``(model, id)`` pairs: a seeded 64-bit hash, computed on whole arrays.

    The ids' code points are mixed in eight bytes at a time (a key does not depend on the
    other ids of the array), so the cost is a few numpy operations per two characters of the
    longest id, whatever the number of rows.

    >>> keys = prediction_keys("m", np.array(["a", "b", "a"], dtype=object), seed=1)
    >>> bool(keys[0] == keys[2]), bool(keys[0] == keys[1]), keys.dtype
    (True, False, dtype('int64'))
    >>> bool(prediction_keys("other", np.array(["a"], dtype=object), seed=1)[0] == keys[0])
    False
    """
    text = np.asarray(ids, dtype=str)
    n = text.size
    start = hashlib.blake2b(model.encode(), digest_size=8, key=seed.to_bytes(8, "little")).digest()
    h = np.full(n, int.from_bytes(start, "little"), np.uint64)
    with np.errstate(over="ignore"):
        width = text.dtype.itemsize // 4
        if n and width:
            points = np.ascontiguousarray(text).view(np.uint32).reshape(n, width)
            if width % 2:
                points = np.concatenate([points, np.zeros((n, 1), np.uint32)], axis=1)
            words = points.view(np.uint64)
            used = (np.strings.str_len(text) + 1) // 2  # words holding the id (not the padding)
            for column in range(words.shape[1]):
                h = np.where(column < used, _mix(h ^ words[:, column]), h)
    return h.view(np.int64)


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
    def empty(model: str) -> JoinedPairs:
        return JoinedPairs.concat(model, [])

    @staticmethod
    def concat(model: str, parts: Sequence[JoinedPairs]) -> JoinedPairs:
        if len(parts) == 1:
            return parts[0]

        def cat(name: str, dtype: Any) -> np.ndarray:
            arrays = [getattr(part, name) for part in parts]
            return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.empty(0, dtype)

        return JoinedPairs(
            model=model,
            version=cat("version", object),
            prediction_time_unix_nano=cat("prediction_time_unix_nano", np.int64),
            prediction=cat("prediction", np.float64),
            prediction_class=cat("prediction_class", object),
            score=cat("score", np.float64),
            label=cat("label", np.float64),
            label_class=cat("label_class", object),
        )


def _label_class(batch: LabelBatch) -> np.ndarray:
    return np.full(len(batch), None, object) if batch.value_class is None else batch.value_class


class _Chunk:
    """Predictions of one (model, version): the columns a join reads, as numpy arrays."""

    def __init__(self, model: str, version: str, columns: dict[str, np.ndarray]) -> None:
        self.model = model
        self.version = version
        self.ids = columns["id"]
        self.time = columns["time"]
        self.prediction = columns["prediction"]
        self.prediction_class = columns["prediction_class"]
        self.score = columns["score"]

    @staticmethod
    def of(batches: Sequence[PredictionBatch]) -> _Chunk:
        first = batches[0]

        def cat(get: Any) -> np.ndarray:
            return np.concatenate([get(b) for b in batches]) if len(batches) > 1 else get(first)

        def classes(b: PredictionBatch) -> np.ndarray:
            return np.full(len(b), None, object) if b.prediction_class is None else b.prediction_class

        return _Chunk(
            first.model,
            first.version,
            {
                "id": cat(lambda b: b.prediction_ids),
                "time": cat(lambda b: b.time_unix_nano),
                "prediction": cat(lambda b: b.prediction),
                "prediction_class": cat(classes),
                "score": cat(lambda b: b.score),
            },
        )

    def take(self, rows: np.ndarray) -> _Chunk:
        return _Chunk(
            self.model,
            self.version,
            {
                "id": self.ids[rows],
                "time": self.time[rows],
                "prediction": self.prediction[rows],
                "prediction_class": self.prediction_class[rows],
                "score": self.score[rows],
            },
        )

    def to_blob(self) -> bytes:
        table = pa.table(
            {
                "id": pa.array(self.ids, pa.string()),
                "time": pa.array(self.time, pa.int64()),
                "prediction": pa.array(self.prediction, pa.float64()),
                "prediction_class": pa.array(self.prediction_class, pa.string()),
                "score": pa.array(self.score, pa.float64()),
            }
        )
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return bytes(sink.getvalue().to_pybytes())

    @staticmethod
    def from_blob(model: str, version: str, blob: bytes) -> _Chunk:
        table = pa.ipc.open_stream(blob).read_all()
        return _Chunk(
            model,
            version,
            {
                "id": np.array(table["id"].to_pylist(), dtype=object),
                "time": table["time"].to_numpy(),
                "prediction": table["prediction"].to_numpy(),
                "prediction_class": np.array(table["prediction_class"].to_pylist(), dtype=object),
                "score": table["score"].to_numpy(),
            },
        )

    def pairs(self, rows: np.ndarray, labels: LabelBatch, label_rows: np.ndarray) -> JoinedPairs:
        return JoinedPairs(
            model=self.model,
            version=np.full(rows.size, self.version, dtype=object),
            prediction_time_unix_nano=self.time[rows],
            prediction=self.prediction[rows],
            prediction_class=self.prediction_class[rows],
            score=self.score[rows],
            label=labels.value[label_rows],
            label_class=_label_class(labels)[label_rows],
        )


class LabelStore:
    """Joins predictions and labels by ``(model, prediction id)`` in SQLite, exactly once.

    Parameters
    ----------
    db
        The state database's connection (:attr:`~modeltel_collector.state.StateDb.connection`).
    ttl_seconds
        How long a prediction waits for its label and a label for its prediction.
    flush_rows
        Buffered predictions that trigger a flush (see the module docstring).
    """

    def __init__(self, db: sqlite3.Connection, ttl_seconds: float, *, flush_rows: int = FLUSH_ROWS) -> None:
        self.ttl_nanos = int(ttl_seconds * 1e9)
        self.partition_nanos = max(self.ttl_nanos // PARTITIONS_PER_TTL, 1)
        self.flush_rows = flush_rows
        self._db = db
        for statement in _SCHEMA.split(";"):
            db.execute(statement)
        self._seed = self._meta("key_seed", secrets.randbits(63))
        self._cutoff = -(2**63)
        """Predictions older than this (the last expiry's cutoff) no longer join."""
        self._buffer: list[tuple[PredictionBatch, np.ndarray, np.ndarray]] = []
        """Predictions not flushed yet: (batch, keys, joined flags), in arrival order."""
        self._buffer_starts: list[int] = []
        """The buffer row number of each batch's first row."""
        self._buffered_keys: dict[int, int] = {}
        """Key -> buffer row number, for joins and duplicates before the flush."""
        self._buffered_rows = 0
        self._joined_stored: set[int] = set()
        """Keys of stored predictions joined since the last flush (flagged in the index by it)."""
        self._chunks: OrderedDict[int, _Chunk] = OrderedDict()
        self._pending = self._db.execute("SELECT COUNT(*) FROM pending_labels").fetchone()[0]

    def _meta(self, name: str, default: int) -> int:
        self._db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (name, default))
        value: int = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0]
        return value

    def keys(self, model: str, ids: np.ndarray) -> np.ndarray:
        return prediction_keys(model, ids, self._seed)

    # Predictions.

    def add_predictions(self, batch: PredictionBatch) -> JoinedPairs:
        """Buffer the batch's predictions and join those whose label is already pending.

        A prediction id already buffered or stored (waiting or joined) is ignored: the first
        one wins (in the index; a stored duplicate is found by the flush's ``INSERT OR IGNORE``).
        """
        if not len(batch):
            return JoinedPairs.empty(batch.model)
        keys = self.keys(batch.model, batch.prediction_ids)
        fresh = self._fresh(keys)
        if fresh.size < len(batch):
            batch, keys = _take_batch(batch, fresh), keys[fresh]
        else:  # the features are not needed here: do not keep them while buffered
            batch = dataclasses.replace(batch, numeric={}, categorical={})
        joined = np.zeros(keys.size, dtype=np.bool_)
        start = self._buffered_rows
        self._buffer.append((batch, keys, joined))
        self._buffer_starts.append(start)
        self._buffered_keys.update(zip(keys.tolist(), range(start, start + keys.size), strict=True))
        self._buffered_rows += keys.size
        pairs = self._join_pending(batch, keys, joined) if self._pending else JoinedPairs.empty(batch.model)
        if self._buffered_rows >= self.flush_rows:
            self.flush()
        return pairs

    def _fresh(self, keys: np.ndarray) -> np.ndarray:
        """Rows whose key is neither buffered nor repeated earlier in ``keys``."""
        _, first = np.unique(keys, return_index=True)
        first.sort()
        buffered = self._buffered_keys
        if buffered:
            first = first[
                np.fromiter((key not in buffered for key in keys[first].tolist()), np.bool_, first.size)
            ]
        return first

    def _stored(self, keys: np.ndarray) -> dict[int, tuple[int, int]]:
        """``{key: (loc, joined)}`` of the keys present in the index."""
        found: dict[int, tuple[int, int]] = {}
        if not keys.size:
            return found
        payload = orjson.dumps(keys, option=orjson.OPT_SERIALIZE_NUMPY)
        for run in self._runs():
            for key, loc, joined in self._db.execute(
                f"SELECT k.key, k.loc, k.joined FROM json_each(?) j CROSS JOIN prediction_keys_{run} k"
                " ON k.key = j.value",
                (payload,),
            ):
                found.setdefault(key, (loc, joined))  # the oldest run's row: the first prediction
        return found

    def _runs(self, part: int | None = None) -> list[int]:
        """Key runs, oldest data first (a higher level holds older data; so does a lower run number)."""
        query = "SELECT run FROM key_runs" + (" WHERE part = ?" if part is not None else "")
        rows = self._db.execute(query + " ORDER BY level DESC, run", () if part is None else (part,))
        return [run for (run,) in rows.fetchall()]

    def _new_run(self, part: int, level: int) -> int:
        run = self._db.execute("INSERT INTO key_runs (part, level) VALUES (?, ?)", (part, level)).lastrowid
        assert run is not None
        self._db.execute(
            f"CREATE TABLE prediction_keys_{run}"
            " (key INTEGER PRIMARY KEY, loc INTEGER NOT NULL, joined INTEGER NOT NULL)"
        )
        return run

    def _drop_run(self, run: int) -> None:
        self._db.execute(f"DROP TABLE prediction_keys_{run}")
        self._db.execute("DELETE FROM key_runs WHERE run = ?", (run,))

    def _merge(self, part: int) -> None:
        """Merge every ``MERGE_FANOUT`` runs of a level into one run of the next (inside the flush)."""
        level = 0
        while True:
            runs = [
                run
                for (run,) in self._db.execute(
                    "SELECT run FROM key_runs WHERE part = ? AND level = ? ORDER BY run", (part, level)
                ).fetchall()
            ]
            if len(runs) < MERGE_FANOUT:
                if not self._db.execute(
                    "SELECT EXISTS (SELECT 1 FROM key_runs WHERE part = ? AND level > ?)", (part, level)
                ).fetchone()[0]:
                    return
                level += 1
                continue
            merged = self._new_run(part, level + 1)
            union = " UNION ALL ".join(
                f"SELECT key, loc, joined, {age} AS age FROM prediction_keys_{run}"
                for age, run in enumerate(runs)
            )
            # In key order, so the new B-tree is written page after page; the oldest row of a key wins.
            self._db.execute(
                f"INSERT OR IGNORE INTO prediction_keys_{merged}"
                f" SELECT key, loc, joined FROM ({union}) ORDER BY key, age"
            )
            for run in runs:
                self._drop_run(run)

    def _join_pending(self, batch: PredictionBatch, keys: np.ndarray, joined: np.ndarray) -> JoinedPairs:
        """Join freshly buffered predictions with labels that were waiting for them."""
        rows = self._db.execute(
            "SELECT p.key, p.prediction_id, p.time_unix_nano, p.value, p.value_class"
            " FROM json_each(?) j CROSS JOIN pending_labels p ON p.key = j.value WHERE p.model = ?",
            (orjson.dumps(keys, option=orjson.OPT_SERIALIZE_NUMPY), batch.model),
        ).fetchall()
        if not rows:
            return JoinedPairs.empty(batch.model)
        position = {key: i for i, key in enumerate(keys.tolist())}
        matched = [(position[r[0]], r) for r in rows if batch.prediction_ids[position[r[0]]] == r[1]]
        if not matched:
            return JoinedPairs.empty(batch.model)
        prediction_rows = np.array([m[0] for m in matched], dtype=np.intp)
        labels = LabelBatch(
            batch.model,
            np.array([m[1][2] for m in matched], dtype=np.int64),
            np.array([m[1][1] for m in matched], dtype=object),
            np.array([np.nan if m[1][3] is None else m[1][3] for m in matched], dtype=np.float64),
            np.array([m[1][4] for m in matched], dtype=object),
        )
        joined[prediction_rows] = True
        self._db.executemany("DELETE FROM pending_labels WHERE key = ?", ((m[1][0],) for m in matched))
        self._pending -= len(matched)
        return _Chunk.of([batch]).pairs(prediction_rows, labels, np.arange(len(matched)))

    def flush(self) -> None:
        """Write the buffered predictions (one chunk per (model, version, partition), one sorted
        key insert per partition) and the joins of stored predictions, in one transaction."""
        if not self._buffer and not self._joined_stored:
            return
        buffer = self._buffer
        self._buffer, self._buffer_starts, self._buffered_keys, self._buffered_rows = [], [], {}, 0
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (batch, _, _) in enumerate(buffer):
            groups.setdefault((batch.model, batch.version), []).append(i)
        db = self._db
        with atomic(db):
            index_rows: dict[int, list[np.ndarray]] = {}
            ceiling = (time.time_ns() // self.partition_nanos + 1) * self.partition_nanos
            for (model, version), members in groups.items():
                chunk = _Chunk.of([buffer[i][0] for i in members])
                keys = np.concatenate([buffer[i][1] for i in members])
                joined = np.concatenate([buffer[i][2] for i in members])
                parts = np.minimum(chunk.time, ceiling) // self.partition_nanos
                for part in np.unique(parts).tolist():
                    rows = np.flatnonzero(parts == part)
                    self._ensure_partition(part)
                    number = db.execute(
                        "INSERT INTO prediction_chunks (part, model, version, data) VALUES (?, ?, ?, ?)",
                        (part, model, version, chunk.take(rows).to_blob()),
                    ).lastrowid
                    assert number is not None
                    loc = (np.int64(number) << np.int64(_ROW_BITS)) + np.arange(rows.size, dtype=np.int64)
                    index_rows.setdefault(part, []).append(
                        np.column_stack([keys[rows], loc, joined[rows].astype(np.int64)])
                    )
            if self._joined_stored:
                payload = orjson.dumps(sorted(self._joined_stored))
                self._joined_stored = set()
                for run in self._runs():
                    db.execute(
                        f"UPDATE prediction_keys_{run} SET joined = 1"
                        " WHERE key IN (SELECT value FROM json_each(?))",
                        (payload,),
                    )
            for part, arrays in index_rows.items():
                table = np.concatenate(arrays)
                table = table[np.argsort(table[:, 0], kind="stable")]
                db.execute(
                    f"INSERT OR IGNORE INTO prediction_keys_{self._new_run(part, 0)}"
                    " SELECT value->>0, value->>1, value->>2 FROM json_each(?)",
                    (orjson.dumps(table, option=orjson.OPT_SERIALIZE_NUMPY),),
                )
                self._merge(part)

    def _ensure_partition(self, part: int) -> None:
        start = part * self.partition_nanos
        self._db.execute(
            "INSERT OR IGNORE INTO partitions VALUES (?, ?, ?)", (part, start, start + self.partition_nanos)
        )

    # Labels.

    def add_labels(self, batch: LabelBatch) -> JoinedPairs:
        """Join the batch's labels with their predictions (buffered or stored); keep the others pending.

        A label whose prediction id was already joined is ignored (a duplicate or a retry);
        of several labels for one id still pending, the first wins.
        """
        n = len(batch)
        model = batch.model
        if not n:
            return JoinedPairs.empty(model)
        keys = self.keys(model, batch.prediction_ids)
        _, first = np.unique(keys, return_index=True)
        first.sort()
        ids = batch.prediction_ids
        parts: list[JoinedPairs] = []
        unmatched: list[int] = []
        # Buffered predictions: found in memory.
        todo: list[int] = []
        found: dict[int, tuple[list[int], list[int]]] = {}  # buffer batch -> (its rows, label rows)
        buffered = self._buffered_keys
        for row, key in zip(first.tolist(), keys[first].tolist(), strict=True):
            where = buffered.get(key)
            if where is None:
                todo.append(row)
                continue
            index = bisect.bisect_right(self._buffer_starts, where) - 1
            rows_of = found.setdefault(index, ([], []))
            rows_of[0].append(where - self._buffer_starts[index])
            rows_of[1].append(row)
        for index, (in_batch, in_labels) in found.items():
            prediction_batch, _, joined = self._buffer[index]
            p_rows, l_rows = np.array(in_batch, np.intp), np.array(in_labels, np.intp)
            same = (prediction_batch.prediction_ids[p_rows] == ids[l_rows]) & (
                prediction_batch.model == model
            )
            todo.extend(l_rows[~same].tolist())  # a hash collision: look in the store
            p_rows, l_rows = p_rows[same], l_rows[same]
            expired = prediction_batch.time_unix_nano[p_rows] < self._cutoff
            unmatched.extend(l_rows[expired & ~joined[p_rows]].tolist())  # as if already dropped
            ok = ~joined[p_rows] & ~expired
            joined[p_rows[ok]] = True
            if ok.any():
                parts.append(_Chunk.of([prediction_batch]).pairs(p_rows[ok], batch, l_rows[ok]))
        # Stored predictions: through the key index.
        if todo:
            rows = np.array(todo, dtype=np.intp)
            stored = self._stored(keys[rows])
            newly: list[int] = []
            by_chunk: dict[int, list[tuple[int, int]]] = {}
            for row in todo:
                hit = stored.get(int(keys[row]))
                if hit is None:
                    unmatched.append(row)
                elif not hit[1] and int(keys[row]) not in self._joined_stored:
                    by_chunk.setdefault(hit[0] >> _ROW_BITS, []).append((hit[0] & _ROW_MASK, row))
            for number, hits in by_chunk.items():
                chunk = self._chunk(number)
                if chunk is None or chunk.model != model:
                    unmatched.extend(row for _, row in hits)
                    continue
                chunk_rows = np.array([h[0] for h in hits], dtype=np.intp)
                label_rows = np.array([h[1] for h in hits], dtype=np.intp)
                ok = (chunk.ids[chunk_rows] == ids[label_rows]) & (chunk.time[chunk_rows] >= self._cutoff)
                unmatched.extend(label_rows[~ok].tolist())
                if ok.any():
                    parts.append(chunk.pairs(chunk_rows[ok], batch, label_rows[ok]))
                    newly.extend(int(keys[row]) for row in label_rows[ok].tolist())
            self._joined_stored.update(newly)
        if unmatched:
            self._keep_pending(batch, keys, np.array(sorted(unmatched), dtype=np.intp))
        return JoinedPairs.concat(model, parts) if parts else JoinedPairs.empty(model)

    def _chunk(self, number: int) -> _Chunk | None:
        chunk = self._chunks.get(number)
        if chunk is not None:
            self._chunks.move_to_end(number)
            return chunk
        row = self._db.execute(
            "SELECT model, version, data FROM prediction_chunks WHERE chunk = ?", (number,)
        ).fetchone()
        if row is None:
            return None
        chunk = self._chunks[number] = _Chunk.from_blob(*row)
        while len(self._chunks) > CACHED_CHUNKS:
            self._chunks.popitem(last=False)
        return chunk

    def _keep_pending(self, batch: LabelBatch, keys: np.ndarray, rows: np.ndarray) -> None:
        classes = _label_class(batch)
        values = batch.value[rows]
        db = self._db
        with atomic(db):
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO pending_labels VALUES (?, ?, ?, ?, ?, ?)",
                zip(
                    keys[rows].tolist(),
                    [batch.model] * rows.size,
                    batch.prediction_ids[rows].tolist(),
                    batch.time_unix_nano[rows].tolist(),
                    [None if v != v else v for v in values.tolist()],
                    classes[rows].tolist(),
                    strict=True,
                ),
            )
            self._pending += db.total_changes - before

    # Expiry and counts.

    def expire(self, now_unix_nano: int) -> int:
        """Drop partitions that ended before ``now - ttl`` and older pending labels; return how
        many waiting (unjoined) predictions and labels were dropped."""
        self.flush()
        cutoff = now_unix_nano - self.ttl_nanos
        self._cutoff = max(self._cutoff, cutoff)
        db = self._db
        with atomic(db):
            deleted = 0
            for (part,) in db.execute(
                "SELECT part FROM partitions WHERE end_unix_nano <= ?", (cutoff,)
            ).fetchall():
                for run in self._runs(part):
                    waiting = f"SELECT COUNT(*) FROM prediction_keys_{run} WHERE joined = 0"
                    deleted += db.execute(waiting).fetchone()[0]
                    self._drop_run(run)
                db.execute("DELETE FROM prediction_chunks WHERE part = ?", (part,))
                db.execute("DELETE FROM partitions WHERE part = ?", (part,))
            labels = db.execute("DELETE FROM pending_labels WHERE time_unix_nano < ?", (cutoff,)).rowcount
        self._pending -= labels
        self._chunks.clear()
        return int(deleted + labels)

    def counts(self) -> dict[str, int]:
        """Waiting predictions, pending labels and joined predictions (for tests and health)."""
        self.flush()
        waiting = joined = 0
        for run in self._runs():
            w, j = self._db.execute(
                "SELECT COUNT(*) - COALESCE(SUM(joined), 0), COALESCE(SUM(joined), 0)"
                f" FROM prediction_keys_{run}"
            ).fetchone()
            waiting += w
            joined += j
        pending = int(self._db.execute("SELECT COUNT(*) FROM pending_labels").fetchone()[0])
        return {"predictions": int(waiting), "pending_labels": pending, "joined": int(joined)}


def _take_batch(batch: PredictionBatch, rows: np.ndarray) -> PredictionBatch:
    return PredictionBatch(
        batch.model,
        batch.version,
        batch.time_unix_nano[rows],
        batch.prediction_ids[rows],
        {},
        {},
        batch.prediction[rows],
        None if batch.prediction_class is None else batch.prediction_class[rows],
        batch.score[rows],
    )
