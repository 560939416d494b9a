"""Structured inputs drawn from a :class:`atheris.FuzzedDataProvider`, and small oracles.

Nothing here imports the code under test (see the package docstring).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from modeltel import semconv

F = semconv.FEATURE_PREFIX
ML_EVENTS = (semconv.PREDICTION_EVENT, semconv.LABEL_EVENT)
INT64 = (-(2**63), 2**63 - 1)
ODD_TEXT = ["", "\x00", "a\x00b", "\u200f\u202eevil\u202c", "🧠👩‍👩‍👧", "\ufeff", "\U0010ffff", " ", "\n\r\t"]
ODD_TEXT += ["é" * 40, "\u0661\u0662", "²", "ǅ", "\u0085", "\u2028"]
SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 0.5, 1.0]
EVENT_NAMES = [*ML_EVENTS, "", "other", "ml.prediction ", "ML.PREDICTION"]
ATTRIBUTE_KEYS = [
    semconv.MODEL_NAME,
    semconv.MODEL_VERSION,
    semconv.PREDICTION_ID,
    semconv.PREDICTION_VALUE,
    semconv.PREDICTION_SCORE,
    semconv.LABEL_VALUE,
    "event.name",
    F + "a",
    F + "b",
    F,
    "x",
]


def text(fdp: Any, vocabulary: Sequence[str] = ()) -> str:
    """A string: from ``vocabulary``, odd unicode, or whatever the input holds."""
    choice = fdp.ConsumeIntInRange(0, 3)
    if choice == 0 and vocabulary:
        return str(fdp.PickValueInList(list(vocabulary)))
    if choice == 1:
        return str(fdp.PickValueInList(ODD_TEXT))
    return str(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12)))


def number(fdp: Any) -> float | int:
    """A float or int, the special values (NaN, infinities, int64 extremes) well represented."""
    choice = fdp.ConsumeIntInRange(0, 4)
    if choice == 0:
        return float(fdp.PickValueInList(SPECIAL_FLOATS))
    if choice == 1:
        return int(fdp.PickValueInList([*INT64, 0, -1, 1]))
    if choice == 2:
        return int(fdp.ConsumeIntInRange(*INT64))
    return float(fdp.ConsumeRegularFloat() if choice == 3 else fdp.ConsumeFloat())


_STRINDEX = "string_value_strindex" in AnyValue.DESCRIPTOR.fields_by_name
"""Whether ``AnyValue`` has the field (opentelemetry-proto 1.45 and later)."""


def any_value(fdp: Any, depth: int = 0) -> AnyValue:
    """An ``AnyValue`` of any kind, arrays and maps nested a few levels."""
    out = AnyValue()
    kind = fdp.ConsumeIntInRange(0, 8 if depth < 3 else 6)
    if kind == 1:
        out.string_value = text(fdp, ["m", "1", "p", "cls"])
    elif kind == 2:
        out.bool_value = fdp.ConsumeBool()
    elif kind == 3:
        out.int_value = fdp.ConsumeIntInRange(*INT64)
    elif kind == 4:
        out.double_value = float(number(fdp))
    elif kind == 5:
        out.bytes_value = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 6))
    elif kind == 6 and _STRINDEX:  # an index into a profiles string table: no value in logs
        out.string_value_strindex = fdp.ConsumeIntInRange(-(2**31), 2**31 - 1)
    elif kind == 6:
        out.string_value = text(fdp, ["m", "1", "p", "cls"])
    elif kind == 7:
        out.array_value.SetInParent()
        for _ in range(fdp.ConsumeIntInRange(0, 3)):
            out.array_value.values.append(any_value(fdp, depth + 1))
    elif kind == 8:
        out.kvlist_value.SetInParent()
        for _ in range(fdp.ConsumeIntInRange(0, 3)):
            pair = out.kvlist_value.values.add(key=text(fdp))
            pair.value.CopyFrom(any_value(fdp, depth + 1))
    return out  # kind 0: no value set


def logs_request(fdp: Any, max_features: int = 1500) -> ExportLogsServiceRequest:
    """A request of ``ml.*`` and other records with attributes of every kind, keys often repeated;
    now and then a record with up to ``max_features`` more features."""
    message = ExportLogsServiceRequest()
    for _ in range(fdp.ConsumeIntInRange(1, 2)):
        resource_logs = message.resource_logs.add()
        for _ in range(fdp.ConsumeIntInRange(1, 2)):
            records = resource_logs.scope_logs.add().log_records
            for _ in range(fdp.ConsumeIntInRange(0, 6)):
                record = records.add(event_name=text(fdp, EVENT_NAMES))
                if fdp.ConsumeBool():
                    record.time_unix_nano = fdp.ConsumeIntInRange(0, 2**64 - 1)
                if fdp.ConsumeBool():
                    record.observed_time_unix_nano = fdp.ConsumeIntInRange(0, 2**64 - 1)
                for _ in range(fdp.ConsumeIntInRange(0, 8)):
                    pair = record.attributes.add(key=text(fdp, ATTRIBUTE_KEYS))
                    pair.value.CopyFrom(any_value(fdp))
                if fdp.ConsumeIntInRange(0, 15) == 15:  # now and then, thousands of features
                    sparse = fdp.ConsumeBool()  # the same names in every record, or its own
                    for i in range(fdp.ConsumeIntInRange(0, max_features)):
                        pair = record.attributes.add(key=f"{F}{len(records) if sparse else ''}f{i}")
                        pair.value.double_value = float(i)
    return message


def json_value(fdp: Any, keys: Sequence[str], depth: int = 0) -> Any:
    """A JSON-able value whose object keys mostly come from ``keys``; non-finite floats included."""
    kind = fdp.ConsumeIntInRange(0, 8 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return number(fdp)
    if kind in (3, 4):
        return text(fdp, [*keys, "1", "1e3", "10s", "ml.prediction", "0", "-1"])
    if kind == 5:
        return str(fdp.ConsumeIntInRange(-(2**64), 2**64))
    if kind == 6:
        return [json_value(fdp, keys, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    return {text(fdp, keys): json_value(fdp, keys, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))}


def dumps(document: Any) -> bytes:
    """JSON as Python writes it, ``NaN`` and ``Infinity`` included (what hostile clients send)."""
    return json.dumps(document, allow_nan=True).encode()


def ml_records(message: ExportLogsServiceRequest) -> int:
    """``ml.*`` event records, the legacy ``event.name`` attribute (first one, a string) included."""
    count = 0
    for resource_logs in message.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                name = record.event_name
                if not name:
                    legacy = next((kv.value for kv in record.attributes if kv.key == "event.name"), None)
                    if legacy is not None and legacy.WhichOneof("value") == "string_value":
                        name = legacy.string_value
                count += name in ML_EVENTS
    return count
