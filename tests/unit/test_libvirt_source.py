"""The libvirt source with fake connections and domains, and its pure helpers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import libvirt
import pytest

from guestload.hoststats.balloon import BALLOON, BalloonStats
from guestload.hoststats.block import BLOCK, DiskStats
from guestload.hoststats.hoststat import HostStat
from guestload.identity import parse_kubevirt_metadata
from guestload.logs import JsonFormatter
from guestload.metricspec import VmSample
from guestload.model import (
    AgentState,
    DomainEvent,
    DomainInventory,
    EventKind,
    QueryReading,
    SourceFacts,
    VcpuStat,
    VcpuState,
)
from guestload.queries.load import LOAD, GuestLoad
from guestload.queries.query import TypedInfo
from guestload.sources.libvirt import (
    GUEST_INFO_TYPES,
    GuestInfoType,
    LibvirtSource,
    agent_command_json,
    format_libvirt_version,
    guest_info_type,
    parse_vcpu_stats,
)
from guestload.sources.protocol import Source, SourceUnavailableError
from tests.unit.fakes import ask_load

GUEST_GET_LOAD_COMMAND = agent_command_json(LOAD)
STATE_AND_VCPU = libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_VCPU
"""The groups of a listing without host stats."""


GUEST_INFO_LOAD_MIN_VERSION = GUEST_INFO_TYPES[TypedInfo.LOAD].since
WITHOUT_BINDING = {
    TypedInfo.LOAD: GuestInfoType(
        "VIR_DOMAIN_GUEST_INFO_NOT_IN_THIS_BINDING", GUEST_INFO_LOAD_MIN_VERSION
    )
}
"""The load's guest-info type as a Python binding without its constant sees it."""


def test_vcpu_stats_of_a_qemu_domain() -> None:
    stats: dict[str, object] = {
        "state.state": 1,
        "state.reason": 1,
        "vcpu.current": 2,
        "vcpu.maximum": 4,
        "vcpu.0.state": 1,
        "vcpu.0.time": 1_500_000_000,
        "vcpu.0.wait": 0,
        "vcpu.0.delay": 250_000_000,
        "vcpu.0.halted": True,
        "vcpu.1.state": 2,
        "vcpu.1.time": 3_000_000_000,
    }
    assert parse_vcpu_stats(stats) == (
        2,
        (
            VcpuStat(
                id=0,
                state=VcpuState.RUNNING,
                time_seconds=1.5,
                wait_seconds=0.0,
                delay_seconds=0.25,
            ),
            VcpuStat(id=1, state=VcpuState.BLOCKED, time_seconds=3.0),
        ),
    )


def test_vcpus_are_ordered_by_id_numerically() -> None:
    stats: dict[str, object] = {f"vcpu.{n}.state": 0 for n in (10, 2, 1)}
    _, vcpus = parse_vcpu_stats(stats)
    assert [vcpu.id for vcpu in vcpus] == [1, 2, 10]
    assert {vcpu.state for vcpu in vcpus} == {VcpuState.OFFLINE}


def test_vcpu_stats_absent_when_the_driver_reports_none() -> None:
    assert parse_vcpu_stats({"state.state": 1, "state.reason": 0}) == (None, ())


@pytest.mark.parametrize(
    "stats",
    [
        pytest.param({"vcpu.0.state": 7, "vcpu.0.time": 1}, id="unknown-state"),
        pytest.param({"vcpu.0.time": 1}, id="no-state"),
        pytest.param({"vcpu.0.state": "1"}, id="state-not-int"),
        pytest.param({"vcpu.x.state": 1, "vcpu.0.state.extra": 1}, id="odd-keys"),
    ],
)
def test_vcpu_without_a_known_state_is_left_out(stats: dict[str, object]) -> None:
    assert parse_vcpu_stats(stats) == (None, ())


def test_vcpu_values_that_are_not_numbers_count_as_not_reported() -> None:
    _, vcpus = parse_vcpu_stats({"vcpu.0.state": 1, "vcpu.0.time": "12", "vcpu.0.delay": True})
    assert vcpus == (VcpuStat(id=0, state=VcpuState.RUNNING),)


def test_vcpu_count_that_is_not_a_number_is_unknown() -> None:
    assert parse_vcpu_stats({"vcpu.current": True}) == (None, ())


def test_kubevirt_uid_from_metadata() -> None:
    element = (
        "<kubevirt>\n  <uid>5b1c0a9e-0000-4000-8000-000000000001</uid>\n"
        "  <graceperiod><deletionGracePeriodSeconds>0</deletionGracePeriodSeconds></graceperiod>"
        "\n</kubevirt>"
    )
    assert parse_kubevirt_metadata(element) == {
        "kubevirt.uid": "5b1c0a9e-0000-4000-8000-000000000001"
    }


def test_kubevirt_uid_with_namespace() -> None:
    element = '<kv:kubevirt xmlns:kv="http://kubevirt.io"><kv:uid> u-1 </kv:uid></kv:kubevirt>'
    assert parse_kubevirt_metadata(element) == {"kubevirt.uid": "u-1"}


@pytest.mark.parametrize(
    "element",
    ["<kubevirt/>", "<kubevirt><uid> </uid></kubevirt>", "<kubevirt><uid>", "not xml", ""],
)
def test_kubevirt_metadata_without_uid(element: str) -> None:
    assert parse_kubevirt_metadata(element) == {}


def test_format_libvirt_version() -> None:
    assert format_libvirt_version(11_003_000) == "11.3.0"
    assert format_libvirt_version(9_010_002) == "9.10.2"


@pytest.mark.parametrize(
    ("library", "daemon", "binding", "expected"),
    [
        (11_003_000, 11_003_000, True, True),
        (GUEST_INFO_LOAD_MIN_VERSION, GUEST_INFO_LOAD_MIN_VERSION, True, True),
        (11_003_000, 11_001_000, True, False),
        (11_001_000, 11_003_000, True, False),
        (11_003_000, 11_003_000, False, False),
    ],
)
def test_guest_info_needs_library_daemon_and_binding(
    library: int, daemon: int, binding: bool, expected: bool
) -> None:
    types = GUEST_INFO_TYPES if binding else WITHOUT_BINDING
    info_type = guest_info_type(LOAD, library_version=library, daemon_version=daemon, types=types)
    assert (info_type is not None) is expected
    assert agent_command_json(LOAD) == '{"execute":"guest-get-load"}'


# -- the source with fake libvirt objects -----------------------------------------------------

URI = "qemu:///system"
UUID_A = "00000000-0000-4000-8000-00000000000a"
UUID_B = "00000000-0000-4000-8000-00000000000b"
KUBEVIRT_ELEMENT = "<kubevirt><uid>kv-uid-a</uid></kubevirt>"


def libvirt_error(code: int, message: str) -> libvirt.libvirtError:
    """A libvirt error as the binding raises it: code, domain, message, level..."""
    error = libvirt.libvirtError(message)
    error.err = (code, 0, message, 2, None, None, None, 0, 0)
    return error


Answer = Callable[[], object]
"""What a fake call does: return a value or raise."""


def returns(value: object) -> Answer:
    return lambda: value


def raises(error: Exception) -> Answer:
    def answer() -> object:
        raise error

    return answer


GUEST_INFO_ANSWER = returns({"load.1m": 1.0, "load.5m": 0.5, "load.15m": 0.25})
TIMEOUT_ANSWER = returns(0)
METADATA_ANSWER = returns(KUBEVIRT_ELEMENT)
XML_ANSWER = returns("<domain type='qemu'><devices/></domain>")
AGENT_REPLY = returns('{"return":{"load1m":2,"load5m":1,"load15m":0.5}}')


@dataclass
class FakeDomain:
    """A running domain; each call is recorded and answered by the ``*_answer`` it holds."""

    uuid: str
    domain_name: str
    domain_id: int = 1
    guest_info_answer: Answer = GUEST_INFO_ANSWER
    timeout_answer: Answer = TIMEOUT_ANSWER
    metadata_answer: Answer = METADATA_ANSWER
    xml_answer: Answer = XML_ANSWER
    calls: list[tuple[str, tuple[object, ...]]] = field(default_factory=list)

    def UUIDString(self) -> str:  # noqa: N802 - libvirt's name
        return self.uuid

    def name(self) -> str:
        return self.domain_name

    def ID(self) -> int:  # noqa: N802 - libvirt's name
        return self.domain_id

    def guestInfo(self, types: int, flags: int) -> object:  # noqa: N802 - libvirt's name
        self.calls.append(("guestInfo", (types, flags)))
        return self.guest_info_answer()

    def agentSetResponseTimeout(self, timeout: int, flags: int) -> object:  # noqa: N802
        self.calls.append(("agentSetResponseTimeout", (timeout, flags)))
        return self.timeout_answer()

    def metadata(self, kind: int, uri: str, flags: int) -> object:
        self.calls.append(("metadata", (kind, uri, flags)))
        return self.metadata_answer()

    def XMLDesc(self, flags: int) -> object:  # noqa: N802 - libvirt's name
        self.calls.append(("XMLDesc", (flags,)))
        return self.xml_answer()

    def count(self, call: str) -> int:
        return sum(name == call for name, _ in self.calls)


@dataclass
class FakeConnection:
    """A libvirt connection to a fake hypervisor running ``domains``."""

    domains: list[FakeDomain]
    daemon_version: int = 11_003_000
    alive: bool = True
    stats: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    stats_error: Exception | None = None
    agent_events_error: Exception | None = None
    close_callback: Any = None
    event_callbacks: dict[int, tuple[int, Any]] = field(default_factory=dict)
    closed: int = 0
    lookups: int = 0
    keepalive: tuple[int, int] | None = None
    stats_calls: list[tuple[int, int]] = field(default_factory=list)
    """The groups and flags of each bulk stats call."""

    def setKeepAlive(self, interval: int, count: int) -> int:  # noqa: N802 - libvirt's name
        self.keepalive = (interval, count)
        return 0

    def getLibVersion(self) -> int:  # noqa: N802 - libvirt's name
        return self.daemon_version

    def isAlive(self) -> int:  # noqa: N802 - libvirt's name
        return int(self.alive)

    def getAllDomainStats(self, groups: int, flags: int) -> list[tuple[object, object]]:  # noqa: N802
        self.stats_calls.append((groups, flags))
        assert flags & libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING
        assert flags & libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
        if self.stats_error is not None:
            raise self.stats_error
        return [(domain, dict(self.stats.get(domain.uuid, {}))) for domain in self.domains]

    def lookupByUUIDString(self, uuid: str) -> FakeDomain:  # noqa: N802 - libvirt's name
        self.lookups += 1
        for domain in self.domains:
            if domain.uuid == uuid:
                return domain
        raise libvirt_error(42, "Domain not found: no domain with matching uuid")

    def registerCloseCallback(self, callback: Any, opaque: object) -> int:  # noqa: N802
        self.close_callback = callback
        return 0

    def unregisterCloseCallback(self) -> int:  # noqa: N802 - libvirt's name
        self.close_callback = None
        return 0

    def domainEventRegisterAny(  # noqa: N802 - libvirt's name
        self, domain: object, event_id: int, callback: Any, opaque: object
    ) -> int:
        if event_id == libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE and self.agent_events_error:
            raise self.agent_events_error
        callback_id = len(self.event_callbacks) + 1
        self.event_callbacks[callback_id] = (event_id, callback)
        return callback_id

    def domainEventDeregisterAny(self, callback_id: int) -> int:  # noqa: N802
        del self.event_callbacks[callback_id]
        return 0

    def close(self) -> int:
        self.closed += 1
        return 0

    def emit(self, event_id: int, domain: FakeDomain, first: int, second: int) -> None:
        """Call every callback registered for ``event_id``, as libvirt's event loop would."""
        for registered_id, callback in list(self.event_callbacks.values()):
            if registered_id == event_id:
                callback(self, domain, first, second, None)

    def emit_tunable(self, domain: FakeDomain, params: Mapping[str, object]) -> None:
        """Call every tunable callback, as libvirt's event loop would after a tune."""
        for registered_id, callback in list(self.event_callbacks.values()):
            if registered_id == libvirt.VIR_DOMAIN_EVENT_ID_TUNABLE:
                callback(self, domain, params, None)


@dataclass
class FakeAgent:
    """The passthrough: records each command and answers with ``reply``."""

    reply: Answer = AGENT_REPLY
    calls: list[tuple[object, str, int, int]] = field(default_factory=list)

    def __call__(self, domain: object, command: str, timeout: int, flags: int) -> object:
        self.calls.append((domain, command, timeout, flags))
        return self.reply()


def fake_domain(uuid: str = UUID_A, name: str = "ns1_vm-a", **answers: Any) -> FakeDomain:
    return FakeDomain(uuid=uuid, domain_name=name, **answers)


@dataclass
class Rig:
    source: LibvirtSource
    connection: FakeConnection
    agent: FakeAgent


def make_rig(
    *domains: FakeDomain,
    daemon_version: int = 11_003_000,
    host_stats: Sequence[HostStat] = (),
) -> Iterator[Rig]:
    connection = FakeConnection(domains=list(domains), daemon_version=daemon_version)
    agent = FakeAgent()
    opened: list[str] = []

    def open_connection(uri: str) -> FakeConnection:
        opened.append(uri)
        return connection

    source = LibvirtSource(
        uri=URI, open_connection=open_connection, agent_command=agent, host_stats=host_stats
    )
    source.connect()
    assert opened == [URI]
    try:
        yield Rig(source=source, connection=connection, agent=agent)
    finally:
        source.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield from make_rig(
        fake_domain(),
        fake_domain(
            UUID_B,
            "plain-vm",
            metadata_answer=raises(
                libvirt_error(80, "metadata not found: Requested metadata element is not present")
            ),
        ),
    )


def domain_of(rig: Rig, uuid: str = UUID_A) -> FakeDomain:
    return next(domain for domain in rig.connection.domains if domain.uuid == uuid)


def test_guest_info_load_with_the_response_timeout_set_once(rig: Rig) -> None:
    first = ask_load(rig.source, UUID_A, 2.5)
    second = ask_load(rig.source, UUID_A, 2.5)
    expected = QueryReading(state=AgentState.OK, value=GuestLoad(one=1.0, five=0.5, fifteen=0.25))
    assert first == second == expected
    domain = domain_of(rig)
    assert domain.calls.count(("agentSetResponseTimeout", (3, 0))) == 1
    assert domain.calls.count(("guestInfo", (libvirt.VIR_DOMAIN_GUEST_INFO_LOAD, 0))) == 2
    assert rig.connection.lookups == 1, "the domain object is cached per connection"
    assert rig.agent.calls == []


def test_a_new_timeout_is_set_again(rig: Rig) -> None:
    ask_load(rig.source, UUID_A, 2.0)
    ask_load(rig.source, UUID_A, 0.2)
    timeouts = [args for name, args in domain_of(rig).calls if name == "agentSetResponseTimeout"]
    assert timeouts == [(2, 0), (1, 0)]


def test_refused_response_timeout_falls_back_to_the_bounded_passthrough() -> None:
    domain = fake_domain(timeout_answer=raises(libvirt_error(29, "operation forbidden")))
    for rig in make_rig(domain):
        for _ in range(2):
            reading = ask_load(rig.source, UUID_A, 4.0)
            assert reading.value == GuestLoad(one=2.0, five=1.0, fifteen=0.5)
        assert domain.count("agentSetResponseTimeout") == 1
        assert domain.count("guestInfo") == 0
        assert [(command, timeout) for _, command, timeout, _ in rig.agent.calls] == [
            (GUEST_GET_LOAD_COMMAND, 4),
            (GUEST_GET_LOAD_COMMAND, 4),
        ]


def test_transient_timeout_failure_is_retried_on_the_next_call() -> None:
    domain = fake_domain(timeout_answer=raises(libvirt_error(55, "domain is not running")))
    for rig in make_rig(domain):
        ask_load(rig.source, UUID_A, 1.0)
        domain.timeout_answer = returns(0)
        assert ask_load(rig.source, UUID_A, 1.0).state is AgentState.OK
        assert domain.count("agentSetResponseTimeout") == 2


def test_an_older_daemon_uses_the_passthrough() -> None:
    domain = fake_domain()
    for rig in make_rig(domain, daemon_version=GUEST_INFO_LOAD_MIN_VERSION - 1_000):
        assert rig.source.facts().load_method == "agent_command"
        assert ask_load(rig.source, UUID_A, 5.0).state is AgentState.OK
        assert domain.count("guestInfo") == 0
        assert domain.count("agentSetResponseTimeout") == 1
        assert len(rig.agent.calls) == 1


def test_passthrough_errors_are_classified() -> None:
    not_found = "The command guest-get-load has not been found"
    for rig in make_rig(fake_domain(), daemon_version=11_000_000):
        rig.agent.reply = raises(libvirt_error(113, not_found))
        assert ask_load(rig.source, UUID_A, 5.0) == QueryReading(
            state=AgentState.UNSUPPORTED, detail=not_found
        )
        rig.agent.reply = returns("{not json")
        assert ask_load(rig.source, UUID_A, 5.0).state is AgentState.INVALID


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param(returns({}), AgentState.NO_DATA, id="frozen-agent-empty-answer"),
        pytest.param(
            returns({"load.1m": -1, "load.5m": 0, "load.15m": 0}), AgentState.INVALID, id="hostile"
        ),
        pytest.param(
            raises(libvirt_error(86, "QEMU guest agent is not connected")),
            AgentState.NOT_CONNECTED,
            id="no-agent",
        ),
        pytest.param(
            raises(libvirt_error(68, "cannot acquire state change lock")),
            AgentState.BUSY,
            id="busy",
        ),
        pytest.param(raises(RuntimeError("binding bug")), AgentState.ERROR, id="not-libvirt"),
    ],
)
def test_guest_info_outcomes_are_readings_never_exceptions(
    rig: Rig, answer: Answer, expected: AgentState
) -> None:
    domain_of(rig).guest_info_answer = answer
    reading = ask_load(rig.source, UUID_A, 1.0)
    assert reading.state is expected
    assert reading.value is None


def test_a_vanished_domain_is_gone_and_looked_up_again(rig: Rig) -> None:
    domain_of(rig).guest_info_answer = raises(libvirt_error(42, "Domain not found"))
    assert ask_load(rig.source, UUID_A, 1.0).state is AgentState.GONE
    domain_of(rig).guest_info_answer = returns({"load.1m": 0, "load.5m": 0, "load.15m": 0})
    assert ask_load(rig.source, UUID_A, 1.0).state is AgentState.OK
    assert rig.connection.lookups == 2
    assert ask_load(rig.source, "no-such-uuid", 1.0).state is AgentState.GONE


def test_listing_converts_stats_and_reads_metadata_once(rig: Rig) -> None:
    rig.connection.stats = {
        UUID_A: {"state.state": 1, "vcpu.current": 1, "vcpu.0.state": 1, "vcpu.0.time": 2 * 10**9}
    }
    for _ in range(3):
        first, second = rig.source.list_running_domains()
        assert (first.uuid, first.domain_name, first.vcpu_count) == (UUID_A, "ns1_vm-a", 1)
        assert first.vcpus == (VcpuStat(id=0, state=VcpuState.RUNNING, time_seconds=2.0),)
        assert first.metadata == {"kubevirt.uid": "kv-uid-a"}
        assert (second.uuid, second.vcpu_count, second.vcpus, second.metadata) == (
            UUID_B,
            None,
            (),
            {},
        )
    assert (
        domain_of(rig).calls.count(
            ("metadata", (libvirt.VIR_DOMAIN_METADATA_ELEMENT, "http://kubevirt.io", 0))
        )
        == 1
    )
    assert domain_of(rig, UUID_B).count("metadata") == 1
    assert [groups for groups, _ in rig.connection.stats_calls] == [STATE_AND_VCPU] * 3
    assert (first.host_stats, second.host_stats) == ({}, {})


class _OtherGroupStat(HostStat):
    """A second host stat, of the block group: its group joins the same bulk call."""

    name = "block"
    stats_group = "VIR_DOMAIN_STATS_BLOCK"
    families = ()

    def parse(self, record: Mapping[str, object]) -> object | None:
        return record.get("block.count")

    def samples(self, value: object) -> Iterator[VmSample]:
        return iter(())


class _NotInThisBinding(_OtherGroupStat):
    name = "future"
    stats_group = "VIR_DOMAIN_STATS_NOT_IN_THIS_BINDING"


def test_host_stats_groups_join_the_one_bulk_call_and_each_record_is_parsed() -> None:
    host_stats = (BALLOON, _OtherGroupStat(), _NotInThisBinding())
    for rig in make_rig(fake_domain(), fake_domain(UUID_B, "plain-vm"), host_stats=host_stats):
        rig.connection.stats = {
            UUID_A: {
                "state.state": 1,
                "balloon.current": 1024,
                "balloon.maximum": 2048,
                "balloon.swap_in": 3,
                "block.count": 2,
            },
            UUID_B: {"state.state": 1, "vcpu.current": 1},
        }
        first, second = rig.source.list_running_domains()
        assert rig.connection.stats_calls == [
            (
                STATE_AND_VCPU | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_BLOCK,
                libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING
                | libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT,
            )
        ]
        assert first.host_stats == {
            "balloon": BalloonStats(balloon_bytes=1024 * 1024, swap_in_bytes=3 * 1024),
            "block": 2,
        }
        assert second.host_stats == {}, "a record without the groups exports nothing"


def test_hostile_balloon_values_cost_only_their_own_field() -> None:
    for rig in make_rig(fake_domain(), host_stats=(BALLOON,)):
        rig.connection.stats = {
            UUID_A: {"balloon.current": 1024, "balloon.swap_in": -1, "balloon.unused": "x"}
        }
        (listed,) = rig.source.list_running_domains()
        assert listed.host_stats == {"balloon": BalloonStats(balloon_bytes=1024 * 1024)}


CAPPED_XML = (
    "<domain type='qemu'><devices>"
    "<disk type='file' device='disk'><target dev='vda' bus='virtio'/>"
    "<iotune><total_iops_sec>5</total_iops_sec></iotune></disk>"
    "</devices></domain>"
)
DISK_RECORD = {"block.count": 1, "block.0.name": "vda", "block.0.rd.reqs": 7}


def _caps(listed: DomainInventory) -> tuple[tuple[str, int], ...]:
    disks = listed.host_stats["block"]
    assert isinstance(disks, tuple)
    (disk,) = disks
    assert isinstance(disk, DiskStats)
    return disk.caps


def test_a_domain_s_caps_are_read_once_per_run_and_again_after_a_tune() -> None:
    domain = fake_domain(xml_answer=returns(CAPPED_XML))
    for rig in make_rig(domain, host_stats=(BLOCK,)):
        rig.connection.stats = {UUID_A: DISK_RECORD}
        for _ in range(3):
            (listed,) = rig.source.list_running_domains()
            assert _caps(listed) == (("total_iops_sec", 5),)
        assert domain.count("XMLDesc") == 1
        domain.xml_answer = returns(CAPPED_XML.replace(">5<", ">50<"))
        rig.connection.emit_tunable(domain, {"cputune.vcpu_period": 1})
        assert _caps(rig.source.list_running_domains()[0]) == (("total_iops_sec", 5),)
        rig.connection.emit_tunable(domain, {"blkdeviotune.disk": "vda"})
        assert _caps(rig.source.list_running_domains()[0]) == (("total_iops_sec", 50),)
        domain.domain_id = 2  # a new QEMU process reads its own definition
        rig.source.list_running_domains()
        assert domain.count("XMLDesc") == 3


def test_disk_rates_are_folded_over_the_clock_within_one_domain_run() -> None:
    domain = fake_domain()
    now = [1000.0]
    connection = FakeConnection(domains=[domain])
    source = LibvirtSource(
        uri=URI,
        open_connection=lambda _uri: connection,
        agent_command=FakeAgent(),
        host_stats=(BLOCK,),
        clock=lambda: now[0],
    )
    source.connect()

    def rates(reads: int) -> dict[str, float]:
        connection.stats = {UUID_A: {"block.0.name": "vda", "block.0.rd.reqs": reads}}
        (listed,) = source.list_running_domains()
        disks = listed.host_stats["block"]
        assert isinstance(disks, tuple)
        return dict(disks[0].rates)

    try:
        assert rates(100) == {}
        now[0] += 120.0
        assert rates(700) == {"reads": 5.0}
        domain.domain_id = 2  # restarted: its counters start again, and so do the rates
        now[0] += 120.0
        assert rates(10) == {}
    finally:
        source.close()


def test_a_failed_xml_read_is_retried_and_costs_only_the_caps() -> None:
    domain = fake_domain(xml_answer=raises(libvirt_error(1, "internal error")))
    for rig in make_rig(domain, host_stats=(BLOCK,)):
        rig.connection.stats = {UUID_A: DISK_RECORD}
        assert _caps(rig.source.list_running_domains()[0]) == ()
        domain.xml_answer = returns(CAPPED_XML)
        assert _caps(rig.source.list_running_domains()[0]) == (("total_iops_sec", 5),)


def test_without_a_host_stat_that_reads_it_the_xml_is_never_read(rig: Rig) -> None:
    rig.source.list_running_domains()
    assert domain_of(rig).count("XMLDesc") == 0
    assert libvirt.VIR_DOMAIN_EVENT_ID_TUNABLE not in {
        event_id for event_id, _ in rig.connection.event_callbacks.values()
    }


def test_listing_refreshes_per_run_state_after_a_restart(rig: Rig) -> None:
    rig.source.list_running_domains()
    ask_load(rig.source, UUID_A, 1.0)
    domain = domain_of(rig)
    domain.domain_id = 2  # destroyed and started again: a new QEMU process
    rig.source.list_running_domains()
    ask_load(rig.source, UUID_A, 1.0)
    assert domain.count("metadata") == 2
    assert domain.count("agentSetResponseTimeout") == 2


def test_transient_metadata_failure_is_retried(rig: Rig) -> None:
    domain = domain_of(rig)
    domain.metadata_answer = raises(libvirt_error(1, "internal error"))
    assert rig.source.list_running_domains()[0].metadata == {}
    domain.metadata_answer = returns(KUBEVIRT_ELEMENT)
    assert rig.source.list_running_domains()[0].metadata == {"kubevirt.uid": "kv-uid-a"}


def test_one_odd_domain_does_not_hide_the_others(rig: Rig) -> None:
    domain_of(rig).metadata_answer = raises(RuntimeError("odd"))
    rig.connection.stats = {UUID_B: {"vcpu.current": "odd", "vcpu.0.state": None}}
    assert [inventory.uuid for inventory in rig.source.list_running_domains()] == [UUID_B]


def test_a_dead_connection_makes_the_listing_unavailable(rig: Rig) -> None:
    rig.connection.alive = False
    with pytest.raises(SourceUnavailableError, match="connection lost"):
        rig.source.list_running_domains()


def test_a_failing_bulk_call_makes_the_listing_unavailable(rig: Rig) -> None:
    rig.connection.stats_error = libvirt_error(1, "internal error: client socket is closed")
    with pytest.raises(SourceUnavailableError, match="client socket is closed"):
        rig.source.list_running_domains()


def test_the_close_callback_marks_the_connection_lost(rig: Rig) -> None:
    rig.connection.close_callback(rig.connection, libvirt.VIR_CONNECT_CLOSE_REASON_EOF, None)
    with pytest.raises(SourceUnavailableError, match="reason=eof"):
        rig.source.list_running_domains()
    assert ask_load(rig.source, UUID_A, 1.0).state is AgentState.ERROR
    rig.source.connect()
    assert len(rig.source.list_running_domains()) == 2


@pytest.mark.parametrize(
    ("event_id", "first", "second", "expected"),
    [
        (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_STARTED, 0, "started"),
        (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_RESUMED, 0, "started"),
        (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_STOPPED, 1, "stopped"),
        (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_CRASHED, 0, "stopped"),
        (
            libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
            libvirt.VIR_DOMAIN_EVENT_SHUTDOWN,
            libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED,
            "stopped",
        ),
        (
            libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
            libvirt.VIR_DOMAIN_EVENT_SHUTDOWN,
            libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST,
            None,
        ),
        (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_SUSPENDED, 0, None),
        (
            libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE,
            libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED,
            libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_CHANNEL,
            "agent_connected",
        ),
        (
            libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE,
            libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_DISCONNECTED,
            libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_DOMAIN_STARTED,
            "agent_disconnected",
        ),
    ],
)
def test_events_reach_the_listener(
    rig: Rig, event_id: int, first: int, second: int, expected: str | None
) -> None:
    events: list[DomainEvent] = []
    rig.source.set_event_listener(events.append)
    rig.connection.emit(event_id, domain_of(rig), first, second)
    assert events == ([DomainEvent(EventKind(expected), UUID_A)] if expected else [])


def test_a_start_event_of_a_new_run_resets_the_per_run_state(rig: Rig) -> None:
    ask_load(rig.source, UUID_A, 1.0)
    domain_of(rig).domain_id = 2  # a new QEMU process
    rig.connection.emit(
        libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, domain_of(rig), libvirt.VIR_DOMAIN_EVENT_STARTED, 0
    )
    ask_load(rig.source, UUID_A, 1.0)
    assert domain_of(rig).count("agentSetResponseTimeout") == 2


def test_a_start_event_late_for_the_run_already_listed_keeps_its_state(rig: Rig) -> None:
    """The event loop may deliver a domain's start after a listing met the new run: the
    run's handle (agent timeout, metadata) stays."""
    rig.source.list_running_domains()
    ask_load(rig.source, UUID_A, 1.0)
    metadata_reads = domain_of(rig).count("metadata")
    rig.connection.emit(
        libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, domain_of(rig), libvirt.VIR_DOMAIN_EVENT_STARTED, 0
    )
    rig.source.list_running_domains()
    ask_load(rig.source, UUID_A, 1.0)
    assert domain_of(rig).count("agentSetResponseTimeout") == 1
    assert metadata_reads > 0
    assert domain_of(rig).count("metadata") == metadata_reads


def test_a_failing_listener_does_not_break_the_event_loop(rig: Rig) -> None:
    def failing(event: DomainEvent) -> None:
        raise RuntimeError(event.kind)

    rig.source.set_event_listener(failing)
    rig.connection.emit(
        libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, domain_of(rig), libvirt.VIR_DOMAIN_EVENT_STARTED, 0
    )
    rig.source.set_event_listener(None)
    rig.connection.emit(
        libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, domain_of(rig), libvirt.VIR_DOMAIN_EVENT_STOPPED, 0
    )


def test_without_agent_events_the_source_still_works() -> None:
    connection = FakeConnection(
        domains=[fake_domain()], agent_events_error=libvirt_error(3, "not supported")
    )
    source = LibvirtSource(uri=URI, open_connection=lambda _uri: connection)
    source.connect()
    assert [event_id for event_id, _ in connection.event_callbacks.values()] == [
        libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE
    ]
    assert len(source.list_running_domains()) == 1
    source.close()


def test_close_unsubscribes_and_is_idempotent(rig: Rig) -> None:
    assert len(rig.connection.event_callbacks) == 2
    assert rig.connection.close_callback is not None
    rig.source.close()
    rig.source.close()
    assert rig.connection.event_callbacks == {}
    assert rig.connection.close_callback is None
    assert rig.connection.closed == 1
    assert rig.source.facts().daemon_version == "unknown"


def test_keepalive_is_started_on_connect(rig: Rig) -> None:
    assert rig.connection.keepalive == (5, 3)


def test_facts_after_connect(rig: Rig) -> None:
    assert rig.source.facts() == SourceFacts(
        library_version=format_libvirt_version(libvirt.getVersion()),
        daemon_version="11.3.0",
        load_method="guest_info",
        uri=URI,
    )
    assert rig.source.connection_health(lambda _inventory: pytest.fail("no VM to name")) is None


def test_the_connect_line_carries_its_facts_as_json_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="guestload")
    for _rig in make_rig(fake_domain()):
        pass
    record = next(r for r in caplog.records if r.getMessage() == "connected to libvirt")
    fields = json.loads(JsonFormatter().format(record))
    assert (fields["uri"], fields["daemon_version"], fields["load_method"]) == (
        URI,
        "11.3.0",
        "guest_info",
    )


def test_libvirt_source_is_a_source() -> None:
    source: Source = LibvirtSource(uri=URI)
    assert source.facts().load_method == "unknown"


def test_a_failing_open_is_unavailable() -> None:
    def refuse(uri: str) -> object:
        raise libvirt_error(38, f"Failed to connect socket to {uri}: Connection refused")

    source = LibvirtSource(uri=URI, open_connection=refuse)
    with pytest.raises(SourceUnavailableError, match="Connection refused"):
        source.connect()
