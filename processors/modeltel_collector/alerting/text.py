"""Summaries and descriptions: placeholders to Prometheus templates, or filled in Python.

A policy's text uses ``{value}``, ``{threshold}``, ``{severity}`` and the labels of its
``condition.by``. :func:`go_template` turns it into the annotation Prometheus renders;
:func:`fill` gives the same sentence in Python (for the collector's embedded evaluator and the
promtool tests), with ports of Prometheus's ``humanize`` functions, so both read alike.

>>> humanize(7500), humanize_duration(0.5), humanize_duration(90), humanize_percentage(0.052)
('7.5k', '500ms', '1m 30s', '5.2%')
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping

from modeltel_collector.alerting.policy import Policy, Severity, Unit
from modeltel_collector.alerting.promql import number, prom_duration

SIGMA = "\u03c3"
"""The standard deviation's symbol in alert texts."""
_LARGE = ("k", "M", "G", "T", "P", "E", "Z", "Y")
_SMALL = ("m", "u", "n", "p", "f", "a", "z", "y")
_GO_PIPES = {
    "number": "$value | humanize",
    "plain": '$value | printf "%.4g"',
    "seconds": "$value | humanizeDuration",
    "ratio": "$value | humanizePercentage",
}


def _scaled(value: float) -> tuple[float, str]:
    """Prometheus's SI scaling: the value in [1, 1000) (where possible) and its prefix."""
    prefix = ""
    if abs(value) >= 1:
        for candidate in _LARGE:
            if abs(value) < 1000:
                break
            prefix, value = candidate, value / 1000
    else:
        for candidate in _SMALL:
            if abs(value) >= 1:
                break
            prefix, value = candidate, value * 1000
    return value, prefix


def humanize(value: float) -> str:
    """Prometheus's ``humanize``: 4 significant digits and an SI prefix."""
    if value == 0 or math.isnan(value) or math.isinf(value):
        return f"{value:.4g}"
    scaled, prefix = _scaled(value)
    return f"{scaled:.4g}{prefix}"


def humanize_duration(seconds: float) -> str:
    """Prometheus's ``humanizeDuration``: ``1d 2h 3m 4s``, ``1.5s``, ``250ms``."""
    if math.isnan(seconds) or math.isinf(seconds):
        return f"{seconds:.4g}"
    if seconds == 0:
        return f"{seconds:.4g}s"
    if abs(seconds) >= 1:
        sign = "-" if seconds < 0 else ""
        whole = int(abs(seconds))
        days, hours = whole // 86400, whole // 3600 % 24
        minutes, secs = whole // 60 % 60, whole % 60
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {secs}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {secs}s"
        if minutes:
            return f"{sign}{minutes}m {secs}s"
        return f"{sign}{abs(seconds):.4g}s"
    scaled, prefix = _scaled(seconds)
    return f"{scaled:.4g}{prefix}s"


def humanize_percentage(ratio: float) -> str:
    """Prometheus's ``humanizePercentage``: 0.052 → ``5.2%``."""
    return f"{ratio * 100:.4g}%"


def format_value(value: float, unit: Unit) -> str:
    """A value as its policy's unit shows it."""
    if unit == "seconds":
        return humanize_duration(value)
    if unit == "ratio":
        return humanize_percentage(value)
    if unit == "plain":
        return f"{value:.4g}"
    return humanize(value)


def threshold_text(policy: Policy, level: float) -> str:
    """``{threshold}``: ``7k``, ``500ms``, ``5%``; for an adaptive policy its band (``mean ± 3s over 1d``)."""
    if policy.adaptive is None:
        return format_value(level, policy.unit)
    sign = {"above": "+", "below": "-", "outside": "±"}[policy.adaptive.direction]
    return f"mean {sign} {number(level)}{SIGMA} over {prom_duration(policy.adaptive.window)}"


def condition_text(policy: Policy, level: float) -> str:
    """The breach as a short exact phrase: ``> 7000``, ``outside mean ± 3s over 1d (s ≥ 0.05)`` (s: sigma)."""
    if policy.adaptive is None:
        assert policy.static is not None
        return f"{policy.static.operator} {number(level)}"
    adaptive = policy.adaptive
    floor = f" ({SIGMA} ≥ {number(adaptive.min_stddev)})" if adaptive.min_stddev else ""
    return f"{adaptive.direction} {threshold_text(policy, level)}{floor}"


def go_template(text: str, policy: Policy, severity: Severity, level: float) -> str:
    """``text`` as a Prometheus annotation template."""
    out: list[str] = []
    for literal, name, _spec, _conversion in string.Formatter().parse(text):
        out.append(literal)
        if name is None:
            continue
        if name == "value":
            out.append(f"{{{{ {_GO_PIPES[policy.unit]} }}}}")
        elif name == "threshold":
            out.append(threshold_text(policy, level))
        elif name == "severity":
            out.append(severity)
        else:
            out.append(f"{{{{ $labels.{name} }}}}")
    return "".join(out)


def fill(
    text: str, policy: Policy, severity: Severity, level: float, labels: Mapping[str, str], value: float
) -> str:
    """``text`` filled in, as Prometheus renders :func:`go_template`'s result (missing labels are empty)."""
    values = {name: labels.get(name, "") for name in policy.condition.by}
    values.update(
        value=format_value(value, policy.unit), threshold=threshold_text(policy, level), severity=severity
    )
    return text.format_map(values)
