"""Helpers of the stack tests: the stack's files and the dashboards' queries.

``dashboard_queries`` lists every PromQL expression of the Grafana dashboards (panel targets
and template-variable queries) with the Grafana variables replaced, so that a real Prometheus
can parse and evaluate them: the stack tests and the end-to-end test use it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "collector-config"
DASHBOARDS = CONFIG / "grafana" / "dashboards"
PROVISIONING = CONFIG / "grafana" / "provisioning"

DASHBOARD_UIDS = {"modeltel-service", "modeltel-model-quality", "modeltel-drift", "modeltel-collector"}

GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
    "__range_s": "300",
}
"""Grafana's global variables, as it would expand them for a 5-minute view of 1-second scrapes."""


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard JSON file, by file name."""
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def provisioned_datasource_uids() -> dict[str, str]:
    """uid -> type of every datasource Grafana is provisioned with."""
    uids: dict[str, str] = {}
    for path in sorted((PROVISIONING / "datasources").glob("*.y*ml")):
        for source in yaml.safe_load(path.read_text()).get("datasources", []):
            uids[source["uid"]] = source["type"]
    return uids


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in rows; rows themselves excluded."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


@dataclass(frozen=True)
class Query:
    dashboard: str
    """The dashboard's uid."""
    where: str
    """Panel title and refId, or ``variable <name>``."""
    expr: str
    """The PromQL as written in the dashboard."""
    promql: str
    """With Grafana's variables replaced: what Prometheus receives."""


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*([A-Za-z_]\w*)\s*\)\s*$", re.DOTALL)


def render(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with ``$var``, ``${var}`` and ``[[var]]`` replaced from ``values``.

    >>> render('rate(x{a=~"$model"}[$__rate_interval])', {"model": ".+", "__rate_interval": "1m"})
    'rate(x{a=~".+"}[1m])'
    """

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise KeyError(f"no value for the Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def variable_query(variable: Mapping[str, Any]) -> str | None:
    """The PromQL selector behind a ``label_values(selector, label)`` template variable."""
    query = variable.get("query")
    text = query.get("query", "") if isinstance(query, dict) else str(query or "")
    match = _LABEL_VALUES.match(text)
    return match.group(1) if match else None


def dashboard_queries(
    dashboards: Mapping[str, Mapping[str, Any]] | None = None, values: Mapping[str, str] | None = None
) -> list[Query]:
    """Every query of every dashboard, rendered with ``values`` (default: "All" for every variable)."""
    result = []
    for board in (dashboards or load_dashboards()).values():
        variables = board.get("templating", {}).get("list", [])
        rendered = {**GRAFANA_BUILTINS, **{v["name"]: v.get("allValue") or ".+" for v in variables}}
        rendered.update(values or {})
        for variable in variables:
            selector = variable_query(variable)
            if selector is not None:
                result.append(
                    Query(board["uid"], f"variable {variable['name']}", selector, render(selector, rendered))
                )
        for panel in panels(board):
            for target in panel.get("targets", []):
                expr = target.get("expr", "")
                where = f"{panel.get('title')!r} {target.get('refId')}"
                result.append(Query(board["uid"], where, expr, render(expr, rendered)))
    return result
