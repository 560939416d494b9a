"""OTLP/JSON request bodies decoded into protobuf messages (logs then re-encoded: see ``signals``).

``opentelemetry-proto-json`` parses the JSON exactly as the OTLP specification says (hex trace
and span ids, 64-bit integers as strings or numbers, integer enums, unknown fields ignored) into
dataclasses named like the protobuf fields; :func:`_copy` then fills the protobuf message from
them field by field. ``google.protobuf.json_format`` is not used for requests: it would read the
ids as base64.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto_json.collector.logs.v1 import logs_service as logs_json
from opentelemetry.proto_json.collector.metrics.v1 import metrics_service as metrics_json
from opentelemetry.proto_json.collector.trace.v1 import trace_service as trace_json

from modeltel_collector.receivers.consumer import InvalidPayload

_JSON_REQUEST_TYPES: dict[type[Message], Any] = {
    ExportLogsServiceRequest: logs_json.ExportLogsServiceRequest,
    ExportTraceServiceRequest: trace_json.ExportTraceServiceRequest,
    ExportMetricsServiceRequest: metrics_json.ExportMetricsServiceRequest,
}

# How a field is copied.
_MESSAGE, _MESSAGES, _SCALARS, _ENUM, _SCALAR = range(5)


def decode_json(request_type: type[Message], body: bytes) -> Message:
    """Decode an OTLP/JSON body into ``request_type``; :class:`InvalidPayload` if it is not one."""
    try:
        parsed = _JSON_REQUEST_TYPES[request_type].from_json(body)
        message = request_type()
        _copy(parsed, message)
    except (ValueError, TypeError, OverflowError, RecursionError) as error:  # syntax, types, ranges
        raise InvalidPayload(f"the body is not a valid OTLP/JSON {request_type.__name__}: {error}") from None
    return message


_PLANS: dict[tuple[type, str], tuple[tuple[str, int], ...]] = {}


def _plan(source_type: Any, descriptor: Descriptor) -> tuple[tuple[str, int], ...]:
    """The fields both the proto-json dataclass and the protobuf message have, and how to copy each."""
    key = (source_type, descriptor.full_name)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _make_plan(source_type, descriptor)
    return plan


def _make_plan(source_type: Any, descriptor: Descriptor) -> tuple[tuple[str, int], ...]:
    fields = descriptor.fields_by_name
    plan = []
    for source_field in dataclasses.fields(source_type):
        name = source_field.name
        field = fields.get(name)
        if field is None:  # unknown to this protobuf version: ignored, as unknown fields must be
            continue
        repeated = _is_repeated(field)
        if field.message_type is not None:
            plan.append((name, _MESSAGES if repeated else _MESSAGE))
        elif repeated:
            plan.append((name, _SCALARS))
        else:
            plan.append((name, _ENUM if field.enum_type is not None else _SCALAR))
    return tuple(plan)


def _is_repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 5.28; ``label`` is gone in 7
    if repeated is None:
        return bool(field.label == FieldDescriptor.LABEL_REPEATED)
    return bool(repeated)


def _copy(source: Any, target: Message) -> None:
    """Fill ``target`` from a proto-json dataclass; ``None`` means absent (oneofs, optionals)."""
    for name, kind in _plan(type(source), target.DESCRIPTOR):
        value = getattr(source, name)
        if value is None:
            continue
        if kind == _SCALAR:
            setattr(target, name, value)
        elif kind == _MESSAGES:
            container = getattr(target, name)
            for item in value:
                _copy(item, container.add())
        elif kind == _MESSAGE:
            child = getattr(target, name)
            child.SetInParent()  # present even when empty, e.g. ``"value": {}``
            _copy(value, child)
        elif kind == _ENUM:
            setattr(target, name, int(value))
        else:
            getattr(target, name).extend(value)


def to_json(message: Message) -> bytes:
    """A response or ``google.rpc.Status`` as OTLP/JSON (they carry no trace or span ids)."""
    return json.dumps(MessageToDict(message), separators=(",", ":")).encode()
