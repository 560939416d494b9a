"""The stack's files agree with collector-config/alerts.yaml, the alert policies.

Each policy's ``dashboard_url`` opens a dashboard panel (``viewPanel=<id>``): the uid and the
panel must exist, and the panel must plot the policy's metric. The secret files the rendered
Alertmanager configuration reads must be where docker-compose.yml mounts them.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.stack.stack_helpers import CONFIG, ROOT, load_dashboards, panels


def _alerts() -> dict[str, Any]:
    alerts: dict[str, Any] = yaml.safe_load((CONFIG / "alerts.yaml").read_text())
    return alerts


def test_alert_dashboard_links_open_a_panel_of_the_metric() -> None:
    boards = {board["uid"]: board for board in load_dashboards().values()}
    alerts = _alerts()
    assert set(alerts["dashboards"]) == set(boards)
    for policy in alerts["policies"]:
        link = policy.get("dashboard")
        if not link:
            continue
        where = f"{policy['alert']} -> {link}"
        assert link["uid"] in boards, where
        if link.get("panel") is None:
            continue
        by_id = {panel["id"]: panel for panel in panels(boards[link["uid"]])}
        assert link["panel"] in by_id, where
        queried = " ".join(target["expr"] for target in by_id[link["panel"]]["targets"])
        metric = policy["condition"]["metric"]
        name_patterns = re.findall(r'__name__=~"([^"]+)"', queried)
        plotted = metric in queried or any(re.fullmatch(pattern, metric) for pattern in name_patterns)
        assert plotted, f"{where}: panel {by_id[link['panel']]['title']!r} does not plot {metric}"


def test_alertmanager_secret_files_are_mounted() -> None:
    notifications = _alerts()["notifications"]
    files = [value for key, value in notifications.items() if key.endswith("_file")]
    assert files
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = {}
    for volume in compose["services"]["alertmanager"]["volumes"]:
        source, target, *_ = volume.split(":")
        mounts[target] = source
    init_script = "\n".join(compose["services"]["init"]["command"])
    for path in files:
        folder, name = path.rsplit("/", 1)
        assert mounts.get(folder) == "alertmanager-secrets", f"{path} is not in the secrets volume"
        assert f"/secrets/{name}" in init_script, f"init does not write {name}"
