"""The processors' state, committed at each checkpoint together with the log position it reflects.

``<data_dir>/state.sqlite`` holds the checkpoint (every processor's snapshot and the
sequence number of the last request of the write-ahead log it includes), the digests of
recent requests (so a retried export is applied once) and the tables processors keep rows
in (the label join, the audit log's unwritten rows). The pipeline thread keeps one
transaction open on it between checkpoints, so whatever the processors write is committed
atomically with the checkpoint that accounts for it, or not at all: after a crash the
state is that of the last checkpoint and the log replays what came after.

Processors use :attr:`StateDb.connection` from the pipeline thread only, and make their
own atomic steps with ``SAVEPOINT`` (never ``BEGIN``/``COMMIT``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

_logger = logging.getLogger(__name__)

FILE_NAME: Final = "state.sqlite"
SCHEMA_VERSION: Final = 1
"""``PRAGMA user_version``; a file of another version is set aside, not read."""

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS checkpoint"
    " (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, state TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS seen_requests"
    " (digest BLOB PRIMARY KEY, received_unix_nano INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS seen_requests_time ON seen_requests (received_unix_nano)",
)


@contextmanager
def atomic(connection: sqlite3.Connection) -> Iterator[None]:
    """A step that is written whole or not at all, inside the open transaction (a savepoint)."""
    connection.execute("SAVEPOINT step")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK TO step")
        connection.execute("RELEASE step")
        raise
    connection.execute("RELEASE step")


class StateDb:
    """``data_dir/state.sqlite`` (see the module docstring); a transaction is always open."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / FILE_NAME
        self.connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        version = self.connection.execute("PRAGMA user_version").fetchone()[0]
        tables = self.connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        if tables and version != SCHEMA_VERSION:
            self.connection.close()
            aside = self.path.with_name(f"{self.path.name}.v{version}")
            self.path.replace(aside)
            _logger.warning("modeltel: %s has another format (%d); moved to %s", self.path, version, aside)
            self.connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=FULL")
        self.connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self.connection.execute("BEGIN")
        for statement in _SCHEMA:
            self.connection.execute(statement)

    def load(self) -> tuple[int, dict[str, Any]] | None:
        """The last checkpoint: the log position it includes, and the processors' state."""
        row = self.connection.execute("SELECT seq, state FROM checkpoint").fetchone()
        return None if row is None else (int(row[0]), json.loads(row[1]))

    def commit(self, seq: int, state: dict[str, Any]) -> None:
        """Save a checkpoint with everything written since the last one, atomically."""
        self.connection.execute(
            "INSERT OR REPLACE INTO checkpoint (id, seq, state) VALUES (1, ?, ?)", (seq, json.dumps(state))
        )
        self.connection.execute("COMMIT")
        self.connection.execute("BEGIN")

    def seen(self, digest: bytes, received_unix_nano: int) -> bool:
        """Whether a request with this digest was applied already; else remember it."""
        cursor = self.connection.execute(
            "INSERT OR IGNORE INTO seen_requests VALUES (?, ?)", (digest, received_unix_nano)
        )
        return cursor.rowcount == 0

    def forget_before(self, received_unix_nano: int) -> None:
        """Forget the digests of requests received before this time."""
        self.connection.execute(
            "DELETE FROM seen_requests WHERE received_unix_nano < ?", (received_unix_nano,)
        )

    def close(self) -> None:
        """Close, dropping what was written since the last :meth:`commit`."""
        self.connection.execute("ROLLBACK")
        self.connection.close()
