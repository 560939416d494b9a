"""Notifications of the embedded evaluator: routing, payloads, and delivery with retry.

Routing is the rendered Alertmanager configuration's (:mod:`.render`), so both modes notify the
same people: every alert goes to the generic webhook; then to the team of the alert's model
(``models`` in ``alerts.yaml``) or else of its ``owner``: a warning to the team's Slack channel, a
critical alert to its Slack channel and, when the team has ``pagerduty``, to PagerDuty.

Payloads:

- webhook: Alertmanager's webhook JSON (``version: "4"``, one alert per message, its
  ``fingerprint`` computed as Alertmanager computes it), so ``modeltel alerts incident`` and
  anything else that reads Alertmanager's webhooks take it as it is;
- Slack: an incoming-webhook message, ``text`` (the fallback) and ``blocks`` with the summary
  linked to the dashboard, the description, value and condition, and Runbook and Dashboard
  buttons;
- PagerDuty: an Events API v2 ``trigger`` or ``resolve`` with ``dedup_key`` the alert's
  fingerprint, the routing key read from its secret file, and ``links`` to the runbook and
  dashboard.

Secrets (the Slack webhook URL, the PagerDuty routing key) are read from their files when a
message is sent, so a rotated secret is picked up, and are never logged: log lines name the
receiver and the alert, never a URL or a body.

:class:`Deliverer` sends from its own thread: a message that meets a connection error, a 5xx or a
429 is retried with exponential backoff (``Retry-After`` honoured) until ``max_elapsed_time``;
messages about the same alert to the same receiver keep their order (a resolve never overtakes
its trigger), and other messages do not wait behind one being retried.
"""

from __future__ import annotations

import heapq
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from modeltel_collector.alerting.evaluator import Alert
from modeltel_collector.alerting.policy import AlertPolicies
from modeltel_collector.alerting.render import WEBHOOK_RECEIVER

_logger = logging.getLogger(__name__)

Receiver = Literal["slack", "pagerduty", "webhook"]
RECEIVERS: tuple[Receiver, ...] = ("slack", "pagerduty", "webhook")
Status = Literal["firing", "resolved"]
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
ZERO_TIME = "0001-01-01T00:00:00Z"
"""``endsAt`` of a firing alert in Alertmanager's webhook."""
PAGERDUTY_SUMMARY_MAX = 1024
CLIENT = "modeltel"
THREAD_NAME = "modeltel-notify"
HTTP_LOGGERS = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy")
"""httpx and httpcore log request URLs (a Slack webhook URL is a secret): not on the delivery thread."""


class _NotOnDeliveryThread(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != THREAD_NAME


_QUIET = _NotOnDeliveryThread()


def rfc3339(seconds: float) -> str:
    """``2024-05-01T12:00:00.250Z``."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Notice:
    """A message to send about one alert: it fires (for the first time, or again after the
    cooldown) or it resolved."""

    alert: Alert
    status: Status


# --- routing ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where one message goes: a receiver of the rendered Alertmanager configuration."""

    receiver: Receiver
    name: str
    """The Alertmanager receiver's name: ``webhook``, ``salary-ml-critical``, ``salary-ml-warning``."""
    url: str | None = None
    """The webhook's or PagerDuty's endpoint."""
    url_file: str | None = None
    """Slack: the file holding the incoming webhook's URL."""
    key_file: str | None = None
    """PagerDuty: the file holding the routing key."""
    channel: str | None = None


def team_of(config: AlertPolicies, labels: Mapping[str, str]) -> str:
    """The team notified: the alert's model's owner (``models``), else the alert's ``owner``."""
    model = labels.get("ml_model_name")
    if model is not None and model in config.models:
        return config.models[model].owner
    return labels["owner"]


def targets(
    config: AlertPolicies,
    alert: Alert,
    *,
    receivers: tuple[Receiver, ...] = RECEIVERS,
    webhook_url: str | None = None,
    pagerduty_url: str = PAGERDUTY_EVENTS_URL,
) -> list[Target]:
    """The receivers of ``alert`` (among the enabled ``receivers``), as Alertmanager routes it."""
    notifications = config.notifications
    found: list[Target] = []
    if "webhook" in receivers:
        found.append(Target("webhook", WEBHOOK_RECEIVER, url=webhook_url or notifications.webhook_url))
    name = team_of(config, alert.labels)
    team = config.teams[name]
    receiver = f"{name}-{alert.severity}"
    if "slack" in receivers:
        url_file = team.slack_api_url_file or notifications.slack_api_url_file
        found.append(Target("slack", receiver, url_file=url_file, channel=team.slack_channel))
    if "pagerduty" in receivers and alert.severity == "critical" and team.pagerduty:
        key_file = team.pagerduty_routing_key_file or notifications.pagerduty_routing_key_file
        found.append(Target("pagerduty", receiver, url=pagerduty_url, key_file=key_file))
    return found


# --- payloads -----------------------------------------------------------------------------------------


def _ends_at(alert: Alert, status: Status) -> str:
    return rfc3339(alert.resolved_at) if status == "resolved" and alert.resolved_at else ZERO_TIME


def webhook_payload(config: AlertPolicies, notice: Notice, receiver: str) -> dict[str, Any]:
    """Alertmanager's webhook JSON (version 4) for one alert."""
    alert, status = notice.alert, notice.status
    labels = dict(alert.labels)
    annotations = dict(alert.annotations)
    group = {name: labels[name] for name in config.notifications.group_by if name in labels}
    group_key = ", ".join(f"{name}={json.dumps(value)}" for name, value in group.items())
    return {
        "version": "4",
        "groupKey": f"{{}}/{{}}:{{{group_key}}}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": annotations,
                "startsAt": rfc3339(alert.active_at),
                "endsAt": _ends_at(alert, status),
                "generatorURL": "",
                "fingerprint": alert.fingerprint,
            }
        ],
    }


def _slack_escape(text: str) -> str:
    """Slack's mrkdwn escapes: ``&``, ``<`` and ``>``."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def title(notice: Notice) -> str:
    """``[FIRING] ModelRmseHigh · model salary (critical)``, as the rendered Slack title."""
    alert = notice.alert
    model = alert.labels.get("ml_model_name")
    about = f" · model {model}" if model else ""
    return f"[{notice.status.upper()}] {alert.name}{about} ({alert.severity})"


def slack_payload(notice: Notice, channel: str | None) -> dict[str, Any]:
    """A Slack incoming-webhook message: fallback text and blocks with links."""
    alert = notice.alert
    notes = alert.annotations
    heading = title(notice)
    summary = notes.get("summary", "")
    resolved = " (resolved)" if notice.status == "resolved" else ""
    dashboard, runbook = notes.get("dashboard_url", ""), notes.get("runbook_url", "")
    details = (
        f"{_slack_escape(notes.get('description', ''))}\n"
        f"value `{_slack_escape(notes.get('value', ''))}`, "
        f"condition `{_slack_escape(notes.get('threshold', ''))}`"
    )
    owner = alert.labels.get("owner", "-")
    context = f"alert id `{alert.fingerprint}` · since {rfc3339(alert.active_at)} · owner {owner}"
    buttons = [
        {"type": "button", "text": {"type": "plain_text", "text": text}, "url": url}
        for text, url in (("Runbook", runbook), ("Dashboard", dashboard))
        if url
    ]
    blocks: list[dict[str, Any]] = [
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": f"*<{dashboard}|{_slack_escape(heading)}>*\n{_slack_escape(summary)}{resolved}",
            },
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": details}},
    ]
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    payload: dict[str, Any] = {"text": _slack_escape(f"{heading}: {summary}{resolved}"), "blocks": blocks}
    if channel:
        payload["channel"] = channel
    return payload


def pagerduty_payload(config: AlertPolicies, notice: Notice, routing_key: str) -> dict[str, Any]:
    """A PagerDuty Events API v2 event: ``trigger`` while firing, ``resolve`` once resolved."""
    alert = notice.alert
    notes = alert.annotations
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger" if notice.status == "firing" else "resolve",
        "dedup_key": alert.fingerprint,
    }
    if notice.status == "resolved":
        return event
    model = alert.labels.get("ml_model_name")
    details: dict[str, Any] = {
        "description": notes.get("description", ""),
        "value": notes.get("value", ""),
        "condition": notes.get("threshold", ""),
        "labels": dict(alert.labels),
    }
    event.update(
        payload={
            "summary": f"{title(notice)}: {notes.get('summary', '')}"[:PAGERDUTY_SUMMARY_MAX],
            "source": f"modeltel-collector@{socket.gethostname()}",
            "severity": alert.severity,
            "timestamp": rfc3339(alert.active_at),
            "component": model or alert.name,
            "group": alert.policy.group,
            "class": alert.name,
            "custom_details": details,
        },
        client=CLIENT,
        client_url=config.grafana_url,
        links=[
            {"href": notes[key], "text": text}
            for key, text in (("runbook_url", "Runbook"), ("dashboard_url", "Dashboard"))
            if notes.get(key)
        ],
    )
    return event


# --- delivery ----------------------------------------------------------------------------------------


class DeliveryError(Exception):
    """A message could not be sent; ``retry_after`` (seconds) when the failure is worth retrying."""

    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retryable = retryable
        self.retry_after = retry_after


def read_secret(path: str) -> str:
    """A secret file's content, stripped; :class:`DeliveryError` naming the file (not its content)."""
    try:
        secret = Path(path).read_text().strip()
    except OSError as error:
        raise DeliveryError(f"cannot read secret file {path}: {error.strerror}", retryable=False) from None
    if not secret:
        raise DeliveryError(f"secret file {path} is empty", retryable=False)
    return secret


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header: delay in seconds, or an HTTP date; None if absent or unreadable.

    >>> retry_after_seconds("3"), retry_after_seconds(None), retry_after_seconds("soon")
    (3.0, None, None)
    >>> retry_after_seconds("Wed, 01 May 2024 12:00:10 GMT", now=1714564800.0)
    10.0
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryPolicy:
    initial_interval: float = 1.0
    max_interval: float = 60.0
    max_elapsed_time: float = 600.0

    def backoff(self, attempt: int) -> float:
        """The wait after the ``attempt``-th failed attempt (1-based): doubling, capped."""
        return float(min(self.max_interval, self.initial_interval * 2 ** (attempt - 1)))


@dataclass
class Delivery:
    """One message to one receiver."""

    target: Target
    notice: Notice
    body: Callable[[Target], tuple[str, dict[str, Any]]]
    """Builds (URL, JSON body) when sent: reads the secret files then."""
    created: float = field(default_factory=time.monotonic)
    attempts: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        """Messages of one key are sent in order."""
        return (self.target.receiver, self.target.name, self.notice.alert.fingerprint)

    def describe(self) -> str:
        """For logs: never a URL or a body (they may hold secrets)."""
        alert = self.notice.alert
        return f"{self.target.receiver} ({self.target.name}) message: {alert.name} {self.notice.status}"


def post(client: httpx.Client, url: str, body: Mapping[str, Any]) -> None:
    """POST ``body`` as JSON; :class:`DeliveryError` unless the answer is 2xx."""
    try:
        response = client.post(url, json=body)
    except httpx.TransportError as error:
        raise DeliveryError(type(error).__name__, retryable=True) from None
    if response.is_success:
        return
    retryable = response.status_code == 429 or response.status_code >= 500
    raise DeliveryError(
        f"HTTP {response.status_code}",
        retryable=retryable,
        retry_after=retry_after_seconds(response.headers.get("retry-after")) if retryable else None,
    )


class Deliverer:
    """Sends :class:`Delivery` items from a background thread, retrying as :class:`RetryPolicy` says.

    ``on_result(delivery, sent)`` is called once per message: sent, or given up on.
    """

    def __init__(
        self,
        retry: RetryPolicy,
        timeout: float,
        on_result: Callable[[Delivery, bool], None] = lambda delivery, sent: None,
    ) -> None:
        self.retry = retry
        self.timeout = timeout
        self._on_result = on_result
        self._lock = threading.Condition()
        self._queues: dict[tuple[str, str, str], deque[Delivery]] = {}
        self._heap: list[tuple[float, int, tuple[str, str, str]]] = []
        self._sequence = 0
        self._in_flight = 0
        self._closing = False
        self._deadline = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> Deliverer:
        for name in HTTP_LOGGERS:
            logger = logging.getLogger(name)
            if _QUIET not in logger.filters:
                logger.addFilter(_QUIET)
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()
        return self

    def _schedule(self, key: tuple[str, str, str], due: float) -> None:
        self._sequence += 1
        heapq.heappush(self._heap, (due, self._sequence, key))
        self._lock.notify_all()

    def submit(self, delivery: Delivery) -> None:
        """Queue a message; it is sent after any earlier one of the same alert and receiver."""
        with self._lock:
            if self._closing:
                _logger.warning("modeltel alerting: stopping, %s not sent", delivery.describe())
                self._on_result(delivery, False)
                return
            queue = self._queues.setdefault(delivery.key, deque())
            queue.append(delivery)
            if len(queue) == 1:
                self._schedule(delivery.key, time.monotonic())

    @property
    def pending(self) -> int:
        with self._lock:
            return sum(len(queue) for queue in self._queues.values())

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued message is sent or given up on; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queues or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
            return True

    def stop(self, timeout: float = 5.0) -> None:
        """Try every queued message once more (no further retries) within ``timeout``, then stop."""
        with self._lock:
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)
        with self._lock:
            dropped = [delivery for queue in self._queues.values() for delivery in queue]
            self._queues.clear()
            self._heap.clear()
        for delivery in dropped:
            _logger.warning("modeltel alerting: stopped before sending %s", delivery.describe())
            self._on_result(delivery, False)

    def _next(self) -> tuple[tuple[str, str, str], Delivery] | None:
        """The next message due (waiting for it), or None when the thread should end."""
        with self._lock:
            while True:
                now = time.monotonic()
                if self._closing and (not self._heap or now >= self._deadline):
                    return None
                if self._heap and (self._closing or self._heap[0][0] <= now):
                    _, _, key = heapq.heappop(self._heap)
                    self._in_flight += 1
                    return key, self._queues[key][0]
                self._lock.wait(self._heap[0][0] - now if self._heap else None)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
            while (item := self._next()) is not None:
                key, delivery = item
                self._attempt(client, key, delivery)

    def _attempt(self, client: httpx.Client, key: tuple[str, str, str], delivery: Delivery) -> None:
        delivery.attempts += 1
        retry_at: float | None = None
        try:
            url, body = delivery.body(delivery.target)
            post(client, url, body)
            sent = True
        except DeliveryError as error:
            sent = False
            now = time.monotonic()
            delay = self.retry.backoff(delivery.attempts)
            if error.retry_after is not None:
                delay = max(delay, error.retry_after)
            gives_up = (
                not error.retryable
                or self._closing
                or now + delay - delivery.created > self.retry.max_elapsed_time
            )
            if gives_up:
                _logger.error(
                    "modeltel alerting: %s failed after %d attempt(s): %s",
                    delivery.describe(),
                    delivery.attempts,
                    error,
                )
            else:
                retry_at = now + delay
                _logger.warning(
                    "modeltel alerting: %s failed (%s), attempt %d; retrying in %.1f s",
                    delivery.describe(),
                    error,
                    delivery.attempts,
                    delay,
                )
        except Exception:  # a bug building a body must not kill the thread
            sent = False
            _logger.exception("modeltel alerting: %s could not be built", delivery.describe())
        if retry_at is None:
            self._on_result(delivery, sent)
        with self._lock:
            self._in_flight -= 1
            queue = self._queues[key]
            if retry_at is not None:
                self._schedule(key, retry_at)
            else:
                queue.popleft()
                if queue:
                    self._schedule(key, time.monotonic())
                else:
                    del self._queues[key]
            self._lock.notify_all()


def delivery(config: AlertPolicies, target: Target, notice: Notice) -> Delivery:
    """The message ``notice`` to ``target`` in the receiver's format."""

    def body(target: Target) -> tuple[str, dict[str, Any]]:
        if target.receiver == "webhook":
            assert target.url is not None
            return target.url, webhook_payload(config, notice, target.name)
        if target.receiver == "slack":
            assert target.url_file is not None
            return read_secret(target.url_file), slack_payload(notice, target.channel)
        assert target.url is not None and target.key_file is not None
        return target.url, pagerduty_payload(config, notice, read_secret(target.key_file))

    return Delivery(target, notice, body)
