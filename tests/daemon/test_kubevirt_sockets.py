"""KubeVirt node mode against real libvirt daemons, one per fake virt-launcher pod.

Each "pod" is a :class:`guestload_lab.launchers.LauncherPod`: a private test-driver daemon
whose socket sits where a virt-launcher's does when seen from the node, running one
KubeVirt-named domain. Pods are started, crashed, restarted and
deleted while the exporter watches.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from guestload.identity import IdentityResolver
from guestload.model import AgentState, DomainEvent, EventKind
from guestload.sources.kubevirt_sockets import SocketGlobSource
from guestload.sources.libvirt import LibvirtSource
from guestload_lab.launchers import URI_TEMPLATE, LauncherPod, kubelet_socket_glob
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import Exporter
from guestload_lab.waiting import wait_until
from tests.exposition import metric_value
from tests.unit.fakes import ask_load

pytestmark = pytest.mark.daemon

WAIT_SECONDS = 10.0


class Node:
    """A kubelet pods directory with launcher pods, and a source watching it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pods: list[LauncherPod] = []
        self.events: list[DomainEvent] = []
        self._events_lock = threading.Lock()
        self.glob = kubelet_socket_glob(root)
        self.source = SocketGlobSource(
            socket_glob=self.glob,
            uri_template=URI_TEMPLATE,
            make_source=lambda uri: LibvirtSource(
                uri=uri, keepalive_interval_seconds=1, keepalive_count=1
            ),
            rescan_interval_seconds=0.2,
        )
        self.source.set_event_listener(self._record)

    def pod(self, namespace: str, vmi: str) -> LauncherPod:
        pod = LauncherPod(kubelet_root=self.root, namespace=namespace, vmi=vmi)
        self.pods.append(pod)
        pod.start()
        return pod

    def names(self) -> list[str]:
        return sorted(d.domain_name for d in self.source.list_running_domains())

    def wait_for_event(self, kind: EventKind, domain_uuid: str) -> None:
        wanted = DomainEvent(kind=kind, uuid=domain_uuid)
        _wait(lambda: wanted in self._snapshot_events(), f"no {kind} event for {domain_uuid}")

    def _record(self, event: DomainEvent) -> None:
        with self._events_lock:
            self.events.append(event)

    def _snapshot_events(self) -> list[DomainEvent]:
        with self._events_lock:
            return list(self.events)


def _wait(condition: Callable[[], bool], message: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"{message} within {WAIT_SECONDS}s")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    watched = Node(tmp_path / "kubelet")
    try:
        yield watched
    finally:
        watched.source.close()
        for pod in watched.pods:
            pod.cleanup()


def test_every_launcher_socket_is_listed_and_named_the_kubevirt_way(node: Node) -> None:
    pods = [node.pod("prod", "web-1"), node.pod("prod", "web-2"), node.pod("dev", "db_main")]
    assert all(len(str(pod.socket_path)) > 107 for pod in pods), "paths as long as a node's"
    node.source.connect()
    inventories = node.source.list_running_domains()
    resolver = IdentityResolver(node="node-1", default_namespace="libvirt")
    identities = sorted(
        (resolver.resolve(d).namespace, resolver.resolve(d).name) for d in inventories
    )
    assert identities == [("dev", "db_main"), ("prod", "web-1"), ("prod", "web-2")]
    assert {d.uuid for d in inventories} == {pod.domain_uuid for pod in pods}
    for pod in pods:
        # Routed to the pod's own daemon, which answers for its domain (the test driver has
        # no guest agent): proof the call reached a live connection, not a lookup miss.
        reading = ask_load(node.source, pod.domain_uuid, 1.0)
        assert reading.state is AgentState.UNSUPPORTED, reading
    facts = node.source.facts()
    assert facts.daemon_version != "unknown"
    assert facts.uri == URI_TEMPLATE.format(socket=node.glob)


def test_pods_that_come_and_go_are_picked_up_and_dropped(node: Node) -> None:
    first = node.pod("prod", "web-1")
    node.source.connect()
    assert node.names() == ["prod_web-1"]

    second = node.pod("prod", "web-2")
    node.wait_for_event(EventKind.STARTED, second.domain_uuid)
    assert node.names() == ["prod_web-1", "prod_web-2"]

    first.delete()
    node.wait_for_event(EventKind.STOPPED, first.domain_uuid)
    assert node.names() == ["prod_web-2"]
    assert ask_load(node.source, first.domain_uuid, 1.0).state is AgentState.GONE
    resolve = IdentityResolver(node="node-1", default_namespace="libvirt").resolve
    assert [h.address for h in node.source.connection_health(resolve)] == [str(second.socket_path)]


def test_a_crashed_daemon_degrades_only_its_own_domain_and_comes_back(node: Node) -> None:
    healthy = node.pod("prod", "web-1")
    flaky = node.pod("prod", "web-2")
    node.source.connect()
    assert node.names() == ["prod_web-1", "prod_web-2"]

    flaky.crash()
    _wait(lambda: node.names() == ["prod_web-1"], "the crashed pod's domain is still listed")
    assert ask_load(node.source, healthy.domain_uuid, 1.0).state is AgentState.UNSUPPORTED
    assert ask_load(node.source, flaky.domain_uuid, 1.0).state is AgentState.GONE

    flaky.start()  # virt-launcher restarts its daemon on the same socket path
    _wait(
        lambda: node.names() == ["prod_web-1", "prod_web-2"],
        "the restarted pod's domain did not come back",
    )


def test_probe_reads_every_pod_through_the_command_line(node: Node) -> None:
    node.pod("prod", "web-1")
    node.pod("dev", "db")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "guestload",
            "probe",
            "--libvirt.socket-glob",
            node.glob,
            "--libvirt.socket-uri-template",
            URI_TEMPLATE,
            "--node",
            "node-1",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["libvirt_up"] is True
    named = sorted((row["namespace"], row["name"], row["node"]) for row in probe["domains"])
    assert named == [("dev", "db", "node-1"), ("prod", "web-1", "node-1")]


def _socket_up(exporter: Exporter, pod: LauncherPod, *, named: bool = True) -> float | None:
    """The pod's ``guestload_libvirt_socket_up`` in a scrape now; None when absent."""
    name, namespace = (pod.vmi, pod.namespace) if named else ("", "")
    series = (
        f'guestload_libvirt_socket_up{{name="{name}",namespace="{namespace}",'
        f'pod_uid="{pod.pod_dir.name}",socket="{pod.socket_path}"}}'
    )
    return metric_value(exporter.scrape_text(), series)


def test_serve_exports_each_launcher_sockets_health(node: Node, tmp_path: Path) -> None:
    web = node.pod("prod", "web-1")
    db = node.pod("dev", "db")
    with ProcessRegistry() as registry:
        exporter = Exporter(
            libvirt_uri=None,
            node="node-1",
            workdir=tmp_path / "exporter",
            registry=registry,
            interval="2s",
            agent_timeout=None,
            extra_args=(
                "--libvirt.socket-glob",
                node.glob,
                "--libvirt.socket-uri-template",
                URI_TEMPLATE,
            ),
        )
        exporter.start()
        exporter.wait_ready(timeout=15)

        def wait_for(pod: LauncherPod, value: float | None, what: str) -> None:
            wait_until(
                lambda: _socket_up(exporter, pod) == value,
                timeout=30,
                interval=0.2,
                what=what,
                detail=exporter.log,
            )

        wait_for(web, 1.0, "web-1's socket up")
        wait_for(db, 1.0, "db's socket up")

        web.crash()
        wait_for(web, 0.0, "web-1's socket down after its daemon died, still named")
        assert _socket_up(exporter, db) == 1.0
        body = exporter.scrape_text()
        assert metric_value(body, "guestload_libvirt_up") == 1.0, "the node itself is fine"

        web.start()  # virt-launcher restarts its daemon on the same socket path
        wait_for(web, 1.0, "web-1's socket back up")

        db.delete()
        wait_for(db, None, "the deleted pod's socket series gone")
        assert "Traceback" not in exporter.log()
