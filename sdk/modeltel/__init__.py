"""modeltel: ML model monitoring on OpenTelemetry.

``modeltel.instrument(app)`` after ``app = FastAPI()`` gives traces, HTTP metrics,
logs and one ``ml.prediction`` event per prediction, over OTLP.
"""

from modeltel.api import force_flush, log_label, log_prediction
from modeltel.capture import CaptureError, Prediction
from modeltel.instrumentation import AppCapture, instrument
from modeltel.providers import ConfigurationError

__all__ = [
    "AppCapture",
    "CaptureError",
    "ConfigurationError",
    "Prediction",
    "force_flush",
    "instrument",
    "log_label",
    "log_prediction",
]
