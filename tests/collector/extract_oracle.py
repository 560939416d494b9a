"""The collector's former extraction, kept verbatim as the test oracle for ``extract_logs``.

This is ``modeltel_collector/extract.py`` as it was before extraction moved to reading the
serialized request (``modeltel_collector.wire``): a loop over upb ``KeyValue`` objects,
obviously faithful to the semantics below. ``tests/collector/test_extract_differential.py``
checks that the new implementation returns exactly what this one does, on random requests.
Only the entry point is renamed (``extract_logs`` -> ``extract_logs_oracle``).

Extraction: one OTLP logs request into columnar batches, in one pass over the attributes.

This is the collector's only per-record Python code, so it is written for speed: one
loop over each record's attributes that appends Python values to flat lists, then numpy
builds every column once per request. ``benchmarks/ingest.py`` measures it against the
bare decode-and-iterate loop.

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
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from modeltel import semconv
from modeltel_collector.batch import LabelBatch, PredictionBatch
from modeltel_collector.receivers.consumer import ExportOutcome

LEGACY_EVENT_NAME_ATTRIBUTE = "event.name"
"""Where senders older than ``LogRecord.event_name`` put the event name (OTel semconv)."""

MAX_CELLS = 1 << 24
"""Most feature values (rows x features, summed over a request's feature columns) kept."""

MAX_REASONS = 3
"""Distinct rejection reasons spelled out per event type in the error message."""

_INT64_MAX = 2**63 - 1

# What each attribute key of a prediction is, looked up once per attribute in a per-request
# dict. Features get dense ids; their code is the id itself when the feature's first value
# was a double, read optimistically as ``double_value`` (a non-zero result settles it
# without a WhichOneof call), else ``_OTHER_GUESS - id``, read with WhichOneof.
# ``python benchmarks/ingest.py --alternatives`` times the ways of reading a value: a
# WhichOneof per attribute costs ~15% more than this, a HasField chain ~9%, ListFields ~50%.
_MODEL, _VERSION, _ID, _VALUE, _SCORE, _OTHER = -1, -2, -3, -4, -5, -9
_OTHER_GUESS = -100
_PREDICTION_KEYS = {
    semconv.MODEL_NAME: _MODEL,
    semconv.MODEL_VERSION: _VERSION,
    semconv.PREDICTION_ID: _ID,
    semconv.PREDICTION_VALUE: _VALUE,
    semconv.PREDICTION_SCORE: _SCORE,
}
_CODE_NAMES = {_MODEL: semconv.MODEL_NAME, _VERSION: semconv.MODEL_VERSION, _ID: semconv.PREDICTION_ID}

_KIND_NAMES = {
    "double_value": "a float",
    "int_value": "an int",
    "bool_value": "a bool",
    "string_value": "a string",
    "bytes_value": "bytes",
    "array_value": "an array",
    "kvlist_value": "a map",
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


def _legacy_event_name(record: LogRecord) -> str:
    """The ``event.name`` attribute of a record without ``event_name`` ("" if none)."""
    for kv in record.attributes:
        if kv.key == LEGACY_EVENT_NAME_ATTRIBUTE:
            return kv.value.string_value
    return ""


def _mistyped(attribute: str, value: AnyValue, expected: str) -> str:
    kind = value.WhichOneof("value")
    if kind is None:
        return f"{attribute} has no value"
    if kind == "string_value":
        return f"{attribute} is empty"
    return f"{attribute} is {_KIND_NAMES.get(kind, kind)}, not {expected}"


def _is_none(column: np.ndarray) -> np.ndarray:
    """Elementwise ``is None`` of an object column."""
    return column == None  # noqa: E711 (elementwise on numpy arrays)


def _class_text(value: Any) -> str:
    """A number written as a class name: ``1`` for integral values, else ``repr``."""
    if type(value) is float:
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


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


class _FeatureColumns:
    """Flat (feature id, value) entries of one type, with each row's first entry offset."""

    def __init__(self, ids: list[int], values: list[Any], starts: list[int], dtype: Any) -> None:
        self.ids = np.array(ids, dtype=np.intp)
        self.values = np.array(values, dtype=dtype)
        self.dtype = dtype
        self.fill: Any = np.nan if dtype is np.float64 else None
        # The row of each entry, from the offsets where each row's entries start.
        counts = np.diff(np.append(np.array(starts, dtype=np.intp), self.ids.size))
        self.rows = np.repeat(np.arange(len(starts)), counts)

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
    n_groups = len(group_rows)
    sizes = [n_rows if rows is None else rows.size for rows in group_rows]
    out: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = [({}, {}) for _ in group_rows]
    segments = [(kind, fid, entries) for kind in (0, 1) for fid, entries in kinds[kind].segments()]
    segments.sort(key=lambda segment: -segment[2].size)
    budget = MAX_CELLS
    dropped = 0
    for kind, fid, entries in segments:
        columns = kinds[kind]
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


def _summary(event: str, reasons: dict[str, int]) -> str:
    total = sum(reasons.values())
    ranked = sorted(reasons.items(), key=lambda item: -item[1])
    parts = [f"{reason} ({count})" for reason, count in ranked[:MAX_REASONS]]
    if len(ranked) > MAX_REASONS:
        others = sum(count for _, count in ranked[MAX_REASONS:])
        parts.append(f"{len(ranked) - MAX_REASONS} other reasons ({others})")
    noun = "record" if total == 1 else "records"
    return f"{total} {event} {noun} rejected: {', '.join(parts)}"


class _Labels:
    """Label rows, grouped by model; one call per ``ml.label`` record (labels are few)."""

    def __init__(self) -> None:
        self.groups: dict[str, int] = {}
        self.row_group: list[int] = []
        self.times: list[int] = []
        self.ids: list[str] = []
        self.numbers: list[Any] = []
        self.class_rows: list[int] = []
        self.class_values: list[str] = []
        self.reasons: dict[str, int] = {}

    def add(self, record: LogRecord, now: int) -> None:
        model = pid = number = cls = None
        problem = None
        for kv in record.attributes:
            key = kv.key
            if key == semconv.LABEL_VALUE:
                value = kv.value
                kind = value.WhichOneof("value")
                if kind == "double_value" or kind == "int_value":
                    number = getattr(value, kind)
                elif kind == "string_value" and value.string_value:
                    cls = value.string_value
                elif kind == "bool_value":
                    cls = "true" if value.bool_value else "false"
                elif problem is None:  # an empty string too: "ml.label.value is empty"
                    problem = _mistyped(key, value, "a number, string or bool")
            elif key == semconv.MODEL_NAME or key == semconv.PREDICTION_ID:
                value = kv.value
                text = value.string_value
                if not text:
                    problem = problem or _mistyped(key, value, "a string")
                elif key == semconv.MODEL_NAME:
                    model = text
                else:
                    pid = text
        if model is None or pid is None or (number is None and cls is None):
            if problem is None:
                missing = (
                    semconv.MODEL_NAME
                    if model is None
                    else semconv.PREDICTION_ID
                    if pid is None
                    else semconv.LABEL_VALUE
                )
                problem = f"missing {missing}"
            self.reasons[problem] = self.reasons.get(problem, 0) + 1
            return
        group = self.groups.get(model)
        if group is None:
            group = self.groups[model] = len(self.groups)
        self.row_group.append(group)
        self.times.append(record.time_unix_nano or record.observed_time_unix_nano or now)
        self.ids.append(pid)
        self.numbers.append(number)
        if cls is not None:
            self.class_rows.append(len(self.row_group) - 1)
            self.class_values.append(cls)

    def batches(self) -> list[LabelBatch]:
        if not self.row_group:
            return []
        row_group = np.array(self.row_group, dtype=np.intp)
        times = _as_int64(self.times)
        ids = np.array(self.ids, dtype=object)
        numbers, classes = _numbers_and_classes(self.numbers, self.class_rows, self.class_values)
        out = []
        for model, group in self.groups.items():
            rows = None if len(self.groups) == 1 else np.flatnonzero(row_group == group)
            value_class = None
            if classes is not None and (rows is None or (row_group[self.class_rows] == group).any()):
                value_class = classes if rows is None else classes[rows]
            if rows is None:
                out.append(LabelBatch(model, times, ids, numbers, value_class))
            else:
                out.append(LabelBatch(model, times[rows], ids[rows], numbers[rows], value_class))
        return out


def extract_logs_oracle(request: ExportLogsServiceRequest, now_unix_nano: int | None = None) -> Extraction:
    """Turn a logs request into prediction and label batches (see the module docstring).

    ``now_unix_nano`` is the receive time, for records with neither timestamp
    (default: now).
    """
    now = time.time_ns() if now_unix_nano is None else now_unix_nano
    prediction_event = semconv.PREDICTION_EVENT
    label_event = semconv.LABEL_EVENT
    feature_prefix = semconv.FEATURE_PREFIX
    which = AnyValue.WhichOneof

    # One entry per ml.prediction record, rejected ones included (group -1): a row's
    # index is known before its required attributes are, and rejected rows are
    # masked out once per request rather than undone per record.
    row_group: list[int] = []
    times: list[int] = []
    ids: list[str | None] = []
    numbers: list[Any] = []
    # Optional, usually absent: kept sparse, as (row, value).
    class_rows: list[int] = []
    class_values: list[str] = []
    score_rows: list[int] = []
    score_values: list[Any] = []
    num_starts: list[int] = []
    num_ids: list[int] = []
    num_values: list[Any] = []
    cat_starts: list[int] = []
    cat_ids: list[int] = []
    cat_values: list[str] = []
    groups: dict[tuple[str, str], int] = {}
    route = dict(_PREDICTION_KEYS)
    feature_names: list[str] = []
    reasons: dict[str, int] = {}
    labels = _Labels()
    last_model = last_version = None
    last_group = -1

    route_get = route.get
    row_group_append = row_group.append
    times_append = times.append
    ids_append = ids.append
    numbers_append = numbers.append
    num_starts_append = num_starts.append
    num_ids_append = num_ids.append
    num_values_append = num_values.append
    cat_starts_append = cat_starts.append
    cat_ids_append = cat_ids.append
    cat_values_append = cat_values.append

    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                name = record.event_name
                if name != prediction_event:
                    if not name:
                        name = _legacy_event_name(record)
                    if name == label_event:
                        labels.add(record, now)
                    if name != prediction_event:
                        continue

                num_starts_append(len(num_values))
                cat_starts_append(len(cat_values))
                model = version = pid = number = None
                problem = None
                for kv in record.attributes:
                    key = kv.key
                    code = route_get(key)
                    if code is None:  # first time in this request
                        if key.startswith(feature_prefix) and len(key) > len(feature_prefix):
                            fid = len(feature_names)
                            feature_names.append(key[len(feature_prefix) :])
                            # Guess its type from its first value (see _OTHER_GUESS).
                            code = fid if which(kv.value, "value") == "double_value" else _OTHER_GUESS - fid
                        else:
                            code = _OTHER
                        route[key] = code
                    if code >= 0:  # a float feature: a non-zero double needs no WhichOneof
                        value = kv.value
                        x = value.double_value
                        if x:  # a set, non-zero double (NaN included)
                            num_ids_append(code)
                            num_values_append(x)
                            continue
                        kind = which(value, "value")
                        if kind == "double_value":
                            num_ids_append(code)
                            num_values_append(0.0)
                        elif kind == "string_value":
                            cat_ids_append(code)
                            cat_values_append(value.string_value)
                        elif kind == "int_value":
                            num_ids_append(code)
                            num_values_append(value.int_value)
                        elif kind == "bool_value":
                            cat_ids_append(code)
                            cat_values_append("true" if value.bool_value else "false")
                        # anything else (array, map, bytes, empty): missing in this row
                    elif code <= _OTHER_GUESS:  # a feature first seen as int, string or bool
                        fid = _OTHER_GUESS - code
                        value = kv.value
                        kind = which(value, "value")
                        if kind == "string_value":
                            cat_ids_append(fid)
                            cat_values_append(value.string_value)
                        elif kind == "int_value":
                            num_ids_append(fid)
                            num_values_append(value.int_value)
                        elif kind == "double_value":
                            num_ids_append(fid)
                            num_values_append(value.double_value)
                        elif kind == "bool_value":
                            cat_ids_append(fid)
                            cat_values_append("true" if value.bool_value else "false")
                    elif code == _OTHER:
                        continue
                    elif code >= _ID:  # model, version, id: non-empty strings
                        text = kv.value.string_value
                        if text:
                            if code == _ID:
                                pid = text
                            elif code == _MODEL:
                                model = text
                            else:
                                version = text
                        elif problem is None:
                            problem = _mistyped(key, kv.value, "a string")
                    else:  # prediction value or score: mostly a non-zero double, as for features
                        value = kv.value
                        x = value.double_value
                        if not x:
                            kind = which(value, "value")
                            if kind == "int_value":
                                x = value.int_value
                            elif kind != "double_value":  # a class name, or unusable
                                if code == _VALUE and kind == "string_value":
                                    class_rows.append(len(row_group))
                                    class_values.append(value.string_value)
                                elif code == _VALUE and kind == "bool_value":
                                    class_rows.append(len(row_group))
                                    class_values.append("true" if value.bool_value else "false")
                                continue
                        if code == _VALUE:
                            number = x
                        else:
                            score_rows.append(len(row_group))
                            score_values.append(x)

                if model is None or version is None or pid is None:
                    if problem is None:
                        problem = (
                            "missing "
                            + _CODE_NAMES[_MODEL if model is None else _VERSION if version is None else _ID]
                        )
                    reasons[problem] = reasons.get(problem, 0) + 1
                    row_group_append(-1)
                elif version == last_version and model == last_model:  # mostly one model per request
                    row_group_append(last_group)
                else:
                    group = groups.get((model, version))
                    if group is None:
                        group = groups[model, version] = len(groups)
                    row_group_append(group)
                    last_model, last_version, last_group = model, version, group
                times_append(record.time_unix_nano or record.observed_time_unix_nano or now)
                ids_append(pid)
                numbers_append(number)

    messages = []
    predictions: list[PredictionBatch] = []
    if row_group:
        predictions, dropped = _prediction_batches(
            groups,
            np.array(row_group, dtype=np.intp),
            times,
            ids,
            numbers,
            (class_rows, class_values),
            (score_rows, score_values),
            feature_names,
            _FeatureColumns(num_ids, num_values, num_starts, np.float64),
            _FeatureColumns(cat_ids, cat_values, cat_starts, object),
        )
        if reasons:
            messages.append(_summary(prediction_event, reasons))
        if dropped:
            messages.append(
                f"{dropped} {feature_prefix}* values left out: too many distinct features in one request"
            )
    if labels.reasons:
        messages.append(_summary(label_event, labels.reasons))
    rejected = sum(reasons.values()) + sum(labels.reasons.values())
    return Extraction(predictions, labels.batches(), rejected, "; ".join(messages))


def _prediction_batches(
    groups: dict[tuple[str, str], int],
    row_group: np.ndarray,
    times: list[int],
    ids: list[str | None],
    numbers: list[Any],
    classes: tuple[list[int], list[str]],
    scores: tuple[list[int], list[Any]],
    feature_names: list[str],
    numeric: _FeatureColumns,
    categorical: _FeatureColumns,
) -> tuple[list[PredictionBatch], int]:
    """The batches of one request, from its flat per-record lists (vectorised)."""
    if not groups:
        return [], 0
    # Rows of each group; None when one group holds every row (the common case: no copy).
    if len(groups) == 1 and row_group.min() >= 0:
        group_rows: list[np.ndarray | None] = [None]
    else:
        group_rows = [np.flatnonzero(row_group == group) for group in range(len(groups))]
    columns, dropped = _feature_columns((numeric, categorical), feature_names, row_group, group_rows)
    time_column = _as_int64(times)
    id_column = np.array(ids, dtype=object)
    prediction, prediction_class = _numbers_and_classes(numbers, *classes)
    score = np.full(len(numbers), np.nan)
    score[scores[0]] = scores[1]

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
        if prediction_class is not None and (row_group[classes[0]] == group).any():
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
    return batches, dropped
