"""The oldest FastAPI modeltel supports: still one server span per request, events flowing.

FastAPI releases from 0.16x carry native OpenTelemetry telemetry that steps aside when
the contrib middleware is installed; the pinned version is covered by
``test_instrument.py``. This test builds a virtualenv with the oldest supported
release (cached under ``.cache/``) and serves the same app from it.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from modeltel import semconv
from tests.conftest import ROOT, telemetry_env
from tests.otlp_sink import wait_until

OLDEST_FASTAPI = "0.115.0"


@pytest.fixture(scope="session")
def oldest_fastapi_python() -> str:
    env_dir = ROOT / ".cache" / f"venv-fastapi-{OLDEST_FASTAPI}"
    python = env_dir / "bin" / "python"
    marker = env_dir / ".installed"
    wanted = f"{OLDEST_FASTAPI} {hashlib.sha256((ROOT / 'pyproject.toml').read_bytes()).hexdigest()}"
    if not marker.exists() or marker.read_text() != wanted:
        venv.create(env_dir, with_pip=True, clear=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "-e",
                str(ROOT),
                f"fastapi=={OLDEST_FASTAPI}",
                "uvicorn",
            ],
            check=True,
            timeout=600,
        )
        marker.write_text(wanted)
    version = subprocess.run(
        [str(python), "-c", "import fastapi; print(fastapi.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert version == OLDEST_FASTAPI
    return str(python)


def test_one_server_span_per_request_on_the_oldest_fastapi(oldest_fastapi_python, grpc_sink, start_app):
    app = start_app(telemetry_env(grpc_sink.endpoint), python=oldest_fastapi_python)

    responses = [app.client.post("/predict", json={"years": i}) for i in range(3)]

    ids = {r.headers[semconv.PREDICTION_ID_HEADER] for r in responses}
    events = wait_until(
        lambda: (
            len(grpc_sink.consumer.events(semconv.PREDICTION_EVENT)) == 3
            and grpc_sink.consumer.events(semconv.PREDICTION_EVENT)
        ),
        what="three events",
    )
    assert {e.attributes[semconv.PREDICTION_ID] for e in events} == ids
    traces = {e.trace_id for e in events}
    app.stop()  # flushes every span
    server_spans = [s for s in grpc_sink.consumer.spans() if s.kind == 2]
    assert sorted(s.trace_id.hex() for s in server_spans) == sorted(traces), "one server span per request"
    assert Path(sys.executable).resolve() != Path(oldest_fastapi_python).resolve()
