"""The HTTP endpoint: /metrics from the cache, health and readiness, a landing page.

Hardening, so that slow, hostile or unauthenticated clients cannot starve a scraper:

- a thread per connection, and a listen backlog as deep as the kernel allows (``somaxconn``),
  so a burst of connects waits in the kernel's queue instead of being dropped;
- a connection costs a thread and nothing else until its whole request is in and its
  password checked: only then does it take one of ``max_requests`` slots (waiting up to a
  second for one, in arrival order, then 503), so clients that never finish a request, or
  send a wrong password, cannot take the slots scrapers need;
- a slot is held while the answer is made, not while the client reads it: the body is the
  cached bytes (shared, not copied) and a slow reader holds only its own thread, so 64
  busy scrapers reading megabytes do not queue a 65th behind them;
- each connection has ``request_timeout`` in total for its TLS handshake and for sending its
  request line and headers, and ``request_timeout`` again to take the answer;
- at most ``max_connections`` connections are open at once: a new one closes the oldest,
  so a flood of idle or slow connections loses its longest-open ones first and a scraper's
  fresh connection (answered in milliseconds) is never the one cut;
- refusals and cuts are logged at warn level, at most once per 10 s per kind
  (:mod:`guestload.web.refusals`).

One request per connection; only GET and HEAD; oversized request lines (414) and headers
(431), garbage (400) and other methods (405) are answered, never a crash. TLS, basic
authentication and extra response headers come from ``--web.config.file``
(:mod:`guestload.web.config`), taken afresh for every connection so a reload applies to the
next one.
"""

from __future__ import annotations

import _thread
import contextlib
import html
import io
import logging
import math
import re
import select
import socket
import ssl
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from guestload import __version__
from guestload.exposition.cache import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, MetricsCache
from guestload.settings import ListenAddress
from guestload.web.basic_auth import BASIC_AUTH_REALM
from guestload.web.refusals import Refusal, RefusalLog
from guestload.web.reload import PLAIN_HTTP, WebSecurity
from guestload.web.tls import peer_has_allowed_san

log = logging.getLogger(__name__)

_HTTP_TO_HTTPS_BODY = b"client sent an HTTP request to an HTTPS server\n"
_HTTP_TO_HTTPS_RESPONSE = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
) % (len(_HTTP_TO_HTTPS_BODY), _HTTP_TO_HTTPS_BODY)
#: How often the idle accept loop wakes to check for shutdown: bounds how long stopping waits
#: for it. Each wake-up costs ~60 µs of CPU; at 0.1 s that was 0.6 ms of CPU a second, more
#: than a poll of five VMs.
SHUTDOWN_POLL_SECONDS = 0.5
#: How long a complete request waits for a free slot before it gets 503 (at most half the
#: request timeout, so the 503 itself is still in time).
SLOT_WAIT_SECONDS = 1.0
#: Connections open at once; a new one beyond this closes the oldest.
DEFAULT_MAX_CONNECTIONS = 512
_TLS_HANDSHAKE_RECORD = 0x16
_ABORT_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets
_ALLOWED_METHODS = ("GET", "HEAD")


@dataclass(frozen=True, slots=True, kw_only=True)
class WebApp:
    """What the handler serves: the metrics cache and the poller's readiness."""

    cache: MetricsCache
    is_ready: Callable[[], bool]
    telemetry_path: str


def _accepts_openmetrics(accept: str) -> bool:
    return any(
        part.split(";")[0].strip() == "application/openmetrics-text" for part in accept.split(",")
    )


#: RFC 9110 section 12.4.2: a weight is 0 to 1 with at most three decimals.
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


def _coding_weight(element: str) -> tuple[str, float]:
    """A coding and its weight; a weight that is not a valid qvalue makes it unacceptable."""
    coding, *parameters = element.split(";")
    weight = 1.0
    for parameter in parameters:
        name, _, value = parameter.strip().partition("=")
        if name.strip().lower() == "q":
            value = value.strip()
            weight = float(value) if _QVALUE.fullmatch(value) else 0.0
    return coding.strip().lower(), weight


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` allows gzip, by RFC 9110 section 12.5.3.

    gzip (or its alias x-gzip) is acceptable when listed with a weight above 0, or, when not
    listed, when ``*`` is listed with a weight above 0. ``q=0`` means "not acceptable"; an
    invalid weight (``q=-1``, ``q=NaN``, ``q=2``) makes that element unacceptable too, so
    the answer falls back to no encoding, which is always allowed here.
    """
    gzip_weight: float | None = None
    any_weight: float | None = None
    for element in accept_encoding.split(","):
        coding, weight = _coding_weight(element)
        if coding in ("gzip", "x-gzip"):
            gzip_weight = max(weight, gzip_weight or 0.0)
        elif coding == "*":
            any_weight = weight
    if gzip_weight is not None:
        return gzip_weight > 0
    return any_weight is not None and any_weight > 0


class _DeadlineReader(io.RawIOBase):
    """Reads from a socket until a deadline: the whole request must arrive in time."""

    def __init__(
        self, connection: socket.socket, deadline: float, on_timeout: Callable[[], None]
    ) -> None:
        super().__init__()
        self._connection = connection
        self._deadline = deadline
        self._on_timeout = on_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("request not received within the request timeout")
            self._connection.settimeout(remaining)
            return self._connection.recv_into(buffer)
        except TimeoutError:
            self._on_timeout()
            raise


class _DeadlineWriter(io.BufferedIOBase):
    """Writes to a socket until a deadline: a client must take the whole answer in time.

    On plain sockets one ``sendall`` per write: its timeout bounds the whole call, and a body
    of megabytes goes out without the thread taking the GIL back for every chunk. TLS
    sockets time each send on its own, so there the deadline is checked every chunk.
    """

    _TLS_CHUNK = 256 * 1024

    def __init__(
        self, connection: socket.socket, deadline: float, on_timeout: Callable[[], None]
    ) -> None:
        super().__init__()
        self._connection = connection
        self._deadline = deadline
        self._on_timeout = on_timeout

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        chunk = self._TLS_CHUNK if isinstance(self._connection, ssl.SSLSocket) else len(view)
        try:
            for start in range(0, len(view), max(chunk, 1)):
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("answer not taken within the request timeout")
                self._connection.settimeout(remaining)
                self._connection.sendall(view[start : start + chunk])
        except TimeoutError:
            self._on_timeout()
            # Close with a reset: what the kernel still holds for this client is dropped
            # instead of trickling out to it for minutes after the thread is gone.
            with contextlib.suppress(OSError):
                self._connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT_ON_CLOSE)
            raise
        return len(view)


class _Handler(BaseHTTPRequestHandler):
    server: ExporterServer
    server_version = f"guestload/{__version__}"
    security: WebSecurity = PLAIN_HTTP
    # Answer even a garbled request line with a status line, never an HTTP/0.9 bare body.
    default_request_version = "HTTP/1.0"
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"

    def version_string(self) -> str:
        return self.server_version  # no Python version for the curious

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # replaced by a reader that enforces the request deadline
        self.security = self.server.connection_security()
        deadline = self.server.connection_deadline()
        self.rfile = io.BufferedReader(
            _DeadlineReader(self.connection, deadline, self._refused(Refusal.REQUEST_TIMEOUT))
        )

    def _refused(self, refusal: Refusal) -> Callable[[], None]:
        client = str(self.client_address[0])
        return lambda: self.server.refusals.record(refusal, client=client)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        # The request is in; the client has the request timeout again to take the answer.
        self.wfile = _DeadlineWriter(
            self.connection,
            time.monotonic() + self.server.request_timeout,
            self._refused(Refusal.ANSWER_TIMEOUT),
        )
        if self.command not in _ALLOWED_METHODS:
            self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
            self.send_header("Allow", ", ".join(_ALLOWED_METHODS))
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", "19")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"method not allowed\n")
            self.close_connection = True
            return False
        authenticator = self.security.authenticator
        if authenticator is not None and not authenticator.check(
            self.headers.get("Authorization"), deadline=self.server.connection_deadline()
        ):
            self._reply(
                HTTPStatus.UNAUTHORIZED,
                "text/plain; charset=utf-8",
                b"unauthorized\n",
                self.command != "HEAD",
                extra_headers={"WWW-Authenticate": f'Basic realm="{BASIC_AUTH_REALM}"'},
            )
            self.close_connection = True
            return False
        if not self.server.take_slot():
            self.send_response(HTTPStatus.SERVICE_UNAVAILABLE)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", "26")
            self.send_header("Retry-After", "1")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"too many concurrent calls\n")
            self.close_connection = True
            return False
        return True

    def end_headers(self) -> None:
        for name, value in self.security.headers:
            self.send_header(name, value)
        super().end_headers()

    def do_GET(self) -> None:
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:
        self._dispatch(send_body=False)

    def _dispatch(self, *, send_body: bool) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if path == app.telemetry_path:
            self._metrics(app, send_body=send_body)
        elif path == "/":
            self._reply(HTTPStatus.OK, "text/html; charset=utf-8", self._landing(app), send_body)
        elif path == "/healthz":
            self._reply(HTTPStatus.OK, "text/plain; charset=utf-8", b"ok\n", send_body)
        elif path == "/readyz":
            if app.is_ready():
                self._reply(HTTPStatus.OK, "text/plain; charset=utf-8", b"ready\n", send_body)
            else:
                body = b"not ready: libvirt not connected or no successful poll yet\n"
                self._reply(
                    HTTPStatus.SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", body, send_body
                )
        else:
            self._reply(
                HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n", send_body
            )

    def _metrics(self, app: WebApp, *, send_body: bool) -> None:
        openmetrics_format = _accepts_openmetrics(self.headers.get("Accept", ""))
        gzip = accepts_gzip(self.headers.get("Accept-Encoding", ""))
        body = app.cache.render_parts(openmetrics_format=openmetrics_format, gzip=gzip)
        content_type = OPENMETRICS_CONTENT_TYPE if openmetrics_format else TEXT_CONTENT_TYPE
        extra = {"Content-Encoding": "gzip"} if gzip else {}
        self._reply(HTTPStatus.OK, content_type, body, send_body, extra_headers=extra)

    @staticmethod
    def _landing(app: WebApp) -> bytes:
        path = html.escape(app.telemetry_path)
        return (
            "<!DOCTYPE html>\n<html><head><title>guestload</title></head><body>"
            f"<h1>guestload {html.escape(__version__)}</h1>"
            "<p>Guest load averages of libvirt VMs, read through the QEMU guest agent.</p>"
            f'<ul><li><a href="{path}">Metrics</a></li>'
            '<li><a href="/healthz">Health</a></li><li><a href="/readyz">Readiness</a></li></ul>'
            "</body></html>\n"
        ).encode()

    def _reply(
        self,
        status: HTTPStatus,
        content_type: str,
        body: bytes | tuple[bytes, ...],
        send_body: bool,
        *,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        # The answer is made: its slot is free for the next request while this client reads.
        self.server.release_slot()
        parts = (body,) if isinstance(body, bytes) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(sum(len(part) for part in parts)))
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            for part in parts:
                self.wfile.write(part)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http request", extra={"client": self.client_address[0], "line": format % args})


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


@dataclass(slots=True)
class _Connection:
    security: WebSecurity
    deadline: float
    client: str
    socket: socket.socket
    has_slot: bool = False


def listen_backlog() -> int:
    """The kernel's cap on a listen queue (``somaxconn``), as Go's net package uses."""
    try:
        return max(int(Path("/proc/sys/net/core/somaxconn").read_text()), socket.SOMAXCONN)
    except (OSError, ValueError):
        return socket.SOMAXCONN


class ExporterServer(ThreadingHTTPServer):
    """A threading HTTP(S) server that slow, idle or hostile clients cannot starve.

    ``security`` is asked for the current TLS context, authenticator and headers at each new
    connection, so a reloaded web configuration applies to the next connection.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: ListenAddress,
        *,
        app: WebApp,
        max_requests: int,
        request_timeout: float,
        security: Callable[[], WebSecurity] = lambda: PLAIN_HTTP,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        refusals: RefusalLog | None = None,
    ) -> None:
        self.app = app
        self.request_timeout = request_timeout
        self.refusals = refusals or RefusalLog()
        self.request_queue_size = listen_backlog()
        self._security = security
        self._slots = FairSlots(max_requests)
        self._max_connections = max_connections
        self._open: OrderedDict[int, _Connection] = OrderedDict()
        self._open_lock = threading.Lock()
        self._local = threading.local()
        if ":" in address.host:
            self.address_family = socket.AF_INET6
        super().__init__((address.host, address.port), _Handler)

    def serve_forever(self, poll_interval: float = SHUTDOWN_POLL_SECONDS) -> None:
        super().serve_forever(poll_interval)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def _current(self) -> _Connection | None:
        connection: _Connection | None = getattr(self._local, "connection", None)
        return connection

    def connection_security(self) -> WebSecurity:
        """The configuration the current connection (this thread's) is served with."""
        connection = self._current()
        return connection.security if connection is not None else self._security()

    def connection_deadline(self) -> float:
        """When the current connection must have sent its whole request."""
        connection = self._current()
        if connection is None:
            return time.monotonic() + self.request_timeout
        return connection.deadline

    @property
    def slot_wait_seconds(self) -> float:
        return min(SLOT_WAIT_SECONDS, self.request_timeout / 2)

    def take_slot(self) -> bool:
        """The current connection's request is complete: take a slot to answer it.

        False (and a refusal logged) when every slot stayed busy for ``SLOT_WAIT_SECONDS``.
        """
        connection = self._current()
        if not self._slots.acquire(timeout=self.slot_wait_seconds):
            self.refusals.record(
                Refusal.BUSY, client=connection.client if connection is not None else ""
            )
            return False
        if connection is not None:
            connection.has_slot = True
        else:  # a handler run outside process_request_thread: nothing would free it
            self._slots.release()
        return True

    def release_slot(self) -> None:
        """The current connection's answer is made: free its slot (if it holds one)."""
        connection = self._current()
        if connection is not None and connection.has_slot:
            connection.has_slot = False
            self._slots.release()

    def process_request(self, request: Any, client_address: Any) -> None:
        state = _Connection(
            security=self._security(),
            deadline=time.monotonic() + self.request_timeout,
            client=str(client_address[0]),
            socket=request,
        )
        evicted: list[_Connection] = []
        with self._open_lock:
            while len(self._open) >= self._max_connections:
                evicted.append(self._open.popitem(last=False)[1])
            self._open[id(state)] = state
        for old in evicted:
            self.refusals.record(Refusal.EVICTED, client=old.client)
            with contextlib.suppress(OSError):
                old.socket.shutdown(socket.SHUT_RDWR)  # wakes its thread, which then ends
        try:
            # Not threading.Thread.start(): it waits until the new thread runs, which under a
            # flood of busy threads makes every accept queue for the GIL behind them.
            _thread.start_new_thread(self.process_request_thread, (request, client_address, state))
        except Exception:
            self._forget(state)
            self.shutdown_request(request)
            raise

    def _forget(self, state: _Connection) -> None:
        with self._open_lock:
            self._open.pop(id(state), None)

    def process_request_thread(  # type: ignore[override]
        self, request: Any, client_address: Any, state: _Connection
    ) -> None:
        connection = request
        try:
            self._local.connection = state
            ready = True
            if state.security.ssl_context is not None:
                connection, ready = self._start_tls(request, state, client=state.client)
            if ready:
                self.finish_request(connection, client_address)
        except Exception as error:  # noqa: BLE001 - one bad connection must not stop the server
            log.debug(
                "connection failed",
                extra={"client": state.client, "err": f"{type(error).__name__}: {error}"},
            )
        finally:
            self.release_slot()  # before the client can see the close and come back
            self._local.connection = None
            self._forget(state)
            self.shutdown_request(connection)

    def _start_tls(
        self, raw: socket.socket, state: _Connection, *, client: str
    ) -> tuple[socket.socket, bool]:
        """The connection to use and close, and whether a TLS handshake finished in time.

        The caller closes the connection either way, after freeing its slot.
        """
        context = state.security.ssl_context
        assert context is not None
        if not self._looks_like_tls(raw, state.deadline, client=client):
            return raw, False
        tls = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        tls.setblocking(False)
        poller = select.poll()
        poller.register(tls, select.POLLIN)
        try:
            while True:
                remaining = state.deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("TLS handshake not finished within the request timeout")
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    poller.modify(tls, select.POLLIN)
                except ssl.SSLWantWriteError:
                    poller.modify(tls, select.POLLOUT)
                poller.poll(math.ceil(remaining * 1000))
            if state.security.client_allowed_sans and not peer_has_allowed_san(
                tls.getpeercert() or {}, state.security.client_allowed_sans
            ):
                raise ssl.SSLError("client certificate names none of client_allowed_sans")
        except OSError as error:
            if isinstance(error, TimeoutError):
                self.refusals.record(Refusal.REQUEST_TIMEOUT, client=client)
            log.debug("TLS handshake failed", extra={"client": client, "err": str(error)})
            return tls, False
        tls.setblocking(True)
        return tls, True

    def _looks_like_tls(self, raw: socket.socket, deadline: float, *, client: str) -> bool:
        """Peek at the first byte: a plain HTTP request to the TLS port gets a 400 and no more."""
        raw.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            first = raw.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            self.refusals.record(Refusal.REQUEST_TIMEOUT, client=client)
            return False
        except OSError:
            return False
        if not first:
            return False
        if first[0] != _TLS_HANDSHAKE_RECORD:
            with contextlib.suppress(OSError):
                raw.sendall(_HTTP_TO_HTTPS_RESPONSE)
            return False
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("request failed", extra={"client": str(client_address[0])}, exc_info=True)
