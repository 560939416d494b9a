"""The one place that decides how a failed export is answered, on gRPC and on HTTP alike.

Modelled on the OpenTelemetry Collector's ``receiver/otlpreceiver/internal/errors``: receivers
catch whatever went wrong, ask :func:`failure_for` for the answer, and only render it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.rpc.error_details_pb2 import BadRequest, RetryInfo
from google.rpc.status_pb2 import Status

from modeltel_collector.receivers.consumer import InvalidPayload, Overloaded

_log = logging.getLogger("modeltel_collector.receivers")


class PayloadTooLarge(Exception):
    """The body exceeds the size limit (before or after decompression); never retry it."""


class UnsupportedMediaType(Exception):
    """A ``Content-Type`` or ``Content-Encoding`` the receiver does not speak."""


class Unauthenticated(Exception):
    """No accepted bearer token; the message never contains the token presented."""


@dataclass(frozen=True)
class Failure:
    """How to answer a failed export on either transport."""

    grpc_code: grpc.StatusCode
    http_status: int
    message: str
    details: tuple[Message, ...] = ()
    retry_after_seconds: float | None = None

    def status(self) -> Status:
        """The ``google.rpc.Status``: the HTTP error body, and gRPC's ``grpc-status-details-bin``."""
        status = Status(code=self.grpc_code.value[0], message=self.message)
        for detail in self.details:
            status.details.add().Pack(detail)
        return status

    def retry_after_header(self) -> str | None:
        """``Retry-After`` in whole seconds (RFC 9110 allows no fractions), rounded up."""
        if self.retry_after_seconds is None:
            return None
        return str(math.ceil(self.retry_after_seconds))


def failure_for(error: Exception) -> Failure:
    """Map what went wrong while receiving or consuming a request to its OTLP answer.

    - :class:`Overloaded` (back-pressure): gRPC ``UNAVAILABLE`` / HTTP 429, both retryable,
      with a ``RetryInfo`` detail and ``Retry-After``.
    - :class:`InvalidPayload` (undecodable or malformed): ``INVALID_ARGUMENT`` / 400 with a
      ``BadRequest`` detail; the client must not retry.
    - :class:`PayloadTooLarge`: ``RESOURCE_EXHAUSTED`` without ``RetryInfo`` (not retryable) / 413.
    - :class:`UnsupportedMediaType`: ``INVALID_ARGUMENT`` / 415.
    - :class:`Unauthenticated` (no accepted bearer token): ``UNAUTHENTICATED`` / 401.
    - anything else is a bug in the consumer: logged with its traceback, ``INTERNAL`` / 500
      (not retryable: retrying would hit the same bug).
    """
    if isinstance(error, Overloaded):
        delay = Duration()
        delay.FromNanoseconds(round(error.retry_after_seconds * 1e9))
        return Failure(
            grpc.StatusCode.UNAVAILABLE,
            429,
            error.message,
            (RetryInfo(retry_delay=delay),),
            error.retry_after_seconds,
        )
    if isinstance(error, InvalidPayload):
        violation = BadRequest.FieldViolation(field="request", description=str(error))
        return Failure(
            grpc.StatusCode.INVALID_ARGUMENT, 400, str(error), (BadRequest(field_violations=[violation]),)
        )
    if isinstance(error, PayloadTooLarge):
        return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, 413, str(error))
    if isinstance(error, UnsupportedMediaType):
        return Failure(grpc.StatusCode.INVALID_ARGUMENT, 415, str(error))
    if isinstance(error, Unauthenticated):
        return Failure(grpc.StatusCode.UNAUTHENTICATED, 401, str(error))
    _log.error("the OTLP consumer failed on a request", exc_info=error)
    return Failure(
        grpc.StatusCode.INTERNAL,
        500,
        f"internal error while processing the request: {type(error).__name__}: {error}",
    )
