"""The simulated source: deterministic VMs, plausible load, agent failures, churn, flaps, events."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import pytest

from guestload.cli.flags import build_parser, settings_from_args
from guestload.cli.main import main
from guestload.identity import IdentityResolver
from guestload.model import AgentState, DomainEvent, EventKind, Snapshot
from guestload.polling.poller import Poller
from guestload.queries.cpustats import CpuStatsQuery
from guestload.queries.osinfo import OSINFO, GuestOs
from guestload.simulation import AGENT_BEHAVIOUR_KEY, AgentBehaviour, AgentFailures, Simulation
from guestload.sources.catalog import make_source
from guestload.sources.simulated import AGENT_AWAY_STEPS, BOOT_STEPS, STEP_SECONDS, SimulatedSource
from tests.unit.fakes import LOAD_ONLY, ask_load, load_value, state_of


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _source(
    clock: FakeClock,
    *,
    answer_wait: Callable[[float], object] | None = None,
    **simulation: object,
) -> SimulatedSource:
    source = SimulatedSource(
        simulation=Simulation(**simulation),  # type: ignore[arg-type]
        clock=clock,
        churn_thread=False,
        answer_wait=answer_wait,
    )
    source.connect()
    return source


def _behaviours(source: SimulatedSource) -> dict[str, AgentBehaviour]:
    """Each running VM's agent behaviour, as its domain's metadata names it."""
    return {
        domain.uuid: AgentBehaviour(domain.metadata[AGENT_BEHAVIOUR_KEY])
        for domain in source.list_running_domains()
    }


def _uuid_with(source: SimulatedSource, behaviour: AgentBehaviour) -> str:
    return next(u for u, b in _behaviours(source).items() if b is behaviour)


def test_the_same_seed_gives_the_same_vms_and_the_same_load_curves() -> None:
    clocks = [FakeClock(), FakeClock()]
    sources = [_source(clock, vms=50, seed=7) for clock in clocks]
    for _ in range(5):
        listings = [s.list_running_domains() for s in sources]
        assert listings[0] == listings[1]
        readings = [[ask_load(s, d.uuid, 1.0) for d in listings[0]] for s in sources]
        assert readings[0] == readings[1]
        for clock in clocks:
            clock.now += 17.0


def test_another_seed_gives_other_vms() -> None:
    clock = FakeClock()
    names = [
        {d.domain_name for d in _source(clock, vms=50, seed=seed).list_running_domains()}
        for seed in (1, 2)
    ]
    assert not names[0] & names[1]


def test_vms_are_kubevirt_domains_with_vcpus_and_uuids() -> None:
    domains = _source(FakeClock(), vms=300).list_running_domains()
    assert len(domains) == 300
    assert len({d.uuid for d in domains}) == 300
    assert {d.vcpu_count for d in domains} == {1, 2, 4, 8}
    resolver = IdentityResolver(node="n", default_namespace="libvirt")
    for domain in domains:
        assert domain.vcpu_count == len(domain.vcpus)
        assert domain.metadata["kubevirt.uid"] == domain.uuid
        assert AgentBehaviour(domain.metadata[AGENT_BEHAVIOUR_KEY]) in AgentBehaviour
        identity = resolver.resolve(domain)
        assert identity.namespace != "libvirt"
        assert f"{identity.namespace}_{identity.name}" == domain.domain_name


def test_load_changes_and_counters_only_grow() -> None:
    clock = FakeClock()
    source = _source(clock, vms=100)
    before = {d.uuid: d for d in source.list_running_domains()}
    first = {u: load_value(ask_load(source, u, 1.0)) for u in before}
    clock.now += 10 * STEP_SECONDS
    after = {d.uuid: d for d in source.list_running_domains()}
    second = {u: load_value(ask_load(source, u, 1.0)) for u in after}
    assert sum(first[u] != second[u] for u in first) > 90
    for uuid, domain in after.items():
        load = second[uuid]
        assert load is not None
        assert min(load.one, load.five, load.fifteen) >= 0
        for old, new in zip(before[uuid].vcpus, domain.vcpus, strict=True):
            for counter in ("time_seconds", "wait_seconds", "delay_seconds"):
                assert getattr(new, counter) >= getattr(old, counter)
        assert sum(v.time_seconds or 0 for v in domain.vcpus) > sum(
            v.time_seconds or 0 for v in before[uuid].vcpus
        )


def test_load_scales_with_vcpus() -> None:
    source = _source(FakeClock(), vms=2000)
    by_vcpus: dict[int, list[float]] = {}
    for domain in source.list_running_domains():
        load = load_value(ask_load(source, domain.uuid, 1.0))
        assert load is not None
        assert domain.vcpu_count is not None
        by_vcpus.setdefault(domain.vcpu_count, []).append(load.fifteen)
    means = {vcpus: sum(v) / len(v) for vcpus, v in by_vcpus.items()}
    assert means[1] < means[2] < means[4] < means[8]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", AgentFailures()),
        ("none", AgentFailures()),
        ("hung=10%", AgentFailures(hung=0.1)),
        (
            "absent=2%, old=0.03,slow=5%,hung=1.5%",
            AgentFailures(absent=0.02, old=0.03, slow=0.05, hung=0.015),
        ),
    ],
)
def test_failure_shares_parse(text: str, expected: AgentFailures) -> None:
    assert AgentFailures.parse(text) == expected
    assert AgentFailures.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["hung", "hung=", "frozen=5%", "hung=-1%", "hung=60%,old=50%"])
def test_bad_failure_shares_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="share"):
        AgentFailures.parse(text)


def test_failure_shares_are_honoured() -> None:
    failures = AgentFailures(absent=0.1, old=0.1, slow=0.1, hung=0.2)
    counts = Counter(_behaviours(_source(FakeClock(), vms=4000, agent_failures=failures)).values())
    for behaviour, share in [
        (AgentBehaviour.ABSENT, 0.1),
        (AgentBehaviour.OLD, 0.1),
        (AgentBehaviour.SLOW, 0.1),
        (AgentBehaviour.HUNG, 0.2),
        (AgentBehaviour.HEALTHY, 0.5),
    ]:
        assert counts[behaviour] == pytest.approx(4000 * share, rel=0.15)


def test_absent_and_old_agents_answer_as_libvirt_does() -> None:
    failures = AgentFailures(absent=0.3, old=0.3)
    source = _source(FakeClock(), vms=40, agent_failures=failures)
    absent = ask_load(source, _uuid_with(source, AgentBehaviour.ABSENT), 1.0)
    old = ask_load(source, _uuid_with(source, AgentBehaviour.OLD), 1.0)
    healthy = ask_load(source, _uuid_with(source, AgentBehaviour.HEALTHY), 1.0)
    assert absent.state is AgentState.NOT_CONFIGURED
    assert old.state is AgentState.UNSUPPORTED
    assert "guest-get-load has not been found" in old.detail
    assert healthy.state is AgentState.OK


def test_slow_agents_answer_within_the_timeout_and_hung_ones_time_out() -> None:
    waits: list[float] = []
    source = _source(
        FakeClock(),
        answer_wait=waits.append,
        vms=40,
        agent_failures=AgentFailures(slow=0.3, hung=0.3),
    )
    slow = ask_load(source, _uuid_with(source, AgentBehaviour.SLOW), 0.4)
    assert slow.state is AgentState.OK
    assert waits == [0.2], "a slow agent answers in half the timeout"
    waits.clear()
    hung = ask_load(source, _uuid_with(source, AgentBehaviour.HUNG), 0.3)
    assert waits == [0.3], "a hung agent holds the call for the whole timeout"
    assert hung.state is AgentState.TIMEOUT
    assert "didn't respond to synchronization" in hung.detail


def test_close_releases_a_call_blocked_on_a_hung_agent() -> None:
    """Whether the call blocks before close or after it, it ends at once, not in 60 s."""
    source = _source(FakeClock(), vms=40, agent_failures=AgentFailures(hung=0.5))
    hung = _uuid_with(source, AgentBehaviour.HUNG)
    results: list[AgentState] = []
    thread = threading.Thread(target=lambda: results.append(ask_load(source, hung, 60).state))
    thread.start()
    source.close()
    thread.join(timeout=5.0)
    assert not thread.is_alive()
    assert results == [AgentState.TIMEOUT]


def test_agent_latency_delays_healthy_answers() -> None:
    waits: list[float] = []
    source = _source(FakeClock(), answer_wait=waits.append, vms=3, agent_latency_seconds=0.05)
    assert load_value(ask_load(source, _uuid_with(source, AgentBehaviour.HEALTHY), 1.0))
    assert waits == [0.05]


def test_an_unknown_domain_is_gone() -> None:
    source = _source(FakeClock(), vms=3)
    assert ask_load(source, "no-such-uuid", 1.0).state is AgentState.GONE


def test_churn_replaces_vms_and_sends_their_events() -> None:
    clock = FakeClock()
    source = _source(clock, vms=20, churn_per_minute=60 / STEP_SECONDS)  # one VM per step
    events: list[DomainEvent] = []
    source.set_event_listener(events.append)
    first = {d.uuid for d in source.list_running_domains()}
    clock.now += STEP_SECONDS
    second = {d.uuid for d in source.list_running_domains()}
    assert len(second) == 20
    (stopped,) = first - second
    (started,) = second - first
    assert events == [
        DomainEvent(kind=EventKind.STOPPED, uuid=stopped),
        DomainEvent(kind=EventKind.STARTED, uuid=started),
    ]
    assert ask_load(source, started, 1.0).state is AgentState.NOT_CONNECTED
    assert ask_load(source, stopped, 1.0).state is AgentState.GONE
    clock.now += BOOT_STEPS * STEP_SECONDS
    source.list_running_domains()
    assert DomainEvent(kind=EventKind.AGENT_CONNECTED, uuid=started) in events
    reading = ask_load(source, started, 1.0)
    assert reading.state is AgentState.OK
    assert reading.value is not None
    assert (
        load_value(reading).fifteen < load_value(reading).one
    )  # a VM that just booted: load rising


class SteppingClock:
    """A clock one simulation step further on at every reading."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += STEP_SECONDS
        return self.now


def first_thread_events(simulation: Simulation, kinds: set[EventKind]) -> list[DomainEvent]:
    """Events the source's own thread sends, unpolled, until it has sent each of ``kinds``.

    On a :class:`SteppingClock` the thread finds a step due as soon as it starts, so the test
    waits for its events, not for a real step to pass.
    """
    source = SimulatedSource(simulation=simulation, clock=SteppingClock())
    events: list[DomainEvent] = []
    arrived = threading.Condition()

    def listen(event: DomainEvent) -> None:
        with arrived:
            events.append(event)
            arrived.notify_all()

    source.set_event_listener(listen)
    source.connect()
    try:
        with arrived:
            sent = arrived.wait_for(lambda: kinds <= {e.kind for e in events}, timeout=5)
            assert sent, f"the thread sent {events}, not each of {kinds}"
            return list(events)
    finally:
        source.close()


def test_churn_thread_sends_events_without_polls() -> None:
    events = first_thread_events(
        Simulation(vms=5, churn_per_minute=600), {EventKind.STOPPED, EventKind.STARTED}
    )
    assert {e.kind for e in events} == {EventKind.STOPPED, EventKind.STARTED}


def _flap_events(seed: int, steps: int) -> list[DomainEvent]:
    clock = FakeClock()
    source = _source(
        clock,
        vms=30,
        seed=seed,
        agent_flaps_per_minute=2 * 60 / STEP_SECONDS,  # two agents per step
        agent_failures=AgentFailures(absent=0.2, hung=0.1),
    )
    events: list[DomainEvent] = []
    source.set_event_listener(events.append)
    clock.now += steps * STEP_SECONDS
    source.list_running_domains()
    return events


def test_flapping_agents_go_away_and_come_back_with_events() -> None:
    clock = FakeClock()
    source = _source(
        clock,
        vms=300,
        agent_flaps_per_minute=60 / STEP_SECONDS,  # one agent per step
        agent_failures=AgentFailures(absent=0.2, hung=0.1),
    )
    absent = {u for u, b in _behaviours(source).items() if b is AgentBehaviour.ABSENT}
    events: list[DomainEvent] = []
    source.set_event_listener(events.append)
    clock.now += STEP_SECONDS
    domains = source.list_running_domains()
    assert len(domains) == 300  # flaps leave the VMs running
    (event,) = events
    assert event.kind is EventKind.AGENT_DISCONNECTED
    assert event.uuid not in absent  # an agent without a channel cannot disconnect
    reading = ask_load(source, event.uuid, 5.0)
    # Also a hung agent answers at once: its channel is gone.
    assert reading.state is AgentState.NOT_CONNECTED
    assert reading.detail == "Guest agent is not responding: QEMU guest agent is not connected"
    low, high = AGENT_AWAY_STEPS
    away = 1
    while DomainEvent(kind=EventKind.AGENT_CONNECTED, uuid=event.uuid) not in events:
        assert ask_load(source, event.uuid, 5.0).state is AgentState.NOT_CONNECTED
        clock.now += STEP_SECONDS
        source.list_running_domains()
        away += 1
        assert away <= high + 1
    assert away - 1 >= low
    # (Back for good within this test: this seed does not pick the same agent again.)
    assert [e.kind for e in events if e.uuid == event.uuid][-1] is EventKind.AGENT_CONNECTED
    behaviour = _behaviours(source)[event.uuid]
    expected = AgentState.TIMEOUT if behaviour is AgentBehaviour.HUNG else AgentState.OK
    assert ask_load(source, event.uuid, 0.01).state is expected
    kinds = Counter(e.kind for e in events)
    assert kinds[EventKind.AGENT_DISCONNECTED] == away  # one more agent went away each step


def test_flaps_depend_only_on_the_seed_and_the_step() -> None:
    events = _flap_events(seed=5, steps=12)
    assert events == _flap_events(seed=5, steps=12)
    assert events != _flap_events(seed=6, steps=12)
    disconnected = [e for e in events if e.kind is EventKind.AGENT_DISCONNECTED]
    assert len(disconnected) == 24
    # Caught up step by step: an agent's reconnection comes after its disconnection.
    away: set[str] = set()
    for event in events:
        if event.kind is EventKind.AGENT_DISCONNECTED:
            assert event.uuid not in away
            away.add(event.uuid)
        else:
            assert event.kind is EventKind.AGENT_CONNECTED
            away.remove(event.uuid)
    assert 0 < len(away) <= 2 * AGENT_AWAY_STEPS[1]


def test_flap_thread_sends_agent_events_without_polls() -> None:
    events = first_thread_events(
        Simulation(vms=5, agent_flaps_per_minute=60), {EventKind.AGENT_DISCONNECTED}
    )
    assert {e.kind for e in events} == {EventKind.AGENT_DISCONNECTED}


def test_the_poller_keeps_healthy_vms_fresh_next_to_hung_agents() -> None:
    source = SimulatedSource(
        simulation=Simulation(vms=50, agent_failures=AgentFailures(hung=0.1)),
        churn_thread=False,
    )
    snapshots: list[Snapshot] = []
    poller = Poller(
        source=source,
        queries=LOAD_ONLY,
        identity=IdentityResolver(node="n", default_namespace="libvirt"),
        poll_interval_seconds=2.0,
        agent_timeout_seconds=0.2,
        concurrency=4,
        agent_backoff_max_seconds=10.0,
        on_snapshot=snapshots.append,
        build_info={},
    )
    try:
        snapshot = poller.poll()
    finally:
        poller.close()
    states = Counter(state_of(d) for d in snapshot.domains)
    hung = sum(b is AgentBehaviour.HUNG for b in _behaviours(source).values())
    assert states == {AgentState.OK: 50 - hung, AgentState.TIMEOUT: hung}
    assert snapshot.source is not None
    assert snapshot.source.load_method == "simulated"


def test_cli_selects_the_simulated_source() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--node",
            "n",
            "--source",
            "simulated",
            "--simulated.vms",
            "7",
            "--simulated.seed",
            "3",
            "--simulated.agent-failures",
            "hung=10%",
            "--simulated.churn",
            "2",
            "--simulated.agent-latency",
            "2ms",
            "--simulated.agent-flaps",
            "3",
        ]
    )
    settings = settings_from_args(args)
    assert settings.simulation == Simulation(
        vms=7,
        seed=3,
        agent_failures=AgentFailures(hung=0.1),
        churn_per_minute=2.0,
        agent_latency_seconds=0.002,
        agent_flaps_per_minute=3.0,
    )
    source = make_source(settings)
    assert isinstance(source, SimulatedSource)
    source.connect()
    try:
        assert len(source.list_running_domains()) == 7
    finally:
        source.close()


def test_the_default_source_is_libvirt() -> None:
    settings = settings_from_args(build_parser().parse_args(["probe", "--node", "n"]))
    assert settings.source == "libvirt"


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--source", "xen"], "--source"),
        (["--simulated.vms", "-1"], "--simulated.vms"),
        (["--simulated.vms", "many"], "--simulated.vms"),
        (["--simulated.churn", "-1"], "--simulated.churn"),
        (["--simulated.agent-latency", "10s"], "--simulated.agent-latency"),
        (["--simulated.agent-flaps", "-1"], "--simulated.agent-flaps"),
        (["--simulated.agent-flaps", "often"], "--simulated.agent-flaps"),
        (["--simulated.agent-failures", "hung=200%"], "--simulated.agent-failures"),
    ],
)
def test_bad_simulation_flags_exit_2_naming_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["probe", "--source", "simulated", *argv])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


def test_probe_prints_simulated_vms(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "--source", "simulated", "--simulated.vms", "4", "--node", "n"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "NAMESPACE"
    assert len(lines) == 5
    assert all(line.split()[-1] == "ok" for line in lines[1:])


def test_windows_guests_answer_cpustats_as_the_windows_agent_does() -> None:
    """One VM in ten runs Windows: its agent names the OS and has no CPU statistics."""
    source = _source(FakeClock(), vms=40)
    queries = (CpuStatsQuery(), OSINFO)
    readings = {
        domain.uuid: source.query_guest(domain.uuid, queries, 1.0)
        for domain in source.list_running_domains()
    }
    windows = {
        uuid
        for uuid, reading in readings.items()
        if isinstance(os := reading[OSINFO.name].value, GuestOs) and os.id == "mswindows"
    }
    assert 0 < len(windows) < len(readings)
    for uuid, reading in readings.items():
        cpu = reading[CpuStatsQuery.name]
        if uuid in windows:
            assert cpu.state is AgentState.UNSUPPORTED, cpu
            assert "not currently supported" in cpu.detail
        else:
            assert cpu.state is AgentState.OK, cpu
