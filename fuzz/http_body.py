"""Fuzz target: the OTLP/HTTP receiver (``/v1/logs``, ``/v1/traces``, ``/v1/metrics``) and
``POST /v1/labels``, end to end in-process: the real Starlette app called as ASGI (no sockets,
no HTTP parser in front, so the app's own header handling meets every value), so header
parsing, body limits, streaming, gzip and deflate inflation, decoding and the error mapping
are all exercised together.

Input: a 6-byte header, then the body. Byte 0 picks the path, byte 1 the ``Content-Type``
(odd ones and none included), byte 2 the ``Content-Encoding`` (likewise), byte 3 how the
body is sent: 0 as is (a Content-Encoding then often lies), 1 compressed as the header says,
n > 1: n copies of it, compressed when the header says so (a small compression bomb, or a
body over the limit). Byte 4: the ``Content-Length`` (right, absent, or one of
:data:`LENGTH_LIES`); byte 5: how many chunks the body arrives in, and (bit 7) whether the
client disconnects before the last one. See :data:`fuzz.seeds.HTTP_PATHS` and the lists
beside it.

Contract: never a 500, nor an exception out of the app; 415 exactly for an unsupported media
type or encoding, 413 for a body over the limit (declared, as sent or inflated), 400 when the
client disconnects; otherwise, when the payload is known (sent as is, or compressed here),
exactly the answer its decoder gives: 200 with the extraction's ``partial_success`` (logs),
or the label counts (``/v1/labels``), 400 ``INVALID_ARGUMENT`` when it does not decode. A
body whose Content-Encoding lies gets 200, 400 or 413. Error bodies are a
``google.rpc.Status`` in the request's encoding.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import MutableMapping
from typing import Any

from google.protobuf.message import DecodeError, Message
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from fuzz import INSTRUMENTED
from fuzz._harness import instrument, main
from fuzz.seeds import HTTP_CONTENT_TYPES, HTTP_ENCODINGS, HTTP_PATHS

with instrument(INSTRUMENTED):  # numpy: no comparison tracing (see instrument)
    from modeltel_collector.extract import extract_logs
    from modeltel_collector.labels import labels_from_records, parse_labels
    from modeltel_collector.receivers import http_receiver_app
    from modeltel_collector.receivers.consumer import ExportOutcome, InvalidPayload, LabelsOutcome
    from modeltel_collector.receivers.errors import PayloadTooLarge
    from modeltel_collector.receivers.labels_http import labels_route  # noqa: F401  (instrumented here)
    from modeltel_collector.receivers.otlp_json import decode_json

NOW = 1_800_000_000_000_000_000
LIMIT = 16 << 10
"""The receiver's body limit here: small, so that inputs reach it, compressed or not."""
INVALID_ARGUMENT, RESOURCE_EXHAUSTED = 3, 8
REQUESTS: dict[str, tuple[type[Message], type[Message]]] = {
    "/v1/logs": (ExportLogsServiceRequest, ExportLogsServiceResponse),
    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse),
    "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse),
}


class Consumer:
    """Extracts logs as the collector does, takes traces and metrics, and parses labels."""

    def consume_logs(self, payload: bytes) -> ExportOutcome:
        return extract_logs(payload, now_unix_nano=NOW).outcome

    def consume_traces(self, request: Any) -> ExportOutcome:
        return ExportOutcome()

    def consume_metrics(self, request: Any) -> ExportOutcome:
        return ExportOutcome()

    def consume_labels(self, payload: bytes) -> LabelsOutcome:
        batches, errors = labels_from_records(parse_labels(payload), now_unix_nano=NOW)
        return LabelsOutcome(sum(len(batch) for batch in batches), errors)


APP = http_receiver_app(Consumer(), max_body_bytes=LIMIT)
LOOP = asyncio.new_event_loop()  # one for the whole run (and its thread pool), not one per request
LENGTH_LIES = ["\xb2", "1\xb2", "9" * 5000, "-1", " 5", "0", "abc", "", str(LIMIT + 1), "0" * 40 + "1"]
"""``Content-Length`` values that differ from the body's length (latin-1, as ASGI headers are)."""


class Response:
    """What the app sent: status, headers and body."""

    def __init__(self) -> None:
        self.status_code = 0
        self.headers: dict[str, str] = {}
        self.content = b""

    def json(self) -> Any:
        return json.loads(self.content)


def post(path: str, headers: list[tuple[str, str]], chunks: list[bytes], disconnect: bool) -> Response:
    """Call the ASGI app with a POST of ``chunks``, the client gone before the last if ``disconnect``."""
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
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 4318),
    }
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    if disconnect:
        messages[-1] = {"type": "http.disconnect"}
    response = Response()

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            response.status_code = message["status"]
            response.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            response.content += message.get("body", b"")

    LOOP.run_until_complete(APP(scope, receive, send))
    return response


def expected_answer(path: str, as_json: bool, payload: bytes) -> tuple[int, Any]:
    """The status the receiver must give for ``payload`` (decoded), and what to compare on 200:
    the logs outcome or the labels counts."""
    if len(payload) > LIMIT:
        return 413, None
    if path == "/v1/labels":
        try:
            records = parse_labels(payload)
        except InvalidPayload:
            return 400, None
        except PayloadTooLarge:
            return 413, None
        batches, errors = labels_from_records(records, now_unix_nano=NOW)
        return 200, (sum(len(batch) for batch in batches), len(errors))
    request_type, _ = REQUESTS[path]
    try:
        message: Any = decode_json(request_type, payload) if as_json else request_type.FromString(payload)
    except (InvalidPayload, DecodeError):
        return 400, None
    if path != "/v1/logs":
        return 200, ExportOutcome()
    try:
        return 200, extract_logs(
            message.SerializeToString() if as_json else payload, now_unix_nano=NOW
        ).outcome
    except InvalidPayload:
        return 400, None


def compress(encoding: str, payload: bytes) -> bytes:
    """``payload`` as a client would send it with ``Content-Encoding: encoding``."""
    if encoding == "gzip":
        return gzip.compress(payload, compresslevel=1)
    if encoding == "deflate":
        return zlib.compress(payload, 1)  # zlib-wrapped, as HTTP's deflate is
    return payload


def check_error_body(status_code: int, content: bytes, as_json: bool) -> None:
    """An error body: a ``google.rpc.Status`` with the code the HTTP status maps to, and a message."""
    if as_json:
        document = json.loads(content)
        code, message = document.get("code", 0), document.get("message", "")
    else:
        status = Status.FromString(content)
        code, message = status.code, status.message
    assert code == (RESOURCE_EXHAUSTED if status_code == 413 else INVALID_ARGUMENT), (status_code, code)
    assert message, "an error without a message"


def _over_limit(length: str) -> bool:
    """Whether a Content-Length (ASCII digits, else ignored) exceeds the limit; no int() of it."""
    if not (length.isascii() and length.isdigit()):
        return False
    digits, limit = length.lstrip("0"), str(LIMIT)
    return len(digits) > len(limit) or (len(digits) == len(limit) and digits > limit)


def check(
    path: str,
    content_type: str | None,
    encoding_header: str | None,
    how: int,
    length: str | None,
    pieces: int,
    disconnect: bool,
    body: bytes,
) -> None:
    """Send one request and assert the contract (see the module docstring).

    ``length`` is the Content-Length header: the body's own length when ``"right"``.
    """
    media = (content_type or "").split(";")[0].strip().lower()
    encoding = (encoding_header or "").strip().lower() or "identity"
    labels = path == "/v1/labels"
    as_json = labels or media == "application/json"
    payload = body * how if how > 1 else body
    known = how > 0 or encoding == "identity"  # what the receiver should decode is known
    sent = compress(encoding, payload) if how > 0 else payload
    if length == "right":
        length = str(len(sent))

    headers = [
        ("Content-Type", content_type),
        ("Content-Encoding", encoding_header),
        ("Content-Length", length),
    ]
    size = -(-len(sent) // pieces) or 1
    chunks = [sent[i : i + size] for i in range(0, len(sent), size)] or [b""]
    disconnect = disconnect and len(chunks) > 1
    response = post(path, [(k, v) for k, v in headers if v is not None], chunks, disconnect)
    status = response.status_code
    assert status != 500, response.content[:500]

    media_ok = (
        (not media or media == "application/json" or media.endswith("+json"))
        if labels
        else (media in ("application/x-protobuf", "application/json"))
    )
    declared = length or ""
    if not media_ok or encoding not in ("identity", "gzip", "deflate"):
        want: int | None = 415
    elif _over_limit(declared):
        want = 413  # refused before reading, from the declared length
    elif disconnect:  # unless what arrived before is over the limit already
        want = 413 if sum(map(len, chunks[:-1])) > LIMIT else 400
    elif len(sent) > LIMIT:
        want = 413
    else:
        want = None
    if want is not None:
        assert status == want, (status, want, media, encoding, declared[:20], response.content[:300])
        check_error_body(status, response.content, as_json)
        return
    if not known:  # a Content-Encoding that lies, or compressed by the client: any sound answer
        assert status in (200, 400, 413), (status, response.content[:200])
        if status != 200:
            check_error_body(status, response.content, as_json)
        return
    want, outcome = expected_answer(path, as_json and not labels, payload)
    assert status == want, (status, want, response.content[:300])
    if status != 200:
        check_error_body(status, response.content, as_json)
    elif labels:
        answer = response.json()
        assert (answer["accepted"], answer["rejected"]) == outcome, (answer, outcome)
    else:
        _, response_type = REQUESTS[path]
        if as_json:
            partial = response.json().get("partialSuccess", {})
            rejected = int(next((v for k, v in partial.items() if k.startswith("rejected")), 0))
            got = ExportOutcome(rejected, partial.get("errorMessage", ""))
        else:
            message: Any = response_type.FromString(response.content)
            fields = message.partial_success.ListFields()
            rejected = next((v for f, v in fields if f.name.startswith("rejected")), 0)
            got = ExportOutcome(rejected, message.partial_success.error_message)
        assert got == outcome, (got, outcome)


def test_one_input(data: bytes) -> None:
    """One fuzz case."""
    if len(data) < 6:
        return
    lengths: list[str | None] = ["right", "right", None, *LENGTH_LIES]
    check(
        HTTP_PATHS[data[0] % len(HTTP_PATHS)],
        HTTP_CONTENT_TYPES[data[1] % len(HTTP_CONTENT_TYPES)],
        HTTP_ENCODINGS[data[2] % len(HTTP_ENCODINGS)],
        data[3],
        lengths[data[4] % len(lengths)],
        1 + data[5] % 8,
        bool(data[5] & 0x80),
        data[6:],
    )


if __name__ == "__main__":
    main(test_one_input)
