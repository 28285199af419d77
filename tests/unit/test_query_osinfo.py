"""The guest's OS: parsing typed and passthrough answers, hostile ones, and asking once per run."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from guestload.exposition.cache import MetricsCache
from guestload.exposition.schema import MetricSet
from guestload.model import AgentState, DomainEvent, EventKind, QueryReading, Snapshot
from guestload.polling.poller import Poller
from guestload.queries.load import LOAD
from guestload.queries.osinfo import (
    MAX_LABEL_CHARS,
    MAX_REPLY_CHARS,
    OS_INFO,
    OSINFO,
    GuestOs,
    label_text,
    os_release_id,
    parse_guest_info_os,
    parse_osinfo_reply,
    simulated_guest_info,
)
from guestload.queries.query import GuestQuery, Refresh
from guestload.registration import SimulatedGuest
from guestload.sources.simulated import WINDOWS
from tests.exposition import scraped
from tests.unit.fakes import FakeSource, domain, ok
from tests.unit.pollers import Clock, Published, make_poller
from tests.unit.snapshots import sample_snapshot

DEBIAN_GUEST_INFO = {
    "os.id": "debian",
    "os.name": "Debian GNU/Linux",
    "os.pretty-name": "Debian GNU/Linux 12 (bookworm)",
    "os.version": "12 (bookworm)",
    "os.version-id": "12",
    "os.kernel-release": "6.1.0-28-cloud-amd64",
    "os.kernel-version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)",
    "os.machine": "x86_64",
}
DEBIAN = GuestOs(
    id="debian",
    version_id="12",
    pretty_name="Debian GNU/Linux 12 (bookworm)",
    kernel_release="6.1.0-28-cloud-amd64",
    machine="x86_64",
)
#: A Windows agent's reply as reported on qemu-devel (a build its version table lacked).
WINDOWS_REPLY = json.dumps(
    {
        "return": {
            "name": "Microsoft Windows",
            "kernel-release": "20344",
            "version": "N/A",
            "variant": "server",
            "pretty-name": "Windows Server 2022 Datacenter",
            "version-id": "N/A",
            "variant-id": "server",
            "kernel-version": "10.0",
            "machine": "x86_64",
            "id": "mswindows",
        }
    }
)
#: What qemu-ga on a Linux guest without os-release answers: uname only.
KERNEL_ONLY_REPLY = json.dumps(
    {
        "return": {
            "kernel-release": "6.1.0-41-cloud-amd64",
            "kernel-version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)",
            "machine": "x86_64",
        }
    }
)


def value_of(reading: QueryReading) -> GuestOs:
    assert reading.state is AgentState.OK, reading
    assert isinstance(reading.value, GuestOs)
    return reading.value


# -- parsing ------------------------------------------------------------------------------------


def test_typed_guest_info_of_a_debian_guest() -> None:
    assert value_of(parse_guest_info_os(DEBIAN_GUEST_INFO)) == DEBIAN


def test_passthrough_reply_of_a_debian_guest_reads_the_same() -> None:
    reply = {key.removeprefix("os."): value for key, value in DEBIAN_GUEST_INFO.items()}
    assert value_of(parse_osinfo_reply(json.dumps({"return": reply}))) == DEBIAN


def test_windows_reply_keeps_mswindows_and_drops_an_n_a_version() -> None:
    assert value_of(parse_osinfo_reply(WINDOWS_REPLY)) == GuestOs(
        id="mswindows",
        version_id="",
        pretty_name="Windows Server 2022 Datacenter",
        variant_id="server",
        kernel_release="20344",
        machine="x86_64",
    )


def test_a_guest_without_os_release_has_only_its_kernel_fields() -> None:
    assert value_of(parse_osinfo_reply(KERNEL_ONLY_REPLY)) == GuestOs(
        kernel_release="6.1.0-41-cloud-amd64", machine="x86_64"
    )


def test_the_simulated_answers_parse_to_debian_and_windows() -> None:
    linux = SimulatedGuest(
        loads=(0.0, 0.0, 0.0),
        busy_seconds=0.0,
        uptime_seconds=1.0,
        vcpu_weights=(1.0,),
        wait_share=0.0,
        delay_share=0.0,
    )
    assert value_of(OSINFO.parse_typed_info(simulated_guest_info(linux))).id == "debian"
    windows = replace(linux, os=WINDOWS)
    parsed = value_of(OSINFO.parse_typed_info(simulated_guest_info(windows)))
    assert (parsed.id, parsed.version_id, parsed.variant_id) == ("mswindows", "2022", "server")
    assert "os.variant" not in simulated_guest_info(linux), "an empty field is left out"


@pytest.mark.parametrize("info", [None, [], "os.id=debian", 12, (("os.id", "debian"),)])
def test_typed_guest_info_that_is_not_a_mapping_is_invalid(info: object) -> None:
    reading = parse_guest_info_os(info)
    assert reading.state is AgentState.INVALID
    assert "not a mapping" in reading.detail


@pytest.mark.parametrize(
    ("reply", "state"),
    [
        ("not json", AgentState.INVALID),
        ('["debian"]', AgentState.INVALID),
        ('{"return": ["debian"]}', AgentState.INVALID),
        ('{"return": "debian"}', AgentState.INVALID),
        ('{"return": null}', AgentState.INVALID),
        (None, AgentState.INVALID),
        (b'{"return": {"id": "debian"}}', AgentState.INVALID),
        ('{"error": {"class": "CommandNotFound", "desc": "not found"}}', AgentState.UNSUPPORTED),
        ('{"error": {"class": "GenericError", "desc": "uname failed"}}', AgentState.ERROR),
    ],
)
def test_malformed_replies_and_agent_errors(reply: object, state: AgentState) -> None:
    assert parse_osinfo_reply(reply).state is state


def test_a_reply_longer_than_the_limit_is_invalid_without_parsing() -> None:
    padding = " " * MAX_REPLY_CHARS
    reading = parse_osinfo_reply('{"return": {"id": "debian"}}' + padding)
    assert reading.state is AgentState.INVALID
    assert "exceeds" in reading.detail


def test_no_os_key_at_all_is_no_data() -> None:
    assert parse_guest_info_os({}).state is AgentState.NO_DATA
    assert parse_guest_info_os({"load.1m": 0.5}).state is AgentState.NO_DATA
    assert parse_osinfo_reply('{"return": {}}').state is AgentState.NO_DATA


@pytest.mark.parametrize(
    "values",
    [
        {"os.id": 7, "os.pretty-name": ["Debian"], "os.machine": None, "os.version-id": 12},
        {"os.name": "Debian GNU/Linux", "os.kernel-version": "#1 SMP"},
        {"os.id": "Debian GNU/Linux", "os.pretty-name": "\x00\x1b\u202e\n\t"},
        {"os.id": True, "os.kernel-release": {"x": 1}, "os.machine": 1.5},
    ],
)
def test_an_answer_without_a_usable_value_is_invalid(values: Mapping[str, object]) -> None:
    reading = parse_guest_info_os(values)
    assert reading.state is AgentState.INVALID
    assert "no usable OS field" in reading.detail


def test_values_that_are_not_text_are_dropped_and_the_rest_kept() -> None:
    values = {**DEBIAN_GUEST_INFO, "os.id": 5, "os.pretty-name": {"a": 1}, "os.version-id": 12}
    assert value_of(parse_guest_info_os(values)) == replace(
        DEBIAN, id="", pretty_name="", version_id=""
    )


def test_huge_values_are_cut_or_refused() -> None:
    values = {
        "os.pretty-name": "Debian " * 100_000,
        "os.kernel-release": "6" * 10_000,
        "os.id": "a" * (MAX_LABEL_CHARS + 1),
        "os.variant-id": "b" * MAX_LABEL_CHARS,
        "os.version-id": "1" * 1_000_000,
    }
    system = value_of(parse_guest_info_os(values))
    assert len(system.pretty_name) <= MAX_LABEL_CHARS
    assert system.pretty_name.startswith("Debian Debian")
    assert not system.pretty_name.endswith(" ")
    assert system.kernel_release == "6" * MAX_LABEL_CHARS
    assert system.id == "", "a cut identifier would name another system"
    assert system.variant_id == "b" * MAX_LABEL_CHARS
    assert system.version_id == ""


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("Debian GNU/Linux 12", "Debian GNU/Linux 12"),
        ("  Debian\tGNU/Linux\n12\r\n", "Debian GNU/Linux 12"),
        ("Debian\x00 GNU\x1b[31m/Linux\x7f", "Debian GNU[31m/Linux"),
        ("Ubuntu\u202e 24.04\u200b LTS", "Ubuntu 24.04 LTS"),
        ("Fedora \ud800Linux", "Fedora Linux"),
        ("Café OS 1", "Café OS 1"),
        ("\x00\x01", ""),
    ],
)
def test_control_format_and_surrogate_characters_are_removed(raw: str, cleaned: str) -> None:
    assert label_text(raw) == cleaned


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("debian", "debian"),
        ("Debian", "debian"),
        ("opensuse-leap", "opensuse-leap"),
        ("rhel_9.4", "rhel_9.4"),
        ("  ubuntu\n", "ubuntu"),
        ("deb\x00ian", "debian"),
        ("N/A", ""),
        ("debian linux", ""),
        ("débian", ""),
        ("İ", ""),
        ("", ""),
        (42, ""),
    ],
)
def test_identifiers_follow_os_release_rules(raw: object, normalised: str) -> None:
    assert os_release_id(raw) == normalised


@given(st.text(max_size=600))
def test_any_text_becomes_a_label_value_the_exposition_can_carry(raw: str) -> None:
    for value in (label_text(raw), os_release_id(raw)):
        assert len(value) <= MAX_LABEL_CHARS
        assert value == value.strip()
        value.encode("utf-8")  # no lone surrogate survives
        assert not any(unicodedata.category(char) in {"Cc", "Cf", "Cs"} for char in value)


def test_hostile_values_render_and_parse_in_the_exposition() -> None:
    system = value_of(
        parse_guest_info_os(
            {
                "os.id": "debian",
                "os.pretty-name": 'evil"} 1\nfake_metric{a="b',
                "os.kernel-release": "\\\\\ud800\u202e",
                "os.machine": "x" * 10_000,
            }
        )
    )
    cache = MetricsCache(metric_set=MetricSet(queries=(OSINFO,)))
    snapshot = sample_snapshot()
    first = snapshot.domains[0]
    readings = {"osinfo": QueryReading(state=AgentState.OK, value=system)}
    cache.update(replace(snapshot, domains=(replace(first, readings=readings),)))
    text = scraped(cache).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "fake_metric" not in families
    (sample,) = families[OS_INFO.name].samples
    assert sample.labels["pretty_name"] == 'evil"} 1 fake_metric{a="b'
    assert sample.labels["kernel_release"] == "\\\\"
    assert len(sample.labels["machine"]) == MAX_LABEL_CHARS
    assert sample.value == 1.0


def test_the_query_is_asked_once_per_run_and_exports_one_series() -> None:
    assert OSINFO.refresh is Refresh.ONCE_PER_RUN
    assert LOAD.refresh is Refresh.EVERY_POLL
    labels = (
        "debian",
        "12",
        "Debian GNU/Linux 12 (bookworm)",
        "",
        "6.1.0-28-cloud-amd64",
        "x86_64",
    )
    assert list(OSINFO.samples(DEBIAN)) == [(OS_INFO, labels, 1.0)]
    assert list(OSINFO.samples(None)) == []


# -- once per run in the poller -----------------------------------------------------------------


@dataclass
class AskingSource(FakeSource):
    """A FakeSource that records the queries of every call and answers osinfo from a list."""

    asked: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    os_answers: list[QueryReading] = field(default_factory=list)

    def query_guest(
        self, uuid: str, queries: Sequence[GuestQuery], timeout_seconds: float
    ) -> Mapping[str, QueryReading]:
        self.asked.append((uuid, tuple(query.name for query in queries)))
        if self.os_answers:
            self.other_answers["osinfo"] = self.os_answers.pop(0)
        return super().query_guest(uuid, queries, timeout_seconds)

    def os_asks(self, uuid: str = "a") -> int:
        return sum("osinfo" in names for asked, names in self.asked if asked == uuid)


OS_OK = QueryReading(state=AgentState.OK, value=DEBIAN)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def source() -> AskingSource:
    source = AskingSource(domains=[domain("a")], answers={"a": ok(1.0)})
    source.other_answers["osinfo"] = OS_OK
    return source


@pytest.fixture
def poller(source: AskingSource, clock: Clock, published: Published) -> Iterator[Poller]:
    poller = make_poller(source, clock, published, queries=(LOAD, OSINFO))
    yield poller
    poller.close()


def poll(poller: Poller, clock: Clock) -> Snapshot:
    clock.now += 30.0
    return poller.poll()


def os_of(snapshot: Snapshot) -> QueryReading | None:
    (sample,) = snapshot.domains
    return sample.readings.get("osinfo")


def test_the_os_is_asked_once_across_polls_and_stays_exported(
    poller: Poller, source: AskingSource, clock: Clock
) -> None:
    snapshots = [poll(poller, clock) for _ in range(4)]

    assert source.os_asks() == 1
    assert source.asked[0] == ("a", ("load", "osinfo")), "asked after the load, in one call"
    assert [names for _, names in source.asked[1:]] == [("load",)] * 3
    assert all(os_of(snapshot) == OS_OK for snapshot in snapshots)
    assert snapshots[-1].agent_calls_total[("osinfo", AgentState.OK)] == 1
    assert snapshots[-1].agent_calls_total[("load", AgentState.OK)] == 4


def test_a_failed_answer_is_asked_again_at_the_next_poll(
    poller: Poller, source: AskingSource, clock: Clock
) -> None:
    source.os_answers = [
        QueryReading(state=AgentState.INVALID, detail="no usable OS field"),
        QueryReading(state=AgentState.ERROR, detail="uname failed"),
        OS_OK,
    ]
    states = [os_of(poll(poller, clock)) for _ in range(5)]

    assert [reading.state if reading else None for reading in states] == [
        AgentState.INVALID,
        AgentState.ERROR,
        AgentState.OK,
        AgentState.OK,
        AgentState.OK,
    ]
    assert source.os_asks() == 3


def test_a_new_domain_id_means_a_restart_and_the_os_is_asked_again(
    poller: Poller, source: AskingSource, clock: Clock
) -> None:
    source.domains = [replace(domain("a"), domain_id=1)]
    poll(poller, clock)
    poll(poller, clock)
    assert source.os_asks() == 1

    source.domains = [replace(domain("a"), domain_id=2)]
    poll(poller, clock)
    poll(poller, clock)

    assert source.os_asks() == 2


@pytest.mark.parametrize("kind", [EventKind.STARTED, EventKind.AGENT_CONNECTED])
def test_a_start_or_an_agent_connecting_asks_the_os_again_at_once(
    poller: Poller, source: AskingSource, clock: Clock, kind: EventKind
) -> None:
    poll(poller, clock)
    poll(poller, clock)
    assert source.os_asks() == 1

    snapshot = poller.apply_events([DomainEvent(kind, "a")])

    assert snapshot is not None
    assert source.os_asks() == 2
    assert source.asked[-1] == ("a", ("load", "osinfo"))
    poll(poller, clock)
    assert source.os_asks() == 2


def test_an_agent_that_disconnects_and_comes_back_is_asked_again(
    poller: Poller, source: AskingSource, clock: Clock
) -> None:
    poll(poller, clock)
    snapshot = poller.apply_events([DomainEvent(EventKind.AGENT_DISCONNECTED, "a")])
    assert snapshot is not None
    gone = os_of(snapshot)
    assert gone is not None
    assert gone.state is AgentState.NOT_CONNECTED
    assert source.os_asks() == 1

    assert os_of(poll(poller, clock)) == OS_OK

    assert source.os_asks() == 2


def test_a_stopped_and_started_domain_is_asked_again(
    poller: Poller, source: AskingSource, clock: Clock
) -> None:
    poll(poller, clock)
    poller.apply_events([DomainEvent(EventKind.STOPPED, "a"), DomainEvent(EventKind.STARTED, "a")])
    assert source.os_asks() == 2


def test_other_domains_keep_their_settled_answer(
    poller: Poller, source: AskingSource, clock: Clock
) -> None:
    source.domains = [domain("a"), domain("b")]
    source.answers["b"] = ok(2.0)
    poll(poller, clock)
    poller.apply_events([DomainEvent(EventKind.AGENT_CONNECTED, "a")])
    poll(poller, clock)

    assert source.os_asks("a") == 2
    assert source.os_asks("b") == 1
