"""Incident files: ``incidents/YYYY-MM-DD-{slug}.md`` from a firing alert, on the runbook template.

The file follows the playbook's runbook template: the alert received (id, time, model, evidence,
links), triage, mitigation options (roll back to the last green artefact, expedited retraining,
feature flags or prediction caps), root cause analysis and post-mortem actions, as a checklist
for the person on call. An existing file is never overwritten: a second incident of the same
alert on the same day gets ``-2``, then ``-3``.

:func:`incidents_from_alertmanager` reads Alertmanager's webhook payload; the collector's embedded
evaluator builds :class:`Incident` itself. Both go through :func:`write_incident`.

>>> from datetime import datetime, timezone
>>> incident = Incident(
...     alert="ModelRmseHigh", alert_id="3f2a", severity="critical",
...     started_at=datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc),
...     labels={"ml_model_name": "salary"}, summary="RMSE of model salary is 7.5k, above 7k")
>>> incident.slug, incident.file_name
('model-rmse-high-salary', '2024-05-01-model-rmse-high-salary.md')
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MAX_SUFFIX = 1000
_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class Incident:
    """What is known of a firing alert when the incident is opened."""

    alert: str
    alert_id: str
    severity: str
    started_at: datetime
    labels: Mapping[str, str] = field(default_factory=dict)
    summary: str = ""
    description: str = ""
    value: str | None = None
    """The evidence: the alert's value when it fired."""
    threshold: str | None = None
    """The condition breached, e.g. ``> 7000``."""
    dashboard_url: str | None = None
    runbook_url: str | None = None
    source_url: str | None = None
    """Where the alert came from (Prometheus's graph of the rule's expression)."""

    @property
    def model(self) -> str | None:
        return self.labels.get("ml_model_name")

    @property
    def slug(self) -> str:
        """``model-rmse-high-salary``: the alert in kebab case, then the model if any."""
        words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", self.alert)
        if self.model:
            words += f"-{self.model}"
        return re.sub(r"[^a-z0-9]+", "-", words.lower()).strip("-") or "alert"

    @property
    def file_name(self) -> str:
        return f"{self.started_at.astimezone(timezone.utc):%Y-%m-%d}-{self.slug}.md"


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"


def _link(url: str | None) -> str:
    return f"<{url}>" if url else "n/a"


def render_incident(incident: Incident, opened_at: datetime) -> str:
    """The incident file's Markdown."""
    about = [value for key, value in incident.labels.items() if key != "owner"]
    subject = f"model {incident.model}" if incident.model else " ".join(about) or "-"
    labels = ", ".join(f'`{key}="{value}"`' for key, value in sorted(incident.labels.items())) or "none"
    evidence = f"value `{incident.value}`" if incident.value is not None else "value n/a"
    if incident.threshold:
        evidence += f" (condition `{incident.threshold}`)"
    runbook = f"[the runbook's section]({incident.runbook_url})" if incident.runbook_url else "the runbook"
    return f"""# {incident.alert}: {subject} ({incident.severity})

{incident.summary}

| | |
|---|---|
| Alert | `{incident.alert}` |
| Alert ID | `{incident.alert_id}` |
| Severity | {incident.severity} |
| Model | {f"`{incident.model}`" if incident.model else "n/a"} |
| Fired at | {_utc(incident.started_at)} |
| Status | open |

## 1. Alert received

- **Summary:** {incident.summary or "n/a"}
- **Description:** {incident.description or "n/a"}
- **Evidence:** {evidence}
- **Labels:** {labels}
- **Dashboard:** {_link(incident.dashboard_url)}
- **Runbook:** {_link(incident.runbook_url)}
- **Source:** {_link(incident.source_url)}

## 2. Triage

Confirm whether the breach is real or due to upstream data issues; {runbook} lists
the panels and queries for this alert.

- [ ] Open the dashboard: does the breach hold over the last hours, or is it one window of few
      samples (few labels joined, little traffic)?
- [ ] Rule out upstream data issues: rejected records (`modeltel_receiver_rejected_total`),
      missing values (`ml_drift_missing_share`), a schema or pipeline change, late labels.
- [ ] What changed: model version (`ml_model_version`), a deploy, the traffic mix, a client?
- [ ] Verdict: real breach / upstream data issue / false alarm (then see 5).

Findings:

## 3. Mitigation

- [ ] Roll back to the last green model artefact (`artifacts/*.joblib`): the latest version whose
      metrics stayed inside their acceptance bands.
- [ ] Trigger expedited re-training with the most recent clean data.
- [ ] Apply feature flags or prediction caps if the issue is localized (one feature, segment or
      route).

Action taken (what, who, when):

## 4. Root cause analysis

What happened, why, and why it was not caught earlier:

## 5. Post-mortem actions

- [ ] Update thresholds in `collector-config/alerts.yaml`, then `modeltel alerts render`.
- [ ] Add tests that reproduce the failure.
- [ ] Extend logging or monitoring where evidence was missing.

## Timeline (UTC)

- {_utc(incident.started_at)}: `{incident.alert}` fired ({incident.severity}).
- {_utc(opened_at)}: incident opened.
"""


def write_incident(incident: Incident, directory: Path, opened_at: datetime | None = None) -> Path:
    """Create ``directory/YYYY-MM-DD-{slug}.md`` (or ``-2``, ``-3``, ... if taken); never overwrites."""
    directory.mkdir(parents=True, exist_ok=True)
    text = render_incident(incident, opened_at or datetime.now(timezone.utc))
    stem = incident.file_name.removesuffix(".md")
    for number in range(1, MAX_SUFFIX + 1):
        path = directory / (f"{stem}.md" if number == 1 else f"{stem}-{number}.md")
        try:
            with path.open("x", encoding="utf-8") as file:  # exclusive: fails if it exists
                file.write(text)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{directory} already holds {MAX_SUFFIX} incidents named {stem}*.md")


def parse_timestamp(text: str) -> datetime:
    """An RFC 3339 timestamp as Alertmanager writes it (nanoseconds allowed)."""
    match = _TIMESTAMP.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp")
    base, fraction, zone = match.groups()
    micros = (fraction or ".0")[1:7].ljust(6, "0")
    return datetime.fromisoformat(f"{base}.{micros}{'+00:00' if zone == 'Z' else zone}")


def _alert_id(alert: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    fingerprint = alert.get("fingerprint")
    if isinstance(fingerprint, str) and fingerprint:
        return fingerprint
    canonical = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def incidents_from_alertmanager(payload: Mapping[str, Any]) -> list[Incident]:
    """An incident per firing alert of an Alertmanager webhook payload (resolved ones are skipped)."""
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise ValueError("not an Alertmanager webhook payload: it has no 'alerts' list")
    incidents = []
    for index, alert in enumerate(alerts):
        if not isinstance(alert, dict) or alert.get("status", "firing") != "firing":
            continue
        labels = {str(k): str(v) for k, v in (alert.get("labels") or {}).items()}
        annotations = {str(k): str(v) for k, v in (alert.get("annotations") or {}).items()}
        try:
            started = parse_timestamp(str(alert.get("startsAt", "")))
        except ValueError as error:
            raise ValueError(f"alerts[{index}].startsAt: {error}") from None
        alert_id = _alert_id(alert, labels)
        name = labels.pop("alertname", "") or "UnnamedAlert"
        severity = labels.pop("severity", "unknown")
        incidents.append(
            Incident(
                alert=name,
                alert_id=alert_id,
                severity=severity,
                started_at=started,
                labels=labels,
                summary=annotations.get("summary", ""),
                description=annotations.get("description", ""),
                value=annotations.get("value"),
                threshold=annotations.get("threshold"),
                dashboard_url=annotations.get("dashboard_url"),
                runbook_url=annotations.get("runbook_url"),
                source_url=alert.get("generatorURL") or None,
            )
        )
    return incidents
