"""The HTTP layer on a real socket: routes, content negotiation, limits."""

from __future__ import annotations

import gzip
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from guestload.model import Snapshot
from guestload.render import MetricsCache
from guestload.settings import ListenAddress
from guestload.web import ExporterServer, WebApp


@dataclass
class Running:
    server: ExporterServer
    ready: list[bool]

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def get(self, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        connection.request("GET", path, headers=headers or {})
        return connection.getresponse()


@pytest.fixture
def running() -> Iterator[Running]:
    cache = MetricsCache(vcpu_collector=True)
    cache.update(Snapshot(source_up=True, polls_total=1))
    ready = [False]
    app = WebApp(cache=cache, is_ready=lambda: ready[0], telemetry_path="/metrics")
    server = ExporterServer(
        ListenAddress(host="127.0.0.1", port=0), app=app, max_requests=2, request_timeout=0.5
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield Running(server=server, ready=ready)
    server.shutdown()
    server.server_close()


def test_metrics_in_text_format(running: Running) -> None:
    response = running.get("/metrics")
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    assert b"guestload_libvirt_up 1.0" in response.read()


def test_metrics_in_openmetrics_when_asked(running: Running) -> None:
    response = running.get(
        "/metrics", {"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"}
    )
    assert response.getheader("Content-Type", "").startswith("application/openmetrics-text")
    assert response.read().endswith(b"# EOF\n")


def test_metrics_gzip_when_asked(running: Running) -> None:
    response = running.get("/metrics", {"Accept-Encoding": "gzip"})
    assert response.getheader("Content-Encoding") == "gzip"
    assert b"guestload_polls_total 1.0" in gzip.decompress(response.read())
    plain = running.get("/metrics", {"Accept-Encoding": "gzip;q=0"})
    assert plain.getheader("Content-Encoding") is None


def test_health_readiness_landing_and_unknown_paths(running: Running) -> None:
    assert running.get("/healthz").status == 200
    assert running.get("/readyz").status == 503
    running.ready[0] = True
    assert running.get("/readyz").status == 200
    landing = running.get("/")
    assert landing.status == 200
    assert b'href="/metrics"' in landing.read()
    assert running.get("/nope").status == 404


def test_unsupported_methods_and_garbage_get_4xx_or_5xx_not_a_crash(running: Running) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=5)
    connection.request("POST", "/metrics", body=b"x")
    assert connection.getresponse().status == 501
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as raw:
        raw.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        reply = raw.recv(4096)
        assert b"400" in reply, reply
    assert running.get("/healthz").status == 200


def test_requests_beyond_the_limit_get_503_and_slow_clients_are_dropped(
    running: Running,
) -> None:
    idle = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(2)]
    try:
        time.sleep(0.1)
        assert running.get("/metrics").status == 503
        time.sleep(0.7)  # past the 0.5 s request timeout: the idle clients are cut off
        assert running.get("/metrics").status == 200
    finally:
        for sock in idle:
            sock.close()
