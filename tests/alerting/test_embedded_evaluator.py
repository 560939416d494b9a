"""The embedded evaluator: conditions computed as their PromQL would, thresholds, ``for``, notifications.

Snapshots are either built by hand (exact values at chosen times) or read from a real OTel
``MeterProvider`` through :class:`RegistrySource`, the reader the collector adds, so the
Prometheus names and labels the policies use are those the exporter gives.
"""

from __future__ import annotations

import copy
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from modeltel_collector.alerting.embedded import EmbeddedAlerting, Notifier, incident_of
from modeltel_collector.alerting.evaluator import (
    Evaluation,
    Evaluator,
    RegistrySource,
    Sample,
    extrapolated_rate,
    fingerprint,
    histogram_quantile,
)
from modeltel_collector.alerting.incidents import render_incident
from modeltel_collector.alerting.policy import AlertPolicies, load_policies, parse_policies
from modeltel_collector.collector import Collector
from modeltel_collector.config import Alerting, ConfigError, parse_config
from tests.conftest import ROOT

POLICIES = ROOT / "collector-config" / "alerts.yaml"
RMSE = "ml_performance_rmse"

BASE: dict[str, Any] = {
    "grafana_url": "http://grafana:3000",
    "runbook_url": "https://example.com/runbook.md",
    "evaluation_interval": "30s",
    "dashboards": {"modeltel-model-quality": "Model quality"},
    "notifications": {
        "slack_api_url_file": "/nonexistent/slack",
        "pagerduty_routing_key_file": "/nonexistent/pagerduty",
        "webhook_url": "http://127.0.0.1:9/alerts",
    },
    "teams": {"ml-platform": {"slack_channel": "#ml"}, "salary-ml": {"slack_channel": "#salary"}},
    "models": {"salary": {"owner": "salary-ml"}},
    "policies": [],
}


def _policy(**changes: Any) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "alert": "ModelRmseHigh",
        "group": "model-quality",
        "summary": "RMSE of model {ml_model_name} is {value}, above {threshold}",
        "description": "{severity}: above {threshold}",
        "condition": {"metric": RMSE, "by": ["ml_model_name"]},
        "static": {"operator": ">", "warning": 6000, "critical": 7000},
        "for": "60s",
        "owner": "ml-platform",
        "dashboard": {"uid": "modeltel-model-quality", "panel": 1, "variables": {"model": "ml_model_name"}},
    }
    policy.update(changes)
    return policy


def _policies(*policies: dict[str, Any]) -> AlertPolicies:
    return parse_policies(dict(copy.deepcopy(BASE), policies=list(policies)))


def _rmse(value: float, model: str = "salary", version: str = "v1") -> Sample:
    return Sample(RMSE, {"ml_model_name": model, "ml_model_version": version, "otel_scope_name": "x"}, value)


def _states(evaluation: Evaluation) -> dict[str, str]:
    return {alert.severity: alert.state for alert in evaluation.active}


# --- thresholds and for ---------------------------------------------------------------------------


def test_a_static_threshold_fires_after_its_for_and_resolves_when_it_clears() -> None:
    config = _policies(_policy())
    evaluator = Evaluator(config)
    first = evaluator.evaluate([_rmse(7500), _rmse(100, model="other")], now=1000.0)
    assert _states(first) == {"warning": "pending", "critical": "pending"}
    assert first.fired == [] and first.resolved == []
    assert _states(evaluator.evaluate([_rmse(7500)], now=1030.0)) == {
        "warning": "pending",
        "critical": "pending",
    }

    fired = evaluator.evaluate([_rmse(7400)], now=1060.0)  # for (60 s) has passed
    assert {alert.severity for alert in fired.fired} == {"warning", "critical"}
    critical = next(alert for alert in fired.fired if alert.severity == "critical")
    assert dict(critical.labels) == {
        "alertname": "ModelRmseHigh",
        "ml_model_name": "salary",
        "severity": "critical",
        "owner": "ml-platform",
    }
    assert critical.active_at == 1000.0 and critical.fired_at == 1060.0 and critical.value == 7400
    assert critical.fingerprint == fingerprint(critical.labels)
    assert dict(critical.annotations) == {
        "summary": "RMSE of model salary is 7.4k, above 7k",
        "description": "critical: above 7k",
        "value": "7400",
        "threshold": "> 7000",
        "runbook_url": "https://example.com/runbook.md#modelrmsehigh",
        "dashboard_url": "http://grafana:3000/d/modeltel-model-quality?viewPanel=1&var-model=salary",
    }
    still = evaluator.evaluate([_rmse(7600)], now=1090.0)
    assert still.fired == [] and _states(still) == {"warning": "firing", "critical": "firing"}

    lower = evaluator.evaluate([_rmse(6500)], now=1120.0)  # below critical, above warning
    assert [(a.severity, a.state, a.resolved_at) for a in lower.resolved] == [
        ("critical", "resolved", 1120.0)
    ]
    assert _states(lower) == {"warning": "firing"}
    cleared = evaluator.evaluate([_rmse(100)], now=1150.0)
    assert [alert.severity for alert in cleared.resolved] == ["warning"]
    assert cleared.active == []


def test_a_pending_alert_that_clears_is_dropped_and_starts_over() -> None:
    evaluator = Evaluator(_policies(_policy(static={"operator": ">", "critical": 7000})))
    evaluator.evaluate([_rmse(8000)], now=0.0)
    cleared = evaluator.evaluate([_rmse(10)], now=30.0)
    assert cleared.active == [] and cleared.resolved == []  # never fired: nothing to resolve
    evaluator.evaluate([_rmse(8000)], now=60.0)
    assert evaluator.evaluate([_rmse(8000)], now=90.0).fired == []
    [alert] = evaluator.evaluate([_rmse(8000)], now=120.0).fired
    assert alert.active_at == 60.0


def test_a_series_that_disappears_resolves_and_embedded_false_is_skipped() -> None:
    skipped = _policy(
        alert="CollectorDown",
        summary="down",
        condition={"metric": "up", "by": []},
        dashboard={"uid": "modeltel-model-quality"},
        embedded=False,
    )
    evaluator = Evaluator(
        _policies(_policy(static={"operator": ">", "critical": 7000}, **{"for": "30s"}), skipped)
    )
    assert [policy.alert for policy in evaluator.policies] == ["ModelRmseHigh"]
    evaluator.evaluate([_rmse(8000), Sample("up", {}, 1.0)], now=0.0)
    assert len(evaluator.evaluate([_rmse(8000)], now=30.0).fired) == 1
    assert len(evaluator.evaluate([], now=60.0).resolved) == 1


# --- aggregations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aggregation", "expected"), [("max", 30.0), ("min", 10.0), ("avg", 20.0), ("sum", 40.0)]
)
def test_gauge_aggregations_by_labels(aggregation: str, expected: float) -> None:
    policy = _policy(
        condition={
            "metric": RMSE,
            "labels": {"ml_model_name": {"=~": "sal.*"}},
            "aggregation": aggregation,
            "by": ["ml_model_name"],
        }
    )
    evaluator = Evaluator(_policies(policy))
    samples = [_rmse(10, version="v1"), _rmse(30, version="v2"), _rmse(1000, model="other")]
    values = evaluator.values(evaluator.policies[0], samples, now=0.0)
    assert values == {(("ml_model_name", "salary"),): pytest.approx(expected)}


def test_rate_is_the_counters_slope_across_a_reset_and_summed_by_labels() -> None:
    policy = _policy(
        condition={
            "metric": "ml_predictions_total",
            "aggregation": "rate",
            "range": "5m",
            "by": ["ml_model_name"],
        }
    )
    evaluator = Evaluator(_policies(policy))
    [rule] = evaluator.policies

    def counters(t: float) -> list[Sample]:
        v1 = 2 * t if t <= 150 else 2 * (t - 150)  # restarted at t = 150
        return [
            Sample("ml_predictions_total", {"ml_model_name": "salary", "ml_model_version": "v1"}, v1),
            Sample("ml_predictions_total", {"ml_model_name": "salary", "ml_model_version": "v2"}, 3 * t),
        ]

    assert evaluator.values(rule, counters(30.0), now=30.0) == {}  # one sample: no rate yet
    for t in range(60, 301, 30):
        values = evaluator.values(rule, counters(float(t)), now=float(t))
    assert values == {(("ml_model_name", "salary"),): pytest.approx(5.0)}


def test_rate_extrapolates_as_prometheus_does() -> None:
    # Two samples 30 s apart in a 5 m range, far from its start: half an interval added each
    # side that is not within 1.1 intervals of the samples; never before the counter's zero.
    assert extrapolated_rate([(270.0, 100.0), (300.0, 130.0)], 300.0, 300.0) == pytest.approx(
        30 * (30 + 15 + 0) / 30 / 300
    )
    assert extrapolated_rate([(270.0, 10.0), (300.0, 40.0)], 300.0, 300.0) == pytest.approx(
        30 * (30 + 10 + 0) / 30 / 300  # the counter was 0 ten seconds before the first sample
    )
    assert extrapolated_rate([(300.0, 1.0)], 300.0, 300.0) is None


def test_histogram_quantile_by_hand() -> None:
    buckets = [(0.1, 60.0), (0.5, 90.0), (1.0, 100.0), (math.inf, 100.0)]
    # rank 95 falls in (0.5, 1.0], which holds observations 90..100: 0.5 + 0.5 * 5/10.
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.75)
    # rank 30 in the first bucket: interpolated from 0.
    assert histogram_quantile(0.3, buckets) == pytest.approx(0.1 * 30 / 60)
    # rank in the +Inf bucket: the highest finite bound.
    assert histogram_quantile(0.99, [(0.1, 10.0), (0.5, 20.0), (math.inf, 40.0)]) == 0.5
    # Non-monotonic counts (a scrape race) are forced monotonic; equal bounds are added up.
    assert histogram_quantile(0.5, [(1.0, 10.0), (2.0, 8.0), (math.inf, 20.0)]) == pytest.approx(1.0)
    assert histogram_quantile(0.5, [(1.0, 5.0), (1.0, 5.0), (2.0, 20.0), (math.inf, 20.0)]) == pytest.approx(
        1.0
    )
    assert math.isnan(histogram_quantile(0.5, [(1.0, 5.0), (2.0, 10.0)]))  # no +Inf bucket
    assert math.isnan(histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]))  # no observations
    assert histogram_quantile(0.5, [(-1.0, 10.0), (math.inf, 10.0)]) == -1.0


def test_quantile_of_a_real_histogram_through_the_collectors_reader() -> None:
    """The LatencyP95High policy of alerts.yaml on an OTel histogram: names, labels and the value."""
    config = load_policies(POLICIES)
    source = RegistrySource()
    provider = MeterProvider(
        metric_readers=[source.reader],
        views=[
            View(
                instrument_name="http.server.request.duration",
                aggregation=ExplicitBucketHistogramAggregation((0.1, 0.5, 1.0)),
            )
        ],
    )
    try:
        duration = provider.get_meter("modeltel").create_histogram("http.server.request.duration", unit="s")
        evaluator = Evaluator(config)
        policy = config.policy("LatencyP95High")

        def serve() -> None:  # the same mix each time: 60 fast, 30 medium, 10 slow; /health all fast
            for value, count in ((0.05, 60), (0.3, 30), (0.7, 10)):
                for _ in range(count):
                    duration.record(value, {"service.name": "salary-api", "http.route": "/predict"})
            for _ in range(100):
                duration.record(0.05, {"service.name": "salary-api", "http.route": "/health"})

        serve()
        assert evaluator.values(policy, source.samples(), now=1000.0) == {}
        serve()
        values = evaluator.values(policy, source.samples(), now=1030.0)
    finally:
        provider.shutdown()
    # Per bucket the increase is the same mix: rank 95 of 100 lies in (0.5, 1] (90 below it).
    assert values == {
        (("http_route", "/predict"), ("service_name", "salary-api")): pytest.approx(0.5 + 0.5 * 5 / 10),
        (("http_route", "/health"), ("service_name", "salary-api")): pytest.approx(0.1 * 95 / 100),
    }


def test_ratio_of_error_rate_as_the_error_rate_policy_says() -> None:
    config = load_policies(POLICIES)
    evaluator = Evaluator(config)
    policy = config.policy("ErrorRateHigh")
    name = "http_server_request_duration_seconds_count"
    route = {"service_name": "salary-api", "http_route": "/predict"}

    def counts(ok: float, failed: float, health: float) -> list[Sample]:
        return [
            Sample(name, {**route, "http_response_status_code": "200"}, ok),
            Sample(name, {**route, "http_response_status_code": "500", "error_type": "500"}, failed),
            Sample(name, {"service_name": "salary-api", "http_route": "/health", "error_type": ""}, health),
        ]

    evaluator.values(policy, counts(0, 0, 0), now=0.0)
    values = evaluator.values(policy, counts(95, 5, 50), now=30.0)
    # /health never failed: its numerator has no series, so no ratio (as in PromQL).
    assert values == {(("http_route", "/predict"), ("service_name", "salary-api")): pytest.approx(0.05)}


# --- adaptive thresholds --------------------------------------------------------------------------


def _adaptive(min_stddev: float, direction: str = "above") -> AlertPolicies:
    adaptive = {
        "direction": direction,
        "window": "10m",
        "warning": 3,
        "min_stddev": min_stddev,
        "min_samples": 10,
    }
    return _policies(_policy(alert="ModelRmseAnomalous", static=None, adaptive=adaptive, **{"for": "30s"}))


def _breaching(evaluation: Evaluation) -> bool:
    return any(alert.name == "ModelRmseAnomalous" for alert in evaluation.active)


def test_an_adaptive_band_of_the_series_own_history() -> None:
    evaluator = Evaluator(_adaptive(min_stddev=0.0))
    history = [100.0 + (i % 3 - 1) for i in range(14)]
    now = 0.0
    for index, value in enumerate(history):
        now += 30
        breach = _breaching(evaluator.evaluate([_rmse(value)], now))
        assert not breach, index
    now += 30
    values = [*history, 130.0][-20:]  # the window holds at most 20 evaluations of 30 s
    mean, stddev = statistics.fmean(values), statistics.pstdev(values)
    assert mean + 3 * stddev < 130  # the hand computation: this is an outlier
    assert _breaching(evaluator.evaluate([_rmse(130.0)], now))
    now += 30
    values = [*values, 200.0][-20:]  # the outlier is part of the history now: it takes more to stay out
    assert statistics.fmean([*values[:-1], 131.0]) + 3 * statistics.pstdev([*values[:-1], 131.0]) > 131
    assert statistics.fmean(values) + 3 * statistics.pstdev(values) < 200
    firing = evaluator.evaluate([_rmse(200.0)], now)
    assert [alert.state for alert in firing.active] == ["firing"]
    assert firing.active[0].annotations["threshold"] == "above mean + 3\u03c3 over 10m"


def test_an_adaptive_band_needs_min_samples_and_respects_min_stddev() -> None:
    young = Evaluator(_adaptive(min_stddev=0.0))
    for i in range(8):
        young.evaluate([_rmse(100.0)], now=30.0 * i)
    assert not _breaching(young.evaluate([_rmse(1e6)], now=240.0))  # 9 samples < min_samples

    flat = [100.0] * 12
    for floor, fires in ((0.0, True), (0.5, False)):
        evaluator = Evaluator(_adaptive(min_stddev=floor))
        for i, value in enumerate(flat):
            evaluator.evaluate([_rmse(value)], now=30.0 * i)
        values = [*flat, 101.0]
        band = 3 * max(statistics.pstdev(values), floor)
        assert (statistics.fmean(values) + band < 101.0) is fires
        assert _breaching(evaluator.evaluate([_rmse(101.0)], now=30.0 * 12)) is fires


def test_below_and_outside_bands_and_bounded_history() -> None:
    for direction, value, fires in (("below", 70.0, True), ("below", 130.0, False), ("outside", 70.0, True)):
        evaluator = Evaluator(_adaptive(min_stddev=0.0, direction=direction))
        for i in range(30):
            evaluator.evaluate([_rmse(100.0 + (i % 2))], now=30.0 * i)
        assert _breaching(evaluator.evaluate([_rmse(value)], now=30.0 * 30)) is fires, direction
        [series] = evaluator.checkpoint()["histories"]["ModelRmseAnomalous"]
        assert len(series[1]) == 20  # 10 minutes of 30 s evaluations, older ones dropped


# --- what is notified -----------------------------------------------------------------------------


def test_one_message_per_alert_while_it_fires_again_after_the_cooldown_and_when_resolved() -> None:
    config = _policies(_policy(static={"operator": ">", "critical": 7000}, **{"for": "30s"}))
    evaluator, notifier = Evaluator(config), Notifier(config, cooldown=3600.0)

    def step(value: float, now: float) -> list[tuple[str, str]]:
        notices = notifier.decide(evaluator.evaluate([_rmse(value)], now))
        return [(notice.alert.name, notice.status) for notice in notices]

    assert step(8000, 0.0) == []  # pending
    assert step(8000, 30.0) == [("ModelRmseHigh", "firing")]
    assert all(step(8000, 30.0 * i) == [] for i in range(2, 60))  # dedup within the cooldown
    assert step(8000, 30.0 + 3600.0) == [("ModelRmseHigh", "firing")]  # reminder after the cooldown
    assert step(10, 3700.0) == [("ModelRmseHigh", "resolved")]
    assert step(10, 3730.0) == []


def test_a_firing_critical_silences_its_warning() -> None:
    config = _policies(_policy(**{"for": "30s"}))
    evaluator, notifier = Evaluator(config), Notifier(config, cooldown=3600.0)

    def step(value: float, now: float, model: str = "salary") -> list[tuple[str, str]]:
        notices = notifier.decide(evaluator.evaluate([_rmse(value, model=model)], now))
        return sorted((notice.alert.severity, notice.status) for notice in notices)

    step(8000, 0.0)
    assert step(8000, 30.0) == [("critical", "firing")]  # the warning fires too, inhibited
    assert step(6500, 60.0) == [("critical", "resolved"), ("warning", "firing")]  # inhibition lifts
    assert step(10, 90.0) == [("warning", "resolved")]
    # A warning that was only ever inhibited resolves silently.
    step(8000, 120.0)
    assert step(8000, 150.0) == [("critical", "firing")]
    assert step(10, 180.0) == [("critical", "resolved")]


# --- state across restarts ------------------------------------------------------------------------


def test_a_restart_keeps_firing_alerts_without_notifying_them_again(tmp_path: Path) -> None:
    config = _policies(_policy(static={"operator": ">", "critical": 7000}, **{"for": "30s"}))
    options = Alerting(policies=tmp_path / "unused.yaml", receivers=("webhook",))

    def alerting() -> tuple[EmbeddedAlerting, MeterProvider, Any]:
        source = RegistrySource()
        provider = MeterProvider(metric_readers=[source.reader])
        gauge = provider.get_meter("modeltel").create_gauge("ml.performance.rmse")
        embedded = EmbeddedAlerting(
            config, options, source, provider.get_meter("modeltel"), state_dir=tmp_path
        )
        return embedded, provider, gauge

    first, provider, gauge = alerting()
    gauge.set(8000.0, {"ml.model.name": "salary", "ml.model.version": "v1"})
    first.evaluate(now=0.0)
    [alert] = first.evaluate(now=30.0).fired
    assert first.deliverer.pending == 1  # the firing message to the webhook (not started: queued)
    first.stop()  # saves the state; the message is given up on (the deliverer never ran)
    provider.shutdown()
    assert (tmp_path / "alerting.json").exists()

    second, provider, gauge = alerting()
    try:
        gauge.set(8100.0, {"ml.model.name": "salary", "ml.model.version": "v1"})
        again = second.evaluate(now=60.0)
        assert [a.state for a in again.active] == ["firing"] and again.fired == []
        assert again.active[0].active_at == alert.active_at
        assert second.deliverer.pending == 0  # notified before the restart: not again
        gauge.set(10.0, {"ml.model.name": "salary", "ml.model.version": "v1"})
        assert [a.fingerprint for a in second.evaluate(now=90.0).resolved] == [alert.fingerprint]
        assert second.deliverer.pending == 1  # the resolved message
    finally:
        second.stop()
        provider.shutdown()


def test_the_incident_of_an_alert_carries_its_id_model_and_links() -> None:
    evaluator = Evaluator(_policies(_policy(static={"operator": ">", "critical": 7000}, **{"for": "30s"})))
    evaluator.evaluate([_rmse(9000)], now=1714564800.0)
    [alert] = evaluator.evaluate([_rmse(9100)], now=1714564830.0).fired
    incident = incident_of(alert)
    assert incident.file_name == "2024-05-01-model-rmse-high-salary.md"
    text = render_incident(incident, incident.started_at)
    assert f"| Alert ID | `{alert.fingerprint}` |" in text
    assert "| Model | `salary` |" in text
    assert "<https://example.com/runbook.md#modelrmsehigh>" in text
    assert "<http://grafana:3000/d/modeltel-model-quality?viewPanel=1&var-model=salary>" in text
    assert "value `9100` (condition `> 7000`)" in text


def test_every_policy_of_alerts_yaml_evaluates_in_process() -> None:
    config = load_policies(POLICIES)
    evaluation = Evaluator(config).evaluate([], now=0.0)
    assert evaluation.errors == [] and evaluation.active == []
    embedded = {policy.alert for policy in Evaluator(config).policies}
    assert embedded == {policy.alert for policy in config.policies if policy.embedded}
    assert "CollectorDown" not in embedded
    assert yaml.safe_load(POLICIES.read_text())  # the committed file, unchanged by the tests


# --- configuration --------------------------------------------------------------------------------


def test_the_alerting_section_is_off_by_default_and_checked(tmp_path: Path) -> None:
    assert parse_config({}).alerting is None
    with pytest.raises(ConfigError, match=r"alerting\.retry\.initail_interval: unknown key; known keys: "):
        parse_config({"alerting": {"policies": "a.yaml", "retry": {"initail_interval": "1s"}}})
    with pytest.raises(ConfigError, match=r"alerting\.receivers\.0: Input should be 'slack', 'pagerduty'"):
        parse_config({"alerting": {"policies": "a.yaml", "receivers": ["email"]}})
    missing = parse_config(
        {"alerting": {"policies": str(tmp_path / "nope.yaml")}, "data_dir": str(tmp_path / "d")}
    )
    with pytest.raises(ConfigError, match=r"alerting\.policies: cannot read .*nope\.yaml"):
        Collector(missing)
    assert not (tmp_path / "d").exists()  # refused before anything was created
