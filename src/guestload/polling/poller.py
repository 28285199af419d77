"""Polls a source on a schedule and turns what it finds into snapshots.

Guest-agent calls are the risky part: the hypervisor runs one agent call per domain at a time
and a call to a hung agent can block for a long time. So each poll makes one worker call per
domain that asks that domain's due queries (:mod:`guestload.queries`) in turn; calls run in a
bounded worker pool (one worker after another while every agent asked is known to be quick), a
domain never has two calls outstanding (a call still running makes its queries ``timeout``
instead of queueing another), answers from calls that overran are discarded, and a query whose
agent lacks it or is absent is re-asked on an exponential back-off of its own instead of every
poll. Each query keeps its own state per domain. A query asked once per agent run
(:attr:`~guestload.queries.query.Refresh.ONCE_PER_RUN`) is left out of a domain's calls once it
answered ``ok``, until the domain's id changes (a restart), a started or stopped event comes, or
its agent disconnects or connects; it is asked after the queries before it in the catalog, so it
never delays them. Events from the source make changes prompt; the periodic poll stays the
source of truth.

The schedule, the in-flight guard, the back-off and the events are one module because they all
read and change the same per-domain tracks within one poll; apart, they would share that state
through each other's internals.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from guestload.identity import IdentityResolver
from guestload.model import (
    SLOW_RECHECK_STATES,
    AgentState,
    DomainEvent,
    DomainInventory,
    DomainSample,
    EventKind,
    Identity,
    QueryReading,
    Snapshot,
    SourceFacts,
)
from guestload.queries.query import GuestQuery, Refresh
from guestload.sources.deadline_calls import CallPool
from guestload.sources.protocol import Source, SourceUnavailableError

log = logging.getLogger(__name__)

#: Time a call may run past the agent timeout before the poll stops waiting for it
#: (capped at the agent timeout itself for very short timeouts).
CALL_GRACE_SECONDS = 1.0
#: A call running this long lets one more worker take the poll's queued calls. Agents known
#: to answer quickly (their last call took less) are asked one after another on one worker,
#: which wakes no other thread and hands the connection to none; a call that turns slow or
#: hangs then holds only its own worker (:class:`~guestload.sources.deadline_calls.CallPool`).
WIDEN_AFTER_SECONDS = 0.25
#: How often a poll checks its pending calls against their time limits.
OVERDUE_CHECK_SECONDS = 0.05
#: Share of the poll interval a poll may spend waiting for queued calls.
POLL_BUDGET_SHARE = 0.8
#: Agent timeout of a domain's first call (when the agent timeout is longer): an agent that
#: answers does so in milliseconds, and a hung one must not hold a worker for long before the
#: poller has asked every domain once.
FIRST_CALL_TIMEOUT_SECONDS = 1.0
#: First delay before reconnecting after the connection failed; doubles up to the interval.
RECONNECT_INITIAL_SECONDS = 1.0


class _Answers:
    """Collects the UUIDs of finished calls; wakes the poll thread once all have finished.

    A wake-up per answer would cost the poll thread a context switch per domain; it sleeps
    until the last call ends, or until its next check of the pending calls, and takes every
    answer that came meanwhile in one go.
    """

    def __init__(self, calls: int) -> None:
        self._uuids: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._unfinished = calls
        self.all_finished = threading.Event()
        if calls == 0:
            self.all_finished.set()

    def add(self, uuid: str, _future: object) -> None:
        """A call's done callback (any thread)."""
        self._uuids.put(uuid)
        with self._lock:
            self._unfinished -= 1
            last = self._unfinished == 0
        if last:
            self.all_finished.set()

    def take(self) -> Iterator[str]:
        """The UUIDs of calls finished since the last take."""
        while True:
            try:
                yield self._uuids.get_nowait()
            except queue.Empty:
                return


@dataclass(slots=True)
class _QueryTrack:
    """What the poller remembers about one query of one domain between polls."""

    reading: QueryReading | None = None
    """The last reading; when ok, its value is what the query keeps (see ``GuestQuery.fold``)."""
    kept: object = None
    """The query's kept value, also while the query fails, so a counter resumes where it was."""
    next_check: float = 0.0
    backoff: float = 0.0
    logged_state: AgentState | None = None
    settled: bool = False
    """A once-per-run query answered ok in this run of the domain and its agent: not asked
    again until the domain restarts or the agent disconnects or connects."""


@dataclass(slots=True)
class _Track:
    """What the poller remembers about one running domain between polls."""

    domain_name: str = ""
    domain_id: int | None = None
    """The domain's id in the run its once-per-run answers were read in."""
    queries: dict[str, _QueryTrack] = field(default_factory=dict)
    last_call_seconds: float = 0.0
    asked: bool = False
    """A call has reached its agent (a call dropped before it started does not count)."""

    def healthy(self) -> bool | None:
        """True when every query answered ok last time, None before any answer."""
        readings = [q.reading for q in self.queries.values() if q.reading is not None]
        if not readings:
            return None
        return all(reading.state is AgentState.OK for reading in readings)

    def unsettle(self) -> None:
        """A new run of the domain or its agent: once-per-run queries are asked again."""
        for query_track in self.queries.values():
            query_track.settled = False


Readings = Mapping[str, QueryReading]


@dataclass(slots=True)
class _Call:
    asked: tuple[GuestQuery, ...]
    """The queries the call asks, in order."""
    timeout: float
    """The agent timeout of each query of the call."""
    future: Future[Readings] = field(init=False)
    """Set once the call is submitted."""
    started: float | None = None
    """The clock when a worker began the call (set by the worker); None while queued."""
    ended: float | None = None
    """The clock when the call returned or raised (set by the worker)."""

    @property
    def queries(self) -> tuple[str, ...]:
        """The names of the queries the call asks."""
        return tuple(query.name for query in self.asked)


class Poller:
    """Owns the polling schedule; publishes a fresh :class:`Snapshot` after every change."""

    def __init__(
        self,
        *,
        source: Source,
        queries: Sequence[GuestQuery],
        identity: IdentityResolver,
        poll_interval_seconds: float,
        agent_timeout_seconds: float,
        concurrency: int,
        agent_backoff_max_seconds: float,
        on_snapshot: Callable[[Snapshot], None],
        build_info: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = source
        self._queries = tuple(queries)
        self._query_by_name = {query.name: query for query in self._queries}
        self._identity = identity
        self._interval = poll_interval_seconds
        self._agent_timeout = agent_timeout_seconds
        self._backoff_max = agent_backoff_max_seconds
        self._on_snapshot = on_snapshot
        self._build_info = dict(build_info)
        self._facts: SourceFacts | None = None
        self._clock = clock
        self._wall_clock = wall_clock
        self._workers = CallPool(
            workers=concurrency,
            name="guestload-agent",
            widen_after=WIDEN_AFTER_SECONDS,
            clock=clock,
        )
        self._connected = False
        self._inventory: Sequence[DomainInventory] = ()
        self._tracks: dict[str, _Track] = {}
        self._in_flight: dict[str, _Call] = {}
        self._agent_calls: Counter[tuple[str, AgentState]] = Counter()
        self._polls_total = 0
        self._poll_failures_total = 0
        self._last_duration: float | None = None
        self._last_success: float | None = None
        self._events: queue.SimpleQueue[DomainEvent] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ready = False
        self._logged_conflicts: frozenset[str] = frozenset()
        self._overrun = False
        self._summary_due = True
        """The next full poll logs one line of agent states instead of each domain's first one."""

    # -- public API ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once connected and a poll succeeded; false again while disconnected."""
        return self._ready

    def notify(self, event: DomainEvent) -> None:
        """Queue a source event; safe from any thread."""
        self._events.put(event)
        self._wake.set()

    def stop(self) -> None:
        """Ask :meth:`run` to return; safe from any thread or a signal handler."""
        self._stop.set()
        self._wake.set()

    def connect(self) -> None:
        """Connect the source now, as a poll does while disconnected; the next poll keeps this
        connection. Raises :class:`SourceUnavailableError` when the source cannot be reached.
        """
        self._source.connect()
        self._connected = True
        self._facts = self._source.facts()

    def close(self) -> None:
        """Release the worker pool (calls still running are abandoned) and the source."""
        self._workers.close()
        self._source.set_event_listener(None)
        self._source.close()

    def run(self) -> None:
        """Poll until :meth:`stop`; reconnect with back-off while the source is down.

        Events are taken before every poll as well as between polls, so they never pile up
        when polls take as long as the interval.
        """
        self._source.set_event_listener(self.notify)
        next_poll = self._clock()
        reconnect_delay = RECONNECT_INITIAL_SECONDS
        while not self._stop.is_set():
            now = self._clock()
            events = self._drain_events()
            due = now >= next_poll
            if events and self._connected:
                self.apply_events(events, poll_due=due)
            if due:
                snapshot = self.poll()
                if snapshot.source_up:
                    self._warn_if_overrun(self._clock() - now)
                    next_poll = now + self._interval
                    reconnect_delay = RECONNECT_INITIAL_SECONDS
                else:
                    next_poll = now + reconnect_delay
                    reconnect_delay = min(reconnect_delay * 2, self._interval)
            elif not events:
                self._wake.wait(next_poll - now)
                self._wake.clear()

    def poll(self, *, only: Collection[str] | None = None) -> Snapshot:
        """List domains and ask their agents now; ``only`` limits the agent calls to those UUIDs.

        Returns (and publishes) the new snapshot. A full poll (``only`` is None) counts in
        ``polls_total``; a targeted refresh after an event does not.
        """
        with _cyclic_gc_paused():
            return self._poll(only=only)

    def _poll(self, *, only: Collection[str] | None) -> Snapshot:
        started = self._clock()
        full = only is None
        if full:
            self._polls_total += 1
        try:
            if not self._connected:
                self.connect()
            inventory = self._source.list_running_domains()
        except SourceUnavailableError as error:
            return self._fail(error, started=started, full=full)
        self._inventory = inventory
        self._forget_missing({d.uuid for d in inventory})
        self._ask_agents(inventory, only=only)
        if full:
            self._last_duration = self._clock() - started
            self._last_success = self._wall_clock()
            self._ready = True
            if self._summary_due:
                self._summary_due = False
                self._log_agent_states(inventory)
        return self._publish()

    def apply_events(
        self, events: Sequence[DomainEvent], *, poll_due: bool = False
    ) -> Snapshot | None:
        """Act on source events at once: drop stopped domains, ask (re)connected agents.

        Returns the snapshot published, if any. With ``poll_due`` the agents are left to the
        full poll about to run; removals are published before it all the same.
        """
        refresh, removed = self._absorb_events(events)
        if refresh and not poll_due:
            return self.poll(only=refresh)
        if removed:
            return self._publish()
        return None

    # -- internals ----------------------------------------------------------------------

    def _absorb_events(self, events: Sequence[DomainEvent]) -> tuple[set[str], bool]:
        """Apply what events tell without asking the hypervisor.

        Returns the domains to read now, and whether any series went away.
        """
        removed = False
        refresh: set[str] = set()
        stopped: set[str] = set()
        for event in events:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("domain event", extra={"event": event.kind.value, "uuid": event.uuid})
            if event.kind is EventKind.STOPPED:
                self._tracks.pop(event.uuid, None)
                stopped.add(event.uuid)
                refresh.discard(event.uuid)
            elif event.kind is EventKind.AGENT_DISCONNECTED:
                track = self._tracks.get(event.uuid)
                if track is not None:
                    gone = QueryReading(state=AgentState.NOT_CONNECTED, detail="agent disconnected")
                    readings = dict.fromkeys(self._query_by_name, gone)
                    self._record(event.uuid, track, readings, now=self._clock())
                    removed = True
                refresh.discard(event.uuid)
            else:
                stopped.discard(event.uuid)
                refresh.add(event.uuid)
                track = self._tracks.get(event.uuid)
                if track is not None:
                    track.unsettle()
                    for query_track in track.queries.values():
                        query_track.next_check, query_track.backoff = 0.0, 0.0
        if stopped:
            before = len(self._inventory)
            self._inventory = [d for d in self._inventory if d.uuid not in stopped]
            removed = removed or len(self._inventory) < before
        return refresh, removed

    def _warn_if_overrun(self, took: float) -> None:
        """Log once when polls start taking longer than the interval, once when they recover."""
        overrun = took >= self._interval
        if overrun and not self._overrun:
            log.warning(
                "a poll took longer than the interval: polls now run back to back",
                extra={"took_seconds": round(took, 3), "interval_seconds": self._interval},
            )
        elif self._overrun and not overrun:
            log.info("polls fit in the interval again", extra={"took_seconds": round(took, 3)})
        self._overrun = overrun

    def _drain_events(self) -> list[DomainEvent]:
        events: list[DomainEvent] = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def _fail(self, error: Exception, *, started: float, full: bool) -> Snapshot:
        if self._connected or self._ready or self._poll_failures_total == 0:
            log.error("hypervisor unavailable", extra={"err": str(error)})
        if full:
            self._poll_failures_total += 1
            self._last_duration = self._clock() - started
        if self._connected:
            self._source.close()
        self._connected = False
        self._ready = False
        self._inventory = ()
        self._tracks.clear()
        self._summary_due = True
        return self._publish(source_up=False)

    def _forget_missing(self, live: set[str]) -> None:
        for uuid in [u for u in self._tracks if u not in live]:
            del self._tracks[uuid]
        # A call that overran for a domain that is gone: drop it once it has ended.
        for uuid in [u for u, c in self._in_flight.items() if u not in live and c.future.done()]:
            del self._in_flight[uuid]

    def _ask_agents(
        self, inventory: Sequence[DomainInventory], *, only: Collection[str] | None
    ) -> None:
        now = self._clock()
        calls: dict[str, _Call] = {}
        # Domains that answered last time go first, so a crowd of slow agents cannot delay them.
        ordered = sorted(inventory, key=lambda d: self._priority(d.uuid))
        for domain in ordered:
            track = self._tracks.get(domain.uuid)
            if track is None:
                track = self._tracks[domain.uuid] = _Track(
                    domain_id=domain.domain_id,
                    queries={name: _QueryTrack() for name in self._query_by_name},
                )
            elif track.domain_id != domain.domain_id:
                track.domain_id = domain.domain_id
                track.unsettle()
            track.domain_name = domain.domain_name
            if only is not None and domain.uuid not in only:
                continue
            due = tuple(query for query in self._queries if _due(track.queries[query.name], now))
            if not due:
                continue
            previous = self._in_flight.get(domain.uuid)
            if previous is not None and not previous.future.done():
                still = QueryReading(
                    state=AgentState.TIMEOUT, detail="previous guest-agent call still running"
                )
                self._record(domain.uuid, track, {q.name: still for q in due}, now=now)
                continue
            self._in_flight.pop(domain.uuid, None)
            timeout = self._agent_timeout
            if not track.asked:
                timeout = min(timeout, FIRST_CALL_TIMEOUT_SECONDS)
            calls[domain.uuid] = self._prepare(domain.uuid, due, timeout)
        # Calls of agents known to answer quickly run one after another on one worker; with
        # any other agent among them (never asked, slow or hung) every worker takes calls.
        known_quick = all(
            (track := self._tracks.get(uuid)) is not None
            and track.asked
            and track.last_call_seconds < WIDEN_AFTER_SECONDS
            for uuid in calls
        )
        self._submit(calls, wide=not known_quick)
        for uuid, readings in self._collect(calls).items():
            if (known := self._tracks.get(uuid)) is not None:
                self._record(uuid, known, readings, now=self._clock())

    def _priority(self, uuid: str) -> tuple[int, float]:
        """Healthy and quick agents first; never asked next; failing ones last.

        A domain whose call was dropped unstarted at a poll's deadline was never asked: it goes
        ahead of the agents known to be slow or hung, whose calls would hold the workers.
        """
        track = self._tracks.get(uuid)
        healthy = track.healthy() if track is not None else None
        if track is None or healthy is None or not track.asked:
            return (1, 0.0)
        return (0 if healthy else 2, track.last_call_seconds)

    def _prepare(self, uuid: str, queries: tuple[GuestQuery, ...], timeout: float) -> _Call:
        record = _Call(asked=queries, timeout=timeout)
        self._in_flight[uuid] = record
        return record

    def _submit(self, calls: Mapping[str, _Call], *, wide: bool) -> None:
        """Queue the calls in order, in one go (a narrow pool wakes one worker for them all)."""

        def call(uuid: str, record: _Call) -> Readings:
            record.started = self._clock()
            try:
                return self._source.query_guest(uuid, record.asked, record.timeout)
            finally:
                record.ended = self._clock()

        futures = self._workers.submit_all(
            [functools.partial(call, uuid, record) for uuid, record in calls.items()], wide=wide
        )
        for record, future in zip(calls.values(), futures, strict=True):
            record.future = future

    def _collect(self, calls: Mapping[str, _Call]) -> dict[str, Readings]:
        """Wait for the calls: each up to its own timeout, all within the poll's budget.

        Answers are taken in batches (:class:`_Answers`); pending calls are checked against
        their limits a few times a second.
        """
        budget_end = self._clock() + max(
            2 * self._agent_timeout, POLL_BUDGET_SHARE * self._interval
        )
        answers = _Answers(len(calls))
        for uuid, call in calls.items():
            call.future.add_done_callback(functools.partial(answers.add, uuid))
        pending = dict(calls)
        readings: dict[str, Readings] = {}
        next_check = self._clock() + OVERDUE_CHECK_SECONDS
        while pending:
            answers.all_finished.wait(max(0.0, next_check - self._clock()))
            for done in answers.take():
                if done in pending:
                    call = pending.pop(done)
                    readings[done] = self._result(call)
                    self._in_flight.pop(done, None)
                    self._note_duration(done, call)
            now = self._clock()
            if not pending or now < next_check:
                continue
            next_check = now + OVERDUE_CHECK_SECONDS
            self._workers.widen()
            for uuid, call in list(pending.items()):
                # Each query of the call may take the agent timeout.
                grace = min(CALL_GRACE_SECONDS, call.timeout)
                call_limit = call.timeout * len(call.asked) + grace
                if call.started is not None and now - call.started > call_limit:
                    reading = QueryReading(
                        state=AgentState.TIMEOUT, detail=f"no answer within {call.timeout:g}s"
                    )
                    self._note_duration(uuid, call)
                elif now >= budget_end and call.started is None:
                    # Never started: drop it, or it would delay the next poll's calls too.
                    if call.future.cancel():
                        self._in_flight.pop(uuid, None)
                    reading = QueryReading(
                        state=AgentState.TIMEOUT,
                        detail="not asked: every worker was busy until the poll's deadline",
                    )
                else:
                    continue
                readings[uuid] = dict.fromkeys(call.queries, reading)
                del pending[uuid]
        return readings

    def _note_duration(self, uuid: str, call: _Call) -> None:
        track = self._tracks.get(uuid)
        started = call.started
        if track is not None and started is not None:
            track.asked = True
            ended = call.ended if call.ended is not None else self._clock()
            track.last_call_seconds = ended - started

    @staticmethod
    def _result(call: _Call) -> Readings:
        """The call's readings; a query the source did not answer (a source bug) is an error."""
        try:
            readings = dict(call.future.result())
        except Exception as error:  # noqa: BLE001 - a source bug must not stop the poll
            failed = QueryReading(state=AgentState.ERROR, detail=f"{type(error).__name__}: {error}")
            return dict.fromkeys(call.queries, failed)
        missing = QueryReading(state=AgentState.ERROR, detail="the source gave no answer")
        return {name: readings.get(name, missing) for name in call.queries}

    def _record(self, uuid: str, track: _Track, readings: Readings, *, now: float) -> None:
        queries = track.queries
        for name, reading in readings.items():
            query_track = queries.get(name)
            if query_track is None:
                continue
            state = reading.state
            self._agent_calls[(name, state)] += 1
            kept = reading
            query = self._query_by_name[name]
            if state is AgentState.OK:
                value = query_track.kept = query.fold(query_track.kept, reading.value)
                # A stateless query keeps what it read: the reading itself, without a copy.
                if value is not reading.value or reading.detail:
                    kept = QueryReading(state=AgentState.OK, value=value)
            query_track.reading = kept
            query_track.settled = state is AgentState.OK and query.refresh is Refresh.ONCE_PER_RUN
            if state in SLOW_RECHECK_STATES:
                backoff = max(query_track.backoff * 2, self._interval)
                query_track.backoff = min(backoff, self._backoff_max)
                query_track.next_check = now + query_track.backoff
            else:
                query_track.backoff, query_track.next_check = 0.0, 0.0
            previous = query_track.logged_state
            if state is previous:
                continue
            query_track.logged_state = state
            # The first full poll sums up the first states in one line (_log_agent_states).
            if (previous is not None or not self._summary_due) and log.isEnabledFor(logging.INFO):
                log.info(
                    "guest agent state changed",
                    extra={
                        "uuid": uuid,
                        "domain": track.domain_name,
                        "query": name,
                        "from": previous.value if previous is not None else "none",
                        "to": reading.state.value,
                        "detail": reading.detail,
                    },
                )

    def _log_agent_states(self, inventory: Sequence[DomainInventory]) -> None:
        """One line for the first poll: how many domains' agents are in each state, per query."""
        if not log.isEnabledFor(logging.INFO):
            return
        counts: dict[str, Counter[str]] = {name: Counter() for name in self._query_by_name}
        for domain in inventory:
            track = self._tracks.get(domain.uuid)
            if track is None:
                continue
            for name, query_track in track.queries.items():
                reading = query_track.reading
                counts[name][reading.state.value if reading is not None else "none"] += 1
        log.info(
            "guest agent states after the first poll",
            extra={
                "domains": len(inventory),
                "states": " ".join(
                    f"{name}:" + ",".join(f"{s}={n}" for s, n in sorted(c.items()))
                    for name, c in counts.items()
                ),
            },
        )

    def _publish(self, *, source_up: bool | None = None) -> Snapshot:
        domains: list[DomainSample] = []
        owners: dict[Identity, DomainInventory] = {}
        conflicts: list[str] = []
        # UUID order makes the same domain win every poll when two resolve to one identity.
        for inventory in sorted(self._inventory, key=lambda d: d.uuid):
            track = self._tracks.get(inventory.uuid)
            if track is None:
                continue
            readings = {
                name: query_track.reading
                for name, query_track in track.queries.items()
                if query_track.reading is not None
            }
            if not readings:
                continue
            identity = self._identity.resolve(inventory)
            if identity in owners:
                conflicts.append(inventory.domain_name)
                continue
            owners[identity] = inventory
            domains.append(
                DomainSample(
                    uuid=inventory.uuid,
                    domain_name=inventory.domain_name,
                    identity=identity,
                    readings=readings,
                    vcpu_count=inventory.vcpu_count,
                    vcpus=inventory.vcpus,
                    host_stats=inventory.host_stats,
                )
            )
        self._log_conflicts(frozenset(conflicts))
        snapshot = Snapshot(
            source_up=self._connected if source_up is None else source_up,
            domains=tuple(domains),
            polls_total=self._polls_total,
            poll_failures_total=self._poll_failures_total,
            last_poll_duration_seconds=self._last_duration,
            last_success_timestamp_seconds=self._last_success,
            agent_calls_total=dict(self._agent_calls),
            build_info=dict(self._build_info),
            source=self._facts,
            identity_conflicts=len(conflicts),
            connections=self._source.connection_health(self._identity.resolve),
        )
        self._on_snapshot(snapshot)
        return snapshot

    def _log_conflicts(self, conflicts: frozenset[str]) -> None:
        """Warn when the set of domains left out for a duplicate identity changes."""
        if conflicts and conflicts != self._logged_conflicts:
            log.warning(
                "domains left out: their namespace, name and node equal another domain's",
                extra={"domains": ",".join(sorted(conflicts))},
            )
        self._logged_conflicts = conflicts


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Keep CPython's cycle collector out of a poll; reference counting still frees at once.

    A poll allocates objects for every domain, many of them alive until it ends. With the
    collector on, its full collections kept running while they piled up, each walking every
    live object, so their cost grew faster than the domains (docs/performance.md, "First
    poll"). Polls make no cyclic garbage
    of their own; cycles made meanwhile wait for the collector's next run after the poll.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _due(track: _QueryTrack, now: float) -> bool:
    """Whether a domain's query is asked now: not once-per-run and settled, and not waiting
    for the next check of an absent or too old agent."""
    if track.settled:
        return False
    return not (
        track.reading is not None
        and track.reading.state in SLOW_RECHECK_STATES
        and now < track.next_check
    )
