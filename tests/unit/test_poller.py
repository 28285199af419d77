"""The poller's scheduling rules, against an in-memory source."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import wait as wait_futures
from typing import Any

import pytest

from guestload.model import (
    AgentState,
    DomainEvent,
    DomainInventory,
    EventKind,
    QueryReading,
    Snapshot,
)
from guestload.polling import poller as poller_module
from guestload.polling.poller import FIRST_CALL_TIMEOUT_SECONDS, Poller
from guestload.queries.query import GuestQuery
from tests.unit.fakes import FakeSource, domain, load_of, ok, state_of
from tests.unit.pollers import Clock, HangClock, Published, make_poller


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
def poller(source: FakeSource, clock: Clock, published: Published) -> Iterator[Poller]:
    poller = make_poller(source, clock, published)
    yield poller
    poller.close()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set to let calls made by :func:`hanging_call` return; always set at teardown."""
    event = threading.Event()
    yield event
    event.set()


def hanging_call(
    release: threading.Event, answer: QueryReading, clock: HangClock
) -> Callable[[], QueryReading]:
    """A guest-load call that blocks (at most 10 s) until ``release`` is set; ``clock`` runs
    while it blocks."""

    def hang() -> QueryReading:
        if not release.is_set():
            clock.hanging.set()
            release.wait(10)
            clock.hanging.clear()
        return answer

    return hang


def hung_poller(
    source: FakeSource, published: Published, *, interval: float = 30.0, concurrency: int = 4
) -> tuple[Poller, HangClock]:
    """A poller whose clock passes the hung domain's time limit (0.4 s) while it hangs: by 1 s,
    past a 1 s interval's poll budget (0.8 s) too, and well within a 30 s interval's."""
    clock = HangClock(hung="hung", step=1.0)
    poller = make_poller(source, clock, published, interval=interval, concurrency=concurrency)
    clock.poller = poller
    return poller, clock


class SlowListing(FakeSource):
    """Listing takes 0.3 s on ``clock``, longer than :func:`back_to_back_poller`'s interval;
    ``during_listing`` runs in each listing (the n-th, counted from 1, is given n)."""

    def __init__(self, clock: Clock, during_listing: Callable[[int], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self.during_listing = during_listing
        self.listings = 0

    def list_running_domains(self) -> list[DomainInventory]:
        self.clock.now += 0.3
        self.listings += 1
        self.during_listing(self.listings)
        return list(super().list_running_domains())


def back_to_back_poller(source: SlowListing, published: Published) -> Poller:
    """A poller whose polls overrun its 0.25 s interval on a SlowListing."""
    return make_poller(
        source,
        source.clock,
        published,
        interval=0.25,
        agent_timeout=0.1,
        concurrency=2,
        backoff_max=1.0,
    )


def states(snapshot: Snapshot) -> dict[str, AgentState | None]:
    return {d.uuid: state_of(d) for d in snapshot.domains}


def test_a_poll_reads_every_running_domain(poller: Poller, source: FakeSource) -> None:
    source.domains = [domain("a"), domain("b", vcpus=4)]
    source.answers = {"a": ok(0.5, 0.25, 0.125)}
    snapshot = poller.poll()
    assert snapshot.source_up
    assert states(snapshot) == {"a": AgentState.OK, "b": AgentState.NOT_CONNECTED}
    by_uuid = {d.uuid: d for d in snapshot.domains}
    load = load_of(by_uuid["a"])
    assert load is not None
    assert load.one == 0.5
    assert load_of(by_uuid["b"]) is None
    assert by_uuid["b"].vcpu_count == 4
    assert snapshot.polls_total == 1
    assert snapshot.last_success_timestamp_seconds == 1_700_000_000.0
    assert poller.ready


def test_a_domain_that_stops_is_gone_from_the_next_snapshot(
    poller: Poller, source: FakeSource
) -> None:
    source.domains = [domain("a"), domain("b")]
    source.answers = {"a": ok(1.0), "b": ok(2.0)}
    poller.poll()
    source.domains = [domain("b")]
    assert states(poller.poll()) == {"b": AgentState.OK}


def test_an_agent_that_stops_answering_loses_its_load_at_once(
    poller: Poller, source: FakeSource
) -> None:
    source.domains = [domain("a")]
    source.answers = {"a": ok(3.0)}
    poller.poll()
    source.answers = {"a": QueryReading(state=AgentState.NO_DATA)}
    (sample,) = poller.poll().domains
    assert state_of(sample) is AgentState.NO_DATA
    assert load_of(sample) is None


def test_a_call_that_never_returns_is_not_repeated_and_does_not_delay_others(
    source: FakeSource, published: Published, release: threading.Event
) -> None:
    poller, clock = hung_poller(source, published)
    source.domains = [domain("hung"), domain("fine")]
    source.answers = {"hung": hanging_call(release, ok(9.0), clock), "fine": ok(1.0)}
    try:
        first = poller.poll()
        assert states(first) == {"hung": AgentState.TIMEOUT, "fine": AgentState.OK}
        second = poller.poll()
        assert states(second) == {"hung": AgentState.TIMEOUT, "fine": AgentState.OK}
        assert source.calls.count("hung") == 1, "a second call was queued behind a hung one"
        assert source.calls.count("fine") == 2
        assert second.agent_calls_total[("load", AgentState.TIMEOUT)] == 2
        release.set()
        assert wait_futures([poller._in_flight["hung"].future], timeout=5).done
        third = poller.poll()
        assert source.calls.count("hung") == 2, "the domain is asked again once the call ended"
        assert states(third)["hung"] is AgentState.OK
    finally:
        release.set()
        poller.close()


def test_absent_and_old_agents_are_rechecked_on_a_back_off(
    poller: Poller, source: FakeSource, clock: Clock
) -> None:
    source.domains = [domain("old"), domain("absent"), domain("fine")]
    source.answers = {
        "old": QueryReading(state=AgentState.UNSUPPORTED),
        "absent": QueryReading(state=AgentState.NOT_CONFIGURED),
        "fine": ok(1.0),
    }
    asked_at: list[float] = []
    for _ in range(25):
        before = source.calls.count("old")
        snapshot = poller.poll()
        if source.calls.count("old") > before:
            asked_at.append(clock.now)
        assert states(snapshot)["old"] is AgentState.UNSUPPORTED, "state kept while backing off"
        clock.now += 30.0
    # interval 30 s: the gap doubles from one interval up to the 240 s cap
    gaps = [b - a for a, b in itertools.pairwise(asked_at)]
    assert gaps == [30.0, 60.0, 120.0, 240.0, 240.0]
    assert source.calls.count("fine") == 25
    assert source.calls.count("absent") == source.calls.count("old")


def test_an_agent_connected_event_ends_the_back_off_and_polls_that_domain(
    poller: Poller, source: FakeSource, clock: Clock
) -> None:
    source.domains = [domain("a"), domain("b")]
    source.answers = {"a": QueryReading(state=AgentState.UNSUPPORTED), "b": ok(1.0)}
    poller.poll()
    clock.now += 5
    source.answers["a"] = ok(4.0)
    calls_before = list(source.calls)
    snapshot = poller.apply_events([DomainEvent(EventKind.AGENT_CONNECTED, "a")])
    assert snapshot is not None
    assert source.calls[len(calls_before) :] == ["a"], "only the connected domain is asked"
    assert states(snapshot)["a"] is AgentState.OK
    assert snapshot.polls_total == 1, "an event refresh is not a poll"


def test_stop_and_agent_disconnect_events_remove_series_without_a_poll(
    poller: Poller, source: FakeSource
) -> None:
    source.domains = [domain("a"), domain("b")]
    source.answers = {"a": ok(1.0), "b": ok(2.0)}
    poller.poll()
    calls = len(source.calls)
    snapshot = poller.apply_events(
        [
            DomainEvent(EventKind.STOPPED, "a"),
            DomainEvent(EventKind.AGENT_DISCONNECTED, "b"),
        ]
    )
    assert snapshot is not None
    assert len(source.calls) == calls
    assert states(snapshot) == {"b": AgentState.NOT_CONNECTED}
    assert load_of(snapshot.domains[0]) is None


def test_a_lost_connection_drops_every_series_and_reconnects(
    poller: Poller, source: FakeSource
) -> None:
    source.domains = [domain("a")]
    source.answers = {"a": ok(1.0)}
    assert poller.poll().source_up
    source.reachable = False
    down = poller.poll()
    assert not down.source_up
    assert down.domains == ()
    assert down.poll_failures_total == 1
    assert not poller.ready
    again = poller.poll()
    assert again.poll_failures_total == 2
    source.reachable = True
    back = poller.poll()
    assert back.source_up
    assert states(back) == {"a": AgentState.OK}
    assert source.connects == 2
    assert poller.ready


def test_a_source_that_raises_marks_only_that_domain_as_error(
    poller: Poller, source: FakeSource
) -> None:
    def broken() -> QueryReading:
        raise RuntimeError("bug")

    source.domains = [domain("a"), domain("b")]
    source.answers = {"a": broken, "b": ok(1.0)}
    assert states(poller.poll()) == {"a": AgentState.ERROR, "b": AgentState.OK}


def test_run_polls_until_stopped_and_reacts_to_events(
    source: FakeSource, clock: Clock, published: Published
) -> None:
    source.domains = [domain("a")]
    source.answers = {"a": ok(1.0)}
    poller = make_poller(source, clock, published)
    thread = threading.Thread(target=poller.run)
    thread.start()
    try:
        assert published.wait_for(bool), "no snapshot published"
        assert source.listener is not None, "run subscribes to events"
        source.listener(DomainEvent(EventKind.STOPPED, "a"))
        assert published.wait_for(lambda snapshots: snapshots[-1].domains == ())
    finally:
        poller.stop()
        thread.join(5)
        poller.close()
    assert not thread.is_alive()
    assert published[-1].polls_total == 1


def test_state_changes_are_logged_once(
    poller: Poller, source: FakeSource, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    source.domains = [domain("a", "vm-a")]
    source.answers = {"a": QueryReading(state=AgentState.TIMEOUT, detail="no answer")}
    caplog.set_level("INFO", logger="guestload")
    for _ in range(3):
        poller.poll()
    source.answers = {"a": ok(1.0)}
    for _ in range(3):
        poller.poll()
    changes = [r for r in caplog.records if r.getMessage() == "guest agent state changed"]
    assert len(changes) == 1
    assert changes[0].__dict__["from"] == "timeout"
    assert changes[0].__dict__["to"] == "ok"
    assert changes[0].__dict__["domain"] == "vm-a"


def test_the_first_poll_sums_up_agent_states_in_one_line_and_new_domains_log_their_own(
    poller: Poller, source: FakeSource, caplog: pytest.LogCaptureFixture
) -> None:
    source.domains = [domain(f"u{i}", f"vm-{i}") for i in range(5)]
    source.answers = {f"u{i}": ok(1.0) for i in range(3)}
    source.answers |= {f"u{i}": QueryReading(state=AgentState.TIMEOUT) for i in (3, 4)}
    caplog.set_level("INFO", logger="guestload")
    poller.poll()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["guest agent states after the first poll"]
    summary = caplog.records[0].__dict__
    assert summary["domains"] == 5
    assert summary["states"] == "load:ok=3,timeout=2"
    caplog.clear()
    source.domains = [*source.domains, domain("u5", "vm-5")]
    source.answers["u5"] = QueryReading(state=AgentState.UNSUPPORTED)
    poller.poll()
    assert [(r.getMessage(), r.__dict__["domain"]) for r in caplog.records] == [
        ("guest agent state changed", "vm-5")
    ]


def test_per_domain_log_lines_at_a_level_that_is_off_are_not_even_built(
    poller: Poller,
    source: FakeSource,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def spy(message: str, *_args: Any, **_kwargs: Any) -> None:
        calls.append(message)

    for level in ("debug", "info"):
        monkeypatch.setattr(poller_module.log, level, spy)  # the instance, not the class
    caplog.set_level("WARNING", logger="guestload")
    source.domains = [domain(f"u{i}", f"vm-{i}") for i in range(20)]
    source.answers = {f"u{i}": ok(1.0) for i in range(20)}
    poller.poll()
    source.answers = {f"u{i}": QueryReading(state=AgentState.TIMEOUT) for i in range(20)}
    poller.poll()
    source.domains = source.domains[1:]
    poller.apply_events([DomainEvent(kind=EventKind.STOPPED, uuid="u0")])
    assert calls == []
    caplog.set_level("DEBUG", logger="guestload")
    source.answers = {f"u{i}": ok(1.0) for i in range(20)}
    poller.poll()
    poller.apply_events([DomainEvent(kind=EventKind.STOPPED, uuid="u1")])
    assert calls.count("guest agent state changed") == 19
    assert calls.count("domain event") == 1


def test_two_domains_with_one_identity_export_one_and_count_the_other(
    poller: Poller, source: FakeSource, caplog: pytest.LogCaptureFixture
) -> None:
    kubevirt = {"kubevirt.uid": "u"}
    source.domains = [
        domain("b", "libvirt_x", metadata=kubevirt),  # KubeVirt namespace "libvirt", VMI "x"
        domain("a", "x"),  # a plain domain in the default namespace "libvirt"
        domain("c", "y"),
    ]
    source.answers = {"a": ok(1.0), "b": ok(2.0), "c": ok(3.0)}
    caplog.set_level("WARNING", logger="guestload")
    for _ in range(3):
        snapshot = poller.poll()
        assert [d.uuid for d in snapshot.domains] == ["a", "c"], "the lower UUID wins, every poll"
        assert snapshot.identity_conflicts == 1
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].__dict__["domains"] == "libvirt_x"


def test_calls_still_queued_at_the_deadline_are_dropped_not_carried_over(
    source: FakeSource, published: Published, release: threading.Event
) -> None:
    # One worker, a 1 s interval and a 0.2 s timeout: the poll's budget (0.8 s) ends while
    # the hung call holds the only worker, so the healthy domain's call never starts.
    poller, clock = hung_poller(source, published, interval=1.0, concurrency=1)
    source.domains = [domain("hung"), domain("fine")]
    source.answers = {"hung": hanging_call(release, ok(9.0), clock), "fine": ok(1.0)}
    try:
        poller.poll()  # both unknown: "hung" is asked first (sorted by UUID) and blocks
        assert states(published[-1])["fine"] is AgentState.TIMEOUT
        release.set()
        assert wait_futures([poller._in_flight["hung"].future], timeout=5).done
        snapshot = poller.poll()
        assert states(snapshot) == {"hung": AgentState.OK, "fine": AgentState.OK}
        assert source.calls.count("fine") == 1, "the dropped call must not run late"
    finally:
        release.set()
        poller.close()


def test_quick_healthy_agents_are_asked_before_slow_ones(
    source: FakeSource, clock: Clock, published: Published
) -> None:
    def slow() -> QueryReading:
        clock.now += 0.05  # the call takes 50 ms
        return ok(1.0)

    source.domains = [domain("a-slow"), domain("b-fast"), domain("c-fast")]
    source.answers = {"a-slow": slow, "b-fast": ok(2.0), "c-fast": ok(3.0)}
    poller = make_poller(source, clock, published, concurrency=1)
    try:
        poller.poll()
        assert source.calls == ["a-slow", "b-fast", "c-fast"], "unknown agents in listing order"
        source.calls.clear()
        poller.poll()
        assert source.calls[-1] == "a-slow", "the slow agent waits its turn"
    finally:
        poller.close()


class TimeoutLog(FakeSource):
    """Records the agent timeout of every call, per domain."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: dict[str, list[float]] = {}

    def query_guest(
        self, uuid: str, queries: Sequence[GuestQuery], timeout_seconds: float
    ) -> Mapping[str, QueryReading]:
        self.timeouts.setdefault(uuid, []).append(timeout_seconds)
        return super().query_guest(uuid, queries, timeout_seconds)


def test_a_first_call_has_a_short_timeout_and_later_ones_the_agent_timeout(
    clock: Clock, published: Published
) -> None:
    source = TimeoutLog()
    source.domains = [domain("a")]
    source.answers = {"a": QueryReading(state=AgentState.TIMEOUT)}
    poller = make_poller(source, clock, published, agent_timeout=5.0)
    try:
        for _ in range(3):
            poller.poll()
        assert source.timeouts["a"] == [FIRST_CALL_TIMEOUT_SECONDS, 5.0, 5.0]
    finally:
        poller.close()


def test_a_domain_dropped_unasked_goes_ahead_of_a_hung_one(
    published: Published, release: threading.Event
) -> None:
    source = TimeoutLog()
    # As in the test above, the hung call holds the only worker until the poll's deadline.
    poller, clock = hung_poller(source, published, interval=1.0, concurrency=1)
    source.domains = [domain("hung"), domain("fine")]
    timed_out = QueryReading(state=AgentState.TIMEOUT)
    source.answers = {"hung": hanging_call(release, timed_out, clock), "fine": ok(1.0)}
    try:
        poller.poll()
        assert states(published[-1])["fine"] is AgentState.TIMEOUT  # dropped, never asked
        release.set()
        assert wait_futures([poller._in_flight["hung"].future], timeout=5).done
        source.calls.clear()
        poller.poll()
        assert source.calls == ["fine", "hung"], "never asked before known to time out"
        assert states(published[-1])["fine"] is AgentState.OK
    finally:
        release.set()
        poller.close()


def test_events_are_taken_even_when_polls_overrun_the_interval(
    clock: Clock, published: Published, caplog: pytest.LogCaptureFixture
) -> None:
    poller: Poller | None = None

    def flood(count: int) -> None:
        """100 events arrive during every listing; the 20th listing is the last."""
        assert listing.listener is not None
        for _ in range(100):
            listing.listener(DomainEvent(EventKind.AGENT_CONNECTED, "a"))
        if count == 20 and poller is not None:
            poller.stop()

    listing = SlowListing(clock, flood, domains=[domain("a")], answers={"a": ok(1.0)})
    poller = back_to_back_poller(listing, published)
    caplog.set_level("INFO", logger="guestload")
    thread = threading.Thread(target=poller.run)
    thread.start()
    try:
        thread.join(5)
        backlog = poller._events.qsize()
    finally:
        poller.stop()
        thread.join(5)
        poller.close()
    assert not thread.is_alive()
    assert backlog <= 100, f"{backlog} events piled up while polls ran back to back"
    overruns = [r for r in caplog.records if "longer than the interval" in r.getMessage()]
    assert len(overruns) == 1


def test_a_stopped_event_is_published_even_when_the_next_poll_is_already_due(
    clock: Clock, published: Published
) -> None:
    # libvirt keeps listing "a" (as a listing taken just before it stopped would): only the
    # event can remove it, and polls run back to back, so a poll is always due.
    poller: Poller | None = None
    stopped_after = 0

    def stop_a_then_end(count: int) -> None:
        nonlocal stopped_after
        assert listing.listener is not None
        if count == 3:
            stopped_after = len(published)
            listing.listener(DomainEvent(EventKind.STOPPED, "a"))
        if count == 6 and poller is not None:
            poller.stop()

    listing = SlowListing(
        clock,
        stop_a_then_end,
        domains=[domain("a"), domain("b")],
        answers={"a": ok(1.0), "b": ok(2.0)},
    )
    poller = back_to_back_poller(listing, published)
    thread = threading.Thread(target=poller.run)
    thread.start()
    try:
        thread.join(5)
    finally:
        poller.stop()
        thread.join(5)
        poller.close()
    assert not thread.is_alive()
    after = [states(s) for s in published[stopped_after:]]
    assert {"b": AgentState.OK} in after, f"the stop never reached a snapshot: {after}"


def test_a_call_that_overran_for_a_vanished_domain_is_forgotten_once_it_ends(
    source: FakeSource, published: Published, release: threading.Event
) -> None:
    poller, clock = hung_poller(source, published)
    source.domains = [domain("hung"), domain("fine")]
    source.answers = {"hung": hanging_call(release, ok(1.0), clock), "fine": ok(1.0)}
    try:
        poller.poll()
        assert "hung" in poller._in_flight
        source.domains = [domain("fine")]
        release.set()
        assert wait_futures([poller._in_flight["hung"].future], timeout=5).done
        poller.poll()
        assert "hung" not in poller._in_flight, "a finished call for a gone domain is kept"
    finally:
        release.set()
        poller.close()


def test_agents_known_to_answer_quickly_are_asked_one_after_another_on_one_worker(
    poller: Poller, source: FakeSource
) -> None:
    lock = threading.Lock()
    running = 0
    most = 0
    threads: set[int] = set()
    second_poll = threading.Event()
    another_started = threading.Event()
    waited = False

    def answer() -> QueryReading:
        nonlocal running, most, waited
        with lock:
            running += 1
            most = max(most, running)
            threads.add(threading.get_ident())
            first = second_poll.is_set() and not waited
            waited = waited or first
        if second_poll.is_set():
            if first:
                # Give a second worker time to take a call, as it would on a wide pool.
                another_started.wait(0.2)
            else:
                another_started.set()
        with lock:
            running -= 1
        return ok(1.0)

    names = [f"vm{number}" for number in range(12)]
    source.domains = [domain(name) for name in names]
    source.answers = dict.fromkeys(names, answer)
    poller.poll()  # never asked before: every worker may take a call
    most = 0
    threads.clear()
    second_poll.set()
    snapshot = poller.poll()
    assert set(states(snapshot).values()) == {AgentState.OK}
    assert most == 1, "quick agents were asked side by side"
    assert len(threads) == 1, "quick agents' calls woke more than one worker"
