"""Fuzz target: :func:`modeltel_collector.extract.extract_logs` on a serialized logs request.

Input: first byte even, the rest is the payload as is (seeded with SDK-encoded requests, which
libFuzzer truncates, splices and flips); odd, the rest drives a generator of requests with
``ml.*`` records and attributes of every type (NaN, int64 extremes, nested arrays and maps,
odd unicode, thousands of features), then damages the encoding a little, or not.

Contract: ``InvalidPayload`` exactly when upb cannot decode the request, with a message; else
accepted + rejected records == the ``ml.*`` records sent, a message iff any was rejected (or
features were left out), and columns of one length per batch. Anything else escaping is a crash.
"""

from __future__ import annotations

import atheris
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from fuzz import INSTRUMENTED
from fuzz._harness import instrument, main, structured
from fuzz._inputs import logs_request, ml_records

with instrument(INSTRUMENTED):  # numpy: no comparison tracing (see instrument)
    from modeltel_collector.extract import Extraction, extract_logs
    from modeltel_collector.receivers.consumer import InvalidPayload

NOW = 1_800_000_000_000_000_000


def payload_of(data: bytes) -> bytes:
    """The request bytes an input stands for (see the module docstring)."""
    is_structured, _, rest = structured(data)
    if not is_structured:
        return rest
    fdp = atheris.FuzzedDataProvider(rest)
    payload = bytearray(logs_request(fdp).SerializeToString())
    damage = fdp.ConsumeIntInRange(0, 7)
    if payload and damage == 1:
        del payload[fdp.ConsumeIntInRange(0, len(payload) - 1) :]
    elif payload and damage == 2:
        bit = fdp.ConsumeIntInRange(0, 8 * len(payload) - 1)
        payload[bit // 8] ^= 1 << (bit % 8)
    elif damage == 3:
        payload += fdp.ConsumeBytes(8)
    return bytes(payload)


def check(payload: bytes) -> Extraction | None:
    """Extract ``payload`` and assert the contract; the extraction, or None if refused."""
    try:
        message: ExportLogsServiceRequest | None = ExportLogsServiceRequest.FromString(payload)
    except DecodeError:
        message = None
    try:
        extraction = extract_logs(payload, now_unix_nano=NOW)
    except InvalidPayload as refused:
        assert message is None, f"refused a request upb decodes: {refused}"
        assert str(refused), "InvalidPayload without a message"
        return None
    assert message is not None, "extracted a request upb cannot decode"
    accepted = extraction.prediction_count + extraction.label_count
    assert accepted + extraction.rejected == ml_records(message), (accepted, extraction.rejected)
    left_out = "values left out" in extraction.error_message
    assert bool(extraction.error_message) == (extraction.rejected > 0 or left_out), extraction.error_message
    for batch in extraction.predictions:
        n = len(batch)
        assert n > 0 and batch.model and batch.version and isinstance(batch.model + batch.version, str)
        assert batch.time_unix_nano.shape == batch.prediction_ids.shape == batch.prediction.shape == (n,)
        assert batch.score.shape == (n,) and (
            batch.prediction_class is None or batch.prediction_class.shape == (n,)
        )
        assert all(c.shape == (n,) for c in (*batch.numeric.values(), *batch.categorical.values()))
    for labels in extraction.labels:
        n = len(labels)
        assert n > 0 and isinstance(labels.model, str) and labels.model
        assert labels.time_unix_nano.shape == labels.prediction_ids.shape == labels.value.shape == (n,)
        assert labels.value_class is None or labels.value_class.shape == (n,)
    return extraction


def test_one_input(data: bytes) -> None:
    """One fuzz case."""
    check(payload_of(data))


if __name__ == "__main__":
    main(test_one_input)
