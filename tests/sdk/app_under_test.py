"""A FastAPI app with every route shape the SDK tests need; options come from the environment.

``MODELTEL_TEST_OPTIONS`` holds ``instrument()`` keyword arguments as JSON;
``MODELTEL_TEST_INSTRUMENT_TWICE=1`` calls ``instrument`` twice;
``MODELTEL_TEST_EXTRACTOR=1`` passes an ``extractor`` that reads the ``/score`` route's shape;
``MODELTEL_TEST_GZIP=1`` adds ``GZipMiddleware`` before ``instrument``, so capture sees gzip bodies.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import PlainTextResponse, StreamingResponse

import modeltel


def create_app() -> FastAPI:
    app = FastAPI()
    if os.environ.get("MODELTEL_TEST_GZIP") == "1":
        app.add_middleware(GZipMiddleware, minimum_size=1)
    options = json.loads(os.environ.get("MODELTEL_TEST_OPTIONS", "{}"))
    options.setdefault("model", "salary")
    options.setdefault("version", "v1")
    if os.environ.get("MODELTEL_TEST_EXTRACTOR") == "1":
        options["extractor"] = lambda request, response: [
            modeltel.Prediction(row["inputs"], out["y"])
            for row, out in zip(request["rows"], response["out"], strict=True)
        ]
    modeltel.instrument(app, **options)
    if os.environ.get("MODELTEL_TEST_INSTRUMENT_TWICE") == "1":
        modeltel.instrument(app, **options)
    log = logging.getLogger("app")
    log.setLevel(logging.INFO)

    def score(features: dict[str, Any]) -> float:
        return 1000.0 * float(features.get("years", 0)) + 30000.0

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(features: dict[str, Any]) -> dict[str, Any]:
        log.info("scored a request")
        return {"prediction": score(features), "model_version": "v1"}

    @app.post("/predict/batch")
    async def predict_batch(instances: list[dict[str, Any]]) -> list[dict[str, float]]:
        return [{"prediction": score(features)} for features in instances]

    @app.post("/predict/raw")
    async def predict_raw(request: Request) -> dict[str, Any]:
        """Accepts any body at all, so capture sees malformed input on a 200 response."""
        await request.body()
        return {"prediction": 1.0}

    @app.post("/predict/text")
    async def predict_text(features: dict[str, Any]) -> PlainTextResponse:
        return PlainTextResponse(str(score(features)))

    @app.post("/predict/stream")
    async def predict_stream(features: dict[str, Any]) -> StreamingResponse:
        async def chunks():  # type: ignore[no-untyped-def]
            for i in range(5):
                yield f"chunk {i}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.post("/predict/explicit")
    def predict_explicit(features: dict[str, Any]) -> dict[str, Any]:
        ids = [
            modeltel.log_prediction({"years": features["years"]}, score(features), score=0.9),
            modeltel.log_prediction({"years": features["years"] + 1}, score(features) + 1000.0),
        ]
        return {"result": "custom shape", "ids": ids}

    @app.post("/predict/score")
    async def predict_score(body: dict[str, Any]) -> dict[str, Any]:
        return {"out": [{"y": score(row["inputs"])} for row in body["rows"]]}

    @app.post("/classify")
    async def classify(features: dict[str, Any]) -> dict[str, Any]:
        return {"label": "high" if float(features.get("years", 0)) > 5 else "low", "proba": 0.75}

    return app
