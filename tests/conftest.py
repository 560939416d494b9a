"""Shared fixtures: real OTLP sinks and the app under test served by uvicorn in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.otlp_sink import GrpcSink, HttpSink, free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def grpc_sink() -> Iterator[GrpcSink]:
    sink = GrpcSink()
    yield sink
    sink.stop()


@pytest.fixture
def http_sink() -> Iterator[HttpSink]:
    sink = HttpSink()
    yield sink
    sink.stop()


def telemetry_env(endpoint: str, protocol: str = "grpc", **extra: str) -> dict[str, str]:
    """Environment for a process exporting to ``endpoint`` quickly (short batch delays)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_SERVICE_NAME="salary-api",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=test,service.version=9.9.9",
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_BLRP_SCHEDULE_DELAY="100",
        OTEL_METRIC_EXPORT_INTERVAL="300",
        OTEL_EXPORTER_OTLP_TIMEOUT="2",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


class AppProcess:
    """``uvicorn`` serving an app factory in a child process, as in production."""

    def __init__(
        self, target: str, env: dict[str, str], python: str = sys.executable, factory: bool = True
    ) -> None:
        """``target`` is ``module:attribute``: an app factory, or the app itself when not ``factory``."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                python,
                "-m",
                "uvicorn",
                target,
                *(["--factory"] if factory else []),
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=ROOT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=10)
        wait_until(self._ready, 30, f"{target} to serve")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the app exited with code {self.process.returncode}")
        try:
            return self.client.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> int:
        """Stop gracefully (SIGTERM), which flushes telemetry at exit; return the exit code."""
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def start_app() -> Iterator[Callable[..., AppProcess]]:
    started: list[AppProcess] = []

    def start(
        env: dict[str, str],
        target: str = "tests.sdk.app_under_test:create_app",
        python: str = sys.executable,
        factory: bool = True,
    ) -> AppProcess:
        app = AppProcess(target, env, python, factory)
        started.append(app)
        return app

    yield start
    for app in started:
        app.stop()
