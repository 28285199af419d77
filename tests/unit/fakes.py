"""An in-memory Source for unit tests of the poller, CLI and web layer."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from guestload.model import (
    AgentState,
    ConnectionHealth,
    DomainInventory,
    DomainSample,
    QueryReading,
    SourceFacts,
)
from guestload.queries.load import LOAD, GuestLoad
from guestload.queries.query import GuestQuery, run_queries
from guestload.sources.protocol import EventListener, Identify, Source, SourceUnavailableError

T = TypeVar("T")

Answer = QueryReading | Callable[[], QueryReading]
"""The load query's answer, or a call that makes it (it may block, raise, or count)."""


LOAD_ONLY: tuple[GuestQuery, ...] = (LOAD,)


def ok(one: float, five: float = 0.0, fifteen: float = 0.0) -> QueryReading:
    return QueryReading(state=AgentState.OK, value=GuestLoad(one=one, five=five, fifteen=fifteen))


def load_of(sample: DomainSample) -> GuestLoad | None:
    """The load a sample exports, or None."""
    reading = sample.readings.get(LOAD.name)
    value = reading.value if reading is not None else None
    return value if isinstance(value, GuestLoad) else None


def state_of(sample: DomainSample) -> AgentState | None:
    """The load query's agent state of a sample."""
    return sample.state(LOAD.name)


@dataclass
class FakeSource:
    """Domains and agent answers set by the test; records every call."""

    domains: list[DomainInventory] = field(default_factory=list)
    answers: dict[str, Answer] = field(default_factory=dict)
    other_answers: dict[str, QueryReading] = field(default_factory=dict)
    """Query name -> the answer every domain gives to queries other than the load."""
    reachable: bool = True
    calls: list[str] = field(default_factory=list)
    connects: int = 0
    listener: EventListener | None = None
    reported: SourceFacts = field(default_factory=lambda: SourceFacts(load_method="fake"))
    """What :meth:`facts` answers."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def connect(self) -> None:
        if not self.reachable:
            raise SourceUnavailableError("connection refused")
        self.connects += 1

    def close(self) -> None:
        pass

    def list_running_domains(self) -> Sequence[DomainInventory]:
        if not self.reachable:
            raise SourceUnavailableError("connection lost")
        return list(self.domains)

    def query_guest(
        self, uuid: str, queries: Sequence[GuestQuery], timeout_seconds: float
    ) -> Mapping[str, QueryReading]:
        with self._lock:
            self.calls.append(uuid)

        def ask(query: GuestQuery) -> QueryReading:
            if query.name != LOAD.name:
                return self.other_answers.get(
                    query.name, QueryReading(state=AgentState.UNSUPPORTED)
                )
            answer = self.answers.get(uuid, QueryReading(state=AgentState.NOT_CONNECTED))
            return answer() if callable(answer) else answer

        return run_queries(queries, ask)

    def set_event_listener(self, listener: EventListener | None) -> None:
        self.listener = listener

    def facts(self) -> SourceFacts:
        return self.reported

    def connection_health(self, identify: Identify) -> tuple[ConnectionHealth, ...] | None:
        del identify
        return None

    def unreachable_advice(self, error: str) -> str:
        return f"check the fake ({error})\n"


def domain(
    uuid: str, name: str | None = None, *, vcpus: int = 1, metadata: Mapping[str, str] | None = None
) -> DomainInventory:
    return DomainInventory(
        uuid=uuid, domain_name=name or f"vm-{uuid}", vcpu_count=vcpus, metadata=metadata or {}
    )


def ask_load(source: Source, uuid: str, timeout_seconds: float) -> QueryReading:
    """One domain's load reading through ``source``, asking the load query alone."""
    return source.query_guest(uuid, LOAD_ONLY, timeout_seconds)[LOAD.name]


def load_value(reading: QueryReading) -> GuestLoad:
    """The load of an ok load reading (fails the test for anything else)."""
    assert isinstance(reading.value, GuestLoad), reading
    return reading.value


class Hang(Exception):  # noqa: N818 - what the fake daemon does, not an error it reports
    """Raised by a fake call to stand for a call that never returns (see :class:`InlineCalls`)."""


@dataclass
class InlineCalls:
    """:class:`guestload.sources.deadline_calls.Calls` that runs each call at once, inline.

    A call that raises :class:`Hang` stands for a hung daemon: its future stays pending until
    :meth:`finish` ends it as the keepalive would. Waiting returns at once, after moving the
    test's clock on by the time waited (``advance``).
    """

    advance: Callable[[float], None] = lambda seconds: None
    stuck: list[Future[object]] = field(default_factory=list)
    abandoned: list[Future[object]] = field(default_factory=list)
    submitted: int = 0
    batches: list[bool] = field(default_factory=list)
    """Each :meth:`submit_all`'s ``wide``."""
    widen_checks: int = 0

    def submit(self, call: Callable[[], T]) -> Future[T]:
        self.submitted += 1
        future: Future[T] = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(call())
        except Hang:
            self.stuck.append(future)  # type: ignore[arg-type]
        return future

    def submit_all(
        self, calls: Sequence[Callable[[], T]], *, wide: bool = False
    ) -> list[Future[T]]:
        self.batches.append(wide)
        return [self.submit(call) for call in calls]

    def wait(self, futures: Collection[Future[Any]], seconds: float) -> None:
        del futures
        self.advance(seconds)

    def widen(self) -> int:
        self.widen_checks += 1
        return 0

    def abandon(self, future: Future[Any]) -> None:
        self.abandoned.append(future)

    def finish(self, error: Exception) -> None:
        """End every stuck call with ``error``."""
        stuck, self.stuck = self.stuck, []
        for future in stuck:
            future.set_exception(error)
