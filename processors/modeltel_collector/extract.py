"""Extraction: one serialized OTLP logs request into columnar batches, without a loop per attribute.

The input is the request as it arrives (the bytes of an ``ExportLogsServiceRequest``):
:func:`modeltel_collector.wire.read_logs` decodes all its attributes into numpy columns
(key, kind, value) without a Python object per attribute, and extraction is numpy over
those columns. The usual request (``ml.prediction`` records of one model version, every
record with the same attributes: :attr:`~modeltel_collector.wire.LogsTable.width`, the
required ones valid) becomes its batch column by column (:func:`_uniform`); any other
is extracted attribute-wise (:func:`_extract`): which records are ``ml.*`` events, each
record's required attributes (the last valid one of each, and the first problem),
features, predictions and labels. The only Python loops are over distinct keys, rejected
records and, for classifiers, numbers that also need a class name. Both give exactly what
the former loop over upb objects gave (``tests/collector/test_extract_differential.py``);
``benchmarks/ingest.py`` measures extraction against the bare decode-and-iterate loop.

A payload that is not a valid ``ExportLogsServiceRequest`` raises :class:`InvalidPayload`
with the message upb's decoder gives (the receivers answer INVALID_ARGUMENT / 400).

What is extracted
-----------------
- ``ml.prediction`` events become one :class:`PredictionBatch` per (model, version),
  ``ml.label`` events one :class:`LabelBatch` per model, in order of first appearance.
- The event name is ``LogRecord.event_name``. Older senders (OTel SDKs before the
  field existed, the Logs API's ``event.name`` convention) put it in the attribute
  ``event.name`` instead: that is accepted when ``event_name`` is empty.
- Log records that are not ``ml.*`` events (no event name, or another one: ordinary
  application logs) are neither extracted nor rejected.
- A record's time is ``time_unix_nano``, else ``observed_time_unix_nano``, else the
  time the request was received.

Validation
----------
A record is rejected, and counted in :attr:`Extraction.rejected` with its reason in
:attr:`Extraction.error_message`, only when a required attribute is missing, empty or
of the wrong type: ``ml.model.name``, ``ml.model.version`` and ``ml.prediction.id``
(strings) for predictions; ``ml.model.name``, ``ml.prediction.id`` (strings) and
``ml.label.value`` (number, string or bool) for labels.

Optional attributes never reject a record. A feature (``ml.feature.<name>``) whose
value is an array, a map, bytes or empty counts as missing for that feature in that
row; so does an ``ml.prediction.value`` of such a type, and an
``ml.prediction.score`` that is not a number. Other attributes are ignored.

Columns
-------
A feature sent as an int or float in any row of a batch is in ``numeric`` (float64, NaN
where a row lacks it or sent it as something else); one sent as a string or bool is in
``categorical`` (object array of ``str``, ``None`` where absent, bools as
``"true"``/``"false"``); a feature whose type varied across rows is in both. Numbers
that also need a string form (a prediction or label in a batch where some rows sent a
class name) are written as ``"1"`` for integral values and ``repr`` otherwise.

Memory: the columns of one request hold at most :data:`MAX_CELLS` values. Columns are
built most frequent feature first; once that is spent (only a pathological request with
thousands of sparse feature names gets there) the rest are left out, and the error
message says how many values were.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modeltel import semconv
from modeltel_collector.batch import LabelBatch, PredictionBatch
from modeltel_collector.receivers.consumer import ExportOutcome
from modeltel_collector.wire import (
    ARRAY,
    BOOL,
    BYTES,
    DOUBLE,
    INT,
    MAP,
    NONE,
    OTHER,
    STRING,
    LogsTable,
    first_appearances,
    read_logs,
)

LEGACY_EVENT_NAME_ATTRIBUTE = "event.name"
"""Where senders older than ``LogRecord.event_name`` put the event name (OTel semconv)."""

MAX_CELLS = 1 << 24
"""Most feature values (rows x features, summed over a request's feature columns) kept."""

MAX_REASONS = 3
"""Distinct rejection reasons spelled out per event type in the error message."""

_INT64_MAX = 2**63 - 1

# Record events.
_OTHER_EVENT, _PREDICTION, _LABEL, _UNNAMED = 0, 1, 2, 3
_EVENTS = {semconv.PREDICTION_EVENT: _PREDICTION, semconv.LABEL_EVENT: _LABEL, "": _UNNAMED}

# What an attribute is to a prediction (by its key), and to a label. ``_IGNORED``: not in
# a record of that event type.
_MODEL, _VERSION, _ID, _VALUE, _SCORE, _FEATURE, _OTHER, _IGNORED = range(8)
_PREDICTION_KEYS = {
    semconv.MODEL_NAME: _MODEL,
    semconv.MODEL_VERSION: _VERSION,
    semconv.PREDICTION_ID: _ID,
    semconv.PREDICTION_VALUE: _VALUE,
    semconv.PREDICTION_SCORE: _SCORE,
}
_LABEL_KEYS = {semconv.MODEL_NAME: _MODEL, semconv.PREDICTION_ID: _ID, semconv.LABEL_VALUE: _VALUE}

_KIND_NAMES = {
    DOUBLE: "a float",
    INT: "an int",
    BOOL: "a bool",
    STRING: "a string",
    BYTES: "bytes",
    ARRAY: "an array",
    MAP: "a map",
    OTHER: "a value of an unsupported kind",
}


@dataclass(frozen=True)
class Extraction:
    """What one logs request yields: columnar batches, and the records that could not be used."""

    predictions: list[PredictionBatch] = field(default_factory=list)
    """One batch per (model, version), in order of first appearance."""
    labels: list[LabelBatch] = field(default_factory=list)
    """One batch per model, in order of first appearance."""
    rejected: int = 0
    """``ml.*`` records dropped for a missing or mistyped required attribute."""
    error_message: str = ""
    """English, per event type: how many were rejected, and why (count per reason)."""

    @property
    def outcome(self) -> ExportOutcome:
        """The receiver's answer for this request (partial success when anything was rejected)."""
        return ExportOutcome(self.rejected, self.error_message)

    @property
    def prediction_count(self) -> int:
        return sum(len(batch) for batch in self.predictions)

    @property
    def label_count(self) -> int:
        return sum(len(batch) for batch in self.labels)


def _mistyped(attribute: str, kind: int, expected: str) -> str:
    if kind == NONE:
        return f"{attribute} has no value"
    if kind == STRING:
        return f"{attribute} is empty"
    return f"{attribute} is {_KIND_NAMES[kind]}, not {expected}"


def _is_none(column: np.ndarray) -> np.ndarray:
    """Elementwise ``is None`` of an object column."""
    return column == None  # noqa: E711 (elementwise on numpy arrays)


def _class_text(value: Any) -> str:
    """A number written as a class name: ``1`` for integral values, else ``repr``."""
    if type(value) is float:
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


# ``_as_int64`` and ``_numbers_and_classes`` build the columns of labels from Python lists,
# for ``POST /v1/labels`` (modeltel_collector.labels), as extraction does from attributes.
def _as_int64(times: list[int]) -> np.ndarray:
    try:
        return np.array(times, dtype=np.int64)
    except OverflowError:  # fixed64 timestamps past 2262: clamp rather than fail the request
        return np.array([min(t, _INT64_MAX) for t in times], dtype=np.int64)


def _numbers_and_classes(
    numbers: list[Any], class_rows: list[int], class_values: list[str]
) -> tuple[np.ndarray, np.ndarray | None]:
    """float64 column (NaN where not a number) and, if any row sent a class, the string column.

    ``numbers`` has one entry per row (``None`` where absent), the classes are sparse.
    """
    numeric = np.array(numbers, dtype=np.float64)
    if not class_rows:
        return numeric, None
    text = np.full(numeric.size, None, dtype=object)
    text[class_rows] = class_values
    for row in np.flatnonzero(_is_none(text) & ~np.isnan(numeric)):
        text[row] = _class_text(numbers[row])
    return numeric, text


def _last(rows: np.ndarray, where: np.ndarray, n_rows: int) -> np.ndarray:
    """Per row, the last of the attributes ``where`` (ascending) in that row, else -1."""
    out = np.full(n_rows, -1, np.intp)
    if where.size:
        at = rows[where]
        keep = np.empty(at.size, bool)
        keep[:-1] = at[1:] != at[:-1]
        keep[-1] = True
        out[at[keep]] = where[keep]
    return out


def _first(rows: np.ndarray, where: np.ndarray, n_rows: int) -> np.ndarray:
    """Per row, the first of the attributes ``where`` (ascending) in that row, else -1."""
    out = np.full(n_rows, -1, np.intp)
    if where.size:
        at = rows[where]
        keep = np.empty(at.size, bool)
        keep[0] = True
        keep[1:] = at[1:] != at[:-1]
        out[at[keep]] = where[keep]
    return out


def _summary(event: str, reasons: dict[str, int]) -> str:
    total = sum(reasons.values())
    ranked = sorted(reasons.items(), key=lambda item: -item[1])
    parts = [f"{reason} ({count})" for reason, count in ranked[:MAX_REASONS]]
    if len(ranked) > MAX_REASONS:
        others = sum(count for _, count in ranked[MAX_REASONS:])
        parts.append(f"{len(ranked) - MAX_REASONS} other reasons ({others})")
    noun = "record" if total == 1 else "records"
    return f"{total} {event} {noun} rejected: {', '.join(parts)}"


class _Records:
    """The records of one event type, as rows, and their attributes' roles (numpy over the table)."""

    def __init__(self, table: LogsTable, events: np.ndarray, event: int, roles: dict[str, int]) -> None:
        self.table = table
        chosen = events == event
        self.all = bool(chosen.all())
        if self.all:
            self.records = np.arange(events.size)
            self.row = table.record
        else:
            self.records = np.flatnonzero(chosen)
            self.row = (np.cumsum(chosen) - 1)[table.record]
        self.n_rows = int(self.records.size)
        self.roles = np.array(
            [roles.get(key, _FEATURE if _is_feature(key) else _OTHER) for key in table.keys], np.int8
        )
        role = self.roles[table.key]
        if not self.all:
            role[~chosen[table.record]] = _IGNORED
        self.role = role

    def with_role(self, role: int) -> np.ndarray:
        return np.flatnonzero(self.role == role)

    def last(self, where: np.ndarray) -> np.ndarray:
        return _last(self.row, where, self.n_rows)

    def first(self, where: np.ndarray) -> np.ndarray:
        return _first(self.row, where, self.n_rows)

    def times(self, rows: np.ndarray | None, now: int) -> np.ndarray:
        """int64 time of each row (``None``: every row): see :func:`_times`."""
        return _times(self.table, self.records if rows is None else self.records[rows], now)

    def texts(self, where: np.ndarray) -> np.ndarray:
        """object array: the strings of STRING attributes, ``"true"``/``"false"`` for BOOL ones."""
        table = self.table
        out = table.text[where]
        bools = np.flatnonzero(table.kind[where] == BOOL)
        if bools.size:
            out[bools] = np.where(table.integer[where[bools]] != 0, "true", "false").astype(object)
        return out

    def numbers_and_classes(
        self, numbers: np.ndarray, classes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """float64 column of the rows' numbers (attribute per row, -1 where none) and, if any row
        has a class (likewise), the string column; with the rows that have a class."""
        table = self.table
        numeric = np.full(numbers.size, np.nan)
        has = numbers >= 0
        numeric[has] = table.number[numbers[has]]
        class_rows = np.flatnonzero(classes >= 0)
        if not class_rows.size:
            return numeric, None, class_rows
        text = np.full(numeric.size, None, dtype=object)
        text[class_rows] = self.texts(classes[class_rows])
        for row in np.flatnonzero(_is_none(text) & ~np.isnan(numeric)).tolist():
            attribute = numbers[row]
            if table.kind[attribute] == INT:
                text[row] = _class_text(int(table.integer[attribute]))
            else:
                text[row] = _class_text(float(table.number[attribute]))
        return numeric, text, class_rows


def _times(table: LogsTable, records: np.ndarray, now: int) -> np.ndarray:
    """int64 time of records: event, else observed, else ``now``; clamped to int64."""
    times = table.time_unix_nano[records]
    missing = np.flatnonzero(times == 0)
    if missing.size:
        times[missing] = table.observed_time_unix_nano(records[missing])
    # fixed64 timestamps past 2262 are clamped rather than failing the request
    out = np.minimum(times, np.uint64(_INT64_MAX)).astype(np.int64)
    if missing.size:
        still = missing[times[missing] == 0]
        if still.size:
            out[still] = min(now, _INT64_MAX)
    return out


def _uniform(table: LogsTable, now: int) -> Extraction | None:
    """The usual request, column by column: ``ml.prediction`` records of one model version with
    the same attributes (keys, order, kinds: :attr:`LogsTable.width`), each key once, the required
    ones valid everywhere. ``None`` for any other request: the general path decides those."""
    width = table.width
    n_rows = len(table.event_names)
    if not width or table.event_names.count(semconv.PREDICTION_EVENT) != n_rows:
        return None
    keys = [table.keys[key] for key in table.key[:width].tolist()]
    column_of = {key: column for column, key in enumerate(keys)}
    features = [column for column, key in enumerate(keys) if _is_feature(key)]
    if len(column_of) != width or len(features) * n_rows > MAX_CELLS:
        return None
    kinds = table.kind[:width].tolist()
    text = table.text.reshape(n_rows, width)
    length = table.length.reshape(n_rows, width)
    required = []
    for key in (semconv.MODEL_NAME, semconv.MODEL_VERSION, semconv.PREDICTION_ID):
        column = column_of.get(key)
        if column is None or kinds[column] != STRING or not length[:, column].all():
            return None
        required.append(text[:, column])
    models, versions, ids = required
    if not ((models == models[0]).all() and (versions == versions[0]).all()):
        return None
    number = table.number.reshape(n_rows, width)
    integer = table.integer.reshape(n_rows, width)

    def texts(column: int) -> np.ndarray:
        if kinds[column] == STRING:
            return text[:, column].copy()
        return np.where(integer[:, column] != 0, "true", "false").astype(object)

    numeric: dict[str, np.ndarray] = {}
    categorical: dict[str, np.ndarray] = {}
    prefix = len(semconv.FEATURE_PREFIX)
    for column in features:
        if kinds[column] in (DOUBLE, INT):
            numeric[keys[column][prefix:]] = number[:, column].copy()
        else:
            categorical[keys[column][prefix:]] = texts(column)
    prediction, prediction_class = np.full(n_rows, np.nan), None
    column = column_of.get(semconv.PREDICTION_VALUE)
    if column is not None:
        if kinds[column] in (DOUBLE, INT):
            prediction = number[:, column].copy()
        else:
            prediction_class = texts(column)
    score = np.full(n_rows, np.nan)
    column = column_of.get(semconv.PREDICTION_SCORE)
    if column is not None and kinds[column] in (DOUBLE, INT):
        score = number[:, column].copy()
    batch = PredictionBatch(
        models[0],
        versions[0],
        _times(table, np.arange(n_rows), now),
        ids.copy(),
        numeric,
        categorical,
        prediction,
        prediction_class,
        score,
    )
    return Extraction([batch])


def _is_feature(key: str) -> bool:
    prefix = semconv.FEATURE_PREFIX
    return key.startswith(prefix) and len(key) > len(prefix)


def _events(table: LogsTable) -> np.ndarray:
    """Per record: ``_PREDICTION``, ``_LABEL`` or ``_OTHER_EVENT`` (the legacy attribute included)."""
    names = table.event_names
    n = len(names)
    if names.count(semconv.PREDICTION_EVENT) == n:
        return np.full(n, _PREDICTION, np.int8)
    events = np.fromiter(map(_EVENTS.get, names, itertools.repeat(_OTHER_EVENT)), np.int8, n)
    unnamed = events == _UNNAMED
    if unnamed.any():
        events[unnamed] = _OTHER_EVENT
        if LEGACY_EVENT_NAME_ATTRIBUTE in table.keys:
            legacy = table.keys.index(LEGACY_EVENT_NAME_ATTRIBUTE)
            where = np.flatnonzero((table.key == legacy) & unnamed[table.record])
            first = _first(table.record, where, n)  # the first such attribute of each record
            for record in np.flatnonzero(first >= 0).tolist():
                attribute = first[record]
                name = table.text[attribute] if table.kind[attribute] == STRING else ""
                if name == semconv.PREDICTION_EVENT:
                    events[record] = _PREDICTION
                elif name == semconv.LABEL_EVENT:
                    events[record] = _LABEL
    return events


_ONE_AT_A_TIME = threading.Lock()
"""Extractions run one at a time. Theirs is numpy code, which lets go of the GIL during most
operations: receiver threads extracting concurrently would hand the GIL back and forth after
nearly every one (4 threads on 2 cores: 2.2 times the CPU per event, and slower overall);
queued on this lock, each runs through and the GIL changes hands once per request."""


def extract_logs(payload: bytes, now_unix_nano: int | None = None) -> Extraction:
    """Turn a serialized logs request into prediction and label batches (see the module docstring).

    ``now_unix_nano`` is the receive time, for records with neither timestamp
    (default: now). Raises :class:`~modeltel_collector.receivers.consumer.InvalidPayload`
    if ``payload`` is not an ``ExportLogsServiceRequest``.
    """
    now = time.time_ns() if now_unix_nano is None else now_unix_nano
    with _ONE_AT_A_TIME:
        table = read_logs(payload)
        if not table.event_names:
            return Extraction()
        uniform = _uniform(table, now)
        return uniform if uniform is not None else _extract(table, now)


def _extract(table: LogsTable, now: int) -> Extraction:
    """Any request (see the module docstring)."""
    events = _events(table)
    messages = []
    predictions: list[PredictionBatch] = []
    reasons: dict[str, int] = {}
    if events[0] == _PREDICTION or (events == _PREDICTION).any():
        records = _Records(table, events, _PREDICTION, _PREDICTION_KEYS)
        predictions, reasons, dropped = _predictions(records, now)
        if reasons:
            messages.append(_summary(semconv.PREDICTION_EVENT, reasons))
        if dropped:
            prefix = semconv.FEATURE_PREFIX
            messages.append(f"{dropped} {prefix}* values left out: too many distinct features in one request")
    labels: list[LabelBatch] = []
    label_reasons: dict[str, int] = {}
    if events[0] == _LABEL or (events == _LABEL).any():
        labels, label_reasons = _labels(_Records(table, events, _LABEL, _LABEL_KEYS), now)
        if label_reasons:
            messages.append(_summary(semconv.LABEL_EVENT, label_reasons))
    rejected = sum(reasons.values()) + sum(label_reasons.values())
    return Extraction(predictions, labels, rejected, "; ".join(messages))


def _required(
    records: _Records, roles: tuple[int, ...], valid: np.ndarray, where: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per required role, each row's last valid attribute (-1: none); the attributes that are not valid."""
    role = records.role[where]
    return [records.last(where[valid & (role == r)]) for r in roles], where[~valid]


def _reasons(records: _Records, rejected: np.ndarray, problem: np.ndarray, missing: Any) -> dict[str, int]:
    """The reason of each rejected row, counted in row order: its first problem, else what is missing."""
    table = records.table
    reasons: dict[str, int] = {}
    for row in rejected.tolist():
        attribute = problem[row]
        if attribute >= 0:
            key = table.keys[table.key[attribute]]
            expected = "a number, string or bool" if key == semconv.LABEL_VALUE else "a string"
            reason = _mistyped(key, int(table.kind[attribute]), expected)
        else:
            reason = "missing " + missing(row)
        reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


def _nonempty_strings(table: LogsTable, where: np.ndarray) -> np.ndarray:
    return (table.kind[where] == STRING) & (table.length[where] > 0)


def _numeric(table: LogsTable, where: np.ndarray) -> np.ndarray:
    kind = table.kind[where]
    return (kind == DOUBLE) | (kind == INT)


def _textual(table: LogsTable, where: np.ndarray) -> np.ndarray:
    kind = table.kind[where]
    return (kind == STRING) | (kind == BOOL)


def _groups(first: np.ndarray, second: np.ndarray | None) -> tuple[dict[Any, int], np.ndarray]:
    """Group ids of rows by their key (a str, or a pair of them), in order of first appearance."""
    if not first.size:
        return {}, np.zeros(0, np.intp)
    one = first[0] if second is None else (first[0], second[0])
    if (first == first[0]).all() and (second is None or (second == second[0]).all()):
        return {one: 0}, np.zeros(first.size, np.intp)
    groups: dict[Any, int] = {}
    keys = first.tolist() if second is None else zip(first.tolist(), second.tolist(), strict=True)
    ids = [groups.setdefault(key, len(groups)) for key in keys]
    return groups, np.array(ids, np.intp)


def _predictions(records: _Records, now: int) -> tuple[list[PredictionBatch], dict[str, int], int]:
    table = records.table
    n_rows = records.n_rows
    required = np.flatnonzero(records.role <= _ID)
    (models, versions, ids), problems = _required(
        records, (_MODEL, _VERSION, _ID), _nonempty_strings(table, required), required
    )
    bad = (models < 0) | (versions < 0) | (ids < 0)
    rejected = np.flatnonzero(bad)
    reasons: dict[str, int] = {}
    if rejected.size:
        names = (semconv.MODEL_NAME, semconv.MODEL_VERSION, semconv.PREDICTION_ID)
        reasons = _reasons(
            records,
            rejected,
            records.first(problems),
            lambda row: names[0 if models[row] < 0 else 1 if versions[row] < 0 else 2],
        )
    accepted = np.flatnonzero(~bad)
    groups, accepted_group = _groups(table.text[models[accepted]], table.text[versions[accepted]])
    if not groups:
        return [], reasons, 0
    row_group = np.full(n_rows, -1, np.intp)
    row_group[accepted] = accepted_group

    id_column = np.full(n_rows, None, dtype=object)
    id_column[accepted] = table.text[ids[accepted]]
    values = records.with_role(_VALUE)
    prediction, prediction_class, class_rows = records.numbers_and_classes(
        records.last(values[_numeric(table, values)]), records.last(values[_textual(table, values)])
    )
    scores = records.with_role(_SCORE)
    score_of_row = records.last(scores[_numeric(table, scores)])
    score = np.full(n_rows, np.nan)
    has_score = score_of_row >= 0
    score[has_score] = table.number[score_of_row[has_score]]

    feature_names, numeric, categorical = _features(records)
    if len(groups) == 1 and rejected.size == 0:  # one group, every row in it (the common case: no copy)
        group_rows: list[np.ndarray | None] = [None]
    else:
        group_rows = [np.flatnonzero(row_group == group) for group in range(len(groups))]
    columns, dropped = _feature_columns((numeric, categorical), feature_names, row_group, group_rows)
    time_column = records.times(None, now)

    batches = []
    for (model, version), group in groups.items():
        rows = group_rows[group]
        if rows is None:
            batches.append(
                PredictionBatch(
                    model,
                    version,
                    time_column,
                    id_column,
                    columns[group][0],
                    columns[group][1],
                    prediction,
                    prediction_class,
                    score,
                )
            )
            continue
        group_class = None
        if prediction_class is not None and (row_group[class_rows] == group).any():
            group_class = prediction_class[rows]
        batches.append(
            PredictionBatch(
                model,
                version,
                time_column[rows],
                id_column[rows],
                columns[group][0],
                columns[group][1],
                prediction[rows],
                group_class,
                score[rows],
            )
        )
    return batches, reasons, dropped


class _FeatureColumns:
    """Flat (feature id, value) entries of one type, with each entry's row."""

    def __init__(self, ids: np.ndarray, values: np.ndarray, rows: np.ndarray, dtype: Any) -> None:
        self.ids = ids
        self.values = values
        self.rows = rows
        self.dtype = dtype
        self.fill: Any = np.nan if dtype is np.float64 else None

    def segments(self) -> Iterable[tuple[int, np.ndarray]]:
        """(feature id, entry indexes) per feature present."""
        if not self.ids.size:
            return []
        order = np.argsort(self.ids, kind="stable")
        ordered = self.ids[order]
        bounds = np.flatnonzero(np.diff(ordered)) + 1
        return [(int(ordered[start]), order[start:end]) for start, end in _ranges(bounds, ordered.size)]

    def column(self, entries: np.ndarray, n_rows: int) -> np.ndarray:
        col = np.full(n_rows, self.fill, dtype=self.dtype)
        col[self.rows[entries]] = self.values[entries]
        return col


def _ranges(bounds: np.ndarray, size: int) -> list[tuple[int, int]]:
    edges = [0, *bounds.tolist(), size]
    return list(itertools.pairwise(edges))


def _features(records: _Records) -> tuple[list[str], _FeatureColumns, _FeatureColumns]:
    """Feature names (ids in order of first appearance) and their numeric and string entries."""
    table = records.table
    where = records.with_role(_FEATURE)
    keys = table.key[where]
    if records.all:  # keys are numbered in order of first appearance in the request
        present = np.flatnonzero(np.bincount(keys, minlength=len(table.keys)))
    else:
        present = first_appearances(keys)
    feature_of_key = np.zeros(len(table.keys), np.intp)
    feature_of_key[present] = np.arange(present.size)
    prefix = len(semconv.FEATURE_PREFIX)
    names = [table.keys[key][prefix:] for key in present.tolist()]
    numbers = where[_numeric(table, where)]
    texts = where[_textual(table, where)]
    numeric = _FeatureColumns(
        feature_of_key[table.key[numbers]], table.number[numbers], records.row[numbers], np.float64
    )
    categorical = _FeatureColumns(
        feature_of_key[table.key[texts]], records.texts(texts), records.row[texts], object
    )
    return names, numeric, categorical


def _feature_columns(
    kinds: tuple[_FeatureColumns, _FeatureColumns],
    feature_names: list[str],
    row_groups: np.ndarray,
    group_rows: list[np.ndarray | None],
) -> tuple[list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]], int]:
    """Per group, the (numeric, categorical) columns of the features present in it.

    Columns are built most frequent first until :data:`MAX_CELLS` is spent; the number of
    values left out is returned too.
    """
    n_rows = row_groups.size
    n_features = len(feature_names)
    counts = [np.bincount(kind.ids, minlength=n_features) for kind in kinds]
    segments = [(kind, fid) for kind in (0, 1) for fid in np.flatnonzero(counts[kind]).tolist()]
    segments.sort(key=lambda segment: -counts[segment[0]][segment[1]])
    if len(segments) * n_rows > MAX_CELLS:  # perhaps not all: one at a time, on a budget
        return _budgeted_feature_columns(kinds, feature_names, row_groups, group_rows, segments)
    # Every column fits: each kind's columns are the rows of one 2-D array, filled at once.
    n_groups = len(group_rows)
    out: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = [({}, {}) for _ in group_rows]
    grids, slots, presence = [], [], []
    for kind, columns in enumerate(kinds):
        slot = np.cumsum(counts[kind] > 0) - 1  # the grid row of each feature present
        grid = np.full((int(slot[-1]) + 1 if n_features else 0, n_rows), columns.fill, columns.dtype)
        grid[slot[columns.ids], columns.rows] = columns.values
        grids.append(grid)
        slots.append(slot)
        if group_rows[0] is not None:  # which groups have an entry of each feature (rejected: -1)
            cells = slot[columns.ids] * (n_groups + 1) + row_groups[columns.rows] + 1
            seen = np.bincount(cells, minlength=grid.shape[0] * (n_groups + 1)).reshape(-1, n_groups + 1)
            presence.append(seen[:, 1:] > 0)
    for kind, fid in segments:
        full = grids[kind][slots[kind][fid]]
        name = feature_names[fid]
        if group_rows[0] is None:  # one group, every row in it
            out[0][kind][name] = full
            continue
        for g in np.flatnonzero(presence[kind][slots[kind][fid]]).tolist():
            out[g][kind][name] = full[group_rows[g]]
    return out, 0


def _budgeted_feature_columns(
    kinds: tuple[_FeatureColumns, _FeatureColumns],
    feature_names: list[str],
    row_groups: np.ndarray,
    group_rows: list[np.ndarray | None],
    order: list[tuple[int, int]],
) -> tuple[list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]], int]:
    """:func:`_feature_columns` one column at a time, most frequent first, until the budget is spent."""
    n_rows = row_groups.size
    n_groups = len(group_rows)
    sizes = [n_rows if rows is None else rows.size for rows in group_rows]
    out: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = [({}, {}) for _ in group_rows]
    entries_of = [dict(kind.segments()) for kind in kinds]
    budget = MAX_CELLS
    dropped = 0
    for kind, fid in order:
        columns = kinds[kind]
        entries = entries_of[kind][fid]
        if group_rows[0] is None:  # one group, every row in it
            present = [0]
        else:  # groups with at least one entry of the feature (rejected rows, -1, shifted out)
            counts = np.bincount(row_groups[columns.rows[entries]] + 1, minlength=n_groups + 1)
            present = np.flatnonzero(counts[1:]).tolist()
            if not present:
                continue  # only in rejected records
        cells = sum(sizes[g] for g in present)
        if cells > budget:
            dropped += int(entries.size)
            continue
        budget -= cells
        full = columns.column(entries, n_rows)
        name = feature_names[fid]
        for g in present:
            rows = group_rows[g]
            out[g][kind][name] = full if rows is None else full[rows]
    return out, dropped


def _labels(records: _Records, now: int) -> tuple[list[LabelBatch], dict[str, int]]:
    table = records.table
    values = records.with_role(_VALUE)
    numbers = records.last(values[_numeric(table, values)])
    textual = _textual(table, values) & ((table.kind[values] != STRING) | (table.length[values] > 0))
    classes = records.last(values[textual])  # an empty string is no class: "ml.label.value is empty"
    required = np.flatnonzero((records.role == _MODEL) | (records.role == _ID))
    (models, ids), problems = _required(records, (_MODEL, _ID), _nonempty_strings(table, required), required)
    unusable = values[~(textual | _numeric(table, values))]
    bad = (models < 0) | (ids < 0) | ((numbers < 0) & (classes < 0))
    rejected = np.flatnonzero(bad)
    reasons: dict[str, int] = {}
    if rejected.size:
        names = (semconv.MODEL_NAME, semconv.PREDICTION_ID, semconv.LABEL_VALUE)
        reasons = _reasons(
            records,
            rejected,
            records.first(np.union1d(problems, unusable)),
            lambda row: names[0 if models[row] < 0 else 1 if ids[row] < 0 else 2],
        )
    accepted = np.flatnonzero(~bad)
    groups, row_group = _groups(table.text[models[accepted]], None)
    if not groups:
        return [], reasons
    times = records.times(accepted, now)
    id_column = table.text[ids[accepted]]
    value, value_class, class_rows = records.numbers_and_classes(numbers[accepted], classes[accepted])
    out = []
    for model, group in groups.items():
        rows = None if len(groups) == 1 else np.flatnonzero(row_group == group)
        group_class = None
        if value_class is not None and (rows is None or (row_group[class_rows] == group).any()):
            group_class = value_class if rows is None else value_class[rows]
        if rows is None:
            out.append(LabelBatch(model, times, id_column, value, group_class))
        else:
            out.append(LabelBatch(model, times[rows], id_column[rows], value[rows], group_class))
    return out, reasons
