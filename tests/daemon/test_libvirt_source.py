"""The libvirt source against real libvirt: the test driver in-process and through a daemon."""

from __future__ import annotations

import queue
import threading
import time
import uuid as uuid_module
from collections.abc import Iterator, Sequence

import libvirt
import pytest

from guestload.hoststats.balloon import BALLOON
from guestload.model import AgentState, DomainEvent, DomainInventory, EventKind, SourceFacts
from guestload.sources.libvirt import LibvirtSource, format_libvirt_version, process_event_loop
from guestload.sources.protocol import SourceUnavailableError
from guestload_lab.libvirtd import TestDriverLibvirtd
from tests.unit.fakes import ask_load

pytestmark = pytest.mark.daemon

IN_PROCESS_URI = "test:///default"
TEST_DOMAIN = "test"
"""The one domain libvirt's default test driver instance runs."""
EVENT_TIMEOUT_SECONDS = 5.0


def _source(uri: str) -> Iterator[LibvirtSource]:
    source = LibvirtSource(uri=uri, keepalive_interval_seconds=1, keepalive_count=1)
    try:
        source.connect()
        yield source
    finally:
        source.close()


@pytest.fixture
def in_process_source() -> Iterator[LibvirtSource]:
    yield from _source(IN_PROCESS_URI)


@pytest.fixture
def daemon_source(test_driver_daemon: TestDriverLibvirtd) -> Iterator[LibvirtSource]:
    yield from _source(test_driver_daemon.uri)


def _by_name(inventories: Sequence[DomainInventory], name: str) -> DomainInventory:
    named = [inventory for inventory in inventories if inventory.domain_name == name]
    assert len(named) == 1, f"expected one domain named {name}, got {inventories}"
    return named[0]


def _kubevirt_domain_xml(*, name: str, domain_uuid: str, kubevirt_uid: str) -> str:
    return f"""<domain type='test'>
  <name>{name}</name>
  <uuid>{domain_uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>2</vcpu>
  <os><type>hvm</type></os>
  <metadata>
    <kubevirt xmlns="http://kubevirt.io"><uid>{kubevirt_uid}</uid></kubevirt>
  </metadata>
</domain>"""


@pytest.mark.parametrize("through_daemon", [False, True], ids=["in-process", "private-daemon"])
def test_the_balloon_group_leaves_the_test_driver_s_bulk_call_working(
    through_daemon: bool, request: pytest.FixtureRequest
) -> None:
    """The test driver has no balloon group: without ENFORCE_STATS it is skipped, not refused."""
    uri = request.getfixturevalue("test_driver_daemon").uri if through_daemon else IN_PROCESS_URI
    source = LibvirtSource(uri=uri, host_stats=(BALLOON,))
    try:
        source.connect()
        inventory = _by_name(source.list_running_domains(), TEST_DOMAIN)
    finally:
        source.close()
    assert inventory.host_stats == {}


def test_in_process_listing_gives_the_test_domain(in_process_source: LibvirtSource) -> None:
    inventory = _by_name(in_process_source.list_running_domains(), TEST_DOMAIN)
    connection = libvirt.open(IN_PROCESS_URI)
    try:
        domain = connection.lookupByName(TEST_DOMAIN)
        assert inventory.uuid == domain.UUIDString()
        # The vCPU count is whatever the driver's bulk stats report (the test driver: none).
        [(_, stats)] = connection.domainListGetStats(
            [domain], libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_VCPU, 0
        )
    finally:
        connection.close()
    assert inventory.vcpu_count == stats.get("vcpu.current")
    assert len(inventory.vcpus) == sum(key.endswith(".state") for key in stats if "vcpu." in key)
    assert inventory.metadata == {}


def test_in_process_guest_load_is_unsupported_without_raising(
    in_process_source: LibvirtSource, capfd: pytest.CaptureFixture[str]
) -> None:
    inventory = _by_name(in_process_source.list_running_domains(), TEST_DOMAIN)
    for _ in range(2):  # the second call runs without setting the agent timeout again
        reading = ask_load(in_process_source, inventory.uuid, 2.0)
        assert reading.state is AgentState.UNSUPPORTED
        assert reading.value is None
        assert "not supported by the connection driver" in reading.detail
    assert "libvirt" not in capfd.readouterr().err, "libvirt errors must not reach stderr"


def test_guest_load_of_an_unknown_domain_is_gone(in_process_source: LibvirtSource) -> None:
    reading = ask_load(in_process_source, str(uuid_module.uuid4()), 2.0)
    assert reading.state is AgentState.GONE


def test_facts_name_versions_method_and_uri(in_process_source: LibvirtSource) -> None:
    version = format_libvirt_version(libvirt.getVersion())
    assert in_process_source.facts() == SourceFacts(
        library_version=version,
        daemon_version=version,
        load_method="guest_info",
        uri=IN_PROCESS_URI,
    )


def test_kubevirt_uid_is_read_once_per_domain(in_process_source: LibvirtSource) -> None:
    domain_uuid = str(uuid_module.uuid4())
    connection = libvirt.open(IN_PROCESS_URI)
    domain = connection.createXML(
        _kubevirt_domain_xml(name="ns1_vm-a", domain_uuid=domain_uuid, kubevirt_uid="uid-1"), 0
    )
    try:
        listed = _by_name(in_process_source.list_running_domains(), "ns1_vm-a")
        assert listed.uuid == domain_uuid
        assert listed.metadata == {"kubevirt.uid": "uid-1"}
        domain.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT,
            "<kubevirt><uid>uid-2</uid></kubevirt>",
            "kubevirt",
            "http://kubevirt.io",
            0,
        )
        again = _by_name(in_process_source.list_running_domains(), "ns1_vm-a")
        assert again.metadata == {"kubevirt.uid": "uid-1"}, "metadata is fetched once per run"
    finally:
        domain.destroy()
        connection.close()
    assert all(inv.uuid != domain_uuid for inv in in_process_source.list_running_domains())


def test_lifecycle_events_reach_the_listener(in_process_source: LibvirtSource) -> None:
    events: queue.Queue[DomainEvent] = queue.Queue()
    in_process_source.set_event_listener(events.put)
    domain_uuid = str(uuid_module.uuid4())
    connection = libvirt.open(IN_PROCESS_URI)
    try:
        domain = connection.createXML(
            _kubevirt_domain_xml(name="ns1_vm-b", domain_uuid=domain_uuid, kubevirt_uid="u"), 0
        )
        assert _next_event(events, domain_uuid) == DomainEvent(EventKind.STARTED, domain_uuid)
        domain.destroy()
        assert _next_event(events, domain_uuid) == DomainEvent(EventKind.STOPPED, domain_uuid)
    finally:
        connection.close()


def _next_event(events: queue.Queue[DomainEvent], domain_uuid: str) -> DomainEvent:
    deadline = time.monotonic() + EVENT_TIMEOUT_SECONDS
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            event = events.get(timeout=remaining)
        except queue.Empty:
            break
        if event.uuid == domain_uuid:
            return event
    pytest.fail(f"no event for {domain_uuid} within {EVENT_TIMEOUT_SECONDS}s")


def test_closed_source_is_unavailable_and_close_is_idempotent() -> None:
    source = LibvirtSource(uri=IN_PROCESS_URI)
    source.connect()
    test_uuid = _by_name(source.list_running_domains(), TEST_DOMAIN).uuid
    source.close()
    source.close()
    with pytest.raises(SourceUnavailableError, match="not connected"):
        source.list_running_domains()
    assert ask_load(source, test_uuid, 1.0).state is AgentState.ERROR
    assert source.facts().load_method == "unknown"


def test_connect_to_a_missing_daemon_is_unavailable() -> None:
    source = LibvirtSource(uri="test+unix:///default?socket=/nonexistent/guestload/libvirt-sock")
    with pytest.raises(SourceUnavailableError, match="cannot connect to libvirt"):
        source.connect()
    source.close()


def test_listing_through_a_private_daemon(
    test_driver_daemon: TestDriverLibvirtd, daemon_source: LibvirtSource
) -> None:
    inventory = _by_name(daemon_source.list_running_domains(), TEST_DOMAIN)
    assert inventory.uuid == "6695eb01-f6a4-8304-79aa-97f2502e193f"
    assert ask_load(daemon_source, inventory.uuid, 2.0).state is AgentState.UNSUPPORTED
    facts = daemon_source.facts()
    assert facts.uri == test_driver_daemon.uri
    assert facts.daemon_version == format_libvirt_version(libvirt.getVersion())


def test_events_through_a_private_daemon(
    test_driver_daemon: TestDriverLibvirtd, daemon_source: LibvirtSource
) -> None:
    events: queue.Queue[DomainEvent] = queue.Queue()
    daemon_source.set_event_listener(events.put)
    connection = libvirt.open(test_driver_daemon.uri)
    try:
        domain = connection.lookupByName(TEST_DOMAIN)
        domain.suspend()
        domain.resume()
        assert _next_event(events, domain.UUIDString()).kind is EventKind.STARTED
    finally:
        connection.close()


def test_reconnect_after_the_daemon_is_killed_and_restarted(
    test_driver_daemon: TestDriverLibvirtd, daemon_source: LibvirtSource
) -> None:
    test_uuid = _by_name(daemon_source.list_running_domains(), TEST_DOMAIN).uuid

    test_driver_daemon.kill()
    with pytest.raises(SourceUnavailableError):
        daemon_source.list_running_domains()
    assert ask_load(daemon_source, test_uuid, 1.0).state is AgentState.ERROR
    daemon_source.close()
    with pytest.raises(SourceUnavailableError):
        daemon_source.connect()

    test_driver_daemon.start()
    daemon_source.close()
    daemon_source.connect()
    assert _by_name(daemon_source.list_running_domains(), TEST_DOMAIN).uuid == test_uuid


def test_a_hung_daemon_is_noticed_by_keepalive(
    test_driver_daemon: TestDriverLibvirtd, daemon_source: LibvirtSource
) -> None:
    assert len(daemon_source.list_running_domains()) == 1
    test_driver_daemon.pause()
    started = time.monotonic()
    with pytest.raises(SourceUnavailableError, match="keepalive"):
        daemon_source.list_running_domains()
    assert time.monotonic() - started < 10, "keepalive 1 s x (1 + 1) should end the call"


def test_calls_do_not_wake_the_event_loop(daemon_source: LibvirtSource) -> None:
    """libvirt re-arms the socket's watch around every call; the loop sleeps through that."""
    loop = process_event_loop()
    before = loop.iterations
    for _ in range(100):
        assert len(daemon_source.list_running_domains()) == 1
    woke = loop.iterations - before
    assert woke <= 10, f"the event loop woke {woke} times for 100 calls"


def test_overlapping_calls_do_not_spin_the_event_loop(daemon_source: LibvirtSource) -> None:
    """With calls in flight on one connection, libvirt turns the watch back on while another
    thread still owns the socket; the loop must not spin on data that thread will read."""
    loop = process_event_loop()
    calls_per_thread = 50

    def calls() -> None:
        for _ in range(calls_per_thread):
            daemon_source.list_running_domains()

    before = loop.iterations
    threads = [threading.Thread(target=calls) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    woke = loop.iterations - before
    total = calls_per_thread * len(threads)
    # One reply arrives per call, and a re-arm may report it once more: at most two wake-ups a
    # call. Spinning on the socket while another thread owns it took 30 a call.
    assert woke <= 2 * total, f"the event loop woke {woke} times for {total} overlapping calls"
