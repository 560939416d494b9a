"""promtool unit tests of every rendered alert rule, firing and not firing.

For each policy, input series are synthesised from its condition so that the condition's value
is a chosen number: a gauge holds it, a counter grows at that rate, a ratio's numerator takes
that share of a counter, a histogram puts its observations in a narrow bucket around it. Static policies get
a quiet case (no rule fires), and per severity a case that breaches it and no stricter one.
Adaptive policies get a steady window of history (no rule fires at its end), then a step up
and/or down large enough for every severity (a k so large that no sustained step fires before it is
absorbed into the standard deviation shows up as a failing test). Expected annotations are filled in with the
Python ports of Prometheus's template functions, so the tests also pin the rendered text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from modeltel_collector.alerting.policy import AlertPolicies, Condition, LabelMatcher, Policy, Severity
from modeltel_collector.alerting.promql import number, prom_duration
from modeltel_collector.alerting.text import condition_text, fill

try:
    from re import _parser as _sre  # type: ignore[attr-defined]  # Python 3.11+
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _sre

SAMPLE_S = 60
"""Interval of the synthetic input series."""
BUCKET_WIDTH = 0.01
"""Width of the histogram bucket holding a value v's observations, relative to v."""
EXAMPLE_LABEL_VALUES = {
    "ml_model_name": "salary",
    "ml_model_version": "592cad1a7ecc",
    "ml_feature_name": "years_experience",
    "ml_performance_metric": "rmse",
    "service_name": "salary-api",
    "http_route": "/predict",
    "http_request_method": "POST",
    "signal": "logs",
    "error_type": "500",
    "job": "modeltel",
    "instance": "127.0.0.1:9464",
}
_NOT_MATCHING = ("200", "ok", "other", "")


class TestGenerationError(ValueError):
    """No test data can be synthesised for a policy (the message says why)."""


# --- label values --------------------------------------------------------------------------------


def _op_name(op: Any) -> str:
    return str(getattr(op, "name", op))


def _regex_example(items: Iterable[tuple[Any, Any]]) -> str:
    out: list[str] = []
    for op, arg in items:
        name = _op_name(op)
        if name == "LITERAL":
            out.append(chr(arg))
        elif name == "ANY":
            out.append("0")
        elif name == "IN":
            out.append(_class_example(arg))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, _high, sub = arg
            out.append(_regex_example(sub) * low)
        elif name == "SUBPATTERN":
            out.append(_regex_example(arg[-1]))
        elif name == "ATOMIC_GROUP":
            out.append(_regex_example(arg))
        elif name == "BRANCH":
            out.append(_regex_example(arg[1][0]))
        elif name != "AT":
            raise TestGenerationError(f"no example for the regex construct {name}")
    return "".join(out)


def _class_example(items: list[tuple[Any, Any]]) -> str:
    op, arg = items[0]
    name = _op_name(op)
    if name == "LITERAL":
        return chr(arg)
    if name == "RANGE":
        return chr(arg[0])
    if name == "CATEGORY":
        return {"CATEGORY_DIGIT": "0", "CATEGORY_SPACE": " "}.get(_op_name(arg), "a")
    raise TestGenerationError(f"no example for the character class construct {name}")


def example_matching(pattern: str) -> str:
    """A string the regex ``pattern`` fully matches, e.g. ``500`` for ``5..``."""
    example = _regex_example(_sre.parse(pattern))
    if re.fullmatch(pattern, example) is None:
        raise TestGenerationError(f"no example found for the regex {pattern!r}")
    return example


def _value_for(label: str, matcher: LabelMatcher | None, required: bool) -> str:
    """A value of ``label`` satisfying ``matcher`` ("" means absent; not allowed when ``required``)."""
    if matcher is None:
        return EXAMPLE_LABEL_VALUES.get(label, "example")
    if matcher.op == "=":
        return matcher.value
    if matcher.op == "=~":
        return example_matching(matcher.value)
    candidates = ([] if required else [""]) + [EXAMPLE_LABEL_VALUES.get(label, "example"), "other"]
    for candidate in candidates:
        if matcher.matches(candidate):
            return candidate
    raise TestGenerationError(f"no value of {label} found for {matcher.op}{matcher.value!r}")


def series_labels(condition: Condition) -> dict[str, str]:
    """Labels of a series the condition selects and keeps under its ``by`` labels."""
    labels = {}
    for label in dict.fromkeys([*condition.by, *condition.labels]):
        value = _value_for(label, condition.labels.get(label), label in condition.by)
        if value:
            labels[label] = value
    return labels


def _not_matching(label: str, matcher: LabelMatcher) -> str:
    for candidate in _NOT_MATCHING:
        if not matcher.matches(candidate):
            return candidate
    raise TestGenerationError(f"no value of {label} escapes {matcher.op}{matcher.value!r}")


# --- input series -------------------------------------------------------------------------------


Segment = tuple[float, int]
"""(condition value, samples) of a stretch of input where the value is constant."""


def _notation(values: list[tuple[float, float, int]]) -> str:
    """promtool's expanding notation of consecutive ``(start, step, samples)`` stretches."""
    parts = []
    for start, step, samples in values:
        sign = "+" if step >= 0 else "-"
        parts.append(f"{number(start)}{sign}{number(abs(step))}x{samples - 1}")
    return " ".join(parts)


def _counter(slopes: list[tuple[float, int]]) -> str:
    """A counter from 0 growing by ``slope`` per sample over each stretch."""
    stretches = []
    last: float | None = None
    for slope, samples in slopes:
        start = 0.0 if last is None else last + slope
        stretches.append((start, slope, samples))
        last = start + slope * (samples - 1)
    return _notation(stretches)


def _entry(metric: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{name}="{value}"' for name, value in labels.items())
    return {"series": f"{metric}{{{inner}}}" if inner else metric, "values": values}


def input_series(condition: Condition, segments: list[Segment]) -> list[dict[str, str]]:
    """Series for which the condition's value is each segment's value, once rates have settled."""
    labels = series_labels(condition)
    metric = condition.metric
    kind = condition.aggregation
    if condition.is_gauge:
        return [_entry(metric, labels, _notation([(value, 0.0, n) for value, n in segments]))]
    if kind == "rate":
        return [_entry(metric, labels, _counter([(value * SAMPLE_S, n) for value, n in segments]))]
    if kind == "ratio":
        numerator = labels | {name: _value_for(name, m, True) for name, m in condition.numerator.items()}
        rest = dict(labels)
        for name, matcher in condition.numerator.items():
            other = _not_matching(name, matcher)
            if other:
                rest[name] = other
            else:
                rest.pop(name, None)
        return [
            _entry(metric, numerator, _counter([(100 * value, n) for value, n in segments])),
            _entry(metric, rest, _counter([(100 * (1 - value), n) for value, n in segments])),
        ]
    # quantile: each stretch's observations in one bucket around its value v, placed so that
    # linear interpolation at the quantile gives v itself.
    assert condition.quantile is not None
    q = condition.quantile
    edges = {
        value: (value * (1 - BUCKET_WIDTH * q), value * (1 + BUCKET_WIDTH * (1 - q))) for value, _ in segments
    }
    bounds = sorted({bound for pair in edges.values() for bound in pair})
    entries = []
    for bound in bounds:
        slopes = [(SAMPLE_S if edges[value][1] <= bound else 0.0, n) for value, n in segments]
        entries.append(_entry(metric, labels | {"le": number(bound)}, _counter(slopes)))
    entries.append(_entry(metric, labels | {"le": "+Inf"}, _counter([(SAMPLE_S, n) for _, n in segments])))
    return entries


# --- cases --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    eval_s: int
    firing: list[tuple[Severity, float]]
    """(severity, level) of each rule expected to fire at ``eval_s``."""
    value: float
    """The condition's (settled) value at ``eval_s``."""


@dataclass(frozen=True)
class Case:
    name: str
    segments: list[Segment]
    checks: list[Check]


def _tidy(value: float) -> float:
    """``value`` without binary noise (0.15, not 0.15000000000000002)."""
    return float(f"{value:.12g}")


def _margin(level: float) -> float:
    return abs(level) * 0.25 or 1.0


def _bounded(condition: Condition, value: float, level: float) -> float:
    """``value`` moved towards ``level`` if it lies outside what the condition can measure."""
    if condition.aggregation == "ratio" and value > 1:
        return _tidy((level + 1) / 2)
    if not condition.is_gauge and value < 0:
        return _tidy(level / 2)
    return _tidy(value)


def _static_cases(policy: Policy) -> list[Case]:
    assert policy.static is not None
    condition = policy.condition
    operator = policy.static.operator
    levels = policy.static.levels()
    settle = condition.range_seconds if not condition.is_gauge else 0.0
    eval_s = _whole_minutes(settle + policy.for_ + 2 * SAMPLE_S)
    samples = eval_s // SAMPLE_S + 1
    if operator in ("==", "!="):
        ((severity, level),) = levels
        other = level + 1
        breach, quiet = (level, other) if operator == "==" else (other, level)
        return [
            Case("quiet", [(quiet, samples)], [Check(eval_s, [], quiet)]),
            Case(severity, [(breach, samples)], [Check(eval_s, [(severity, level)], breach)]),
        ]
    up = operator in (">", ">=")
    sign = 1.0 if up else -1.0
    first = levels[0][1]
    quiet = _bounded(condition, first - sign * _margin(first), first)
    cases = [Case("quiet", [(quiet, samples)], [Check(eval_s, [], quiet)])]
    for index, (severity, level) in enumerate(levels):
        if index + 1 < len(levels):
            breach = _tidy((level + levels[index + 1][1]) / 2)
        else:
            breach = _bounded(condition, level + sign * _margin(level), level)
        cases.append(Case(severity, [(breach, samples)], [Check(eval_s, levels[: index + 1], breach)]))
    return cases


def _adaptive_cases(policy: Policy) -> list[Case]:
    adaptive = policy.adaptive
    assert adaptive is not None
    condition = policy.condition
    levels = adaptive.levels()
    k = max(level for _, level in levels)
    if condition.aggregation == "ratio":
        baseline = 0.25
    else:
        baseline = float(max(10, math.ceil(40 * k * adaptive.min_stddev)))
    settle = condition.range_seconds if not condition.is_gauge else 0.0
    history = _whole_minutes(adaptive.window + SAMPLE_S)
    eval_s = history + _whole_minutes(settle + policy.for_ + 2 * SAMPLE_S)
    before, after = history // SAMPLE_S, (eval_s - history) // SAMPLE_S + 1
    quiet = Check(history, [], baseline)
    steps = []
    if adaptive.direction in ("above", "outside"):
        steps.append(("step up", 2 * baseline))
    if adaptive.direction in ("below", "outside"):
        low = baseline / 10 if condition.aggregation == "quantile" else 0.0
        steps.append(("step down", low))
    return [
        Case(name, [(baseline, before), (value, after)], [quiet, Check(eval_s, levels, value)])
        for name, value in steps
    ]


def _whole_minutes(seconds: float) -> int:
    return math.ceil(seconds / SAMPLE_S) * SAMPLE_S


def cases(policy: Policy) -> list[Case]:
    """The policy's test cases."""
    return _adaptive_cases(policy) if policy.adaptive is not None else _static_cases(policy)


# --- test file ----------------------------------------------------------------------------------


def _expected(config: AlertPolicies, policy: Policy, check: Check) -> list[dict[str, Any]]:
    labels = series_labels(policy.condition)
    kept = {name: labels.get(name, "") for name in policy.condition.by}
    value = check.value
    alerts = []
    for severity, level in check.firing:
        alerts.append(
            {
                "exp_labels": {
                    **{k: v for k, v in kept.items() if v},
                    "severity": severity,
                    "owner": policy.owner,
                },
                "exp_annotations": {
                    "summary": fill(policy.summary, policy, severity, level, kept, value),
                    "description": fill(policy.description, policy, severity, level, kept, value),
                    "value": f"{value:.6g}",
                    "threshold": condition_text(policy, level),
                    "runbook_url": config.runbook_link(policy),
                    "dashboard_url": config.dashboard_url(policy, kept),
                },
            }
        )
    return alerts


def promtool_tests(config: AlertPolicies, rule_file: str) -> dict[str, Any]:
    """The promtool test file; ``rule_file`` is the rule file's path relative to it."""
    tests = []
    for policy in config.policies:
        for case in cases(policy):
            tests.append(
                {
                    "name": f"{policy.alert}: {case.name}",
                    "interval": prom_duration(SAMPLE_S),
                    "input_series": input_series(policy.condition, case.segments),
                    "alert_rule_test": [
                        {
                            "eval_time": prom_duration(check.eval_s),
                            "alertname": policy.alert,
                            "exp_alerts": _expected(config, policy, check),
                        }
                        for check in case.checks
                    ],
                }
            )
    return {
        "rule_files": [rule_file],
        "evaluation_interval": prom_duration(config.evaluation_interval),
        "tests": tests,
    }
