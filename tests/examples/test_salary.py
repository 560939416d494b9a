"""The salary example: model, FastAPI app and load generator against a real server."""

from __future__ import annotations

import os

# No exporters in tests: set before anything creates the modeltel runtime (at app import).
os.environ["OTEL_TRACES_EXPORTER"] = "none"
os.environ["OTEL_METRICS_EXPORTER"] = "none"
os.environ["OTEL_LOGS_EXPORTER"] = "none"

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from examples.salary import loadgen
from examples.salary.model import (
    BASELINE,
    LOCATIONS,
    LinearRegressionService,
    design_matrix,
    generate,
)
from tests.otlp_sink import free_port, wait_until


def rmse(service: LinearRegressionService, rows: list[dict], truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(service.predict(rows)) - truth) ** 2)))


@pytest.fixture(scope="module")
def service() -> LinearRegressionService:
    return LinearRegressionService()


@pytest.fixture(scope="module")
def app_module() -> ModuleType:
    from examples.salary import app

    return app


@pytest.fixture(scope="module")
def client(app_module: ModuleType) -> Iterator[TestClient]:
    with TestClient(app_module.app) as test_client:
        yield test_client


# --- model -------------------------------------------------------------------------


def test_model_recovers_the_generating_coefficients(service: LinearRegressionService) -> None:
    coefficients = service.coefficients
    assert coefficients[1] == pytest.approx(BASELINE.per_year, rel=0.05)
    assert coefficients[2] == pytest.approx(BASELINE.per_hour_over_40, rel=0.15)
    location = coefficients[-(len(LOCATIONS) - 1) :]
    expected = [BASELINE.premiums["location"][name] for name in LOCATIONS[1:]]
    np.testing.assert_allclose(location, expected, atol=1_000)


def test_model_is_accurate_on_baseline_data_and_wrong_after_concept_drift(
    service: LinearRegressionService,
) -> None:
    rows, truth = generate(2_000, np.random.default_rng(7))
    baseline = rmse(service, rows, truth)
    assert baseline < 8_000

    rows, truth = generate(2_000, np.random.default_rng(7), shift=10.0)
    assert rmse(service, rows, truth) < 8_000  # data drift alone: the relationship holds

    rows, truth = generate(2_000, np.random.default_rng(7), concept_drift=True)
    assert rmse(service, rows, truth) > 2 * baseline


def test_generate_ranges_and_shift() -> None:
    rows, truth = generate(1_000, np.random.default_rng(3))
    years = np.array([row["years_experience"] for row in rows])
    hours = np.array([row["hours_per_week"] for row in rows])
    assert years.min() >= 0 and years.max() <= 40
    assert hours.min() >= 20 and hours.max() <= 60
    assert all(isinstance(row["hours_per_week"], int) for row in rows)
    assert 15_000 < truth.mean() < 200_000

    shifted, _ = generate(1_000, np.random.default_rng(3), shift=10.0)
    shifted_years = np.array([row["years_experience"] for row in shifted])
    assert shifted_years.mean() == pytest.approx(years.mean() + 10, abs=1.0)
    assert shifted_years.max() <= 50


def test_artifact_version_is_a_stable_content_hash(service: LinearRegressionService) -> None:
    assert re.fullmatch(r"[0-9a-f]{12}", service.artifact_version)
    assert LinearRegressionService().artifact_version == service.artifact_version
    assert LinearRegressionService(seed=1).artifact_version != service.artifact_version


def test_predict_rejects_invalid_rows(service: LinearRegressionService) -> None:
    rows, _ = generate(3, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"unknown role 'ceo'.*analyst"):
        service.predict([*rows, {**rows[0], "role": "ceo"}])
    with pytest.raises(ValueError, match="missing feature"):
        service.predict([{k: v for k, v in rows[0].items() if k != "location"}])
    with pytest.raises(ValueError, match="must be a number"):
        service.predict([{**rows[0], "hours_per_week": "forty"}])
    assert service.predict([]) == []
    assert design_matrix(rows).shape == (3, 12)


# --- app ---------------------------------------------------------------------------


def test_predict_endpoint(client: TestClient, app_module: ModuleType) -> None:
    row = {
        "years_experience": 5.0,
        "education": "master",
        "role": "engineer",
        "location": "berlin",
        "hours_per_week": 40,
    }
    response = client.post("/predict", json=row)
    assert response.status_code == 200
    body = response.json()
    version = app_module.service.artifact_version
    assert isinstance(body["prediction"], float)
    assert body["prediction"] == pytest.approx(app_module.service.predict([row])[0])
    assert body["model_version"] == version
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Prediction-ID"])
    assert response.headers["X-Model-Version"] == version


def test_batch_endpoint(client: TestClient) -> None:
    rows, _ = generate(5, np.random.default_rng(1))
    response = client.post("/predict/batch", json=rows)
    assert response.status_code == 200
    body = response.json()
    assert len(body) == 5
    assert all(isinstance(item["prediction"], float) for item in body)
    assert response.headers["X-Prediction-ID"]


@pytest.mark.parametrize(
    "change",
    [
        {"role": "ceo"},
        {"years_experience": -1},
        {"years_experience": 51},
        {"hours_per_week": 80},
        {"unexpected": 1},
    ],
)
def test_invalid_input_is_422(client: TestClient, change: dict) -> None:
    row, _ = generate(1, np.random.default_rng(2))
    assert client.post("/predict", json={**row[0], **change}).status_code == 422


def test_missing_field_is_422(client: TestClient) -> None:
    row, _ = generate(1, np.random.default_rng(2))
    del row[0]["education"]
    assert client.post("/predict", json=row[0]).status_code == 422
    assert client.post("/predict/batch", json=[row[0]]).status_code == 422


def test_health(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# --- load generator ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server_url(app_module: ModuleType) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app_module.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 10, "the example server to start")
    assert thread.is_alive(), "the server thread ended before starting"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_run_against_a_real_server(server_url: str) -> None:
    results: list[loadgen.RequestResult] = []
    rate, duration = 50.0, 2.0
    stats = loadgen.run(
        server_url,
        rate=rate,
        duration=duration,
        drift_at=1.0,
        label_delay=0.2,
        seed=1,
        on_result=results.append,
    )
    assert abs(stats.sent - rate * duration) <= 0.3 * rate * duration
    assert stats.ok == stats.sent and stats.errors == 0
    assert stats.labels_sent == stats.ok
    assert len(results) == stats.sent
    assert all(result.status == 200 and result.prediction_id for result in results)
    phases = Counter(result.phase for result in results)
    assert set(phases) == {"baseline", "data_drift"}
    assert stats.phases == dict(phases)
    assert 0 < stats.p50 <= stats.p95 <= stats.p99


def test_run_counts_errors_without_crashing() -> None:
    stats = loadgen.run(f"http://127.0.0.1:{free_port()}", rate=20, duration=0.3, label_delay=0)
    assert stats.sent > 0
    assert stats.errors == stats.sent and stats.ok == 0 and stats.labels_sent == 0


def test_run_stops_early_and_flushes_labels(server_url: str) -> None:
    stop = threading.Event()
    seen: list[loadgen.RequestResult] = []

    def on_result(result: loadgen.RequestResult) -> None:
        seen.append(result)
        if len(seen) == 5:
            stop.set()

    began = time.monotonic()
    stats = loadgen.run(server_url, rate=50, duration=30, label_delay=60, stop=stop, on_result=on_result)
    assert time.monotonic() - began < 10
    assert stats.sent == 5
    assert stats.labels_sent == stats.ok == 5


def test_phase_at() -> None:
    assert loadgen.phase_at(0.5, 1.0, 2.0) == "baseline"
    assert loadgen.phase_at(1.5, 1.0, 2.0) == "data_drift"
    assert loadgen.phase_at(2.5, 1.0, 2.0) == "concept_drift"
    assert loadgen.phase_at(2.5, None, None) == "baseline"
