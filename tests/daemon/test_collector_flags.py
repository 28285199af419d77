"""``guestload serve`` beside KubeVirt's virt-handler: no load query, no kubevirt_* series.

The guest's OS stays asked: its family is outside ``kubevirt_*``."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import Exporter
from tests.exposition import metric_value, sample_lines

pytestmark = pytest.mark.daemon


def test_without_load_and_vcpu_collectors_only_cpu_times_and_os_are_asked(tmp_path: Path) -> None:
    with ProcessRegistry() as registry:
        exporter = Exporter(
            libvirt_uri="test:///default",
            node="node-1",
            workdir=tmp_path,
            registry=registry,
            interval="120s",
            agent_timeout="500ms",
            extra_args=("--no-collector.load", "--no-collector.vcpu"),
        )
        exporter.start()
        exporter.wait_ready(timeout=15)
        status, body = exporter.get("/metrics")
    assert status == 200, exporter.log()
    assert sample_lines(body, "kubevirt_") == []
    states = sample_lines(body, "guestload_agent_state")
    assert states, body
    assert {line.split('query="')[1].split('"')[0] for line in states} == {"cpustats", "osinfo"}
    calls = sample_lines(body, "guestload_agent_calls_total")
    assert calls
    assert not [line for line in calls if 'query="load"' in line]
    assert metric_value(body, "guestload_domains") == 1.0
