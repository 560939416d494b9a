"""End to end with real components: the instrumented salary app → ``modeltel collect`` → Prometheus.

Everything runs as it would in production, each in its own process: the collector
(``modeltel collect`` with a YAML config on free ports), the example app served by
uvicorn and exporting OTLP/gRPC to the collector, the load generator (predictions over
HTTP, then each true salary as an ``ml.label`` event over OTLP), and Debian's
``prometheus`` scraping the collector's ``/metrics`` every second.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from examples.salary.model import FEATURES
from tests.conftest import ROOT, AppProcess, telemetry_env
from tests.otlp_sink import free_port, wait_until

WINDOW_S = 3
"""Drift and performance window (``--window``)."""
WARMUP = 300
"""Predictions forming the drift reference: 5 s of load at RATE."""
RATE, DURATION, DRIFT_AT, LABEL_DELAY = 60, 18, 9, 0.5
"""Load: 5 s of warmup, 4 s of baseline (at least one reported baseline window), 9 s of drift."""
SHIFTED = "years_experience"
MARGIN_NS = 5_000_000
"""Slack around a request's client-side [sent, answered] interval, which holds its prediction time."""
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def _config(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
    config = {
        "receivers": {"otlp": {"protocols": {
            "grpc": {"endpoint": f"127.0.0.1:{ports['grpc']}"},
            "http": {"endpoint": f"127.0.0.1:{ports['http']}"},
        }}},
        "processors": {"drift": {"warmup": WARMUP, "min_samples": 50}, "performance": {}},
        "exporters": {"prometheus": {"endpoint": f"127.0.0.1:{ports['metrics']}"}},
    }  # fmt: skip
    path = tmp_path / "modeltel.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, ports


def _sample(text: str, metric: str, **labels: str) -> float | None:
    """The value of the first ``metric`` line of an exposition carrying all ``labels``."""
    for match in re.finditer(rf"^{metric}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE):
        if all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            return float(match.group(2))
    return None


def _scrape(port: int) -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.TransportError:
        return ""


def _query(port: int, promql: str) -> list[dict[str, Any]]:
    """An instant query through Prometheus's HTTP API; [] while it has nothing (or is not up)."""
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": promql}, timeout=5)
    except httpx.TransportError:
        return []
    body = response.json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def _stop(process: subprocess.Popen[Any]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _rmse_candidates(records: list[dict[str, Any]]) -> list[tuple[float, int]]:
    """numpy's RMSE (and pair count) over the pairs of the latest window, for each possible assignment.

    The collector windows a pair by its prediction's time: the SDK's timestamp taken while
    the app handles the request, which lies in the request's client-side [sent, answered]
    interval (same machine, same clock). Requests are sequential, so the last one holds
    the latest prediction. A request whose interval crosses the boundary of the latest
    window (at most one or two at this rate) could be in either window, so each
    assignment of those gives one candidate; the collector's RMSE must equal one of them.
    """
    width = WINDOW_S * 1_000_000_000
    bounds = []
    for record in records:
        sent = int(record["timestamp"] * 1e9)
        answered = int((record["timestamp"] + record["latency_s"]) * 1e9)
        bounds.append(((sent - MARGIN_NS) // width, (answered + MARGIN_NS) // width))
    earliest_latest = bounds[-1][0]
    ambiguous = [i for i, (first, last) in enumerate(bounds) if first != last and last >= earliest_latest]
    assert len(ambiguous) <= 4, "requests this slow make the windows of their pairs unknowable"
    errors = np.array([r["prediction"] - r["label"] for r in records])
    candidates = []
    for choice in itertools.product(*([bounds[i][0], bounds[i][1]] for i in ambiguous)):
        windows = np.array([first for first, _ in bounds])
        windows[ambiguous] = choice
        latest = windows == windows.max()
        candidates.append((float(np.sqrt(np.mean(np.square(errors[latest])))), int(latest.sum())))
    return candidates


def test_app_to_collector_to_prometheus(tmp_path: Path) -> None:
    """Drift for the shifted feature only, RMSE equal to numpy's, the same values in Prometheus.

    The load generator records every request (prediction id, prediction, true salary,
    client-side timing) with ``--record``. Once it has ended and sent every label, the
    collector must have joined exactly the labels sent; its ``ml_performance_rmse`` is
    then that of the latest window (by prediction time) holding joined pairs, which no
    later label can change, and equals numpy's RMSE over that window's pairs (see
    :func:`_rmse_candidates` for the pairs' windows). Drift: the first drift report is of
    a baseline window (no drift for ``years_experience``), the reports after the shift
    flag ``years_experience`` and none of the other features, with a higher PSI.
    Prometheus scrapes the collector every second; its instant queries must return the
    values the collector shows (read before and after the query, so they are settled).
    """
    if not Path(PROMETHEUS).exists():
        pytest.fail("prometheus is not installed (apt-get install prometheus; .ci/run does it)")
    config, ports = _config(tmp_path)
    collector_log = (tmp_path / "collector.log").open("wb")
    collector = subprocess.Popen(
        [sys.executable, "-m", "modeltel_collector.cli", "collect", "--config", str(config),
         "--data-dir", str(tmp_path / "data"), "--window", f"{WINDOW_S}s"],
        cwd=ROOT, stdout=collector_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    prometheus_port = free_port()
    prometheus_config = tmp_path / "prometheus.yml"
    prometheus_config.write_text(
        yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "modeltel",
                "static_configs": [{"targets": [f"127.0.0.1:{ports['metrics']}"]}],
            }],
        })
    )  # fmt: skip
    prometheus_log = (tmp_path / "prometheus.log").open("wb")
    prometheus = subprocess.Popen(
        [PROMETHEUS, f"--config.file={prometheus_config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}"],
        stdout=prometheus_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    app: AppProcess | None = None
    loadgen: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: "target_info" in _scrape(ports["metrics"]), 30, "the collector's /metrics")
        env = telemetry_env(f"http://127.0.0.1:{ports['grpc']}")
        app = AppProcess("examples.salary.app:app", env, factory=False)

        def prometheus_ready() -> bool:
            assert prometheus.poll() is None, "prometheus exited; see prometheus.log"
            try:
                return httpx.get(f"http://127.0.0.1:{prometheus_port}/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(prometheus_ready, 30, "prometheus to be ready")

        record_file = tmp_path / "requests.jsonl"
        loadgen = subprocess.Popen(
            [sys.executable, "-m", "examples.salary.loadgen", "--url", app.url, "--rate", str(RATE),
             "--duration", str(DURATION), "--drift-at", str(DRIFT_AT), "--label-delay", str(LABEL_DELAY),
             "--record", str(record_file)],
            env=telemetry_env(f"http://127.0.0.1:{ports['grpc']}", OTEL_SERVICE_NAME="salary-labeller"),
            cwd=ROOT,
        )  # fmt: skip

        # While the load runs: every drift report of the shifted feature, in order.
        reports: list[tuple[float, float]] = []

        def load_done() -> bool:
            text = _scrape(ports["metrics"])
            psi = _sample(text, "ml_drift_psi", ml_feature_name=SHIFTED)
            detected = _sample(text, "ml_drift_detected", ml_feature_name=SHIFTED)
            if psi is not None and detected is not None and (not reports or reports[-1] != (psi, detected)):
                reports.append((psi, detected))
            assert loadgen is not None
            return loadgen.poll() is not None

        wait_until(load_done, DURATION + 30, "the load generator to finish")
        assert loadgen.returncode == 0
        records = [json.loads(line) for line in record_file.read_text().splitlines()]
        answered = [r for r in records if 200 <= r["status"] < 300 and r["prediction_id"]]
        assert len(answered) == len(records) >= RATE * DURATION * 0.8, "the app answered every request"

        # Every label joined, then the RMSE of the latest window (read after the count).
        joined = wait_until(
            lambda: (
                _sample(_scrape(ports["metrics"]), "ml_labels_joined_total", ml_model_name="salary")
                == len(answered)
            ),
            30,
            f"{len(answered)} labels joined",
        )
        assert joined
        text = _scrape(ports["metrics"])
        rmse = _sample(text, "ml_performance_rmse", ml_model_name="salary")
        assert rmse is not None
        candidates = _rmse_candidates(answered)
        assert any(math.isclose(rmse, expected, rel_tol=1e-6) for expected, _ in candidates), (
            rmse,
            candidates,
        )
        assert _sample(text, "ml_predictions_total", ml_model_name="salary") == len(answered)

        # Drift: the shifted feature flagged, no other, in one scrape.
        def drifted() -> str | None:
            text = _scrape(ports["metrics"])
            return text if _sample(text, "ml_drift_detected", ml_feature_name=SHIFTED) == 1.0 else None

        text = wait_until(drifted, 30, f"ml_drift_detected for {SHIFTED}")
        for feature in FEATURES:
            if feature != SHIFTED:
                assert _sample(text, "ml_drift_detected", ml_feature_name=feature) == 0.0, feature
        final_psi = _sample(text, "ml_drift_psi", ml_feature_name=SHIFTED)
        assert final_psi is not None and final_psi > 0.2
        assert reports, "drift reports while the load ran"
        first_psi, first_detected = reports[0]
        assert first_detected == 0.0, f"the first (baseline) window was flagged: {reports}"
        assert first_psi < final_psi, reports

        # Prometheus scraped the same values.
        for metric, labels in [("ml_drift_psi", {"ml_feature_name": SHIFTED}),
                               ("ml_performance_rmse", {"ml_model_name": "salary"})]:  # fmt: skip
            promql = metric + "{" + ",".join(f'{key}="{value}"' for key, value in labels.items()) + "}"

            def same_in_prometheus(promql: str = promql, metric: str = metric, labels: Any = labels) -> bool:
                before = _sample(_scrape(ports["metrics"]), metric, **labels)
                result = _query(prometheus_port, promql)
                after = _sample(_scrape(ports["metrics"]), metric, **labels)
                return (
                    len(result) == 1
                    and before is not None
                    and before == after == float(result[0]["value"][1])
                    and result[0]["metric"]["job"] == "modeltel"
                )

            wait_until(same_in_prometheus, 20, f"prometheus to return {promql} as the collector shows it")
        (series,) = _query(prometheus_port, 'ml_performance_rmse{ml_model_name="salary"}')
        assert float(series["value"][1]) == rmse
    except BaseException:
        for log in ("collector.log", "prometheus.log"):  # shown by pytest with the failure
            print(f"--- {log} (last 40 lines)", *(tmp_path / log).read_text().splitlines()[-40:], sep="\n")
        raise
    finally:
        if loadgen is not None and loadgen.poll() is None:
            loadgen.kill()
            loadgen.wait()
        if app is not None:
            app.stop()
        _stop(prometheus)
        _stop(collector)
        collector_log.close()
        prometheus_log.close()
