"""Embedded alerting's delivery: retries, order, formats, and the whole path in a real collector.

A local ``http.server`` stands in for the generic webhook, Slack and PagerDuty, answering each
path from a script (e.g. 500 first, then 200) and recording every attempt. The end-to-end test
runs a real :class:`Collector` with embedded alerting; predictions and labels reach it over OTLP
from the modeltel SDK (real OTel exporters) in a child process.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modeltel_collector.alerting.evaluator import Alert, Evaluator, Sample, fingerprint
from modeltel_collector.alerting.incidents import incidents_from_alertmanager, parse_timestamp
from modeltel_collector.alerting.notify import (
    ZERO_TIME,
    Deliverer,
    Delivery,
    Notice,
    RetryPolicy,
    Target,
    delivery,
    targets,
)
from modeltel_collector.alerting.policy import AlertPolicies, parse_policies
from modeltel_collector.collector import Collector
from modeltel_collector.config import parse_config
from tests.conftest import ROOT, telemetry_env
from tests.otlp_sink import free_port, wait_until

POLICIES = ROOT / "collector-config" / "alerts.yaml"
SLACK_TOKEN = "XOXB-SECRET-TOKEN-0123456789"
PAGERDUTY_KEY = "R0UTING-KEY-SECRET-abcdef"


@dataclass(frozen=True)
class Hit:
    at: float
    """``time.monotonic()`` when it arrived."""
    path: str
    body: Any
    status: int


class Endpoint:
    """HTTP on 127.0.0.1 answering POSTs per path from a script (then 200), recording every one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._script: dict[str, deque[tuple[int, dict[str, str]]]] = {}
        self._hits: list[Hit] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with endpoint._lock:
                    script = endpoint._script.get(self.path)
                    status, headers = script.popleft() if script else (200, {})
                    endpoint._hits.append(Hit(time.monotonic(), self.path, json.loads(raw), status))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, path: str, *responses: tuple[int, dict[str, str]]) -> None:
        with self._lock:
            self._script.setdefault(path, deque()).extend(responses)

    def hits(self, path: str | None = None) -> list[Hit]:
        with self._lock:
            return [hit for hit in self._hits if path is None or hit.path == path]

    def accepted(self, path: str) -> list[Any]:
        return [hit.body for hit in self.hits(path) if 200 <= hit.status < 300]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    yield server
    server.close()


def _policies_data(endpoint: Endpoint, secrets: Path) -> dict[str, Any]:
    """The committed alerts.yaml, its notifications pointed at ``endpoint`` and local secret files."""
    data: dict[str, Any] = yaml.safe_load(POLICIES.read_text())
    slack, pagerduty = secrets / "slack_api_url", secrets / "pagerduty_routing_key"
    secrets.mkdir(parents=True, exist_ok=True)
    slack.write_text(f"{endpoint.url}/slack/T0/B0/{SLACK_TOKEN}\n")
    pagerduty.write_text(f"{PAGERDUTY_KEY}\n")
    data["notifications"].update(
        slack_api_url_file=str(slack),
        pagerduty_routing_key_file=str(pagerduty),
        webhook_url=f"{endpoint.url}/webhook",
    )
    return data


def _rmse_alert(config: AlertPolicies, value: float, severity: str = "critical") -> Alert:
    """A firing ModelRmseHigh alert of model salary, from the evaluator."""
    evaluator = Evaluator(config)
    sample = Sample("ml_performance_rmse", {"ml_model_name": "salary", "ml_model_version": "v1"}, value)
    evaluator.evaluate([sample], now=1000.0)
    fired = evaluator.evaluate([sample], now=1000.0 + config.policy("ModelRmseHigh").for_).fired
    return next(alert for alert in fired if alert.severity == severity)


class Results:
    """``on_result`` of a Deliverer: (receiver path or alert, sent) in the order they come."""

    def __init__(self) -> None:
        self.items: list[tuple[Delivery, bool]] = []

    def __call__(self, item: Delivery, sent: bool) -> None:
        self.items.append((item, sent))


def _webhook(url: str) -> Target:
    return Target("webhook", "webhook", url=url)


# --- the deliverer --------------------------------------------------------------------------------


def test_retries_after_a_500_and_honours_retry_after(endpoint: Endpoint, tmp_path: Path) -> None:
    config = parse_policies(_policies_data(endpoint, tmp_path))
    alert = _rmse_alert(config, 9000)
    endpoint.answer("/hook", (500, {}), (429, {"Retry-After": "1"}))
    results = Results()
    deliverer = Deliverer(RetryPolicy(0.1, 5.0, 20.0), 5.0, results).start()
    try:
        deliverer.submit(delivery(config, _webhook(f"{endpoint.url}/hook"), Notice(alert, "firing")))
        assert deliverer.wait_idle(15)
    finally:
        deliverer.stop()
    first, second, third = endpoint.hits("/hook")
    assert [first.status, second.status, third.status] == [500, 429, 200]
    assert second.at - first.at >= 0.1  # the initial backoff
    assert third.at - second.at >= 1.0  # Retry-After: 1, longer than the backoff (0.2 s)
    assert [(item.notice.status, sent, item.attempts) for item, sent in results.items] == [
        ("firing", True, 3)
    ]
    assert first.body == third.body


def test_client_errors_are_not_retried_and_an_unreachable_receiver_is_given_up(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    config = parse_policies(_policies_data(endpoint, tmp_path))
    alert = _rmse_alert(config, 9000)
    endpoint.answer("/bad", (400, {}))
    results = Results()
    deliverer = Deliverer(RetryPolicy(0.05, 0.2, 1.5), 2.0, results).start()
    try:
        deliverer.submit(delivery(config, _webhook(f"{endpoint.url}/bad"), Notice(alert, "firing")))
        closed = f"http://127.0.0.1:{free_port()}/nobody"
        deliverer.submit(delivery(config, _webhook(closed), Notice(alert, "firing")))
        assert deliverer.wait_idle(15)
    finally:
        deliverer.stop()
    assert len(endpoint.hits("/bad")) == 1
    outcomes = {item.target.url: (sent, item.attempts) for item, sent in results.items}
    assert outcomes[f"{endpoint.url}/bad"] == (False, 1)
    sent, attempts = outcomes[closed]
    assert not sent and attempts >= 3  # connection refused: retried until max_elapsed_time


def test_messages_of_one_alert_keep_their_order_and_others_do_not_wait(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    config = parse_policies(_policies_data(endpoint, tmp_path))
    critical, warning = _rmse_alert(config, 9000), _rmse_alert(config, 9000, "warning")
    endpoint.answer("/a", (503, {}))
    deliverer = Deliverer(RetryPolicy(0.5, 1.0, 20.0), 5.0).start()
    try:
        deliverer.submit(delivery(config, _webhook(f"{endpoint.url}/a"), Notice(critical, "firing")))
        deliverer.submit(delivery(config, _webhook(f"{endpoint.url}/a"), Notice(critical, "resolved")))
        deliverer.submit(delivery(config, _webhook(f"{endpoint.url}/a"), Notice(warning, "firing")))
        assert deliverer.wait_idle(15)
    finally:
        deliverer.stop()
    accepted = [
        (hit.body["alerts"][0]["labels"]["severity"], hit.body["status"]) for hit in endpoint.hits("/a")
    ]
    # The critical's trigger waits 0.5 s for its retry; the warning (another alert) does not wait
    # behind it; the critical's resolve never overtakes its trigger.
    assert accepted == [
        ("critical", "firing"),  # 503
        ("warning", "firing"),
        ("critical", "firing"),
        ("critical", "resolved"),
    ]


def test_routing_follows_the_rendered_alertmanager_config(endpoint: Endpoint, tmp_path: Path) -> None:
    data = _policies_data(endpoint, tmp_path)
    data["teams"]["ml-platform"]["pagerduty"] = False
    config = parse_policies(data)
    critical, warning = _rmse_alert(config, 9000), _rmse_alert(config, 9000, "warning")
    # Model salary routes to its owner salary-ml: Slack and PagerDuty for critical, Slack for warning.
    assert [(t.receiver, t.name, t.channel) for t in targets(config, critical)] == [
        ("webhook", "webhook", None),
        ("slack", "salary-ml-critical", "#salary-model"),
        ("pagerduty", "salary-ml-critical", None),
    ]
    assert [(t.receiver, t.name) for t in targets(config, warning)] == [
        ("webhook", "webhook"),
        ("slack", "salary-ml-warning"),
    ]
    other = replace(critical, labels={**critical.labels, "ml_model_name": "churn", "owner": "ml-platform"})
    # No model route for churn: the alert's owner (ml-platform), which has no PagerDuty.
    assert [(t.receiver, t.name) for t in targets(config, other, receivers=("slack", "pagerduty"))] == [
        ("slack", "ml-platform-critical")
    ]


# --- the whole path in a collector ----------------------------------------------------------------

SENDER = """
import sys
import modeltel

prefix, n, error = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
for i in range(n):
    label = 100_000.0 * (i % 10) + 50_000.0
    prediction = label + (error if i % 2 else -error)
    pid = modeltel.log_prediction({"years": float(i % 30)}, prediction, model="salary", version="v1",
                                  prediction_id=f"{prefix}-{i}")
    modeltel.log_label(pid, label, model="salary")
assert modeltel.force_flush(10_000)
"""
"""Predictions of model salary and their labels, every error ``±error`` (so the RMSE is ``error``)."""


def _send(grpc_port: int, prefix: str, error: float, n: int = 40) -> None:
    env = telemetry_env(f"http://127.0.0.1:{grpc_port}", OTEL_TRACES_EXPORTER="none")
    subprocess.run(
        [sys.executable, "-c", SENDER, prefix, str(n), str(error)], env=env, cwd=ROOT, check=True, timeout=60
    )


def _metric(port: int, name: str, **labels: str) -> float | None:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for match in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE):
        if all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            return float(match.group(2))
    return None


def test_a_collector_notifies_once_with_retries_and_then_resolves(
    endpoint: Endpoint, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    data = _policies_data(endpoint, tmp_path / "secrets")
    for policy in data["policies"]:
        if policy["alert"] == "ModelRmseHigh":
            policy["for"] = "400ms"
        if "adaptive" in policy:  # their history would need minutes: the evaluator's unit tests cover them
            policy["embedded"] = False
    policies = tmp_path / "alerts.yaml"
    policies.write_text(yaml.safe_dump(data))
    slack = f"/slack/T0/B0/{SLACK_TOKEN}"
    endpoint.answer("/webhook", (500, {}))
    endpoint.answer(slack, (429, {"Retry-After": "1"}))
    endpoint.answer("/pagerduty", (503, {}))
    grpc, metrics = free_port(), free_port()
    incidents = tmp_path / "incidents"
    config = parse_config(
        {
            "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{grpc}"}, "http": None}}},
            "processors": {"drift": None, "performance": {"window": "1s"}, "service": None, "audit": None},
            "exporters": {"prometheus": {"endpoint": f"127.0.0.1:{metrics}"}},
            "alerting": {
                "policies": str(policies),
                "interval": "200ms",
                "cooldown": "1h",
                "incidents_dir": str(incidents),
                "pagerduty_url": f"{endpoint.url}/pagerduty",
                "timeout": "5s",
                "retry": {"initial_interval": "200ms", "max_interval": "2s", "max_elapsed_time": "20s"},
            },
            "data_dir": str(tmp_path / "data"),
        }
    )
    collector = Collector(config).start()
    alerting = collector.alerting
    assert alerting is not None
    # The policies' content is part of the configuration version the store records.
    applied = collector.store.config_history()[-1].config["alert_policies"]
    assert {policy["alert"] for policy in applied["policies"]} >= {"ModelRmseHigh", "FeatureDriftPsiHigh"}
    try:
        _send(grpc, "bad", error=10_000.0)

        def all_notified() -> bool:
            return all(endpoint.accepted(path) for path in ("/webhook", slack, "/pagerduty"))

        wait_until(all_notified, 20, "the firing alert at the webhook, Slack and PagerDuty")
        assert alerting.deliverer.wait_idle(10)

        # Retried after the failed first attempt, Retry-After honoured.
        assert [hit.status for hit in endpoint.hits("/webhook")] == [500, 200]
        assert [hit.status for hit in endpoint.hits("/pagerduty")] == [503, 200]
        refused, sent = endpoint.hits(slack)
        assert (refused.status, sent.status) == (429, 200) and sent.at - refused.at >= 1.0

        # One alert: the critical; its warning (RMSE 10k is above 6k too) is inhibited.
        labels = {
            "alertname": "ModelRmseHigh",
            "ml_model_name": "salary",
            "owner": "salary-ml",
            "severity": "critical",
        }
        alert_id = fingerprint(labels)
        [webhook] = endpoint.accepted("/webhook")
        assert (
            webhook["version"] == "4" and webhook["status"] == "firing" and webhook["receiver"] == "webhook"
        )
        [fired] = webhook["alerts"]
        assert fired["labels"] == labels and fired["fingerprint"] == alert_id and fired["endsAt"] == ZERO_TIME
        notes = fired["annotations"]
        assert notes["summary"] == "RMSE of model salary is 10k, above 7k"
        assert notes["value"] == "10000" and notes["threshold"] == "> 7000"
        assert (
            notes["runbook_url"]
            == "https://github.com/modeltel/modeltel/blob/main/docs/runbook.md#modelrmsehigh"
        )
        assert (
            notes["dashboard_url"]
            == "http://localhost:3000/d/modeltel-model-quality?viewPanel=1&var-model=salary"
        )
        [incident] = incidents_from_alertmanager(webhook)  # what `modeltel alerts incident` reads
        assert (incident.alert_id, incident.model, incident.severity) == (alert_id, "salary", "critical")

        [message] = endpoint.accepted(slack)
        assert message["channel"] == "#salary-model"
        assert message["text"].startswith("[FIRING] ModelRmseHigh · model salary (critical): RMSE of model")
        buttons = next(block for block in message["blocks"] if block["type"] == "actions")["elements"]
        assert [(b["text"]["text"], b["url"]) for b in buttons] == [
            ("Runbook", notes["runbook_url"]),
            ("Dashboard", notes["dashboard_url"]),
        ]
        assert notes["dashboard_url"] in message["blocks"][0]["text"]["text"]

        [trigger] = endpoint.accepted("/pagerduty")
        assert trigger["routing_key"] == PAGERDUTY_KEY and trigger["event_action"] == "trigger"
        assert trigger["dedup_key"] == alert_id and trigger["payload"]["severity"] == "critical"
        assert trigger["links"] == [
            {"href": notes["runbook_url"], "text": "Runbook"},
            {"href": notes["dashboard_url"], "text": "Dashboard"},
        ]

        [path] = sorted(incidents.iterdir())
        text = path.read_text()
        assert path.name == f"{parse_timestamp(fired['startsAt']):%Y-%m-%d}-model-rmse-high-salary.md"
        assert f"| Alert ID | `{alert_id}` |" in text and "| Model | `salary` |" in text
        assert f"<{notes['runbook_url']}>" in text and f"<{notes['dashboard_url']}>" in text
        assert _metric(metrics, "modeltel_alerts_firing", alertname="ModelRmseHigh", severity="critical") == 1

        # Still firing for ten more evaluations: nothing more is sent (dedup within the cooldown).
        attempts = len(endpoint.hits())
        seen = alerting.evaluations
        wait_until(lambda: alerting.evaluations >= seen + 10, 10, "ten more evaluations")
        assert alerting.deliverer.wait_idle(5)
        assert len(endpoint.hits()) == attempts

        # Better predictions in later windows: the RMSE drops to 100 and the alert resolves.
        _send(grpc, "good", error=100.0)

        def all_resolved() -> bool:
            return all(len(endpoint.accepted(path)) == 2 for path in ("/webhook", slack, "/pagerduty"))

        wait_until(all_resolved, 20, "the resolved messages at the webhook, Slack and PagerDuty")
        assert alerting.deliverer.wait_idle(10)
        resolved = endpoint.accepted("/webhook")[1]
        assert resolved["status"] == "resolved"
        [gone] = resolved["alerts"]
        assert gone["fingerprint"] == alert_id and gone["startsAt"] == fired["startsAt"]
        assert parse_timestamp(gone["endsAt"]) > parse_timestamp(gone["startsAt"])
        assert incidents_from_alertmanager(resolved) == []  # no incident for a resolved alert
        assert endpoint.accepted(slack)[1]["text"].startswith(
            "[RESOLVED] ModelRmseHigh · model salary (critical)"
        )
        resolve = endpoint.accepted("/pagerduty")[1]
        assert resolve == {"routing_key": PAGERDUTY_KEY, "event_action": "resolve", "dedup_key": alert_id}
        assert len(list(incidents.iterdir())) == 1
        assert _metric(metrics, "modeltel_alerts_firing", alertname="ModelRmseHigh", severity="critical") == 0
        for receiver in ("webhook", "slack", "pagerduty"):
            assert _metric(metrics, "modeltel_notifications_sent_total", receiver=receiver) == 2
        assert _metric(metrics, "modeltel_notifications_failed_total") is None
    finally:
        collector.stop()
    # Retries were logged; the secrets never were (nor the Slack URL, which is one).
    assert "retrying" in caplog.text
    assert SLACK_TOKEN not in caplog.text and PAGERDUTY_KEY not in caplog.text
