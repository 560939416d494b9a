"""The rendered files: current, valid for promtool and amtool, and their unit tests pass (and bite)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from modeltel_collector.alerting.policy import AlertPolicies, load_policies, parse_policies
from modeltel_collector.alerting.render import (
    ALERTMANAGER_PATH,
    RULES_PATH,
    TESTS_PATH,
    alertmanager_config,
    render,
    stale,
    write,
)
from modeltel_collector.commands.alerts import app as alerts_app
from tests.conftest import ROOT

CONFIG_DIR = ROOT / "collector-config"
POLICIES = CONFIG_DIR / "alerts.yaml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"

runner = CliRunner()


def _run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=cwd, check=False)


@pytest.fixture(scope="module")
def config() -> AlertPolicies:
    return load_policies(POLICIES)


@pytest.fixture(scope="module")
def rendered(config: AlertPolicies, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    write(render(config), out)
    return out


def _one_policy(config: AlertPolicies, alert: str, **static: float) -> AlertPolicies:
    """The configuration reduced to one policy, its static levels optionally changed."""
    policy = config.policy(alert)
    if static:
        assert policy.static is not None
        policy = policy.model_copy(update={"static": policy.static.model_copy(update=static)})
    return config.model_copy(update={"policies": [policy]})


def test_committed_files_are_current(config: AlertPolicies, rendered: Path) -> None:
    assert stale(render(config), CONFIG_DIR) == [], "run `modeltel alerts render` and commit the result"
    for relative in (RULES_PATH, ALERTMANAGER_PATH, TESTS_PATH):
        assert (CONFIG_DIR / relative).read_text() == (rendered / relative).read_text()


def test_rendering_is_deterministic(config: AlertPolicies) -> None:
    assert render(config) == render(load_policies(POLICIES))


def test_promtool_checks_the_rules(rendered: Path) -> None:
    result = _run(PROMTOOL, "check", "rules", str(rendered / RULES_PATH))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 24 rules found" in result.stdout


def test_every_rule_fires_and_stays_quiet_in_promtool_tests(config: AlertPolicies, rendered: Path) -> None:
    tests = yaml.safe_load((rendered / TESTS_PATH).read_text())
    rules = yaml.safe_load((rendered / RULES_PATH).read_text())
    fired = {
        (test["name"].split(":")[0], alert["exp_labels"]["severity"])
        for test in tests["tests"]
        for check in test["alert_rule_test"]
        for alert in check["exp_alerts"]
    }
    quiet = {
        test["name"].split(":")[0]
        for test in tests["tests"]
        for check in test["alert_rule_test"]
        if not check["exp_alerts"]
    }
    alert_rules = {
        (rule["alert"], rule["labels"]["severity"])
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert fired == alert_rules
    assert quiet == {policy.alert for policy in config.policies}
    result = _run(PROMTOOL, "test", "rules", str(rendered / TESTS_PATH))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_generated_tests_catch_a_changed_threshold(config: AlertPolicies, tmp_path: Path) -> None:
    """Tests rendered for RMSE > 7000 fail against rules rendered for RMSE > 9000."""
    write(render(_one_policy(config, "ModelRmseHigh")), tmp_path)
    changed = render(_one_policy(config, "ModelRmseHigh", critical=9000))
    (tmp_path / RULES_PATH).write_text(changed[RULES_PATH])
    result = _run(PROMTOOL, "test", "rules", str(tmp_path / TESTS_PATH))
    assert result.returncode != 0
    assert "ModelRmseHigh: critical" in result.stdout + result.stderr


def test_amtool_checks_the_alertmanager_config(rendered: Path) -> None:
    result = _run(AMTOOL, "check-config", str(rendered / ALERTMANAGER_PATH))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_secrets_are_files_not_values(rendered: Path) -> None:
    text = (rendered / ALERTMANAGER_PATH).read_text()
    document = yaml.safe_load(text)
    assert document["global"]["slack_api_url_file"] == "/run/secrets/slack_api_url"
    keys = [
        config["routing_key_file"]
        for receiver in document["receivers"]
        for config in receiver.get("pagerduty_configs", [])
    ]
    assert keys and set(keys) == {"/run/secrets/pagerduty_routing_key"}
    for inline in ("slack_api_url:", "api_url:", "routing_key:", "service_key:"):
        assert inline not in text


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (["severity=critical", "ml_model_name=salary", "owner=salary-ml"], "webhook,salary-ml-critical"),
        (["severity=warning", "ml_model_name=salary", "owner=ml-platform"], "webhook,salary-ml-warning"),
        (["severity=critical", "ml_model_name=churn", "owner=ml-platform"], "webhook,ml-platform-critical"),
        (["severity=warning", "service_name=salary-api", "owner=sre"], "webhook,sre-warning"),
        (["severity=critical", "owner=sre"], "webhook,sre-critical"),
    ],
)
def test_routing_by_model_then_owner_then_severity(rendered: Path, labels: list[str], receivers: str) -> None:
    result = _run(
        AMTOOL, "config", "routes", "test", f"--config.file={rendered / ALERTMANAGER_PATH}", *labels
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receivers


def test_critical_pages_and_warning_does_not(rendered: Path) -> None:
    receivers = {
        r["name"]: r for r in yaml.safe_load((rendered / ALERTMANAGER_PATH).read_text())["receivers"]
    }
    for team in ("ml-platform", "salary-ml", "sre"):
        assert receivers[f"{team}-critical"]["pagerduty_configs"]
        assert receivers[f"{team}-critical"]["slack_configs"]
        assert "pagerduty_configs" not in receivers[f"{team}-warning"]
        assert receivers[f"{team}-warning"]["slack_configs"]
    assert receivers["webhook"]["webhook_configs"][0]["send_resolved"] is True


def test_a_critical_inhibits_the_warning_of_the_same_alert_and_labels(config: AlertPolicies) -> None:
    (rule,) = alertmanager_config(config)["inhibit_rules"]
    assert rule["source_matchers"] == ['severity="critical"']
    assert rule["target_matchers"] == ['severity="warning"']
    for label in ("alertname", "ml_model_name", "ml_feature_name", "service_name", "http_route"):
        assert label in rule["equal"]


def _am_data(annotations: dict[str, str], labels: dict[str, str]) -> dict[str, Any]:
    alert = {
        "status": "firing",
        "labels": labels,
        "annotations": annotations,
        "startsAt": "2024-05-01T12:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": "3f2a9c1b7d4e5f60",
    }
    return {
        "receiver": "salary-ml-critical",
        "status": "firing",
        "alerts": [alert],
        "groupLabels": {"alertname": labels["alertname"], "ml_model_name": labels["ml_model_name"]},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "http://alertmanager:9093",
    }


def test_notification_templates_render_with_alertmanager(rendered: Path, tmp_path: Path) -> None:
    document = yaml.safe_load((rendered / ALERTMANAGER_PATH).read_text())
    receiver = next(r for r in document["receivers"] if r["name"] == "salary-ml-critical")
    slack, pagerduty = receiver["slack_configs"][0], receiver["pagerduty_configs"][0]
    annotations = {
        "summary": "RMSE of model salary is 7.5k, above 7k",
        "description": "The salary model's RMSE ...",
        "value": "7500",
        "threshold": "> 7000",
        "runbook_url": "https://example.com/runbook.md#modelrmsehigh",
        "dashboard_url": "http://localhost:3000/d/modeltel-model-quality?viewPanel=1&var-model=salary",
    }
    labels = {
        "alertname": "ModelRmseHigh",
        "ml_model_name": "salary",
        "severity": "critical",
        "owner": "salary-ml",
    }
    data = tmp_path / "data.json"
    data.write_text(json.dumps(_am_data(annotations, labels)))
    empty = tmp_path / "none.tmpl"
    empty.write_text("")

    def render_template(text: str) -> str:
        result = _run(
            AMTOOL, "template", "render", f"--template.glob={empty}", f"--template.data={data}",
            f"--template.text={text}",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout.rstrip("\n")

    assert render_template(slack["title"]) == "[FIRING:1] ModelRmseHigh · model salary (critical)"
    assert render_template(slack["title_link"]) == annotations["dashboard_url"]
    assert render_template(slack["text"]).startswith(
        f"• <{annotations['dashboard_url']}|RMSE of model salary is 7.5k, above 7k>\n"
    )
    assert [render_template(action["url"]) for action in slack["actions"]] == [
        annotations["runbook_url"],
        annotations["dashboard_url"],
    ]
    assert render_template(pagerduty["description"]) == (
        "[1 firing] ModelRmseHigh (model salary): RMSE of model salary is 7.5k, above 7k"
    )
    assert [render_template(link["href"]) for link in pagerduty["links"]] == [
        annotations["runbook_url"],
        annotations["dashboard_url"],
    ]


def test_check_fails_with_a_diff_when_files_are_stale(tmp_path: Path) -> None:
    result = runner.invoke(alerts_app, ["render", "--policies", str(POLICIES), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / RULES_PATH).is_file() and (tmp_path / ALERTMANAGER_PATH).is_file()
    result = runner.invoke(
        alerts_app, ["render", "--policies", str(POLICIES), "--out", str(tmp_path), "--check"]
    )
    assert result.exit_code == 0, result.output
    rules = tmp_path / RULES_PATH
    rules.write_text(rules.read_text().replace("> 7000", "> 7500", 1))
    (tmp_path / ALERTMANAGER_PATH).unlink()
    result = runner.invoke(
        alerts_app, ["render", "--policies", str(POLICIES), "--out", str(tmp_path), "--check"]
    )
    assert result.exit_code == 1
    assert (
        '-    expr: max by (ml_model_name) (ml_performance_rmse{ml_model_name="salary"}) > 7500'
        in result.output
    )
    assert (
        '+    expr: max by (ml_model_name) (ml_performance_rmse{ml_model_name="salary"}) > 7000'
        in result.output
    )
    assert "out of date:" in result.output and "alertmanager.yml" in result.output
    assert "modeltel alerts render" in result.output


def test_render_refuses_invalid_policies(tmp_path: Path) -> None:
    data = yaml.safe_load(POLICIES.read_text())
    broken = copy.deepcopy(data)
    broken["policies"][0]["owner"] = "nobody"
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = runner.invoke(alerts_app, ["render", "--policies", str(path), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "policies.ModelRmseHigh.owner: no team 'nobody' in teams" in result.output
    assert not (tmp_path / RULES_PATH).exists()
    parse_policies(data)  # the original is fine


def test_list_shows_every_rule() -> None:
    result = runner.invoke(alerts_app, ["list", "--policies", str(POLICIES)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "ModelRmseHigh" in result.output and "CollectorDown" in result.output
    assert 'ml_performance_rmse{ml_model_name="salary"}) > 7000' in result.output


def test_the_command_group_is_registered() -> None:
    from modeltel_collector.cli import app

    result = runner.invoke(app, ["alerts", "--help"])
    assert result.exit_code == 0
    for command in ("render", "list", "incident"):
        assert command in result.output
