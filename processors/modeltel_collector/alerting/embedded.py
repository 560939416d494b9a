"""Embedded alerting: the collector evaluates ``alerts.yaml`` itself and notifies, without Prometheus.

Configured by the ``alerting`` section of the collector's configuration (off by default). Every
``interval`` a background thread reads the collector's metrics in-process, evaluates every
embedded policy (:mod:`.evaluator`), decides what to tell whom (:class:`Notifier`), hands the
messages to the delivery thread (:mod:`.notify`) and writes an incident file for each alert that
starts firing. Nothing here runs on the pipeline's threads, and a receiver that is down only
delays its own messages.

Notification rules (those of the rendered Alertmanager configuration, per alert rather than per
group):

- an alert is notified when it starts firing, then once more every ``cooldown`` while it keeps
  firing (Alertmanager's ``repeat_interval``), identified by its fingerprint (alert name and
  labels): one message per alert while it fires;
- a warning is not notified while the critical alert of the same name and labels fires
  (Alertmanager's inhibition, on the rendered ``equal`` labels);
- when a notified alert stops breaching, a resolved message goes to the same receivers.

The evaluator's own state is exported: ``modeltel.alerts.firing`` (gauge: firing alerts per
``alertname`` and ``severity``), ``modeltel.alerts.evaluations`` and
``modeltel.notifications.sent`` / ``modeltel.notifications.failed`` (counters per ``receiver``).
Range samples, adaptive histories, active alerts and what was notified are saved to
``<data_dir>/alerting.json`` on stop and taken up on start, so a restart neither re-notifies a
firing alert nor forgets an adaptive band's history.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from modeltel.semconv import (
    ALERT_EVALUATIONS_METRIC,
    ALERTS_FIRING_METRIC,
    NOTIFICATIONS_FAILED_METRIC,
    NOTIFICATIONS_SENT_METRIC,
)
from modeltel_collector.alerting.evaluator import Alert, Evaluation, Evaluator, MetricSource
from modeltel_collector.alerting.incidents import Incident, write_incident
from modeltel_collector.alerting.notify import (
    PAGERDUTY_EVENTS_URL,
    Deliverer,
    Delivery,
    Notice,
    Receiver,
    RetryPolicy,
    delivery,
    targets,
)
from modeltel_collector.alerting.policy import AlertPolicies
from modeltel_collector.alerting.promql import alert_expr, expression
from modeltel_collector.alerting.render import inhibit_equal
from modeltel_collector.config import Alerting

_logger = logging.getLogger(__name__)

STATE_FILE = "alerting.json"
STATE_VERSION = 1
STOP_TIMEOUT_S = 5.0


class Notifier:
    """Decides which alerts to notify: dedup by fingerprint, cooldown, inhibition, resolution."""

    def __init__(self, config: AlertPolicies, cooldown: float) -> None:
        self.cooldown = cooldown
        self._equal = inhibit_equal(config)
        self.notified: dict[str, float] = {}
        """Fingerprint → when its last firing message was sent."""

    def _inhibit_key(self, alert: Alert) -> tuple[str, ...]:
        return tuple(alert.labels.get(name, "") for name in self._equal)

    def inhibited(self, alert: Alert, evaluation: Evaluation) -> bool:
        """A warning whose critical (same ``equal`` labels) fires."""
        if alert.severity != "warning":
            return False
        key = self._inhibit_key(alert)
        return any(a.severity == "critical" and self._inhibit_key(a) == key for a in evaluation.firing)

    def decide(self, evaluation: Evaluation) -> list[Notice]:
        """The messages this evaluation calls for, resolved ones first."""
        now = evaluation.time
        notices = [
            Notice(alert, "resolved")
            for alert in evaluation.resolved
            if self.notified.pop(alert.fingerprint, None) is not None
        ]
        for alert in evaluation.firing:
            if self.inhibited(alert, evaluation):
                continue
            last = self.notified.get(alert.fingerprint)
            if last is None or now - last >= self.cooldown:
                self.notified[alert.fingerprint] = now
                notices.append(Notice(alert, "firing"))
        active = {alert.fingerprint for alert in evaluation.active}
        self.notified = {fp: at for fp, at in self.notified.items() if fp in active}
        return notices


def incident_of(alert: Alert) -> Incident:
    """The incident file's content for a firing alert (as ``modeltel alerts incident`` reads it
    from the webhook: the labels without ``alertname`` and ``severity``)."""
    labels = {k: v for k, v in alert.labels.items() if k not in ("alertname", "severity")}
    notes = alert.annotations
    return Incident(
        alert=alert.name,
        alert_id=alert.fingerprint,
        severity=alert.severity,
        started_at=datetime.fromtimestamp(alert.active_at, timezone.utc),
        labels=labels,
        summary=notes.get("summary", ""),
        description=notes.get("description", ""),
        value=notes.get("value"),
        threshold=notes.get("threshold"),
        dashboard_url=notes.get("dashboard_url"),
        runbook_url=notes.get("runbook_url"),
    )


class EmbeddedAlerting:
    """The evaluation loop, notifications, incidents and the evaluator's metrics."""

    def __init__(
        self,
        policies: AlertPolicies,
        options: Alerting,
        source: MetricSource,
        meter: Meter,
        *,
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policies = policies
        self.options = options
        self.source = source
        self.clock = clock
        self.interval = options.interval if options.interval is not None else policies.evaluation_interval
        cooldown = (
            options.cooldown if options.cooldown is not None else policies.notifications.repeat_interval
        )
        self.pagerduty_url: str = (
            options.pagerduty_url
            or policies.notifications.pagerduty_url  # as Alertmanager's global
            or PAGERDUTY_EVENTS_URL
        )
        self.evaluator = Evaluator(policies, self.interval)
        self.notifier = Notifier(policies, cooldown)
        retry = options.retry
        self.deliverer = Deliverer(
            RetryPolicy(retry.initial_interval, retry.max_interval, retry.max_elapsed_time),
            options.timeout,
            self._delivered,
        )
        self.state_path = state_dir / STATE_FILE if state_dir is not None else None
        self.incidents: list[Path] = []
        """Incident files written, oldest first."""
        self.evaluations = 0
        self._lock = threading.Lock()
        self._firing: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        meter.create_observable_gauge(
            ALERTS_FIRING_METRIC,
            callbacks=[self._observe_firing],
            unit="{alert}",
            description="Alerts firing in the collector's embedded evaluation, per alert name and severity.",
        )
        self._evaluations = meter.create_counter(
            ALERT_EVALUATIONS_METRIC, unit="{evaluation}", description="Evaluations of the alert policies."
        )
        self._sent = meter.create_counter(
            NOTIFICATIONS_SENT_METRIC,
            unit="{notification}",
            description="Notifications delivered, per receiver.",
        )
        self._failed = meter.create_counter(
            NOTIFICATIONS_FAILED_METRIC,
            unit="{notification}",
            description="Notifications given up on (after retries, or not retryable), per receiver.",
        )
        self._restore()

    # --- metrics -------------------------------------------------------------------------------

    def _observe_firing(self, options: CallbackOptions) -> list[Observation]:
        with self._lock:
            counts = dict(self._firing)
        return [
            Observation(count, {"alertname": alert, "severity": severity})
            for (alert, severity), count in sorted(counts.items())
        ]

    def _delivered(self, delivery: Delivery, sent: bool) -> None:
        counter = self._sent if sent else self._failed
        counter.add(1, {"receiver": delivery.target.receiver})

    # --- evaluation ----------------------------------------------------------------------------

    @property
    def receivers(self) -> tuple[Receiver, ...]:
        return self.options.receivers

    def evaluate(self, now: float | None = None) -> Evaluation:
        """Evaluate once on the current metrics; queue the messages; write the incidents."""
        now = self.clock() if now is None else now
        evaluation = self.evaluator.evaluate(self.source.samples(), now)
        for notice in self.notifier.decide(evaluation):
            for target in targets(
                self.policies,
                notice.alert,
                receivers=self.receivers,
                webhook_url=self.options.webhook_url,
                pagerduty_url=self.pagerduty_url,
            ):
                self.deliverer.submit(delivery(self.policies, target, notice))
        if self.options.incidents_dir is not None:
            for alert in evaluation.fired:
                if not self.notifier.inhibited(alert, evaluation):
                    self._open_incident(alert, self.options.incidents_dir)
        firing: dict[tuple[str, str], int] = {rule: 0 for rule in self._rule_names()}
        for alert in evaluation.firing:
            firing[(alert.name, alert.severity)] = firing.get((alert.name, alert.severity), 0) + 1
        with self._lock:
            self._firing = firing
            self.evaluations += 1
        self._evaluations.add(1)
        return evaluation

    def _rule_names(self) -> list[tuple[str, str]]:
        return [(policy.alert, severity) for policy, severity in self.evaluator.rules]

    def _open_incident(self, alert: Alert, directory: Path) -> None:
        try:
            path = write_incident(incident_of(alert), directory)
        except OSError as error:
            _logger.error("modeltel alerting: cannot write the incident of %s: %s", alert.name, error)
            return
        self.incidents.append(path)
        _logger.info("modeltel alerting: %s fired; incident %s", alert.name, path)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.evaluate()
            except Exception:  # the loop must outlive a bad snapshot
                _logger.exception("modeltel alerting: evaluation failed")
            next_at += self.interval
            now = time.monotonic()
            if next_at < now:  # an evaluation overran: skip the missed ones
                next_at = now + self.interval
            self._stop.wait(next_at - now)

    def start(self) -> EmbeddedAlerting:
        self.deliverer.start()
        self._thread = threading.Thread(target=self._run, name="modeltel-alerting", daemon=True)
        self._thread.start()
        _logger.info(
            "modeltel alerting: evaluating %d policies every %gs", len(self.evaluator.policies), self.interval
        )
        return self

    def stop(self) -> None:
        """Stop evaluating, save the state, give queued messages a last chance."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(10.0, self.interval))
        self._save()
        self.deliverer.stop(STOP_TIMEOUT_S)

    # --- state across restarts -------------------------------------------------------------------

    def _signatures(self) -> dict[str, str]:
        """What each policy's saved state depends on: its condition, thresholds and for."""
        signatures = {}
        for policy in self.evaluator.policies:
            parts = [expression(policy.condition), str(policy.for_)]
            parts += [alert_expr(policy, level) for _, level in policy.levels()]
            if policy.adaptive is not None:
                parts.append(str(policy.adaptive.window))
            signatures[policy.alert] = "\n".join(parts)
        return signatures

    def checkpoint(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "signatures": self._signatures(),
            "evaluator": self.evaluator.checkpoint(),
            "notified": dict(self.notifier.notified),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take up the state of policies whose condition, thresholds and ``for`` are unchanged."""
        if state.get("version") != STATE_VERSION:
            return
        saved = state.get("signatures", {})
        same = {name for name, signature in self._signatures().items() if saved.get(name) == signature}
        evaluator = state.get("evaluator", {})
        self.evaluator.restore(
            {
                "conditions": {k: v for k, v in evaluator.get("conditions", {}).items() if k in same},
                "histories": {k: v for k, v in evaluator.get("histories", {}).items() if k in same},
                "alerts": [entry for entry in evaluator.get("alerts", []) if entry.get("alert") in same],
            }
        )
        self.notifier.notified = {str(k): float(v) for k, v in state.get("notified", {}).items()}

    def _restore(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        try:
            self.restore(json.loads(self.state_path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as error:
            _logger.warning("modeltel alerting: ignoring unreadable %s (%s)", self.state_path, error)

    def _save(self) -> None:
        if self.state_path is None:
            return
        temporary = self.state_path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(self.checkpoint(), allow_nan=True))
            os.replace(temporary, self.state_path)
        except OSError as error:
            _logger.error("modeltel alerting: cannot save %s: %s", self.state_path, error)
