"""OTLP logs requests read from their wire bytes: every attribute of a request as numpy columns.

Reading attributes through upb message objects costs about 200 ns per attribute whatever
the Python code does, more than all the rest of extraction. So requests are decoded with
private *views* of the logs schema (the real ``logs.proto`` and the files it imports, in
a private descriptor pool, with one field declared ``bytes`` instead of its message type),
and the bytes are parsed with numpy, all records or all attributes at once.

Reading a request
-----------------
1. The records view (``ScopeLogs.log_records`` as bytes): upb validates everything around
   the records and hands over each record's bytes.
2. The record walk, when every record has the first one's fields in the same order (one
   encoder: the usual request): the records are joined and walked field by field for all
   records at once, which locates every attribute without a Python object per attribute.
   It reads the fields of ``LogRecord`` but the body, with lengths of one or two bytes and
   one-byte varints; ``event_name`` and ``severity_text`` are checked to be UTF-8.
3. Otherwise the attributes view (``LogRecord.attributes`` as bytes): upb validates every
   field but the attributes, and hands over each ``KeyValue`` 's bytes.

Then the attributes, a ``KeyValue`` each, are parsed from one buffer for the layout every
OTLP encoder writes for scalar values::

    0x0A klen key 0x12 vlen AnyValue        (klen, vlen < 128)
    AnyValue: 0x21 + 8 bytes (double) | 0x18 + varint (int) | 0x10 + byte (bool)
              | 0x0A slen utf-8 (string)

- Column by column, when every record has the first record's keys in the same order with
  values of the same kinds, all in that layout (:attr:`LogsTable.width`): one comparison of
  each attribute's key, tag and lengths with the first record's, then each column's values
  at fixed offsets. A column of strings that are all equal is decoded once.
- Otherwise attribute by attribute: keys grouped by a hash of their bytes, checked byte for
  byte; each distinct key and string decoded once.

Exactness
---------
The result is what the real schema decodes, for every input:

- A ``KeyValue`` outside the fast layout (a string over 125 bytes, fields out of order,
  repeated or unknown fields, a non-minimal length, an empty key or value, bytes, arrays,
  maps) is decoded by upb: all such attributes of a request are wrapped, in order, in one
  synthetic ``ExportLogsServiceRequest`` (one resource, scope and record, so nesting depth
  limits apply as in the original) decoded with the real schema.
- Records the walk cannot read exactly (a body, unknown fields, a field of another wire
  type, a repeated singular field, longer lengths, records of different shapes) go to
  the attributes view, which upb validates.
- A request the real schema cannot decode is refused with :class:`InvalidPayload`, whose
  message is always that of the real ``ExportLogsServiceRequest.FromString`` on the whole
  payload (run again when anything fails: an error is never on the fast path): upb's
  errors in a view or in the synthetic request, or invalid UTF-8 in a key or string.
  The views are never stricter than the real schema: they declare the same fields with the
  same types, but one as plain bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import Any, NamedTuple

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from modeltel._otlp import field
from modeltel_collector.receivers.signals import LOGS

# Attribute value kinds, as ``AnyValue``'s oneof; OTHER: a field added to it since, such as
# ``string_value_strindex`` (an index into a profiles string table, meaningless in logs).
NONE, DOUBLE, INT, BOOL, STRING, BYTES, ARRAY, MAP, OTHER = range(9)
KIND_FIELDS = (
    None,
    "double_value",
    "int_value",
    "bool_value",
    "string_value",
    "bytes_value",
    "array_value",
    "kvlist_value",
)
"""The ``AnyValue`` field of each kind (``None``: no value set)."""
_KINDS = {name: kind for kind, name in enumerate(KIND_FIELDS)}

_WIDTH = 128
"""Bytes gathered at most from one offset: a key or a fast string (< 128), a varint (10)."""
_PAD = bytes(512)
"""Zeros after the joined bytes: reads at fixed offsets past an attribute stay inside."""


def _view_request_type(message: str, field_number: int) -> Any:
    """``ExportLogsServiceRequest`` of the real schema but for one field of ``logs.proto`` as bytes."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(common_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(resource_pb2.DESCRIPTOR.serialized_pb)
    logs = descriptor_pb2.FileDescriptorProto.FromString(logs_pb2.DESCRIPTOR.serialized_pb)
    [descriptor] = [m for m in logs.message_type if m.name == message]
    [field] = [f for f in descriptor.field if f.number == field_number]
    field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
    field.ClearField("type_name")
    pool.Add(logs)
    pool.AddSerializedFile(logs_service_pb2.DESCRIPTOR.serialized_pb)
    name = ExportLogsServiceRequest.DESCRIPTOR.full_name
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


_RecordsView = _view_request_type("ScopeLogs", 2)
"""Log records as bytes: everything around them validated by upb, the records walked here."""
_AttributesView = _view_request_type("LogRecord", 6)
"""Attributes as bytes: everything but the attributes validated by upb."""
_resource_logs = attrgetter("resource_logs")
_scope_logs = attrgetter("scope_logs")
_log_records = attrgetter("log_records")
_attributes = attrgetter("attributes")
_event_name = attrgetter("event_name")
_time = attrgetter("time_unix_nano")


@dataclass(frozen=True, eq=False)
class LogsTable:
    """A logs request as columns: one entry per log record, and one per attribute.

    Attributes are in request order (records in order, each record's attributes in order);
    ``record`` says whose each is. Per attribute, ``kind`` says which value column holds
    its value: ``number`` for ``DOUBLE`` and ``INT`` (the int as float64), ``integer`` for
    ``INT`` (exact) and ``BOOL`` (0 or 1), ``text`` and ``length`` for ``STRING``.
    """

    event_names: list[str]
    """``LogRecord.event_name`` of each record."""
    time_unix_nano: np.ndarray
    """uint64 ``LogRecord.time_unix_nano`` of each record."""
    counts: np.ndarray
    """Attributes of each record (intp)."""
    record: np.ndarray
    """The record of each attribute (intp)."""
    key: np.ndarray
    """The key of each attribute, an index into ``keys`` (intp)."""
    keys: list[str]
    """Distinct keys of the request, in order of first appearance."""
    kind: np.ndarray
    """uint8, ``NONE`` ... ``OTHER``."""
    number: np.ndarray
    integer: np.ndarray
    text: np.ndarray
    """object: ``str`` where ``kind`` is ``STRING``, else ``None``."""
    length: np.ndarray
    """Length of each string (non-zero exactly when the string is not empty)."""
    width: int
    """Uniform requests: every record has ``width`` attributes, the first record's keys in the
    same order, each of the same kind in every record (the attribute columns are then
    ``(records, width)`` arrays); 0 otherwise."""
    _observed: Callable[[np.ndarray], np.ndarray]

    def observed_time_unix_nano(self, records: np.ndarray) -> np.ndarray:
        """uint64 ``LogRecord.observed_time_unix_nano`` of the given records."""
        return self._observed(records)


class _Columns(NamedTuple):
    key: np.ndarray
    keys: list[str]
    kind: np.ndarray
    number: np.ndarray
    integer: np.ndarray
    text: np.ndarray
    length: np.ndarray
    width: int


def _table(
    names: list[str],
    times: np.ndarray,
    counts: np.ndarray,
    columns: _Columns,
    observed: Callable[[np.ndarray], np.ndarray],
) -> LogsTable:
    c = columns
    record = np.repeat(np.arange(counts.size), counts)
    return LogsTable(
        names,
        times,
        counts,
        record,
        c.key,
        c.keys,
        c.kind,
        c.number,
        c.integer,
        c.text,
        c.length,
        c.width,
        observed,
    )


def invalid(payload: bytes, cause: Exception | None = None) -> Exception:
    """The :class:`InvalidPayload` for a request found invalid: upb's own error, as before.

    The real schema decodes the whole payload again, so the message is the one the
    receivers gave when they decoded requests themselves.
    """
    try:
        LOGS.parse(payload)
    except Exception as error:  # InvalidPayload
        return error
    # The real schema accepts what the fast path refused: a bug, not a bad request.
    return AssertionError(f"wire.read_logs refused a valid ExportLogsServiceRequest ({cause!r})")


def read_logs(payload: bytes) -> LogsTable:
    """Decode a serialized ``ExportLogsServiceRequest``; :class:`InvalidPayload` if it is not one."""
    try:
        request = _RecordsView.FromString(payload)
    except DecodeError:
        raise invalid(payload) from None
    records = list(
        chain.from_iterable(map(_log_records, chain.from_iterable(map(_scope_logs, request.resource_logs))))
    )
    try:
        table = _walk_records(records) if records else None
        return _read_attributes(payload) if table is None else table
    except (DecodeError, UnicodeDecodeError) as error:
        raise invalid(payload, error) from None


def _read_attributes(payload: bytes) -> LogsTable:
    """Any request: upb decodes the records, handing over each attribute's bytes."""
    request = _AttributesView.FromString(payload)
    records = list(
        chain.from_iterable(map(_log_records, chain.from_iterable(map(_scope_logs, request.resource_logs))))
    )
    n_records = len(records)
    lists = list(map(_attributes, records))
    counts = np.fromiter(map(len, lists), np.intp, n_records)
    flat: list[bytes] = list(chain.from_iterable(lists))
    lengths = np.fromiter(map(len, flat), np.intp, len(flat))
    flat.append(_PAD)
    buf = b"".join(flat)
    del flat

    def observed(rows: np.ndarray) -> np.ndarray:
        return np.fromiter((records[r].observed_time_unix_nano for r in rows.tolist()), np.uint64, rows.size)

    return _table(
        list(map(_event_name, records)),
        np.fromiter(map(_time, records), np.uint64, n_records),
        counts,
        _AttributeParser(buf, np.cumsum(lengths) - lengths, lengths, counts).parse(),
        observed,
    )


# LogRecord fields by tag (field number and wire type), but the body (an AnyValue to validate).
_TIME, _SEVERITY_TEXT, _ATTRIBUTE, _OBSERVED, _EVENT_NAME = 0x09, 0x1A, 0x32, 0x59, 0x62
_RECORD_TAGS = {_TIME, 0x10, _SEVERITY_TEXT, _ATTRIBUTE, 0x38, 0x45, 0x4A, 0x52, _OBSERVED, _EVENT_NAME}


def _record_fields(record: bytes) -> list[int] | None:
    """The tags of a record's fields in order, if the walk can read it (else ``None``)."""
    tags: list[int] = []
    at, end = 0, len(record)
    while at < end:
        tag = record[at]
        if tag not in _RECORD_TAGS or (tag != _ATTRIBUTE and tag in tags):
            return None  # the body, an unknown field or wire type, a repeated singular field
        wire = tag & 7
        if wire == 1:
            at += 9
        elif wire == 5:
            at += 5
        elif wire == 0:
            at += 2  # a one-byte varint (checked by the walk)
        else:
            size = record[at + 1] if at + 1 < end else 0
            if size >= 0x80:
                size = (size & 0x7F) | (record[at + 2] << 7) if at + 2 < end else 0
                at += 1
            at += 2 + size
        tags.append(tag)
    return tags if at == end else None


def _walk_records(records: list[bytes]) -> LogsTable | None:
    """The table of a request whose records all have the first one's fields, in the same order.

    The records are joined and walked field by field, all at once (numpy over records): no
    Python object per attribute. Records the walk cannot read exactly (a body to validate,
    unknown fields, lengths over two bytes, another sequence of fields): ``None``.
    """
    template = _record_fields(records[0])
    if template is None:
        return None
    n_records = len(records)
    sizes = np.fromiter(map(len, records), np.intp, n_records)
    ends = np.cumsum(sizes)
    records.append(_PAD)
    buf = b"".join(records)
    records.pop()
    data = np.frombuffer(buf, np.uint8)
    fields = _walk(data, ends - sizes, ends, template, long=False)
    if fields is None:
        fields = _walk(data, ends - sizes, ends, template, long=True)
        if fields is None:
            return None
    words = np.ndarray((len(buf) - 7,), "<u8", buf, 0, (1,))
    times = words[fields[_TIME]] if _TIME in fields else np.zeros(n_records, np.uint64)
    observed = words[fields[_OBSERVED]] if _OBSERVED in fields else np.zeros(n_records, np.uint64)
    if _SEVERITY_TEXT in fields:
        _strings_of_records(buf, *fields[_SEVERITY_TEXT])  # validated (UTF-8), not used
    names = _strings_of_records(buf, *fields[_EVENT_NAME]) if _EVENT_NAME in fields else [""] * n_records
    starts, lengths = fields[_ATTRIBUTE] if _ATTRIBUTE in fields else (np.zeros((n_records, 0), np.intp),) * 2
    counts = np.full(n_records, starts.shape[1], np.intp)
    return _table(
        names,
        times,
        counts,
        _AttributeParser(buf, starts.ravel(), lengths.ravel(), counts).parse(),
        observed.__getitem__,
    )


def _walk(
    data: np.ndarray, starts: np.ndarray, ends: np.ndarray, template: list[int], long: bool
) -> dict[int, Any] | None:
    """Walk every record along ``template``: per tag, where its value is (lengths of one byte,
    or of one or two when ``long``); ``None`` if a record does not follow it."""
    at = starts
    after_tag, after_two = data[1:], data[2:]  # the byte after a tag, and the one after that
    tags_at, last_bytes_at = [], []
    fields: dict[int, Any] = {}
    attribute_starts, attribute_sizes = [], []
    for tag in template:
        tags_at.append(at)
        wire = tag & 7
        if wire == 1:
            fields[tag] = at + 1
            at = at + 9
        elif wire == 5:
            at = at + 5
        elif wire == 0:
            last_bytes_at.append(at + 1)
            at = at + 2
        else:
            size = after_tag.take(at, mode="clip")
            if long:
                two = size >= 0x80
                last_bytes_at.append(at + 1 + two)
                high = after_two.take(at, mode="clip").astype(np.intp) << 7
                size = np.where(two, (size & 0x7F) | high, size)
                start = at + 2 + two
            else:
                last_bytes_at.append(at + 1)
                start = at + 2
            at = start + size
            if tag == _ATTRIBUTE:
                attribute_starts.append(start)
                attribute_sizes.append(size)
            else:
                fields[tag] = start, size
    if not (at == ends).all():
        return None
    if (
        tags_at
        and not (data.take(np.array(tags_at), mode="clip") == np.array(template, np.uint8)[:, None]).all()
    ):
        return None
    if last_bytes_at and not (data.take(np.array(last_bytes_at), mode="clip") < 0x80).all():
        return None
    if attribute_starts:
        starts, sizes = (
            np.array(attribute_starts).T,
            np.array(attribute_sizes, np.intp).T,
        )  # (records, attributes)
        fields[_ATTRIBUTE] = np.ascontiguousarray(starts), np.ascontiguousarray(sizes)
    return fields


def _strings_of_records(buf: bytes, starts: np.ndarray, sizes: np.ndarray) -> list[str]:
    """One string per record (strict UTF-8): usually the same one (an event name)."""
    first, size = int(starts[0]), int(sizes[0])
    value = buf[first : first + size]
    if (sizes == size).all() and size <= _WIDTH:
        window = np.ndarray((len(buf) - _WIDTH + 1, _WIDTH), np.uint8, buf, 0, (1, 1))[starts, :size]
        if (window == window[0]).all():
            return [value.decode()] * starts.size
    return [buf[s : s + n].decode() for s, n in zip(starts.tolist(), sizes.tolist(), strict=True)]


def first_appearances(values: np.ndarray) -> np.ndarray:
    """The distinct values of an array of small non-negative ints, in order of first appearance."""
    if not values.size:
        return values
    order = np.argsort(values.astype(np.uint16) if values.max() < 2**16 else values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    return ordered[starts][np.argsort(order[starts])]


def _mix(hashes: np.ndarray, words: np.ndarray) -> np.ndarray:
    """One step of a 64-bit hash over words (equal inputs, equal hashes; collisions are checked)."""
    return (hashes ^ (hashes >> np.uint64(29)) ^ words) * np.uint64(0xBF58476D1CE4E5B9)


class _ByteStrings:
    """Byte strings of the buffer, given by start and length, compared as 8-byte words.

    Word ``j`` of a string is its 8 bytes at offset ``8 j``, or its last 8 bytes once those
    run past its end (``min(8 j, length - 8)``); strings under 8 bytes are masked to their
    length. With the lengths, ``n_words`` words say exactly whether two strings are equal.
    """

    def __init__(self, words: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> None:
        self._words = words
        self.starts = starts
        self.lengths = lengths
        self.n_words = (int(lengths.max(initial=0)) + 7) // 8
        self._tail = np.maximum(lengths - 8, 0)
        self._short = np.flatnonzero(lengths < 8)
        shift = lengths[self._short].astype(np.uint64) * np.uint64(8)
        self._short_mask = np.left_shift(np.uint64(1), shift) - np.uint64(1)

    def word(self, j: int) -> np.ndarray:
        offsets = self.starts if j == 0 else self.starts + np.minimum(8 * j, self._tail)
        word = self._words[offsets]
        if self._short.size:
            word[self._short] &= self._short_mask
        return word

    def group(self) -> tuple[np.ndarray, np.ndarray]:
        """Equal strings: (group of each, first string of each group)."""
        hashes = self.lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        for j in range(self.n_words):
            hashes = _mix(hashes, self.word(j))
        _, first, groups = np.unique(hashes, return_index=True, return_inverse=True)
        groups = groups.reshape(-1)
        representative = first[groups]
        same = self.lengths == self.lengths[representative]
        for j in range(self.n_words):
            word = self.word(j)
            same &= word == word[representative]
        if not same.all():  # a hash collision: group the words themselves
            rows = np.column_stack(
                [self.lengths.astype(np.uint64)] + [self.word(j) for j in range(self.n_words)]
            )
            _, first, groups = np.unique(rows, axis=0, return_index=True, return_inverse=True)
            groups = groups.reshape(-1)
        return groups, first


def _decode_with_schema(keyvalues: list[bytes]) -> Any:
    """The real schema's ``KeyValue`` s of serialized ones, at their depth in a request."""
    record = b"".join([field(b"\x32", kv) for kv in keyvalues])
    request = field(b"\x0a", field(b"\x12", field(b"\x12", record)))
    return (
        ExportLogsServiceRequest.FromString(request).resource_logs[0].scope_logs[0].log_records[0].attributes
    )


class _AttributeParser:
    """Parses serialized ``KeyValue`` s into columns (see the module docstring)."""

    def __init__(self, buf: bytes, starts: np.ndarray, lengths: np.ndarray, counts: np.ndarray) -> None:
        """``buf`` holds each attribute's bytes at ``starts`` and ends with :data:`_PAD`."""
        self.buf = buf
        self.starts = starts
        self.lengths = lengths
        self.counts = counts
        self.n = n = starts.size
        self.data = np.frombuffer(buf, np.uint8)
        # Views at every byte offset (unaligned): little-endian 8-byte words, doubles, and the
        # next _WIDTH bytes (rows of a strided 2-D view, gathered by fancy indexing).
        size = len(buf) - 7
        self.words = np.ndarray((size,), "<u8", buf, 0, (1,))
        self.doubles = np.ndarray((size,), "<f8", buf, 0, (1,))
        self.window = np.ndarray((len(buf) - _WIDTH + 1, _WIDTH), np.uint8, buf, 0, (1, 1))
        self.key = np.zeros(n, np.intp)
        self.keys: list[str] = []
        self.key_ids: dict[str, int] = {}
        self.kind = np.zeros(n, np.uint8)
        self.number = np.zeros(n, np.float64)
        self.integer = np.zeros(n, np.int64)
        self.text = np.full(n, None, object)
        self.length = np.zeros(n, np.intp)

    def parse(self) -> _Columns:
        """The attribute columns of :class:`LogsTable`."""
        if not self.n:
            width = 0
        elif self._by_template():
            width = int(self.counts[0])
        else:
            width = 0
            slow = self._fast()
            if slow.size:
                self._slow(slow)
            order = first_appearances(self.key)  # number the keys in order of first appearance
            if (order != np.arange(order.size)).any():
                renumber = np.empty(order.size, np.intp)
                renumber[order] = np.arange(order.size)
                self.key = renumber[self.key]
                self.keys = [self.keys[key] for key in order.tolist()]
        return _Columns(
            self.key, self.keys, self.kind, self.number, self.integer, self.text, self.length, width
        )

    def _key_id(self, key: str) -> int:
        kid = self.key_ids.get(key)
        if kid is None:
            kid = self.key_ids[key] = len(self.keys)
            self.keys.append(key)
        return kid

    def _layout(self, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per attribute: key length, value length, the AnyValue's tag and first byte, and its
        kind if it is in the fast layout (``NONE`` otherwise, and for ints: their varint is
        checked by :meth:`_varints`)."""
        data = self.data
        klen = data[starts + 1].astype(np.intp)
        at = starts + 2 + klen  # the value's tag 0x12, then vlen, the AnyValue's tag and first byte
        vlen = data[at + 1].astype(np.intp)
        tag = data[at + 2]
        first = data[at + 3].astype(np.intp)
        framed = (data[starts] == 0x0A) & (data[at] == 0x12) & (lengths == klen + vlen + 4)
        framed &= (klen - 1 < 127) & (vlen - 1 < 127)
        kind = np.zeros(starts.size, np.uint8)
        kind[framed & (tag == 0x21) & (vlen == 9)] = DOUBLE
        kind[framed & (tag == 0x0A) & (first == vlen - 2)] = STRING
        kind[framed & (tag == 0x10) & (vlen == 2) & (first < 0x80)] = BOOL
        kind[framed & (tag == 0x18) & (vlen <= 11)] = INT
        return klen, vlen, first, kind

    def _varints(self, positions: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The int64 varints at ``positions``, and whether each is exactly ``sizes`` bytes long."""
        window = self.window[positions, :10]  # (k, 10): a varint has at most 10 bytes
        last = window < 0x80
        size = last.argmax(axis=1) + 1
        exact = last.any(axis=1) & (size == sizes)
        groups = (window & 0x7F).astype(np.uint64)
        groups[np.arange(10) >= size[:, None]] = 0
        shifts = np.arange(0, 70, 7, dtype=np.uint64)  # the 10th group keeps its low bit: mod 2**64
        return np.bitwise_or.reduce(groups << shifts, axis=1).view(np.int64), exact

    def _decode(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The strings at ``starts`` (object array of ``str``): each distinct one decoded once."""
        groups, first = _ByteStrings(self.words, starts, lengths).group()
        buf = self.buf
        values = np.empty(first.size, object)
        at, sizes = starts[first].tolist(), lengths[first].tolist()
        values[:] = [buf[s : s + n].decode() for s, n in zip(at, sizes, strict=True)]
        return values[groups]

    # Every record with the first record's keys, in order, with values of the same kinds ------

    def _by_template(self) -> bool:
        """Parse column by column if every record has the first record's keys, in the same order,
        each with a value of the same kind in the fast layout (one SDK sending one model's
        events: the usual request); False, having changed nothing, if not."""
        counts = self.counts
        width = int(counts[0])
        if not (counts == width).all():
            return False
        n_records = counts.size
        klen, _, _, kind = self._layout(self.starts[:width], self.lengths[:width])
        if not kind.all():
            return False
        # The bytes that must be the same in every record: 0A klen key 12, then vlen and tag for
        # doubles and bools, the tag for strings and ints (whose vlen varies).
        n_words = (int(klen.max()) + 5 + 7) // 8
        same = np.arange(8 * n_words) < (klen + 5)[:, None]
        varies = np.flatnonzero((kind == STRING) | (kind == INT))
        same[varies, klen[varies] + 3] = False
        mask = (same.astype(np.uint8) * np.uint8(0xFF)).view("<u8")
        chunks = np.ndarray((len(self.buf) - 8 * n_words + 1,), f"V{8 * n_words}", self.buf, 0, (1,))
        headers = chunks[self.starts].view("<u8").reshape(n_records, width, n_words)
        if ((headers ^ headers[0]) & mask).any():
            return False
        starts = self.starts.reshape(n_records, width)
        lengths = self.lengths.reshape(n_records, width)
        data = self.data
        values = {}
        for code in (DOUBLE, BOOL, STRING, INT):
            columns = np.flatnonzero(kind == code)
            if not columns.size:
                continue
            at = starts[:, columns] + klen[columns]  # then 0A klen, the key, 12 vlen, tag, first byte
            if code == DOUBLE:
                if not (lengths[:, columns] == klen[columns] + 13).all():
                    return False
                values[code] = columns, self.doubles[at + 5]
                continue
            if code == BOOL:
                byte = data[at + 5]
                if not ((lengths[:, columns] == klen[columns] + 6).all() and (byte < 0x80).all()):
                    return False
                values[code] = columns, byte != 0
                continue
            size = data[at + 3].astype(np.intp)
            if not ((size - 1 < 127).all() and (lengths[:, columns] == klen[columns] + size + 4).all()):
                return False
            if code == STRING:
                if not (data[at + 5] == size - 2).all():
                    return False
                values[code] = columns, (at + 6, size - 2)
            else:
                ints, exact = self._varints((at + 5).ravel(), (size - 1).ravel())
                if not exact.all():
                    return False
                values[code] = columns, ints.reshape(at.shape)
        # It is: fill the columns.
        buf = self.buf
        ids = [
            self._key_id(buf[s + 2 : s + 2 + n].decode())
            for s, n in zip(self.starts[:width].tolist(), klen.tolist(), strict=True)
        ]
        self.key = np.tile(np.array(ids, np.intp), n_records)
        self.kind = np.tile(kind, n_records)
        number = self.number.reshape(n_records, width)
        integer = self.integer.reshape(n_records, width)
        for code, (columns, column_values) in values.items():
            if code == DOUBLE:
                number[:, columns] = column_values
            elif code == INT:
                number[:, columns] = column_values
                integer[:, columns] = column_values
            elif code == BOOL:
                integer[:, columns] = column_values
            else:
                positions, sizes = column_values
                self.length.reshape(n_records, width)[:, columns] = sizes
                self.text.reshape(n_records, width)[:, columns] = self._decode_columns(positions, sizes)
        return True

    def _decode_columns(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """(records, columns) strings: a column of one value decoded once, the others one by one."""
        out = np.empty(starts.shape, object)
        buf, data, window = self.buf, self.data, self.window
        for column in range(starts.shape[1]):
            at, sizes = starts[:, column], lengths[:, column]
            width = int(sizes.max())
            fixed = window[at, :width]
            if int(sizes.min()) == width:
                if (fixed == fixed[0]).all():  # one value (a model name, a version)
                    out[:, column] = buf[int(at[0]) : int(at[0]) + width].decode()
                    continue
            else:
                fixed *= np.arange(width) < sizes[:, None]  # zeros past each string's end
            texts = fixed.view(f"S{width}").reshape(-1).tolist() if width else [b""] * at.size
            out[:, column] = list(map(bytes.decode, texts))
            # ``S`` drops trailing NULs: strings ending with one are decoded from the buffer.
            for row in np.flatnonzero((data[at + sizes - 1] == 0) & (sizes > 0)).tolist():
                start = int(at[row])
                out[row, column] = buf[start : start + int(sizes[row])].decode()
        return out

    # Any request, attribute by attribute --------------------------------------------------

    def _fast(self) -> np.ndarray:
        """Fill the columns for attributes in the fast layout; the indexes of the others."""
        starts = self.starts
        klen, vlen, first, kind = self._layout(starts, self.lengths)
        values = starts + klen + 5  # the AnyValue's first byte after its tag
        integer = np.flatnonzero(kind == INT)
        if integer.size:
            ints, exact = self._varints(values[integer], vlen[integer] - 1)
            kind[integer[~exact]] = NONE
            integer = integer[exact]
            self.integer[integer] = self.number[integer] = ints[exact]
        fast = kind != NONE
        if not fast.any():
            return np.arange(self.n)
        self._keys(fast, starts + 2, klen)
        self.kind = kind
        double = np.flatnonzero(kind == DOUBLE)
        if double.size:
            self.number[double] = self.doubles[values[double]]
        boolean = np.flatnonzero(kind == BOOL)
        if boolean.size:
            self.integer[boolean] = first[boolean] != 0
        string = np.flatnonzero(kind == STRING)
        if string.size:
            self.length[string] = size = vlen[string] - 2
            self.text[string] = self._decode(values[string] + 1, size)
        return np.flatnonzero(~fast)

    def _keys(self, fast: np.ndarray, kstart: np.ndarray, klen: np.ndarray) -> None:
        """Key ids of the fast attributes (``fast``: a mask): equal key bytes, equal id."""
        groups, first = _ByteStrings(self.words, kstart[fast], klen[fast]).group()
        representatives = np.flatnonzero(fast)[first]
        starts, lengths = kstart[representatives].tolist(), klen[representatives].tolist()
        buf = self.buf
        ids = np.array(
            [self._key_id(buf[s : s + n].decode()) for s, n in zip(starts, lengths, strict=True)], np.intp
        )
        self.key[fast] = ids[groups]

    def _slow(self, where: np.ndarray) -> None:
        """Decode the other attributes with the real schema (see the module docstring)."""
        indexes = where.tolist()
        buf, starts, lengths = self.buf, self.starts[where].tolist(), self.lengths[where].tolist()
        decoded = _decode_with_schema([buf[s : s + n] for s, n in zip(starts, lengths, strict=True)])
        kind, number, integer, text, length, key = (
            self.kind,
            self.number,
            self.integer,
            self.text,
            self.length,
            self.key,
        )
        for i, kv in zip(indexes, decoded, strict=True):
            key[i] = self._key_id(kv.key)
            value = kv.value
            field = value.WhichOneof("value")
            code = _KINDS.get(field, OTHER)
            kind[i] = code
            if code == DOUBLE:
                number[i] = value.double_value
            elif code == INT:
                integer[i] = value.int_value
                number[i] = value.int_value
            elif code == BOOL:
                integer[i] = value.bool_value
            elif code == STRING:
                text[i] = value.string_value
                length[i] = len(value.string_value)
