"""KubeVirt node mode logic: many sockets as one source, with fake per-socket sources."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from guestload.identity import KUBEVIRT_UID_KEY, IdentityResolver
from guestload.logs import JsonFormatter
from guestload.model import (
    AgentState,
    ConnectionHealth,
    DomainEvent,
    DomainInventory,
    EventKind,
    QueryReading,
    SourceFacts,
)
from guestload.queries.query import GuestQuery
from guestload.sources.kubevirt_sockets import SocketGlobSource, pod_uid_from_socket, socket_uri
from guestload.sources.protocol import Source, SourceUnavailableError
from tests.unit.fakes import FakeSource, Hang, InlineCalls, ask_load, domain, ok

GLOB = "/pods/*/sock"


TEMPLATE = "test+unix:///default?socket={socket}"

WAIT_SECONDS = 10.0
"""How long a test waits for another thread before failing (it never waits that long when
the code works)."""


@dataclass
class LauncherSource(FakeSource):
    """A fake launcher's daemon that can hang: every connect or listing then never returns,
    and a guest query waits for ``hold`` while it is set."""

    hung: bool = False
    listings: int = 0
    closes: int = 0
    queries: int = 0
    hold: threading.Event | None = None
    holding: threading.Event = field(default_factory=threading.Event)
    """Set once a guest query waits for ``hold``."""

    def connect(self) -> None:
        if self.hung:
            raise Hang
        super().connect()

    def close(self) -> None:
        self.closes += 1

    def list_running_domains(self) -> Sequence[DomainInventory]:
        self.listings += 1
        if self.hung:
            raise Hang
        return super().list_running_domains()

    def query_guest(
        self, uuid: str, queries: Sequence[GuestQuery], timeout_seconds: float
    ) -> Mapping[str, QueryReading]:
        self.queries += 1
        hold = self.hold
        if hold is not None:
            self.holding.set()
            assert hold.wait(WAIT_SECONDS), "the test never released the query"
        return super().query_guest(uuid, queries, timeout_seconds)


class Node:
    """The sockets on a fake node and the fake source behind each."""

    def __init__(self) -> None:
        self.sockets: dict[str, LauncherSource] = {}
        self.calls = InlineCalls(advance=self._advance)
        self.made: list[str] = []
        self.now = 0.0
        self.events: list[DomainEvent] = []
        self.source = SocketGlobSource(
            socket_glob=GLOB,
            uri_template=TEMPLATE,
            make_source=self._make,
            rescan_interval_seconds=0,
            find_sockets=self._find,
            clock=lambda: self.now,
            calls=self.calls,
        )
        self.source.set_event_listener(self.events.append)

    def add(self, name: str, *uuids: str) -> LauncherSource:
        fake = LauncherSource(
            domains=[domain(u, f"ns_{u}", metadata={KUBEVIRT_UID_KEY: u}) for u in uuids]
        )
        self.sockets[f"/pods/{name}/sock"] = fake
        return fake

    def _advance(self, seconds: float) -> None:
        self.now += seconds

    def _find(self, pattern: str) -> Iterable[str]:
        assert pattern == GLOB
        return list(self.sockets)

    def _make(self, uri: str) -> Source:
        self.made.append(uri)
        path = uri.partition("socket=")[2]
        return self.sockets[path]


@pytest.fixture
def node() -> Node:
    return Node()


def uuids(node: Node) -> list[str]:
    return [d.uuid for d in node.source.list_running_domains()]


def test_socket_uri_fills_the_template() -> None:
    assert socket_uri(TEMPLATE, "/a/b") == "test+unix:///default?socket=/a/b"


def test_a_node_without_sockets_is_up_and_empty(node: Node) -> None:
    node.source.connect()
    assert node.source.list_running_domains() == []
    assert node.source.facts().uri == f"test+unix:///default?socket={GLOB}"


def test_socket_log_lines_carry_the_socket_as_a_json_field(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    node.add("pod-a", "a1")
    caplog.set_level("INFO", logger="guestload")
    node.source.connect()
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    found = next(line for line in lines if line["msg"] == "libvirt socket found")
    watching = next(line for line in lines if line["msg"] == "watching libvirt sockets")
    assert found["socket"] == "/pods/pod-a/sock"
    assert (watching["glob"], watching["sockets"]) == (GLOB, 1)


def test_listing_before_connect_is_unavailable(node: Node) -> None:
    with pytest.raises(SourceUnavailableError):
        node.source.list_running_domains()


def test_listings_merge_and_loads_route_by_uuid(node: Node) -> None:
    first = node.add("pod-a", "a1")
    second = node.add("pod-b", "b1", "b2")
    first.answers["a1"] = ok(1.0)
    second.answers["b2"] = ok(2.0)
    node.source.connect()
    assert uuids(node) == ["a1", "b1", "b2"]
    assert node.made == [f"test+unix:///default?socket=/pods/{p}/sock" for p in ("pod-a", "pod-b")]
    assert ask_load(node.source, "a1", 1.0) == ok(1.0)
    assert ask_load(node.source, "b2", 1.0) == ok(2.0)
    assert (first.calls, second.calls) == (["a1"], ["b2"])
    assert ask_load(node.source, "zz", 1.0).state is AgentState.GONE


def test_sockets_appear_and_vanish_between_listings(node: Node) -> None:
    node.add("pod-a", "a1")
    node.source.connect()
    assert uuids(node) == ["a1"]
    node.add("pod-b", "b1")
    assert uuids(node) == ["a1", "b1"]
    del node.sockets["/pods/pod-a/sock"]
    assert uuids(node) == ["b1"]
    assert ask_load(node.source, "a1", 1.0).state is AgentState.GONE
    assert socket_paths(node.source) == ["/pods/pod-b/sock"]


def test_rescan_announces_started_and_stopped_domains(node: Node) -> None:
    node.source.connect()
    node.add("pod-a", "a1", "a2")
    node.source.rescan()
    assert node.events == [
        DomainEvent(kind=EventKind.STARTED, uuid="a1"),
        DomainEvent(kind=EventKind.STARTED, uuid="a2"),
    ]
    node.events.clear()
    del node.sockets["/pods/pod-a/sock"]
    node.source.rescan()
    assert node.events == [
        DomainEvent(kind=EventKind.STOPPED, uuid="a1"),
        DomainEvent(kind=EventKind.STOPPED, uuid="a2"),
    ]


def test_a_dead_socket_degrades_only_its_domains_and_reconnects(node: Node) -> None:
    node.add("pod-a", "a1")
    dead = node.add("pod-b", "b1")
    node.source.connect()
    assert uuids(node) == ["a1", "b1"]
    dead.reachable = False
    assert uuids(node) == ["a1"]
    assert ask_load(node.source, "b1", 1.0).state is AgentState.GONE
    dead.reachable = True
    assert uuids(node) == ["a1"], "the reconnect waits for its back-off"
    node.now += 1.0
    assert uuids(node) == ["a1", "b1"]
    assert dead.connects == 2


def test_a_socket_that_refuses_connections_is_retried_on_a_back_off(node: Node) -> None:
    refusing = node.add("pod-a", "a1")
    refusing.reachable = False
    node.source.connect()
    for delay in (1.0, 2.0, 4.0):
        assert uuids(node) == []
        node.now += delay - 0.5
        assert uuids(node) == []
        node.now += 0.5
    refusing.reachable = True
    assert uuids(node) == ["a1"]


def test_a_domain_on_two_sockets_is_listed_once(node: Node) -> None:
    node.add("pod-a", "same")
    node.add("pod-b", "same")
    node.source.connect()
    assert uuids(node) == ["same"]


def test_events_of_every_socket_are_forwarded(node: Node) -> None:
    fake = node.add("pod-a", "a1")
    node.source.connect()
    assert fake.listener is not None
    fake.listener(DomainEvent(kind=EventKind.AGENT_CONNECTED, uuid="a1"))
    assert node.events[-1] == DomainEvent(kind=EventKind.AGENT_CONNECTED, uuid="a1")


def test_facts_join_the_connected_sockets_distinct_versions(node: Node) -> None:
    for name, version in (("pod-a", "11.2.0"), ("pod-b", "10.0.0"), ("pod-c", "11.2.0")):
        node.add(name, name).reported = SourceFacts(daemon_version=version, load_method="fake")
    node.add("pod-d", "d1").reported = SourceFacts(daemon_version="9.0.0")
    node.sockets["/pods/pod-d/sock"].reachable = False
    node.add("pod-e", "e1")
    node.source.connect()
    facts = node.source.facts()
    assert facts.daemon_version == "10.0.0,11.2.0", "distinct, sorted, down sockets left out"
    assert facts.load_method == "fake"
    assert facts.library_version == "unknown", "no socket knows it"


def test_facts_are_unknown_without_a_connected_socket(node: Node) -> None:
    node.source.connect()
    assert node.source.facts() == SourceFacts(uri=f"test+unix:///default?socket={GLOB}")


def test_close_disconnects_every_socket(node: Node) -> None:
    node.add("pod-a", "a1")
    node.source.connect()
    node.source.close()
    assert socket_paths(node.source) == []
    with pytest.raises(SourceUnavailableError):
        node.source.list_running_domains()


RESOLVER = IdentityResolver(node="node-1", default_namespace="libvirt")


def socket_paths(source: SocketGlobSource) -> list[str]:
    """The sockets the source knows (connected or not), sorted."""
    return [health.address for health in source.connection_health(RESOLVER.resolve)]


def test_each_socket_reports_its_health_named_after_its_vm(node: Node) -> None:
    node.add("pod-a", "a1")
    dead = node.add("pod-b", "b1")
    refusing = node.add("pod-c", "c1")
    refusing.reachable = False
    node.add("pod-d", "d1", "d2")
    node.source.connect()
    uuids(node)
    assert node.source.connection_health(RESOLVER.resolve) == (
        ConnectionHealth(
            address="/pods/pod-a/sock", up=True, pod_uid="pod-a", namespace="ns", name="a1"
        ),
        ConnectionHealth(
            address="/pods/pod-b/sock", up=True, pod_uid="pod-b", namespace="ns", name="b1"
        ),
        ConnectionHealth(address="/pods/pod-c/sock", up=False, pod_uid="pod-c"),
        ConnectionHealth(
            address="/pods/pod-d/sock", up=True, pod_uid="pod-d"
        ),  # two VMs: none named
    )

    dead.reachable = False
    dead.domains.clear()
    uuids(node)
    health = {h.pod_uid: h for h in node.source.connection_health(RESOLVER.resolve)}
    assert health["pod-b"] == ConnectionHealth(
        address="/pods/pod-b/sock", up=False, pod_uid="pod-b", namespace="ns", name="b1"
    ), "a socket that went down still names its VM"

    dead.reachable = True
    node.now += 1.0
    uuids(node)
    health = {h.pod_uid: h for h in node.source.connection_health(RESOLVER.resolve)}
    assert health["pod-b"].up
    assert health["pod-b"].name == "b1", "an empty listing (the VM shutting down) keeps the name"

    del node.sockets["/pods/pod-a/sock"]
    uuids(node)
    assert [h.pod_uid for h in node.source.connection_health(RESOLVER.resolve)] == [
        "pod-b",
        "pod-c",
        "pod-d",
    ]


@pytest.mark.parametrize(
    ("path", "uid"),
    [
        (
            "/var/lib/kubelet/pods/0f6d4c3e-9f1b-4a57-a1a4-3b7c9e1d2f60/volumes/"
            "kubernetes.io~empty-dir/libvirt-runtime/virtqemud-sock",
            "0f6d4c3e-9f1b-4a57-a1a4-3b7c9e1d2f60",
        ),
        ("/srv/kubelet/pods/uid-1/sock", "uid-1"),
        ("/pods/pods/sock", "pods"),
        ("/run/libvirt/libvirt-sock", ""),
        ("/x/pods/", ""),
    ],
)
def test_the_pod_uid_comes_from_the_kubelet_path(path: str, uid: str) -> None:
    assert pod_uid_from_socket(path) == uid


def health_of(node: Node) -> dict[str, bool]:
    """Each socket's pod UID and whether it is up."""
    return {h.pod_uid: h.up for h in node.source.connection_health(RESOLVER.resolve)}


def test_a_hung_socket_loses_only_its_domains_and_gets_no_second_call(node: Node) -> None:
    node.add("pod-a", "a1")
    hung = node.add("pod-b", "b1")
    node.source.connect()
    assert uuids(node) == ["a1", "b1"]
    hung.hung = True
    assert uuids(node) == ["a1"], "the hung socket's listing missed the deadline"
    assert health_of(node) == {"pod-a": True, "pod-b": False}
    assert len(node.calls.abandoned) == 1
    listings = hung.listings
    node.now += 60.0
    assert uuids(node) == ["a1"]
    assert hung.listings == listings, "no call while the first one is stuck"
    assert len(node.calls.stuck) == 1
    assert hung.closes == 0, "a connection in use by a stuck call is not closed under it"


def test_connected_sockets_are_listed_on_a_narrow_lane_and_new_ones_on_every_worker(
    node: Node,
) -> None:
    node.add("pod-a", "a1")
    node.source.connect()
    assert node.calls.batches == [True], "a socket to connect may hang: every worker"
    assert uuids(node) == ["a1"]
    assert node.calls.batches == [True, False], "connected and answering: one after another"
    node.add("pod-b", "b1")
    assert uuids(node) == ["a1", "b1"]
    assert node.calls.batches[2:] == [True, False], "the new socket's connect, then the listing"


def test_a_listing_waiting_on_a_hung_socket_lets_the_pool_widen(node: Node) -> None:
    node.add("pod-a", "a1")
    hung = node.add("pod-b", "b1")
    node.source.connect()
    hung.hung = True
    assert uuids(node) == ["a1"]
    assert node.calls.widen_checks >= 5.0 / 0.25, "checked at least four times a second"


def test_new_sockets_hanging_together_cost_the_scan_one_deadline(node: Node) -> None:
    node.add("pod-a", "a1")
    for name in ("pod-b", "pod-c", "pod-d"):
        node.add(name, f"{name}-vm").hung = True
    node.source.connect()
    assert node.now == pytest.approx(5.0), "the default deadline, once"
    assert node.calls.batches == [True]
    assert uuids(node) == ["a1"]
    assert health_of(node) == {"pod-a": True, "pod-b": False, "pod-c": False, "pod-d": False}


def test_a_socket_whose_stuck_call_ends_reconnects(node: Node) -> None:
    hung = node.add("pod-a", "a1")
    node.source.connect()
    hung.hung = True
    assert uuids(node) == []
    hung.hung = False
    node.calls.finish(SourceUnavailableError("keepalive timed out"))
    connects = hung.connects
    assert uuids(node) == ["a1"], "reconnected at the next listing"
    assert hung.connects == connects + 1
    assert health_of(node) == {"pod-a": True}


def test_a_socket_whose_connect_hangs_holds_up_no_other(node: Node) -> None:
    node.add("pod-a", "a1")
    hung = node.add("pod-b", "b1")
    hung.hung = True
    node.source.connect()
    assert uuids(node) == ["a1"]
    assert node.events == [DomainEvent(kind=EventKind.STARTED, uuid="a1")]
    assert health_of(node) == {"pod-a": True, "pod-b": False}
    hung.hung = False
    node.calls.finish(SourceUnavailableError("connection reset"))
    assert uuids(node) == ["a1", "b1"]


def not_answering_warnings(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.getMessage() == "libvirt socket not answering" for r in caplog.records)


@pytest.mark.parametrize("found_by", ["query", "listing", "health"])
def test_guest_queries_to_a_hung_socket_are_cut_off_and_not_repeated(
    node: Node, caplog: pytest.LogCaptureFixture, found_by: str
) -> None:
    healthy = node.add("pod-a", "a1")
    healthy.answers["a1"] = ok(0.5)
    hung = node.add("pod-b", "b1")
    hung.answers["b1"] = ok(1.5)
    node.source.connect()
    assert uuids(node) == ["a1", "b1"]
    hung.hold = threading.Event()
    answers: list[QueryReading] = []
    asking = threading.Thread(target=lambda: answers.append(ask_load(node.source, "b1", 1.0)))
    asking.start()
    assert hung.holding.wait(WAIT_SECONDS)
    assert health_of(node) == {"pod-a": True, "pod-b": True}, "within its limit"
    node.now += 1.0 + 5.0  # the query's timeout and the default deadline
    if found_by == "listing":
        assert uuids(node) == ["a1"]
    elif found_by == "health":
        assert health_of(node) == {"pod-a": True, "pod-b": False}
    listings = hung.listings
    again = ask_load(node.source, "b1", 1.0)
    if found_by == "listing":
        assert again.state is AgentState.GONE, "a listing without its domain came first"
    else:
        assert again == QueryReading(state=AgentState.ERROR, detail="libvirt socket not answering")
    assert hung.queries == 1, "nothing more is sent to a hung socket"
    assert ask_load(node.source, "a1", 1.0) == ok(0.5)
    assert uuids(node) == ["a1"]
    assert hung.listings == listings, "a hung socket is not listed"
    assert health_of(node) == {"pod-a": True, "pod-b": False}
    assert not_answering_warnings(caplog) == 1

    hung.hold.set()
    asking.join(WAIT_SECONDS)
    assert not asking.is_alive()
    assert answers == [
        QueryReading(state=AgentState.TIMEOUT, detail="libvirt socket silent for 6s")
    ], "the stuck call's answer came too late"
    connects = hung.connects
    hung.hold = None
    assert uuids(node) == ["a1", "b1"], "reconnected at the next listing"
    assert hung.connects == connects + 1
    assert health_of(node) == {"pod-a": True, "pod-b": True}
    assert ask_load(node.source, "b1", 1.0) == ok(1.5)
    assert not_answering_warnings(caplog) == 1


def test_a_guest_query_answering_late_times_out_and_its_socket_reconnects(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    slow = node.add("pod-a", "a1")

    def answer_late() -> QueryReading:
        node.now += 2.0 + 5.0  # past two queries' timeouts and the default deadline
        return ok(1.0)

    slow.answers["a1"] = answer_late
    node.source.connect()
    assert uuids(node) == ["a1"]
    reading = ask_load(node.source, "a1", 1.0)
    assert reading == QueryReading(state=AgentState.TIMEOUT, detail="libvirt socket silent for 6s")
    assert not_answering_warnings(caplog) == 1
    assert health_of(node) == {"pod-a": False}, "down until it reconnects"
    connects = slow.connects
    slow.answers["a1"] = ok(1.0)
    assert uuids(node) == ["a1"], "no longer stuck: reconnected at the next listing"
    assert slow.connects == connects + 1
    assert health_of(node) == {"pod-a": True}
    assert ask_load(node.source, "a1", 1.0) == ok(1.0)


def test_a_guest_query_that_raises_in_time_raises_and_leaves_its_socket_up(node: Node) -> None:
    failing = node.add("pod-a", "a1")

    def fail() -> QueryReading:
        raise RuntimeError("a source bug")

    failing.answers["a1"] = fail
    node.source.connect()
    assert uuids(node) == ["a1"]
    with pytest.raises(RuntimeError, match="a source bug"):
        ask_load(node.source, "a1", 1.0)
    assert health_of(node) == {"pod-a": True}
    failing.answers["a1"] = ok(1.0)
    assert ask_load(node.source, "a1", 1.0) == ok(1.0)


def test_a_hung_socket_that_vanishes_is_released_once_its_call_ends(node: Node) -> None:
    hung = node.add("pod-a", "a1")
    node.source.connect()
    hung.hung = True
    assert uuids(node) == []
    del node.sockets["/pods/pod-a/sock"]
    assert uuids(node) == []
    assert health_of(node) == {}
    assert hung.closes == 0
    node.calls.finish(SourceUnavailableError("connection reset"))
    assert hung.closes == 1
    assert hung.listener is None


def test_sockets_hanging_together_cost_the_listing_one_deadline(node: Node) -> None:
    node.add("pod-a", "a1")
    first, second = node.add("pod-b", "b1"), node.add("pod-c", "c1")
    node.source.connect()
    first.hung = second.hung = True
    before = node.now
    assert uuids(node) == ["a1"]
    assert node.now - before == pytest.approx(5.0), "the default deadline, once"
    assert health_of(node) == {"pod-a": True, "pod-b": False, "pod-c": False}
    before = node.now
    assert uuids(node) == ["a1"]
    assert node.now == before, "stuck sockets are not waited for again"
