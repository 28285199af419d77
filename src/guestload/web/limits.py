"""Limits that keep slow, idle or hostile clients from starving a scraper.

Request slots served in arrival order (:class:`FairSlots`), a cap on open connections that
closes the oldest (:class:`OpenConnections`), deadlines on reading a request and on the
client taking its answer (:class:`DeadlineReader`, :class:`DeadlineWriter`), and a listen
backlog as deep as the kernel allows (:func:`listen_backlog`).
"""

from __future__ import annotations

import contextlib
import io
import socket
import ssl
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

#: How long a complete request waits for a free slot before it gets 503 (at most half the
#: request timeout, so the 503 itself is still in time).
SLOT_WAIT_SECONDS: Final = 1.0
#: Connections open at once; a new one beyond this closes the oldest.
DEFAULT_MAX_CONNECTIONS: Final = 512
_ABORT_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets


def listen_backlog() -> int:
    """The kernel's cap on a listen queue (``somaxconn``), as Go's net package uses."""
    try:
        return max(int(Path("/proc/sys/net/core/somaxconn").read_text()), socket.SOMAXCONN)
    except (OSError, ValueError):
        return socket.SOMAXCONN


class FairSlots:
    """A counting semaphore that serves waiters in arrival order.

    ``threading.Semaphore`` wakes an arbitrary waiter, so under a steady flood of requests one
    unlucky request can wait out its whole timeout; here a request waits only for those that
    came before it.
    """

    def __init__(self, count: int) -> None:
        self._lock = threading.Lock()
        self._free = count
        self._waiters: deque[threading.Event] = deque()

    def acquire(self, *, timeout: float) -> bool:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
            turn = threading.Event()
            self._waiters.append(turn)
        if turn.wait(timeout):
            return True
        with self._lock:
            if turn.is_set():  # granted just as the wait ran out
                return True
            self._waiters.remove(turn)
            return False

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()  # the slot passes straight to the next waiter
            else:
                self._free += 1


_Connection = TypeVar("_Connection")


class OpenConnections(Generic[_Connection]):
    """The connections open now, oldest first; at most ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._open: OrderedDict[int, _Connection] = OrderedDict()

    def add(self, connection: _Connection) -> list[_Connection]:
        """Count ``connection`` in; the oldest ones it pushes over the limit, to be closed."""
        evicted: list[_Connection] = []
        with self._lock:
            while len(self._open) >= self._limit:
                evicted.append(self._open.popitem(last=False)[1])
            self._open[id(connection)] = connection
        return evicted

    def forget(self, connection: _Connection) -> None:
        """``connection`` is closed (or was evicted)."""
        with self._lock:
            self._open.pop(id(connection), None)


class _SocketDeadline:
    """A socket and the time by which an exchange on it must end."""

    def __init__(
        self, connection: socket.socket, deadline: float, on_timeout: Callable[[], None]
    ) -> None:
        super().__init__()
        self._connection = connection
        self._deadline = deadline
        self._on_timeout = on_timeout

    def _arm(self, late: str) -> None:
        """Give the socket's next call the time left; :class:`TimeoutError` (``late``) if none."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(late)
        self._connection.settimeout(remaining)


class DeadlineReader(_SocketDeadline, io.RawIOBase):
    """Reads from a socket until a deadline: the whole request must arrive in time."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            self._arm("request not received within the request timeout")
            return self._connection.recv_into(buffer)
        except TimeoutError:
            self._on_timeout()
            raise


class DeadlineWriter(_SocketDeadline, io.BufferedIOBase):
    """Writes to a socket until a deadline: a client must take the whole answer in time.

    On plain sockets one ``sendall`` per write: its timeout bounds the whole call, and a body
    of megabytes goes out without the thread taking the GIL back for every chunk. TLS
    sockets time each send on its own, so there the deadline is checked every chunk.
    """

    _TLS_CHUNK = 256 * 1024

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        chunk = self._TLS_CHUNK if isinstance(self._connection, ssl.SSLSocket) else len(view)
        try:
            for start in range(0, len(view), max(chunk, 1)):
                self._arm("answer not taken within the request timeout")
                self._connection.sendall(view[start : start + chunk])
        except TimeoutError:
            self._on_timeout()
            # Close with a reset: what the kernel still holds for this client is dropped
            # instead of trickling out to it for minutes after the thread is gone.
            with contextlib.suppress(OSError):
                self._connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT_ON_CLOSE)
            raise
        return len(view)
