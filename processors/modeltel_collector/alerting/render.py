"""Render ``alerts.yaml`` to the files Prometheus, Alertmanager and promtool read.

- ``prometheus/rules/modeltel-alerts.yml``: one rule group per policy group; adaptive policies
  first record their value and its mean and standard deviation over the window, then alert on them. Each alert
  carries ``severity`` and ``owner`` labels and ``summary``, ``description``, ``value``,
  ``threshold``, ``runbook_url`` and ``dashboard_url`` annotations.
- ``alertmanager/alertmanager.yml``: every alert to the generic webhook; then by model (``models``)
  or else by owner to the team's Slack channel, and critical ones to its PagerDuty service too;
  a critical alert inhibits the warning of the same alert and labels. Secrets are read from files
  (``slack_api_url_file``, ``routing_key_file``), never written here.
- ``prometheus/tests/modeltel-alerts.test.yml``: promtool unit tests (:mod:`.promtool_tests`).

The output is deterministic, so ``--check`` can compare it with the committed files.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modeltel_collector.alerting.policy import AlertPolicies, Policy, Team
from modeltel_collector.alerting.promql import alert_expr, prom_duration, recording_rules
from modeltel_collector.alerting.promtool_tests import promtool_tests
from modeltel_collector.alerting.text import condition_text, go_template

RULES_PATH = Path("prometheus/rules/modeltel-alerts.yml")
ALERTMANAGER_PATH = Path("alertmanager/alertmanager.yml")
TESTS_PATH = Path("prometheus/tests/modeltel-alerts.test.yml")
HEADER = (
    "# Rendered by `modeltel alerts render` from alerts.yaml: edit that file and render again;\n"
    "# `modeltel alerts render --check` fails while this file is out of date.\n"
)
WEBHOOK_RECEIVER = "webhook"
INHIBIT_EQUAL_BASE = ("alertname", "ml_model_name")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks (``|``), the rest as PyYAML chooses."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _dump(document: dict[str, Any]) -> str:
    return HEADER + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


# --- Prometheus rules ---------------------------------------------------------------------------


def alert_rules(config: AlertPolicies, policy: Policy) -> list[dict[str, Any]]:
    """The policy's recording rules (adaptive only), then one alert rule per severity."""
    rules: list[dict[str, Any]] = list(recording_rules(policy))
    for severity, level in policy.levels():
        rules.append(
            {
                "alert": policy.alert,
                "expr": alert_expr(policy, level),
                "for": prom_duration(policy.for_),
                "labels": {"severity": severity, "owner": policy.owner},
                "annotations": {
                    "summary": go_template(policy.summary, policy, severity, level),
                    "description": go_template(policy.description, policy, severity, level),
                    "value": '{{ printf "%.6g" $value }}',
                    "threshold": condition_text(policy, level),
                    "runbook_url": config.runbook_link(policy),
                    "dashboard_url": config.dashboard_link(
                        policy, lambda label: f"{{{{ $labels.{label} | urlquery }}}}"
                    ),
                },
            }
        )
    return rules


def prometheus_rules(config: AlertPolicies) -> dict[str, Any]:
    """The rule file: one group per policy group, in order of first appearance."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for policy in config.policies:
        groups.setdefault(policy.group, []).extend(alert_rules(config, policy))
    interval = prom_duration(config.evaluation_interval)
    return {
        "groups": [
            {"name": f"modeltel-{name}", "interval": interval, "rules": rules}
            for name, rules in groups.items()
        ]
    }


# --- Alertmanager -------------------------------------------------------------------------------

_TITLE = (
    '[{{ .Status | toUpper }}{{ if eq .Status "firing" }}:{{ .Alerts.Firing | len }}{{ end }}] '
    "{{ .CommonLabels.alertname }}{{ with .CommonLabels.ml_model_name }} · model {{ . }}{{ end }} "
    "({{ .CommonLabels.severity }})"
)
_TEXT = (
    "{{ range .Alerts }}• <{{ .Annotations.dashboard_url }}|{{ .Annotations.summary }}>"
    '{{ if eq .Status "resolved" }} (resolved){{ end }}\n'
    "{{ .Annotations.description }}\n"
    "value {{ .Annotations.value }}, condition {{ .Annotations.threshold }}\n"
    "{{ end }}"
)
_PAGERDUTY_DESCRIPTION = (
    "[{{ .Alerts.Firing | len }} firing] {{ .CommonLabels.alertname }}"
    "{{ with .CommonLabels.ml_model_name }} (model {{ . }}){{ end }}: "
    "{{ (index .Alerts 0).Annotations.summary }}"
)
_FIRST = "{{ (index .Alerts 0).Annotations.%s }}"
"""An annotation of the group's first alert (dashboard links differ between a group's alerts)."""


def _slack(team: Team) -> dict[str, Any]:
    slack: dict[str, Any] = {"channel": team.slack_channel, "send_resolved": True}
    if team.slack_api_url_file is not None:
        slack["api_url_file"] = team.slack_api_url_file
    slack.update(
        title=_TITLE,
        title_link=_FIRST % "dashboard_url",
        text=_TEXT,
        actions=[
            {"type": "button", "text": "Runbook", "url": _FIRST % "runbook_url"},
            {"type": "button", "text": "Dashboard", "url": _FIRST % "dashboard_url"},
        ],
    )
    return slack


def _pagerduty(config: AlertPolicies, team: Team) -> dict[str, Any]:
    key_file = team.pagerduty_routing_key_file or config.notifications.pagerduty_routing_key_file
    return {
        "routing_key_file": key_file,
        "send_resolved": True,
        "severity": "critical",
        "client": "modeltel",
        "client_url": config.grafana_url,
        "description": _PAGERDUTY_DESCRIPTION,
        "links": [
            {"href": _FIRST % "runbook_url", "text": "Runbook"},
            {"href": _FIRST % "dashboard_url", "text": "Dashboard"},
        ],
    }


def _receivers(config: AlertPolicies) -> list[dict[str, Any]]:
    receivers: list[dict[str, Any]] = [
        {
            "name": WEBHOOK_RECEIVER,
            "webhook_configs": [{"url": config.notifications.webhook_url, "send_resolved": True}],
        }
    ]
    for name, team in config.teams.items():
        critical: dict[str, Any] = {"name": f"{name}-critical", "slack_configs": [_slack(team)]}
        if team.pagerduty:
            critical["pagerduty_configs"] = [_pagerduty(config, team)]
        receivers += [critical, {"name": f"{name}-warning", "slack_configs": [_slack(team)]}]
    return receivers


def _team_route(matcher: str, team: str) -> dict[str, Any]:
    return {
        "matchers": [matcher],
        "routes": [
            {"matchers": ['severity="critical"'], "receiver": f"{team}-critical"},
            {"receiver": f"{team}-warning"},
        ],
    }


def inhibit_equal(config: AlertPolicies) -> list[str]:
    """Labels a critical alert must share with a warning to silence it: the alert and what it is about."""
    labels = list(INHIBIT_EQUAL_BASE)
    for policy in config.policies:
        labels += [label for label in policy.condition.by if label not in labels]
    return labels


def alertmanager_config(config: AlertPolicies) -> dict[str, Any]:
    """Routing by model, then owner, then severity; the webhook gets everything."""
    notifications = config.notifications
    routes: list[dict[str, Any]] = [{"receiver": WEBHOOK_RECEIVER, "continue": True}]
    routes += [_team_route(f'ml_model_name="{model}"', route.owner) for model, route in config.models.items()]
    routes += [_team_route(f'owner="{team}"', team) for team in config.teams]
    return {
        "global": {
            "resolve_timeout": "5m",
            "slack_api_url_file": notifications.slack_api_url_file,
            **({"pagerduty_url": notifications.pagerduty_url} if notifications.pagerduty_url else {}),
        },
        "route": {
            "receiver": WEBHOOK_RECEIVER,
            "group_by": list(notifications.group_by),
            "group_wait": prom_duration(notifications.group_wait),
            "group_interval": prom_duration(notifications.group_interval),
            "repeat_interval": prom_duration(notifications.repeat_interval),
            "routes": routes,
        },
        "inhibit_rules": [
            {
                "source_matchers": ['severity="critical"'],
                "target_matchers": ['severity="warning"'],
                "equal": inhibit_equal(config),
            }
        ],
        "receivers": _receivers(config),
    }


# --- files --------------------------------------------------------------------------------------


def render(config: AlertPolicies) -> dict[Path, str]:
    """Each rendered file's text, by path relative to the output folder."""
    return {
        RULES_PATH: _dump(prometheus_rules(config)),
        ALERTMANAGER_PATH: _dump(alertmanager_config(config)),
        TESTS_PATH: _dump(
            promtool_tests(config, Path(os.path.relpath(RULES_PATH, TESTS_PATH.parent)).as_posix())
        ),
    }


def write(rendered: dict[Path, str], out: Path) -> list[Path]:
    """Write the files under ``out`` (folders created); the paths written."""
    written = []
    for relative, text in rendered.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


@dataclass(frozen=True)
class Stale:
    """A rendered file whose committed copy differs (or is missing)."""

    path: Path
    diff: str


def stale(rendered: dict[Path, str], out: Path) -> list[Stale]:
    """The files under ``out`` that differ from ``rendered``, with a unified diff of each."""
    found = []
    for relative, text in rendered.items():
        path = out / relative
        current = path.read_text() if path.is_file() else ""
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=f"{path} (committed)",
                tofile=f"{path} (rendered)",
            )
            found.append(Stale(path, "".join(diff)))
    return found
