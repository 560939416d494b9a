"""Explicit calls, for whatever automatic capture does not fit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import trace

from modeltel import semconv
from modeltel.capture import CaptureSettings, Prediction, PredictionRecorder
from modeltel.middleware import current_request, new_prediction_id
from modeltel.runtime import get_runtime

_default_recorder: PredictionRecorder | None = None


def _recorder_outside_requests() -> PredictionRecorder:
    global _default_recorder
    if _default_recorder is None:
        runtime = get_runtime()
        _default_recorder = PredictionRecorder(
            runtime.sink,
            runtime.statistics,
            CaptureSettings(),
            runtime.counters.dropped,
        )
    return _default_recorder


def log_prediction(
    features: Mapping[str, Any],
    prediction: Any,
    *,
    model: str | None = None,
    version: str | None = None,
    score: float | None = None,
    prediction_id: str | None = None,
) -> str:
    """Emit one ``ml.prediction`` event and return its prediction id.

    Inside a request to an instrumented app it takes the app's model, version and
    capture settings, uses the request's ``X-Prediction-ID`` (then ``<id>-1``,
    ``<id>-2``... for further calls in the same request) and stops automatic capture
    for that request. Elsewhere ``model`` is required and the id is new.
    """
    state = current_request.get()
    if state is not None:
        recorder = state.capture.recorder
        model = model or state.capture.model
        version = version or state.version
        prediction_id = prediction_id or state.next_prediction_id()
    else:
        if not model:
            raise ValueError("log_prediction outside an instrumented request needs model=")
        recorder = _recorder_outside_requests()
        version = version or "unknown"
        prediction_id = prediction_id or new_prediction_id()
    span_context = trace.get_current_span().get_span_context()
    recorder.record([Prediction(features, prediction, score)], [prediction_id], model, version, span_context)
    return prediction_id


def log_label(prediction_id: str, value: Any, *, model: str) -> None:
    """Emit an ``ml.label`` event: the ground truth for an earlier (or later) prediction.

    Works from any process, a labelling job as well as the app; the collector joins
    it to its prediction by id, whatever the order they arrive in.
    """
    if not prediction_id or not model:
        raise ValueError("log_label needs a prediction_id and a model")
    if not isinstance(value, (str, bool, int, float)):
        raise TypeError(f"a label must be a str, bool, int or float, not {type(value).__name__}")
    attributes = {
        semconv.MODEL_NAME: model,
        semconv.PREDICTION_ID: prediction_id,
        semconv.LABEL_VALUE: value,
    }
    get_runtime().sink.emit(semconv.LABEL_EVENT, attributes, trace.get_current_span().get_span_context())


def force_flush(timeout_millis: int = 30_000) -> bool:
    """Export everything buffered now (call before a short-lived job exits)."""
    return get_runtime().force_flush(timeout_millis)
