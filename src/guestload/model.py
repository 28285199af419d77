"""The data one poll produces: plain, immutable values shared by every module."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class AgentState(enum.StrEnum):
    """Why a guest-agent query has (or has no) values. A fixed set: it is a label value."""

    OK = "ok"
    """The agent answered the query with valid values."""
    NOT_CONFIGURED = "not_configured"
    """The domain has no guest-agent channel."""
    NOT_CONNECTED = "not_connected"
    """The channel exists but no agent is listening (not started, exited, booting)."""
    UNSUPPORTED = "unsupported"
    """The agent lacks the command (too old), has it disabled, or cannot run it on this guest."""
    TIMEOUT = "timeout"
    """The agent did not answer in time (hung, frozen, overloaded guest)."""
    NO_DATA = "no_data"
    """The agent answered without values."""
    INVALID = "invalid"
    """The agent answered with values that are not what was asked for (hostile or broken)."""
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
    """Identity hints from the domain's XML metadata, e.g. ``kubevirt.uid``; a simulated
    domain also names its agent's behaviour (``guestload.simulated.agent``)."""
    host_stats: Mapping[str, object] = field(default_factory=dict)
    """Host stat name -> its value from the bulk listing, for each enabled host stat whose
    group the listing reported (:mod:`guestload.hoststats`)."""
    domain_id: int | None = None
    """The hypervisor's id of the domain's current run (libvirt's domain ID): a restart gives
    a new one. None where the source does not know it."""


@dataclass(frozen=True, slots=True)
class QueryReading:
    """The outcome of one guest-agent query: its value when ``state`` is OK, else the reason.

    The value's type belongs to the query (see :mod:`guestload.queries`).
    """

    state: AgentState
    value: object = None
    detail: str = ""

    def __post_init__(self) -> None:
        if (self.state is AgentState.OK) != (self.value is not None):
            raise ValueError("a value is present exactly when the state is ok")


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
    readings: Mapping[str, QueryReading]
    """Query name -> its last reading, whose value is what the query keeps to export."""
    vcpu_count: int | None
    vcpus: tuple[VcpuStat, ...]
    host_stats: Mapping[str, object] = field(default_factory=dict)
    """Host stat name -> its value, as the domain's inventory carried it."""

    def state(self, query: str) -> AgentState | None:
        """The agent state of ``query`` for this domain; None where it is not asked."""
        reading = self.readings.get(query)
        return reading.state if reading is not None else None


UNKNOWN = "unknown"
"""A fact the source could not read (yet), e.g. a daemon's version before it answered."""


@dataclass(frozen=True, slots=True)
class SourceFacts:
    """What a source reports about itself once connected, for ``guestload_build_info`` and
    logs. Each source fills it from its own knowledge; generic code only passes it on."""

    library_version: str = UNKNOWN
    """The version of the client library that talks to the hypervisor; ``none`` without one."""
    daemon_version: str = UNKNOWN
    """The version of the hypervisor's daemon behind the connection; ``none`` without one."""
    load_method: str = UNKNOWN
    """How guests' load averages are read, e.g. ``guest_info`` or ``agent_command``."""
    uri: str = ""
    """Where the source connects, as the user configured it."""


@dataclass(frozen=True, slots=True)
class ConnectionHealth:
    """One hypervisor connection of a source that keeps several (KubeVirt node mode: one per
    virt-launcher pod's daemon)."""

    address: str
    """The socket the connection is made through."""
    up: bool
    """Connected, and its daemon answered the last listing."""
    pod_uid: str = ""
    """The launcher pod's UID, from the socket's kubelet path; empty where the path has none."""
    namespace: str = ""
    """The VM's namespace (the pod's), from the domain the connection listed last; empty before."""
    name: str = ""
    """The VM's name, from the domain the connection listed last; empty before."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state after a poll; the collector renders only this."""

    source_up: bool
    """Whether the last poll reached the hypervisor through the source's connection."""
    domains: tuple[DomainSample, ...] = ()
    polls_total: int = 0
    poll_failures_total: int = 0
    last_poll_duration_seconds: float | None = None
    last_success_timestamp_seconds: float | None = None
    agent_calls_total: Mapping[tuple[str, AgentState], int] = field(default_factory=dict)
    """(query, state) -> guest-agent queries that ended in that state."""
    build_info: Mapping[str, str] = field(default_factory=dict)
    """The exporter's own build facts (label name -> value), e.g. its Python version."""
    source: SourceFacts | None = None
    """What the source reported about itself at its last connection; None before one."""
    identity_conflicts: int = 0
    """Running domains left out because another domain has the same namespace, name, node."""
    connections: tuple[ConnectionHealth, ...] | None = None
    """Each hypervisor connection's health where the source keeps several (KubeVirt node
    mode); None where it keeps one, whose health is ``source_up``."""
