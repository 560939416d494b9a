"""``instrument(app)``: traces, HTTP metrics, logs and prediction capture for a FastAPI app."""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Callable, Collection
from typing import Any

import orjson
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from modeltel.capture import (
    CaptureError,
    CaptureSettings,
    Extractor,
    Prediction,
    PredictionRecorder,
    extract_predictions,
)
from modeltel.middleware import Exchange, PredictionCaptureMiddleware
from modeltel.runtime import Runtime, get_runtime

DEFAULT_EXCLUDED_URLS = "/health,/livez,/readyz,/ready,/metrics"
"""Probe and scrape URLs that get no span (``OTEL_PYTHON_FASTAPI_EXCLUDED_URLS`` overrides)."""

VersionSource = str | Callable[[], str] | None


def _default_model_identity(runtime: Runtime) -> tuple[str, str]:
    attributes = runtime.providers.resource.attributes
    return str(attributes.get("service.name", "unknown_service")), str(
        attributes.get("service.version", "unknown")
    )


class AppCapture:
    """Prediction capture for one app: which routes, which model, and how to record them."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        model: str | None,
        version: VersionSource,
        settings: CaptureSettings,
        predict_paths: Collection[str] | None,
        is_prediction_route: Callable[[str, str], bool] | None,
        extractor: Extractor | None,
        max_body_bytes: int,
    ) -> None:
        default_model, default_version = _default_model_identity(runtime)
        self.model = model or default_model
        self._version = version if version is not None else default_version
        self.settings = settings
        self._paths = frozenset(predict_paths) if predict_paths is not None else None
        self._route_predicate = is_prediction_route
        self._extractor = extractor
        self.max_body_bytes = max_body_bytes
        self.flush = runtime.force_flush
        self.recorder = PredictionRecorder(
            runtime.sink,
            runtime.statistics,
            settings,
            runtime.counters.dropped,
        )

    def is_prediction_route(self, method: str, path: str) -> bool:
        if self._route_predicate is not None:
            return self._route_predicate(method, path)
        if self._paths is not None:
            return path in self._paths
        return method == "POST" and "predict" in path

    def current_version(self) -> str:
        """The model version now; a callable is asked on every request (the artefact may change)."""
        if isinstance(self._version, str):
            return self._version
        try:
            return str(self._version())
        except Exception as error:  # never fail a request over the version
            self.recorder.failed("the version callable failed; reporting 'unknown'", error, dropped=0)
            return "unknown"

    def record_exchange(self, exchange: Exchange) -> None:
        """Parse a finished request's bodies and record its predictions; never raises."""
        try:
            predictions = self._predictions(exchange)
            ids = prediction_ids(exchange.state.prediction_id, len(predictions))
            span_context = trace.get_current_span().get_span_context()
            self.recorder.record(predictions, ids, self.model, exchange.state.version, span_context)
        except Exception as error:
            self.recorder.failed(f"prediction capture skipped on {exchange.route}", error)

    def _predictions(self, exchange: Exchange) -> list[Prediction]:
        if exchange.request_body.overflowed or exchange.response_body.overflowed:
            raise CaptureError(f"a body is larger than max_body_bytes={self.max_body_bytes}")
        request = _parse_json(exchange.request_body.getvalue(), "request")
        body = exchange.response_body.getvalue()
        if exchange.response_encoding == b"gzip":
            body = _gunzip(body, self.max_body_bytes)
        response = _parse_json(body, "response")
        if self._extractor is not None:
            return list(self._extractor(request, response))
        return extract_predictions(request, response, self.settings)


def prediction_ids(request_id: str, count: int) -> list[str]:
    """One prediction keeps the request's id; a batch's are ``<id>-0``, ``<id>-1``..."""
    return [request_id] if count == 1 else [f"{request_id}-{i}" for i in range(count)]


def _gunzip(body: bytes, limit: int) -> bytes:
    """Decompress a gzip body, refusing one that inflates past ``limit`` bytes."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise CaptureError(f"the response is not valid gzip ({error})") from None
    if len(data) > limit:
        raise CaptureError(f"the response inflates past max_body_bytes={limit}")
    return data


def _parse_json(body: bytes, what: str) -> Any:
    if not body:
        raise CaptureError(f"the {what} has no JSON body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # not strict JSON (NaN, integers past 64 bits, lone surrogates): as the app parsed it
    try:
        return json.loads(body)
    except ValueError as error:
        raise CaptureError(f"the {what} body is not valid JSON ({error})") from None


def _attach_logging_handler(runtime: Runtime) -> None:
    root = logging.getLogger()
    if any(type(h).__module__.startswith("opentelemetry") for h in root.handlers):
        return  # opentelemetry-instrument (or the app) already sends logging records
    from opentelemetry.instrumentation.logging.handler import LoggingHandler

    root.addHandler(LoggingHandler(logger_provider=runtime.providers.logger_provider))


def instrument(
    app: FastAPI,
    *,
    model: str | None = None,
    version: VersionSource = None,
    task: str | None = None,
    predict_paths: Collection[str] | None = None,
    is_prediction_route: Callable[[str, str], bool] | None = None,
    prediction_key: str = "prediction",
    score_key: str | None = None,
    extractor: Extractor | None = None,
    sample_rate: float = 1.0,
    include_features: Collection[str] | None = None,
    exclude_features: Collection[str] = (),
    hash_features: Collection[str] = (),
    hash_salt: str | None = None,
    max_string_length: int = 256,
    max_features: int = 256,
    max_categories: int = 50,
    max_body_bytes: int = 1024 * 1024,
    excluded_urls: str | None = None,
    exclude_spans: Collection[str] = ("receive", "send"),
    capture_logs: bool = True,
    protocol: str | None = None,
) -> AppCapture:
    """Instrument a FastAPI app: call once, right after ``app = FastAPI()``.

    Args:
        app: the application.
        model: model name on every event (default: ``service.name`` of the OTel resource).
        version: model version, or a callable returning it on each request (for example
            the loaded artefact's version); default ``service.version``, else ``"unknown"``.
        task: ``"regression"`` or ``"classification"``, recorded as ``ml.model.task``.
        predict_paths: exact paths of prediction routes. Default: POST routes whose path
            contains ``predict``.
        is_prediction_route: ``(method, path) -> bool``, instead of ``predict_paths``.
        prediction_key: response field holding the prediction.
        score_key: response field holding a confidence or probability, if any.
        extractor: ``(request_json, response_json) -> [Prediction]`` for other shapes.
        sample_rate: share of predictions sent as events (aggregate metrics see all).
        include_features: only these (flattened) feature names leave the process.
        exclude_features: these features (or whole nested objects) never leave it.
        hash_features: features sent as a salted SHA-256 prefix (identifiers).
        hash_salt: salt for ``hash_features`` (default ``MODELTEL_HASH_SALT``).
        max_string_length: longer string values are truncated.
        max_features: at most this many features per event.
        max_categories: distinct values counted per categorical feature; the rest
            count as ``__other__``.
        max_body_bytes: bodies larger than this are served but not captured (counted
            as dropped).
        excluded_urls: comma-separated URL patterns with no spans (default: health
            and metrics URLs, or ``OTEL_PYTHON_FASTAPI_EXCLUDED_URLS``).
        exclude_spans: ASGI sub-spans left out; ``()`` keeps ``receive``/``send`` spans.
        capture_logs: send the app's ``logging`` records as OTLP logs.
        protocol: ``"grpc"`` or ``"http/protobuf"`` for providers modeltel creates
            (default from ``OTEL_EXPORTER_OTLP_PROTOCOL``, else gRPC).

    Returns:
        The app's capture settings; calling ``instrument`` again returns the same object.
    """
    existing: AppCapture | None = getattr(app.state, "modeltel", None)
    if existing is not None:
        return existing
    # The stable HTTP conventions give ``http.server.request.duration`` in seconds.
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    runtime = get_runtime(protocol)
    settings = CaptureSettings(
        prediction_key=prediction_key,
        score_key=score_key,
        sample_rate=sample_rate,
        include=include_features,
        exclude=exclude_features,
        hash_features=hash_features,
        hash_salt=hash_salt if hash_salt is not None else os.environ.get("MODELTEL_HASH_SALT", ""),
        max_string_length=max_string_length,
        max_features=max_features,
        max_categories=max_categories,
        task=task,
    )
    capture = AppCapture(
        runtime,
        model=model,
        version=version,
        settings=settings,
        predict_paths=predict_paths,
        is_prediction_route=is_prediction_route,
        extractor=extractor,
        max_body_bytes=max_body_bytes,
    )
    if not getattr(app, "_is_instrumented_by_opentelemetry", False):
        env_excluded = os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS") or os.environ.get(
            "OTEL_PYTHON_EXCLUDED_URLS"
        )
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=runtime.providers.tracer_provider,
            meter_provider=runtime.providers.meter_provider,
            excluded_urls=excluded_urls or (None if env_excluded else DEFAULT_EXCLUDED_URLS),
            exclude_spans=list(exclude_spans),  # type: ignore[arg-type]
        )
    app.add_middleware(PredictionCaptureMiddleware, capture=capture)
    if capture_logs:
        _attach_logging_handler(runtime)
    app.state.modeltel = capture
    return capture
