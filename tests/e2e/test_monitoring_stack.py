"""The lab's Prometheus -> Alertmanager -> webhook path alone, with a rule that always fires."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import Alertmanager, Prometheus, WebhookReceiver
from guestload_lab.waiting import wait_until

pytestmark = pytest.mark.e2e

ALWAYS_FIRING_RULES = """\
groups:
  - name: lab
    rules:
      - alert: LabAlwaysFiring
        expr: vector(1)
        labels:
          severity: info
        annotations:
          summary: Fires as soon as the rule is evaluated.
"""


def test_alert_from_prometheus_reaches_the_webhook(tmp_path: Path) -> None:
    rule_file = tmp_path / "always.rules.yml"
    rule_file.write_text(ALWAYS_FIRING_RULES)
    with ProcessRegistry() as registry, WebhookReceiver() as webhook:
        alertmanager = Alertmanager(workdir=tmp_path, webhook_url=webhook.url, registry=registry)
        alertmanager.start()
        prometheus = Prometheus(
            workdir=tmp_path,
            registry=registry,
            rule_files=[rule_file],
            alertmanager_url=alertmanager.url,
        )
        prometheus.start()

        delivered = webhook.wait_for_alert("LabAlwaysFiring", timeout=30.0)

        assert delivered["labels"] == {"alertname": "LabAlwaysFiring", "severity": "info"}
        assert delivered["annotations"]["summary"] == "Fires as soon as the rule is evaluated."
        assert [alert["state"] for alert in prometheus.alerts()] == ["firing"]
        assert wait_until(
            lambda: [a["labels"]["alertname"] for a in alertmanager.alerts()] or None,
            timeout=10.0,
            what="Alertmanager listing the alert",
        ) == ["LabAlwaysFiring"]
