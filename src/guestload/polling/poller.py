"""Polls a source on a schedule and turns what it finds into snapshots.

Guest-agent calls are the risky part: libvirt runs one agent call per domain at a time and a
call to a hung agent can block for a long time. So calls run in a bounded worker pool, a domain
never has two calls outstanding (a call still running makes the domain ``timeout`` instead of
queueing another), answers from calls that overran are discarded, and agents that are absent
or too old are re-checked on an exponential back-off instead of every poll. Events from the
source make changes prompt; the periodic poll stays the source of truth.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
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
    LoadReading,
    Snapshot,
)
from guestload.polling.workers import DaemonPool
from guestload.sources.protocol import Source, SourceUnavailableError

log = logging.getLogger(__name__)

#: Time a call may run past the agent timeout before the poll stops waiting for it
#: (capped at the agent timeout itself for very short timeouts).
CALL_GRACE_SECONDS = 1.0
#: How often a poll checks its pending calls against their time limits.
OVERDUE_CHECK_SECONDS = 0.05
#: Share of the poll interval a poll may spend waiting for queued calls.
POLL_BUDGET_SHARE = 0.8
#: First delay before reconnecting after the connection failed; doubles up to the interval.
RECONNECT_INITIAL_SECONDS = 1.0


def _put_uuid(answered: queue.SimpleQueue[str], uuid: str, _future: object) -> None:
    answered.put(uuid)


@dataclass(slots=True)
class _Track:
    """What the poller remembers about one running domain between polls."""

    reading: LoadReading | None = None
    next_check: float = 0.0
    backoff: float = 0.0
    logged_state: AgentState | None = None
    last_call_seconds: float = 0.0


@dataclass(slots=True)
class _Call:
    future: Future[LoadReading]
    started: list[float] = field(default_factory=list)
    """Clock readings taken by the worker: when the call started and, once over, ended."""


class Poller:
    """Owns the polling schedule; publishes a fresh :class:`Snapshot` after every change."""

    def __init__(
        self,
        *,
        source: Source,
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
        self._identity = identity
        self._interval = poll_interval_seconds
        self._agent_timeout = agent_timeout_seconds
        self._backoff_max = agent_backoff_max_seconds
        self._on_snapshot = on_snapshot
        self._build_info = dict(build_info)
        self._clock = clock
        self._wall_clock = wall_clock
        self._workers = DaemonPool(workers=concurrency, name="guestload-agent")
        self._connected = False
        self._inventory: Sequence[DomainInventory] = ()
        self._tracks: dict[str, _Track] = {}
        self._in_flight: dict[str, _Call] = {}
        self._agent_calls: Counter[AgentState] = Counter()
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
                refresh, removed = self._absorb_events(events)
                if refresh and not due:
                    self.poll(only=refresh)
                elif removed:
                    self._publish()  # before a due poll too: removals must not wait for it
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
        """List domains and read guest loads now; ``only`` limits the agent calls to those UUIDs.

        Returns (and publishes) the new snapshot. A full poll (``only`` is None) counts in
        ``polls_total``; a targeted refresh after an event does not.
        """
        started = self._clock()
        full = only is None
        if full:
            self._polls_total += 1
        try:
            if not self._connected:
                self._source.connect()
                self._connected = True
                self._build_info.update(self._source.describe())
            inventory = self._source.list_running_domains()
        except SourceUnavailableError as error:
            return self._fail(error, started=started, full=full)
        self._inventory = inventory
        self._forget_missing({d.uuid for d in inventory})
        self._read_loads(inventory, only=only)
        if full:
            self._last_duration = self._clock() - started
            self._last_success = self._wall_clock()
            self._ready = True
        return self._publish()

    def apply_events(self, events: Sequence[DomainEvent]) -> Snapshot:
        """Act on source events at once: drop stopped domains, refresh (re)connected agents."""
        refresh, _removed = self._absorb_events(events)
        if refresh:
            return self.poll(only=refresh)
        return self._publish()

    # -- internals ----------------------------------------------------------------------

    def _absorb_events(self, events: Sequence[DomainEvent]) -> tuple[set[str], bool]:
        """Apply what events tell without asking libvirt.

        Returns the domains to read now, and whether any series went away.
        """
        removed = False
        refresh: set[str] = set()
        stopped: set[str] = set()
        for event in events:
            log.debug("domain event", extra={"event": event.kind.value, "uuid": event.uuid})
            if event.kind is EventKind.STOPPED:
                self._tracks.pop(event.uuid, None)
                stopped.add(event.uuid)
                refresh.discard(event.uuid)
            elif event.kind is EventKind.AGENT_DISCONNECTED:
                track = self._tracks.get(event.uuid)
                if track is not None:
                    reading = LoadReading(
                        state=AgentState.NOT_CONNECTED, detail="agent disconnected"
                    )
                    self._record(event.uuid, track, reading, now=self._clock())
                    removed = True
                refresh.discard(event.uuid)
            else:
                stopped.discard(event.uuid)
                refresh.add(event.uuid)
                track = self._tracks.get(event.uuid)
                if track is not None:
                    track.next_check, track.backoff = 0.0, 0.0
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
        return self._publish(source_up=False)

    def _forget_missing(self, live: set[str]) -> None:
        for uuid in [u for u in self._tracks if u not in live]:
            del self._tracks[uuid]
        # A call that overran for a domain that is gone: drop it once it has ended.
        for uuid in [u for u, c in self._in_flight.items() if u not in live and c.future.done()]:
            del self._in_flight[uuid]

    def _read_loads(
        self, inventory: Sequence[DomainInventory], *, only: Collection[str] | None
    ) -> None:
        now = self._clock()
        calls: dict[str, _Call] = {}
        # Domains that answered last time go first, so a crowd of slow agents cannot delay them.
        ordered = sorted(inventory, key=lambda d: self._priority(d.uuid))
        for domain in ordered:
            track = self._tracks.setdefault(domain.uuid, _Track())
            if only is not None and domain.uuid not in only:
                continue
            previous = self._in_flight.get(domain.uuid)
            if previous is not None and not previous.future.done():
                reading = LoadReading(
                    state=AgentState.TIMEOUT, detail="previous guest-load call still running"
                )
                self._record(domain.uuid, track, reading, now=now)
                continue
            self._in_flight.pop(domain.uuid, None)
            if (
                track.reading is not None
                and track.reading.state in SLOW_RECHECK_STATES
                and now < track.next_check
            ):
                continue
            calls[domain.uuid] = self._submit(domain.uuid)
        for uuid, reading in self._collect(calls).items():
            if (known := self._tracks.get(uuid)) is not None:
                self._record(uuid, known, reading, now=self._clock())

    def _priority(self, uuid: str) -> tuple[int, float]:
        """Healthy and quick agents first; unknown next; failing ones last."""
        track = self._tracks.get(uuid)
        if track is None or track.reading is None:
            return (1, 0.0)
        healthy = track.reading.state is AgentState.OK
        return (0 if healthy else 2, track.last_call_seconds)

    def _submit(self, uuid: str) -> _Call:
        started: list[float] = []

        def call() -> LoadReading:
            started.append(self._clock())
            try:
                return self._source.read_guest_load(uuid, self._agent_timeout)
            finally:
                started.append(self._clock())

        record = _Call(future=self._workers.submit(call), started=started)
        self._in_flight[uuid] = record
        return record

    def _collect(self, calls: Mapping[str, _Call]) -> dict[str, LoadReading]:
        """Wait for the calls: each up to its own timeout, all within the poll's budget.

        Answers arrive through a queue (cost per answer, not per pending call); pending calls
        are checked against their limits a few times a second.
        """
        budget_end = self._clock() + max(
            2 * self._agent_timeout, POLL_BUDGET_SHARE * self._interval
        )
        call_limit = self._agent_timeout + min(CALL_GRACE_SECONDS, self._agent_timeout)
        answered: queue.SimpleQueue[str] = queue.SimpleQueue()
        for uuid, call in calls.items():
            call.future.add_done_callback(functools.partial(_put_uuid, answered, uuid))
        pending = dict(calls)
        readings: dict[str, LoadReading] = {}
        next_check = self._clock() + OVERDUE_CHECK_SECONDS
        while pending:
            try:
                done = answered.get(timeout=max(0.0, next_check - self._clock()))
            except queue.Empty:
                done = None
            if done is not None:
                if done in pending:
                    call = pending.pop(done)
                    readings[done] = self._result(call.future)
                    self._in_flight.pop(done, None)
                    self._note_duration(done, call)
                continue
            now = self._clock()
            next_check = now + OVERDUE_CHECK_SECONDS
            for uuid, call in list(pending.items()):
                if call.started and now - call.started[0] > call_limit:
                    reading = LoadReading(
                        state=AgentState.TIMEOUT,
                        detail=f"no answer within {self._agent_timeout:g}s",
                    )
                    self._note_duration(uuid, call)
                elif now >= budget_end and not call.started:
                    # Never started: drop it, or it would delay the next poll's calls too.
                    if call.future.cancel():
                        self._in_flight.pop(uuid, None)
                    reading = LoadReading(
                        state=AgentState.TIMEOUT,
                        detail="not asked: every worker was busy until the poll's deadline",
                    )
                else:
                    continue
                readings[uuid] = reading
                del pending[uuid]
        return readings

    def _note_duration(self, uuid: str, call: _Call) -> None:
        track = self._tracks.get(uuid)
        if track is not None and call.started:
            ended = call.started[1] if len(call.started) > 1 else self._clock()
            track.last_call_seconds = ended - call.started[0]

    @staticmethod
    def _result(future: Future[LoadReading]) -> LoadReading:
        try:
            return future.result()
        except Exception as error:  # noqa: BLE001 - a source bug must not stop the poll
            return LoadReading(state=AgentState.ERROR, detail=f"{type(error).__name__}: {error}")

    def _record(self, uuid: str, track: _Track, reading: LoadReading, *, now: float) -> None:
        self._agent_calls[reading.state] += 1
        track.reading = reading
        if reading.state in SLOW_RECHECK_STATES:
            track.backoff = min(max(track.backoff * 2, self._interval), self._backoff_max)
            track.next_check = now + track.backoff
        else:
            track.backoff, track.next_check = 0.0, 0.0
        if reading.state is not track.logged_state:
            log.info(
                "guest agent state changed",
                extra={
                    "uuid": uuid,
                    "domain": self._domain_name(uuid),
                    "from": track.logged_state.value if track.logged_state else "none",
                    "to": reading.state.value,
                    "detail": reading.detail,
                },
            )
            track.logged_state = reading.state

    def _domain_name(self, uuid: str) -> str:
        return next((d.domain_name for d in self._inventory if d.uuid == uuid), "")

    def _publish(self, *, source_up: bool | None = None) -> Snapshot:
        domains: list[DomainSample] = []
        owners: dict[Identity, DomainInventory] = {}
        conflicts: list[str] = []
        # UUID order makes the same domain win every poll when two resolve to one identity.
        for inventory in sorted(self._inventory, key=lambda d: d.uuid):
            track = self._tracks.get(inventory.uuid)
            if track is None or track.reading is None:
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
                    agent_state=track.reading.state,
                    load=track.reading.load,
                    vcpu_count=inventory.vcpu_count,
                    vcpus=inventory.vcpus,
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
            identity_conflicts=len(conflicts),
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
