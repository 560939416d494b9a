"""The collector's versioned state in SQLite (WAL): reference profiles, window history, configurations.

One file, ``<data_dir>/modeltel.sqlite``, shared by the running collector and the
command line (``modeltel reference build`` writes profiles the collector reads):

``reference_profiles``
    every reference profile ever saved, one row per ``(model, version, hash)`` where
    ``hash`` is :meth:`ModelProfile.content_hash`; saving the same profile again adds
    nothing (``created_at`` is when it was first saved);
``current_profiles``
    the profile in use per ``(model, version)``: the one saved last (saving an older
    profile again makes it current again);
``window_history``
    the results of every window a processor reported, one row per ``(model, version,
    processor, window_start_unix_nano)``: the window's end, its metrics as JSON (what
    they are is up to the processor) and when they were last recorded; recording a window
    again replaces its row (a late label updates a performance window);
``config_versions``
    every collector configuration applied, keyed by the sha256 of its canonical JSON,
    with when it was first and last applied.

Times are stored as ISO-8601 UTC strings with microseconds. The store is safe to use
from several threads (one connection behind a lock) and from several processes (WAL
mode, with a busy timeout).

Examples
--------
>>> import tempfile
>>> import numpy as np
>>> from modeltel_collector.drift.profile import ModelProfileBuilder
>>> builder = ModelProfileBuilder("salary", "1.0")
>>> builder.update({"years": np.array([1.0, 5.0, 9.0])})
>>> profile = builder.build()
>>> with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp)) as store:
...     digest = store.save_profile(profile)
...     again = store.save_profile(profile)
...     loaded = store.load_profile("salary", "1.0")
...     rows = len(store.profile_history("salary", "1.0"))
>>> digest == again == loaded.content_hash() == profile.content_hash(), rows
(True, 1)
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from modeltel_collector.config import CollectorConfig
from modeltel_collector.drift.profile import ModelProfile, canonical_json

FILE_NAME = "modeltel.sqlite"
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reference_profiles (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    profile TEXT NOT NULL,
    PRIMARY KEY (model, version, hash)
);
CREATE TABLE IF NOT EXISTS current_profiles (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    hash TEXT NOT NULL,
    set_at TEXT NOT NULL,
    PRIMARY KEY (model, version),
    FOREIGN KEY (model, version, hash) REFERENCES reference_profiles (model, version, hash)
);
CREATE TABLE IF NOT EXISTS window_history (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    processor TEXT NOT NULL,
    window_start_unix_nano INTEGER NOT NULL,
    window_end_unix_nano INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (model, version, processor, window_start_unix_nano)
);
CREATE TABLE IF NOT EXISTS config_versions (
    hash TEXT PRIMARY KEY,
    first_applied_at TEXT NOT NULL,
    last_applied_at TEXT NOT NULL,
    config TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class ProfileRecord:
    """One stored reference profile (without its body)."""

    model: str
    version: str
    hash: str
    created_at: datetime
    current: bool


@dataclass(frozen=True)
class ConfigVersion:
    """One configuration version the collector applied."""

    hash: str
    first_applied_at: datetime
    last_applied_at: datetime
    config: dict[str, Any]


@dataclass(frozen=True)
class WindowRecord:
    """The recorded results of one window of one processor for one model version."""

    model: str
    version: str
    processor: str
    window_start_unix_nano: int
    window_end_unix_nano: int
    metrics: dict[str, Any]
    recorded_at: datetime


def _finite(data: Any) -> Any:
    """``data`` with every non-finite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {str(key): _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


def config_hash(config: CollectorConfig) -> str:
    """sha256 (hex) of the canonical JSON of ``config.model_dump(mode="json")``.

    Examples
    --------
    >>> config_hash(CollectorConfig()) == config_hash(CollectorConfig.model_validate({}))
    True
    >>> config_hash(CollectorConfig()) == config_hash(CollectorConfig(data_dir=Path("elsewhere")))
    False

    """
    return hashlib.sha256(canonical_json(config.model_dump(mode="json"))).hexdigest()


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="microseconds")


class Store:
    """Reference profiles, window history and configuration versions in ``data_dir/modeltel.sqlite``.

    Parameters
    ----------
    data_dir
        The collector's data directory (created if missing).
    clock
        Now, in Unix seconds (tests pass a controllable clock).
    """

    def __init__(self, data_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / FILE_NAME
        self._clock = clock
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None
        )
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.executescript(_SCHEMA)

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the store is unusable afterwards)."""
        with self._lock:
            self._connection.close()

    def _now(self) -> str:
        return _timestamp(self._clock())

    # Reference profiles ------------------------------------------------------------------

    def save_profile(self, profile: ModelProfile) -> str:
        """Store ``profile`` (once per content hash) and make it current; return its hash."""
        digest = profile.content_hash()
        now = self._now()
        body = canonical_json(profile.to_dict()).decode()
        with self._lock, self._connection as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT OR IGNORE INTO reference_profiles (model, version, hash, created_at, profile)"
                " VALUES (?, ?, ?, ?, ?)",
                (profile.model, profile.version, digest, now, body),
            )
            db.execute(
                "INSERT INTO current_profiles (model, version, hash, set_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (model, version) DO UPDATE SET hash = excluded.hash, set_at = excluded.set_at",
                (profile.model, profile.version, digest, now),
            )
        return digest

    def load_profile(self, model: str, version: str, hash: str | None = None) -> ModelProfile | None:
        """The current profile of ``(model, version)`` (or the one with ``hash``); ``None`` if absent."""
        if hash is None:
            query = (
                "SELECT p.profile FROM current_profiles c JOIN reference_profiles p"
                " USING (model, version, hash) WHERE c.model = ? AND c.version = ?"
            )
            parameters: tuple[str, ...] = (model, version)
        else:
            query = "SELECT profile FROM reference_profiles WHERE model = ? AND version = ? AND hash = ?"
            parameters = (model, version, hash)
        with self._lock:
            row = self._connection.execute(query, parameters).fetchone()
        return None if row is None else ModelProfile.from_dict(json.loads(row[0]))

    def profile_history(self, model: str, version: str) -> list[ProfileRecord]:
        """The profiles stored for ``(model, version)``, oldest first."""
        with self._lock:
            rows = self._connection.execute(
                "SELECT p.hash, p.created_at, c.hash IS NOT NULL FROM reference_profiles p"
                " LEFT JOIN current_profiles c USING (model, version, hash)"
                " WHERE p.model = ? AND p.version = ? ORDER BY p.created_at, p.hash",
                (model, version),
            ).fetchall()
        return [
            ProfileRecord(model, version, digest, datetime.fromisoformat(created), bool(current))
            for digest, created, current in rows
        ]

    # Window history ------------------------------------------------------------------------

    def record_window(
        self,
        model: str,
        version: str,
        processor: str,
        window_start_unix_nano: int,
        window_end_unix_nano: int,
        metrics: dict[str, Any],
    ) -> None:
        """Record a window's results, replacing what was recorded for the same window before.

        Non-finite floats in ``metrics`` are stored as ``null``.
        """
        body = canonical_json(_finite(metrics)).decode()
        with self._lock:
            self._connection.execute(
                "INSERT INTO window_history (model, version, processor, window_start_unix_nano,"
                " window_end_unix_nano, metrics, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (model, version, processor, window_start_unix_nano) DO UPDATE SET"
                " window_end_unix_nano = excluded.window_end_unix_nano, metrics = excluded.metrics,"
                " recorded_at = excluded.recorded_at",
                (
                    model,
                    version,
                    processor,
                    int(window_start_unix_nano),
                    int(window_end_unix_nano),
                    body,
                    self._now(),
                ),
            )

    def window_history(
        self,
        model: str,
        version: str | None = None,
        processor: str | None = None,
        since: int | None = None,
    ) -> list[WindowRecord]:
        """The windows recorded for ``model`` (optionally one version, one processor, and only
        windows ending after ``since`` Unix nanoseconds), by window start, version, processor."""
        query = (
            "SELECT model, version, processor, window_start_unix_nano, window_end_unix_nano, metrics,"
            " recorded_at FROM window_history WHERE model = ?"
        )
        parameters: list[Any] = [model]
        if version is not None:
            query += " AND version = ?"
            parameters.append(version)
        if processor is not None:
            query += " AND processor = ?"
            parameters.append(processor)
        if since is not None:
            query += " AND window_end_unix_nano > ?"
            parameters.append(int(since))
        query += " ORDER BY window_start_unix_nano, version, processor"
        with self._lock:
            rows = self._connection.execute(query, parameters).fetchall()
        return [
            WindowRecord(
                model, version, processor, int(start), int(end), json.loads(body), datetime.fromisoformat(at)
            )
            for model, version, processor, start, end, body, at in rows
        ]

    # Configuration versions ----------------------------------------------------------------

    def record_config(self, config: CollectorConfig, applied: dict[str, Any] | None = None) -> str:
        """Record that ``config`` is applied now; return its hash (see :func:`config_hash`).

        ``applied`` adds what the configuration only points at, such as the content of the
        alert policies file, so that a changed threshold is a new version too.
        """
        data = {**config.model_dump(mode="json"), **(applied or {})}
        body = canonical_json(data)
        digest = hashlib.sha256(body).hexdigest()
        now = self._now()
        with self._lock, self._connection as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO config_versions (hash, first_applied_at, last_applied_at, config)"
                " VALUES (?, ?, ?, ?)"
                " ON CONFLICT (hash) DO UPDATE SET last_applied_at = excluded.last_applied_at",
                (digest, now, now, body.decode()),
            )
        return digest

    def config_history(self) -> list[ConfigVersion]:
        """Every configuration version applied, by the time it was first applied."""
        with self._lock:
            rows = self._connection.execute(
                "SELECT hash, first_applied_at, last_applied_at, config FROM config_versions"
                " ORDER BY first_applied_at, hash"
            ).fetchall()
        return [
            ConfigVersion(
                digest, datetime.fromisoformat(first), datetime.fromisoformat(last), json.loads(body)
            )
            for digest, first, last, body in rows
        ]
