"""The query registry: a query registers itself, and the registry refuses clashes."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from guestload.cli.flags import build_parser, query_options_from_args
from guestload.exposition.schema import FIXED_FAMILIES, MetricSet
from guestload.metricspec import VM_LABELS, MetricSpec, MetricType, VmSample
from guestload.model import AgentState, QueryReading
from guestload.queries import cpustats, load, osinfo
from guestload.queries.agent import invalid, reply_return
from guestload.queries.catalog import ALL_QUERIES, QUERIES
from guestload.queries.cpustats import (
    GUEST_CPU_LAST_POLL,
    GUEST_CPU_SECONDS,
    GUEST_CPU_SECONDS_PER_CPU,
)
from guestload.queries.query import GuestQuery, Refresh
from guestload.queries.registry import QueryRegistration, QueryRegistry, registration
from guestload.registration import CollectorFlag, RegistrationError, SimulatedGuest
from guestload.settings import Settings, SettingsError
from guestload.simulation import Simulation
from guestload.sources.simulated import SimulatedSource

GUEST = SimulatedGuest(
    loads=(1.234, 0.5, 0.25),
    busy_seconds=5000.0,
    uptime_seconds=86400.0,
    vcpu_weights=(0.9, 1.1),
    wait_share=0.01,
    delay_share=0.02,
)

UPTIME = MetricSpec(
    "guestload_guest_uptime_seconds", MetricType.GAUGE, "Guest uptime (test query).", VM_LABELS
)


UPTIME_MAX_REPLY_CHARS = 1024


class UptimeQuery(GuestQuery):
    """A query as a new module would add it: its own command, parser and family."""

    name = "uptime"
    agent_command = "guest-test-uptime"

    @property
    def families(self) -> tuple[MetricSpec, ...]:
        return (UPTIME,)

    def parse_agent_reply(self, reply: object) -> QueryReading:
        answer = reply_return(reply, max_chars=UPTIME_MAX_REPLY_CHARS)
        if isinstance(answer, QueryReading):
            return answer
        if not isinstance(answer, dict) or not isinstance(answer.get("seconds"), float):
            return invalid("no seconds")
        return QueryReading(state=AgentState.OK, value=answer["seconds"])

    def samples(self, value: object) -> Iterator[VmSample]:
        if isinstance(value, float):
            yield UPTIME, (), value


@dataclass(frozen=True, slots=True, kw_only=True)
class UptimeOptions:
    enabled: bool = True


def uptime_registration(
    *,
    name: str = "uptime",
    flag: str = "--collector.uptime",
    families: tuple[MetricSpec, ...] = (UPTIME,),
) -> QueryRegistration:
    return registration(
        name=name,
        defaults=UptimeOptions(),
        flags=(CollectorFlag(flag, "enabled", "ask guest agents for their uptime (%(default)s)"),),
        build=lambda _options: UptimeQuery(),
        families=families,
        agent_since=(7, 0),
        simulated_answer=lambda guest: json.dumps({"return": {"seconds": guest.uptime_seconds}}),
    )


def with_uptime(**changes: object) -> QueryRegistry:
    """The registry guestload has, with the uptime query (``changes``) registered after it."""
    registry = QueryRegistry((load.REGISTRATION, cpustats.REGISTRATION))
    registry.register(uptime_registration(**changes))  # type: ignore[arg-type]
    return registry


def test_the_catalog_registers_load_then_cpustats_then_osinfo() -> None:
    names = ["load", "cpustats", "osinfo"]
    assert [reg.name for reg in QUERIES] == names
    assert [query.name for query in ALL_QUERIES] == names
    assert [query.name for query in Settings(node="n").queries()] == names
    assert [query.refresh for query in ALL_QUERIES] == [
        Refresh.EVERY_POLL,
        Refresh.EVERY_POLL,
        Refresh.ONCE_PER_RUN,
    ]


def test_the_os_query_registers_its_flag_and_family() -> None:
    registered = QUERIES.get("osinfo")
    assert registered is osinfo.REGISTRATION
    assert [flag.name for flag in registered.flags] == ["--collector.guest-os"]
    assert registered.defaults == osinfo.OsInfoOptions(enabled=True)
    assert registered.families == (osinfo.OS_INFO,)
    assert osinfo.OS_INFO.name == "guestload_guest_os_info"
    assert not osinfo.OS_INFO.name.startswith("kubevirt_vmi_")
    assert osinfo.OS_INFO.labels[: len(VM_LABELS)] == VM_LABELS
    assert "--collector.guest-os, --no-collector.guest-os" in _serve_help(QUERIES)
    metric_set = MetricSet(queries=QUERIES.defaults().queries())
    assert osinfo.OS_INFO in metric_set.vm_families()
    off = QUERIES.defaults().replaced(osinfo.OsInfoOptions(enabled=False))
    assert osinfo.OS_INFO not in MetricSet(queries=off.queries()).vm_families()


@pytest.mark.parametrize("query", ALL_QUERIES, ids=lambda query: query.name)
def test_a_query_s_reply_limit_holds_at_its_edge(query: GuestQuery) -> None:
    huge = query.parse_agent_reply(" " * (64 * 1024 * 1024))
    limit = int(huge.detail.rsplit(" ", 1)[-1])  # "reply of N characters exceeds LIMIT"
    assert "exceeds" not in query.parse_agent_reply(" " * limit).detail
    assert query.parse_agent_reply(" " * (limit + 1)) == invalid(
        f"reply of {limit + 1} characters exceeds {limit}"
    )


def test_a_query_s_alternative_families_may_share_a_name() -> None:
    assert GUEST_CPU_SECONDS.name == GUEST_CPU_SECONDS_PER_CPU.name
    assert cpustats.REGISTRATION.families == (
        GUEST_CPU_SECONDS,
        GUEST_CPU_SECONDS_PER_CPU,
        GUEST_CPU_LAST_POLL,
    )
    QueryRegistry((cpustats.REGISTRATION,))


def test_a_duplicate_query_name_is_refused() -> None:
    registry = with_uptime()
    with pytest.raises(RegistrationError, match=r"^query 'uptime' is already registered$"):
        registry.register(uptime_registration(flag="--collector.uptime2"))


def test_a_duplicate_flag_is_refused() -> None:
    with pytest.raises(
        RegistrationError,
        match=r"^query 'uptime': flag --collector\.load is already registered by query 'load'$",
    ):
        with_uptime(flag="--collector.load")
    with pytest.raises(RegistrationError, match=r"flag --collector\.guest-cpu\.per-cpu is already"):
        with_uptime(flag="--collector.guest-cpu.per-cpu")


def test_a_metric_name_of_another_query_is_refused() -> None:
    message = (
        r"^query 'uptime': metric family kubevirt_vmi_guest_load_5m clashes with family "
        r"kubevirt_vmi_guest_load_5m of query 'load' \(both expose kubevirt_vmi_guest_load_5m\)$"
    )
    with pytest.raises(RegistrationError, match=message):
        with_uptime(families=(UPTIME, load.LOAD_5M))


def test_a_gauge_named_like_another_query_s_counter_samples_is_refused() -> None:
    total = MetricSpec("guestload_guest_cpu_seconds_total", MetricType.GAUGE, "x", VM_LABELS)
    with pytest.raises(RegistrationError, match=r"both expose guestload_guest_cpu_seconds_total"):
        with_uptime(families=(total,))


@pytest.mark.parametrize(
    ("family", "exposed"),
    [
        ("guestload_agent_state", "guestload_agent_state"),
        ("kubevirt_vmi_vcpu_seconds", "kubevirt_vmi_vcpu_seconds"),
        ("guestload_polls_total", "guestload_polls_total"),
        ("guestload_render_duration_seconds", "guestload_render_duration_seconds"),
    ],
)
def test_a_metric_name_of_the_exporter_s_own_families_is_refused(family: str, exposed: str) -> None:
    clash = MetricSpec(family, MetricType.GAUGE, "x", (*VM_LABELS, "state"))
    (own,) = [spec for spec in FIXED_FAMILIES if exposed in (spec.name, spec.sample_name)]
    message = (
        rf"^query 'uptime': metric family {family} clashes with family {own.name} of the "
        rf"exporter \(both expose {exposed}\)$"
    )
    with pytest.raises(RegistrationError, match=message):
        with_uptime(families=(clash,))


def test_a_refused_registration_leaves_the_registry_as_it_was() -> None:
    registry = QueryRegistry((load.REGISTRATION,))
    with pytest.raises(RegistrationError):
        registry.register(uptime_registration(families=(UPTIME, load.LOAD_1M)))
    registry.register(uptime_registration())
    assert [reg.name for reg in registry] == ["load", "uptime"]


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (
            {"flags": (CollectorFlag("--uptime", "enabled", "h"),)},
            "flag --uptime lacks --collector.",
        ),
        ({"flags": (CollectorFlag("--collector.uptime", "on", "h"),)}, "does not set enabled"),
        ({"flags": ()}, "does not set enabled"),
        ({"families": ()}, "exports no family"),
        (
            {"families": (MetricSpec("guestload_test", MetricType.GAUGE, "x"),)},
            "family guestload_test is not per VM",
        ),
    ],
)
def test_a_malformed_registration_is_refused(changes: dict[str, object], problem: str) -> None:
    arguments: dict[str, object] = {
        "name": "uptime",
        "defaults": UptimeOptions(),
        "flags": (CollectorFlag("--collector.uptime", "enabled", "h"),),
        "build": lambda _options: UptimeQuery(),
        "families": (UPTIME,),
        "agent_since": (7, 0),
        "simulated_answer": lambda _guest: "{}",
    } | changes
    with pytest.raises(RegistrationError, match=problem):
        registration(**arguments)  # type: ignore[arg-type, type-var]


@pytest.mark.parametrize("registered", list(QUERIES), ids=lambda reg: reg.name)
def test_each_query_s_simulated_answer_parses_ok_with_its_own_parser(
    registered: QueryRegistration,
) -> None:
    query = registered.build(registered.defaults)
    answer = registered.simulated_answer(GUEST)
    if query.typed_info is not None:
        reading = query.parse_typed_info(answer)
    else:
        reading = query.parse_agent_reply(answer)
    assert reading.state is AgentState.OK, reading.detail
    assert list(query.samples(query.fold(None, reading.value)))


def test_the_registered_builds_follow_the_options() -> None:
    summed = QUERIES.defaults()
    per_cpu = summed.replaced(cpustats.CpuStatsOptions(per_cpu=True))
    assert per_cpu.queries()[1].families == (GUEST_CPU_SECONDS_PER_CPU, GUEST_CPU_LAST_POLL)
    assert summed.queries()[1].families == (GUEST_CPU_SECONDS, GUEST_CPU_LAST_POLL)
    only_cpu = summed.replaced(load.LoadOptions(enabled=False), osinfo.OsInfoOptions(enabled=False))
    assert [query.name for query in only_cpu.queries()] == ["cpustats"]
    assert only_cpu.of(load.LoadOptions) == load.LoadOptions(enabled=False)


def test_adding_a_query_to_a_registry_adds_its_flag_its_query_and_its_answer() -> None:
    registry = with_uptime()
    assert "--collector.uptime, --no-collector.uptime" in _serve_help(registry)
    assert "--collector.uptime" not in _serve_help(QUERIES)

    args = build_parser(registry).parse_args(["serve", "--no-collector.load"])
    options = query_options_from_args(args, registry)
    settings = Settings(node="n", query_options=options)
    assert [query.name for query in settings.queries()] == ["cpustats", "uptime"]
    metric_set = MetricSet(queries=settings.queries())
    assert UPTIME in metric_set.vm_families()

    source = SimulatedSource(
        simulation=Simulation(vms=1), churn_thread=False, queries=registry, clock=lambda: 0.0
    )
    source.connect()
    (domain,) = source.list_running_domains()
    readings = source.query_guest(domain.uuid, settings.queries(), 1.0)
    assert {name: reading.state for name, reading in readings.items()} == {
        "cpustats": AgentState.OK,
        "uptime": AgentState.OK,
    }


def test_the_simulated_agent_does_not_know_an_unregistered_query() -> None:
    source = SimulatedSource(simulation=Simulation(vms=1), churn_thread=False, clock=lambda: 0.0)
    source.connect()
    (domain,) = source.list_running_domains()
    readings = source.query_guest(domain.uuid, (UptimeQuery(),), 1.0)
    assert readings["uptime"].state is AgentState.UNSUPPORTED


def test_without_any_query_the_first_one_s_off_flag_is_named() -> None:
    registry = with_uptime()
    args = build_parser(registry).parse_args(
        ["serve", "--no-collector.load", "--no-collector.guest-cpu", "--no-collector.uptime"]
    )
    message = (
        r"^--no-collector\.load needs --collector\.guest-cpu or --collector\.uptime: with none "
        r"of them, no guest agent is asked anything$"
    )
    with pytest.raises(SettingsError, match=message):
        Settings(node="n", query_options=query_options_from_args(args, registry))


def test_options_of_another_class_are_refused_by_the_factory() -> None:
    @dataclass(frozen=True)
    class Other:
        enabled: bool = True

    with pytest.raises(RegistrationError, match="options are a Other, not LoadOptions"):
        load.REGISTRATION.build(Other())


def _serve_help(registry: QueryRegistry) -> str:
    parser = build_parser(registry)
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    text: str = subparsers.choices["serve"].format_help()
    return text
