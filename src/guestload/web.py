"""The HTTP endpoint: /metrics from the cache, health and readiness, a landing page."""

from __future__ import annotations

import contextlib
import html
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from guestload import __version__
from guestload.render import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, MetricsCache
from guestload.settings import ListenAddress

log = logging.getLogger(__name__)

_BUSY_RESPONSE = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Retry-After: 1\r\nContent-Length: 25\r\n\r\ntoo many concurrent calls"
)


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


class _Handler(BaseHTTPRequestHandler):
    server: ExporterServer
    server_version = f"guestload/{__version__}"

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


class ExporterServer(ThreadingHTTPServer):
    """A threading HTTP server that answers 503 beyond ``max_requests`` concurrent requests."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: ListenAddress, *, app: WebApp, max_requests: int, request_timeout: float
    ) -> None:
        self.app = app
        self._slots = threading.BoundedSemaphore(max_requests)
        handler = type("Handler", (_Handler,), {"timeout": request_timeout})
        if ":" in address.host:
            self.address_family = socket.AF_INET6
        super().__init__((address.host, address.port), handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
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
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
