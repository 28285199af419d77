"""Node mode at CI size: 20 launcher pods, two of them hung, killed, restarted and deleted.

The exporter runs as a process (``guestload serve --libvirt.socket-glob``) against 20
:class:`guestload_lab.launchers.LauncherPod` s with a 2 s interval; every tenth pod is hung
(SIGSTOP), resumed, killed, restarted and deleted in turn while a watch scrapes ``/metrics``.
The goals of :mod:`guestload_lab.launcher_faults` must hold: the healthy VMs are never late by
more than one interval nor missing, a hung socket is down within two intervals, and a deleted
pod's series are gone within one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from guestload_lab.launcher_faults import MetricsWatch, run_fault_phases
from guestload_lab.launchers import URI_TEMPLATE, LauncherPod, kubelet_socket_glob, launcher_pods
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import Exporter
from guestload_lab.waiting import wait_until
from tests.exposition import metric_value

pytestmark = pytest.mark.daemon

LAUNCHERS = 20
FAULTY = 2
INTERVAL_SECONDS = 2.0


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[list[LauncherPod]]:
    with launcher_pods(LAUNCHERS, tmp_path / "kubelet", namespace="ci") as started:
        yield started


def test_hung_and_dead_launchers_cost_the_healthy_vms_nothing(
    pods: list[LauncherPod], tmp_path: Path
) -> None:
    with ProcessRegistry() as registry:
        exporter = Exporter(
            libvirt_uri=None,
            node="node-1",
            workdir=tmp_path / "exporter",
            registry=registry,
            interval=f"{INTERVAL_SECONDS:g}s",
            agent_timeout=None,
            extra_args=(
                "--libvirt.socket-glob",
                kubelet_socket_glob(tmp_path / "kubelet"),
                "--libvirt.socket-uri-template",
                URI_TEMPLATE,
            ),
        )
        exporter.start()
        wait_until(
            lambda: metric_value(exporter.scrape_text(), "guestload_domains") == LAUNCHERS,
            timeout=30,
            interval=0.2,
            what=f"{LAUNCHERS} domains listed",
            detail=exporter.log,
        )
        watch = MetricsWatch(exporter.scrape_text, step=0.25)
        watch.start()
        try:
            result = run_fault_phases(
                watch, faulty=pods[:FAULTY], healthy=pods[FAULTY:], interval=INTERVAL_SECONDS
            )
        finally:
            watch.stop()
        failed = {name: goal for name, goal in result["goals"].items() if not goal["passed"]}
        assert not failed, result
        assert result["seconds_until"]["restarted_back"] < float("inf"), result
        assert result["seconds_until"]["resumed_back"] < float("inf"), result
        assert "Traceback" not in exporter.log()
