"""The HTTP endpoint: /metrics from the cache, health and readiness, a landing page.

Hardening: at most ``max_requests`` connections are served at once (more get 503 on plain
HTTP, or are closed on TLS); each connection has ``request_timeout`` in total for its TLS
handshake and for sending its request line and headers, and ``request_timeout`` again to take
the answer, so a slow client cannot hold a worker. One request per connection; only GET and
HEAD; oversized request lines (414) and headers (431), garbage (400) and other methods (405)
are answered, never a crash. TLS, basic authentication and extra response headers come from
``--web.config.file`` (:mod:`guestload.web.config`), taken afresh for every connection so a
reload applies to the next one.
"""

from __future__ import annotations

import contextlib
import html
import io
import logging
import math
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from guestload import __version__
from guestload.exposition.cache import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, MetricsCache
from guestload.settings import ListenAddress
from guestload.web.basic_auth import BASIC_AUTH_REALM
from guestload.web.reload import PLAIN_HTTP, WebSecurity
from guestload.web.tls import peer_has_allowed_san

log = logging.getLogger(__name__)

_BUSY_RESPONSE = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Retry-After: 1\r\nContent-Length: 25\r\nConnection: close\r\n\r\n"
    b"too many concurrent calls"
)
_HTTP_TO_HTTPS_BODY = b"client sent an HTTP request to an HTTPS server\n"
_HTTP_TO_HTTPS_RESPONSE = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
) % (len(_HTTP_TO_HTTPS_BODY), _HTTP_TO_HTTPS_BODY)
#: How often the accept loop checks for shutdown: bounds how long stopping waits for it.
SHUTDOWN_POLL_SECONDS = 0.1
_TLS_HANDSHAKE_RECORD = 0x16
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


def _accepts_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


class _DeadlineReader(io.RawIOBase):
    """Reads from a socket until a deadline: the whole request must arrive in time."""

    def __init__(self, connection: socket.socket, deadline: float) -> None:
        super().__init__()
        self._connection = connection
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request not received within the request timeout")
        self._connection.settimeout(remaining)
        return self._connection.recv_into(buffer)


class _DeadlineWriter(io.BufferedIOBase):
    """Writes to a socket until a deadline: a client must take the whole answer in time."""

    _CHUNK = 64 * 1024

    def __init__(self, connection: socket.socket, deadline: float) -> None:
        super().__init__()
        self._connection = connection
        self._deadline = deadline

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), self._CHUNK):
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("answer not taken within the request timeout")
            self._connection.settimeout(remaining)
            self._connection.sendall(view[start : start + self._CHUNK])
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
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        # The request is in; the client has the request timeout again to take the answer.
        self.wfile = _DeadlineWriter(
            self.connection, time.monotonic() + self.server.request_timeout
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
        authenticator = self.security.authenticator
        if authenticator is not None and not authenticator.check(self.headers.get("Authorization")):
            self._reply(
                HTTPStatus.UNAUTHORIZED,
                "text/plain; charset=utf-8",
                b"unauthorized\n",
                send_body,
                extra_headers={"WWW-Authenticate": f'Basic realm="{BASIC_AUTH_REALM}"'},
            )
            return
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
        gzip = _accepts_gzip(self.headers.get("Accept-Encoding", ""))
        body = app.cache.render(openmetrics_format=openmetrics_format, gzip=gzip)
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
        body: bytes,
        send_body: bool,
        *,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http request", extra={"client": self.client_address[0], "line": format % args})


@dataclass(slots=True)
class _Connection:
    security: WebSecurity
    deadline: float


class ExporterServer(ThreadingHTTPServer):
    """A threading HTTP(S) server with a bound on concurrent connections and on slow clients.

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
    ) -> None:
        self.app = app
        self.request_timeout = request_timeout
        self._security = security
        self._slots = threading.BoundedSemaphore(max_requests)
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

    def connection_security(self) -> WebSecurity:
        """The configuration the current connection (this thread's) is served with."""
        connection: _Connection | None = getattr(self._local, "connection", None)
        return connection.security if connection is not None else self._security()

    def connection_deadline(self) -> float:
        """When the current connection must have sent its whole request."""
        connection: _Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            return time.monotonic() + self.request_timeout
        return connection.deadline

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            if self._security().ssl_context is None:
                with contextlib.suppress(OSError):
                    request.sendall(_BUSY_RESPONSE)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        connection = request
        try:
            state = _Connection(
                security=self._security(), deadline=time.monotonic() + self.request_timeout
            )
            self._local.connection = state
            ready = True
            if state.security.ssl_context is not None:
                connection, ready = self._start_tls(request, state, client=str(client_address[0]))
            if ready:
                self.finish_request(connection, client_address)
        except Exception as error:  # noqa: BLE001 - one bad connection must not stop the server
            log.debug(
                "connection failed",
                extra={"client": str(client_address[0]), "err": f"{type(error).__name__}: {error}"},
            )
        finally:
            self._local.connection = None
            # Free the slot before the client can see the close: a client that reconnects at
            # once must find it free.
            self._slots.release()
            self.shutdown_request(connection)

    def _start_tls(
        self, raw: socket.socket, state: _Connection, *, client: str
    ) -> tuple[socket.socket, bool]:
        """The connection to use and close, and whether a TLS handshake finished in time.

        The caller closes the connection either way, after freeing its slot.
        """
        context = state.security.ssl_context
        assert context is not None
        if not self._looks_like_tls(raw, state.deadline):
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
        except (OSError, TimeoutError) as error:
            log.debug("TLS handshake failed", extra={"client": client, "err": str(error)})
            return tls, False
        tls.setblocking(True)
        return tls, True

    @staticmethod
    def _looks_like_tls(raw: socket.socket, deadline: float) -> bool:
        """Peek at the first byte: a plain HTTP request to the TLS port gets a 400 and no more."""
        raw.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            first = raw.recv(1, socket.MSG_PEEK)
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
