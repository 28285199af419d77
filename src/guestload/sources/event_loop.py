"""libvirt's event-loop contract, implemented on one epoll thread.

libvirt needs an event loop for domain events, keepalives and close callbacks, and it calls
the loop's ``update_handle`` twice around every RPC call (to stop and restart watching the
connection's socket). libvirt's default loop runs on GLib: each of those updates wakes its
thread, which in Python must take the GIL to return to its loop: about as much client CPU
as the call itself (docs/performance.md, "Poll cost with real VMs").

Here a watch is an epoll registration, changed in place from the calling thread: epoll takes
interest changes from any thread while another waits in it, so an update wakes nobody. The
loop thread wakes only for what it must do: a socket with data, a timer that is due, a timer
moved earlier, or a removed callback's free function to run.

Watches are edge-triggered and re-armed by every ``update_handle``. With several calls in
flight on one connection, the thread that owns the socket for the moment (libvirt's "buck")
reads it itself, and the watch is back on meanwhile; libvirt's callback then returns at once
without reading. Level-triggered, the loop would spin on that socket until the owner had
read it; edge-triggered, it wakes once per arrival. Nothing is
left unread: libvirt's client reads one message per callback and then updates its watch, and
the owner updates it when done; each update re-arms, and epoll reports data still waiting.

Callbacks are the ones libvirt hands over; freeing goes through the function given
(libvirt's ``virEventInvokeFreeCallback``), so this module does not import libvirt.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

READABLE = 1
WRITABLE = 2
ERROR = 4
HANGUP = 8
"""libvirt's ``VIR_EVENT_HANDLE_*`` bits."""

HandleCallback = Callable[[int, int, int, object], object]
"""A handle's libvirt callback: (watch, fd, events, opaque)."""
TimeoutCallback = Callable[[int, object], object]
"""A timer's libvirt callback: (timer, opaque)."""
InvokeFree = Callable[[object], object]
"""Frees a removed handle's or timer's opaque data."""


def epoll_mask(events: int) -> int:
    """The epoll interest for libvirt's event bits (errors and hang-ups are always reported)."""
    mask = 0
    if events & READABLE:
        mask |= select.EPOLLIN
    if events & WRITABLE:
        mask |= select.EPOLLOUT
    return mask


def libvirt_events(mask: int) -> int:
    """libvirt's event bits for what epoll reported."""
    events = 0
    if mask & select.EPOLLIN:
        events |= READABLE
    if mask & select.EPOLLOUT:
        events |= WRITABLE
    if mask & select.EPOLLERR:
        events |= ERROR
    if mask & select.EPOLLHUP:
        events |= HANGUP
    return events


_EPOLL_INTEREST = tuple(epoll_mask(events) for events in range((READABLE | WRITABLE) + 1))
"""epoll interest by libvirt's readable and writable bits."""


@dataclass(slots=True)
class _Handle:
    fd: int
    events: int
    callback: HandleCallback
    opaque: object


@dataclass(slots=True)
class _Timer:
    interval_ms: int
    due: float | None
    """Monotonic time of the next call; None while disabled (interval -1)."""
    callback: TimeoutCallback
    opaque: object


class EventLoop:
    """An implementation of libvirt's event loop (``virEventRegisterImpl``'s six functions).

    Register :meth:`add_handle` … :meth:`remove_timeout` with libvirt, then :meth:`start`.
    """

    def __init__(
        self,
        *,
        invoke_free: InvokeFree,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._invoke_free = invoke_free
        self._clock = clock
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._handles: dict[int, _Handle] = {}
        self._watches_by_fd: dict[int, set[int]] = {}
        self._timers: dict[int, _Timer] = {}
        self._registered: dict[int, int] = {}
        """epoll interest per descriptor, as registered."""
        self._to_free: list[object] = []
        self._deadline: float | None = None
        """When the loop thread wakes at the latest; None while it waits for I/O only."""
        self._epoll = select.epoll()
        self._wakeup_read, self._wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wakeup_read, select.EPOLLIN)
        self.iterations = 0
        """Times the loop thread woke up (for tests and benchmarks)."""

    # -- libvirt's contract ----------------------------------------------------------------

    def add_handle(self, fd: int, events: int, callback: HandleCallback, opaque: object) -> int:
        """Watch ``fd`` for ``events``; returns the watch id."""
        with self._lock:
            watch = next(self._ids)
            self._handles[watch] = _Handle(fd=fd, events=events, callback=callback, opaque=opaque)
            self._watches_by_fd.setdefault(fd, set()).add(watch)
            self._update_interest(fd)
        return watch

    def update_handle(self, watch: int, events: int) -> None:
        """Change what a watch waits for (0 stops it) and re-arm it, without waking the loop.

        Re-arming reports data already waiting once more (see the module's docstring). libvirt
        calls this twice around every RPC call, so a watch alone on its descriptor (libvirt's
        one per connection) is changed with one ``modify`` and no lock: libvirt updates and
        removes a watch only under its own lock for that connection, and each step here is
        atomic in the interpreter.
        """
        handle = self._handles.get(watch)
        if handle is None:
            return
        handle.events = events
        fd = handle.fd
        if len(self._watches_by_fd.get(fd, ())) == 1 and fd in self._registered:
            mask = select.EPOLLET | _EPOLL_INTEREST[events & (READABLE | WRITABLE)]
            try:
                self._epoll.modify(fd, mask)
            except OSError:
                pass  # closed, or its number reused: the general path below sorts it out
            else:
                self._registered[fd] = mask
                return
        with self._lock:
            if self._handles.get(watch) is handle:
                self._update_interest(fd, rearm=True)

    def remove_handle(self, watch: int) -> int:
        """Stop and forget a watch; its opaque data is freed by the loop thread."""
        with self._lock:
            handle = self._handles.pop(watch, None)
            if handle is None:
                return -1
            watches = self._watches_by_fd.get(handle.fd, set())
            watches.discard(watch)
            if not watches:
                self._watches_by_fd.pop(handle.fd, None)
            self._update_interest(handle.fd)
            self._to_free.append(handle.opaque)
        self._wake()
        return 0

    def add_timeout(self, interval_ms: int, callback: TimeoutCallback, opaque: object) -> int:
        """A timer called every ``interval_ms`` (0: every iteration, -1: disabled)."""
        with self._lock:
            timer = next(self._ids)
            self._timers[timer] = _Timer(
                interval_ms=interval_ms,
                due=self._due(interval_ms),
                callback=callback,
                opaque=opaque,
            )
            wake = self._sooner_than_deadline(self._timers[timer].due)
        if wake:
            self._wake()
        return timer

    def update_timeout(self, timer: int, interval_ms: int) -> None:
        """Restart a timer with a new interval; wakes the loop only if it is due sooner."""
        with self._lock:
            entry = self._timers.get(timer)
            if entry is None:
                return
            entry.interval_ms = interval_ms
            entry.due = self._due(interval_ms)
            wake = self._sooner_than_deadline(entry.due)
        if wake:
            self._wake()

    def remove_timeout(self, timer: int) -> int:
        """Stop and forget a timer; its opaque data is freed by the loop thread."""
        with self._lock:
            entry = self._timers.pop(timer, None)
            if entry is None:
                return -1
            self._to_free.append(entry.opaque)
        self._wake()
        return 0

    # -- running ---------------------------------------------------------------------------

    def start(self, *, name: str = "libvirt-events") -> threading.Thread:
        """Run the loop on a daemon thread."""
        thread = threading.Thread(target=self.run_forever, name=name, daemon=True)
        thread.start()
        return thread

    def run_forever(self) -> None:
        """Iterate until the process ends; an error in one iteration is logged, not fatal."""
        while True:
            try:
                self.run_once()
            except Exception:
                log.exception("libvirt event loop iteration failed")
                time.sleep(1.0)

    def run_once(self, *, max_wait: float | None = None) -> None:
        """Wait for I/O or the next timer (at most ``max_wait`` seconds), then dispatch."""
        with self._lock:
            to_free, self._to_free = self._to_free, []
            self._deadline = min(
                (entry.due for entry in self._timers.values() if entry.due is not None),
                default=None,
            )
            deadline = self._deadline
        for opaque in to_free:
            self._invoke_free(opaque)
        wait = None if deadline is None else max(0.0, deadline - self._clock())
        if max_wait is not None:
            wait = max_wait if wait is None else min(wait, max_wait)
        ready = self._epoll.poll(-1 if wait is None else wait)
        self.iterations += 1
        for fd, mask in ready:
            if fd == self._wakeup_read:
                self._drain_wakeups()
                continue
            self._dispatch_fd(fd, libvirt_events(mask))
        self._dispatch_timers()

    # -- internals -------------------------------------------------------------------------

    def _dispatch_fd(self, fd: int, events: int) -> None:
        with self._lock:
            due = [
                (watch, handle)
                for watch in self._watches_by_fd.get(fd, ())
                if (handle := self._handles.get(watch)) is not None and handle.events
            ]
        for watch, handle in due:
            happened = events & (handle.events | ERROR | HANGUP)
            if happened:
                handle.callback(watch, fd, happened, handle.opaque)

    def _dispatch_timers(self) -> None:
        now = self._clock()
        with self._lock:
            due = [
                (timer, entry)
                for timer, entry in self._timers.items()
                if entry.due is not None and entry.due <= now
            ]
            for _timer, entry in due:
                entry.due = self._due(entry.interval_ms)
        for timer, entry in due:
            # A timer removed by an earlier callback of this round is not called.
            if timer in self._timers:
                entry.callback(timer, entry.opaque)

    def _update_interest(self, fd: int, *, rearm: bool = False) -> None:
        """Make epoll's interest in ``fd`` the union of its watches' (lock held): one syscall.

        A watched fd stays registered while its watches want nothing, with an empty
        edge-triggered mask: epoll then reports its errors and hang-ups once (the loop calls
        nobody for them until a watch wants events again, and that update reports them anew),
        and stopping and restarting a watch, as libvirt does around every call, costs one
        ``modify`` each rather than an unregister and a register. An fd with no watches left
        is unregistered.
        """
        watches = self._watches_by_fd.get(fd)
        registered = self._registered.get(fd)
        if not watches:
            if registered is not None:
                del self._registered[fd]
                with contextlib.suppress(OSError):  # closed already: epoll dropped it
                    self._epoll.unregister(fd)
            return
        mask = select.EPOLLET
        for watch in watches:
            mask |= _EPOLL_INTEREST[self._handles[watch].events & (READABLE | WRITABLE)]
        if mask == registered and not rearm:
            return
        try:
            if registered is None:
                try:
                    self._epoll.register(fd, mask)
                except FileExistsError:
                    self._epoll.modify(fd, mask)
            else:
                try:
                    self._epoll.modify(fd, mask)
                except FileNotFoundError:  # closed while registered, its number reused
                    self._epoll.register(fd, mask)
            self._registered[fd] = mask
        except OSError as error:
            # Closed before its watch was removed: epoll dropped it already.
            self._registered.pop(fd, None)
            log.debug("libvirt descriptor not watched", extra={"fd": fd, "err": str(error)})

    def _due(self, interval_ms: int) -> float | None:
        return None if interval_ms < 0 else self._clock() + interval_ms / 1000

    def _sooner_than_deadline(self, due: float | None) -> bool:
        return due is not None and (self._deadline is None or due < self._deadline)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wakeup_write, b"\0")

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wakeup_read, 4096):
                pass
