"""``extract_logs`` (wire-format extraction) returns exactly what the former, upb-object one did.

The oracle is the previous implementation, kept verbatim in ``tests/collector/extract_oracle.py``.
Requests are generated at the byte level: records are protobuf messages, but every attribute
is a ``KeyValue`` written by hand, mostly as OTLP encoders write them (the fast path), sometimes
not (fields out of order, repeated or unknown fields, non-minimal varints, long strings, nested
values: the slow path), sometimes invalid (bad UTF-8, truncated): the whole request must then
be refused with upb's own error message, as the receivers did when they decoded requests.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from modeltel import semconv
from modeltel_collector import extract as extract_module
from modeltel_collector import wire
from modeltel_collector.extract import Extraction, extract_logs
from modeltel_collector.receivers.consumer import InvalidPayload
from tests.collector import extract_oracle
from tests.collector.extract_oracle import extract_logs_oracle

NOW = 1_800_000_000_000_000_000
F = semconv.FEATURE_PREFIX
INT64 = (-(2**63), 2**63 - 1)


# --------------------------------------------------------------------------------------
# Comparison: same batches, same columns (dtype, bits, order of dict keys), same message
# --------------------------------------------------------------------------------------
def assert_same_column(name: str, new: np.ndarray | None, old: np.ndarray | None) -> None:
    if new is None or old is None:
        assert new is None and old is None, name
        return
    assert new.dtype == old.dtype, name
    assert new.shape == old.shape, name
    if new.dtype == object:
        assert [(type(x), x) for x in new.tolist()] == [(type(x), x) for x in old.tolist()], name
    elif new.dtype == np.float64:
        # NaN-aware ==. Not bit for bit: the former extraction turned -0.0 into 0.0 for a
        # feature whose first value in the request was a double (its double-first shortcut),
        # but kept it otherwise; extraction now always keeps the sign.
        assert np.array_equal(new, old, equal_nan=True), name
    else:
        assert new.tolist() == old.tolist(), name


def assert_same_extraction(new: Extraction, old: Any) -> None:
    assert (new.rejected, new.error_message) == (old.rejected, old.error_message)
    assert len(new.predictions) == len(old.predictions)
    for a, b in zip(new.predictions, old.predictions, strict=True):
        assert (a.model, a.version) == (b.model, b.version)
        assert (type(a.model), type(a.version)) == (str, str)
        for name in ("time_unix_nano", "prediction_ids", "prediction", "prediction_class", "score"):
            assert_same_column(name, getattr(a, name), getattr(b, name))
        for kind in ("numeric", "categorical"):
            assert list(getattr(a, kind)) == list(getattr(b, kind)), kind  # names, in order
            for feature, column in getattr(a, kind).items():
                assert_same_column(f"{kind}[{feature}]", column, getattr(b, kind)[feature])
    assert len(new.labels) == len(old.labels)
    for c, d in zip(new.labels, old.labels, strict=True):
        assert c.model == d.model
        for name in ("time_unix_nano", "prediction_ids", "value", "value_class"):
            assert_same_column(name, getattr(c, name), getattr(d, name))


def check(payload: bytes) -> Extraction | None:
    """Extract with both; the same result, or the same refusal. The new extraction (or None)."""
    try:
        request = ExportLogsServiceRequest.FromString(payload)
    except DecodeError as error:
        with pytest.raises(InvalidPayload) as refused:
            extract_logs(payload, now_unix_nano=NOW)
        assert str(refused.value) == f"the payload is not a valid protobuf ExportLogsServiceRequest: {error}"
        return None
    new = extract_logs(payload, now_unix_nano=NOW)
    assert_same_extraction(new, extract_logs_oracle(request, now_unix_nano=NOW))
    return new


# --------------------------------------------------------------------------------------
# Wire encoding, by hand
# --------------------------------------------------------------------------------------
def varint(n: int, padding: int = 0) -> bytes:
    """``n`` (0 <= n < 2**64) as a varint, with ``padding`` redundant bytes (non-minimal)."""
    groups = []
    while True:
        groups.append(n & 0x7F)
        n >>= 7
        if not n:
            break
    groups += [0] * padding
    groups = groups[:10]
    return bytes([g | 0x80 for g in groups[:-1]] + [groups[-1]])


def field(number: int, payload: bytes, padding: int = 0) -> bytes:
    """A length-delimited field (number < 16)."""
    return bytes([number << 3 | 2]) + varint(len(payload), padding) + payload


def utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # lone surrogates: invalid UTF-8, on purpose


class Raw:
    """An already encoded ``AnyValue``."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Raw({self.data!r})"


def any_value(value: Any, padding: int = 0) -> bytes:
    """Encode as OTLP encoders do (``padding``: non-minimal varints for ints and bools)."""
    if isinstance(value, Raw):
        return value.data
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10" + varint(int(value), padding)
    if isinstance(value, int):
        return b"\x18" + varint(value & (2**64 - 1), padding)
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    if isinstance(value, str):
        return field(1, utf8(value))
    if isinstance(value, bytes):
        return field(7, value)
    if isinstance(value, list):
        return field(5, b"".join(field(1, any_value(item)) for item in value))
    if isinstance(value, dict):
        return field(6, b"".join(field(1, keyvalue(k, v)) for k, v in value.items()))
    raise TypeError(type(value))


def keyvalue(key: str, value: Any, layout: str = "plain", padding: int = 0) -> bytes:
    key_field = field(1, utf8(key))
    value_field = field(2, any_value(value, padding))
    if layout == "plain":
        return key_field + value_field
    if layout == "value-first":
        return value_field + key_field
    if layout == "padded-lengths":  # non-minimal length varints
        return field(1, utf8(key), 1) + field(2, any_value(value), 1)
    if layout == "no-value":
        return key_field
    if layout == "no-key":
        return value_field
    if layout == "key-twice":  # the last one wins
        return field(1, b"shadowed") + key_field + value_field
    if layout == "value-twice":  # merged: the oneof's last field wins
        return key_field + field(2, any_value(3.5)) + value_field
    if layout == "unknown-field":
        return key_field + b"\x18\x07" + value_field + field(9, b"?")
    if layout == "unknown-in-value":
        return key_field + field(2, b"\x48\x01" + any_value(value, padding))
    raise ValueError(layout)


LAYOUTS = [
    "value-first",
    "padded-lengths",
    "no-value",
    "no-key",
    "key-twice",
    "value-twice",
    "unknown-field",
    "unknown-in-value",
]


def record_bytes(
    event: str, attributes: list[bytes], time: int, observed: int, body: bool, split: int
) -> bytes:
    """A LogRecord: attributes around the other fields (``split`` of them before)."""
    record = LogRecord(time_unix_nano=time, observed_time_unix_nano=observed, event_name=event)
    if body:
        record.body.string_value = "GET /predict"
        record.severity_text = "INFO"
        record.trace_id = b"\x01" * 16
    encoded = [field(6, kv) for kv in attributes]
    return b"".join(encoded[:split]) + record.SerializeToString() + b"".join(encoded[split:])


def request_bytes(resources: list[list[list[bytes]]]) -> bytes:
    """Resources of scopes of records (each record already encoded)."""
    out = []
    for i, scopes in enumerate(resources):
        resource = Resource()
        resource.attributes.add(key="service.name").value.string_value = f"svc{i}"
        scope_logs = [
            field(1, InstrumentationScope(name="modeltel").SerializeToString())
            + b"".join(field(2, record) for record in records)
            for records in scopes
        ]
        resource_logs = field(1, resource.SerializeToString()) + b"".join(field(2, s) for s in scope_logs)
        out.append(field(1, resource_logs))
    return b"".join(out)


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------
KEYS = [
    semconv.MODEL_NAME,
    semconv.MODEL_VERSION,
    semconv.PREDICTION_ID,
    semconv.PREDICTION_VALUE,
    semconv.PREDICTION_SCORE,
    semconv.LABEL_VALUE,
    semconv.MODEL_TASK,
    "event.name",
    F + "a",
    F + "b",
    F + "c",
    F + "déjà",
    F + "x" * 130,  # a key over 127 bytes: two-byte length
    F,  # the bare prefix names no feature
    "",
    "http.route",
    "ml.feature",
]

floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 2.5, math.nan, -math.inf, 1e300, 2.0**63]),
    st.floats(allow_nan=True).map(lambda x: -x),
)
ints = st.one_of(
    st.integers(min_value=INT64[0], max_value=INT64[1]),
    st.sampled_from([0, 1, -1, 127, 128, INT64[0], INT64[1], 2**53 + 1]),
)
texts = st.one_of(
    st.sampled_from(["", "m1", "m2", "v1", "v2", "p", "lyon", "paris", "cat", "true", "1", "a\x00", "\x00"]),
    st.text(max_size=6),
    st.text(min_size=120, max_size=140),  # around the one-byte length limit
    st.text(alphabet="é€😀a", max_size=5),
)
weird_values = st.one_of(
    st.binary(max_size=4),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["k", "j"]), st.integers(0, 3), max_size=2),
    st.sampled_from(
        [
            Raw(b"\x10\x02"),  # bool 2: true
            Raw(b"\x18" + b"\xff" * 9 + b"\x7f"),  # 10-byte varint, high bits dropped: -1
            Raw(b"\x18\x80\x80\x00"),  # non-minimal int 0
            Raw(b"\x21" + struct.pack("<d", 1.5) + b"\x18\x05"),  # two oneof fields: the int wins
            Raw(b"\x0a\x01a\x21" + struct.pack("<d", 2.0)),  # string then double: the double wins
            Raw(b"\x48\x01"),  # only an unknown field: no value
            Raw(b"\x2a\x00"),  # an empty array
            Raw(b"\x32\x00"),  # an empty map
        ]
    ),
)
values = st.one_of(floats, ints, st.booleans(), texts, st.none(), weird_values)
invalid_values = st.sampled_from(
    [
        Raw(b"\x0a\x02\xc3\x28"),  # bad UTF-8
        Raw(b"\x0a\x03\xed\xa0\x80"),  # a surrogate
        Raw(b"\x0a\x02\xc0\x80"),  # overlong NUL
        Raw(b"\x0a\x05abc"),  # truncated
        Raw(b"\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"),  # 11-byte varint
        Raw(b"\x2a\x03\x0a\x01\xff"),  # truncated inside an array
        "\udc80",  # a lone surrogate in a string
    ]
)


@st.composite
def attribute(draw: st.DrawFn, key: str | None = None, allow_invalid: bool = False) -> bytes:
    key = draw(st.sampled_from(KEYS)) if key is None else key
    if allow_invalid and draw(st.integers(0, 30)) == 0:
        if draw(st.booleans()):
            return keyvalue(key, draw(invalid_values))
        return keyvalue("\udcff", 1.0)  # a key that is not UTF-8
    value = draw(values)
    layout = "plain" if draw(st.integers(0, 5)) else draw(st.sampled_from(LAYOUTS))
    padding = draw(st.sampled_from([0, 0, 0, 1, 3]))
    return keyvalue(key, value, layout, padding)


def plausible(kind: str) -> st.SearchStrategy[Any]:
    """Values of a key in a well-formed event, mostly valid."""
    return {
        "model": st.sampled_from(["salary", "churn", "", 5, None]),
        "version": st.sampled_from(["v1", "v2", "", None]),
        "id": st.one_of(st.text(min_size=1, max_size=20), st.sampled_from(["", 1.5])),
        "number": st.one_of(floats, ints, st.sampled_from(["cat", True, False, None, b"b"])),
        "feature": st.one_of(floats, ints, texts, st.booleans(), weird_values),
    }[kind]


@st.composite
def template(draw: st.DrawFn) -> list[tuple[str, str]]:
    """The keys of one kind of event, in order, each with what its values look like."""
    event = draw(st.sampled_from([semconv.PREDICTION_EVENT, semconv.LABEL_EVENT]))
    if event == semconv.PREDICTION_EVENT:
        keys = [
            (semconv.MODEL_NAME, "model"),
            (semconv.MODEL_VERSION, "version"),
            (semconv.PREDICTION_ID, "id"),
            (semconv.PREDICTION_VALUE, "number"),
            (semconv.PREDICTION_SCORE, "number"),
        ] + [(F + name, "feature") for name in draw(st.lists(st.sampled_from("abcdxyz"), max_size=6))]
    else:
        keys = [
            (semconv.MODEL_NAME, "model"),
            (semconv.PREDICTION_ID, "id"),
            (semconv.LABEL_VALUE, "number"),
        ]
    keys = draw(st.permutations(keys))
    dropped = draw(st.sets(st.integers(0, len(keys) - 1), max_size=1))
    return [(event, "")] + [k for i, k in enumerate(keys) if i not in dropped]


@st.composite
def records(draw: st.DrawFn, allow_invalid: bool) -> list[bytes]:
    """Records of a few templates (same keys in the same order) and odd ones."""
    templates = draw(st.lists(template(), min_size=1, max_size=3))
    out = []
    for _ in range(draw(st.integers(0, 12))):
        choice = draw(st.integers(0, len(templates) + 1))
        time = draw(st.sampled_from([0, 1_700_000_000_000_000_000, 2**64 - 1, 2**63]))
        observed = draw(st.sampled_from([0, 1_700_000_000_000_000_123, 2**64 - 1]))
        if choice < len(templates):  # a template event, with exactly valued attributes
            (event, _), *keys = templates[choice]
            attributes = [keyvalue(key, draw(plausible(kind))) for key, kind in keys]
            if draw(st.integers(0, 4)) == 0:  # an odd attribute somewhere
                attributes.insert(
                    draw(st.integers(0, len(attributes))), draw(attribute(allow_invalid=allow_invalid))
                )
        else:  # anything
            event = draw(st.sampled_from([semconv.PREDICTION_EVENT, semconv.LABEL_EVENT, "", "other.event"]))
            attributes = draw(st.lists(attribute(allow_invalid=allow_invalid), max_size=8))
        if event and draw(st.integers(0, 5)) == 0:  # the legacy attribute instead of event_name
            attributes.insert(draw(st.integers(0, len(attributes))), keyvalue("event.name", event))
            event = ""
        split = draw(st.integers(0, len(attributes)))
        out.append(record_bytes(event, attributes, time, observed, draw(st.booleans()), split))
    return out


@st.composite
def requests(draw: st.DrawFn, allow_invalid: bool = True) -> bytes:
    all_records = draw(records(allow_invalid))
    cuts = sorted(draw(st.lists(st.integers(0, len(all_records)), max_size=3)))
    groups = [all_records[a:b] for a, b in zip([0, *cuts], [*cuts, len(all_records)], strict=True)]
    resources: list[list[list[bytes]]] = [[]]
    for group in groups:
        if resources[-1] and draw(st.booleans()):
            resources.append([])
        resources[-1].append(group)
    return request_bytes(resources)


COLUMN_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "double": floats,
    "int": ints,
    "bool": st.booleans(),
    "string": st.one_of(st.text(max_size=12), st.sampled_from(["", "lyon", "paris", "a\x00", "é"])),
    "constant": st.just("salary"),
    "model": st.sampled_from(["salary", "churn"]),
    "id": st.text(min_size=1, max_size=12),
}
TWEAKS = [
    "long-string",  # over 125 bytes: a two-byte length
    "trailing-field",  # an unknown field after the value, inside the KeyValue
    "trailing-in-value",  # an unknown field after the value, inside the AnyValue
    "non-minimal",  # a padded varint (ints and bools), else the value first
    "other-key",  # another key of the same length
    "other-kind",  # a value of another kind
    "bool-two",  # a bool of 2 (true), else nothing
    "bad-utf8",  # a string that is not UTF-8: the request is refused
]


def tweaked(key: str, kind: str, value: Any, tweak: str) -> bytes:
    """An attribute of a uniform request that breaks its uniformity in one way."""
    if tweak == "long-string":
        return keyvalue(key, "x" * 130)
    if tweak == "trailing-field":
        return keyvalue(key, value) + b"\x48\x01"
    if tweak == "trailing-in-value":
        return field(1, utf8(key)) + field(2, any_value(value) + b"\x48\x01")
    if tweak == "non-minimal":
        return (
            keyvalue(key, value, "plain", 2)
            if kind in ("int", "bool")
            else keyvalue(key, value, "value-first")
        )
    if tweak == "other-key":
        return keyvalue(key[:-1] + ("y" if key[-1:] != "y" else "z"), value)
    if tweak == "other-kind":
        return keyvalue(key, "text" if kind != "string" else 1.5)
    if tweak == "bool-two":
        return keyvalue(key, Raw(b"\x10\x02")) if kind == "bool" else keyvalue(key, value)
    if tweak == "bad-utf8":
        return keyvalue(key, Raw(b"\x0a\x02\xc3\x28"))
    raise ValueError(tweak)


@st.composite
def uniform_requests(draw: st.DrawFn) -> bytes:
    """Every record with the same keys in the same order and values of the same kinds (the
    template path), but for an occasional tweak that sends the request down the general one."""
    event = draw(st.sampled_from([semconv.PREDICTION_EVENT, semconv.LABEL_EVENT]))
    kinds = st.sampled_from(sorted(COLUMN_VALUES))
    value = semconv.LABEL_VALUE if event == semconv.LABEL_EVENT else semconv.PREDICTION_VALUE
    required = [
        (semconv.MODEL_NAME, draw(st.sampled_from(["constant"] * 3 + ["model"]))),
        (semconv.PREDICTION_ID, draw(st.sampled_from(["id"] * 3 + ["string"]))),
        (value, draw(st.sampled_from(["double"] * 3 + ["int", "bool", "string"]))),
    ]
    if event == semconv.PREDICTION_EVENT:
        required.append((semconv.MODEL_VERSION, "constant"))
        if draw(st.booleans()):
            required.append((semconv.PREDICTION_SCORE, draw(kinds)))
    features = draw(
        st.lists(
            st.tuples(
                st.sampled_from([F + n for n in ("a", "b", "c", "x0", "x1", "déjà")] + ["other"]),
                st.sampled_from(sorted(COLUMN_VALUES)),
            ),
            max_size=6,
        )
    )
    columns = draw(st.permutations(required + features))
    rows = []
    for _ in range(draw(st.integers(1, 15))):
        rows.append([(key, kind, draw(COLUMN_VALUES[kind])) for key, kind in columns])
    if rows[1:] and columns and draw(st.booleans()):
        row = draw(st.integers(1, len(rows) - 1))
        column = draw(st.integers(0, len(columns) - 1))
        key, kind, value = rows[row][column]
        rows[row][column] = (key, kind, Raw(b""))  # placeholder, replaced below
        attributes = [[keyvalue(k, v) for k, _, v in r] for r in rows]
        attributes[row][column] = tweaked(key, kind, value, draw(st.sampled_from(TWEAKS)))
    else:
        attributes = [[keyvalue(k, v) for k, _, v in r] for r in rows]
    time = 1_700_000_000_000_000_000
    records = [record_bytes(event, attrs, time + i, 0, False, 0) for i, attrs in enumerate(attributes)]
    return request_bytes([[records]])


RECORD_FIELDS = ["severity_number", "severity_text", "dropped", "flags", "trace", "body"]


@st.composite
def walkable_requests(draw: st.DrawFn) -> bytes:
    """Records with the same fields in the same order (the record walk), values varying; now and
    then one record that is not like the others, or fields the walk leaves to upb."""
    extras = draw(st.lists(st.sampled_from(RECORD_FIELDS), unique=True, max_size=3))
    order = draw(st.permutations(["time", "observed", "event_name", "attributes", *extras]))
    keys = draw(st.lists(st.sampled_from(KEYS[:10]), min_size=0, max_size=5))
    records = []
    for _ in range(draw(st.integers(1, 8))):
        parts = {
            "time": b"\x09" + struct.pack("<Q", draw(st.sampled_from([0, 1, 17, 2**64 - 1]))),
            "observed": b"\x59" + struct.pack("<Q", draw(st.sampled_from([0, 5, 2**63]))),
            "event_name": field(
                12,
                utf8(draw(st.sampled_from([semconv.PREDICTION_EVENT] * 3 + [semconv.LABEL_EVENT, "", "x"]))),
            ),
            "attributes": b"".join(
                field(6, keyvalue(key, draw(plausible("feature") if draw(st.booleans()) else texts)))
                for key in keys
            ),
            "severity_number": b"\x10" + varint(draw(st.sampled_from([9, 17, 200]))),
            "severity_text": field(3, utf8(draw(st.sampled_from(["INFO", "WARN", "x" * 130, "\udc80"])))),
            "dropped": b"\x38" + varint(draw(st.sampled_from([0, 3, 300]))),
            "flags": b"\x45" + struct.pack("<I", 1),
            "trace": field(9, b"\x01" * draw(st.sampled_from([16, 0]))) + field(10, b"\x02" * 8),
            "body": field(5, any_value(draw(st.sampled_from(["text", 1.5])))),
        }
        fields = list(order)
        if draw(st.integers(0, 9)) == 0:  # this one record differs
            fields = draw(st.permutations(fields))
        records.append(b"".join(parts[name] for name in fields))
    return request_bytes([[records]])


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_same_as_the_former_extraction(payload: bytes) -> None:
    check(payload)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(walkable_requests())
def test_same_on_records_of_one_shape(payload: bytes) -> None:
    check(payload)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(uniform_requests())
def test_same_on_uniform_requests(payload: bytes) -> None:
    check(payload)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(allow_invalid=False), st.integers(0, 40))
def test_same_cell_budget(payload: bytes, max_cells: int) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(extract_module, "MAX_CELLS", max_cells)
        patch.setattr(extract_oracle, "MAX_CELLS", max_cells)
        check(payload)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_same_on_arbitrary_bytes(payload: bytes) -> None:
    check(payload)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS[:9]), st.binary(max_size=12)), max_size=8))
@example([(semconv.MODEL_NAME, b"\x0a\x01\xff")])
def test_same_on_arbitrary_values(pairs: list[tuple[str, bytes]]) -> None:
    """Any bytes as an AnyValue: decoded exactly as upb does, or refused as upb does."""
    attributes = [keyvalue(key, Raw(data)) for key, data in pairs]
    prediction = [
        keyvalue(semconv.MODEL_NAME, "m"),
        keyvalue(semconv.MODEL_VERSION, "v"),
        keyvalue(semconv.PREDICTION_ID, "p"),
    ]
    check(
        request_bytes([[[record_bytes(semconv.PREDICTION_EVENT, prediction + attributes, 1, 0, False, 0)]]])
    )


def uniform_request(rows: int, features: dict[str, Any]) -> bytes:
    records = [
        record_bytes(
            semconv.PREDICTION_EVENT,
            [
                keyvalue(semconv.MODEL_NAME, "salary"),
                keyvalue(semconv.MODEL_VERSION, "v1"),
                keyvalue(semconv.PREDICTION_ID, f"id-{i}"),
                *(
                    keyvalue(F + name, value(i) if callable(value) else value)
                    for name, value in features.items()
                ),
            ],
            1_700_000_000_000_000_000 + i,
            0,
            False,
            0,
        )
        for i in range(rows)
    ]
    return request_bytes([[records]])


def test_uniform_requests_take_the_template_path_and_agree():
    extraction = check(
        uniform_request(
            50,
            {
                "x": lambda i: float(i) - 10.5,
                "n": lambda i: -(i**7),
                "city": lambda i: ["lyon", "paris", "nice"][i % 3],
                "note": lambda i: "é" * (i % 4),
                "flag": lambda i: i % 2 == 0,
                "nul": lambda i: "a\x00" if i % 5 else "",
            },
        )
    )
    assert extraction is not None
    [batch] = extraction.predictions
    assert batch.categorical["nul"].tolist()[:2] == ["", "a\x00"]
    assert batch.numeric["n"][2] == -(2**7)


def test_a_long_string_in_every_record_is_decoded_by_upb():
    check(uniform_request(20, {"text": lambda i: "t" * (100 + i * 3), "x": 1.0}))


def test_invalid_utf8_anywhere_refuses_the_request_as_upb_does():
    good = uniform_request(3, {"x": 1.0})
    check(good)
    for bad in (
        uniform_request(3, {"x": 1.0, "s": "\udc80"}),  # in a string value (fast path)
        uniform_request(3, {"x": 1.0, "\udc80": 2.0}),  # in a key (fast path)
        uniform_request(3, {"x": 1.0, "s": "\udc80" * 100}),  # in a long string (slow path)
        uniform_request(3, {"x": [1.0, "\udc80"]}),  # inside an array
    ):
        assert check(bad) is None
    # in a field extraction never reads: the request is refused all the same
    record = LogRecord(event_name="other").SerializeToString() + b"\x1a\x01\xff"  # severity_text
    assert check(request_bytes([[[record]]])) is None


def test_nesting_deeper_than_upb_allows_is_refused_as_upb_does():
    def nested(depth: int) -> Raw:
        value = any_value(1.0)
        for _ in range(depth):
            value = field(5, field(1, value))
        return Raw(value)

    for depth in (40, 47, 48, 60):
        prediction = [keyvalue(semconv.MODEL_NAME, "m"), keyvalue(F + "deep", nested(depth))]
        check(request_bytes([[[record_bytes(semconv.PREDICTION_EVENT, prediction, 1, 0, False, 0)]]]))


def test_a_request_without_any_attribute_in_the_fast_layout():
    prediction = [keyvalue(semconv.MODEL_NAME, "m" * 130), keyvalue(F + "tags", ["a", "b"])]
    check(request_bytes([[[record_bytes(semconv.PREDICTION_EVENT, prediction, 1, 0, False, 0)] * 3]]))


def test_keys_and_strings_are_grouped_exactly_even_when_hashes_collide(monkeypatch: pytest.MonkeyPatch):
    """Every hash equal: grouping falls back to comparing the bytes themselves."""
    monkeypatch.setattr(wire, "_mix", lambda hashes, words: np.zeros_like(hashes))
    records = [
        record_bytes(
            semconv.PREDICTION_EVENT,
            [
                keyvalue(semconv.MODEL_NAME, "salary"),
                keyvalue(semconv.MODEL_VERSION, "v1"),
                keyvalue(semconv.PREDICTION_ID, f"p{i}"),
                *([keyvalue(F + "extra", "x")] if i % 2 else []),  # not uniform: the general path
                keyvalue(F + "city", ["lyon", "paris", "lyon\x00"][i % 3]),
            ],
            1,
            0,
            False,
            0,
        )
        for i in range(6)
    ]
    extraction = check(request_bytes([[records]]))
    assert extraction is not None
    assert extraction.predictions[0].categorical["city"].tolist() == ["lyon", "paris", "lyon\x00"] * 2


@pytest.mark.parametrize("tweak", TWEAKS)
@pytest.mark.parametrize("kind", sorted(COLUMN_VALUES))
def test_every_way_a_record_breaks_uniformity(kind: str, tweak: str) -> None:
    """One attribute of the last record differs from the first record's: same results."""
    examples = {"double": -2.5, "int": -(2**40), "bool": True, "string": "lyon", "constant": "salary"}
    examples.update(model="churn", id="id")
    records = []
    for i in range(4):
        attributes = [
            keyvalue(semconv.MODEL_NAME, "salary"),
            keyvalue(semconv.MODEL_VERSION, "v1"),
            keyvalue(semconv.PREDICTION_ID, f"id-{i}"),
            keyvalue(F + "col", examples[kind]),
            keyvalue(F + "after", 1.0),
        ]
        if i == 3:
            attributes[3] = tweaked(F + "col", kind, examples[kind], tweak)
        records.append(record_bytes(semconv.PREDICTION_EVENT, attributes, 1, 0, False, 0))
    extraction = check(request_bytes([[records]]))
    assert (extraction is None) == (tweak == "bad-utf8")


def test_a_record_the_walk_misreads_is_left_to_upb():
    """A truncated varint that ends its record exactly where the walk expects: refused by upb."""
    assert check(request_bytes([[[b"\x10\x09", b"\x10\xff"]]])) is None
    assert check(request_bytes([[[b"\x10\x09", b"\x10\x8f"]]])) is None
    # the same sizes, other fields: valid, read by upb
    time, observed = b"\x09" + bytes(7) + b"\x01", b"\x59" + bytes(7) + b"\x02"
    name = field(12, semconv.PREDICTION_EVENT.encode())
    attributes = field(6, keyvalue(semconv.MODEL_NAME, "m")) + field(6, keyvalue(semconv.PREDICTION_ID, "p"))
    extraction = check(
        request_bytes([[[time + observed + name + attributes, observed + time + name + attributes]]])
    )
    assert extraction is not None and extraction.rejected == 2


def test_records_without_fields_and_requests_without_records():
    assert check(request_bytes([[[b"", b""]]])) == Extraction()
    assert check(request_bytes([[[]]])) == Extraction()
    assert check(b"") == Extraction()
