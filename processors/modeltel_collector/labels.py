"""Labels as plain records: what ``POST /v1/labels`` takes and ``modeltel labels import`` sends.

A label record is a JSON object::

    {"model": "salary", "prediction_id": "3f2a...", "value": 41250.0, "time_unix_nano": 1718000000000000000}

``model`` and ``prediction_id`` are non-empty strings; ``value`` is a finite number, a
non-empty string (a class name) or a bool; ``time_unix_nano`` is optional (an integer, or
a string of digits as OTLP/JSON writes int64; absent, null or 0 means "when received").
Other keys are ignored.

:func:`labels_from_records` turns a list of them into one :class:`LabelBatch` per model,
with the conventions of :mod:`modeltel_collector.extract` for ``ml.label`` events: a
float64 ``value`` (NaN where the label is not a number) and, when any row of the batch
sent a string or bool, a ``value_class`` column (bools as ``"true"``/``"false"``, numbers
written ``"1"`` when integral, else ``repr``). Invalid records are reported one by one,
by their index in the list, and left out; the others are used.

:func:`parse_labels` reads a ``/v1/labels`` body into records. :func:`records_from_columns`
is the importer's side: file columns (as Python lists) into
those records.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modeltel_collector.batch import LabelBatch
from modeltel_collector.extract import _as_int64, _numbers_and_classes
from modeltel_collector.receivers.consumer import InvalidPayload
from modeltel_collector.receivers.errors import PayloadTooLarge

MODEL = "model"
PREDICTION_ID = "prediction_id"
VALUE = "value"
TIME = "time_unix_nano"

LABELS_PATH = "/v1/labels"
"""Where the collector's OTLP/HTTP receiver takes labels."""

MAX_LABELS_PER_REQUEST = 10_000
"""Most label records one ``POST /v1/labels`` may carry (413 beyond)."""

_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class LabelError:
    """Why the record at ``index`` of a request was left out."""

    index: int
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "error": self.error}


def _kind(value: Any) -> str:
    """``value``'s JSON type, with its article, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _text_problem(key: str, value: Any) -> str:
    if value is None:
        return f"missing {key}"
    if value == "":
        return f"{key} is empty"
    return f"{key} is {_kind(value)}, not a string"


def _time(value: Any) -> int | None:
    """Nanoseconds from a ``time_unix_nano`` (int or digit string, 0..int64 max); None if invalid."""
    if type(value) is int:
        nanos = value
    elif type(value) is str and value.isascii() and value.isdigit():  # not "²" nor "١٢٣"
        nanos = int(value)
    else:
        return None
    return nanos if 0 <= nanos <= _INT64_MAX else None


def parse_labels(payload: bytes) -> list[Any]:
    """The records of a ``/v1/labels`` body; :class:`InvalidPayload` or :class:`PayloadTooLarge`."""
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidPayload(f"the body is not valid JSON: {error}") from None
    if isinstance(document, dict) and "labels" in document:
        document = document["labels"]
    if not isinstance(document, list):
        raise InvalidPayload(
            'the body must be a JSON list of labels, or an object {"labels": [...]}, '
            f"not {type(document).__name__ if not isinstance(document, dict) else 'an object without labels'}"
        )
    if len(document) > MAX_LABELS_PER_REQUEST:
        raise PayloadTooLarge(
            f"{len(document)} labels in one request; the limit is {MAX_LABELS_PER_REQUEST}: "
            "send them in smaller requests"
        )
    return document


def labels_from_records(
    records: Sequence[Any], now_unix_nano: int | None = None
) -> tuple[list[LabelBatch], list[LabelError]]:
    """One :class:`LabelBatch` per model (in order of first appearance) and the invalid records.

    One pass of plain Python over the records (they are already Python objects, fresh from
    ``json.loads``), then numpy builds each column once. ``now_unix_nano`` is the time given
    to records without one (default: now).
    """
    now = time.time_ns() if now_unix_nano is None else now_unix_nano
    groups: dict[str, int] = {}
    row_group: list[int] = []
    times: list[int] = []
    ids: list[str] = []
    numbers: list[float | None] = []
    class_rows: list[int] = []
    class_values: list[str] = []
    errors: list[LabelError] = []

    for index, record in enumerate(records):
        if type(record) is not dict:
            errors.append(LabelError(index, f"the item is {_kind(record)}, not an object"))
            continue
        get = record.get
        model = get(MODEL)
        if type(model) is not str or not model:
            errors.append(LabelError(index, _text_problem(MODEL, model)))
            continue
        pid = get(PREDICTION_ID)
        if type(pid) is not str or not pid:
            errors.append(LabelError(index, _text_problem(PREDICTION_ID, pid)))
            continue
        value = get(VALUE)
        kind = type(value)
        number: float | None = None
        cls: str | None = None
        if isinstance(value, (float, int)) and kind is not bool:
            try:
                number = float(value)
            except OverflowError:
                errors.append(LabelError(index, f"{VALUE} is too large for a float"))
                continue
            if not math.isfinite(number):
                errors.append(LabelError(index, f"{VALUE} is not a finite number"))
                continue
        elif kind is str:
            if not value:
                errors.append(LabelError(index, f"{VALUE} is empty"))
                continue
            cls = value
        elif kind is bool:
            cls = "true" if value else "false"
        else:
            problem = f"missing {VALUE}" if value is None else f"{VALUE} is {_kind(value)}"
            if value is not None:
                problem += ", not a number, string or bool"
            errors.append(LabelError(index, problem))
            continue
        raw_time = get(TIME)
        nanos = now if raw_time is None else _time(raw_time)
        if nanos is None:
            if type(raw_time) is int or (type(raw_time) is str and raw_time.isascii() and raw_time.isdigit()):
                problem = f"{TIME} is out of range (0 to 2**63 - 1)"
            else:
                problem = f"{TIME} is {_kind(raw_time)}, not an integer (nanoseconds since the Unix epoch)"
            errors.append(LabelError(index, problem))
            continue
        if nanos == 0:  # as OTLP: an unset time
            nanos = now

        group = groups.get(model)
        if group is None:
            group = groups[model] = len(groups)
        if cls is not None:
            class_rows.append(len(row_group))
            class_values.append(cls)
        row_group.append(group)
        times.append(nanos)
        ids.append(pid)
        numbers.append(number)

    return _batches(groups, row_group, times, ids, numbers, class_rows, class_values), errors


def _batches(
    groups: dict[str, int],
    row_group: list[int],
    times: list[int],
    ids: list[str],
    numbers: list[float | None],
    class_rows: list[int],
    class_values: list[str],
) -> list[LabelBatch]:
    if not row_group:
        return []
    time_column = _as_int64(times)
    id_column = np.array(ids, dtype=object)
    values, classes = _numbers_and_classes(numbers, class_rows, class_values)
    if len(groups) == 1:  # the common case: every row in one batch, no copies
        return [LabelBatch(next(iter(groups)), time_column, id_column, values, classes)]
    group_column = np.array(row_group, dtype=np.intp)
    class_groups = group_column[class_rows] if class_rows else None
    out = []
    for model, group in groups.items():
        rows = np.flatnonzero(group_column == group)
        value_class = None
        if classes is not None and class_groups is not None and (class_groups == group).any():
            value_class = classes[rows]
        out.append(LabelBatch(model, time_column[rows], id_column[rows], values[rows], value_class))
    return out


def records_from_columns(
    models: Sequence[Any] | str, prediction_ids: Sequence[Any], values: Sequence[Any]
) -> list[dict[str, Any]]:
    """Label records from columns of equal length (``models`` may be one name for every row).

    NaN values become null (JSON has no NaN), so the collector reports them as missing.
    """
    out: list[dict[str, Any]] = []
    append = out.append
    if isinstance(models, str):
        for pid, value in zip(prediction_ids, values, strict=True):
            append({MODEL: models, PREDICTION_ID: pid, VALUE: None if value != value else value})
    else:
        for model, pid, value in zip(models, prediction_ids, values, strict=True):
            append({MODEL: model, PREDICTION_ID: pid, VALUE: None if value != value else value})
    return out
