"""The ASGI middleware that captures predictions from prediction routes.

It runs inside the OpenTelemetry server span. On a prediction route it keeps a copy
of the request and response bodies as they stream past (the handler and the client
see them untouched), adds ``X-Prediction-ID`` and ``X-Model-Version`` to the response,
and, once the response has been sent, hands the bodies to the route's
:class:`~modeltel.instrumentation.AppCapture`. Parsing and emitting therefore never
delay the response they describe, and a failure in them never becomes an error
response.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modeltel import semconv

if TYPE_CHECKING:
    from modeltel.instrumentation import AppCapture

SHUTDOWN_FLUSH_MILLIS = 10_000
"""The longest the lifespan shutdown waits for buffered telemetry to leave (a reachable collector
takes well under a second; Kubernetes kills a pod 30 s after SIGTERM by default)."""

_PREDICTION_ID_HEADER = semconv.PREDICTION_ID_HEADER.lower().encode()
_MODEL_VERSION_HEADER = semconv.MODEL_VERSION_HEADER.lower().encode()


def new_prediction_id() -> str:
    """A random 128-bit id in hex, like a trace id."""
    return os.urandom(16).hex()


@dataclass
class RequestState:
    """What a prediction request knows while it runs; read by ``log_prediction``."""

    capture: AppCapture
    prediction_id: str
    version: str
    logged: int = 0

    def next_prediction_id(self) -> str:
        """The request's id for its first explicit prediction, then ``<id>-1``, ``<id>-2``..."""
        prediction_id = self.prediction_id if not self.logged else f"{self.prediction_id}-{self.logged}"
        self.logged += 1
        return prediction_id


current_request: ContextVar[RequestState | None] = ContextVar("modeltel_request", default=None)


class BodyBuffer:
    """Chunks of a body up to a size limit; past it, the copy is dropped, not the body."""

    __slots__ = ("chunks", "limit", "overflowed", "size")

    def __init__(self, limit: int) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.overflowed = False

    def add(self, chunk: bytes) -> None:
        if self.overflowed or not chunk:
            return
        self.size += len(chunk)
        if self.size > self.limit:
            self.overflowed = True
            self.chunks.clear()
        else:
            self.chunks.append(chunk)

    def getvalue(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


@dataclass
class Exchange:
    """A finished prediction request, as the middleware saw it."""

    route: str
    request_body: BodyBuffer
    response_body: BodyBuffer
    response_encoding: bytes
    state: RequestState


class PredictionCaptureMiddleware:
    """Pure ASGI middleware (no request/response objects, no extra task per request)."""

    def __init__(self, app: ASGIApp, capture: AppCapture) -> None:
        self.app = app
        self.capture = capture

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        capture = self.capture
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._flush_before_shutdown_completes(send))
            return
        if scope["type"] != "http" or not capture.is_prediction_route(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return

        state = RequestState(capture, new_prediction_id(), capture.current_version())
        request_body = BodyBuffer(capture.max_body_bytes)
        response_body = BodyBuffer(capture.max_body_bytes)
        extra_headers = [
            (_PREDICTION_ID_HEADER, state.prediction_id.encode()),
            (_MODEL_VERSION_HEADER, state.version.encode("latin-1", "replace")),
        ]
        status = 0
        keep_response = False
        encoding = b""

        async def receive_and_copy() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                request_body.add(message.get("body", b""))
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal status, keep_response, encoding
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                for name, value in headers:
                    if name == b"content-type":
                        keep_response = b"json" in value
                    elif name == b"content-encoding":
                        encoding = value
                message = {**message, "headers": headers + extra_headers}
            elif keep_response and message["type"] == "http.response.body":
                response_body.add(message.get("body", b""))
            await send(message)

        token = current_request.set(state)
        try:
            await self.app(scope, receive_and_copy, send_with_headers)
        finally:
            current_request.reset(token)
        if state.logged or not 200 <= status < 300:
            return  # the handler logged its predictions itself, or there was no prediction
        route = str(getattr(scope.get("route"), "path", scope["path"]))
        capture.record_exchange(Exchange(route, request_body, response_body, encoding, state))

    def _flush_before_shutdown_completes(self, send: Send) -> Send:
        """Export what is buffered when the server shuts down.

        uvicorn re-raises SIGTERM after a graceful shutdown, so ``atexit`` handlers never
        run; the lifespan shutdown is the last moment telemetry can leave. With the collector
        unreachable, shutdown waits at most ``SHUTDOWN_FLUSH_MILLIS`` for it.
        """

        async def send_after_flush(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await anyio.to_thread.run_sync(self.capture.flush, SHUTDOWN_FLUSH_MILLIS)
            await send(message)

        return send_after_flush
