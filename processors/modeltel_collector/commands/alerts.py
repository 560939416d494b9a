"""``modeltel alerts``: render the alert policies, list them, open incidents from alerts.

- ``render``: ``collector-config/alerts.yaml`` → Prometheus rules, promtool tests and the
  Alertmanager configuration under ``collector-config/``; ``--check`` fails while those files
  are not what rendering gives (CI runs it).
- ``list``: the policies as a table (alert, severities, PromQL, for, owner).
- ``incident``: an incident file per firing alert of an Alertmanager webhook payload.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from modeltel_collector.alerting.incidents import incidents_from_alertmanager, write_incident
from modeltel_collector.alerting.policy import AlertPolicies, PolicyError, load_policies
from modeltel_collector.alerting.promql import alert_expr, prom_duration
from modeltel_collector.alerting.render import render, stale, write

app = typer.Typer(
    help="Alert policies: render them for Prometheus and Alertmanager; open incidents from alerts.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

DEFAULT_POLICIES = Path("collector-config/alerts.yaml")
DEFAULT_OUT = Path("collector-config")

PoliciesOption = Annotated[
    Path, typer.Option("--policies", metavar="FILE", help="The alert policies (alerts.yaml).")
]


def _fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _load(path: Path) -> AlertPolicies:
    try:
        return load_policies(path)
    except PolicyError as error:
        _fail(str(error))


@app.command("render")
def render_command(
    policies: PoliciesOption = DEFAULT_POLICIES,
    out: Annotated[
        Path, typer.Option(metavar="DIR", help="Folder holding prometheus/ and alertmanager/.")
    ] = DEFAULT_OUT,
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 if the files under --out are not current.")
    ] = False,
) -> None:
    """Write the Prometheus rules, their promtool tests and the Alertmanager configuration."""
    rendered = render(_load(policies))
    if check:
        outdated = stale(rendered, out)
        for item in outdated:
            typer.echo(item.diff or f"{item.path}: missing\n", err=True, nl=False)
        if outdated:
            names = ", ".join(str(item.path) for item in outdated)
            _fail(f"out of date: {names}; run `modeltel alerts render --policies {policies} --out {out}`")
        console.print(f"{len(rendered)} rendered files under {out} are current", highlight=False)
        return
    for path in write(rendered, out):
        console.print(f"wrote {path}", highlight=False)


@app.command("list")
def list_command(policies: PoliciesOption = DEFAULT_POLICIES) -> None:
    """Show every alert rule: severity, condition, for, owner."""
    config = _load(policies)
    table = Table(title=f"alert rules in {policies}", title_justify="left")
    for heading in ("alert", "severity", "condition (PromQL)", "for", "owner"):
        table.add_column(heading, overflow="fold")
    for policy in config.policies:
        for severity, level in policy.levels():
            style = "red" if severity == "critical" else "yellow"
            table.add_row(
                policy.alert,
                f"[{style}]{severity}[/]",
                alert_expr(policy, level),
                prom_duration(policy.for_),
                policy.owner,
            )
    console.print(table)


def _read_payload(source: str) -> Any:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as error:
        _fail(f"cannot read {source}: {error.strerror}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        _fail(f"{source} is not JSON: {error}")


@app.command("incident")
def incident_command(
    payload: Annotated[
        str, typer.Argument(metavar="PAYLOAD", help="Alertmanager webhook JSON file, or - for stdin.")
    ] = "-",
    directory: Annotated[
        Path, typer.Option("--dir", metavar="DIR", help="Where incident files are written.")
    ] = Path("incidents"),
) -> None:
    """Open an incident file (runbook template) for each firing alert of an Alertmanager payload."""
    data = _read_payload(payload)
    try:
        incidents = incidents_from_alertmanager(data if isinstance(data, dict) else {})
    except ValueError as error:
        _fail(f"{payload}: {error}")
    if not incidents:
        console.print("no firing alert in the payload: no incident opened")
        return
    table = Table(title="incidents opened", title_justify="left")
    for heading in ("alert", "severity", "model", "file"):
        table.add_column(heading)
    for incident in incidents:
        path = write_incident(incident, directory)
        table.add_row(incident.alert, incident.severity, incident.model or "-", str(path))
    console.print(table)
