"""Host stats: the balloon's parser, the registry's clash checks, the flag, the simulation."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from guestload.cli.flags import build_parser, settings_from_args
from guestload.exposition.cache import MetricsCache
from guestload.exposition.schema import MetricSet
from guestload.hoststats import balloon
from guestload.hoststats.balloon import (
    BALLOON,
    MAX_COUNT,
    MAX_KIB,
    BalloonOptions,
    BalloonStats,
    parse_balloon_stats,
)
from guestload.hoststats.block import BLOCK
from guestload.hoststats.catalog import ALL_HOST_STATS, HOST_STATS
from guestload.hoststats.hoststat import HostStat, read_record
from guestload.hoststats.registry import (
    HostStatRegistration,
    HostStatRegistry,
    registration,
)
from guestload.metricspec import VM_LABELS, MetricSpec, MetricType, VmSample
from guestload.model import DomainInventory, Snapshot
from guestload.queries import cpustats, load
from guestload.queries.registry import QueryRegistry
from guestload.queries.registry import registration as query_registration
from guestload.registration import CollectorFlag, RegistrationError, SimulatedGuest
from guestload.settings import Settings
from guestload.simulation import Simulation
from guestload.sources.simulated import STEP_SECONDS, SimulatedSource
from tests.exposition import scraped
from tests.unit.fakes import FakeSource, domain
from tests.unit.pollers import Clock, make_poller
from tests.unit.snapshots import sample_snapshot

GIB_KIB = 1024 * 1024
FULL_RECORD: dict[str, object] = {
    "state.state": 1,
    "balloon.current": 4 * GIB_KIB,
    "balloon.maximum": 4 * GIB_KIB,
    "balloon.swap_in": 10,
    "balloon.swap_out": 20,
    "balloon.major_fault": 3,
    "balloon.minor_fault": 4000,
    "balloon.unused": GIB_KIB,
    "balloon.available": 4 * GIB_KIB - 1000,
    "balloon.usable": 2 * GIB_KIB,
    "balloon.disk_caches": GIB_KIB,
    "balloon.last-update": 1_700_000_000,
    "balloon.rss": 3 * GIB_KIB,
    "balloon.hugetlb_pgalloc": 0,
}
FULL_STATS = BalloonStats(
    balloon_bytes=4 * 1024**3,
    available_bytes=(4 * GIB_KIB - 1000) * 1024,
    usable_bytes=2 * 1024**3,
    unused_bytes=1024**3,
    swap_in_bytes=10 * 1024,
    swap_out_bytes=20 * 1024,
    major_faults=3,
    minor_faults=4000,
    update_timestamp_seconds=1_700_000_000,
)


# -- the parser ---------------------------------------------------------------------------------


def test_every_documented_key_is_read_in_bytes_and_counts() -> None:
    assert parse_balloon_stats(FULL_RECORD) == FULL_STATS


def test_without_a_statistics_period_only_the_balloon_size_is_read() -> None:
    record = {"balloon.current": 2 * GIB_KIB, "balloon.maximum": 4 * GIB_KIB}
    assert parse_balloon_stats(record) == BalloonStats(balloon_bytes=2 * 1024**3)


@pytest.mark.parametrize(
    "record",
    [
        pytest.param({}, id="empty"),
        pytest.param({"state.state": 1, "vcpu.current": 2}, id="other-groups"),
        pytest.param({"balloon.maximum": GIB_KIB, "balloon.rss": 5}, id="unexported-keys-only"),
    ],
)
def test_a_record_without_the_group_has_no_value(record: Mapping[str, object]) -> None:
    assert parse_balloon_stats(record) is None
    assert BALLOON.parse(record) is None
    assert read_record((BALLOON,), record) == {}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("balloon.swap_in", -1),
        ("balloon.swap_out", 1.5),
        ("balloon.major_fault", math.nan),
        ("balloon.minor_fault", math.inf),
        ("balloon.minor_fault", -math.inf),
        ("balloon.major_fault", True),
        ("balloon.swap_in", "10"),
        ("balloon.swap_in", None),
        ("balloon.swap_in", [10]),
        ("balloon.swap_out", MAX_KIB + 1),
        ("balloon.major_fault", MAX_COUNT + 1),
        ("balloon.minor_fault", 2**64 - 1),
        ("balloon.minor_fault", 10**400),
        ("balloon.unused", 4 * GIB_KIB + 1),
        ("balloon.available", 2**62),
        ("balloon.usable", 4 * GIB_KIB + 1),
        ("balloon.last-update", 10**15),
        ("balloon.last-update", -5),
        ("balloon.current", MAX_KIB + 1),
    ],
)
def test_a_hostile_value_loses_only_its_own_field(key: str, value: object) -> None:
    record = {**FULL_RECORD, key: value}
    stats = parse_balloon_stats(record)
    assert stats is not None
    attribute = _attribute(key)
    assert getattr(stats, attribute) is None
    others = {
        name: getattr(stats, name)
        for name in BalloonStats.__dataclass_fields__
        if name != attribute
    }
    assert others == {
        name: getattr(FULL_STATS, name)
        for name in BalloonStats.__dataclass_fields__
        if name != attribute
    }


def test_guest_sizes_are_bounded_by_a_usable_maximum_only() -> None:
    # A hostile maximum is ignored: the guest's sizes are then bounded by the 2**63 bytes only.
    for maximum in (-1, "4", None, MAX_KIB + 1):
        stats = parse_balloon_stats(
            {**FULL_RECORD, "balloon.maximum": maximum, "balloon.unused": 2**40}
        )
        assert stats is not None
        assert stats.unused_bytes == 2**50
    capped = parse_balloon_stats({**FULL_RECORD, "balloon.unused": 2**40})
    assert capped is not None
    assert capped.unused_bytes is None


def test_a_record_with_only_hostile_values_has_no_value() -> None:
    assert parse_balloon_stats({"balloon.current": -1, "balloon.swap_in": "x"}) is None


def test_the_largest_values_are_kept_exactly() -> None:
    stats = parse_balloon_stats(
        {"balloon.major_fault": MAX_COUNT, "balloon.swap_in": MAX_KIB, "balloon.last-update": 0}
    )
    assert stats == BalloonStats(
        major_faults=MAX_COUNT, swap_in_bytes=MAX_KIB * 1024, update_timestamp_seconds=0
    )
    assert stats.swap_in_bytes is not None
    assert stats.swap_in_bytes <= MAX_COUNT


def test_samples_follow_the_families_and_leave_out_what_is_missing() -> None:
    rates = (("swap_in_bytes", 2.0), ("major_faults", 3.0))
    full = list(BALLOON.samples(replace(FULL_STATS, rates=rates)))
    assert [spec for spec, _, _ in full] == list(BALLOON.families)
    assert all(extra == () for _, extra, _ in full)
    assert list(BALLOON.samples(BalloonStats(balloon_bytes=1024))) == [
        (balloon.BALLOON_BYTES, (), 1024.0)
    ]
    assert list(BALLOON.samples("not balloon stats")) == []


def test_the_exported_names_stay_outside_kubevirt_s() -> None:
    names = [spec.sample_name for spec in BALLOON.families]
    assert names == [
        "guestload_memory_balloon_bytes",
        "guestload_memory_available_bytes",
        "guestload_memory_usable_bytes",
        "guestload_memory_unused_bytes",
        "guestload_memory_swap_in_bytes_total",
        "guestload_memory_swap_out_bytes_total",
        "guestload_memory_major_faults_total",
        "guestload_memory_minor_faults_total",
        "guestload_memory_stats_update_timestamp_seconds",
        "guestload_memory_last_poll_swap_in_bytes_per_second",
        "guestload_memory_last_poll_major_faults_per_second",
    ]


class _Raising(HostStat):
    name = "raising"
    stats_group = "VIR_DOMAIN_STATS_BALLOON"

    @property
    def families(self) -> tuple[MetricSpec, ...]:
        return ()

    def parse(self, record: Mapping[str, object]) -> object | None:
        raise RuntimeError("a parser bug")

    def samples(self, value: object) -> Iterator[VmSample]:
        return iter(())


def test_a_parser_that_raises_loses_only_its_own_value() -> None:
    assert read_record((_Raising(), BALLOON), FULL_RECORD) == {"balloon": FULL_STATS}


# -- the registry -------------------------------------------------------------------------------

SWAPPINESS = MetricSpec(
    "guestload_memory_swappiness", MetricType.GAUGE, "A test host stat's family.", VM_LABELS
)


@dataclass(frozen=True, slots=True)
class _TestHostStat(HostStat):
    name: str = "test"
    stats_group: str = "VIR_DOMAIN_STATS_BALLOON"
    exported: tuple[MetricSpec, ...] = (SWAPPINESS,)

    @property
    def families(self) -> tuple[MetricSpec, ...]:
        return self.exported

    def parse(self, record: Mapping[str, object]) -> object | None:
        return record.get("balloon.current")

    def samples(self, value: object) -> Iterator[VmSample]:
        if isinstance(value, int):
            yield SWAPPINESS, (), float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class _TestOptions:
    enabled: bool = True


def _host_stat(
    *,
    name: str = "test",
    flag: str = "--collector.test",
    families: tuple[MetricSpec, ...] = (SWAPPINESS,),
    built: HostStat | None = None,
) -> HostStatRegistration:
    return registration(
        name=name,
        defaults=_TestOptions(),
        flags=(CollectorFlag(flag, "enabled", "h"),),
        build=lambda _options: built or _TestHostStat(name=name, exported=families),
        families=families,
        simulated_record=lambda guest: {"balloon.current": guest.memory.size_kib},
    )


def _beside_the_queries() -> tuple[QueryRegistry, HostStatRegistry]:
    queries = QueryRegistry((load.REGISTRATION, cpustats.REGISTRATION))
    return queries, HostStatRegistry((balloon.REGISTRATION,), claims=queries.claims)


def test_the_catalog_registers_the_balloon_beside_the_queries() -> None:
    assert [reg.name for reg in HOST_STATS] == ["balloon", "block"]
    assert ALL_HOST_STATS == (BALLOON, BLOCK)
    assert Settings(node="n").host_stats() == (BALLOON, BLOCK)
    assert BALLOON.stats_group == "VIR_DOMAIN_STATS_BALLOON"


def test_a_host_stat_whose_metric_is_a_query_s_is_refused() -> None:
    _, host_stats = _beside_the_queries()
    message = (
        r"^host stat 'test': metric family kubevirt_vmi_guest_load_1m clashes with family "
        r"kubevirt_vmi_guest_load_1m of query 'load' \(both expose kubevirt_vmi_guest_load_1m\)$"
    )
    with pytest.raises(RegistrationError, match=message):
        host_stats.register(_host_stat(families=(SWAPPINESS, load.LOAD_1M)))


def test_a_host_stat_whose_metric_is_the_exporter_s_own_is_refused() -> None:
    clash = MetricSpec("kubevirt_vmi_vcpu_wait_seconds_total", MetricType.GAUGE, "x", VM_LABELS)
    with pytest.raises(RegistrationError, match=r"of the exporter \(both expose"):
        HostStatRegistry((_host_stat(families=(clash,)),))


def test_a_query_whose_metric_is_a_host_stat_s_is_refused() -> None:
    queries, host_stats = _beside_the_queries()
    host_stats.register(_host_stat())
    (registered,) = [reg for reg in queries if reg.name == "load"]
    renamed = query_registration(
        name="load2",
        defaults=load.LoadOptions(),
        flags=(CollectorFlag("--collector.load2", "enabled", "h"),),
        build=lambda _options: load.LOAD,
        families=(SWAPPINESS,),
        agent_since=registered.agent_since,
        simulated_answer=registered.simulated_answer,
    )
    with pytest.raises(RegistrationError, match=r"of host stat 'test' \(both expose"):
        queries.register(renamed)


def test_a_host_stat_with_a_query_s_flag_or_a_taken_name_is_refused() -> None:
    _, host_stats = _beside_the_queries()
    with pytest.raises(
        RegistrationError,
        match=r"^host stat 'test': flag --collector\.load is already registered by query 'load'$",
    ):
        host_stats.register(_host_stat(flag="--collector.load"))
    with pytest.raises(RegistrationError, match=r"^host stat 'balloon' is already registered$"):
        host_stats.register(_host_stat(name="balloon", flag="--collector.balloon2"))


def test_a_refused_host_stat_leaves_no_claim_behind() -> None:
    _, host_stats = _beside_the_queries()
    with pytest.raises(RegistrationError):
        host_stats.register(_host_stat(families=(SWAPPINESS, load.LOAD_5M)))
    host_stats.register(_host_stat())
    assert [reg.name for reg in host_stats] == ["balloon", "test"]


@pytest.mark.parametrize(
    ("built", "problem"),
    [
        (_TestHostStat(name="other"), "the factory built host stat 'other'"),
        (_TestHostStat(stats_group="BALLOON"), "is not a VIR_DOMAIN_STATS_\\* constant"),
        (_TestHostStat(exported=(balloon.BALLOON_BYTES,)), "exports unregistered families"),
    ],
)
def test_a_factory_building_something_else_is_refused(built: HostStat, problem: str) -> None:
    registered = _host_stat(built=built)
    with pytest.raises(RegistrationError, match=problem):
        registered.build(registered.defaults)


def test_options_of_another_class_are_refused() -> None:
    with pytest.raises(RegistrationError, match="options are a _TestOptions, not BalloonOptions"):
        balloon.REGISTRATION.build(_TestOptions())


# -- the flag and the exposition ----------------------------------------------------------------


def _settings(*flags: str) -> Settings:
    return settings_from_args(build_parser().parse_args(["serve", "--node", "n", *flags]))


def _families(settings: Settings) -> dict[str, Metric]:
    cache = MetricsCache(
        metric_set=MetricSet(
            queries=settings.queries(),
            vcpu_collector=settings.vcpu_collector,
            host_stats=settings.host_stats(),
        )
    )
    cache.update(sample_snapshot())
    body = scraped(cache).decode()
    return {family.name: family for family in text_string_to_metric_families(body)}


def test_the_balloon_is_read_by_default_and_no_collector_balloon_removes_its_families() -> None:
    on, off = _settings(), _settings("--no-collector.balloon")
    assert on.host_stat_options.of(BalloonOptions) == BalloonOptions(enabled=True)
    assert off.host_stat_options.of(BalloonOptions) == BalloonOptions(enabled=False)
    assert (on.host_stats(), off.host_stats()) == ((BALLOON, BLOCK), (BLOCK,))
    with_balloon, without = _families(on), _families(off)
    memory = {spec.name for spec in BALLOON.families}
    assert memory <= set(with_balloon)
    assert not memory & set(without)
    assert set(with_balloon) - memory == set(without)


def test_a_vm_without_balloon_statistics_has_only_its_balloon_size() -> None:
    families = _families(_settings())
    by_name = {
        spec.name: [sample.labels["name"] for sample in families[spec.name].samples]
        for spec in BALLOON.families
    }
    odd = 'odd "name"\\with\nnewline'
    assert by_name.pop("guestload_memory_balloon_bytes") == ["web-1", odd]
    assert all(names == ["web-1"] for names in by_name.values()), by_name


def test_the_poller_carries_each_domain_s_host_stats_to_its_sample() -> None:
    listed = domain("u1")
    stats = DomainInventory(
        uuid=listed.uuid,
        domain_name=listed.domain_name,
        vcpu_count=1,
        host_stats={"balloon": FULL_STATS},
    )
    source = FakeSource(domains=[stats, domain("u2")])
    published: list[Snapshot] = []
    poller = make_poller(source, Clock(), published)
    try:
        snapshot = poller.poll()
    finally:
        poller.close()
    assert {sample.uuid: sample.host_stats for sample in snapshot.domains} == {
        "u1": {"balloon": FULL_STATS},
        "u2": {},
    }


# -- the simulated source -----------------------------------------------------------------------


def _simulated(vms: int = 400, seed: int = 3) -> tuple[SimulatedSource, Clock]:
    clock = Clock()
    source = SimulatedSource(
        simulation=Simulation(vms=vms, seed=seed),
        clock=clock,
        wall_clock=lambda: 1_700_000_000.0,
        churn_thread=False,
        host_stats=(BALLOON,),
    )
    source.connect()
    return source, clock


def _balloons(source: SimulatedSource) -> dict[str, BalloonStats]:
    values = {d.uuid: d.host_stats.get("balloon") for d in source.list_running_domains()}
    assert all(isinstance(value, BalloonStats) for value in values.values())
    return {uuid: value for uuid, value in values.items() if isinstance(value, BalloonStats)}


def test_simulated_vms_report_plausible_balloon_statistics() -> None:
    source, clock = _simulated()
    before = _balloons(source)
    clock.now += 10 * STEP_SECONDS
    after = _balloons(source)
    assert before.keys() == after.keys()
    sized_only = [u for u, b in after.items() if b.available_bytes is None]
    periodic = [u for u, b in after.items() if b.available_bytes is not None]
    assert 0.1 < len(sized_only) / len(after) < 0.3
    for uuid in sized_only:
        assert after[uuid] == BalloonStats(balloon_bytes=after[uuid].balloon_bytes)
    thrashing = []
    for uuid in periodic:
        old, new = before[uuid], after[uuid]
        assert new.balloon_bytes is not None
        assert new.available_bytes is not None
        assert new.balloon_bytes % 1024**3 == 0
        assert new.unused_bytes is not None
        assert new.usable_bytes is not None
        assert new.unused_bytes <= new.usable_bytes <= new.available_bytes <= new.balloon_bytes
        assert new.update_timestamp_seconds == 1_700_000_000 + 10 * STEP_SECONDS
        for counter in ("swap_in_bytes", "swap_out_bytes", "major_faults", "minor_faults"):
            assert getattr(new, counter) >= getattr(old, counter), counter
        if new.swap_in_bytes != old.swap_in_bytes:
            thrashing.append(uuid)
        else:
            assert new.swap_in_bytes == new.swap_out_bytes == 0
    assert 0 < len(thrashing) < 0.06 * len(periodic)
    for uuid in thrashing:
        assert after[uuid].usable_bytes < 0.05 * after[uuid].available_bytes  # type: ignore[operator]


def test_the_same_seed_gives_the_same_balloons() -> None:
    first, second = _simulated(vms=50, seed=9)[0], _simulated(vms=50, seed=9)[0]
    assert _balloons(first) == _balloons(second)
    assert _balloons(first) != _balloons(_simulated(vms=50, seed=10)[0])


def test_without_host_stats_the_simulated_vms_carry_none() -> None:
    source = SimulatedSource(simulation=Simulation(vms=3), churn_thread=False, clock=lambda: 0.0)
    source.connect()
    assert [d.host_stats for d in source.list_running_domains()] == [{}, {}, {}]


def test_the_simulated_record_parses_with_the_balloon_s_own_parser() -> None:
    guest = SimulatedGuest(
        loads=(0.5, 0.5, 0.5),
        busy_seconds=100.0,
        uptime_seconds=3600.0,
        vcpu_weights=(1.0,),
        wait_share=0.0,
        delay_share=0.0,
    )
    value = BALLOON.parse(balloon.REGISTRATION.simulated_record(guest))
    assert isinstance(value, BalloonStats)
    assert None not in (getattr(value, name) for name in BalloonStats.__dataclass_fields__)


def _attribute(key: str) -> str:
    return {
        "balloon.current": "balloon_bytes",
        "balloon.available": "available_bytes",
        "balloon.usable": "usable_bytes",
        "balloon.unused": "unused_bytes",
        "balloon.swap_in": "swap_in_bytes",
        "balloon.swap_out": "swap_out_bytes",
        "balloon.major_fault": "major_faults",
        "balloon.minor_fault": "minor_faults",
        "balloon.last-update": "update_timestamp_seconds",
    }[key]


def _stats(stamp: int | None, swap_in: int | None, faults: int | None) -> BalloonStats:
    return BalloonStats(swap_in_bytes=swap_in, major_faults=faults, update_timestamp_seconds=stamp)


def _rates(value: object) -> dict[str, float]:
    return {
        spec.name: number
        for spec, _labels, number in BALLOON.samples(value)
        if spec.name.startswith("guestload_memory_last_poll_")
    }


def test_last_poll_rates_divide_by_the_guests_own_interval() -> None:
    before = _stats(1000, 10 * 2**20, 100)
    now = _stats(1005, 60 * 2**20, 6100)
    folded = BALLOON.fold(before, now, 30.0)  # the poll interval is not the guest's
    assert _rates(folded) == {
        "guestload_memory_last_poll_swap_in_bytes_per_second": 10 * 2**20,
        "guestload_memory_last_poll_major_faults_per_second": 1200.0,
    }


def test_without_timestamps_the_poll_interval_divides() -> None:
    folded = BALLOON.fold(_stats(None, 0, 0), _stats(None, 1200, 60), 120.0)
    assert _rates(folded) == {
        "guestload_memory_last_poll_swap_in_bytes_per_second": 10.0,
        "guestload_memory_last_poll_major_faults_per_second": 0.5,
    }


def test_no_newer_statistics_keep_the_last_rates_until_they_are_old() -> None:
    first = BALLOON.fold(_stats(1000, 0, 0), _stats(1010, 10_240, 10), 10.0)
    assert isinstance(first, BalloonStats)
    same = BALLOON.fold(first, _stats(1010, 10_240, 10), 300.0)
    assert _rates(same) == _rates(first) != {}
    older = BALLOON.fold(same, _stats(1010, 10_240, 10), 301.0)
    assert isinstance(older, BalloonStats)
    assert older.rates_age_seconds == 0.0
    assert _rates(older) == {}


@pytest.mark.parametrize(
    ("before", "now"),
    [
        (_stats(1000, 5000, 50), _stats(1010, 10, 60)),  # swap-in went back: that rate only
        (_stats(1010, 0, 0), _stats(1000, 10, 10)),  # the guest's clock went back
        (_stats(1000, None, 0), _stats(1010, 10, None)),  # values missing on one side
    ],
)
def test_counters_or_clocks_that_go_back_give_no_rate(
    before: BalloonStats, now: BalloonStats
) -> None:
    rates = _rates(BALLOON.fold(before, now, 10.0))
    assert "guestload_memory_last_poll_swap_in_bytes_per_second" not in rates
    if now.major_faults == 60:
        assert rates == {"guestload_memory_last_poll_major_faults_per_second": 1.0}


def test_the_first_listing_and_foreign_values_pass_through_unfolded() -> None:
    now = _stats(1010, 10, 10)
    assert BALLOON.fold(None, now, 0.0) is now
    assert BALLOON.fold("not stats", now, 10.0) is now
    assert BALLOON.fold(now, None, 10.0) is None
