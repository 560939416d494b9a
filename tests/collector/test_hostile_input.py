"""Hostile input: every decoder and extractor fed garbage, extremes and lies (issue 5).

Property-based (hypothesis, derandomized so CI is reproducible) over
:func:`~modeltel_collector.extract.extract_logs`, the OTLP receivers end to end (a real grpcio
server and the real Starlette app under uvicorn), ``POST /v1/labels`` and the configuration
loader. Each case must get the correct OTLP answer (success, partial success with a message,
or INVALID_ARGUMENT / 400 / 413 with a ``google.rpc.Status``), never a crash or a hang.

The cases tried per target are counted in :data:`CASES`; set ``MODELTEL_FUZZ_COUNTS`` to a
file path to have them written there as JSON when the module finishes (nothing is printed).
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from google.protobuf.message import DecodeError
from google.rpc.status_pb2 import Status
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.metrics import NoOpMeter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from fuzz._inputs import ml_records
from modeltel import semconv
from modeltel_collector.batch import LabelBatch
from modeltel_collector.config import CollectorConfig, ConfigError, load_config, parse_config, shown_key
from modeltel_collector.extract import MAX_CELLS, Extraction, extract_logs
from modeltel_collector.labels import MAX_LABELS_PER_REQUEST, labels_from_records, parse_labels
from modeltel_collector.receivers import ExportOutcome, GrpcReceiver, InvalidPayload, http_receiver_app
from modeltel_collector.receivers.consumer import LabelsOutcome
from modeltel_collector.receivers.otlp_http import MAX_BODY_BYTES
from tests.otlp_sink import HttpServer, open_pipeline

pytestmark = pytest.mark.timeout(120)

NOW = 1_800_000_000_000_000_000
INT64 = (-(2**63), 2**63 - 1)
F = semconv.FEATURE_PREFIX
ML_EVENTS = (semconv.PREDICTION_EVENT, semconv.LABEL_EVENT)
LOGS_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]

CASES: Counter[str] = Counter()
"""Cases tried per target (hypothesis examples and hand-made inputs alike)."""


def fuzz(max_examples: int) -> Any:
    """Hypothesis settings for this module: reproducible, bounded, a deadline against hangs."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        deadline=2000,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module", autouse=True)
def _write_counts() -> Iterator[None]:
    yield
    path = os.environ.get("MODELTEL_FUZZ_COUNTS")
    if path:
        Path(path).write_text(json.dumps(dict(sorted(CASES.items())), indent=2) + "\n")


# --------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------
def value(v: Any) -> AnyValue:
    """An ``AnyValue``: str, bool, int, float, bytes, list (array), dict (kvlist), None (unset)."""
    out = AnyValue()
    if v is None:
        pass
    elif isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, int):
        out.int_value = v
    elif isinstance(v, float):
        out.double_value = v
    elif isinstance(v, str):
        out.string_value = v
    elif isinstance(v, bytes):
        out.bytes_value = v
    elif isinstance(v, list):
        out.array_value.SetInParent()
        for item in v:
            out.array_value.values.append(value(item))
    else:
        out.kvlist_value.SetInParent()
        for key, item in v.items():
            out.kvlist_value.values.append(KeyValue(key=key, value=value(item)))
    return out


def request(*records: dict[str, Any], event_name: str = semconv.PREDICTION_EVENT) -> bytes:
    """A serialized request; each record is ``{attribute: value}``, ``"_event"`` overriding the name."""
    out = ExportLogsServiceRequest()
    logs = out.resource_logs.add().scope_logs.add().log_records
    for attributes in records:
        record = logs.add(event_name=attributes.get("_event", event_name))
        for key, v in attributes.items():
            if key != "_event":
                record.attributes.append(KeyValue(key=key, value=value(v)))
    return out.SerializeToString()


def prediction(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        semconv.MODEL_NAME: "m",
        semconv.MODEL_VERSION: "1",
        semconv.PREDICTION_ID: f"p{i}",
        **extra,
    }


def label(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "_event": semconv.LABEL_EVENT,
        semconv.MODEL_NAME: "m",
        semconv.PREDICTION_ID: f"p{i}",
        semconv.LABEL_VALUE: 1.0,
        **extra,
    }


VALID_REQUESTS = [
    request(
        *(prediction(i, **{F + "x": float(i), F + "c": "a", semconv.PREDICTION_VALUE: 0.5}) for i in range(3))
    ),
    request(
        prediction(0, **{F + "x": 1, semconv.PREDICTION_SCORE: 0.25}),
        label(1),
        {
            "_event": "",
            "event.name": semconv.LABEL_EVENT,
            semconv.MODEL_NAME: "m",
            semconv.PREDICTION_ID: "q",
            semconv.LABEL_VALUE: "yes",
        },
        {"_event": "app.log", "anything": [1, {"k": b"v"}]},
        prediction(2, **{semconv.MODEL_VERSION: 7}),  # rejected: a version that is an int
    ),
    request(label(0), label(1, **{semconv.LABEL_VALUE: True}), label(2, **{semconv.MODEL_NAME: ""})),
]


def check_extraction(payload: bytes, target: str) -> Extraction | None:
    """Extract: counts that add up and a message iff rejected, or InvalidPayload exactly when
    upb cannot decode the request. Any other exception fails the test."""
    CASES[target] += 1
    try:
        message = ExportLogsServiceRequest.FromString(payload)
    except DecodeError:
        message = None
    try:
        extraction = extract_logs(payload, now_unix_nano=NOW)
    except InvalidPayload as refused:
        assert message is None, f"refused a request upb decodes: {refused}"
        assert str(refused)
        return None
    assert message is not None, "extracted a request upb cannot decode"
    accepted = extraction.prediction_count + extraction.label_count
    assert accepted + extraction.rejected == ml_records(message)
    assert bool(extraction.error_message) == (extraction.rejected > 0) or (
        extraction.rejected == 0 and "values left out" in extraction.error_message
    )
    for batch in extraction.predictions:
        n = len(batch)
        assert batch.time_unix_nano.shape == batch.prediction_ids.shape == batch.prediction.shape == (n,)
        assert all(column.shape == (n,) for column in (*batch.numeric.values(), *batch.categorical.values()))
    return extraction


# --------------------------------------------------------------------------------------
# extract_logs
# --------------------------------------------------------------------------------------
@fuzz(400)
@given(st.binary(max_size=600))
def test_extract_random_bytes(payload: bytes) -> None:
    check_extraction(payload, "extract: random bytes")


def test_extract_every_prefix_of_valid_requests() -> None:
    for payload in VALID_REQUESTS:
        assert check_extraction(payload, "extract: prefixes") is not None
        for end in range(len(payload)):
            check_extraction(payload[:end], "extract: prefixes")


@fuzz(400)
@given(st.sampled_from(range(len(VALID_REQUESTS))), st.lists(st.integers(0, 10**6), min_size=1, max_size=4))
def test_extract_bit_flips(which: int, positions: list[int]) -> None:
    payload = bytearray(VALID_REQUESTS[which])
    for position in positions:
        payload[position // 8 % len(payload)] ^= 1 << (position % 8)
    check_extraction(bytes(payload), "extract: bit flips")


def nested(depth: int, kind: str) -> bytes:
    """An encoded ``AnyValue`` ``depth`` arrays (or kvlists) deep around an int, built by hand."""
    inner = b"\x18\x01"  # int_value = 1
    for _ in range(depth):
        if kind == "array":  # AnyValue.array_value (5) { values (1) }
            inner = (
                b"\x2a"
                + varint(len(inner) + 1 + len(varint(len(inner))))
                + b"\x0a"
                + varint(len(inner))
                + inner
            )
        else:  # AnyValue.kvlist_value (6) { values (1): KeyValue { key (1) "k", value (2) } }
            pair = b"\x0a\x01k\x12" + varint(len(inner)) + inner
            body = b"\x0a" + varint(len(pair)) + pair
            inner = b"\x32" + varint(len(body)) + body
    return inner


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def with_raw_attribute(key: str, encoded_value: bytes) -> bytes:
    """A valid prediction request plus one attribute whose ``AnyValue`` is already encoded."""
    pair = (
        b"\x0a"
        + varint(len(key.encode()))
        + key.encode()
        + b"\x12"
        + varint(len(encoded_value))
        + encoded_value
    )
    message = ExportLogsServiceRequest.FromString(request(prediction()))
    record = message.resource_logs[0].scope_logs[0].log_records[0]
    record.ClearField("attributes")
    head = record.SerializeToString()
    for kv in (
        ExportLogsServiceRequest.FromString(request(prediction()))
        .resource_logs[0]
        .scope_logs[0]
        .log_records[0]
        .attributes
    ):
        encoded = kv.SerializeToString()
        head += b"\x32" + varint(len(encoded)) + encoded
    head += b"\x32" + varint(len(pair)) + pair
    scope = b"\x12" + varint(len(head)) + head
    resource = b"\x12" + varint(len(scope)) + scope
    return b"\x0a" + varint(len(resource)) + resource


@pytest.mark.parametrize("kind", ["array", "kvlist"])
@pytest.mark.parametrize("depth", [1, 10, 50, 90, 95, 100, 200, 500, 2000])
@pytest.mark.parametrize("key", [F + "deep", semconv.MODEL_NAME, semconv.PREDICTION_VALUE, "other"])
def test_extract_deep_nesting(kind: str, depth: int, key: str) -> None:
    payload = with_raw_attribute(key, nested(depth, kind))
    started = time.monotonic()
    extraction = check_extraction(payload, "extract: deep nesting")
    assert time.monotonic() - started < 5
    if extraction is not None:
        # a nested value is no string: the model name is then the one sent before it, or missing
        assert extraction.prediction_count == 1 or key == semconv.MODEL_NAME


ML_ATTRIBUTES = {
    semconv.PREDICTION_EVENT: [
        semconv.MODEL_NAME,
        semconv.MODEL_VERSION,
        semconv.PREDICTION_ID,
        semconv.PREDICTION_VALUE,
        semconv.PREDICTION_SCORE,
        F + "f",
    ],
    semconv.LABEL_EVENT: [semconv.MODEL_NAME, semconv.PREDICTION_ID, semconv.LABEL_VALUE],
}
ANY_KIND = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(*INT64),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2),
)


@fuzz(500)
@given(st.sampled_from(sorted(ML_ATTRIBUTES)), st.data())
def test_extract_wrong_types_for_every_ml_attribute(event: str, data: st.DataObject) -> None:
    attribute = data.draw(st.sampled_from(ML_ATTRIBUTES[event]))
    v = data.draw(ANY_KIND)
    record = (label if event == semconv.LABEL_EVENT else prediction)(0)
    record.pop(attribute, None)
    record[attribute] = v  # the only one: replaces, at the end
    extraction = check_extraction(request(record), "extract: wrong attribute types")
    assert extraction is not None
    required = (
        {
            semconv.MODEL_NAME,
            semconv.MODEL_VERSION,
            semconv.PREDICTION_ID,
        }
        if event == semconv.PREDICTION_EVENT
        else {semconv.MODEL_NAME, semconv.PREDICTION_ID}
    )
    if attribute in required:
        valid = type(v) is str and v != ""
    elif attribute == semconv.LABEL_VALUE:  # an empty string is no class (as POST /v1/labels)
        valid = type(v) in (bool, int, float) or (type(v) is str and v != "")
    else:
        valid = True  # optional: never rejects
    assert extraction.rejected == (0 if valid else 1), (attribute, v, extraction)
    if not valid:
        assert attribute in extraction.error_message


SPECIAL_NUMBERS = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, *INT64, 0, -1]


@pytest.mark.parametrize("number", SPECIAL_NUMBERS, ids=repr)
def test_extract_nan_infinities_and_int64_extremes(number: float) -> None:
    payload = request(
        prediction(
            0, **{F + "x": number, semconv.PREDICTION_VALUE: number, semconv.PREDICTION_SCORE: number}
        ),
        prediction(1, **{F + "x": "text", semconv.PREDICTION_VALUE: "cls"}),
        label(2, **{semconv.LABEL_VALUE: number}),
        label(3, **{semconv.LABEL_VALUE: "cls"}),
    )
    extraction = check_extraction(payload, "extract: NaN, inf, int64 extremes")
    assert extraction is not None and extraction.rejected == 0
    got = extraction.predictions[0].numeric["x"][0]
    assert got == float(number) or (math.isnan(got) and math.isnan(number))
    got = extraction.labels[0].value[0]
    assert got == float(number) or (math.isnan(got) and math.isnan(number))


def test_extract_timestamps_at_the_extremes() -> None:
    message = ExportLogsServiceRequest.FromString(request(prediction(0), prediction(1), prediction(2)))
    records = message.resource_logs[0].scope_logs[0].log_records
    records[0].time_unix_nano = 2**64 - 1
    records[1].observed_time_unix_nano = 2**63
    extraction = check_extraction(message.SerializeToString(), "extract: NaN, inf, int64 extremes")
    assert extraction is not None
    assert extraction.predictions[0].time_unix_nano.tolist() == [INT64[1], INT64[1], NOW]


@pytest.mark.parametrize("where", [F + "big", semconv.MODEL_NAME, semconv.PREDICTION_ID, "ignored"])
def test_extract_huge_strings(where: str) -> None:
    huge = "é" * (3 << 20)  # 6 MiB of UTF-8
    payload = request(prediction(0, **{where: huge}), prediction(1))
    started = time.monotonic()
    extraction = check_extraction(payload, "extract: huge strings")
    assert time.monotonic() - started < 10
    assert extraction is not None and extraction.rejected == 0
    assert extraction.prediction_count == 2


def test_extract_thousands_of_features() -> None:
    dense = request(prediction(0, **{f"{F}f{i}": float(i) for i in range(5000)}))
    extraction = check_extraction(dense, "extract: thousands of features")
    assert extraction is not None and len(extraction.predictions[0].numeric) == 5000
    sparse = request(*(prediction(i, **{f"{F}f{i}": "v", f"{F}g{i}": i}) for i in range(3000)))
    extraction = check_extraction(sparse, "extract: thousands of features")
    assert extraction is not None and extraction.rejected == 0
    batch = extraction.predictions[0]
    # 6000 sparse columns of 3000 rows exceed MAX_CELLS: the most frequent fit, the rest are
    # left out, and the answer says how many values were (a partial success warning)
    kept = len(batch.numeric) + len(batch.categorical)
    assert (len(batch), kept) == (3000, MAX_CELLS // 3000)
    assert extraction.error_message == (
        f"{6000 - kept} ml.feature.* values left out: too many distinct features in one request"
    )


ODD_TEXT = ["\x00", "a\x00b", "\u200f\u202eevil\u202c", "🧠👩‍👩‍👧", "\ufeff", "\U0010ffff", " ", "\n\r\t"]


@pytest.mark.parametrize("text", ODD_TEXT, ids=repr)
def test_extract_odd_unicode_is_kept_as_sent(text: str) -> None:
    payload = request(
        prediction(0, **{semconv.MODEL_NAME: text, F + text: text, semconv.PREDICTION_ID: text}),
        label(0, **{semconv.MODEL_NAME: text, semconv.LABEL_VALUE: text}),
    )
    extraction = check_extraction(payload, "extract: odd unicode")
    assert extraction is not None and extraction.rejected == 0
    batch = extraction.predictions[0]
    assert (batch.model, batch.prediction_ids.tolist(), batch.categorical[text].tolist()) == (
        text,
        [text],
        [text],
    )
    assert extraction.labels[0].value_class.tolist() == [text]


def _invalid_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@fuzz(300)
@given(
    st.binary(min_size=6, max_size=6).filter(_invalid_utf8),
    st.sampled_from(["key", "string", "event_name", "legacy event name", "label value"]),
)
def test_extract_invalid_utf8_is_refused(raw: bytes, where: str) -> None:
    marker = "\x01MARK\x01"  # 6 bytes, replaced by the 6 invalid ones: lengths stay right
    if where == "key":
        payload = request(prediction(0, **{F + marker: 1}))
    elif where == "string":
        payload = request(prediction(0, **{F + "x": marker}))
    elif where == "event_name":
        payload = request(prediction(0), event_name=marker)
    elif where == "legacy event name":
        payload = request({"_event": "", "event.name": marker})
    else:
        payload = request(label(0, **{semconv.LABEL_VALUE: marker}))
    assert check_extraction(payload.replace(marker.encode(), raw), "extract: invalid UTF-8") is None


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x0a\x00",  # one empty ResourceLogs
        b"\x0a\x02\x12\x00",  # one empty ScopeLogs
        b"\x0a\x04\x12\x02\x12\x00",  # one empty LogRecord
        request({}),
        request({}, event_name=""),
        request({"": ""}, event_name=""),
        request({"": None, F: None}),
        request({semconv.MODEL_NAME: "", semconv.MODEL_VERSION: "", semconv.PREDICTION_ID: ""}),
        request({"_event": semconv.LABEL_EVENT}),
        request({"_event": "", "event.name": ""}),
        request({"_event": "", "event.name": None}),
        request({"_event": "", "event.name": semconv.PREDICTION_EVENT}),
        request(prediction(0, **{F: 1.0, F + "x": [], F + "y": {}, F + "z": b""})),
    ],
)
def test_extract_empty_everything(payload: bytes) -> None:
    assert check_extraction(payload, "extract: empty everything") is not None


AnyValues = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(*INT64),
        st.floats(),
        st.text(max_size=6),
        st.binary(max_size=4),
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=8,
)
KEYS = st.sampled_from(
    [*ML_ATTRIBUTES[semconv.PREDICTION_EVENT], semconv.LABEL_VALUE, "event.name", F + "a", F + "b", F, "x"]
)
RECORDS = st.dictionaries(KEYS, AnyValues, max_size=8).flatmap(
    lambda attributes: st.sampled_from([*ML_EVENTS, "", "other"]).map(
        lambda event: {**attributes, "_event": event}
    )
)


@fuzz(400)
@given(st.lists(RECORDS, max_size=6))
def test_extract_arbitrary_requests(records: list[dict[str, Any]]) -> None:
    check_extraction(request(*records), "extract: arbitrary requests")


# --------------------------------------------------------------------------------------
# The receivers, end to end
# --------------------------------------------------------------------------------------
class ExtractingConsumer:
    """Extracts logs as the collector does, and takes labels, keeping the last batches."""

    def __init__(self) -> None:
        self.labels: list[LabelBatch] = []

    def consume_logs(self, payload: bytes) -> ExportOutcome:
        return extract_logs(payload, now_unix_nano=NOW).outcome

    def consume_traces(self, request: Any) -> ExportOutcome:
        return ExportOutcome()

    def consume_metrics(self, request: Any) -> ExportOutcome:
        return ExportOutcome()

    def consume_labels(self, payload: bytes) -> LabelsOutcome:
        self.labels[:], errors = labels_from_records(parse_labels(payload), NOW)
        return LabelsOutcome(sum(len(batch) for batch in self.labels), errors)


@pytest.fixture(scope="module")
def consumer() -> ExtractingConsumer:
    return ExtractingConsumer()


@pytest.fixture(scope="module")
def export(consumer: ExtractingConsumer) -> Iterator[Any]:
    receiver = GrpcReceiver(consumer, "127.0.0.1:0").start()
    with grpc.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
        yield channel.unary_unary(LOGS_METHOD, request_serializer=None, response_deserializer=None)
    receiver.stop()


@pytest.fixture(scope="module")
def client(consumer: ExtractingConsumer) -> Iterator[httpx.Client]:
    server = HttpServer(http_receiver_app(consumer))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
    server.stop()


def expected_answer(payload: bytes) -> Extraction | None:
    """What the collector must answer: the extraction (partial success), or None (invalid)."""
    try:
        return extract_logs(payload, now_unix_nano=NOW)
    except InvalidPayload:
        return None


def assert_partial_success(response: ExportLogsServiceResponse, extraction: Extraction) -> None:
    partial = response.partial_success
    assert (partial.rejected_log_records, partial.error_message) == (
        extraction.rejected,
        extraction.error_message,
    )


BODIES = st.one_of(
    st.binary(max_size=400),
    st.tuples(st.sampled_from(VALID_REQUESTS), st.integers(0, 400)).map(lambda p: p[0][: p[1]]),
    st.tuples(st.sampled_from(VALID_REQUESTS), st.integers(0, 10**5)).map(
        lambda p: (
            p[0][: p[1] // 8 % len(p[0])]
            + bytes([p[0][p[1] // 8 % len(p[0])] ^ 1 << p[1] % 8])
            + p[0][p[1] // 8 % len(p[0]) + 1 :]
        )
    ),
)


@fuzz(150)
@given(BODIES)
def test_grpc_random_and_truncated_protobuf(export: Any, payload: bytes) -> None:
    CASES["gRPC: random/truncated protobuf"] += 1
    expected = expected_answer(payload)
    try:
        answer = export(payload, timeout=10)
    except grpc.RpcError as error:
        assert expected is None, error
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid protobuf ExportLogsServiceRequest" in error.details()
        return
    assert expected is not None
    assert_partial_success(ExportLogsServiceResponse.FromString(answer), expected)


@fuzz(150)
@given(BODIES)
def test_http_random_and_truncated_protobuf(client: httpx.Client, payload: bytes) -> None:
    CASES["HTTP: random/truncated protobuf"] += 1
    expected = expected_answer(payload)
    response = client.post("/v1/logs", content=payload, headers=PROTOBUF)
    if expected is None:
        assert response.status_code == 400
        status = Status.FromString(response.content)
        assert status.code == INVALID_ARGUMENT and status.message
        return
    assert response.status_code == 200
    assert_partial_success(ExportLogsServiceResponse.FromString(response.content), expected)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
OTLP_KEYS = [
    "resourceLogs",
    "scopeLogs",
    "logRecords",
    "attributes",
    "key",
    "value",
    "stringValue",
    "intValue",
    "doubleValue",
    "boolValue",
    "arrayValue",
    "kvlistValue",
    "values",
    "eventName",
    "timeUnixNano",
    "traceId",
    "spanId",
    "severityNumber",
    "body",
    "resource",
    "scope",
]
OTLP_SHAPED = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(*INT64)
    | st.text(max_size=8)
    | st.sampled_from(["ml.prediction", "1e3", "zz"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(OTLP_KEYS), children, max_size=4)
    ),
    max_leaves=25,
)


def assert_json_status(response: httpx.Response, code: int) -> None:
    status = response.json()
    assert status["code"] == code and status["message"], status


@fuzz(200)
@given(
    st.one_of(
        st.binary(max_size=200),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        OTLP_SHAPED.map(lambda v: json.dumps({"resourceLogs": v}).encode()),
        OTLP_SHAPED.map(lambda v: json.dumps(v).encode()),
    )
)
def test_http_json_logs_invalid_or_wrongly_shaped(client: httpx.Client, body: bytes) -> None:
    CASES["HTTP: OTLP/JSON logs"] += 1
    response = client.post("/v1/logs", content=body, headers=JSON)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert_json_status(response, INVALID_ARGUMENT)
    else:
        assert isinstance(response.json(), dict)


def test_http_json_deep_nesting_is_400_not_500(client: httpx.Client) -> None:
    for depth in (100, 1000, 100_000):
        CASES["HTTP: OTLP/JSON logs"] += 1
        body = "[" * depth + "]" * depth
        response = client.post("/v1/logs", content=body, headers=JSON)
        assert response.status_code == 400, response.text
        value = '{"arrayValue":{"values":[' * depth + '{"intValue":1}' + "]}}" * depth
        record = f'{{"eventName":"ml.prediction","attributes":[{{"key":"ml.feature.x","value":{value}}}]}}'
        body = f'{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{record}]}}]}}]}}'
        response = client.post("/v1/logs", content=body, headers=JSON)
        assert response.status_code in (200, 400), response.text


def bomb(size: int, encoding: str = "gzip", members: int = 1) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    out = b""
    for _ in range(members):
        compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
        chunk = bytes(1 << 20)
        out += b"".join(compressor.compress(chunk) for _ in range(size // members >> 20)) + compressor.flush()
    return out


@pytest.mark.parametrize(
    ("path", "encoding", "members", "content_type"),
    [
        ("/v1/logs", "gzip", 1, PROTOBUF),
        ("/v1/logs", "gzip", 64, PROTOBUF),
        ("/v1/logs", "deflate", 1, PROTOBUF),
        ("/v1/logs", "gzip", 1, JSON),
        ("/v1/labels", "gzip", 1, JSON),
    ],
)
def test_http_gzip_bomb_is_413_fast_and_bounded(
    client: httpx.Client, path: str, encoding: str, members: int, content_type: dict[str, str]
) -> None:
    CASES["HTTP: compression bombs"] += 1
    body = bomb(1 << 30, encoding, members)  # 1 GiB inflated
    assert len(body) < 2 << 20
    tracemalloc.start()
    try:
        started = time.monotonic()
        response = client.post(path, content=body, headers={**content_type, "Content-Encoding": encoding})
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 413
    assert "after decompression" in (
        Status.FromString(response.content).message
        if content_type is PROTOBUF
        else response.json()["message"]
    )
    assert elapsed < 10
    assert peak < 4 * MAX_BODY_BYTES  # inflation stopped at the limit: nowhere near 1 GiB


@fuzz(100)
@given(
    st.binary(max_size=300), st.sampled_from(["gzip", "deflate"]), st.sampled_from(["/v1/logs", "/v1/labels"])
)
def test_http_content_encoding_lies_are_400(
    client: httpx.Client, body: bytes, encoding: str, path: str
) -> None:
    CASES["HTTP: Content-Encoding lies"] += 1
    if body[:2] in (b"\x1f\x8b", b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda"):
        body = b"plain" + body
    headers = {**(PROTOBUF if path == "/v1/logs" else JSON), "Content-Encoding": encoding}
    response = client.post(path, content=body, headers=headers)
    if not body:  # nothing to inflate: an empty body, decoded as such
        assert response.status_code in (200, 400)
        return
    assert response.status_code == 400, response.text
    if path == "/v1/logs":
        status = Status.FromString(response.content)
        assert status.code == INVALID_ARGUMENT and encoding in status.message
    else:
        assert_json_status(response, INVALID_ARGUMENT)


# --------------------------------------------------------------------------------------
# POST /v1/labels
# --------------------------------------------------------------------------------------
def post_labels(client: httpx.Client, document: Any) -> httpx.Response:
    return client.post("/v1/labels", content=json.dumps(document), headers=JSON)


def assert_labels_answer(response: httpx.Response, document: Any) -> None:
    assert response.status_code in (200, 400, 413), response.text
    if response.status_code != 200:
        assert_json_status(response, INVALID_ARGUMENT if response.status_code == 400 else 8)
        return
    answer = response.json()
    records = document["labels"] if isinstance(document, dict) else document
    assert answer["accepted"] + answer["rejected"] == len(records)
    assert len(answer["errors"]) + answer["errors_not_shown"] == answer["rejected"]
    assert all(error["error"] for error in answer["errors"])


@fuzz(200)
@given(JSON_VALUES | st.lists(JSON_VALUES, max_size=5) | st.fixed_dictionaries({"labels": JSON_VALUES}))
def test_labels_random_json(client: httpx.Client, document: Any) -> None:
    CASES["labels: random JSON"] += 1
    assert_labels_answer(post_labels(client, document), document)


@fuzz(300)
@given(st.sampled_from(["model", "prediction_id", "value", "time_unix_nano"]), JSON_VALUES | st.integers())
def test_labels_wrong_types_per_field(client: httpx.Client, field: str, v: Any) -> None:
    CASES["labels: wrong types per field"] += 1
    record = {"model": "m", "prediction_id": "p", "value": 1.0, "time_unix_nano": 1, field: v}
    response = post_labels(client, [record])
    assert_labels_answer(response, [record])
    answer = response.json()
    if answer["rejected"]:
        assert field in answer["errors"][0]["error"] or "item" in answer["errors"][0]["error"]


def test_labels_non_finite_and_huge_numbers(client: httpx.Client) -> None:
    for raw in ("NaN", "Infinity", "-Infinity", "1e999", "1" + "0" * 400, "-" + "9" * 5000):
        CASES["labels: wrong types per field"] += 1
        for field in ("value", "time_unix_nano"):
            body = '[{"model":"m","prediction_id":"p","value":1,"' + field + '":' + raw + "}]"
            response = client.post("/v1/labels", content=body, headers=JSON)
            assert response.status_code in (200, 400), (raw, response.text)
            if response.status_code == 200:
                assert response.json()["rejected"] == 1, (field, raw)


@fuzz(200)
@given(st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=6))
@example("²")
@example("١٢٣")
@example("123")
def test_labels_times_in_other_digits_are_per_item_errors(client: httpx.Client, digits: str) -> None:
    """Bug: ``"²"`` (str.isdigit, yet not int()) raised ValueError in labels_from_records: a 500."""
    CASES["labels: wrong types per field"] += 1
    record = {"model": "m", "prediction_id": "p", "value": 1, "time_unix_nano": digits}
    response = post_labels(client, [record])
    assert response.status_code == 200, response.text
    if digits.isascii():
        assert response.json()["accepted"] == 1
    else:
        assert response.json()["errors"] == [
            {
                "index": 0,
                "error": "time_unix_nano is a string, not an integer (nanoseconds since the Unix epoch)",
            }
        ]


def test_labels_huge_lists(client: httpx.Client) -> None:
    CASES["labels: huge lists"] += 3
    good = {"model": "m", "prediction_id": "p", "value": 1}
    response = post_labels(client, [good] * MAX_LABELS_PER_REQUEST)
    assert response.status_code == 200 and response.json()["accepted"] == MAX_LABELS_PER_REQUEST
    response = post_labels(client, {"labels": [good] * (MAX_LABELS_PER_REQUEST + 1)})
    assert response.status_code == 413
    response = post_labels(client, [None] * MAX_LABELS_PER_REQUEST)
    assert response.status_code == 200
    assert response.json()["rejected"] == MAX_LABELS_PER_REQUEST and len(response.json()["errors"]) == 100


def test_more_models_in_one_request_than_the_queue_holds_is_413_not_retried_forever(tmp_path: Path) -> None:
    """Bug: such a request was answered Overloaded (429 / UNAVAILABLE, retry later) forever."""
    pipeline = open_pipeline({}, NoOpMeter("hostile"), tmp_path, max_queue_batches=4)
    server = HttpServer(http_receiver_app(pipeline))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            CASES["pipeline: batches over the queue"] += 4
            five = [{"model": f"m{i}", "prediction_id": "p", "value": 1} for i in range(5)]
            response = post_labels(client, five)
            assert response.status_code == 413, response.text
            assert "5 batches" in response.json()["message"] and "Retry-After" not in response.headers
            logs = request(*(prediction(i, **{semconv.MODEL_NAME: f"m{i}"}) for i in range(5)))
            response = client.post("/v1/logs", content=logs, headers=PROTOBUF)
            assert response.status_code == 413
            assert "queue of 4" in Status.FromString(response.content).message
            # as many as the queue holds still go through
            assert post_labels(client, five[:4]).json()["accepted"] == 4
            pipeline.drain(10)
            logs = request(*(prediction(i, **{semconv.MODEL_NAME: f"m{i}"}) for i in range(4)))
            assert client.post("/v1/logs", content=logs, headers=PROTOBUF).status_code == 200
    finally:
        server.stop()
        pipeline.shutdown()


# --------------------------------------------------------------------------------------
# The configuration loader
# --------------------------------------------------------------------------------------
CONFIG_KEYS = [
    "receivers",
    "processors",
    "exporters",
    "models",
    "alerting",
    "data_dir",
    "otlp",
    "protocols",
    "grpc",
    "http",
    "endpoint",
    "max_queue_batches",
    "drift",
    "window",
    "warmup",
    "min_samples",
    "alpha",
    "features",
    "service",
    "performance",
    "audit",
    "timeout",
    "retry",
    "x",
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["10s", "5m", "0s", "-1s", "1e9h", ".nan", "inf", "0.0.0.0:1"])
)
CONFIGS = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(CONFIG_KEYS) | st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)


def check_config(data: Any, target: str) -> CollectorConfig | None:
    CASES[target] += 1
    try:
        return parse_config(data)
    except ConfigError as error:
        assert str(error).startswith("invalid collector configuration")
        problems = str(error).split("\n")[1:]
        # one problem per line, naming where (``a.b.c: why``); odd keys are quoted
        assert problems and all(line.startswith("  ") and ": " in line for line in problems)
        if isinstance(data, dict) and " more problems" not in str(error):
            unknown = [key for key in data if key not in CollectorConfig.model_fields]
            assert all(f"{shown_key(key)}: unknown key" in str(error) for key in unknown)
        return None


@fuzz(400)
@given(CONFIGS)
def test_config_random_documents(data: Any) -> None:
    check_config(data, "config: random documents")


@fuzz(300)
@given(st.sampled_from(["window", "warmup"]), SCALARS | st.integers(min_value=10**300, max_value=10**307))
def test_config_durations(key: str, v: Any) -> None:
    config = check_config({"processors": {"drift": {key: v}}}, "config: durations")
    if config is not None:
        seconds = getattr(config.processors.drift, key)
        assert math.isfinite(seconds) and seconds > 0


@pytest.mark.parametrize("v", [math.nan, math.inf, "9" * 400 + "s"], ids=["nan", "inf", "400 digits s"])
def test_config_non_finite_duration_is_refused(v: Any) -> None:
    CASES["config: durations"] += 1
    with pytest.raises(ConfigError, match=r"processors\.drift\.window"):
        parse_config({"processors": {"drift": {"window": v}}})


def test_config_huge_integer_duration_is_a_config_error(tmp_path: Path) -> None:
    CASES["config: durations"] += 1
    path = tmp_path / "collector.yaml"
    path.write_text("processors:\n  drift:\n    window: " + "1" * 400 + "\n")
    with pytest.raises(ConfigError, match=r"processors\.drift\.window"):
        load_config(path)


@fuzz(150)
@given(CONFIGS | st.text(max_size=60))
def test_config_random_yaml_files(tmp_path_factory: pytest.TempPathFactory, data: Any) -> None:
    CASES["config: YAML files"] += 1
    path = tmp_path_factory.mktemp("config") / "collector.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    try:
        load_config(path)
    except ConfigError as error:
        assert str(path) in str(error)


def test_byte_helpers_agree_with_protobuf() -> None:
    assert varint(300) == b"\xac\x02" and struct.pack("<B", 1) == b"\x01"
    message = ExportLogsServiceRequest.FromString(with_raw_attribute(F + "n", nested(3, "array")))
    attributes = message.resource_logs[0].scope_logs[0].log_records[0].attributes
    assert (
        attributes[-1].value.array_value.values[0].array_value.values[0].array_value.values[0].int_value == 1
    )
    message = ExportLogsServiceRequest.FromString(with_raw_attribute(F + "n", nested(2, "kvlist")))
    kv = message.resource_logs[0].scope_logs[0].log_records[0].attributes[-1]
    assert kv.value.kvlist_value.values[0].value.kvlist_value.values[0].value.int_value == 1


# --------------------------------------------------------------------------------------
# Found by the atheris fuzz targets (fuzz/, tests/collector/test_fuzz.py)
# --------------------------------------------------------------------------------------
def asgi_post(app: Any, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, bytes]:
    """POST straight to the ASGI app: no HTTP parser in front to refuse odd headers first."""
    import asyncio

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 4318),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("path", ["/v1/logs", "/v1/labels"])
@pytest.mark.parametrize(
    ("length", "status"),
    [("²", 200), ("1²", 200), ("9" * 5000, 413), ("0" * 5000 + "1", 200), ("-1", 200)],
    ids=["superscript", "digit then superscript", "5000 digits", "leading zeros", "negative"],
)
def test_http_content_length_that_is_not_ascii_digits_is_no_500(
    consumer: ExtractingConsumer, path: str, length: str, status: int
) -> None:
    """Bug: ``Content-Length: ²`` (str.isdigit, yet not int()) and one of 5000 digits (over
    Python's int() limit) raised ValueError in the body reader: a 500. Now a length that is not
    ASCII digits is ignored (the body is read, within the limit) and a huge one is a 413."""
    CASES["HTTP: Content-Length lies"] += 1
    body = VALID_REQUESTS[0] if path == "/v1/logs" else b'[{"model": "m", "prediction_id": "p", "value": 1}]'
    content_type = b"application/x-protobuf" if path == "/v1/logs" else b"application/json"
    headers = [(b"content-type", content_type), (b"content-length", length.encode("latin-1"))]
    got, content = asgi_post(http_receiver_app(consumer), path, headers, body)
    assert got == status, content
    if status == 413:
        message = Status.FromString(content).message if path == "/v1/logs" else json.loads(content)["message"]
        assert "exceeds the limit" in message and len(message) < 200


@pytest.mark.parametrize(
    ("key", "rejected"),
    [(F + "x", 0), (semconv.MODEL_NAME, 1), (semconv.PREDICTION_VALUE, 0), ("other", 0)],
)
def test_extract_string_table_index_value_is_no_crash(key: str, rejected: int) -> None:
    """Bug: an ``AnyValue`` with ``string_value_strindex`` (opentelemetry-proto 1.45 added it,
    for profiles' string tables) raised KeyError in wire.py: INTERNAL / 500 on the receivers.
    It is now a value of an unsupported kind: a missing feature, a mistyped required attribute."""
    message = ExportLogsServiceRequest.FromString(request(prediction(0, **{F + "y": 1.0}), prediction(1)))
    record = message.resource_logs[0].scope_logs[0].log_records[0]
    kept = [kv for kv in record.attributes if kv.key != key]
    del record.attributes[:]
    record.attributes.extend(kept)
    record.attributes.add(key=key).value.string_value_strindex = 3
    extraction = check_extraction(message.SerializeToString(), "extract: string table index")
    assert extraction is not None and extraction.rejected == rejected, extraction
    if rejected:
        assert extraction.error_message == (
            f"1 {semconv.PREDICTION_EVENT} record rejected: "
            f"{key} is a value of an unsupported kind, not a string (1)"
        ), extraction.error_message
    else:
        assert extraction.prediction_count == 2
        batch = extraction.predictions[0]
        assert "x" not in batch.numeric or math.isnan(batch.numeric["x"][0])
