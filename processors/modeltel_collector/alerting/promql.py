"""PromQL from a policy's structured condition and threshold.

>>> from modeltel_collector.alerting.policy import Condition, LabelMatcher
>>> expression(Condition(metric="ml_drift_psi", by=("ml_model_name", "ml_feature_name")))
'max by (ml_model_name, ml_feature_name) (ml_drift_psi)'
>>> expression(Condition(
...     metric="http_server_request_duration_seconds_bucket", aggregation="quantile",
...     quantile=0.95, by=("service_name",)))
'histogram_quantile(0.95, sum by (le, service_name) (rate(http_server_request_duration_seconds_bucket[5m])))'
>>> prom_duration(86400), prom_duration(90), prom_duration(0.25)
('1d', '90s', '250ms')
"""

from __future__ import annotations

import re

from modeltel_collector.alerting.policy import AdaptiveThreshold, Condition, LabelMatcher, Policy

RECORD_PREFIX = "modeltel"
_UNITS = (("d", 86400_000), ("h", 3600_000), ("m", 60_000), ("s", 1000), ("ms", 1))


def prom_duration(seconds: float) -> str:
    """A Prometheus duration for ``seconds``, in the largest unit that divides it exactly."""
    millis = round(seconds * 1000)
    if millis <= 0:
        raise ValueError(f"{seconds!r} is not a positive duration")
    for suffix, size in _UNITS:
        if millis % size == 0:
            return f"{millis // size}{suffix}"
    raise AssertionError("unreachable: ms divides every whole number of milliseconds")


def number(value: float) -> str:
    """A threshold as PromQL writes it: ``7000``, ``0.2``."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def selector(metric: str, *matcher_sets: dict[str, LabelMatcher]) -> str:
    """``metric{label="value",...}``; later matcher sets add to the earlier ones."""
    parts = [
        f"{name}{matcher.op}{_quote(matcher.value)}"
        for matchers in matcher_sets
        for name, matcher in matchers.items()
    ]
    return f"{metric}{{{', '.join(parts)}}}" if parts else metric


def _aggregate(operator: str, by: tuple[str, ...], inner: str) -> str:
    return f"{operator} by ({', '.join(by)}) ({inner})" if by else f"{operator}({inner})"


def expression(condition: Condition) -> str:
    """The condition's value: one series per combination of ``condition.by``."""
    kind = condition.aggregation
    if condition.is_gauge:
        return _aggregate(kind, condition.by, selector(condition.metric, condition.labels))
    window = prom_duration(condition.range_seconds)
    rate = f"rate({selector(condition.metric, condition.labels)}[{window}])"
    if kind == "rate":
        return _aggregate("sum", condition.by, rate)
    if kind == "quantile":
        return f"histogram_quantile({condition.quantile}, {_aggregate('sum', ('le', *condition.by), rate)})"
    numerator = f"rate({selector(condition.metric, condition.labels, condition.numerator)}[{window}])"
    return f"{_aggregate('sum', condition.by, numerator)} / {_aggregate('sum', condition.by, rate)}"


def snake(alert: str) -> str:
    """``PredictionRateAnomalous`` → ``prediction_rate_anomalous``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", alert).lower()


def record_names(policy: Policy) -> tuple[str, str, str]:
    """An adaptive policy's recording rules: its value, and the value's mean and deviation over the window."""
    assert policy.adaptive is not None
    base = f"{RECORD_PREFIX}:{snake(policy.alert)}"
    window = prom_duration(policy.adaptive.window)
    return f"{base}:value", f"{base}:avg_over_time_{window}", f"{base}:stddev_over_time_{window}"


def recording_rules(policy: Policy) -> list[dict[str, str]]:
    """The recording rules an adaptive policy needs (none for a static one)."""
    if policy.adaptive is None:
        return []
    value, mean, stddev = record_names(policy)
    window = prom_duration(policy.adaptive.window)
    return [
        {"record": value, "expr": expression(policy.condition)},
        {"record": mean, "expr": f"avg_over_time({value}[{window}])"},
        {"record": stddev, "expr": f"stddev_over_time({value}[{window}])"},
    ]


def _adaptive_expr(policy: Policy, adaptive: AdaptiveThreshold, k: float) -> str:
    value, mean, stddev = record_names(policy)
    band = f"{number(k)} * clamp_min({stddev}, {number(adaptive.min_stddev)})"
    above = f"{value} > {mean} + {band}"
    below = f"{value} < {mean} - {band}"
    test = {"above": above, "below": below, "outside": f"({above}) or ({below})"}[adaptive.direction]
    history = f"count_over_time({value}[{prom_duration(adaptive.window)}]) >= {adaptive.min_samples}"
    return f"({test}) and {history}"


def alert_expr(policy: Policy, level: float) -> str:
    """The alert rule's expression at one level (a threshold, or k for an adaptive policy)."""
    if policy.adaptive is not None:
        return _adaptive_expr(policy, policy.adaptive, level)
    assert policy.static is not None
    return f"{expression(policy.condition)} {policy.static.operator} {number(level)}"
