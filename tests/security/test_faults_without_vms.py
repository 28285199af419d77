"""Faults a real ``guestload serve`` survives without any VM: signals and a missing daemon."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.exposition import metric_value
from tests.security.exporters import DaemonFactory, Exporters

STOP_LIMIT_SECONDS = 2.0


def test_sigterm_stops_cleanly_within_2_seconds(
    exporters: Exporters, capsys: pytest.CaptureFixture[str]
) -> None:
    exporter = exporters.start("--libvirt.uri", "test:///default")
    exporter.wait_ready(timeout=10)
    scraping = threading.Event()

    def scrape_until_stopped() -> None:
        while exporter.process.poll() is None:
            exporter.get("/metrics")
            scraping.set()

    scraper = threading.Thread(target=scrape_until_stopped, daemon=True)
    scraper.start()
    assert scraping.wait(5)
    took = exporter.stop(grace_seconds=STOP_LIMIT_SECONDS + 3)
    scraper.join(5)
    assert exporter.process.returncode == 0, exporter.log()
    assert took < STOP_LIMIT_SECONDS, f"stopping took {took:.2f}s\n{exporter.log()}"
    with capsys.disabled():
        print(f"\nSIGTERM with scrapes running: stopped in {took:.2f}s")
    assert "msg=stopping signal=SIGTERM" in exporter.log()
    assert "Traceback" not in exporter.log()


def test_sighup_without_a_web_config_is_harmless(exporters: Exporters) -> None:
    exporter = exporters.start("--libvirt.uri", "test:///default")
    exporter.process.send_signal(1)
    exporter.wait_for_log("SIGHUP", timeout=5)
    assert exporter.process.poll() is None
    assert exporter.get("/healthz")[0] == 200


@pytest.mark.daemon
def test_connection_refused_at_start_up_then_the_daemon_appears(
    exporters: Exporters, make_daemon: DaemonFactory, daemon_folder: Path
) -> None:
    daemon = make_daemon()
    assert not daemon.socket_path.exists()
    exporter = exporters.start("--libvirt.uri", daemon.uri)
    time.sleep(3)  # several reconnect attempts against nothing
    assert exporter.process.poll() is None, exporter.log()
    assert exporter.get("/healthz")[0] == 200
    status, _ = exporter.get("/readyz")
    assert status == 503
    _, body = exporter.get("/metrics")
    assert metric_value(body, "guestload_libvirt_up") == 0.0
    failures = metric_value(body, "guestload_poll_failures_total")
    assert failures is not None
    assert failures >= 2, "it retries"
    assert exporter.log().count("hypervisor unavailable") == 1, "logged once, not per retry"

    daemon.start()
    exporter.wait_ready(timeout=10)
    _, body = exporter.get("/metrics")
    assert metric_value(body, "guestload_libvirt_up") == 1.0
    assert (
        metric_value(
            body,
            'guestload_agent_state{name="test",namespace="libvirt",node="test-node",'
            'query="load",state="unsupported"}',
        )
        == 1.0
    )
    assert "Traceback" not in exporter.log()
