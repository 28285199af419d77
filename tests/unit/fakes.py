"""An in-memory Source for unit tests of the poller, CLI and web layer."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from guestload.model import AgentState, DomainInventory, GuestLoad, LoadReading
from guestload.sources.protocol import EventListener, SourceUnavailableError

Answer = LoadReading | Callable[[], LoadReading]


def ok(one: float, five: float = 0.0, fifteen: float = 0.0) -> LoadReading:
    return LoadReading(state=AgentState.OK, load=GuestLoad(one=one, five=five, fifteen=fifteen))


@dataclass
class FakeSource:
    """Domains and agent answers set by the test; records every call."""

    domains: list[DomainInventory] = field(default_factory=list)
    answers: dict[str, Answer] = field(default_factory=dict)
    reachable: bool = True
    calls: list[str] = field(default_factory=list)
    connects: int = 0
    listener: EventListener | None = None
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

    def read_guest_load(self, uuid: str, timeout_seconds: float) -> LoadReading:
        with self._lock:
            self.calls.append(uuid)
        answer = self.answers.get(uuid, LoadReading(state=AgentState.NOT_CONNECTED))
        return answer() if callable(answer) else answer

    def set_event_listener(self, listener: EventListener | None) -> None:
        self.listener = listener

    def describe(self) -> Mapping[str, str]:
        return {"load_method": "fake"}


def domain(
    uuid: str, name: str | None = None, *, vcpus: int = 1, metadata: Mapping[str, str] | None = None
) -> DomainInventory:
    return DomainInventory(
        uuid=uuid, domain_name=name or f"vm-{uuid}", vcpu_count=vcpus, metadata=metadata or {}
    )
