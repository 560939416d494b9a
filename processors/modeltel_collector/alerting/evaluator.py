"""The embedded evaluator: the policies of ``alerts.yaml`` on the collector's own metrics, in-process.

The collector reads its metrics as Prometheus would scrape them: :class:`RegistrySource` is an
extra ``PrometheusMetricReader`` on the collector's ``MeterProvider`` with a private registry, so
the names and labels are exactly those of ``/metrics`` (``ml.performance.rmse`` →
``ml_performance_rmse``, ``ml.model.name`` → ``ml_model_name``, counters with ``_total``,
histograms as ``_bucket`` (with ``le``), ``_count`` and ``_sum``), whatever the exporter's naming
rules. Each evaluation reads one snapshot and computes every embedded policy's condition as its
PromQL (:mod:`.promql`) would:

- ``max``/``min``/``avg``/``sum`` by the ``by`` labels of the selected series;
- ``rate``: the per-second rate of each selected counter over ``range``, from the samples of the
  previous evaluations kept for that range (counter resets handled, extrapolated to the range's
  edges as Prometheus's ``rate`` does), summed by ``by``;
- ``quantile``: the rates of the ``*_bucket`` series summed by ``le`` and ``by``, then
  :func:`histogram_quantile` (Prometheus's linear interpolation within the bucket);
- ``ratio``: the summed rate of the series also matching ``numerator`` over that of all of them.

A condition with no result (fewer than two samples in the range, a histogram without a ``+Inf``
bucket, ``0 / 0``) gives no series, so no alert, as in Prometheus.

Thresholds: a static level compares the value with the policy's operator; an adaptive one keeps
each series' own values (one per evaluation, at most ``window / interval`` of them) and fires
while the value lies more than ``k · max(stddev, min_stddev)`` from the mean of the window (the
current value included, stddev the population standard deviation, as ``avg_over_time`` and
``stddev_over_time`` of the recorded series), once ``min_samples`` values are recorded.

Each (policy, severity) is a rule and each of its result series an alert, with the labels
Prometheus gives it: ``alertname``, the ``by`` labels (empty ones left out), ``severity`` and
``owner``. A breaching alert is *pending* from the evaluation it is first seen (``active_at``) and
*firing* once it has breached for the policy's ``for`` (at once when ``for`` is 0); when it stops
breaching a pending alert is dropped and a firing one *resolved*. Policies with
``embedded: false`` are skipped.

>>> histogram_quantile(0.5, [(0.1, 0.0), (0.5, 10.0), (1.0, 20.0), (math.inf, 20.0)])
0.5
>>> histogram_quantile(0.75, [(0.1, 0.0), (0.5, 10.0), (1.0, 20.0), (math.inf, 20.0)])
0.75
"""

from __future__ import annotations

import itertools
import logging
import math
import operator
import statistics
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from prometheus_client import CollectorRegistry

from modeltel_collector.alerting.policy import AlertPolicies, Condition, Policy, Severity
from modeltel_collector.alerting.text import condition_text, fill

_logger = logging.getLogger(__name__)

LabelKey = tuple[tuple[str, str], ...]
"""A label set as a sorted tuple of (name, value): hashable, canonical."""

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
FNV_OFFSET = 14695981039346656037
FNV_PRIME = 1099511628211
LABEL_SEPARATOR = 0xFF


def label_key(labels: Mapping[str, str]) -> LabelKey:
    return tuple(sorted(labels.items()))


def fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's fingerprint of an alert's labels: FNV-1a 64 over the sorted names and values.

    >>> int(fingerprint({"name": "garland, briggs", "fear": "love is not enough"}), 16)  # Prometheus's test
    5799056148416392346
    """
    digest = FNV_OFFSET
    for name, value in sorted(labels.items()):
        for part in (name, value):
            for byte in part.encode():
                digest = ((digest ^ byte) * FNV_PRIME) % 2**64
            digest = ((digest ^ LABEL_SEPARATOR) * FNV_PRIME) % 2**64
    return f"{digest:016x}"


# --- reading the collector's metrics --------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One Prometheus sample: series name, labels, value."""

    name: str
    labels: Mapping[str, str]
    value: float


class MetricSource(Protocol):
    def samples(self) -> list[Sample]:
        """The current value of every series."""
        ...


class RegistrySource:
    """The metrics of a ``MeterProvider`` as its Prometheus exporter exposes them, read in-process.

    Add :attr:`reader` to the provider's ``metric_readers``; each :meth:`samples` collects once.
    """

    def __init__(self) -> None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        self.registry = CollectorRegistry(auto_describe=False)
        self.reader = PrometheusMetricReader(registry=self.registry, disable_target_info=True)

    def samples(self) -> list[Sample]:
        return [
            Sample(sample.name, sample.labels, float(sample.value))
            for family in self.registry.collect()
            for sample in family.samples
        ]


# --- PromQL functions -------------------------------------------------------------------------------


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """Prometheus's ``histogram_quantile`` of cumulative ``(upper bound, count)`` buckets.

    Buckets of the same bound are added up and counts forced monotonic; NaN without a ``+Inf``
    bucket, with fewer than two buckets or no observations. The quantile is interpolated
    linearly within its bucket (from 0 for the first bucket, unless its bound is ≤ 0); a rank in
    the ``+Inf`` bucket gives the highest finite bound.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: dict[float, float] = {}
    for bound, count in buckets:
        merged[bound] = merged.get(bound, 0.0) + count
    ordered = sorted(merged.items())
    if not ordered or not math.isinf(ordered[-1][0]) or ordered[-1][0] < 0:
        return math.nan
    highest = -math.inf
    monotonic = []
    for bound, count in ordered:
        highest = max(highest, count)
        monotonic.append((bound, highest))
    if len(monotonic) < 2:
        return math.nan
    observations = monotonic[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    index = next((i for i in range(len(monotonic) - 1) if monotonic[i][1] >= rank), len(monotonic) - 1)
    if index == len(monotonic) - 1:
        return monotonic[-2][0]
    if index == 0 and monotonic[0][0] <= 0:
        return monotonic[0][0]
    start, end, count = 0.0, monotonic[index][0], monotonic[index][1]
    if index > 0:
        start = monotonic[index - 1][0]
        count -= monotonic[index - 1][1]
        rank -= monotonic[index - 1][1]
    return start + (end - start) * (rank / count)


def extrapolated_rate(points: Sequence[tuple[float, float]], now: float, range_s: float) -> float | None:
    """Prometheus's ``rate`` of a counter's ``(time, value)`` points in ``(now - range_s, now]``.

    The increase between the first and last point (a drop is a counter reset), extrapolated to
    the range's edges when they lie within 1.1 average intervals of the points (else by half an
    interval), never below zero at the start; per second of ``range_s``. None with fewer than two
    points.
    """
    start = now - range_s
    inside = [(t, v) for t, v in points if start < t <= now]
    if len(inside) < 2:
        return None
    increase = inside[-1][1] - inside[0][1]
    for (_, previous), (_, current) in itertools.pairwise(inside):
        if current < previous:
            increase += previous
    sampled = inside[-1][0] - inside[0][0]
    if sampled <= 0:
        return None
    to_start = inside[0][0] - start
    to_end = now - inside[-1][0]
    average = sampled / (len(inside) - 1)
    first = inside[0][1]
    if increase > 0 and first >= 0:
        to_start = min(to_start, sampled * (first / increase))
    threshold = average * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average / 2
    interval += to_end if to_end < threshold else average / 2
    return increase * (interval / sampled) / range_s


# --- conditions ------------------------------------------------------------------------------------


def _group(labels: Mapping[str, str], by: Sequence[str]) -> LabelKey:
    """The output labels of ``... by (by)``: the ``by`` labels the series has (empty = absent)."""
    return tuple((name, labels[name]) for name in sorted(by) if labels.get(name, ""))


class _Recent:
    """Each series' (time, value) points of the last ``span`` seconds, at most ``maxlen`` each."""

    def __init__(self, span: float, maxlen: int | None) -> None:
        self.span = span
        self.maxlen = maxlen
        self.series: dict[LabelKey, deque[tuple[float, float]]] = {}

    def record(self, now: float, values: Iterable[tuple[LabelKey, float]], *, keep_first: bool) -> None:
        """Append ``now``'s values; at a time already recorded keep the first value or the last."""
        for key, value in values:
            points = self.series.get(key)
            if points is None:
                points = self.series[key] = deque(maxlen=self.maxlen)
            if points and points[-1][0] >= now:
                if keep_first:
                    continue
                points.pop()
            points.append((now, value))
        horizon = now - self.span
        for key in list(self.series):
            points = self.series[key]
            while points and points[0][0] <= horizon:
                points.popleft()
            if not points:
                del self.series[key]

    def to_state(self) -> list[Any]:
        return [[list(map(list, key)), list(map(list, points))] for key, points in self.series.items()]

    def load_state(self, state: Sequence[Any]) -> None:
        for key, points in state:
            restored: deque[tuple[float, float]] = deque(maxlen=self.maxlen)
            restored.extend((float(t), float(v)) for t, v in points)
            self.series[tuple((str(k), str(v)) for k, v in key)] = restored


class _RangeBuffer(_Recent):
    """The selected series' samples of the last ``range`` seconds, for ``rate``."""

    def __init__(self, range_s: float, interval: float) -> None:
        super().__init__(range_s, int(range_s / interval) + 2 if interval > 0 else None)

    def add(self, now: float, samples: Iterable[Sample]) -> None:
        # Evaluated twice at one time: the first sample counts.
        self.record(now, ((label_key(sample.labels), sample.value) for sample in samples), keep_first=True)

    def rates(self, now: float) -> dict[LabelKey, float]:
        rates = {}
        for key, points in self.series.items():
            rate = extrapolated_rate(points, now, self.span)
            if rate is not None:
                rates[key] = rate
        return rates


def _sum_by(values: Mapping[LabelKey, float], by: Sequence[str]) -> dict[LabelKey, float]:
    sums: dict[LabelKey, float] = {}
    for key, value in values.items():
        group = _group(dict(key), by)
        sums[group] = sums.get(group, 0.0) + value
    return sums


_REDUCERS: dict[str, Callable[[list[float]], float]] = {
    "max": max,
    "min": min,
    "sum": math.fsum,
    "avg": statistics.fmean,
}


def _divide(numerator: float, denominator: float) -> float:
    if denominator == 0:
        return math.nan if numerator == 0 else math.copysign(math.inf, numerator)
    return numerator / denominator


class ConditionState:
    """One condition's computation, with the range samples it needs between evaluations."""

    def __init__(self, condition: Condition, interval: float) -> None:
        self.condition = condition
        self.buffer = None if condition.is_gauge else _RangeBuffer(condition.range_seconds, interval)

    def evaluate(self, samples: Sequence[Sample], now: float) -> dict[LabelKey, float]:
        """The condition's value per ``by`` group (NaN results left out)."""
        condition = self.condition
        selected = [s for s in samples if s.name == condition.metric and condition.selects(s.labels)]
        if self.buffer is None:
            groups: dict[LabelKey, list[float]] = {}
            for sample in selected:
                groups.setdefault(_group(sample.labels, condition.by), []).append(sample.value)
            reduce = _REDUCERS[condition.aggregation]
            result = {group: reduce(values) for group, values in groups.items()}
        else:
            self.buffer.add(now, selected)
            rates = self.buffer.rates(now)
            if condition.aggregation == "rate":
                result = _sum_by(rates, condition.by)
            elif condition.aggregation == "quantile":
                result = self._quantiles(rates)
            else:
                numerator = {
                    key: rate for key, rate in rates.items() if condition.selects(dict(key), numerator=True)
                }
                top, bottom = _sum_by(numerator, condition.by), _sum_by(rates, condition.by)
                result = {group: _divide(top[group], bottom[group]) for group in top if group in bottom}
        return {group: value for group, value in result.items() if not math.isnan(value)}

    def _quantiles(self, rates: Mapping[LabelKey, float]) -> dict[LabelKey, float]:
        assert self.condition.quantile is not None
        buckets: dict[LabelKey, list[tuple[float, float]]] = {}
        for key, rate in rates.items():
            labels = dict(key)
            try:
                bound = float(labels.get("le", ""))
            except ValueError:
                continue  # not a bucket series
            buckets.setdefault(_group(labels, self.condition.by), []).append((bound, rate))
        return {
            group: histogram_quantile(self.condition.quantile, points) for group, points in buckets.items()
        }

    def checkpoint(self) -> dict[str, Any]:
        if self.buffer is None:
            return {}
        return {"series": self.buffer.to_state()}

    def restore(self, state: Mapping[str, Any]) -> None:
        if self.buffer is not None:
            self.buffer.load_state(state.get("series", []))


# --- alerts ----------------------------------------------------------------------------------------

AlertState = Literal["pending", "firing", "resolved"]


@dataclass(frozen=True)
class Alert:
    """One alert of one rule (policy and severity), as Prometheus would send it."""

    policy: Policy
    severity: Severity
    level: float
    """The static threshold, or k of an adaptive band."""
    labels: Mapping[str, str]
    """``alertname``, the ``by`` labels, ``severity``, ``owner``."""
    value: float
    state: AlertState
    active_at: float
    """When it was first seen breaching (Prometheus's ``activeAt``, the webhook's ``startsAt``)."""
    fired_at: float | None = None
    resolved_at: float | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.policy.alert

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)

    @property
    def group_labels(self) -> dict[str, str]:
        """The labels of ``condition.by`` (those the alert has)."""
        return {name: self.labels[name] for name in self.policy.condition.by if name in self.labels}


def alert_annotations(
    config: AlertPolicies,
    policy: Policy,
    severity: Severity,
    level: float,
    labels: Mapping[str, str],
    value: float,
) -> dict[str, str]:
    """The annotations the rendered Prometheus rule gives the alert."""
    return {
        "summary": fill(policy.summary, policy, severity, level, labels, value),
        "description": fill(policy.description, policy, severity, level, labels, value),
        "value": f"{value:.6g}",
        "threshold": condition_text(policy, level),
        "runbook_url": config.runbook_link(policy),
        "dashboard_url": config.dashboard_url(policy, labels),
    }


class _History(_Recent):
    """An adaptive policy's values per series over its window (at most ``maxlen`` each)."""

    def stats(self, key: LabelKey) -> tuple[int, float, float]:
        """(count, mean, population standard deviation) of the series' recorded values."""
        values = [value for _, value in self.series.get(key, ())]
        if not values:
            return 0, math.nan, math.nan
        return len(values), statistics.fmean(values), statistics.pstdev(values)


@dataclass
class _Rule:
    policy: Policy
    severity: Severity
    level: float
    active: dict[LabelKey, Alert] = field(default_factory=dict)
    """Pending and firing alerts by their labels."""


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation found."""

    time: float
    active: list[Alert]
    """Every pending and firing alert."""
    fired: list[Alert]
    """Alerts that became firing in this evaluation."""
    resolved: list[Alert]
    """Firing alerts that stopped breaching in this evaluation."""
    errors: list[str] = field(default_factory=list)
    """Policies that could not be evaluated, with the reason."""

    @property
    def firing(self) -> list[Alert]:
        return [alert for alert in self.active if alert.state == "firing"]


class Evaluator:
    """Evaluates the embedded policies on successive metric snapshots; keeps what that needs."""

    def __init__(self, config: AlertPolicies, interval: float | None = None) -> None:
        self.config = config
        self.interval = interval if interval is not None else config.evaluation_interval
        self.policies = [policy for policy in config.policies if policy.embedded]
        self._conditions = {p.alert: ConditionState(p.condition, self.interval) for p in self.policies}
        self._histories = {
            p.alert: _History(p.adaptive.window, int(p.adaptive.window / self.interval) + 2)
            for p in self.policies
            if p.adaptive is not None
        }
        self._rules = [
            _Rule(policy, severity, level) for policy in self.policies for severity, level in policy.levels()
        ]

    @property
    def rules(self) -> list[tuple[Policy, Severity]]:
        return [(rule.policy, rule.severity) for rule in self._rules]

    def values(self, policy: Policy, samples: Sequence[Sample], now: float) -> dict[LabelKey, float]:
        """The policy's condition now (recorded in its history when adaptive)."""
        values = self._conditions[policy.alert].evaluate(samples, now)
        history = self._histories.get(policy.alert)
        if history is not None:
            history.record(now, values.items(), keep_first=False)  # the latest value counts
        return values

    def _breaches(self, rule: _Rule, values: Mapping[LabelKey, float]) -> dict[LabelKey, float]:
        policy = rule.policy
        if policy.static is not None:
            compare = _COMPARE[policy.static.operator]
            return {key: value for key, value in values.items() if compare(value, rule.level)}
        adaptive = policy.adaptive
        assert adaptive is not None
        history = self._histories[policy.alert]
        breaches = {}
        for key, value in values.items():
            count, mean, stddev = history.stats(key)
            if count < adaptive.min_samples:
                continue
            band = rule.level * max(stddev, adaptive.min_stddev)
            above, below = value > mean + band, value < mean - band
            if {"above": above, "below": below, "outside": above or below}[adaptive.direction]:
                breaches[key] = value
        return breaches

    def evaluate(self, samples: Sequence[Sample], now: float) -> Evaluation:
        """One evaluation at ``now`` (seconds since the epoch) of a snapshot of every series."""
        values: dict[str, dict[LabelKey, float]] = {}
        errors = []
        for policy in self.policies:
            try:
                values[policy.alert] = self.values(policy, samples, now)
            except Exception as error:  # one broken policy must not stop the others
                _logger.exception("modeltel alerting: cannot evaluate %s", policy.alert)
                errors.append(f"{policy.alert}: {error}")
        fired: list[Alert] = []
        resolved: list[Alert] = []
        for rule in self._rules:
            if rule.policy.alert not in values:
                continue
            breaches = self._breaches(rule, values[rule.policy.alert])
            for key in list(rule.active):
                if key not in breaches:
                    alert = rule.active.pop(key)
                    if alert.state == "firing":
                        resolved.append(replace(alert, state="resolved", resolved_at=now))
            for key, value in breaches.items():
                labels = {
                    "alertname": rule.policy.alert,
                    **dict(key),
                    "severity": rule.severity,
                    "owner": rule.policy.owner,
                }
                previous = rule.active.get(key)
                state: AlertState = "pending" if previous is None else previous.state
                active_at = now if previous is None else previous.active_at
                fired_at = None if previous is None else previous.fired_at
                if state == "pending" and now - active_at >= rule.policy.for_:
                    state, fired_at = "firing", now
                alert = Alert(
                    policy=rule.policy,
                    severity=rule.severity,
                    level=rule.level,
                    labels=labels,
                    value=value,
                    state=state,
                    active_at=active_at,
                    fired_at=fired_at,
                    annotations=alert_annotations(
                        self.config, rule.policy, rule.severity, rule.level, labels, value
                    ),
                )
                rule.active[key] = alert
                if state == "firing" and (previous is None or previous.state == "pending"):
                    fired.append(alert)
        active = [alert for rule in self._rules for alert in rule.active.values()]
        return Evaluation(now, active, fired, resolved, errors)

    # --- state across restarts ------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        """The range samples, adaptive histories and active alerts, as JSON-able data."""
        return {
            "conditions": {name: state.checkpoint() for name, state in self._conditions.items()},
            "histories": {name: history.to_state() for name, history in self._histories.items()},
            "alerts": [
                {
                    "alert": rule.policy.alert,
                    "severity": rule.severity,
                    "labels": dict(alert.labels),
                    "value": alert.value,
                    "state": alert.state,
                    "active_at": alert.active_at,
                    "fired_at": alert.fired_at,
                }
                for rule in self._rules
                for alert in rule.active.values()
            ],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take up a :meth:`checkpoint` (of policies and rules that still exist)."""
        for name, condition in state.get("conditions", {}).items():
            if name in self._conditions:
                self._conditions[name].restore(condition)
        for name, series in state.get("histories", {}).items():
            history = self._histories.get(name)
            if history is not None:
                history.load_state(series)
        rules = {(rule.policy.alert, rule.severity): rule for rule in self._rules}
        for entry in state.get("alerts", []):
            rule = rules.get((entry["alert"], entry["severity"]))
            if rule is None:
                continue
            labels = {str(k): str(v) for k, v in entry["labels"].items()}
            labels["owner"] = rule.policy.owner  # the owner may have changed since
            key = label_key({k: v for k, v in labels.items() if k in rule.policy.condition.by})
            value = float(entry["value"])
            rule.active[key] = Alert(
                policy=rule.policy,
                severity=rule.severity,
                level=rule.level,
                labels=labels,
                value=value,
                state="firing" if entry["state"] == "firing" else "pending",
                active_at=float(entry["active_at"]),
                fired_at=None if entry.get("fired_at") is None else float(entry["fired_at"]),
                annotations=alert_annotations(
                    self.config, rule.policy, rule.severity, rule.level, labels, value
                ),
            )
