"""The hand-written OTLP encoding decodes, with opentelemetry-proto, to what the SDK would send."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.sdk.resources import Resource

from modeltel._otlp import LogsRequestFramer, encode_event
from tests.otlp_sink import attributes

scalars = st.one_of(
    st.text(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
)


@given(st.dictionaries(st.text(min_size=1), scalars, max_size=20))
def test_attributes_round_trip(attrs):
    record = LogRecord.FromString(
        encode_event(time_unix_nano=1, event_name="ml.prediction", attributes=attrs)
    )
    assert attributes(record.attributes) == attrs


def test_event_fields_match_the_proto_definition():
    trace_id, span_id = 0x0123456789ABCDEF0123456789ABCDEF, 0x0102030405060708
    encoded = encode_event(
        time_unix_nano=1_700_000_000_123_456_789,
        event_name="ml.prediction",
        attributes={"a": 1.5, "b": "x", "c": True, "d": -3},
        trace_id=trace_id,
        span_id=span_id,
        trace_flags=1,
    )
    record = LogRecord.FromString(encoded)
    assert record.time_unix_nano == record.observed_time_unix_nano == 1_700_000_000_123_456_789
    assert record.event_name == "ml.prediction"
    assert record.trace_id == trace_id.to_bytes(16, "big")
    assert record.span_id == span_id.to_bytes(8, "big")
    assert record.flags == 1
    assert attributes(record.attributes) == {"a": 1.5, "b": "x", "c": True, "d": -3}


def test_out_of_range_values():
    record = LogRecord.FromString(
        encode_event(time_unix_nano=1, event_name="e", attributes={"big": 2**70, "nan": math.nan})
    )
    values = attributes(record.attributes)
    assert values["big"] == float(2**70)
    assert math.isnan(values["nan"])
    with pytest.raises(TypeError, match="unsupported attribute value type dict"):
        encode_event(time_unix_nano=1, event_name="e", attributes={"x": {}})


def test_framed_request_carries_resource_scope_and_records():
    resource = Resource.create({"service.name": "svc", "tags": ("a", "b")})
    framer = LogsRequestFramer(resource, "modeltel", "1.2.3")
    records = [encode_event(time_unix_nano=i, event_name="e", attributes={"i": i}) for i in range(3)]

    request = ExportLogsServiceRequest.FromString(framer.frame(records))

    [resource_logs] = request.resource_logs
    resource_attributes = attributes(resource_logs.resource.attributes)
    assert resource_attributes["service.name"] == "svc"
    assert resource_attributes["tags"] == ["a", "b"]
    [scope_logs] = resource_logs.scope_logs
    assert (scope_logs.scope.name, scope_logs.scope.version) == ("modeltel", "1.2.3")
    assert [attributes(r.attributes)["i"] for r in scope_logs.log_records] == [0, 1, 2]
