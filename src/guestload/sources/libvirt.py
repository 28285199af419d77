"""The libvirt source: domains, vCPU stats and guest-agent answers from a libvirt daemon.

The only module of the exporter that imports ``libvirt``. It reads; judging errors and guest
answers is left to :mod:`guestload.queries`. Connecting, listing, agent calls and events stay
together because they share one session (connection, domain handles, callbacks) and libvirt's
process-wide event loop, and keeping them here keeps the ``libvirt`` import in one place.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import libvirt
import libvirt_qemu

from guestload.hoststats.hoststat import (
    HostStat,
    Kept,
    fold_values,
    read_definition,
    read_record,
)
from guestload.identity import KUBEVIRT_METADATA, MetadataReader
from guestload.model import (
    UNKNOWN,
    AgentState,
    ConnectionHealth,
    DomainEvent,
    DomainInventory,
    EventKind,
    QueryReading,
    SourceFacts,
    VcpuStat,
    VcpuState,
)
from guestload.queries.load import LOAD
from guestload.queries.query import GuestQuery, TypedInfo, run_queries
from guestload.sources import libvirt_advice
from guestload.sources.event_loop import EventLoop
from guestload.sources.libvirt_errors import classify_libvirt_error
from guestload.sources.protocol import EventListener, Identify, SourceUnavailableError

log = logging.getLogger(__name__)


DEFAULT_KEEPALIVE_INTERVAL_SECONDS = 5
DEFAULT_KEEPALIVE_COUNT = 3
"""Unanswered keepalives before a remote connection counts as dead (20 s with the interval)."""

_STATS_GROUPS = libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_VCPU
"""The groups every listing asks: the domains' state and their vCPUs."""
_STATS_FLAGS = (
    libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING
    | libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
)
"""Running domains only, without waiting for a domain's job. Without
``VIR_CONNECT_GET_ALL_DOMAINS_STATS_ENFORCE_STATS`` a daemon skips the groups it does not have
(libvirt's test driver has no balloon group) instead of failing the whole call."""
_NANOSECONDS = 1e9
_VCPU_KEY = re.compile(r"vcpu\.(\d+)\.(state|time|wait|delay)")
_VCPU_STATES = {0: VcpuState.OFFLINE, 1: VcpuState.RUNNING, 2: VcpuState.BLOCKED}

#: Refusals of ``agentSetResponseTimeout`` that will not change while the connection lasts.
_PERMANENT_TIMEOUT_REFUSALS = frozenset(
    {
        libvirt.VIR_ERR_NO_SUPPORT,
        libvirt.VIR_ERR_OPERATION_DENIED,
        libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
    }
)


class CallMethod(enum.StrEnum):
    """How a guest-agent query is called on a connection; decided once per connection."""

    GUEST_INFO = "guest_info"
    """``virDomainGetGuestInfo`` with the type of the query's typed answer (e.g. LOAD)."""
    AGENT_COMMAND = "agent_command"
    """The agent passthrough of the query's command."""


@dataclass(frozen=True, slots=True)
class GuestInfoType:
    """The ``virDomainGetGuestInfo`` type that gives one kind of typed answer."""

    constant: str
    """The name of the binding's constant, e.g. ``VIR_DOMAIN_GUEST_INFO_LOAD``."""
    since: int
    """The first libvirt version (packed, major * 1,000,000 + minor * 1,000) that has it."""


GUEST_INFO_TYPES: Final[Mapping[TypedInfo, GuestInfoType]] = {
    TypedInfo.LOAD: GuestInfoType("VIR_DOMAIN_GUEST_INFO_LOAD", 11_002_000),
    TypedInfo.OS: GuestInfoType("VIR_DOMAIN_GUEST_INFO_OS", 5_007_000),
}
"""The guest-info type of each typed answer libvirt has."""


def guest_info_type(
    query: GuestQuery,
    *,
    library_version: int,
    daemon_version: int,
    types: Mapping[TypedInfo, GuestInfoType] = GUEST_INFO_TYPES,
) -> int | None:
    """The libvirt guest-info type to read ``query`` with, or None for the agent passthrough.

    Guest info is used only when the library, the daemon and the Python binding all have it.
    """
    info_type = None if query.typed_info is None else types.get(query.typed_info)
    if info_type is None:
        return None
    constant = getattr(libvirt, info_type.constant, None)
    if (
        isinstance(constant, int)
        and library_version >= info_type.since
        and daemon_version >= info_type.since
    ):
        return constant
    return None


def agent_command_json(query: GuestQuery) -> str:
    """The passthrough text that runs ``query``'s agent command."""
    return json.dumps({"execute": query.agent_command}, separators=(",", ":"))


def format_libvirt_version(version: int) -> str:
    """libvirt's packed version number (major * 1,000,000 + minor * 1,000 + micro) as text."""
    return f"{version // 1_000_000}.{version // 1_000 % 1_000}.{version % 1_000}"


def parse_vcpu_stats(stats: Mapping[str, object]) -> tuple[int | None, tuple[VcpuStat, ...]]:
    """The vCPU count and per-vCPU stats from one domain's bulk stats record.

    Times are converted from nanoseconds to seconds; a vCPU with an unknown or missing state
    is left out, and values that are not numbers are treated as not reported.
    """
    count = stats.get("vcpu.current")
    vcpu_count = count if isinstance(count, int) and not isinstance(count, bool) else None
    fields: dict[int, dict[str, int]] = {}
    for key, value in stats.items():
        # The prefix test first: most keys of a record are not vCPU keys (balloon, block).
        if (
            key.startswith("vcpu.")
            and (parsed := _vcpu_key(key)) is not None
            and (type(value) is int or (isinstance(value, int) and not isinstance(value, bool)))
        ):
            vcpu_id, name = parsed
            if vcpu_id in fields:
                fields[vcpu_id][name] = value
            else:
                fields[vcpu_id] = {name: value}
    vcpus = []
    for vcpu_id in sorted(fields):
        values = fields[vcpu_id]
        state = _VCPU_STATES.get(values.get("state", -1))
        if state is None:
            continue
        run, wait, delay = values.get("time"), values.get("wait"), values.get("delay")
        vcpus.append(
            VcpuStat(
                id=vcpu_id,
                state=state,
                time_seconds=None if run is None else run / _NANOSECONDS,
                wait_seconds=None if wait is None else wait / _NANOSECONDS,
                delay_seconds=None if delay is None else delay / _NANOSECONDS,
            )
        )
    return vcpu_count, tuple(vcpus)


@functools.lru_cache(maxsize=4096)
def _vcpu_key(key: str) -> tuple[int, str] | None:
    """A vCPU key's vCPU id and field (``vcpu.3.time``: 3, ``time``); None for other keys.

    Cached: a domain's records repeat the same keys every poll.
    """
    match = _VCPU_KEY.fullmatch(key)
    return None if match is None else (int(match[1]), match[2])


def stats_groups(host_stats: Sequence[HostStat]) -> tuple[int, tuple[HostStat, ...]]:
    """The groups of one bulk call for ``host_stats``, and the host stats this binding has.

    Always the state and vCPU groups, and the union of the host stats' groups. A host stat
    whose group constant this Python binding lacks is left out (and logged once).
    """
    groups = _STATS_GROUPS
    usable: list[HostStat] = []
    for host_stat in host_stats:
        group = getattr(libvirt, host_stat.stats_group, None)
        if not isinstance(group, int) or isinstance(group, bool):
            log.warning(
                "host stat left out: the libvirt binding lacks its stats group",
                extra={"host_stat": host_stat.name, "group": host_stat.stats_group},
            )
            continue
        groups |= group
        usable.append(host_stat)
    return groups, tuple(usable)


@dataclass(slots=True)
class _DomainHandle:
    """A libvirt domain object and what has been done with it on this connection."""

    domain: Any
    domain_id: int
    agent_timeout_seconds: int | None = None
    """The agent response timeout last set (or permanently refused) for this domain run."""
    agent_timeout_refused: bool = False
    """libvirt refuses response timeouts for this domain: only the passthrough is bounded."""
    metadata: Mapping[str, str] | None = None
    """Identity hints from the domain XML; None until fetched."""
    definition: Mapping[str, object] | None = None
    """The host stats' keys from the domain's live XML; None until read, and again after a
    tunable change."""
    host_stats: Mapping[str, Kept] = field(default_factory=dict)
    """Each host stat's value at this domain run's last listing."""


@dataclass(slots=True)
class _Session:
    """One open connection and its per-connection caches."""

    connection: Any
    library_version: int
    daemon_version: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    handles: dict[str, _DomainHandle] = field(default_factory=dict)
    event_callback_ids: list[int] = field(default_factory=list)
    close_callback_registered: bool = False
    lost_reason: str | None = None
    """Set by the close callback when libvirt reports the connection gone."""
    ways: dict[str, tuple[int | None, str]] = field(default_factory=dict)
    """Each query's :meth:`way`, by query name, worked out once per connection."""

    def guest_info_type(self, query: GuestQuery) -> int | None:
        return guest_info_type(
            query, library_version=self.library_version, daemon_version=self.daemon_version
        )

    def way(self, query: GuestQuery) -> tuple[int | None, str]:
        """How ``query`` is asked here: its guest-info type (None: the passthrough only) and
        its passthrough text."""
        known = self.ways.get(query.name)
        if known is None:
            known = self.ways[query.name] = (
                self.guest_info_type(query),
                agent_command_json(query),
            )
        return known

    def method(self, query: GuestQuery) -> CallMethod:
        if self.guest_info_type(query) is None:
            return CallMethod.AGENT_COMMAND
        return CallMethod.GUEST_INFO


OpenConnection = Callable[[str], Any]
"""Opens a read-write connection to a URI, like ``libvirt.open``."""
AgentCommand = Callable[[Any, str, int, int], Any]
"""Sends a raw agent command to a domain, like ``libvirt_qemu.qemuAgentCommand``."""


class LibvirtSource:
    """A :class:`guestload.sources.protocol.Source` reading from one libvirt connection URI.

    Remote connections send keepalives: a daemon that stops answering (hung, or its host
    gone) closes the connection after ``keepalive_interval_seconds * (keepalive_count + 1)``
    instead of blocking the poll forever. Each listing is one bulk stats call that also asks
    the groups of ``host_stats`` and keeps their parsed values in each domain's inventory.
    ``open_connection`` and ``agent_command`` default to libvirt's own functions; tests inject
    fake connections and domains through them, and a fake ``clock`` (the monotonic time host
    stats fold their values over).
    """

    def __init__(
        self,
        *,
        uri: str,
        keepalive_interval_seconds: int = DEFAULT_KEEPALIVE_INTERVAL_SECONDS,
        keepalive_count: int = DEFAULT_KEEPALIVE_COUNT,
        metadata_readers: Sequence[MetadataReader] = (KUBEVIRT_METADATA,),
        host_stats: Sequence[HostStat] = (),
        open_connection: OpenConnection = libvirt.open,
        agent_command: AgentCommand = libvirt_qemu.qemuAgentCommand,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._uri = uri
        self._stats_groups, self._host_stats = stats_groups(host_stats)
        self._reads_definition = any(stat.reads_definition for stat in self._host_stats)
        self._metadata_readers = tuple(metadata_readers)
        self._keepalive = (keepalive_interval_seconds, keepalive_count)
        self._open_connection = open_connection
        self._agent_command = agent_command
        self._clock = clock
        self._lock = threading.Lock()
        self._session: _Session | None = None
        self._listener: EventListener | None = None

    def connect(self) -> None:
        """Open a read-write connection (read-only cannot call guest info) and subscribe."""
        process_event_loop()
        self.close()
        try:
            connection = self._open_connection(self._uri)
        except libvirt.libvirtError as error:
            raise SourceUnavailableError(
                f"cannot connect to libvirt uri={self._uri}: {error.get_error_message()}"
            ) from error
        try:
            daemon_version = int(connection.getLibVersion())
        except libvirt.libvirtError as error:
            _ignore_libvirt_errors(connection.close)
            raise SourceUnavailableError(
                f"cannot read the libvirt daemon version uri={self._uri}: "
                f"{error.get_error_message()}"
            ) from error
        session = _Session(
            connection=connection,
            library_version=int(libvirt.getVersion()),
            daemon_version=daemon_version,
        )
        self._start_keepalive(connection)
        self._subscribe(session)
        with self._lock:
            self._session = session
        log.info(
            "connected to libvirt",
            extra={
                "uri": self._uri,
                "daemon_version": format_libvirt_version(daemon_version),
                "load_method": session.method(LOAD),
            },
        )

    def close(self) -> None:
        """Unsubscribe and close the connection; safe to call when not connected."""
        with self._lock:
            session, self._session = self._session, None
        if session is None:
            return
        connection = session.connection
        for callback_id in session.event_callback_ids:
            _ignore_libvirt_errors(connection.domainEventDeregisterAny, callback_id)
        if session.close_callback_registered:
            _ignore_libvirt_errors(connection.unregisterCloseCallback)
        _ignore_libvirt_errors(connection.close)
        log.debug("closed libvirt connection", extra={"uri": self._uri})

    def list_running_domains(self) -> Sequence[DomainInventory]:
        """Every running domain with its vCPU stats and host stats, from one bulk stats call."""
        session = self._live_session()
        try:
            records = session.connection.getAllDomainStats(self._stats_groups, _STATS_FLAGS)
        except libvirt.libvirtError as error:
            raise SourceUnavailableError(
                f"listing domains failed uri={self._uri} code={error.get_error_code()}: "
                f"{error.get_error_message()}"
            ) from error
        with session.lock:
            previous = dict(session.handles)
        handles: dict[str, _DomainHandle] = {}
        inventories: list[DomainInventory] = []
        for domain, stats in records:
            try:
                uuid = str(domain.UUIDString())
                handle = _current_handle(previous.get(uuid), domain)
                if handle.metadata is None:
                    handle.metadata = _fetch_metadata(domain, self._metadata_readers)
                if self._reads_definition and handle.definition is None:
                    handle.definition = self._fetch_definition(domain)
                record = {**stats, **handle.definition} if handle.definition else stats
                vcpu_count, vcpus = parse_vcpu_stats(stats)
                inventories.append(
                    DomainInventory(
                        uuid=uuid,
                        domain_name=str(domain.name()),
                        vcpu_count=vcpu_count,
                        vcpus=vcpus,
                        metadata=dict(handle.metadata or {}),
                        host_stats=self._read_host_stats(handle, record),
                        domain_id=handle.domain_id,
                    )
                )
                handles[uuid] = handle
            except Exception:
                # One odd domain must not hide the others.
                log.debug("skipping domain in listing", extra={"uri": self._uri}, exc_info=True)
        with session.lock:
            session.handles = handles
        return inventories

    def _read_host_stats(
        self, handle: _DomainHandle, record: Mapping[str, object]
    ) -> dict[str, object]:
        """The host stats' values of one record, folded with the run's last listing's."""
        if not self._host_stats:
            return {}
        values = read_record(self._host_stats, record)
        handle.host_stats = fold_values(self._host_stats, values, handle.host_stats, self._clock())
        return {name: kept.value for name, kept in handle.host_stats.items()}

    def _fetch_definition(self, domain: Any) -> Mapping[str, object] | None:
        """The host stats' keys from the domain's live XML; None when libvirt failed and the
        next listing should retry."""
        try:
            domain_xml = str(domain.XMLDesc(0))
        except libvirt.libvirtError as error:
            log.debug("domain XML unavailable", extra={"err": error.get_error_message()})
            return None
        return read_definition(self._host_stats, domain_xml)

    def query_guest(
        self, uuid: str, queries: Sequence[GuestQuery], timeout_seconds: float
    ) -> Mapping[str, QueryReading]:
        """Ask one domain's guest agent ``queries``; failures come back classified.

        A query is read through guest info where the connection has its type and the domain's
        agent response timeout could be set; otherwise through the passthrough, bounded by its
        own timeout.
        """
        session = self._session
        if session is None or session.lost_reason is not None:
            failed = QueryReading(state=AgentState.ERROR, detail="not connected to libvirt")
            return dict.fromkeys((query.name for query in queries), failed)
        timeout = _whole_seconds(timeout_seconds)
        try:
            handle = self._handle(session, uuid)
            bounded = _bounded_by_response_timeout(handle, timeout)
        except Exception as error:  # noqa: BLE001 - classified, never raised
            failed = self._failure(session, uuid, error)
            return dict.fromkeys((query.name for query in queries), failed)

        def ask(query: GuestQuery) -> QueryReading:
            try:
                info_type, command = session.way(query)
                if info_type is not None and bounded:
                    return query.parse_typed_info(handle.domain.guestInfo(info_type, 0))
                return query.parse_agent_reply(
                    self._agent_command(handle.domain, command, timeout, 0)
                )
            except Exception as error:  # noqa: BLE001 - classified, never raised
                return self._failure(session, uuid, error)

        return run_queries(queries, ask)

    def _failure(self, session: _Session, uuid: str, error: Exception) -> QueryReading:
        if not isinstance(error, libvirt.libvirtError):
            log.debug("guest agent call failed", extra={"uuid": uuid}, exc_info=error)
            return QueryReading(state=AgentState.ERROR, detail=f"{type(error).__name__}: {error}")
        state = classify_libvirt_error(
            code=error.get_error_code() or 0, message=error.get_error_message() or ""
        )
        if state is AgentState.GONE:
            with session.lock:
                session.handles.pop(uuid, None)
        return QueryReading(state=state, detail=error.get_error_message() or "")

    def set_event_listener(self, listener: EventListener | None) -> None:
        """Deliver lifecycle and agent events to ``listener``, from libvirt's event thread."""
        self._listener = listener

    def facts(self) -> SourceFacts:
        """Library and daemon versions, the load method and the URI; the daemon's version and
        the load method are ``unknown`` while not connected."""
        session = self._session
        return SourceFacts(
            library_version=format_libvirt_version(int(libvirt.getVersion())),
            daemon_version=(format_libvirt_version(session.daemon_version) if session else UNKNOWN),
            load_method=str(session.method(LOAD)) if session else UNKNOWN,
            uri=self._uri,
        )

    def connection_health(self, identify: Identify) -> tuple[ConnectionHealth, ...] | None:
        """None: one connection, whose health the poller knows."""
        del identify
        return None

    def unreachable_advice(self, error: str) -> str:
        """What to check about the daemon, its socket and the user's access to it."""
        return libvirt_advice.unreachable_advice(self._uri, error)

    def _live_session(self) -> _Session:
        session = self._session
        if session is None:
            raise SourceUnavailableError(f"not connected to libvirt uri={self._uri}")
        if session.lost_reason is not None:
            raise SourceUnavailableError(
                f"libvirt connection lost uri={self._uri} reason={session.lost_reason}"
            )
        try:
            alive = session.connection.isAlive()
        except libvirt.libvirtError as error:
            raise SourceUnavailableError(
                f"libvirt connection lost uri={self._uri}: {error.get_error_message()}"
            ) from error
        if not alive:
            raise SourceUnavailableError(f"libvirt connection lost uri={self._uri}")
        return session

    def _handle(self, session: _Session, uuid: str) -> _DomainHandle:
        with session.lock:
            handle = session.handles.get(uuid)
        if handle is not None:
            return handle
        domain = session.connection.lookupByUUIDString(uuid)
        handle = _DomainHandle(domain=domain, domain_id=int(domain.ID()))
        with session.lock:
            return session.handles.setdefault(uuid, handle)

    def _start_keepalive(self, connection: Any) -> None:
        """Keepalives need the event loop; in-process drivers have no use for them and refuse."""
        try:
            connection.setKeepAlive(*self._keepalive)
        except libvirt.libvirtError as error:
            log.debug("no keepalive", extra={"uri": self._uri, "err": error.get_error_message()})

    def _subscribe(self, session: _Session) -> None:
        """Register the close callback and event callbacks; a refusal only costs promptness."""
        connection = session.connection

        def on_close(_connection: Any, reason: int, _opaque: object) -> None:
            session.lost_reason = _CLOSE_REASONS.get(reason, str(reason))
            log.info(
                "libvirt connection closed",
                extra={"uri": self._uri, "reason": session.lost_reason},
            )

        try:
            connection.registerCloseCallback(on_close, None)
            session.close_callback_registered = True
        except libvirt.libvirtError as error:
            log.debug("no close callback", extra={"uri": self._uri, "err": str(error)})

        def on_lifecycle(
            _connection: Any, domain: Any, event: int, detail: int, _opaque: object
        ) -> None:
            kind = _lifecycle_kind(event, detail)
            if kind is not None:
                self._deliver(session, kind, domain)

        def on_agent(
            _connection: Any, domain: Any, state: int, _reason: int, _opaque: object
        ) -> None:
            kind = _AGENT_EVENT_KINDS.get(state)
            if kind is not None:
                self._deliver(session, kind, domain)

        def on_tunable(
            _connection: Any, domain: Any, params: Mapping[str, object], _opaque: object
        ) -> None:
            # A throttle cap changed (virsh blkdeviotune): read the XML again next listing.
            if any(key.startswith(_IOTUNE_TUNABLE_PREFIX) for key in params):
                self._forget_definition(session, domain)

        events: list[tuple[int, Callable[..., None], str]] = [
            (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_lifecycle, "lifecycle"),
            (libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, on_agent, "agent_lifecycle"),
        ]
        if self._reads_definition:
            events.append((libvirt.VIR_DOMAIN_EVENT_ID_TUNABLE, on_tunable, "tunable"))
        for event_id, callback, name in events:
            try:
                callback_id = connection.domainEventRegisterAny(None, event_id, callback, None)
                session.event_callback_ids.append(int(callback_id))
            except libvirt.libvirtError as error:
                log.debug("no events", extra={"uri": self._uri, "events": name, "err": str(error)})

    def _forget_definition(self, session: _Session, domain: Any) -> None:
        try:
            uuid = str(domain.UUIDString())
        except libvirt.libvirtError:
            return
        with session.lock:
            handle = session.handles.get(uuid)
            if handle is not None:
                handle.definition = None

    def _deliver(self, session: _Session, kind: EventKind, domain: Any) -> None:
        try:
            uuid = str(domain.UUIDString())
            if kind in (EventKind.STARTED, EventKind.STOPPED):
                # A new QEMU process needs its agent timeout set again. An event that arrives
                # after a listing already met this run (the same domain id) keeps its handle.
                domain_id = int(domain.ID())
                with session.lock:
                    handle = session.handles.get(uuid)
                    if handle is not None and handle.domain_id != domain_id:
                        del session.handles[uuid]
            listener = self._listener
            if listener is not None:
                listener(DomainEvent(kind=kind, uuid=uuid))
        except Exception:
            log.exception(
                "domain event listener failed", extra={"uri": self._uri, "event": kind.value}
            )


_IOTUNE_TUNABLE_PREFIX = "blkdeviotune."
"""The head of a tunable event's keys for a disk's throttle (``VIR_DOMAIN_TUNABLE_BLKDEV_*``)."""

_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "eof",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "client",
}

_AGENT_EVENT_KINDS = {
    libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED: EventKind.AGENT_CONNECTED,
    libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_DISCONNECTED: (
        EventKind.AGENT_DISCONNECTED
    ),
}


def _lifecycle_kind(event: int, detail: int) -> EventKind | None:
    if event in (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_RESUMED):
        return EventKind.STARTED
    if event in (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_CRASHED):
        return EventKind.STOPPED
    if (
        event == libvirt.VIR_DOMAIN_EVENT_SHUTDOWN
        and detail == libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED
    ):
        return EventKind.STOPPED
    return None


def _current_handle(handle: _DomainHandle | None, domain: Any) -> _DomainHandle:
    """The cached handle while the domain keeps its id; a new one after a restart."""
    domain_id = int(domain.ID())
    if handle is not None and handle.domain_id == domain_id:
        return handle
    return _DomainHandle(domain=domain, domain_id=domain_id)


def _fetch_metadata(domain: Any, readers: Sequence[MetadataReader]) -> Mapping[str, str] | None:
    """Identity hints from the first reader whose element the domain carries.

    None when libvirt failed and the next listing should retry.
    """
    for reader in readers:
        try:
            element = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, reader.namespace_uri, 0)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                continue
            log.debug("domain metadata unavailable", extra={"err": str(error)})
            return None
        hints = reader.parse(str(element))
        if hints:
            return hints
    return {}


def _bounded_by_response_timeout(handle: _DomainHandle, timeout: int) -> bool:
    """Set the domain's agent response timeout once; True when it bounds every agent call.

    Without it, ``guestInfo`` on a frozen agent blocks forever, so the caller falls back to
    the passthrough, which takes its own timeout.
    """
    if handle.agent_timeout_seconds != timeout:
        try:
            handle.domain.agentSetResponseTimeout(timeout, 0)
        except libvirt.libvirtError as error:
            if error.get_error_code() not in _PERMANENT_TIMEOUT_REFUSALS:
                return False  # e.g. the domain stopped: the load call itself reports that
            log.debug("agent response timeout refused", extra={"err": error.get_error_message()})
            handle.agent_timeout_refused = True
        else:
            handle.agent_timeout_refused = False
        handle.agent_timeout_seconds = timeout
    return not handle.agent_timeout_refused


def _whole_seconds(timeout_seconds: float) -> int:
    """libvirt takes agent timeouts in whole seconds, at least one."""
    if not math.isfinite(timeout_seconds) or timeout_seconds <= 1:
        return 1
    return math.ceil(timeout_seconds)


def _ignore_libvirt_errors(call: Any, *args: object) -> None:
    try:
        call(*args)
    except libvirt.libvirtError as error:
        log.debug("ignored libvirt error during close", extra={"err": str(error)})


def _ignore_error(_context: object, _error: object) -> None:
    """libvirt's error callback: errors reach callers as exceptions, not as stderr lines."""


_EVENT_LOOP_LOCK = threading.Lock()


def process_event_loop() -> EventLoop:
    """The process's libvirt event loop; the first call silences libvirt's stderr and starts it.

    libvirt's error handler and event loop are process-wide by design, and the event
    implementation must be registered before the first connection is opened. The loop is
    :class:`guestload.sources.event_loop.EventLoop` rather than libvirt's default, whose
    wake-ups around every call cost as much client CPU as the call itself. Threads that
    connect at once (node mode's first sockets) get the one loop: libvirt refuses a second.
    """
    with _EVENT_LOOP_LOCK:
        return _registered_event_loop()


@functools.cache
def _registered_event_loop() -> EventLoop:
    libvirt.registerErrorHandler(_ignore_error, None)
    loop = EventLoop(invoke_free=libvirt.virEventInvokeFreeCallback)
    libvirt.virEventRegisterImpl(
        loop.add_handle,
        loop.update_handle,
        loop.remove_handle,
        loop.add_timeout,
        loop.update_timeout,
        loop.remove_timeout,
    )
    loop.start()
    return loop
