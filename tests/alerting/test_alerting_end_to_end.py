"""End to end with Debian's real Prometheus and Alertmanager: drift → rules → alerts delivered → dashboards.

Real components, each in its own process group, on free loopback ports:

- the alert policies of ``collector-config/alerts.yaml``, made test-friendly (``for`` of a few
  seconds, 1 s evaluation, Alertmanager timers of seconds (adaptive windows stay a day long), every
  receiver pointed at :class:`~tests.alerting.e2e_helpers.Receiver`, secrets in temp files) and
  rendered by ``modeltel alerts render``, then checked by ``promtool check rules`` and
  ``amtool check-config``;
- ``modeltel collect`` (embedded: drift, performance and service processors, 3 s windows);
- the example salary app exporting OTLP to it, under the load generator with data drift
  (``years_experience`` + 10 years), then concept drift, and labels 0.5 s after each prediction;
- ``prometheus-alertmanager`` with the rendered configuration (Slack and PagerDuty URLs local);
- ``prometheus`` scraping the collector every second and evaluating the rendered rules.

:func:`test_drift_and_rmse_alerts_reach_the_receivers` waits for ``FeatureDriftPsiHigh`` (for
the shifted feature only) and the critical ``ModelRmseHigh`` at the webhook, checks their labels
and their ``runbook_url``/``dashboard_url`` annotations, what Slack and PagerDuty received, and
that Alertmanager inhibits the RMSE warning by its critical.
:func:`test_every_dashboard_query_returns_data` then runs every query of every Grafana dashboard
(with the variables at "All", then at this model, feature, service and route) against that
Prometheus: each must return at least one series.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from examples.salary.model import FEATURES
from modeltel_collector.alerting.policy import AlertPolicies, load_policies, parse_policies
from modeltel_collector.alerting.promql import record_names
from modeltel_collector.alerting.render import ALERTMANAGER_PATH, RULES_PATH
from tests.alerting.e2e_helpers import Receiver, github_anchors
from tests.conftest import ROOT, AppProcess, telemetry_env
from tests.daemons import (
    Alertmanager,
    Daemon,
    Prometheus,
    check_tool,
    start_alertmanager,
    start_collector,
    start_prometheus,
    wait_for,
)
from tests.stack.stack_helpers import dashboard_queries, load_dashboards, panels

pytestmark = pytest.mark.slow  # about 45 s: real daemons and 24 s of load

POLICIES = ROOT / "collector-config" / "alerts.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"

WINDOW_S = 3
"""The collector's drift and performance window (``--window``)."""
FOR_S = 5.0
"""Every policy's ``for``: longer than a window, so one noisy window cannot fire an alert."""
WARMUP, MIN_SAMPLES = 300, 50
RATE, DURATION, DRIFT_AT, CONCEPT_DRIFT_AT, LABEL_DELAY = 60, 24, 8, 11, 0.5
"""Load: 5 s of warmup (the drift reference), baseline until 8 s, data drift from 8 s (kept),
concept drift from 11 s: PSI of the shifted feature far above 0.2, RMSE far above 7000."""
SHIFTED = "years_experience"
"""The feature the load generator's data drift shifts (``generate(shift=...)``)."""
MODEL, SERVICE, ROUTE = "salary", "salary-api", "/predict"
ALERT_TIMEOUT_S = DURATION + 60


# --- rendering ----------------------------------------------------------------------------------


def fast_policies(base: AlertPolicies, receiver: Receiver, secrets: Path) -> AlertPolicies:
    """``base`` made fast and local; validated again as a policy file would be."""
    slack_file, pagerduty_file = secrets / "slack_api_url", secrets / "pagerduty_routing_key"
    slack_file.write_text(receiver.url("/slack") + "\n")
    pagerduty_file.write_text("e2e-test-routing-key\n")
    policies = []
    for policy in base.policies:
        policies.append(policy.model_copy(update={"for_": FOR_S}))
    notifications = base.notifications.model_copy(
        update={
            "slack_api_url_file": str(slack_file),
            "pagerduty_routing_key_file": str(pagerduty_file),
            "webhook_url": receiver.url("/alerts"),
            "pagerduty_url": receiver.url("/pagerduty"),
            "group_wait": 1.0,
            "group_interval": 1.0,
            "repeat_interval": 60.0,
        }
    )
    teams = {
        name: team.model_copy(update={"slack_api_url_file": None, "pagerduty_routing_key_file": None})
        for name, team in base.teams.items()
    }
    fast = base.model_copy(
        update={
            "evaluation_interval": 1.0,
            "notifications": notifications,
            "teams": teams,
            "policies": policies,
        }
    )
    return parse_policies(fast.model_dump(mode="json", by_alias=True))


@dataclass
class Rendered:
    policies: AlertPolicies
    rules: Path
    alertmanager: Path
    pagerduty_key: str


def render_for_test(tmp: Path, receiver: Receiver) -> Rendered:
    """Render with ``modeltel alerts render`` and check the result with promtool and amtool."""
    secrets = tmp / "secrets"
    secrets.mkdir()
    policies = fast_policies(load_policies(POLICIES), receiver, secrets)
    policy_file = tmp / "alerts.yaml"
    policy_file.write_text(yaml.safe_dump(policies.model_dump(mode="json", by_alias=True), sort_keys=False))
    out = tmp / "rendered"
    result = subprocess.run(
        [sys.executable, "-m", "modeltel_collector.cli", "alerts", "render",
         "--policies", str(policy_file), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"modeltel alerts render failed:\n{result.stdout}{result.stderr}"

    rules = out / RULES_PATH
    assert "SUCCESS" in check_tool("promtool", "check", "rules", str(rules))
    check_tool("amtool", "check-config", str(out / ALERTMANAGER_PATH))
    groups = yaml.safe_load(rules.read_text())["groups"]
    assert {group["interval"] for group in groups} == {"1s"}
    fors = {rule["for"] for group in groups for rule in group["rules"] if "alert" in rule}
    assert fors == {f"{FOR_S:g}s"}, fors
    key = (secrets / "pagerduty_routing_key").read_text().strip()
    return Rendered(load_policies(policy_file), rules, out / ALERTMANAGER_PATH, key)


# --- the stack ----------------------------------------------------------------------------------


@dataclass
class Stack:
    rendered: Rendered
    receiver: Receiver
    prometheus: Prometheus
    alertmanager: Alertmanager
    collector: Daemon
    app: AppProcess
    loadgen: Daemon

    @property
    def daemons(self) -> list[Daemon]:
        """What must keep running until the end (the load generator ends by itself)."""
        return [self.collector, self.prometheus.daemon, self.alertmanager.daemon]

    def check_running(self) -> None:
        for daemon in self.daemons:
            daemon.assert_running()
        assert self.app.process.poll() is None, f"the salary app exited with {self.app.process.returncode}"

    def wait(self, condition: Any, timeout: float, what: str) -> Any:
        def check() -> Any:
            self.check_running()
            return condition()

        return wait_for(check, timeout, what, self.daemons)

    def firing(self) -> list[dict[str, Any]]:
        """Every firing alert of every webhook notification so far."""
        return [
            alert
            for request in self.receiver.requests("/alerts")
            for alert in request.body["alerts"]
            if alert["status"] == "firing"
        ]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("alerting-e2e")
    with contextlib.ExitStack() as cleanup:
        receiver = Receiver()
        cleanup.callback(receiver.stop)
        rendered = render_for_test(tmp, receiver)

        collector = start_collector(
            tmp / "collector",
            processors={"drift": {"warmup": WARMUP, "min_samples": MIN_SAMPLES}, "performance": {},
                        "service": {}},
            models={MODEL: {"task": "regression",
                            "acceptance": {"rmse": {"max": 7000}, "r2": {"min": 0.6}}}},
            window_s=WINDOW_S,
        )  # fmt: skip
        cleanup.callback(collector.daemon.stop)
        alertmanager = start_alertmanager(tmp / "alertmanager", rendered.alertmanager)
        cleanup.callback(alertmanager.daemon.stop)
        prometheus = start_prometheus(
            tmp / "prometheus",
            targets=[collector.metrics],
            rule_files=[rendered.rules],
            alertmanager=alertmanager.address,
        )
        cleanup.callback(prometheus.daemon.stop)

        endpoint = collector.otlp_grpc
        app = AppProcess("examples.salary.app:app", telemetry_env(endpoint), factory=False)
        cleanup.callback(app.stop)
        loadgen = Daemon(
            "loadgen",
            [sys.executable, "-m", "examples.salary.loadgen", "--url", app.url, "--rate", str(RATE),
             "--duration", str(DURATION), "--drift-at", str(DRIFT_AT),
             "--concept-drift-at", str(CONCEPT_DRIFT_AT), "--label-delay", str(LABEL_DELAY)],
            tmp / "loadgen.log",
            env=telemetry_env(endpoint, OTEL_SERVICE_NAME="salary-labeller"), cwd=ROOT,
        )  # fmt: skip
        cleanup.callback(loadgen.stop)
        yield Stack(rendered, receiver, prometheus, alertmanager, collector.daemon, app, loadgen)


# --- the alerts ---------------------------------------------------------------------------------


def _check_links(policies: AlertPolicies, alert: dict[str, Any], anchors: set[str]) -> None:
    """``runbook_url`` at the alert's runbook section; ``dashboard_url`` at its dashboard panel."""
    name, labels, annotations = alert["labels"]["alertname"], alert["labels"], alert["annotations"]
    policy = policies.policy(name)
    runbook = annotations.get("runbook_url")
    assert runbook == f"{policies.runbook_url}#{policy.runbook_anchor}", (name, annotations)
    assert runbook.split("#", 1)[0].endswith("docs/runbook.md"), runbook
    assert runbook.split("#", 1)[1] in anchors, f"{runbook}: no such heading in docs/runbook.md"

    dashboard = annotations.get("dashboard_url")
    assert dashboard == policies.dashboard_url(policy, labels), (name, annotations)
    url = urlsplit(dashboard)
    assert url.path == f"/d/{policy.dashboard.uid}", dashboard
    boards = {board["uid"]: board for board in load_dashboards().values()}
    assert policy.dashboard.uid in boards, f"{dashboard}: no dashboard with that uid"
    query = parse_qs(url.query)
    panel = int(query["viewPanel"][0])
    plotted = {p["id"]: p for p in panels(boards[policy.dashboard.uid])}
    assert panel in plotted, f"{dashboard}: no panel {panel}"
    metric = policy.condition.metric
    assert any(metric in target["expr"] for target in plotted[panel]["targets"]), (dashboard, metric)
    for variable, label in policy.dashboard.variables.items():
        assert query[f"var-{variable}"] == [labels[label]], dashboard
    for key in ("summary", "description", "value", "threshold"):
        assert annotations.get(key), (name, key, annotations)


def _one(alerts: list[dict[str, Any]], **labels: str) -> dict[str, Any] | None:
    for alert in alerts:
        if all(alert["labels"].get(key) == value for key, value in labels.items()):
            return alert
    return None


def test_drift_and_rmse_alerts_reach_the_receivers(stack: Stack) -> None:
    policies = stack.rendered.policies
    psi_labels = {"alertname": "FeatureDriftPsiHigh", "ml_model_name": MODEL, "ml_feature_name": SHIFTED}
    rmse_labels = {"alertname": "ModelRmseHigh", "ml_model_name": MODEL, "severity": "critical"}

    def both_delivered() -> tuple[dict[str, Any], dict[str, Any]] | None:
        firing = stack.firing()
        psi, rmse = _one(firing, **psi_labels), _one(firing, **rmse_labels)
        return (psi, rmse) if psi is not None and rmse is not None else None

    psi, rmse = stack.wait(
        both_delivered, ALERT_TIMEOUT_S, "FeatureDriftPsiHigh and ModelRmseHigh at the webhook"
    )

    # Labels: model, feature (the PSI alert is per feature), severity and owner from the policy.
    assert psi["labels"]["severity"] == "warning"
    assert psi["labels"]["owner"] == policies.policy("FeatureDriftPsiHigh").owner
    assert rmse["labels"]["owner"] == policies.policy("ModelRmseHigh").owner
    assert "ml_feature_name" not in rmse["labels"]
    anchors = github_anchors(RUNBOOK.read_text())
    for alert in (psi, rmse):
        _check_links(policies, alert, anchors)
    assert float(psi["annotations"]["value"]) > 0.2
    assert float(rmse["annotations"]["value"]) > 7000

    # PSI alerts fired for the shifted feature and for none of the others, neither at the webhook
    # nor in Prometheus's history of its alerts.
    fired = {
        a["labels"]["ml_feature_name"]
        for a in stack.firing()
        if a["labels"]["alertname"] == psi_labels["alertname"]
    }
    assert fired == {SHIFTED}, f"PSI alerts for {fired}; only {SHIFTED} is shifted (of {FEATURES})"
    history = stack.prometheus.query(
        "max by (ml_feature_name) "
        '(max_over_time(ALERTS{alertname="FeatureDriftPsiHigh", alertstate="firing"}[10m]))'
    )
    assert {series["metric"]["ml_feature_name"] for series in history} == {SHIFTED}, history

    # The critical RMSE alert silences its warning (Alertmanager's inhibition), once both are there.
    def warning_inhibited() -> dict[str, Any] | None:
        alerts = stack.alertmanager.alerts(alertname="ModelRmseHigh", ml_model_name=MODEL)
        warning = _one(alerts, severity="warning")
        critical = _one(alerts, severity="critical")
        if warning is None or critical is None or warning["status"]["state"] != "suppressed":
            return None
        return warning

    warning = stack.wait(warning_inhibited, 30, "the ModelRmseHigh warning inhibited by its critical")
    assert warning["status"]["inhibitedBy"], warning

    # Slack: each alert's team channel, with the runbook and dashboard buttons; PagerDuty: the
    # critical RMSE alert only, with the routing key read from its secret file and the links.
    def slack_for(alert: dict[str, Any]) -> dict[str, Any] | None:
        for request in stack.receiver.requests("/slack"):
            (attachment,) = request.body["attachments"]
            if (
                alert["labels"]["alertname"] in attachment["title"]
                and alert["labels"]["severity"] in attachment["title"]
            ):
                return dict(request.body)
        return None

    channel = policies.teams[policies.models[MODEL].owner].slack_channel  # the model's route wins
    for alert in (psi, rmse):
        body = stack.wait(
            lambda a=alert: slack_for(a), 20, f"Slack message of {alert['labels']['alertname']}"
        )
        assert body["channel"] == channel
        (attachment,) = body["attachments"]
        buttons = {action["text"]: action["url"] for action in attachment["actions"]}
        assert buttons == {
            "Runbook": alert["annotations"]["runbook_url"],
            "Dashboard": alert["annotations"]["dashboard_url"],
        }
        assert attachment["title_link"] == alert["annotations"]["dashboard_url"]

    def pages() -> list[dict[str, Any]]:
        return [r.body for r in stack.receiver.requests("/pagerduty") if r.body["event_action"] == "trigger"]

    def rmse_page() -> dict[str, Any] | None:
        return next((p for p in pages() if "ModelRmseHigh" in p["payload"]["summary"]), None)

    page = stack.wait(rmse_page, 20, "the PagerDuty event of ModelRmseHigh")
    assert page["routing_key"] == stack.rendered.pagerduty_key
    assert page["payload"]["severity"] == "critical"
    assert {link["text"]: link["href"] for link in page["links"]} == {
        "Runbook": rmse["annotations"]["runbook_url"],
        "Dashboard": rmse["annotations"]["dashboard_url"],
    }
    summaries = [p["payload"]["summary"] for p in pages()]
    assert not [s for s in summaries if "FeatureDriftPsiHigh" in s], f"a warning paged: {summaries}"

    # The adaptive policies' recording rules evaluate on the scraped metrics.
    for alert in ("ModelRmseAnomalous", "PredictionRateAnomalous"):
        value, mean, stddev = record_names(policies.policy(alert))
        for record in (value, mean, stddev):
            stack.wait(lambda r=record: stack.prometheus.query(r), 20, f"the recording rule {record}")


# --- the dashboards -----------------------------------------------------------------------------

SELECTED = {"model": MODEL, "version": ".*", "feature": SHIFTED, "service": SERVICE, "route": ROUTE}
"""The dashboards' variables set to this test's model, feature, service and route."""


@pytest.mark.parametrize("variables", [{}, SELECTED], ids=["all", "selected"])
def test_every_dashboard_query_returns_data(stack: Stack, variables: dict[str, str]) -> None:
    stack.wait(lambda: not stack.loadgen.running(), DURATION + 60, "the load generator to finish")
    assert stack.loadgen.process.returncode == 0, stack.loadgen.tail()
    queries = dashboard_queries(values=variables)
    assert {q.dashboard for q in queries} == set(stack.rendered.policies.dashboards)
    assert len(queries) >= 40

    def without_data() -> list[str]:
        return [
            f"{q.dashboard} {q.where}: {q.promql}" for q in queries if not stack.prometheus.query(q.promql)
        ]

    try:
        stack.wait(lambda: not without_data(), 60, "every dashboard query to return data")
    except AssertionError as error:
        raise AssertionError("queries without data:\n" + "\n".join(without_data()) + f"\n{error}") from None

    # The drift table lists the shifted feature as drifting, with its PSI.
    drifting = stack.prometheus.query(
        f'max by (ml_feature_name) (ml_drift_detected{{ml_model_name="{MODEL}"}}) == 1'
    )
    assert SHIFTED in {series["metric"]["ml_feature_name"] for series in drifting}
    (psi,) = stack.prometheus.query(f'ml_drift_psi{{ml_model_name="{MODEL}", ml_feature_name="{SHIFTED}"}}')
    assert float(psi["value"][1]) > 0.2 and math.isfinite(float(psi["value"][1]))
