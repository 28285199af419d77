"""A real Prometheus scraping virt-handler-shaped series, with KubeVirt's rules and the variant.

For each KubeVirt release (v1.7, v1.8, v1.9, and kubevirt-observability-controller v0.0.2,
which ships KubeVirt's rules apart from it) one Prometheus loads KubeVirt's rules as released
and guestload-kubevirt.rules.yml, scrapes a small HTTP server whose series are shaped like
virt-handler's (job kubevirt-prometheus-metrics, honor_labels as KubeVirt's ServiceMonitor,
pod and kubernetes_vmi_label_* labels) and like guestload's DaemonSet with its load gauges off
(guest CPU time only), and evaluates every second. The controller's Prometheus also scrapes
the controller's copy of virt-handler's series (``--enable-vmstats``) as its ServiceMonitor
does, without honor_labels, so the VM's namespace arrives as ``exported_namespace``. Asserted:
one firing alert per VM and queue alert name at every look, no record name written by two
loaded rules, every rule healthy, and no rule evaluation error in Prometheus's log.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import Prometheus, wait_until
from tests.monitoring.kubevirt_cluster import (
    CONTROLLER_JOB,
    CONTROLLER_TARGET,
    KUBEVIRT_RULES,
    QUEUE_ALERTS,
    VARIANT_RULES,
    VIRT_HANDLER_JOB,
    VIRT_HANDLER_TARGET,
    VMS,
    expected_queue_alerts,
    guest_cpu_lines,
    metric_lines,
    selector,
)

UPTIME_AT_START = 3600.0
"""Seconds the simulated VMs have run when the server starts (counters start there)."""
OBSERVE_SECONDS = 4.0
"""How long the alerts are watched once they are all there: four evaluations."""
LOG_PROBLEMS = (
    "level=error",
    "Evaluating rule failed",
    "Rule evaluation result discarded",
    "duplicate sample",
    "out of order",
    "many-to-many",
)


class _Targets:
    """virt-handler's and guestload's /metrics for :data:`VMS`, counters moving with time."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        targets = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = targets.exposition(self.path).encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: Prometheus's scrapes are not news."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def exposition(self, path: str) -> str:
        seconds = UPTIME_AT_START + time.monotonic() - self._started
        samples: Iterator[tuple[str, dict[str, str], float]]
        if path in ("/virt-handler/metrics", "/controller/metrics"):
            samples = (line for vm in VMS for line in metric_lines(vm, seconds=seconds, target={}))
        elif path == "/guestload/metrics":
            samples = (
                line for vm in VMS for line in guest_cpu_lines(vm, seconds=seconds, target={})
            )
        else:
            return ""
        lines, typed = [], set()
        for name, labels, value in samples:
            if name not in typed:
                typed.add(name)
                kind = "counter" if name.endswith("_total") else "gauge"
                lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{selector(name, labels)} {value:.6f}")
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


class _KubeVirtPrometheus(Prometheus):
    """Prometheus scraping virt-handler as KubeVirt's ServiceMonitor does, and guestload;
    with *controller*, also the observability controller's vmstats copy as its own
    ServiceMonitor does (target labels over the series' own)."""

    def __init__(self, *, controller: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.controller = controller

    def config(self) -> dict[str, Any]:
        config = super().config()
        target = {key: value for key, value in VIRT_HANDLER_TARGET.items() if key != "job"}
        del target["instance"]
        config["scrape_configs"] = [
            {
                "job_name": VIRT_HANDLER_JOB,
                "honor_labels": True,
                "metrics_path": "/virt-handler/metrics",
                "static_configs": [{"targets": self.targets, "labels": target}],
            },
            {
                "job_name": "guestload",
                "metrics_path": "/guestload/metrics",
                "static_configs": [{"targets": self.targets}],
            },
        ]
        if self.controller:
            controller = {
                k: v for k, v in CONTROLLER_TARGET.items() if k not in {"job", "instance"}
            }
            config["scrape_configs"].append(
                {
                    "job_name": CONTROLLER_JOB,
                    "metrics_path": "/controller/metrics",
                    "static_configs": [{"targets": self.targets, "labels": controller}],
                }
            )
        return config


def _firing(prometheus: Prometheus) -> Counter[tuple[str, str, str]]:
    """(namespace, name, alertname) -> how many queue alerts fire for it."""
    return Counter(
        (alert["labels"]["namespace"], alert["labels"]["name"], alert["labels"]["alertname"])
        for alert in prometheus.alerts()
        if alert["state"] == "firing" and alert["labels"]["alertname"] in QUEUE_ALERTS
    )


@pytest.fixture
def targets() -> Iterator[_Targets]:
    served = _Targets()
    yield served
    served.close()


def test_one_queue_alert_per_vm_in_a_real_prometheus(tmp_path: Path, targets: _Targets) -> None:
    """One Prometheus per KubeVirt release, all at once (each needs about 7 s to its first
    alert, mostly the discovery manager's first update)."""
    expected = Counter(expected_queue_alerts())
    versions = sorted(KUBEVIRT_RULES)
    with ProcessRegistry() as registry:
        servers = {
            version: _KubeVirtPrometheus(
                workdir=tmp_path / version,
                registry=registry,
                targets=[targets.address],
                rule_files=[KUBEVIRT_RULES[version], VARIANT_RULES],
                interval_seconds=1.0,
                controller=version.startswith("observability-controller"),
            )
            for version in versions
        }
        for prometheus in servers.values():
            prometheus.start()
        for version, prometheus in servers.items():
            _wait_for_alerts(version, prometheus, expected)
        seen: dict[str, list[Counter[tuple[str, str, str]]]] = {version: [] for version in versions}
        deadline = time.monotonic() + OBSERVE_SECONDS
        while time.monotonic() < deadline:
            for version, prometheus in servers.items():
                seen[version].append(_firing(prometheus))
            time.sleep(0.25)
        groups = {version: prometheus.rule_groups() for version, prometheus in servers.items()}
        moved = {
            version: prometheus.query(
                'kubevirt_vmi_guest_load_1m{exported_namespace="shop", namespace!="shop"}'
            )
            for version, prometheus in servers.items()
        }

    for version in versions:
        # The controller's copy is there, under its own namespace, and changes nothing.
        copies = len(VMS) if servers[version].controller else 0
        assert len(moved[version]) == copies, (version, moved[version])
        assert all(firing == expected for firing in seen[version]), (version, seen[version])
        _assert_rules_healthy(version, groups[version])
        log = (tmp_path / version / "prometheus.log").read_text(errors="replace")
        problems = [line for line in log.splitlines() if any(p in line for p in LOG_PROBLEMS)]
        assert not problems, f"{version}:\n" + "\n".join(problems)


def _wait_for_alerts(
    version: str, prometheus: Prometheus, expected: Counter[tuple[str, str, str]]
) -> None:
    wait_until(
        lambda: _firing(prometheus) == expected,
        timeout=30.0,
        interval=0.25,
        what=f"{version}: queue alerts {dict(expected)}",
        detail=lambda: f"firing: {dict(_firing(prometheus))}",
    )


def _assert_rules_healthy(version: str, groups: list[dict[str, Any]]) -> None:
    """Every rule of both files loaded, evaluated and healthy; no record name written twice."""
    records = [
        rule["name"] for group in groups for rule in group["rules"] if rule["type"] == "recording"
    ]
    assert len(records) == len(set(records)), (version, Counter(records).most_common(3))
    assert {group["file"] for group in groups} == {str(KUBEVIRT_RULES[version]), str(VARIANT_RULES)}
    unhealthy = [
        (rule["name"], rule.get("lastError"))
        for group in groups
        for rule in group["rules"]
        if rule["health"] != "ok"
    ]
    assert not unhealthy, (version, unhealthy)
    assert all(group["lastEvaluation"] != "0001-01-01T00:00:00Z" for group in groups), version
