"""End to end with real components: the instrumented salary app → ``modeltel collect`` → Prometheus.

Everything runs as it would in production, each in its own process: the collector
(``modeltel collect`` with a YAML config on free ports), the example app served by
uvicorn and exporting OTLP/gRPC to the collector, the load generator (predictions over
HTTP, then each true salary as an ``ml.label`` event over OTLP), and Debian's
``prometheus`` scraping the collector's ``/metrics`` every second.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from examples.salary.model import FEATURES
from tests.conftest import ROOT, AppProcess, telemetry_env
from tests.daemons import Collector, Daemon, Prometheus, start_collector, start_prometheus
from tests.otlp_sink import wait_until

WINDOW_S = 3
"""Drift and performance window (``--window``)."""
WARMUP = 300
"""Predictions forming the drift reference: 5 s of load at RATE."""
RATE, DURATION, DRIFT_AT, LABEL_DELAY = 60, 18, 9, 0.5
"""Load: 5 s of warmup, 4 s of baseline (at least one reported baseline window), 9 s of drift."""
SHIFTED = "years_experience"
MARGIN_NS = 5_000_000
"""Slack around a request's client-side [sent, answered] interval, which holds its prediction time."""


def _sample(text: str, metric: str, **labels: str) -> float | None:
    """The value of the first ``metric`` line of an exposition carrying all ``labels``."""
    for match in re.finditer(rf"^{metric}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE):
        if all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            return float(match.group(2))
    return None


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
    with contextlib.ExitStack() as cleanup:
        collector = start_collector(
            tmp_path / "collector",
            processors={"drift": {"warmup": WARMUP, "min_samples": 50}, "performance": {}},
            window_s=WINDOW_S,
        )
        cleanup.callback(collector.daemon.stop)
        prometheus = start_prometheus(tmp_path / "prometheus", targets=[collector.metrics])
        cleanup.callback(prometheus.daemon.stop)
        app = AppProcess("examples.salary.app:app", telemetry_env(collector.otlp_grpc), factory=False)
        cleanup.callback(app.stop)
        record_file = tmp_path / "requests.jsonl"
        loadgen = Daemon(
            "loadgen",
            [sys.executable, "-m", "examples.salary.loadgen", "--url", app.url, "--rate", str(RATE),
             "--duration", str(DURATION), "--drift-at", str(DRIFT_AT), "--label-delay", str(LABEL_DELAY),
             "--record", str(record_file)],
            tmp_path / "loadgen.log",
            env=telemetry_env(collector.otlp_grpc, OTEL_SERVICE_NAME="salary-labeller"),
            cwd=ROOT,
        )  # fmt: skip
        cleanup.callback(loadgen.stop)
        try:
            _check(collector, prometheus, loadgen, record_file)
        except BaseException:
            for daemon in (collector.daemon, prometheus.daemon, loadgen):  # shown by pytest with the failure
                print(f"--- {daemon.name}.log (last 40 lines)", daemon.tail(), sep="\n")
            raise


def _check(collector: Collector, prometheus: Prometheus, loadgen: Daemon, record_file: Path) -> None:
    """The assertions of :func:`test_app_to_collector_to_prometheus`, once everything runs."""
    # While the load runs: every drift report of the shifted feature, in order.
    reports: list[tuple[float, float]] = []

    def load_done() -> bool:
        text = collector.scrape()
        psi = _sample(text, "ml_drift_psi", ml_feature_name=SHIFTED)
        detected = _sample(text, "ml_drift_detected", ml_feature_name=SHIFTED)
        if psi is not None and detected is not None and (not reports or reports[-1] != (psi, detected)):
            reports.append((psi, detected))
        return not loadgen.running()

    wait_until(load_done, DURATION + 30, "the load generator to finish")
    assert loadgen.process.returncode == 0, loadgen.tail()
    records = [json.loads(line) for line in record_file.read_text().splitlines()]
    answered = [r for r in records if 200 <= r["status"] < 300 and r["prediction_id"]]
    assert len(answered) == len(records) >= RATE * DURATION * 0.8, "the app answered every request"

    # Every label joined, then the RMSE of the latest window (read after the count).
    joined = wait_until(
        lambda: (
            _sample(collector.scrape(), "ml_labels_joined_total", ml_model_name="salary") == len(answered)
        ),
        30,
        f"{len(answered)} labels joined",
    )
    assert joined
    text = collector.scrape()
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
        text = collector.scrape()
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
            before = _sample(collector.scrape(), metric, **labels)
            result = prometheus.query(promql)
            after = _sample(collector.scrape(), metric, **labels)
            return (
                len(result) == 1
                and before is not None
                and before == after == float(result[0]["value"][1])
                and result[0]["metric"]["job"] == "modeltel"
            )

        wait_until(same_in_prometheus, 20, f"prometheus to return {promql} as the collector shows it")
    (series,) = prometheus.query('ml_performance_rmse{ml_model_name="salary"}')
    assert float(series["value"][1]) == rmse
