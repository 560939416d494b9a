"""Alert policies: one YAML file (``collector-config/alerts.yaml``) rendered to Prometheus rules,
Alertmanager routing, promtool tests, and incident files.

- :mod:`.policy`: the pydantic model of ``alerts.yaml`` and its validation.
- :mod:`.promql`: each policy's condition as PromQL (recording rules for adaptive thresholds).
- :mod:`.text`: the summary/description placeholders, and Prometheus's ``humanize`` functions.
- :mod:`.render`: the Prometheus rule file and the Alertmanager configuration.
- :mod:`.promtool_tests`: promtool unit tests of every rendered rule, firing and not firing.
- :mod:`.incidents`: ``incidents/YYYY-MM-DD-{slug}.md`` from a firing alert.
"""
