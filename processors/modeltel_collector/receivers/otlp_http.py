"""OTLP/HTTP: ``/v1/logs``, ``/v1/traces``, ``/v1/metrics`` with protobuf or JSON bodies, gzip or not.

Bodies are limited to 20 MiB both as sent and after decompression (413 beyond, decided from
``Content-Length`` before reading when it is given); decompression stops at the limit, so a
compression bomb is never inflated. Answers use the request's encoding: protobuf for
``application/x-protobuf``, JSON for ``application/json``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from modeltel_collector.receivers.consumer import Consumer, ExportOutcome, InvalidPayload, LabelConsumer
from modeltel_collector.receivers.errors import (
    PayloadTooLarge,
    UnsupportedMediaType,
    failure_for,
)
from modeltel_collector.receivers.otlp_json import to_json
from modeltel_collector.receivers.security import BearerAuthMiddleware, BearerTokens
from modeltel_collector.receivers.signals import SIGNALS, Signal

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MAX_BODY_BYTES = 20 * 1024 * 1024
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # deflate: zlib-wrapped, per HTTP


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _read_body(request: Request, limit: int) -> bytes:
    """The body as sent, refusing one over ``limit`` before reading it when its length is known."""
    length = request.headers.get("content-length", "")
    # ASCII digits only: str.isdigit() is also true of "²", which int() refuses (a 500); and
    # no int() of thousands of digits, which Python refuses too: such a length is too large.
    digits = length.lstrip("0") if length.isascii() and length.isdigit() else ""
    if len(digits) > len(str(limit)) or (digits and int(digits) > limit):
        shown = digits if len(digits) <= 20 else f"{digits[:20]}... ({len(digits)} digits)"
        raise PayloadTooLarge(f"the body ({shown} bytes) exceeds the limit of {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
    except ClientDisconnect:  # as the Collector does when reading the body fails
        raise InvalidPayload("the client disconnected before sending the whole body") from None
    return bytes(body)


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Decompress ``body`` (``gzip``, possibly multi-member, or ``deflate``), never past ``limit``."""
    inflated = bytearray()
    pending = body
    while True:
        inflater = zlib.decompressobj(_WBITS[encoding])
        try:
            while pending:
                inflated += inflater.decompress(pending, limit + 1 - len(inflated))
                if len(inflated) > limit:
                    raise PayloadTooLarge(f"the body exceeds {limit} bytes after decompression")
                pending = inflater.unconsumed_tail
            inflated += inflater.flush()  # input exhausted: at most a few bytes remain
        except zlib.error as error:
            raise InvalidPayload(f"the body is not valid {encoding}: {error}") from None
        if len(inflated) > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes after decompression")
        if not inflater.eof:
            raise InvalidPayload(f"the body is truncated {encoding} data")
        pending = inflater.unused_data
        if not pending or encoding != "gzip":  # gzip members may follow one another
            return bytes(inflated)


def _endpoint(
    signal: Signal, consume: Callable[[Any], ExportOutcome], limit: int
) -> Callable[[Request], Any]:
    async def export(request: Request) -> Response:
        media_type = _media_type(request)
        as_json = media_type == JSON
        try:
            if media_type not in (PROTOBUF, JSON):
                raise UnsupportedMediaType(
                    f"unsupported Content-Type {media_type!r}; send {PROTOBUF} or {JSON}"
                )
            encoding = request.headers.get("content-encoding", "identity").strip().lower() or "identity"
            if encoding not in ("identity", *_WBITS):
                raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding!r}; use gzip")
            body = await _read_body(request, limit)

            def decode() -> Message | bytes:
                payload = body if encoding == "identity" else inflate(body, encoding, limit)
                if as_json:
                    return signal.decode_json(payload)
                return signal.decode_protobuf(payload)

            response = await run_in_threadpool(signal.export, consume, decode)
        except Exception as error:
            failure = failure_for(error)
            status = failure.status()
            retry_after = failure.retry_after_header()
            return Response(
                to_json(status) if as_json else status.SerializeToString(),
                status_code=failure.http_status,
                media_type=JSON if as_json else PROTOBUF,
                headers={"Retry-After": retry_after} if retry_after is not None else None,
            )
        if as_json:
            return Response(to_json(response), media_type=JSON)
        return Response(response.SerializeToString(), media_type=PROTOBUF)

    return export


def http_receiver_app(
    consumer: Consumer, max_body_bytes: int = MAX_BODY_BYTES, *, tokens: BearerTokens | None = None
) -> Starlette:
    """An ASGI app serving the three OTLP/HTTP paths, and ``/v1/labels`` if the consumer takes labels.

    With ``tokens``, every request without one of them is answered 401 before its body is read.
    """
    from modeltel_collector.receivers.labels_http import labels_route  # it imports this module

    routes = [
        Route(signal.http_path, _endpoint(signal, signal.bind(consumer), max_body_bytes), methods=["POST"])
        for signal in SIGNALS
    ]
    if isinstance(consumer, LabelConsumer):
        routes.append(labels_route(consumer.consume_labels, max_body_bytes))
    middleware = [Middleware(BearerAuthMiddleware, tokens=tokens)] if tokens is not None else []
    return Starlette(routes=routes, middleware=middleware)
