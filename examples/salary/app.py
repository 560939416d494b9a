"""The salary model served by FastAPI, instrumented by modeltel in one line.

Run it with ``uvicorn examples.salary.app:app``; telemetry goes over OTLP as the
``OTEL_*`` variables say (``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_ENDPOINT``...).
"""

from __future__ import annotations

from fastapi import FastAPI

import modeltel
from examples.salary.model import LinearRegressionService
from examples.salary.routes import salary_router

service = LinearRegressionService()

app = FastAPI(title="salary model")
modeltel.instrument(app, model="salary", version=lambda: service.artifact_version, task="regression")
app.include_router(salary_router(service))
