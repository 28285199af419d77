"""Hostile clients against a real ``guestload serve --source simulated``.

Slow clients (plain and TLS), a connect burst, over-long passwords and the exporter-toolkit's
own headers example. These check that scrapers keep being answered and that refusals are
logged; how fast they are answered is measured by ``python -m bench.hostile``.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path

import bcrypt
import pytest

from guestload_lab.services import Exporter
from tests.certs import TlsFiles, make_tls_files
from tests.security.exporters import Exporters

SIMULATED = ("--source", "simulated", "--simulated.vms", "20")
#: The exporter-toolkit's web/testdata/web_config_headers.good.yml, as it is written there.
TOOLKIT_HEADERS_EXAMPLE = """http_server_config:
  headers:
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=31536000; includeSubDomains
    X-Content-Type-Options: nosniff
    X-XSS-Protection: 1
    Content-Security-Policy: "default-src 'self' *.test.example.net"
"""
LONG_PASSWORD = b"p" * 72 + b"-and-whatever-follows-the-72nd-byte"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("hostile-tls"))


def _status(
    exporter: Exporter,
    *,
    authorization: str = "",
    context: ssl.SSLContext | None = None,
) -> tuple[int, http.client.HTTPResponse]:
    host, port = "127.0.0.1", exporter.port
    connection = (
        http.client.HTTPSConnection(host, port, timeout=10, context=context)
        if context is not None
        else http.client.HTTPConnection(host, port, timeout=10)
    )
    headers = {"Authorization": authorization} if authorization else {}
    connection.request("GET", "/metrics", headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status, response


def _basic(user: bytes, password: bytes) -> str:
    return "Basic " + base64.b64encode(user + b":" + password).decode()


def test_the_toolkit_headers_example_and_over_long_passwords(
    exporters: Exporters, tmp_path: Path
) -> None:
    hashed = bcrypt.hashpw(LONG_PASSWORD[:72], bcrypt.gensalt(rounds=4)).decode()
    config = tmp_path / "web.yml"
    config.write_text(TOOLKIT_HEADERS_EXAMPLE + f"basic_auth_users:\n  yes: '{hashed}'\n")
    exporter = exporters.start(*SIMULATED, "--web.config.file", str(config))
    status, response = _status(exporter, authorization=_basic(b"yes", LONG_PASSWORD))
    assert status == 200, exporter.log()  # Go's bcrypt compares the first 72 bytes too
    assert response.getheader("X-XSS-Protection") == "1"
    assert response.getheader("X-Frame-Options") == "deny"
    assert response.getheader("Content-Security-Policy") == "default-src 'self' *.test.example.net"
    for password in (b"q" + LONG_PASSWORD[1:], b"x" * 5000):
        assert _status(exporter, authorization=_basic(b"yes", password))[0] == 401
    assert _status(exporter, authorization=_basic(b"nobody", b"x" * 100))[0] == 401
    assert exporter.process.poll() is None
    assert "Traceback" not in exporter.log()


class SlowClients:
    """Clients that never finish a request, re-opened when the server closes them."""

    def __init__(self, port: int, count: int, first_bytes: bytes, trickle: bytes) -> None:
        self._port = port
        self._first, self._trickle = first_bytes, trickle
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]
        self.opened = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            with suppress(OSError), socket.create_connection(("127.0.0.1", self._port)) as sock:
                self.opened += 1
                sock.sendall(self._first)
                sock.settimeout(0.3)
                while not self._stop.is_set():
                    try:
                        if sock.recv(1024) == b"":
                            break
                    except TimeoutError:
                        sock.sendall(self._trickle)

    def __enter__(self) -> SlowClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as resources:
        yield resources


def test_slow_plain_clients_leave_scrapes_answered_and_are_logged(
    exporters: Exporters, stack: ExitStack
) -> None:
    exporter = exporters.start(*SIMULATED, "--web.request-timeout", "1s")
    slow = stack.enter_context(
        SlowClients(exporter.port, 30, b"GET /metrics HTTP/1.1\r\nHost: x\r\n", b"X-Slow: 1\r\n")
    )
    time.sleep(0.5)
    statuses = [_status(exporter)[0] for _ in range(10)]
    assert statuses == [200] * 10
    exporter.wait_for_log("reason=request_timeout", timeout=10)
    assert "level=warn" in exporter.log()
    # They were cut and came back: the warning is logged just before a cut connection closes.
    deadline = time.monotonic() + 5
    while slow.opened <= 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slow.opened > 30


def test_slow_tls_clients_leave_tls_scrapes_answered(
    exporters: Exporters, stack: ExitStack, tls_files: TlsFiles, tmp_path: Path
) -> None:
    config = tmp_path / "web.yml"
    config.write_text(
        f"tls_server_config:\n  cert_file: {tls_files.cert}\n  key_file: {tls_files.key}\n"
    )
    exporter = exporters.start(*SIMULATED, "--web.config.file", str(config))
    stack.enter_context(SlowClients(exporter.port, 30, b"\x16", b""))
    time.sleep(0.5)
    context = ssl.create_default_context(cafile=tls_files.ca)
    context.check_hostname = False
    statuses = [_status(exporter, context=context)[0] for _ in range(10)]
    assert statuses == [200] * 10


def test_a_burst_of_64_connects_is_answered_in_full(exporters: Exporters) -> None:
    exporter = exporters.start(*SIMULATED)
    results: list[int] = []

    def scrape() -> None:
        try:
            results.append(_status(exporter)[0])
        except (OSError, http.client.HTTPException):
            results.append(0)

    burst = [threading.Thread(target=scrape) for _ in range(64)]
    for thread in burst:
        thread.start()
    for thread in burst:
        thread.join(timeout=30)
    assert results == [200] * 64
