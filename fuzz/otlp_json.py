"""Fuzz target: OTLP/JSON request decoding (:func:`modeltel_collector.receivers.otlp_json.decode_json`).

Input: first byte, bit 0: raw (the rest is the body) or structured (the rest drives a
generator); bits 1-2: logs, traces or metrics. Structured bodies are an OTLP/JSON request
(generated logs, or the SDK's spans or metrics) with a few values replaced by JSON of any
type or deleted: deep enough to reach every field's decoding, wrong often enough to test it.

Contract: ``InvalidPayload`` (with a message) or a request message; a decoded request holds
as many records, spans or metrics as the JSON listed; a logs request re-encodes to bytes that
extraction takes (never ``InvalidPayload``), with its accounting (see ``fuzz.extract``).
"""

from __future__ import annotations

import json
from typing import Any

import atheris
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from fuzz import INSTRUMENTED
from fuzz._harness import instrument, main, structured
from fuzz._inputs import dumps, json_value, logs_request
from fuzz.seeds import metrics_request, otlp_json, traces_request

with instrument(INSTRUMENTED):  # numpy: no comparison tracing (see instrument)
    from modeltel_collector.receivers.consumer import InvalidPayload
    from modeltel_collector.receivers.otlp_json import decode_json

from fuzz.extract import check as check_extraction  # after the instrumented imports

REQUEST_TYPES: list[type[Message]] = [
    ExportLogsServiceRequest,
    ExportTraceServiceRequest,
    ExportMetricsServiceRequest,
]
ITEMS: dict[type[Message], tuple[str, str, str]] = {
    ExportLogsServiceRequest: ("resourceLogs", "scopeLogs", "logRecords"),
    ExportTraceServiceRequest: ("resourceSpans", "scopeSpans", "spans"),
    ExportMetricsServiceRequest: ("resourceMetrics", "scopeMetrics", "metrics"),
}
"""The JSON keys down to a request's items (records, spans, metrics)."""
OTLP_KEYS = sorted(
    {key for keys in ITEMS.values() for key in keys}
    | {"attributes", "key", "value", "stringValue", "intValue", "doubleValue", "boolValue", "bytesValue"}
    | {"arrayValue", "kvlistValue", "values", "eventName", "timeUnixNano", "observedTimeUnixNano"}
    | {"traceId", "spanId", "parentSpanId", "severityNumber", "body", "resource", "scope", "flags"}
    | {"sum", "gauge", "histogram", "dataPoints", "asInt", "asDouble", "kind", "status", "code"}
)
_SDK_JSON: dict[type[Message], Any] = {
    ExportTraceServiceRequest: json.loads(otlp_json(traces_request())),
    ExportMetricsServiceRequest: json.loads(otlp_json(metrics_request())),
}


def _slots(value: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in a JSON document, depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            out.append((value, key))
            _slots(item, out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out.append((value, index))
            _slots(item, out)
    return out


def generated_body(fdp: Any, request_type: type[Message]) -> bytes:
    """An OTLP/JSON request of ``request_type`` with a few values replaced or deleted."""
    if request_type is ExportLogsServiceRequest:
        document = MessageToDict(logs_request(fdp, max_features=40))
    else:
        document = json.loads(json.dumps(_SDK_JSON[request_type]))  # a deep copy
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        slots = _slots(document, [])
        if not slots:
            break
        container, key = slots[fdp.ConsumeIntInRange(0, len(slots) - 1)]
        if fdp.ConsumeIntInRange(0, 3) == 0:
            del container[key]
        else:
            container[key] = json_value(fdp, OTLP_KEYS)
    return dumps(document)


def items(document: Any, keys: tuple[str, ...]) -> int:
    """How many items (records, spans, metrics) a JSON request lists; null lists are empty."""
    if not keys:
        return 1
    return sum(items(child, keys[1:]) for child in (document.get(keys[0]) or []))


def _snake(key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key)


def check(request_type: type[Message], body: bytes) -> Message | None:
    """Decode ``body`` and assert the contract; the message, or None if refused."""
    try:
        message = decode_json(request_type, body)
    except InvalidPayload as refused:
        assert str(refused), "InvalidPayload without a message"
        return None
    assert type(message) is request_type
    top, middle, bottom = (_snake(key) for key in ITEMS[request_type])
    count = sum(len(getattr(scope, bottom)) for r in getattr(message, top) for scope in getattr(r, middle))
    listed = items(json.loads(body), ITEMS[request_type])
    assert count == listed, f"decoded {count} of the {listed} items listed"
    if request_type is ExportLogsServiceRequest:
        assert check_extraction(message.SerializeToString()) is not None, "a decoded request is refused"
    return message


def test_one_input(data: bytes) -> None:
    """One fuzz case."""
    is_structured, mode, rest = structured(data)
    request_type = REQUEST_TYPES[mode % 3]
    if is_structured:
        rest = generated_body(atheris.FuzzedDataProvider(rest), request_type)
    check(request_type, rest)


if __name__ == "__main__":
    main(test_one_input)
