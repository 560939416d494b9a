"""The modeltel telemetry contract: every event, attribute, header and metric name.

No official OpenTelemetry convention exists yet for (non-GenAI) model inference, so
modeltel defines one here. The SDK and the collector both import these constants;
no other module spells the strings.
"""

from typing import Final

# Events (log records with an ``event_name``).
PREDICTION_EVENT: Final = "ml.prediction"
LABEL_EVENT: Final = "ml.label"

# Event attributes.
MODEL_NAME: Final = "ml.model.name"
MODEL_VERSION: Final = "ml.model.version"
MODEL_TASK: Final = "ml.model.task"
PREDICTION_ID: Final = "ml.prediction.id"
FEATURE_PREFIX: Final = "ml.feature."
PREDICTION_VALUE: Final = "ml.prediction.value"
PREDICTION_SCORE: Final = "ml.prediction.score"
LABEL_VALUE: Final = "ml.label.value"

TASK_REGRESSION: Final = "regression"
TASK_CLASSIFICATION: Final = "classification"

# Metric attributes (never a prediction id: that is unbounded cardinality).
FEATURE_NAME: Final = "ml.feature.name"
FEATURE_CATEGORY: Final = "ml.feature.category"
PERFORMANCE_METRIC_NAME: Final = "ml.performance.metric"
"""On ``ml.performance.acceptance``: which metric the band applies to."""
VALUE_SIGN: Final = "ml.value.sign"
"""``negative`` on histogram points holding magnitudes of negative values (OTel histograms
take non-negative values only); absent on the points of values >= 0."""
DROP_REASON: Final = "modeltel.drop.reason"

# HTTP response headers set on every prediction response.
PREDICTION_ID_HEADER: Final = "X-Prediction-ID"
MODEL_VERSION_HEADER: Final = "X-Model-Version"

# Metrics the SDK records for every request, whatever the event sampling.
FEATURE_VALUE_METRIC: Final = "ml.feature.value"
"""Histogram of each numeric feature (attribute ``ml.feature.name``)."""
FEATURE_CATEGORY_METRIC: Final = "ml.feature.category"
"""Counter of categorical feature values (attributes ``ml.feature.name``, ``ml.feature.category``)."""
PREDICTION_OUTPUT_METRIC: Final = "ml.prediction.output"
"""Histogram of numeric predictions."""
PREDICTION_CLASS_METRIC: Final = "ml.prediction.class"
"""Counter of categorical predictions (attribute ``ml.feature.category`` holds the class)."""
SDK_EVENTS_EXPORTED_METRIC: Final = "modeltel.sdk.events.exported"
SDK_EVENTS_DROPPED_METRIC: Final = "modeltel.sdk.events.dropped"
"""Counter of events lost on the app side (attribute ``modeltel.drop.reason``)."""

# Metrics the collector exports.
PREDICTIONS_METRIC: Final = "ml.predictions"
LABELS_JOINED_METRIC: Final = "ml.labels.joined"
DRIFT_METRIC_PREFIX: Final = "ml.drift."
DRIFT_DETECTED_METRIC: Final = "ml.drift.detected"
PERFORMANCE_METRIC_PREFIX: Final = "ml.performance."
FEATURE_MEAN_METRIC: Final = "ml.feature.mean"
RECEIVER_ACCEPTED_METRIC: Final = "modeltel.receiver.accepted"
RECEIVER_REJECTED_METRIC: Final = "modeltel.receiver.rejected"
RECEIVER_QUEUE_DEPTH_METRIC: Final = "modeltel.receiver.queue_depth"
RECEIVER_LIMITED_METRIC: Final = "modeltel.receiver.limited"
"""Counter of refusals by the collector's cardinality limits (attributes ``limit``: ``max_models``,
``max_versions_per_model`` or ``max_features_per_model``; ``signal``): records of a refused model
or version, feature columns dropped from a batch."""
RECEIVER_DUPLICATES_METRIC: Final = "modeltel.receiver.duplicates"
"""Counter of requests received again (a retried export, same bytes) and not applied twice
(attribute ``signal``: ``logs`` or ``labels``)."""
ALERTS_FIRING_METRIC: Final = "modeltel.alerts.firing"
ALERT_EVALUATIONS_METRIC: Final = "modeltel.alerts.evaluations"
NOTIFICATIONS_SENT_METRIC: Final = "modeltel.notifications.sent"
NOTIFICATIONS_FAILED_METRIC: Final = "modeltel.notifications.failed"

# Instrumentation scope of everything the SDK emits.
SCOPE_NAME: Final = "modeltel"
