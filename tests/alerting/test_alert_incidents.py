"""Incident files from firing alerts: the runbook template filled in, never overwritten."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modeltel_collector.alerting.incidents import (
    Incident,
    incidents_from_alertmanager,
    parse_timestamp,
    write_incident,
)
from modeltel_collector.commands.alerts import app as alerts_app

OPENED = datetime(2024, 5, 1, 12, 7, 30, tzinfo=timezone.utc)


def _payload() -> dict[str, Any]:
    """A webhook payload as Alertmanager 0.25 posts it: one firing alert, one resolved."""
    return {
        "version": "4",
        "groupKey": '{}/{}:{alertname="ModelRmseHigh", ml_model_name="salary"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "webhook",
        "groupLabels": {"alertname": "ModelRmseHigh", "ml_model_name": "salary"},
        "commonLabels": {"alertname": "ModelRmseHigh", "ml_model_name": "salary", "owner": "salary-ml"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": {
                    "alertname": "ModelRmseHigh",
                    "ml_model_name": "salary",
                    "owner": "salary-ml",
                    "severity": "critical",
                },
                "annotations": {
                    "summary": "RMSE of model salary is 32.37k, above 7k",
                    "description": "The salary model's RMSE has stayed above 7k (critical).",
                    "value": "32373.8",
                    "threshold": "> 7000",
                    "runbook_url": "https://github.com/modeltel/modeltel/blob/main/docs/runbook.md#modelrmsehigh",
                    "dashboard_url": "http://localhost:3000/d/modeltel-model-quality?viewPanel=1&var-model=salary",
                },
                "startsAt": "2024-05-01T11:58:04.123456789Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph?g0.expr=ml_performance_rmse",
                "fingerprint": "8c2f1a0d6b3e4f57",
            },
            {
                "status": "resolved",
                "labels": {"alertname": "ModelRmseHigh", "ml_model_name": "salary", "severity": "warning"},
                "annotations": {"summary": "resolved one"},
                "startsAt": "2024-05-01T11:40:00Z",
                "endsAt": "2024-05-01T11:55:00Z",
                "generatorURL": "",
                "fingerprint": "1111111111111111",
            },
        ],
    }


def test_an_incident_per_firing_alert_with_its_evidence_and_links() -> None:
    (incident,) = incidents_from_alertmanager(_payload())
    assert incident.alert == "ModelRmseHigh"
    assert incident.alert_id == "8c2f1a0d6b3e4f57"
    assert incident.severity == "critical"
    assert incident.model == "salary"
    assert incident.started_at == datetime(2024, 5, 1, 11, 58, 4, 123456, tzinfo=timezone.utc)
    assert incident.value == "32373.8" and incident.threshold == "> 7000"
    assert incident.labels == {"ml_model_name": "salary", "owner": "salary-ml"}


def test_the_file_follows_the_runbook_template(tmp_path: Path) -> None:
    (incident,) = incidents_from_alertmanager(_payload())
    path = write_incident(incident, tmp_path / "incidents", opened_at=OPENED)
    assert path == tmp_path / "incidents" / "2024-05-01-model-rmse-high-salary.md"
    text = path.read_text()
    assert text.startswith(
        "# ModelRmseHigh: model salary (critical)\n\nRMSE of model salary is 32.37k, above 7k\n"
    )
    for row in (
        "| Alert ID | `8c2f1a0d6b3e4f57` |",
        "| Model | `salary` |",
        "| Fired at | 2024-05-01 11:58:04 UTC |",
        "| Severity | critical |",
    ):
        assert row in text
    assert "- **Evidence:** value `32373.8` (condition `> 7000`)" in text
    assert (
        "- **Dashboard:** <http://localhost:3000/d/modeltel-model-quality?viewPanel=1&var-model=salary>"
        in text
    )
    assert (
        "- **Runbook:** <https://github.com/modeltel/modeltel/blob/main/docs/runbook.md#modelrmsehigh>"
        in text
    )
    assert "- **Source:** <http://prometheus:9090/graph?g0.expr=ml_performance_rmse>" in text
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## 1. Alert received",
        "## 2. Triage",
        "## 3. Mitigation",
        "## 4. Root cause analysis",
        "## 5. Post-mortem actions",
        "## Timeline (UTC)",
    ]
    assert "Roll back to the last green model artefact (`artifacts/*.joblib`)" in text
    assert "Trigger expedited re-training with the most recent clean data." in text
    assert "Apply feature flags or prediction caps if the issue is localized" in text
    assert "Update thresholds in `collector-config/alerts.yaml`" in text
    assert "- 2024-05-01 12:07:30 UTC: incident opened." in text


def test_existing_files_are_never_overwritten(tmp_path: Path) -> None:
    (incident,) = incidents_from_alertmanager(_payload())
    first = write_incident(incident, tmp_path, opened_at=OPENED)
    first.write_text("notes the on-call engineer wrote\n")
    second = write_incident(incident, tmp_path, opened_at=OPENED)
    third = write_incident(incident, tmp_path, opened_at=OPENED)
    assert [p.name for p in (first, second, third)] == [
        "2024-05-01-model-rmse-high-salary.md",
        "2024-05-01-model-rmse-high-salary-2.md",
        "2024-05-01-model-rmse-high-salary-3.md",
    ]
    assert first.read_text() == "notes the on-call engineer wrote\n"
    assert second.read_text() == third.read_text()


def test_alerts_without_a_model_are_named_after_the_alert(tmp_path: Path) -> None:
    incident = Incident(
        alert="LatencyP95High",
        alert_id="ab12",
        severity="warning",
        started_at=datetime(2024, 5, 2, 23, 59, tzinfo=timezone.utc),
        labels={"service_name": "salary-api", "http_route": "/predict", "owner": "sre"},
        summary="p95 latency of salary-api /predict is 400ms, above 300ms",
    )
    path = write_incident(incident, tmp_path, opened_at=OPENED)
    assert path.name == "2024-05-02-latency-p95-high.md"
    text = path.read_text()
    assert text.startswith("# LatencyP95High: salary-api /predict (warning)")
    assert "| Model | n/a |" in text
    assert "- **Evidence:** value n/a" in text


def test_timestamps_and_payload_errors() -> None:
    assert parse_timestamp("2024-05-01T11:58:04Z") == datetime(2024, 5, 1, 11, 58, 4, tzinfo=timezone.utc)
    assert parse_timestamp("2024-05-01T13:58:04.5+02:00") == datetime(
        2024, 5, 1, 11, 58, 4, 500000, tzinfo=timezone.utc
    )
    with pytest.raises(ValueError, match="no 'alerts' list"):
        incidents_from_alertmanager({"status": "firing"})
    payload = _payload()
    payload["alerts"][0]["startsAt"] = "yesterday"
    with pytest.raises(ValueError, match=r"alerts\[0\].startsAt: 'yesterday' is not an RFC 3339 timestamp"):
        incidents_from_alertmanager(payload)


def test_the_incident_command_reads_a_file_or_stdin(tmp_path: Path) -> None:
    runner = CliRunner()
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps(_payload()))
    directory = tmp_path / "incidents"
    result = runner.invoke(
        alerts_app, ["incident", str(payload), "--dir", str(directory)], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 0, result.output
    assert "2024-05-01-model-rmse-high-salary.md" in result.output
    result = runner.invoke(
        alerts_app, ["incident", "-", "--dir", str(directory)], input=json.dumps(_payload())
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in directory.iterdir()) == [
        "2024-05-01-model-rmse-high-salary-2.md",
        "2024-05-01-model-rmse-high-salary.md",
    ]
    resolved = _payload()
    resolved["alerts"] = resolved["alerts"][1:]
    result = runner.invoke(alerts_app, ["incident", "-", "--dir", str(directory)], input=json.dumps(resolved))
    assert result.exit_code == 0 and "no firing alert" in result.output
    result = runner.invoke(alerts_app, ["incident", "-", "--dir", str(directory)], input="{not json")
    assert result.exit_code == 1 and "is not JSON" in result.output
