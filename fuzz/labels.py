"""Fuzz target: the ``POST /v1/labels`` body parser and label validation.

:func:`~modeltel_collector.labels.parse_labels`, then
:func:`~modeltel_collector.labels.labels_from_records`, then the route's answer
(:func:`~modeltel_collector.receivers.labels_http._answer`).

Input: first byte even, the rest is the body; odd, the rest drives a generator of label
documents (a list or ``{"labels": [...]}``, records whose fields are of any JSON type: NaN,
infinities, huge integers, digit strings in other scripts, odd unicode).

Contract: ``InvalidPayload`` or ``PayloadTooLarge`` (more than the limit of records) only;
otherwise each record is accepted or rejected exactly as the rules in ``labels.py`` say (an
independent oracle here), the batches hold the accepted rows, per model in order of first
appearance, with their values, classes and times, and the answer's counts add up.
"""

from __future__ import annotations

import json
import math
from typing import Any

import atheris
import numpy as np

from fuzz import INSTRUMENTED
from fuzz._harness import instrument, main, structured
from fuzz._inputs import dumps, json_value, text

with instrument(INSTRUMENTED):  # numpy: no comparison tracing (see instrument)
    from modeltel_collector.batch import LabelBatch
    from modeltel_collector.labels import MAX_LABELS_PER_REQUEST, labels_from_records, parse_labels
    from modeltel_collector.receivers.consumer import InvalidPayload, LabelsOutcome
    from modeltel_collector.receivers.errors import PayloadTooLarge
    from modeltel_collector.receivers.labels_http import MAX_ERRORS_SHOWN, _answer

NOW = 1_800_000_000_000_000_000
INT64_MAX = 2**63 - 1
FIELDS = ["model", "prediction_id", "value", "time_unix_nano", "labels", "other"]


def generated_body(fdp: Any) -> bytes:
    """A label document: mostly valid records, each field now and then of another JSON type."""
    records: list[Any] = []
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        if fdp.ConsumeIntInRange(0, 9) == 0:
            records.append(json_value(fdp, FIELDS))
            continue
        record: dict[str, Any] = {
            "model": text(fdp, ["m", "n"]),
            "prediction_id": text(fdp, ["p", "q"]),
            "value": fdp.PickValueInList([1, 0.5, "cls", True]),
        }
        if fdp.ConsumeBool():
            record["time_unix_nano"] = fdp.PickValueInList([1, 0, str(NOW), INT64_MAX, 2**63, -1, "²"])
        for _ in range(fdp.ConsumeIntInRange(0, 2)):
            record[fdp.PickValueInList(FIELDS)] = json_value(fdp, FIELDS)
        records.append(record)
    if fdp.ConsumeIntInRange(0, 31) == 0:  # more records than a request may hold (small ones: fast)
        records += [0] * (MAX_LABELS_PER_REQUEST + 1 - len(records))
    document: Any = {"labels": records} if fdp.ConsumeBool() else records
    return dumps(document)


def expected(record: Any) -> tuple[str, str, float | None, str | None, int] | None:
    """The oracle: (model, id, number, class, time) of a valid record, None for an invalid one."""
    if type(record) is not dict:
        return None
    model, pid, value, nanos = (
        record.get(key) for key in ("model", "prediction_id", "value", "time_unix_nano")
    )
    if type(model) is not str or not model or type(pid) is not str or not pid:
        return None
    number: float | None = None
    cls: str | None = None
    if type(value) is bool:
        cls = "true" if value else "false"
    elif isinstance(value, (int, float)):  # bools were handled above
        try:
            number = float(value)
        except OverflowError:
            return None
        if not math.isfinite(number):
            return None
    elif type(value) is str and value:
        cls = value
    else:
        return None
    if nanos is None:
        nanos = 0
    elif type(nanos) is str and nanos.isascii() and nanos.isdigit():
        nanos = int(nanos)
    elif type(nanos) is not int:
        return None
    if not 0 <= nanos <= INT64_MAX:
        return None
    return model, pid, number, cls, nanos or NOW


def check_batches(records: list[Any], batches: list[LabelBatch], rejected: list[int]) -> None:
    """The batches and rejections are those the oracle expects, row for row."""
    rows = [expected(record) for record in records]
    assert rejected == [i for i, row in enumerate(rows) if row is None], "rejected other records"
    by_model: dict[str, list[tuple[str, str, float | None, str | None, int]]] = {}
    for row in rows:
        if row is not None:
            by_model.setdefault(row[0], []).append(row)
    assert [batch.model for batch in batches] == list(by_model), "batches not per model, in order"
    for batch, want in zip(batches, by_model.values(), strict=True):
        assert len(batch) == len(want)
        assert batch.prediction_ids.tolist() == [row[1] for row in want]
        assert batch.time_unix_nano.dtype == np.int64
        assert batch.time_unix_nano.tolist() == [row[4] for row in want]
        numbers = [math.nan if row[2] is None else row[2] for row in want]
        assert np.array_equal(batch.value, np.array(numbers, dtype=np.float64), equal_nan=True)
        if all(row[3] is None for row in want):
            assert batch.value_class is None
        else:
            assert batch.value_class is not None
            classes = [row[3] if row[3] is not None else _class_text(row[2]) for row in want]
            assert batch.value_class.tolist() == classes


def _class_text(number: float | None) -> str:
    assert number is not None
    return str(int(number)) if number.is_integer() else repr(number)


def check(payload: bytes) -> None:
    """Parse ``payload`` as the route does and assert the contract."""
    try:
        records = parse_labels(payload)
    except InvalidPayload as refused:
        assert str(refused)
        return
    except PayloadTooLarge as refused:
        document = json.loads(payload)
        listed = document["labels"] if isinstance(document, dict) else document
        assert len(listed) > MAX_LABELS_PER_REQUEST, refused
        return
    assert isinstance(records, list) and len(records) <= MAX_LABELS_PER_REQUEST
    batches, errors = labels_from_records(records, now_unix_nano=NOW)
    assert all(error.error for error in errors), "an error without a reason"
    check_batches(records, batches, [error.index for error in errors])
    answer = _answer(LabelsOutcome(sum(len(batch) for batch in batches), errors))
    assert answer["accepted"] + answer["rejected"] == len(records)
    assert len(answer["errors"]) == min(answer["rejected"], MAX_ERRORS_SHOWN)
    assert len(answer["errors"]) + answer["errors_not_shown"] == answer["rejected"]
    json.dumps(answer, allow_nan=False)  # the answer is JSON


def test_one_input(data: bytes) -> None:
    """One fuzz case."""
    is_structured, _, rest = structured(data)
    check(generated_body(atheris.FuzzedDataProvider(rest)) if is_structured else rest)


if __name__ == "__main__":
    main(test_one_input)
