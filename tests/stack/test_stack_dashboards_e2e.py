"""Every dashboard query returns data from a Prometheus that scrapes only the modeltel collector.

Real components, each in its own process, as in embedded mode: ``modeltel collect`` (drift,
performance and service processors, short windows), the example salary app exporting OTLP to
it, the load generator with injected data drift and delayed labels, and Debian's
``prometheus`` scraping the collector every second. Once the load has run, every panel target
and every template-variable query of the four dashboards (variables at "All") must return
at least one series, and the drift table must list the shifted feature.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from tests.conftest import ROOT, AppProcess, telemetry_env
from tests.otlp_sink import free_port, wait_until
from tests.stack.stack_helpers import PrometheusProcess, dashboard_queries

RATE, DURATION, DRIFT_AT, LABEL_DELAY = 50, 16, 7, 0.3
WINDOW = "2s"
SHIFTED = "years_experience"


def _collector_config(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
    config = {
        "receivers": {"otlp": {"protocols": {
            "grpc": {"endpoint": f"127.0.0.1:{ports['grpc']}"},
            "http": {"endpoint": f"127.0.0.1:{ports['http']}"},
        }}},
        "processors": {"drift": {"warmup": 150, "min_samples": 30}, "performance": {}, "service": {}},
        "exporters": {"prometheus": {"endpoint": f"127.0.0.1:{ports['metrics']}"}},
        "models": {"salary": {"task": "regression",
                              "acceptance": {"rmse": {"max": 7000}, "r2": {"min": 0.6}}}},
    }  # fmt: skip
    path = tmp_path / "modeltel.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, ports


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_every_dashboard_query_returns_data(tmp_path: Path) -> None:
    config, ports = _collector_config(tmp_path)
    log = (tmp_path / "collector.log").open("wb")
    collector = subprocess.Popen(
        [sys.executable, "-m", "modeltel_collector.cli", "collect", "--config", str(config),
         "--data-dir", str(tmp_path / "data"), "--window", WINDOW],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    prometheus: PrometheusProcess | None = None
    app: AppProcess | None = None
    loadgen: subprocess.Popen[bytes] | None = None
    try:

        def collector_up() -> bool:
            assert collector.poll() is None, (tmp_path / "collector.log").read_text()
            try:
                return (
                    "target_info" in httpx.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=2).text
                )
            except httpx.TransportError:
                return False

        wait_until(collector_up, 30, "the collector's /metrics")
        prometheus = PrometheusProcess(tmp_path / "prometheus", [f"127.0.0.1:{ports['metrics']}"])
        endpoint = f"http://127.0.0.1:{ports['grpc']}"
        app = AppProcess("examples.salary.app:app", telemetry_env(endpoint), factory=False)
        generator = loadgen = subprocess.Popen(
            [sys.executable, "-m", "examples.salary.loadgen", "--url", app.url, "--rate", str(RATE),
             "--duration", str(DURATION), "--drift-at", str(DRIFT_AT), "--label-delay", str(LABEL_DELAY)],
            env=telemetry_env(endpoint, OTEL_SERVICE_NAME="salary-labeller"), cwd=ROOT,
        )  # fmt: skip
        wait_until(lambda: generator.poll() is not None, DURATION + 60, "the load generator to finish")
        assert generator.returncode == 0

        queries = dashboard_queries()
        server = prometheus

        def without_data() -> list[str]:
            return [f"{q.dashboard} {q.where}: {q.promql}" for q in queries if not server.result(q.promql)]

        try:
            wait_until(lambda: not without_data(), 40, "every dashboard query to return data")
        except AssertionError:
            raise AssertionError("queries without data:\n" + "\n".join(without_data())) from None

        drifting = server.result('max by (ml_feature_name) (ml_drift_detected{ml_model_name="salary"}) == 1')
        assert SHIFTED in {series["metric"]["ml_feature_name"] for series in drifting}
        (route,) = server.result(
            "sum by (service_name, http_route) (rate(http_server_request_duration_seconds_count[1m]))"
        )
        assert route["metric"] == {"service_name": "salary-api", "http_route": "/predict"}
    except BaseException:
        print("--- collector.log", *(tmp_path / "collector.log").read_text().splitlines()[-30:], sep="\n")
        raise
    finally:
        if loadgen is not None:
            _stop(loadgen)
        if app is not None:
            app.stop()
        if prometheus is not None:
            prometheus.stop()
        _stop(collector)
        log.close()
