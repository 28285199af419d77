"""Many libvirt daemons as one source: KubeVirt node mode.

KubeVirt runs one libvirt daemon per VM, inside the VM's virt-launcher pod, listening on a
socket in the pod's ``libvirt-runtime`` emptyDir. From the node, those sockets are found with a
glob over the kubelet's pods directory. :class:`SocketGlobSource` keeps one source per socket
it finds: listings are merged, guest-agent calls are routed to the socket that listed the
domain, a socket that fails only loses its own domains (and is reconnected on a back-off), and
sockets are re-scanned in the background so VMs that start or stop are noticed between polls.
Sockets are listed each up to a deadline, one after another on one thread while they answer
quickly, with one more thread for each call that turns slow: a hung daemon (its launcher
frozen) costs the others one deadline, once, and then none while its call stays stuck.
Guest queries run on the caller's thread, each with a limit of its own; one past its limit
makes its socket hung just the same.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from guestload.model import (
    UNKNOWN,
    AgentState,
    ConnectionHealth,
    DomainEvent,
    DomainInventory,
    EventKind,
    QueryReading,
    SourceFacts,
)
from guestload.queries.query import GuestQuery
from guestload.sources.deadline_calls import CallPool, Calls
from guestload.sources.path_glob import find_paths
from guestload.sources.protocol import EventListener, Identify, Source, SourceUnavailableError

log = logging.getLogger(__name__)

#: The placeholder in the URI template that is replaced by a socket's path.
SOCKET_PLACEHOLDER = "{socket}"

#: Longest path a unix socket address holds (``sun_path`` is 108 bytes with the final NUL).
UNIX_PATH_MAX = 107

RESCAN_INTERVAL_SECONDS = 5.0
CALL_WORKERS = 8
"""Listings and connects at once at most: few threads contend less for the interpreter's lock,
and a listing takes a fraction of a millisecond of each; a hung socket's call gives up its
place at its deadline."""
CALL_DEADLINE_SECONDS = 5.0
"""How long a listing or connect waits for one socket before counting it as hung."""
LISTING_WIDEN_AFTER_SECONDS = 0.25
"""A listing call running this long lets one more worker take the queued ones; while every
socket asked answers quickly they are listed one after another on one worker."""
LISTING_CHECK_SECONDS = 0.05
"""How often a listing looks at its calls: deadlines, and whether to widen the pool."""
LISTING_DEADLINES = 4
"""A listing waits at most this many deadlines, however many sockets hang at once."""
MIN_CALL_DEADLINE_SECONDS = 1.0
"""The shortest deadline the command line derives (from ``--collector.agent-timeout``)."""
RECONNECT_INITIAL_SECONDS = 1.0
RECONNECT_MAX_SECONDS = 60.0


def socket_uri(template: str, socket_path: str) -> str:
    """The libvirt URI for one socket: the template with ``{socket}`` replaced."""
    return template.replace(SOCKET_PLACEHOLDER, socket_path)


#: The kubelet folder whose subfolders are named by pod UID (``<kubelet root>/pods/<uid>/``).
KUBELET_PODS_FOLDER = "pods"


def pod_uid_from_socket(socket_path: str) -> str:
    """The pod UID in a kubelet socket path (the folder after the last ``pods``), or ``""``."""
    parts = socket_path.split("/")
    # The UID is a folder: never the socket's own name, the last part.
    for index in range(len(parts) - 3, -1, -1):
        if parts[index] == KUBELET_PODS_FOLDER and parts[index + 1]:
            return parts[index + 1]
    return ""


class _SocketAddress:
    """A path to connect to a socket by, short enough for a unix socket address.

    Kubelet paths are longer than a unix socket address may be (``/var/lib/kubelet/pods/<uid>/
    volumes/kubernetes.io~empty-dir/libvirt-runtime/virtqemud-sock`` is over 107 bytes). For
    such a socket the directory is held open and the socket is reached through
    ``/proc/self/fd/<fd>/<name>``: no file is written and the kernel resolves the rest.
    """

    def __init__(self, socket_path: str) -> None:
        self._directory_fd: int | None = None
        self.path = socket_path
        if len(os.fsencode(socket_path)) > UNIX_PATH_MAX:
            directory, name = os.path.split(socket_path)
            self._directory_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            self.path = f"/proc/self/fd/{self._directory_fd}/{name}"

    def release(self) -> None:
        if self._directory_fd is not None:
            os.close(self._directory_fd)
            self._directory_fd = None


@dataclass(slots=True)
class _Member:
    """One socket's source and its connection state."""

    socket_path: str
    address: _SocketAddress
    source: Source
    connected: bool = False
    reconnect_delay: float = 0.0
    next_attempt: float = 0.0
    uuids: frozenset[str] = frozenset()
    """Domains the member listed last."""
    named_after: DomainInventory | None = None
    """The domain of the member's last listing of exactly one (a launcher runs one VM); kept
    while the member is down, so its health keeps naming the VM."""
    stuck_calls: int = 0
    """Calls to the member's daemon that missed their deadline and still run: while any does,
    the member is down and gets no new call."""
    retired: bool = False
    """Its socket vanished or the source closed: released once no stuck call holds it."""


@dataclass(eq=False, slots=True)
class _Query:
    """A guest query running on its caller's thread, and when it is overdue."""

    member: _Member
    deadline: float
    overdue: bool = False
    """Found past its deadline and counted as one of the member's stuck calls."""


@dataclass(frozen=True, slots=True)
class _Reply:
    """What one connect-and-list call to a member's daemon came back with."""

    connected: bool
    """The call (re)connected the member."""
    inventory: Sequence[DomainInventory] | None
    """None when the connect or the listing failed."""
    error: str = ""


def _connect_and_list(source: Source, *, connect: bool) -> _Reply:
    """Runs on a pool thread: (re)connect when asked, then list; failures come back as values."""
    if connect:
        try:
            source.connect()
        except SourceUnavailableError as error:
            return _Reply(connected=False, inventory=None, error=str(error))
    try:
        return _Reply(connected=connect, inventory=source.list_running_domains())
    except SourceUnavailableError as error:
        return _Reply(connected=connect, inventory=None, error=str(error))


class SocketGlobSource:
    """A :class:`guestload.sources.protocol.Source` over every libvirt socket that matches a glob.

    ``make_source`` builds the source for one libvirt URI (a ``LibvirtSource`` in production,
    a fake in unit tests); ``find_sockets`` defaults to
    :func:`~guestload.sources.path_glob.find_paths`. The source counts as up while it is
    connected, even with no socket at all: a node without VMs is healthy.

    Connects and listings run on ``calls`` (by default a narrow
    :class:`~guestload.sources.deadline_calls.CallPool` of ``call_workers`` threads: connected
    sockets one after another while they answer quickly, sockets to connect all at once), each
    waited for up to ``call_deadline_seconds``. A guest query runs on the caller's thread (the
    poller's worker, which bounds it too); it may take its timeout per query plus that
    deadline, and one still running past that is found at the next listing, health report or
    query. A socket whose call misses its deadline is down and loses its domains; its call is
    left to end on its own, and the socket gets no other call until it has.
    """

    def __init__(
        self,
        *,
        socket_glob: str,
        uri_template: str,
        make_source: Callable[[str], Source],
        rescan_interval_seconds: float = RESCAN_INTERVAL_SECONDS,
        call_deadline_seconds: float = CALL_DEADLINE_SECONDS,
        call_workers: int = CALL_WORKERS,
        find_sockets: Callable[[str], Iterable[str]] = find_paths,
        clock: Callable[[], float] = time.monotonic,
        calls: Calls | None = None,
    ) -> None:
        self._socket_glob = socket_glob
        self._uri_template = uri_template
        self._make_source = make_source
        self._rescan_interval = rescan_interval_seconds
        self._deadline = call_deadline_seconds
        self._find_sockets = find_sockets
        self._clock = clock
        self._calls: Calls = (
            CallPool(
                workers=call_workers,
                name="guestload-socket",
                widen_after=LISTING_WIDEN_AFTER_SECONDS,
                clock=clock,
            )
            if calls is None
            else calls
        )
        self._scan_lock = threading.Lock()
        self._lock = threading.Lock()
        self._members: dict[str, _Member] = {}
        self._routes: dict[str, _Member] = {}
        self._queries: set[_Query] = set()
        """Guest queries running now, on their callers' threads."""
        self._listener: EventListener | None = None
        self._connected = False
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._last_scan = 0.0

    def connection_health(self, identify: Identify) -> tuple[ConnectionHealth, ...]:
        """Each known socket's connection state, sorted by path.

        ``identify`` names the socket's VM from the domain it listed last (KubeVirt's
        ``<namespace>_<vmi>``); a socket that listed none yet, or several, names no VM.
        """
        self._find_overdue_queries()
        with self._lock:
            members = [self._members[path] for path in sorted(self._members)]
        health: list[ConnectionHealth] = []
        for member in members:
            identity = None if member.named_after is None else identify(member.named_after)
            health.append(
                ConnectionHealth(
                    address=member.socket_path,
                    up=member.connected,
                    pod_uid=pod_uid_from_socket(member.socket_path),
                    namespace="" if identity is None else identity.namespace,
                    name="" if identity is None else identity.name,
                )
            )
        return tuple(health)

    def connect(self) -> None:
        """Find the sockets, connect to each, and start re-scanning in the background."""
        self.close()
        self._connected = True
        self._stop.clear()
        self.rescan()
        if self._rescan_interval > 0:
            self._watcher = threading.Thread(
                target=self._watch, name="guestload-socket-scan", daemon=True
            )
            self._watcher.start()
        log.info(
            "watching libvirt sockets",
            extra={"glob": self._socket_glob, "sockets": len(self._members)},
        )

    def close(self) -> None:
        """Stop re-scanning and close every socket's connection (once its stuck calls end)."""
        self._stop.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=self._rescan_interval + self._deadline + 5)
        self._connected = False
        with self._lock:
            members = list(self._members.values())
            self._members.clear()
            self._routes.clear()
        for member in members:
            self._retire(member)

    def rescan(self) -> None:
        """Pick up new sockets and drop vanished ones; announce their domains as events."""
        if not self._connected:
            return
        with self._scan_lock:
            self._rescan_locked()

    def list_running_domains(self) -> Sequence[DomainInventory]:
        """Every running domain on every socket; a failing or hung socket only loses its own.

        The listing waits for no socket longer than the deadline.
        """
        if not self._connected:
            raise SourceUnavailableError(f"not watching libvirt sockets glob={self._socket_glob}")
        with self._scan_lock:
            self._find_overdue_queries()
            self._rescan_locked()
            with self._lock:
                members = [self._members[path] for path in sorted(self._members)]
            listings = self._list_members(members)
        merged: list[DomainInventory] = []
        routes: dict[str, _Member] = {}
        for member in members:
            for inventory in listings.get(member.socket_path, ()):
                if inventory.uuid in routes:
                    log.debug(
                        "domain listed on two sockets",
                        extra={
                            "uuid": inventory.uuid,
                            "kept": routes[inventory.uuid].socket_path,
                            "skipped": member.socket_path,
                        },
                    )
                    continue
                routes[inventory.uuid] = member
                merged.append(inventory)
        with self._lock:
            self._routes = {
                uuid: member
                for uuid, member in routes.items()
                if self._members.get(member.socket_path) is member
            }
        return merged

    def query_guest(
        self, uuid: str, queries: Sequence[GuestQuery], timeout_seconds: float
    ) -> Mapping[str, QueryReading]:
        """Ask the socket that listed the domain, on this thread; a domain no socket lists is
        gone.

        The call may take ``timeout_seconds`` per query plus the deadline; one still running
        past that makes the socket hung until it ends, and its answer comes back as a timeout.
        """
        limit = timeout_seconds * len(queries) + self._deadline
        self._find_overdue_queries()
        with self._lock:
            member = self._routes.get(uuid)
            running = None
            if member is not None and member.stuck_calls == 0:
                running = _Query(member=member, deadline=self._clock() + limit)
                self._queries.add(running)
        if member is None:
            gone = QueryReading(state=AgentState.GONE, detail="domain not found on any socket")
            return dict.fromkeys((query.name for query in queries), gone)
        if running is None:
            return _all(queries, AgentState.ERROR, "libvirt socket not answering")
        error: Exception | None = None
        readings: Mapping[str, QueryReading] = {}
        try:
            readings = member.source.query_guest(uuid, queries, timeout_seconds)
        except Exception as raised:  # noqa: BLE001 - raised below unless the answer came late
            error = raised
        finally:
            late = self._query_ended(running)
        if late:
            return _all(queries, AgentState.TIMEOUT, f"libvirt socket silent for {limit:g}s")
        if error is not None:
            raise error
        return readings

    def set_event_listener(self, listener: EventListener | None) -> None:
        """Forward every socket's domain events (and sockets appearing or vanishing)."""
        self._listener = listener

    def facts(self) -> SourceFacts:
        """The connected sockets' versions and load methods (distinct values joined by ``,``)
        and the URI template with the glob in place of the socket."""
        with self._lock:
            members = [m for m in self._members.values() if m.connected]
        known = [member.source.facts() for member in members]

        def joined(values: Iterable[str]) -> str:
            return ",".join(sorted(set(values) - {UNKNOWN})) or UNKNOWN

        return SourceFacts(
            library_version=joined(facts.library_version for facts in known),
            daemon_version=joined(facts.daemon_version for facts in known),
            load_method=joined(facts.load_method for facts in known),
            uri=socket_uri(self._uri_template, self._socket_glob),
        )

    def unreachable_advice(self, error: str) -> str:
        """Nothing: watching a glob never fails as a whole; each socket's failures are logged."""
        del error
        return ""

    # -- internals ----------------------------------------------------------------------

    def _rescan_locked(self) -> None:
        self._last_scan = self._clock()
        found = set(self._find_sockets(self._socket_glob))
        with self._lock:
            known = set(self._members)
            vanished = [self._members.pop(path) for path in sorted(known - found)]
            for member in vanished:
                for uuid in member.uuids:
                    if self._routes.get(uuid) is member:
                        del self._routes[uuid]
        for member in vanished:
            log.info("libvirt socket gone", extra={"socket": member.socket_path})
            self._retire(member)
            self._announce(EventKind.STOPPED, member.uuids)
        added: list[_Member] = []
        for path in sorted(found - known):
            try:
                address = _SocketAddress(path)
            except OSError as error:  # vanished between the glob and the open
                log.debug("libvirt socket unusable", extra={"socket": path, "err": str(error)})
                continue
            member = _Member(
                socket_path=path,
                address=address,
                source=self._make_source(socket_uri(self._uri_template, address.path)),
            )
            member.source.set_event_listener(self._forward)
            with self._lock:
                self._members[path] = member
            log.info("libvirt socket found", extra={"socket": path})
            added.append(member)
        # Together: sockets that hang at once (a node starting beside frozen launchers) cost
        # the scan one deadline, not one each.
        listings = self._list_members(added) if added else {}
        for member in added:
            listing = listings.get(member.socket_path)
            if listing is not None:
                self._announce(EventKind.STARTED, [d.uuid for d in listing])

    def _list_members(self, members: Sequence[_Member]) -> dict[str, Sequence[DomainInventory]]:
        """Each member's listing; members that failed or missed the deadline
        (or are still stuck, or wait for their reconnect) are left out.

        A call's deadline runs from its start: a call abandoned at its deadline frees its
        worker's place, so calls queued behind hung ones still start and get their full time.
        """
        now = self._clock()
        started: dict[str, float] = {}
        asked: dict[str, _Member] = {}
        calls: list[Callable[[], _Reply]] = []
        for member in members:
            if member.stuck_calls or (not member.connected and now < member.next_attempt):
                continue
            asked[member.socket_path] = member
            calls.append(
                functools.partial(
                    self._timed,
                    started,
                    member.socket_path,
                    functools.partial(
                        _connect_and_list, member.source, connect=not member.connected
                    ),
                )
            )
        # Connected sockets are listed one after another while they answer quickly; a
        # socket to connect (new, or back from a failure) may hang: then all at once.
        wide = any(not member.connected for member in asked.values())
        futures = self._calls.submit_all(calls, wide=wide)
        waiting = {
            path: (member, future)
            for (path, member), future in zip(asked.items(), futures, strict=True)
        }
        submitted = dict(waiting)
        give_up = now + LISTING_DEADLINES * self._deadline
        while waiting:
            now = self._clock()
            for path, (member, future) in list(waiting.items()):
                began = started.get(path)
                if future.done():
                    del waiting[path]
                elif now >= give_up or (began is not None and now - began >= self._deadline):
                    self._hung(member, future, self._calls)
                    del waiting[path]
            if waiting:
                self._calls.widen()
                due = [started[path] + self._deadline for path in waiting if path in started]
                next_check = min([*due, now + LISTING_CHECK_SECONDS, give_up])
                self._calls.wait([future for _, future in waiting.values()], next_check - now)
        listings: dict[str, Sequence[DomainInventory]] = {}
        for path, (member, future) in submitted.items():
            if not future.done() or future.cancelled():
                continue
            inventory = self._apply(member, future.result())
            if inventory is not None:
                listings[path] = inventory
        return listings

    def _timed(self, started: dict[str, float], path: str, call: Callable[[], _Reply]) -> _Reply:
        """Runs on a pool thread: note when the call started, then make it."""
        started[path] = self._clock()
        return call()

    def _apply(self, member: _Member, reply: _Reply) -> Sequence[DomainInventory] | None:
        """Take in one member's reply; its listing, or None when it failed."""
        now = self._clock()
        if reply.inventory is None:
            failed_listing = reply.connected or member.connected
            if failed_listing:
                log.warning(
                    "libvirt socket failed",
                    extra={"socket": member.socket_path, "err": reply.error},
                )
                member.source.close()
            elif member.reconnect_delay == 0.0:
                log.warning(
                    "cannot connect to libvirt socket",
                    extra={"socket": member.socket_path, "err": reply.error},
                )
            with self._lock:
                member.connected = False
                member.uuids = frozenset()
                member.reconnect_delay = (
                    RECONNECT_INITIAL_SECONDS
                    if failed_listing
                    else min(
                        max(member.reconnect_delay * 2, RECONNECT_INITIAL_SECONDS),
                        RECONNECT_MAX_SECONDS,
                    )
                )
                member.next_attempt = now + member.reconnect_delay
            return None
        if reply.connected and member.reconnect_delay:
            log.info("libvirt socket reconnected", extra={"socket": member.socket_path})
        inventory = reply.inventory
        with self._lock:
            member.connected = True
            member.reconnect_delay, member.next_attempt = 0.0, 0.0
            member.uuids = frozenset(d.uuid for d in inventory)
            if len(inventory) == 1:
                member.named_after = inventory[0]
            elif inventory:
                member.named_after = None
        return inventory

    def _hung(self, member: _Member, future: Future[Any], calls: Calls) -> None:
        """A call to the member missed its deadline: the member is down until the call ends,
        then reconnects."""
        with self._lock:
            first = _stick_locked(member)
        if first:
            _log_not_answering(member, self._deadline)
        calls.abandon(future)
        future.add_done_callback(lambda _: self._unstuck(member))

    def _find_overdue_queries(self) -> None:
        """Count every guest query past its deadline as a stuck call of its member."""
        now = self._clock()
        newly_hung: list[_Member] = []
        with self._lock:
            for query in self._queries:
                if not query.overdue and now >= query.deadline:
                    query.overdue = True
                    if _stick_locked(query.member):
                        newly_hung.append(query.member)
        for member in newly_hung:
            _log_not_answering(member, self._deadline)

    def _query_ended(self, query: _Query) -> bool:
        """A guest query returned or raised: whether it came past its deadline.

        One that did makes its member hung (if not found so already) and then unstuck.
        """
        now = self._clock()
        with self._lock:
            self._queries.discard(query)
            late = query.overdue or now >= query.deadline
            first = late and not query.overdue and _stick_locked(query.member)
        if first:
            _log_not_answering(query.member, self._deadline)
        if late:
            self._unstuck(query.member)
        return late

    def _unstuck(self, member: _Member) -> None:
        """A stuck call ended (on the thread that ran it): reconnect at the next listing."""
        with self._lock:
            member.stuck_calls -= 1
            idle = member.stuck_calls == 0
            if idle:
                member.reconnect_delay = RECONNECT_INITIAL_SECONDS
                member.next_attempt = 0.0
            release = idle and member.retired
        if release:
            _release(member)

    def _retire(self, member: _Member) -> None:
        """Release the member now, or when its stuck calls end."""
        with self._lock:
            member.retired = True
            busy = member.stuck_calls > 0
        if not busy:
            _release(member)

    def _forward(self, event: DomainEvent) -> None:
        listener = self._listener
        if listener is not None:
            listener(event)

    def _announce(self, kind: EventKind, uuids: Iterable[str]) -> None:
        for uuid in sorted(uuids):
            self._forward(DomainEvent(kind=kind, uuid=uuid))

    def _watch(self) -> None:
        """Re-scan when no listing has for ``rescan_interval`` (each listing scans too)."""
        while not self._stop.wait(
            max(0.0, self._last_scan + self._rescan_interval - self._clock())
        ):
            if self._clock() - self._last_scan < self._rescan_interval:
                continue
            try:
                self.rescan()
            except Exception:
                log.exception(
                    "re-scanning libvirt sockets failed", extra={"glob": self._socket_glob}
                )


def _stick_locked(member: _Member) -> bool:
    """Count one more stuck call of the member, which is down until none is left (lock
    held); whether it is the first."""
    member.stuck_calls += 1
    member.connected = False
    member.uuids = frozenset()
    return member.stuck_calls == 1


def _log_not_answering(member: _Member, deadline: float) -> None:
    log.warning(
        "libvirt socket not answering",
        extra={"socket": member.socket_path, "deadline_seconds": deadline},
    )


def _all(queries: Sequence[GuestQuery], state: AgentState, detail: str) -> dict[str, QueryReading]:
    reading = QueryReading(state=state, detail=detail)
    return dict.fromkeys((query.name for query in queries), reading)


def _release(member: _Member) -> None:
    member.source.set_event_listener(None)
    member.source.close()
    member.address.release()
