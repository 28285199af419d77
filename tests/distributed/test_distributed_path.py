"""The distributed path, live: sharded vmagents, a central VictoriaMetrics, vmalert, Alertmanager.

Four ``guestload serve --source simulated`` exporters and one fixture exporter (a VM whose run
queue is 25 with its one vCPU fully busy) are scraped by two vmagents that share the targets
with a ``hashmod`` relabel rule; both remote-write to one VictoriaMetrics. vmalert evaluates the
shipped rule file against it and notifies a real Alertmanager, which posts to a webhook.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from bench.common import SimulatedExporter

from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import WebhookReceiver, wait_until
from guestload_lab.victoria import start_distributed_path

SIMULATED_EXPORTERS = 4
VMS_EACH = 25
SHARDS = 2
INTERVAL = "2s"
PRESSURE_VM = {"namespace": "shop", "name": "busy", "node": "fixture-node"}


def _pressure_exposition(seconds: float) -> str:
    """One VM with 1 vCPU, a 1-minute load of 26 (queue 25) and its vCPU and guest CPU busy."""
    vm = ",".join(f'{key}="{value}"' for key, value in PRESSURE_VM.items())
    return "\n".join(
        [
            f"kubevirt_vmi_guest_load_1m{{{vm}}} 26",
            f"kubevirt_vmi_guest_load_5m{{{vm}}} 26",
            f"kubevirt_vmi_guest_load_15m{{{vm}}} 26",
            f'kubevirt_vmi_vcpu_seconds_total{{{vm},id="0",state="running"}} {seconds:.3f}',
            f'kubevirt_vmi_vcpu_delay_seconds_total{{{vm},id="0"}} 0',
            f'guestload_guest_cpu_seconds_total{{{vm},mode="user"}} {seconds * 0.95:.3f}',
            f'guestload_guest_cpu_seconds_total{{{vm},mode="system"}} {seconds * 0.05:.3f}',
            f'guestload_guest_cpu_seconds_total{{{vm},mode="idle"}} 0',
            f'guestload_guest_cpu_seconds_total{{{vm},mode="iowait"}} 0',
            "",
        ]
    )


@pytest.fixture
def pressure_target() -> Iterator[str]:
    """A loopback exporter for the fixture VM; its counters grow with the wall clock."""
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = _pressure_exposition(1000 + time.monotonic() - started).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_sharded_sites_feed_a_central_store_whose_vmalert_pages_through_alertmanager(
    tmp_path: Path, pressure_target: str
) -> None:
    with ProcessRegistry() as registry, WebhookReceiver() as webhook:
        exporters = [
            SimulatedExporter(
                registry=registry,
                workdir=tmp_path / f"node-{i}",
                vms=VMS_EACH,
                interval=INTERVAL,
                node=f"node-{i}",
                seed=i + 1,
            )
            for i in range(SIMULATED_EXPORTERS)
        ]
        for exporter in exporters:
            exporter.workdir.mkdir(parents=True)
            exporter.start()
        targets = [pressure_target, *(e.address for e in exporters)]

        # A short latency offset: the default 30 s hides the newest samples from queries.
        path = start_distributed_path(
            workdir=tmp_path,
            registry=registry,
            targets=targets,
            shards=SHARDS,
            interval=INTERVAL,
            webhook_url=webhook.url,
            latency_offset="2s",
        )
        store, vmalert = path.store, path.vmalert

        vms = SIMULATED_EXPORTERS * VMS_EACH + 1

        def count(expression: str) -> float:
            result = store.query(expression)
            return float(result[0]["value"][1]) if result else 0.0

        wait_until(
            lambda: count("count(kubevirt_vmi_guest_load_1m)") == vms,
            timeout=60,
            interval=1.0,
            what=f"{vms} VMs' load in the central store",
        )
        # Every target is scraped by exactly one shard.
        up = store.query('up{job="guestload"}')
        by_target = {item["metric"]["instance"]: item["metric"]["shard"] for item in up}
        assert sorted(by_target) == sorted(targets)
        assert len(up) == len(targets)

        alert = webhook.wait_for_alert(
            "GuestVCPUQueueHighCritical", timeout=90, name=PRESSURE_VM["name"]
        )
        # vmalert renders the project's annotations, its query template included.
        description = alert["annotations"]["description"]
        assert "has 25.00 tasks waiting for a vCPU" in description
        assert "CPU busy 1.00 (guest view)" in description
        assert alert["annotations"]["runbook_url"].endswith("GuestVCPUQueueHighCritical.md")

        # The recording rules ran in the central store: one queue per VM.
        wait_until(
            lambda: count("count(kubevirt_vmi_guest_vcpu_queue)") == vms,
            timeout=30,
            interval=1.0,
            what="a recorded queue for every VM",
        )
        errors = [
            (rule["name"], rule["lastError"])
            for group in vmalert.groups()
            for rule in group["rules"]
            if rule.get("lastError")
        ]
        assert not errors
