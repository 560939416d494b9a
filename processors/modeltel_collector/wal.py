"""The write-ahead log: a request is on disk before the collector acknowledges it.

Receivers :meth:`~WriteAheadLog.append` each accepted request (its bytes, kind and receive
time) and :meth:`~WriteAheadLog.wait` for it to be durable before they answer. One writer
thread commits whatever has queued since its last commit with one ``write`` and one
``fdatasync`` (group commit), so a busy collector pays one sync for many requests.

The log is a folder of segment files ``<first seq>.wal``, each a sequence of frames::

    length u32 | crc32 u32 | seq u64 | received_unix_nano i64 | kind u8 | payload

(little-endian; the CRC covers everything after it). Sequence numbers increase by one per
request. After a crash, :meth:`~WriteAheadLog.entries` yields the frames after the last
checkpoint for replay; a torn frame at the end of the last segment (a write cut short by
the crash, never acknowledged) is cut off. :meth:`~WriteAheadLog.truncate` deletes the
segments a checkpoint has made redundant.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

_logger = logging.getLogger(__name__)

KINDS: Final = ("logs", "labels")
"""What a frame holds: a serialized ``ExportLogsServiceRequest``, or a ``/v1/labels`` body."""
SEGMENT_BYTES: Final = 64 << 20
"""A segment is closed, and a new one started, once it holds this much."""
_HEADER = struct.Struct("<IIQqB")
_CHECKED = struct.Struct("<QqB")  # the header fields the CRC covers, before the payload
_SUFFIX = ".wal"
_FAILURES_KEPT = 64


class WalError(Exception):
    """A request could not be made durable (the disk is full or failing): it is not acknowledged."""


@dataclass(frozen=True)
class Entry:
    """One logged request."""

    seq: int
    kind: str
    received_unix_nano: int
    payload: bytes


def _frame(entry: Entry) -> bytes:
    checked = _CHECKED.pack(entry.seq, entry.received_unix_nano, KINDS.index(entry.kind))
    crc = zlib.crc32(entry.payload, zlib.crc32(checked))
    return _HEADER.pack(len(entry.payload), crc, *_CHECKED.unpack(checked)) + entry.payload


def _read_segment(path: Path) -> tuple[list[Entry], int]:
    """The whole frames of a segment, and the length of the file they fill."""
    data = path.read_bytes()
    entries: list[Entry] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, crc, seq, received, kind = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        payload = data[offset + _HEADER.size : end]
        checked = data[offset + 8 : offset + _HEADER.size]
        if end > len(data) or kind >= len(KINDS) or zlib.crc32(payload, zlib.crc32(checked)) != crc:
            break
        entries.append(Entry(seq, KINDS[kind], received, payload))
        offset = end
    return entries, offset


class WriteAheadLog:
    """Requests on disk, in order, until a checkpoint makes them redundant (see the module docstring).

    Parameters
    ----------
    directory
        The segment folder (created if missing).
    sync
        ``fdatasync`` every commit (the default). Without it a request survives a crash of
        the collector but not of the machine.
    """

    def __init__(self, directory: Path, *, sync: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sync = sync
        self._segments = self._recover()
        """First seq of each segment, oldest first; the last is the one written to."""
        self._recovered = self._last_seq
        self._next_seq = self._last_seq + 1
        self._pending: list[Entry] = []
        self._done = self._last_seq
        """Every seq up to this one was written (or failed to be)."""
        self._failures: list[tuple[int, int, str]] = []
        self._truncate_through = 0
        """Set by :meth:`truncate` for the writer thread."""
        self._closing = False
        self._condition = threading.Condition()
        self._file = self._open_segment(self._segments[-1] if self._segments else self._next_seq)
        self._writer = threading.Thread(target=self._write_loop, name="modeltel-wal", daemon=True)
        self._writer.start()

    # Recovery --------------------------------------------------------------------------------

    def _recover(self) -> list[int]:
        """Segment first-seqs; cuts a torn tail off the last segment."""
        firsts = sorted(int(path.stem) for path in self.directory.glob(f"*{_SUFFIX}") if path.stem.isdigit())
        self._last_seq = 0
        if firsts:
            last = self._path(firsts[-1])
            entries, good = _read_segment(last)
            if good < last.stat().st_size:
                _logger.warning(
                    "modeltel: %s ends with %d bytes of an incomplete write (never acknowledged); cut off",
                    last,
                    last.stat().st_size - good,
                )
                with last.open("r+b") as file:
                    file.truncate(good)
            self._last_seq = entries[-1].seq if entries else firsts[-1] - 1
        return firsts

    def entries(self, after: int) -> Iterator[Entry]:
        """The logged requests with a seq above ``after``, oldest first (for replay at start)."""
        for index, first in enumerate(self._segments):
            following = self._segments[index + 1] if index + 1 < len(self._segments) else None
            if following is not None and following <= after + 1:
                continue
            path = self._path(first)
            entries, good = _read_segment(path)
            if following is not None and good < path.stat().st_size:
                _logger.error(
                    "modeltel: %s is damaged at byte %d; the requests after it in this segment are lost",
                    path,
                    good,
                )
            for entry in entries:
                if entry.seq > after and entry.seq <= self._recovered:
                    yield entry

    def start_after(self, seq: int) -> None:
        """Number new requests after ``seq`` at least (a checkpoint's, should the log be gone)."""
        with self._condition:
            if seq < self._next_seq:
                return
            self._next_seq, self._done = seq + 1, seq
            self._file.close()
            if self._path(self._segments[-1]).stat().st_size == 0:
                self._path(self._segments.pop()).unlink()
            self._file = self._open_segment(self._next_seq)

    # Appending -------------------------------------------------------------------------------

    def append(self, kind: str, payload: bytes, received_unix_nano: int) -> int:
        """Queue a request for the next commit; its seq (pass it to :meth:`wait`)."""
        with self._condition:
            if self._closing:
                raise WalError("the write-ahead log is closed")
            seq = self._next_seq
            self._next_seq += 1
            self._pending.append(Entry(seq, kind, received_unix_nano, payload))
            self._condition.notify_all()
        return seq

    def wait(self, seq: int, timeout: float | None = None) -> None:
        """Return once request ``seq`` is durable; :class:`WalError` if it could not be written."""
        with self._condition:
            if not self._condition.wait_for(lambda: self._done >= seq, timeout):
                raise WalError(f"request {seq} was not written within {timeout} seconds")
            for first, last, reason in self._failures:
                if first <= seq <= last:
                    raise WalError(f"the request could not be written to the write-ahead log: {reason}")

    @property
    def durable_seq(self) -> int:
        """Every request up to this seq has been committed (or failed)."""
        with self._condition:
            return self._done

    def truncate(self, through: int) -> None:
        """Delete the segments holding only requests up to ``through`` (done by the writer thread)."""
        with self._condition:
            self._truncate_through = max(self._truncate_through, through)
            self._condition.notify_all()

    def close(self) -> None:
        """Write what is queued, then stop."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        self._writer.join()
        self._file.close()

    # The writer thread ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._pending or self._closing or self._truncate_through)
                group, self._pending = self._pending, []
                through, self._truncate_through = self._truncate_through, 0
                closing = self._closing
            if group:
                self._commit(group)
            if through:
                self._delete_through(through)
            if closing and not group:
                return

    def _commit(self, group: list[Entry]) -> None:
        error = ""
        try:
            os.write(self._file.fileno(), b"".join(_frame(entry) for entry in group))
            if self._sync:
                os.fdatasync(self._file.fileno())
        except OSError as failure:
            error = f"{failure.strerror or failure} ({self._file.name})"
            _logger.error("modeltel: write-ahead log: %s; %d requests not acknowledged", error, len(group))
            self._rotate(group[-1].seq + 1)  # the failed write may have left a partial frame
        with self._condition:
            if error:
                self._failures = [*self._failures[-_FAILURES_KEPT:], (group[0].seq, group[-1].seq, error)]
            self._done = group[-1].seq
            self._condition.notify_all()
        if not error and self._file.tell() >= SEGMENT_BYTES:
            self._rotate(group[-1].seq + 1)

    def _delete_through(self, through: int) -> None:
        """Delete the segments holding only requests up to ``through`` (the writer thread's job)."""
        with self._condition:
            done = self._done
        if self._segments[-1] <= done <= through:  # the segment written to is redundant too
            self._rotate(done + 1)
        while len(self._segments) > 1 and self._segments[1] <= through + 1:
            self._path(self._segments.pop(0)).unlink(missing_ok=True)

    def _rotate(self, first: int) -> None:
        self._file.close()
        self._file = self._open_segment(first)

    def _path(self, first: int) -> Path:
        return self.directory / f"{first:020d}{_SUFFIX}"

    def _open_segment(self, first: int) -> BinaryIO:
        if not self._segments or self._segments[-1] != first:
            self._segments.append(first)
        file = self._path(first).open("ab", buffering=0)
        _sync_directory(self.directory)
        return file


def _sync_directory(directory: Path) -> None:
    """Make a new file's directory entry durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
