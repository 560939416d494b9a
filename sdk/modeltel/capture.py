"""From request and response JSON to ``ml.prediction`` events and aggregate metrics.

:func:`extract_predictions` is the default extractor: a JSON object in, its
prediction out; or a batch (a list, or ``{"instances": [...]}``) in, a list of
predictions (a list, or ``{"predictions": [...]}``) out. :class:`PredictionRecorder`
turns each :class:`Prediction` into event attributes (flattening nested features,
applying include/exclude lists, hashing and truncation), records the aggregate
statistics for every prediction, and emits the sampled events.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import SpanContext

from modeltel import semconv
from modeltel.events import EventSink
from modeltel.stats import FeatureStatistics

_logger = logging.getLogger("modeltel")


class CaptureError(ValueError):
    """A request or response does not have the shape prediction capture expects."""


@dataclass(frozen=True)
class Prediction:
    """One model prediction: the input features, the output, and an optional score."""

    features: Mapping[str, Any]
    value: Any
    score: float | None = None


Extractor = Callable[[Any, Any], Sequence[Prediction]]
"""``extractor(request_json, response_json) -> predictions`` for shapes the default misses."""

BATCH_REQUEST_KEYS = ("instances", "inputs", "records")
BATCH_RESPONSE_KEY = "predictions"


@dataclass(frozen=True)
class CaptureSettings:
    """How predictions are read from JSON and what of them leaves the process."""

    prediction_key: str = "prediction"
    score_key: str | None = None
    sample_rate: float = 1.0
    include: Collection[str] | None = None
    exclude: Collection[str] = ()
    hash_features: Collection[str] = ()
    hash_salt: str = ""
    max_string_length: int = 256
    max_features: int = 256
    max_categories: int = 50
    task: str | None = None
    _sample_threshold: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be between 0 and 1, got {self.sample_rate!r}")
        if self.max_string_length < 1 or self.max_features < 1 or self.max_categories < 1:
            raise ValueError("max_string_length, max_features and max_categories must be positive")
        if self.task not in (None, semconv.TASK_REGRESSION, semconv.TASK_CLASSIFICATION):
            raise ValueError(f"task must be 'regression' or 'classification', got {self.task!r}")
        object.__setattr__(self, "_sample_threshold", int(self.sample_rate * 2**32))

    def sampled(self, prediction_id: str) -> bool:
        """Whether the event of this prediction is sent: decided by the id, so it is stable."""
        if self._sample_threshold >= 2**32:
            return True
        return int(prediction_id[-8:], 16) < self._sample_threshold


def _unwrap_output(item: Any, settings: CaptureSettings) -> tuple[Any, Any]:
    if isinstance(item, Mapping):
        if settings.prediction_key not in item:
            raise CaptureError(
                f"the response has no {settings.prediction_key!r} field "
                f"(fields: {', '.join(map(str, list(item)[:10]))}); "
                "pass prediction_key= to instrument(), or an extractor="
            )
        score = item.get(settings.score_key) if settings.score_key else None
        return item[settings.prediction_key], score
    return item, None


def extract_predictions(request: Any, response: Any, settings: CaptureSettings) -> list[Prediction]:
    """The default extractor: single objects and batches, as the module docstring describes."""
    instances: list[Any] | None = None
    if isinstance(request, list):
        instances = request
    elif isinstance(request, Mapping):
        for key in BATCH_REQUEST_KEYS:
            if isinstance(request.get(key), list) and len(request) == 1:
                instances = request[key]
                break
    else:
        raise CaptureError(f"the request body is a JSON {type(request).__name__}, not an object")

    if instances is None:
        value, score = _unwrap_output(response, settings)
        if isinstance(value, list):
            raise CaptureError("the request is one instance but the response holds a list of predictions")
        return [Prediction(request, value, score)]

    if isinstance(response, Mapping):
        for key in (BATCH_RESPONSE_KEY, settings.prediction_key):
            if isinstance(response.get(key), list):
                response = response[key]
                break
    if not isinstance(response, list):
        raise CaptureError(
            f"the request is a batch of {len(instances)} but the response is not a list "
            f"(nor an object with a {BATCH_RESPONSE_KEY!r} list)"
        )
    if len(response) != len(instances):
        raise CaptureError(
            f"the request has {len(instances)} instances but the response {len(response)} predictions"
        )
    predictions = []
    for instance, output in zip(instances, response, strict=True):
        if not isinstance(instance, Mapping):
            raise CaptureError(f"a batch instance is a JSON {type(instance).__name__}, not an object")
        value, score = _unwrap_output(output, settings)
        predictions.append(Prediction(instance, value, score))
    return predictions


class FeatureFlattener:
    """Nested JSON features to flat ``name -> scalar``, with the privacy rules applied."""

    def __init__(self, settings: CaptureSettings) -> None:
        self._settings = settings
        self._include = frozenset(settings.include) if settings.include is not None else None
        self._exclude = frozenset(settings.exclude)
        self._hash = frozenset(settings.hash_features)
        self._salt = settings.hash_salt.encode()

    def scalar(self, name: str, value: Any) -> Any:
        """A value as it may leave the process: hashed, truncated, or a plain scalar.

        Strings are made valid UTF-8 (JSON may carry lone surrogates) and integers
        beyond int64 become floats: OTLP can carry neither.
        """
        if name in self._hash:
            return hashlib.sha256(self._salt + str(value).encode("utf-8", "replace")).hexdigest()[:16]
        kind = type(value)
        if kind is float or kind is bool:
            return value
        if kind is int:
            return value if -(2**63) <= value < 2**63 else float(value)
        text = value if kind is str else str(value)
        if len(text) > self._settings.max_string_length:
            text = text[: self._settings.max_string_length]
        if not text.isascii():
            text = text.encode("utf-8", "replace").decode("utf-8")
        return text

    def flatten(self, features: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self._walk(features, "", out)
        return out

    def _walk(self, node: Mapping[str, Any] | Sequence[Any], prefix: str, out: dict[str, Any]) -> None:
        items = node.items() if isinstance(node, Mapping) else enumerate(node)
        for key, value in items:
            name = f"{prefix}{key}"
            if value is None or name in self._exclude:
                continue  # a missing value is an absent attribute
            if isinstance(value, (Mapping, list, tuple)):
                self._walk(value, name + ".", out)
                continue
            if self._include is not None and name not in self._include:
                continue
            if len(out) >= self._settings.max_features:
                return
            out[name] = self.scalar(name, value)


class PredictionRecorder:
    """Records predictions of one model: aggregate statistics always, sampled events."""

    def __init__(
        self,
        sink: EventSink,
        statistics: FeatureStatistics,
        settings: CaptureSettings,
        count_dropped: Callable[[int, str], None],
    ) -> None:
        self._sink = sink
        self._statistics = statistics
        self._settings = settings
        self._flattener = FeatureFlattener(settings)
        self._count_dropped = count_dropped
        self._logged: set[str] = set()

    def record(
        self,
        predictions: Sequence[Prediction],
        prediction_ids: Sequence[str],
        model: str,
        version: str,
        span_context: SpanContext | None,
    ) -> None:
        settings = self._settings
        for prediction, prediction_id in zip(predictions, prediction_ids, strict=True):
            features = self._flattener.flatten(prediction.features)
            value = (
                None
                if prediction.value is None
                else self._flattener.scalar(semconv.PREDICTION_VALUE, prediction.value)
            )
            self._statistics.record(model, version, features, value, settings.max_categories)
            if not settings.sampled(prediction_id):
                continue
            attributes: dict[str, Any] = {
                semconv.MODEL_NAME: model,
                semconv.MODEL_VERSION: version,
                semconv.PREDICTION_ID: prediction_id,
            }
            if settings.task:
                attributes[semconv.MODEL_TASK] = settings.task
            for name, feature in features.items():
                attributes[semconv.FEATURE_PREFIX + name] = feature
            if value is not None:
                attributes[semconv.PREDICTION_VALUE] = value
            if prediction.score is not None:
                attributes[semconv.PREDICTION_SCORE] = float(prediction.score)
            self._sink.emit(semconv.PREDICTION_EVENT, attributes, span_context)

    def failed(self, what: str, error: Exception, dropped: int = 1) -> None:
        """Count ``dropped`` predictions that could not be recorded; log once per place and kind."""
        if dropped:
            self._count_dropped(dropped, "capture_error")
        key = f"{what}:{type(error).__name__}"
        if key not in self._logged and len(self._logged) < 1000:
            self._logged.add(key)
            _logger.warning("modeltel: %s: %s (logged once)", what, error)
