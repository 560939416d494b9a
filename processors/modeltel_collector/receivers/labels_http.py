"""``POST /v1/labels``: ground-truth labels as a JSON list, on the OTLP/HTTP receiver's port.

The body is a JSON list of label records (see :mod:`modeltel_collector.labels`), or an
object ``{"labels": [...]}``, at most :data:`~modeltel_collector.labels.MAX_LABELS_PER_REQUEST`
of them, gzip or deflate allowed, within the receiver's body size limit. Answers:

- 200 whenever the body parsed, even if some records were invalid::

      {"accepted": 2, "rejected": 1, "errors": [{"index": 1, "error": "missing prediction_id"}],
       "errors_not_shown": 0}

  ``errors`` lists the first :data:`MAX_ERRORS_SHOWN` refused records by their index in the
  list (invalid, or of a model beyond the collector's ``limits.max_models``),
  ``errors_not_shown`` counts the rest. The others are accepted, all together, and are
  durable when the answer is sent.
- 400 (``INVALID_ARGUMENT``) when the body is not JSON or not a list of records; 413 for more
  records than allowed or a body over the size limit; 415 for a Content-Type other than
  JSON; 429 with ``Retry-After`` when the collector's queue is full (retry the whole request:
  nothing of it was taken). Error bodies are a ``google.rpc.Status`` in JSON, as OTLP/HTTP's.

The route exists only when the consumer implements
:class:`~modeltel_collector.receivers.consumer.LabelConsumer` (404 otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modeltel_collector.labels import LABELS_PATH
from modeltel_collector.receivers.consumer import LabelsOutcome
from modeltel_collector.receivers.errors import UnsupportedMediaType, failure_for
from modeltel_collector.receivers.otlp_http import _WBITS, JSON, _media_type, _read_body, inflate
from modeltel_collector.receivers.otlp_json import to_json

MAX_ERRORS_SHOWN = 100
"""Per-record errors listed in a response; ``errors_not_shown`` counts the others."""


def _answer(outcome: LabelsOutcome) -> dict[str, Any]:
    errors = outcome.errors
    return {
        "accepted": outcome.accepted,
        "rejected": len(errors),
        "errors": [error.to_dict() for error in errors[:MAX_ERRORS_SHOWN]],
        "errors_not_shown": max(0, len(errors) - MAX_ERRORS_SHOWN),
    }


def labels_route(consume: Callable[[bytes], LabelsOutcome], limit: int) -> Route:
    """The ``POST /v1/labels`` route handing each (decompressed) body to ``consume``."""

    async def post_labels(request: Request) -> Response:
        try:
            media_type = _media_type(request)
            if media_type and media_type != JSON and not media_type.endswith("+json"):
                raise UnsupportedMediaType(f"unsupported Content-Type {media_type!r}; send {JSON}")
            encoding = request.headers.get("content-encoding", "identity").strip().lower() or "identity"
            if encoding not in ("identity", *_WBITS):
                raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding!r}; use gzip")
            body = await _read_body(request, limit)

            def work() -> dict[str, Any]:
                payload = body if encoding == "identity" else inflate(body, encoding, limit)
                return _answer(consume(payload))

            answer = await run_in_threadpool(work)
        except Exception as error:
            failure = failure_for(error)
            retry_after = failure.retry_after_header()
            return Response(
                to_json(failure.status()),
                status_code=failure.http_status,
                media_type=JSON,
                headers={"Retry-After": retry_after} if retry_after is not None else None,
            )
        return JSONResponse(answer)

    return Route(LABELS_PATH, post_labels, methods=["POST"])
