"""The alert policies of ``collector-config/alerts.yaml``: a typed model and its validation.

Each policy states its condition as data (a metric, labels to match, an aggregation, the labels
to keep) and a threshold, static (``rmse > 7000``) or adaptive (outside mean ± k standard deviations of the
condition's own recent history). PromQL is generated from that (:mod:`.promql`), and the
collector's embedded evaluator reads the same objects. Every key is checked: a misspelt key, a
value of the wrong kind or a reference to an undefined team or dashboard is refused with a line
naming the key and the value.

>>> policies = parse_policies(EXAMPLE)
>>> rule = policies.policies[0]
>>> rule.alert, rule.static.levels()
('ModelRmseHigh', [('warning', 6000.0), ('critical', 7000.0)])
>>> bad = dict(EXAMPLE, policies=[dict(EXAMPLE["policies"][0], owner="nobody")])
>>> parse_policies(bad)
Traceback (most recent call last):
...
modeltel_collector.alerting.policy.PolicyError: invalid alert policies:
  policies.ModelRmseHigh.owner: no team 'nobody' in teams; teams: ml-platform
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote_plus

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from modeltel_collector.config import Duration, read_yaml

Severity = Literal["warning", "critical"]
SEVERITIES: tuple[Severity, ...] = ("warning", "critical")
Operator = Literal[">", ">=", "<", "<=", "==", "!="]
Aggregation = Literal["max", "min", "avg", "sum", "rate", "quantile", "ratio"]
"""``max``/``min``/``avg``/``sum``: of a gauge's series; ``rate``: summed per-second rate of a
counter; ``quantile``: of a histogram (``*_bucket``) over ``range``; ``ratio``: rate of the series
also matching ``numerator`` over the rate of all matched series."""
GAUGE_AGGREGATIONS = ("max", "min", "avg", "sum")
Unit = Literal["number", "plain", "seconds", "ratio"]
"""How values are shown: ``number`` with an SI prefix (7.5k), ``plain`` with 4 significant digits
(0.654), ``seconds`` as a duration (500ms), ``ratio`` as a percentage (5.2%)."""
MATCH_OPERATORS = ("=", "!=", "=~", "!~")
DEFAULT_RANGE_S = 300.0
PLACEHOLDERS = ("value", "threshold", "severity")
"""Placeholders every summary and description may use, besides the labels of ``condition.by``."""

_METRIC = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_ALERT = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_UID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


class PolicyError(ValueError):
    """The policy file has problems; the message lists each one."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _matcher_input(value: Any) -> Any:
    """``salary`` (equality) or a one-key mapping such as ``{"=~": "5.."}``, as a matcher."""
    if isinstance(value, LabelMatcher) or (isinstance(value, dict) and set(value) == {"op", "value"}):
        return value
    if isinstance(value, str):
        return {"op": "=", "value": value}
    if isinstance(value, dict) and len(value) == 1:
        ((op, operand),) = value.items()
        if op in MATCH_OPERATORS and isinstance(operand, str):
            return {"op": op, "value": operand}
    raise ValueError(
        'a label matcher is a string (equality) or one of {"=": s}, {"!=": s}, {"=~": regex}, {"!~": regex}'
    )


class LabelMatcher(_Strict):
    """One PromQL label matcher: ``op`` is ``=``, ``!=``, ``=~`` or ``!~``."""

    op: Literal["=", "!=", "=~", "!~"]
    value: str

    def matches(self, actual: str) -> bool:
        """Whether a label value (``""`` when absent) satisfies the matcher, as Prometheus decides."""
        if self.op in ("=", "!="):
            return (actual == self.value) == (self.op == "=")
        return (re.fullmatch(self.value, actual) is not None) == (self.op == "=~")


Matchers = dict[str, Annotated[LabelMatcher, BeforeValidator(_matcher_input)]]


class Condition(_Strict):
    """What is measured: ``aggregation`` of ``metric`` series matching ``labels``, kept per ``by``."""

    metric: str
    """The Prometheus series name, e.g. ``ml_performance_rmse`` or ``..._bucket`` for ``quantile``."""
    labels: Matchers = {}
    aggregation: Aggregation = "max"
    by: tuple[str, ...] = ()
    """Labels kept: one alert per combination (e.g. ``ml_model_name``, ``ml_feature_name``)."""
    range: Duration | None = None
    """Rate window of ``rate``, ``quantile`` and ``ratio`` (default 5m)."""
    quantile: float | None = None
    """For ``quantile``: e.g. 0.95."""
    numerator: Matchers = {}
    """For ``ratio``: extra matchers selecting the numerator's series (e.g. ``error_type != ""``)."""

    @property
    def range_seconds(self) -> float:
        return self.range if self.range is not None else DEFAULT_RANGE_S

    @property
    def is_gauge(self) -> bool:
        return self.aggregation in GAUGE_AGGREGATIONS

    def selects(self, labels: Mapping[str, str], *, numerator: bool = False) -> bool:
        """Whether a series with ``labels`` is read (as the ratio's numerator too, if ``numerator``)."""
        matchers = {**self.labels, **self.numerator} if numerator else self.labels
        return all(matcher.matches(labels.get(name, "")) for name, matcher in matchers.items())


class StaticThreshold(_Strict):
    """Fire while ``value <operator> level``, one rule per severity given."""

    operator: Operator
    warning: float | None = None
    critical: float | None = None

    def levels(self) -> list[tuple[Severity, float]]:
        """``(severity, threshold)`` for each severity given, warning first."""
        pairs = [("warning", self.warning), ("critical", self.critical)]
        return [(severity, level) for severity, level in pairs if level is not None]  # type: ignore[misc]


class AdaptiveThreshold(_Strict):
    """Fire while the value lies more than k standard deviations from its own mean over ``window``.

    The mean and standard deviation include the current value (Prometheus's ``avg_over_time``
    and ``stddev_over_time`` of the condition's recorded history).
    """

    direction: Literal["above", "below", "outside"]
    window: Duration
    """History the mean and standard deviation are computed over, e.g. 1d."""
    warning: float | None = Field(default=None, gt=0)
    """k of the warning band, in standard deviations."""
    critical: float | None = Field(default=None, gt=0)
    min_stddev: float = Field(ge=0)
    """Floor of the standard deviation: a flat history does not make every wiggle an outlier."""
    min_samples: int = Field(default=30, gt=0)
    """Recorded evaluations required in the window before the alert can fire."""

    def levels(self) -> list[tuple[Severity, float]]:
        """``(severity, k)`` for each severity given, warning first."""
        pairs = [("warning", self.warning), ("critical", self.critical)]
        return [(severity, k) for severity, k in pairs if k is not None]  # type: ignore[misc]


class DashboardLink(_Strict):
    uid: str
    panel: int | None = None
    """Panel id, opened with ``viewPanel``."""
    variables: dict[str, str] = {}
    """Grafana variable → label of ``condition.by`` it is set to (``var-model=salary``)."""


class Policy(_Strict):
    """One alert family: a condition, a threshold with one or two severities, and where it goes."""

    alert: str
    """The Prometheus ``alertname`` (CamelCase), shared by the warning and critical rule."""
    group: str
    """Rule group in the rendered file (e.g. ``model-quality``)."""
    summary: str
    description: str
    """Both may use ``{value}``, ``{threshold}``, ``{severity}`` and the labels of ``condition.by``."""
    condition: Condition
    static: StaticThreshold | None = None
    adaptive: AdaptiveThreshold | None = None
    for_: Duration = Field(alias="for")
    """How long the condition must hold before the alert fires."""
    owner: str
    """The team (in ``teams``) notified, unless the model's own route says otherwise."""
    dashboard: DashboardLink
    runbook: str | None = None
    """Anchor of the alert's section in the runbook; default: the alert name in lower case."""
    unit: Unit = "number"
    embedded: bool = True
    """Also evaluated by the collector itself (false for what only Prometheus sees, e.g. ``up``)."""

    @property
    def runbook_anchor(self) -> str:
        return self.runbook if self.runbook is not None else self.alert.lower()

    def levels(self) -> list[tuple[Severity, float]]:
        """``(severity, threshold or k)`` of each rule, warning first."""
        threshold = self.static or self.adaptive
        return threshold.levels() if threshold is not None else []


class Team(_Strict):
    """Where a team's alerts go: Slack for every severity, PagerDuty for critical ones."""

    slack_channel: str
    slack_api_url_file: str | None = None
    """This team's Slack webhook URL file, if not the global one."""
    pagerduty: bool = True
    pagerduty_routing_key_file: str | None = None
    """This team's PagerDuty Events v2 routing key file, if not the global one."""


class Notifications(_Strict):
    """Alertmanager-wide settings. Secrets are file paths, never inline values."""

    slack_api_url_file: str
    pagerduty_routing_key_file: str
    webhook_url: str
    """Generic webhook receiving every alert (e.g. an incident writer)."""
    pagerduty_url: str | None = None
    """PagerDuty Events API v2 endpoint (Alertmanager's default when unset)."""
    group_by: tuple[str, ...] = ("alertname", "ml_model_name")
    group_wait: Duration = 30.0
    group_interval: Duration = 300.0
    repeat_interval: Duration = 4 * 3600.0


class ModelRoute(_Strict):
    owner: str
    """Team notified of every alert carrying this ``ml_model_name``."""


class AlertPolicies(_Strict):
    """The whole of ``alerts.yaml``."""

    grafana_url: str
    runbook_url: str
    """URL of ``docs/runbook.md``; an alert's ``runbook_url`` is this plus ``#<anchor>``."""
    evaluation_interval: Duration = 30.0
    dashboards: dict[str, str]
    """Grafana dashboard uid → title."""
    notifications: Notifications
    teams: dict[str, Team]
    models: dict[str, ModelRoute] = {}
    policies: list[Policy]

    def policy(self, alert: str) -> Policy:
        """The policy of an alert name; KeyError if none."""
        for policy in self.policies:
            if policy.alert == alert:
                return policy
        raise KeyError(alert)

    def dashboard_url(self, policy: Policy, labels: Mapping[str, str]) -> str:
        """The alert's dashboard link, its variables set from the alert's ``labels``."""
        return self.dashboard_link(policy, lambda label: quote_plus(labels.get(label, ""), safe=""))

    def dashboard_link(self, policy: Policy, label_value: Callable[[str], str]) -> str:
        """The dashboard link with each variable's value given by ``label_value(label)``."""
        query = [] if policy.dashboard.panel is None else [f"viewPanel={policy.dashboard.panel}"]
        query += [f"var-{name}={label_value(label)}" for name, label in policy.dashboard.variables.items()]
        url = f"{self.grafana_url.rstrip('/')}/d/{policy.dashboard.uid}"
        return f"{url}?{'&'.join(query)}" if query else url

    def runbook_link(self, policy: Policy) -> str:
        return f"{self.runbook_url}#{policy.runbook_anchor}"


# --- semantic checks ------------------------------------------------------------------------------

Problem = tuple[str, str, Any]
"""(location, what is wrong, the offending value)."""


def _matcher_problems(where: str, matchers: dict[str, LabelMatcher]) -> list[Problem]:
    problems: list[Problem] = []
    for name, matcher in matchers.items():
        if not _LABEL.match(name) or name == "__name__":
            problems.append((f"{where}.{name}", "not a label name", name))
        if matcher.op in ("=~", "!~"):
            try:
                re.compile(matcher.value)
            except re.error as error:
                problems.append((f"{where}.{name}", f"not a regular expression ({error})", matcher.value))
    return problems


def _condition_problems(where: str, condition: Condition) -> list[Problem]:
    problems = _matcher_problems(f"{where}.labels", condition.labels)
    problems += _matcher_problems(f"{where}.numerator", condition.numerator)
    if not _METRIC.match(condition.metric):
        problems.append((f"{where}.metric", "not a Prometheus metric name", condition.metric))
    for label in condition.by:
        if not _LABEL.match(label) or label in ("le", "__name__"):
            problems.append((f"{where}.by", "not a label an alert can keep", label))
    if len(set(condition.by)) != len(condition.by):
        problems.append((f"{where}.by", "a label is listed twice", list(condition.by)))
    kind = condition.aggregation
    if condition.is_gauge and condition.range is not None:
        problems.append((f"{where}.range", f"only rate, quantile and ratio take a range, not {kind}", None))
    if kind == "quantile":
        if condition.quantile is None or not 0 < condition.quantile < 1:
            problems.append(
                (f"{where}.quantile", "quantile needs a quantile between 0 and 1", condition.quantile)
            )
        if not condition.metric.endswith("_bucket"):
            problems.append(
                (f"{where}.metric", "quantile reads a histogram's *_bucket series", condition.metric)
            )
    elif condition.quantile is not None:
        problems.append((f"{where}.quantile", f"only quantile takes a quantile, not {kind}", None))
    if kind == "ratio" and not condition.numerator:
        problems.append((f"{where}.numerator", "ratio needs matchers selecting the numerator", None))
    if kind != "ratio" and condition.numerator:
        problems.append((f"{where}.numerator", f"only ratio takes a numerator, not {kind}", None))
    return problems


def _threshold_problems(where: str, policy: Policy) -> list[Problem]:
    if (policy.static is None) == (policy.adaptive is None):
        return [(where, "give exactly one of static and adaptive", None)]
    if policy.static is not None:
        static = policy.static
        levels = static.levels()
        if not levels:
            return [(f"{where}.static", "give a warning or a critical level (or both)", None)]
        if len(levels) == 2:
            warning, critical = static.warning, static.critical
            assert warning is not None and critical is not None
            if static.operator in ("==", "!="):
                return [(f"{where}.static", f"{static.operator} takes one level, not two", None)]
            rising = static.operator in (">", ">=")
            if (warning >= critical) if rising else (warning <= critical):
                side = "below" if rising else "above"
                return [(f"{where}.static.warning", f"must be {side} critical ({critical:g})", warning)]
        return []
    adaptive = policy.adaptive
    assert adaptive is not None
    levels = adaptive.levels()
    if not levels:
        return [(f"{where}.adaptive", "give a warning or a critical k (or both)", None)]
    if len(levels) == 2 and levels[0][1] >= levels[1][1]:
        return [(f"{where}.adaptive.warning", f"must be below critical ({levels[1][1]:g})", levels[0][1])]
    # A sustained step enters the window's mean and standard deviation as it lasts: after a share f of the
    # window it lies (1 - f) / sqrt(f) standard deviations from the mean, so past f(k) it can no longer fire.
    k = levels[-1][1]
    share = ((math.sqrt(k * k + 4) - k) / 2) ** 2
    delay = policy.for_ + (0.0 if policy.condition.is_gauge else policy.condition.range_seconds)
    if adaptive.window * share < delay:
        return [
            (
                f"{where}.adaptive.window",
                "too short: a sustained change is absorbed into the mean and standard deviation"
                f" before it can fire (k={k:g} needs a window of at least"
                f" {math.ceil(delay / share)} s for a for+range of {delay:g} s)",
                adaptive.window,
            )
        ]
    return []


def _text_problems(where: str, policy: Policy) -> list[Problem]:
    allowed = set(PLACEHOLDERS) | set(policy.condition.by)
    problems: list[Problem] = []
    for key in ("summary", "description"):
        text = getattr(policy, key)
        try:
            names = [name for _, name, spec, conv in string.Formatter().parse(text) if name is not None]
        except ValueError as error:
            problems.append(
                (f"{where}.{key}", f"bad placeholder ({error}; write {{{{ and }}}} for braces)", text)
            )
            continue
        for name in names:
            if name not in allowed:
                known = ", ".join(f"{{{n}}}" for n in sorted(allowed))
                problems.append((f"{where}.{key}", f"unknown placeholder {{{name}}}; known: {known}", text))
    return problems


def _policy_problems(where: str, policy: Policy, config: AlertPolicies) -> list[Problem]:
    problems: list[Problem] = []
    if not _ALERT.match(policy.alert):
        problems.append((f"{where}.alert", "an alert name is CamelCase letters and digits", policy.alert))
    if not _SLUG.match(policy.group):
        problems.append((f"{where}.group", "a group is lower-case letters, digits, - and _", policy.group))
    if not _SLUG.match(policy.runbook_anchor):
        problems.append((f"{where}.runbook", "an anchor is lower-case letters, digits and -", policy.runbook))
    if policy.owner not in config.teams:
        teams = ", ".join(config.teams) or "none"
        problems.append((f"{where}.owner", f"no team {policy.owner!r} in teams; teams: {teams}", None))
    if policy.dashboard.uid not in config.dashboards:
        uids = ", ".join(config.dashboards) or "none"
        problems.append(
            (
                f"{where}.dashboard.uid",
                f"no dashboard {policy.dashboard.uid!r} in dashboards; uids: {uids}",
                None,
            )
        )
    for name, label in policy.dashboard.variables.items():
        if label not in policy.condition.by:
            problems.append(
                (
                    f"{where}.dashboard.variables.{name}",
                    "not a label of condition.by (the alert lacks it)",
                    label,
                )
            )
    problems += _condition_problems(f"{where}.condition", policy.condition)
    problems += _threshold_problems(where, policy)
    if policy.adaptive is not None:
        most = int(policy.adaptive.window // config.evaluation_interval)
        if policy.adaptive.min_samples > most:
            problems.append(
                (
                    f"{where}.adaptive.min_samples",
                    f"the window holds at most {most} evaluations (one per evaluation_interval)",
                    policy.adaptive.min_samples,
                )
            )
    problems += _text_problems(where, policy)
    return problems


def _problems(config: AlertPolicies) -> list[Problem]:
    problems: list[Problem] = []
    for uid in config.dashboards:
        if not _UID.match(uid):
            problems.append(("dashboards", "a Grafana uid is at most 40 letters, digits, - and _", uid))
    for name in config.teams:
        if not _SLUG.match(name):
            problems.append(("teams", "a team name is lower-case letters, digits, - and _", name))
    for model, route in config.models.items():
        if route.owner not in config.teams:
            teams = ", ".join(config.teams) or "none"
            problems.append(
                (f"models.{model}.owner", f"no team {route.owner!r} in teams; teams: {teams}", None)
            )
    seen: set[str] = set()
    for policy in config.policies:
        where = f"policies.{policy.alert}"
        if policy.alert in seen:
            problems.append((where, "two policies have this alert name", policy.alert))
        seen.add(policy.alert)
        problems += _policy_problems(where, policy, config)
    for label in config.notifications.group_by:
        if not _LABEL.match(label):
            problems.append(("notifications.group_by", "not a label name", label))
    return problems


# --- parsing -------------------------------------------------------------------------------------


def _location(error: Any, data: Any) -> str:
    """Dotted location, naming a policy by its alert name rather than its index where possible."""
    parts = [str(part) for part in error["loc"]]
    if len(parts) >= 2 and parts[0] == "policies" and parts[1].isdigit():
        policies = data.get("policies") if isinstance(data, dict) else None
        index = int(parts[1])
        if isinstance(policies, list) and index < len(policies):
            entry = policies[index]
            if isinstance(entry, dict) and isinstance(entry.get("alert"), str):
                parts[1] = entry["alert"]
    # Annotated matchers add the validator's function name to the location: drop it.
    parts = [part for part in parts if not part.startswith("function-")]
    return ".".join(parts) or "the file"


def _describe(error: Any, data: Any) -> str:
    location = _location(error, data)
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown key"
    if error["type"] == "missing":
        return f"{location}: missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{location}: {message} (got {error['input']!r})"


def _format(problem: Problem) -> str:
    location, message, value = problem
    return f"{location}: {message}" if value is None else f"{location}: {message} (got {value!r})"


def parse_policies(data: Any) -> AlertPolicies:
    """Validate a parsed ``alerts.yaml``; :class:`PolicyError` lists every problem."""
    try:
        config = AlertPolicies.model_validate(data)
    except ValidationError as error:
        problems = "\n".join(f"  {_describe(e, data)}" for e in error.errors())
        raise PolicyError(f"invalid alert policies:\n{problems}") from None
    found = _problems(config)
    if found:
        raise PolicyError("invalid alert policies:\n" + "\n".join(f"  {_format(p)}" for p in found))
    return config


def load_policies(path: Path) -> AlertPolicies:
    """The policies in ``path``."""
    data = read_yaml(path, PolicyError)
    try:
        return parse_policies(data)
    except PolicyError as error:
        raise PolicyError(str(error).replace("policies:", f"policies in {path}:", 1)) from None


EXAMPLE: dict[str, Any] = {
    "grafana_url": "http://localhost:3000",
    "runbook_url": "https://example.com/runbook.md",
    "dashboards": {"modeltel-model-quality": "Model quality"},
    "notifications": {
        "slack_api_url_file": "/run/secrets/slack_api_url",
        "pagerduty_routing_key_file": "/run/secrets/pagerduty_routing_key",
        "webhook_url": "http://127.0.0.1:9095/alerts",
    },
    "teams": {"ml-platform": {"slack_channel": "#ml-alerts"}},
    "policies": [
        {
            "alert": "ModelRmseHigh",
            "group": "model-quality",
            "summary": "RMSE of {ml_model_name} is {value}",
            "description": "above {threshold}",
            "condition": {"metric": "ml_performance_rmse", "by": ["ml_model_name"]},
            "static": {"operator": ">", "warning": 6000, "critical": 7000},
            "for": "10m",
            "owner": "ml-platform",
            "dashboard": {"uid": "modeltel-model-quality", "panel": 1},
        }
    ],
}
"""A minimal valid policy file (used by the doctests)."""
