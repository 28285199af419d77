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

The limits are in :mod:`guestload.web.limits`, TLS handshakes in
:mod:`guestload.web.handshake`, the request line and header fields are parsed in
:mod:`guestload.web.request`, which reply a path gets in :mod:`guestload.web.routes`;
every reply, refusals and the answers to malformed requests included, is sent by one method
from a :class:`~guestload.web.replies.Reply`, in one write.

One request per connection; only GET and HEAD; oversized request lines (414) and headers
(431), garbage (400) and other methods (405) are answered, never a crash. TLS, basic
authentication and extra response headers come from ``--web.config.file``
(:mod:`guestload.web.config`), taken afresh for every connection so a reload applies to the
next one.
"""

from __future__ import annotations

import _thread
import contextlib
import io
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from guestload import __version__
from guestload.settings import ListenAddress
from guestload.web.handshake import start_tls
from guestload.web.limits import (
    DEFAULT_MAX_CONNECTIONS,
    SLOT_WAIT_SECONDS,
    DeadlineReader,
    DeadlineWriter,
    FairSlots,
    OpenConnections,
    listen_backlog,
)
from guestload.web.refusals import Refusal, RefusalLog
from guestload.web.reload import PLAIN_HTTP, WebSecurity
from guestload.web.replies import (
    BUSY,
    METHOD_NOT_ALLOWED,
    UNAUTHORIZED,
    Reply,
    head_bytes,
    header_fields,
)
from guestload.web.request import (
    BadRequestError,
    RequestHeaders,
    parse_header_lines,
    parse_request_line,
    read_header_lines,
)
from guestload.web.routes import WebApp, route

__all__ = ["ExporterServer", "WebApp"]

log = logging.getLogger(__name__)

_ALLOWED_METHODS = ("GET", "HEAD")
_JOINED_MAX_BYTES = 256 * 1024
"""Answers up to this size are joined into one write; larger bodies are not copied."""


class _Handler(BaseHTTPRequestHandler):
    server: ExporterServer
    server_version = f"guestload/{__version__}"
    security: WebSecurity = PLAIN_HTTP
    raw_requestline: bytes
    fields: RequestHeaders = RequestHeaders()
    """The request's header fields (``http.server``'s ``headers``, an email message, is not
    made)."""
    # Answer even a garbled request line with a status line, never an HTTP/0.9 bare body.
    default_request_version = "HTTP/1.0"

    def version_string(self) -> str:
        return self.server_version  # no Python version for the curious

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # replaced by a reader that enforces the request deadline
        self.security = self.server.connection_security()
        deadline = self.server.connection_deadline()
        self.rfile = io.BufferedReader(
            DeadlineReader(self.connection, deadline, self._refused(Refusal.REQUEST_TIMEOUT))
        )

    def _refused(self, refusal: Refusal) -> Callable[[], None]:
        client = str(self.client_address[0])
        return lambda: self.server.refusals.record(refusal, client=client)

    def parse_request(self) -> bool:
        """The request line and header fields (:mod:`guestload.web.request`), then method,
        password and slot; False when a refusal was sent."""
        self.command = ""  # none read yet
        self.request_version = self.default_request_version
        self.close_connection = True  # one request per connection
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        try:
            line = parse_request_line(
                self.requestline, default_version=self.default_request_version
            )
            if line is None:
                return False
            self.command, self.path, self.request_version = line.method, line.target, line.version
            self.fields = parse_header_lines(read_header_lines(self.rfile.readline))
        except BadRequestError as refused:
            self.send_error(refused.status, refused.reason)
            return False
        # The request is in; the client has the request timeout again to take the answer.
        self.wfile = DeadlineWriter(
            self.connection,
            time.monotonic() + self.server.request_timeout,
            self._refused(Refusal.ANSWER_TIMEOUT),
        )
        if self.command not in _ALLOWED_METHODS:
            self._send(METHOD_NOT_ALLOWED)
            return False
        authenticator = self.security.authenticator
        if authenticator is not None and not authenticator.check(
            self.fields.get("Authorization") or None, deadline=self.server.connection_deadline()
        ):
            self._send(UNAUTHORIZED)
            return False
        if not self.server.take_slot():
            self._send(BUSY)
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A request refused before it was read whole (400, 414, 431, 505): its own reply."""
        self.log_error("code %d, message %s", code, message)
        status = HTTPStatus(code)
        reason = message or status.phrase
        body = f"{code} {reason}\n".encode()
        self._send(Reply(status=status, body=(body,), close=True, reason=reason))

    def do_GET(self) -> None:
        self._send(route(self.server.app, self.path, self.fields))

    def do_HEAD(self) -> None:
        self.do_GET()

    def _send(self, reply: Reply) -> None:
        """Send ``reply`` (its body unless the request is a HEAD): every answer goes here.

        The status line, header fields and body go out in one write (one ``sendall``) unless
        the body is large: then it is sent as it is, not copied after the header.
        """
        # The answer is made: its slot is free for the next request while this client reads.
        self.server.release_slot()
        self.log_request(reply.status.value)
        fields = (
            ("Server", self.version_string()),
            ("Date", self.date_time_string()),
            *header_fields(reply),
            *self.security.headers,
        )
        head = head_bytes(self.protocol_version, reply, fields)
        if reply.close:
            self.close_connection = True
        body = reply.body if self.command != "HEAD" else ()
        if len(head) + reply.length <= _JOINED_MAX_BYTES:
            self.wfile.write(b"".join((head, *body)))
            return
        self.wfile.write(head)
        for part in body:
            self.wfile.write(part)

    def log_message(self, format: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):
            line = format % args
            log.debug("http request", extra={"client": self.client_address[0], "line": line})


@dataclass(slots=True)
class _Connection:
    security: WebSecurity
    deadline: float
    client: str
    socket: socket.socket
    has_slot: bool = False


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
        self._open: OpenConnections[_Connection] = OpenConnections(max_connections)
        self._local = threading.local()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._wake_reader, self._wake_writer = os.pipe()
        os.set_blocking(self._wake_reader, False)
        os.set_blocking(self._wake_writer, False)  # a full pipe already wakes the loop
        if ":" in address.host:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((address.host, address.port), _Handler)
        except BaseException:
            self._close_wake_pipe()
            raise

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Accept connections until :meth:`shutdown`.

        The loop sleeps until a connection comes or :meth:`shutdown` writes to its wake pipe:
        an idle exporter's accept thread never wakes (``socketserver`` wakes it every
        ``poll_interval`` to look for a shutdown request). ``poll_interval`` bounds each sleep
        all the same when given.
        """
        self._stopped.clear()
        try:
            with selectors.PollSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                selector.register(self._wake_reader, selectors.EVENT_READ)
                while not self._stopping.is_set():
                    ready = {key.fd for key, _events in selector.select(poll_interval)}
                    if self._stopping.is_set():
                        break
                    if self._wake_reader in ready:
                        self._drain_wake_pipe()
                    if self.fileno() in ready:
                        # socketserver's own accept step, as its serve_forever takes it.
                        self._handle_request_noblock()  # type: ignore[attr-defined]
                    self.service_actions()
        finally:
            self._drain_wake_pipe()
            self._stopping.clear()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait until it returned (call it from another thread,
        while the loop runs)."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_writer, b"\0")
        self._stopped.wait()

    def server_close(self) -> None:
        super().server_close()
        self._close_wake_pipe()

    def _drain_wake_pipe(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_reader, 64):
                pass

    def _close_wake_pipe(self) -> None:
        for fd in (self._wake_reader, self._wake_writer):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_reader = self._wake_writer = -1

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
        for old in self._open.add(state):
            self.refusals.record(Refusal.EVICTED, client=old.client)
            with contextlib.suppress(OSError):
                old.socket.shutdown(socket.SHUT_RDWR)  # wakes its thread, which then ends
        try:
            # Not threading.Thread.start(): it waits until the new thread runs, which under a
            # flood of busy threads makes every accept queue for the GIL behind them.
            _thread.start_new_thread(self.process_request_thread, (request, client_address, state))
        except Exception:
            self._open.forget(state)
            self.shutdown_request(request)
            raise

    def process_request_thread(  # type: ignore[override]
        self, request: Any, client_address: Any, state: _Connection
    ) -> None:
        connection = request
        try:
            self._local.connection = state
            ready = True
            if state.security.ssl_context is not None:
                connection, ready = start_tls(
                    request,
                    state.security,
                    deadline=state.deadline,
                    client=state.client,
                    refusals=self.refusals,
                )
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
            self._open.forget(state)
            self.shutdown_request(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("request failed", extra={"client": str(client_address[0])}, exc_info=True)
