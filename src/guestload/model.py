"""The data one poll produces: plain, immutable values shared by every module."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class AgentState(enum.StrEnum):
    """Why a domain has (or has no) guest load. A fixed set: it is a label value."""

    OK = "ok"
    """The agent answered with a valid load average."""
    NOT_CONFIGURED = "not_configured"
    """The domain has no guest-agent channel."""
    NOT_CONNECTED = "not_connected"
    """The channel exists but no agent is listening (not started, exited, booting)."""
    UNSUPPORTED = "unsupported"
    """The agent lacks guest-get-load (older than QEMU 10.0) or has it disabled."""
    TIMEOUT = "timeout"
    """The agent did not answer in time (hung, frozen, overloaded guest)."""
    NO_DATA = "no_data"
    """The agent answered without load values."""
    INVALID = "invalid"
    """The agent answered with values that are not a load average (hostile or broken)."""
    BUSY = "busy"
    """libvirt could not take the domain's job lock (migration, shutdown, another call)."""
    GONE = "gone"
    """The domain stopped or vanished during the poll."""
    ERROR = "error"
    """Any other failure; the log has the message."""


#: States that mean the agent will not answer soon; such domains are re-checked on a back-off.
SLOW_RECHECK_STATES = frozenset({AgentState.NOT_CONFIGURED, AgentState.UNSUPPORTED})


class VcpuState(enum.StrEnum):
    """libvirt's vCPU states (``virVcpuState``), lower case as exported."""

    OFFLINE = "offline"
    RUNNING = "running"
    BLOCKED = "blocked"


@dataclass(frozen=True, slots=True)
class GuestLoad:
    """A guest's load average: runnable plus uninterruptible tasks, as the kernel counts them."""

    one: float
    five: float
    fifteen: float


@dataclass(frozen=True, slots=True)
class VcpuStat:
    """One vCPU as libvirt's bulk stats report it; counters in seconds, None where not reported."""

    id: int
    state: VcpuState
    time_seconds: float | None = None
    wait_seconds: float | None = None
    delay_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Identity:
    """The labels that name a VM in every series."""

    namespace: str
    name: str
    node: str


@dataclass(frozen=True, slots=True)
class DomainInventory:
    """A running domain as the source's bulk listing sees it (no guest-agent call yet)."""

    uuid: str
    domain_name: str
    vcpu_count: int | None = None
    vcpus: tuple[VcpuStat, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    """Identity hints from the domain's XML metadata, e.g. ``kubevirt.uid``."""


@dataclass(frozen=True, slots=True)
class LoadReading:
    """The outcome of one guest-load call: a load when ``state`` is OK, else the reason."""

    state: AgentState
    load: GuestLoad | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        if (self.state is AgentState.OK) != (self.load is not None):
            raise ValueError("a load is present exactly when the state is ok")


class EventKind(enum.StrEnum):
    """Domain events that make the exporter act before the next poll."""

    STARTED = "started"
    STOPPED = "stopped"
    AGENT_CONNECTED = "agent_connected"
    AGENT_DISCONNECTED = "agent_disconnected"


@dataclass(frozen=True, slots=True)
class DomainEvent:
    kind: EventKind
    uuid: str


@dataclass(frozen=True, slots=True)
class DomainSample:
    """Everything exported about one running domain."""

    uuid: str
    domain_name: str
    identity: Identity
    agent_state: AgentState
    load: GuestLoad | None
    vcpu_count: int | None
    vcpus: tuple[VcpuStat, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state after a poll; the collector renders only this."""

    source_up: bool
    domains: tuple[DomainSample, ...] = ()
    polls_total: int = 0
    poll_failures_total: int = 0
    last_poll_duration_seconds: float | None = None
    last_success_timestamp_seconds: float | None = None
    agent_calls_total: Mapping[AgentState, int] = field(default_factory=dict)
    build_info: Mapping[str, str] = field(default_factory=dict)
    identity_conflicts: int = 0
    """Running domains left out because another domain has the same namespace, name, node."""
