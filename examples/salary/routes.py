"""The salary service's HTTP API: request and response models, and the routes."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from examples.salary.model import YEARS_CLIP, LinearRegressionService


class SalaryFeatures(BaseModel):
    """One person to predict a salary for."""

    model_config = ConfigDict(extra="forbid")

    # Trained on 0-40 years; up to 50 is accepted so drifted traffic is served (and monitored).
    years_experience: float = Field(ge=YEARS_CLIP[0], le=YEARS_CLIP[1])
    education: Literal["high_school", "bachelor", "master", "phd"]
    role: Literal["analyst", "engineer", "scientist", "manager"]
    location: Literal["berlin", "london", "new_york", "remote"]
    hours_per_week: int = Field(ge=20, le=60)


class SalaryPrediction(BaseModel):
    prediction: float
    model_version: str


class BatchItem(BaseModel):
    prediction: float


def salary_router(service: LinearRegressionService) -> APIRouter:
    """``POST /predict``, ``POST /predict/batch`` and ``GET /health`` around ``service``."""
    router = APIRouter()

    @router.post("/predict")
    async def predict(features: SalaryFeatures) -> SalaryPrediction:
        (prediction,) = service.predict([features.model_dump()])
        return SalaryPrediction(prediction=prediction, model_version=service.artifact_version)

    @router.post("/predict/batch")
    async def predict_batch(instances: list[SalaryFeatures]) -> list[BatchItem]:
        predictions = service.predict([features.model_dump() for features in instances])
        return [BatchItem(prediction=prediction) for prediction in predictions]

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return router
