"""The HTTP layer on a real socket: routes, content negotiation, limits, auth, TLS."""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import pytest

from guestload.exposition.cache import MetricsCache
from guestload.exposition.schema import MetricSet
from guestload.model import Snapshot
from guestload.settings import ListenAddress
from guestload.web.basic_auth import BasicAuthenticator
from guestload.web.reload import PLAIN_HTTP, WebSecurity
from guestload.web.server import ExporterServer, WebApp
from guestload.web.tls import ClientAuth, TlsSettings, build_ssl_context
from tests.unit.certs import TlsFiles, make_tls_files
from tests.unit.fakes import LOAD_ONLY

REQUEST_TIMEOUT = 0.5


@dataclass
class Running:
    server: ExporterServer
    ready: list[bool]
    security: list[WebSecurity] = field(default_factory=lambda: [PLAIN_HTTP])

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def get(self, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        connection.request("GET", path, headers=headers or {})
        return connection.getresponse()

    def raw(self, data: bytes) -> bytes:
        """Send ``data`` on a fresh connection and return everything the server answers."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(data)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


Serve = Callable[..., Running]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start servers on free loopback ports; all are shut down after the test."""
    servers: list[ExporterServer] = []

    def start(*, max_requests: int = 8, security: WebSecurity = PLAIN_HTTP) -> Running:
        cache = MetricsCache(metric_set=MetricSet(queries=LOAD_ONLY, vcpu_collector=True))
        cache.update(Snapshot(source_up=True, polls_total=1))
        ready = [False]
        current = [security]
        app = WebApp(cache=cache, is_ready=lambda: ready[0], telemetry_path="/metrics")
        server = ExporterServer(
            ListenAddress(host="127.0.0.1", port=0),
            app=app,
            max_requests=max_requests,
            request_timeout=REQUEST_TIMEOUT,
            security=lambda: current[0],
        )
        servers.append(server)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return Running(server=server, ready=ready, security=current)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def running(serve: Serve) -> Running:
    return serve()


def test_metrics_in_text_format(running: Running) -> None:
    response = running.get("/metrics")
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    assert response.getheader("Server") == "guestload/0.1.0"
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


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"])
def test_methods_other_than_get_and_head_get_405(running: Running, method: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=5)
    connection.request(method, "/metrics", body=b"x")
    response = connection.getresponse()
    assert response.status == 405
    assert response.getheader("Allow") == "GET, HEAD"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"\x16\x03\x01 not http at all\r\n\r\n", b"400"),
        (b"GET\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.x\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1 extra\r\n\r\n", b"400"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", b"414"),
        (
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n",
            b"431",
        ),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n", b"431"),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", b"200"),  # tolerated, like most servers
    ],
    ids=[
        "binary",
        "no-path",
        "bad-version",
        "four-words",
        "long-line",
        "many-headers",
        "huge-header",
        "header-without-colon",
    ],
)
def test_malformed_and_oversized_requests_get_4xx_not_a_crash(
    running: Running, request_bytes: bytes, status: bytes
) -> None:
    reply = running.raw(request_bytes)
    assert reply.split(b" ", 2)[1] == status, reply[:200]
    assert running.get("/healthz").status == 200


def test_requests_beyond_the_limit_get_503_and_slow_clients_are_dropped(serve: Serve) -> None:
    limited = serve(max_requests=2)
    idle = [socket.create_connection(("127.0.0.1", limited.port)) for _ in range(2)]
    try:
        started = time.monotonic()
        assert limited.get("/metrics").status == 503
        assert time.monotonic() - started < REQUEST_TIMEOUT  # still within the idle clients' time
        for sock in idle:  # the server cuts each idle client at the request timeout
            sock.settimeout(REQUEST_TIMEOUT + 2)
            assert sock.recv(1) == b""
        assert time.monotonic() - started < REQUEST_TIMEOUT + 1
        assert limited.get("/metrics").status == 200
    finally:
        for sock in idle:
            sock.close()


def test_a_client_dripping_its_headers_is_cut_at_the_request_timeout(running: Running) -> None:
    """Each byte arrives well within the timeout; the request as a whole does not."""
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        closed_after = None
        for _ in range(40):
            try:
                sock.sendall(b"X")
            except OSError:
                closed_after = time.monotonic() - started
                break
            time.sleep(0.05)
            with contextlib.suppress(BlockingIOError):
                sock.setblocking(False)
                if sock.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            sock.setblocking(True)
    assert closed_after is not None, "the server kept reading a request for 2 s"
    assert closed_after < REQUEST_TIMEOUT + 0.5


# -- basic authentication and headers ---------------------------------------------------------


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def secured(serve: Serve) -> Running:
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4))
    return serve(
        security=WebSecurity(
            authenticator=BasicAuthenticator({"alice": hashed}),
            headers=(("X-Frame-Options", "deny"), ("X-Content-Type-Options", "nosniff")),
        )
    )


@pytest.mark.parametrize("path", ["/metrics", "/", "/healthz", "/readyz", "/nope"])
def test_every_path_needs_the_password(secured: Running, path: str) -> None:
    response = secured.get(path)
    assert response.status == 401
    assert response.getheader("WWW-Authenticate") == 'Basic realm="guestload"'
    assert secured.get(path, _basic("alice", "wrong")).status == 401
    assert secured.get(path, _basic("mallory", "right")).status == 401
    assert secured.get(path, _basic("alice", "right")).status != 401


def test_configured_headers_are_on_every_answer(secured: Running) -> None:
    answers = [
        secured.get("/metrics", _basic("alice", "right")),
        secured.get("/metrics"),
        secured.get("/nope", _basic("alice", "right")),
    ]
    for response in answers:
        assert response.getheader("X-Frame-Options") == "deny"
        assert response.getheader("X-Content-Type-Options") == "nosniff"
    assert b"X-Frame-Options: deny" in secured.raw(b"GARBAGE\r\n\r\n")


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def _tls_server(
    serve: Serve,
    tls_files: TlsFiles,
    *,
    client_auth: ClientAuth = ClientAuth.NO_CLIENT_CERT,
    sans: tuple[str, ...] = (),
) -> Running:
    settings = TlsSettings(
        cert_file=tls_files.cert,
        key_file=tls_files.key,
        client_ca_file=None if client_auth is ClientAuth.NO_CLIENT_CERT else tls_files.ca,
        client_auth=client_auth,
        client_allowed_sans=sans,
    )
    return serve(
        security=WebSecurity(ssl_context=build_ssl_context(settings), client_allowed_sans=sans)
    )


def _client_context(
    tls_files: TlsFiles, *, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=tls_files.ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def _https_get(running: Running, context: ssl.SSLContext, path: str = "/metrics") -> int:
    connection = http.client.HTTPSConnection("127.0.0.1", running.port, context=context, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def test_tls_serves_metrics_and_tells_plain_http_clients_off(
    serve: Serve, tls_files: TlsFiles
) -> None:
    running = _tls_server(serve, tls_files)
    assert _https_get(running, _client_context(tls_files)) == 200
    reply = running.raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 400 Bad Request")
    assert b"HTTP request to an HTTPS server" in reply
    assert b"guestload_" not in reply


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_older_than_1_2_is_refused_by_the_server(serve: Serve, tls_files: TlsFiles) -> None:
    running = _tls_server(serve, tls_files)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError, match=r"ALERT_PROTOCOL_VERSION|alert protocol version"):
        _https_get(running, old)


def test_client_certificates_are_required_and_verified(serve: Serve, tls_files: TlsFiles) -> None:
    running = _tls_server(serve, tls_files, client_auth=ClientAuth.REQUIRE_AND_VERIFY_CLIENT_CERT)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _https_get(running, _client_context(tls_files))
    stranger = _client_context(tls_files, cert=tls_files.stranger_cert, key=tls_files.stranger_key)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _https_get(running, stranger)
    client = _client_context(tls_files, cert=tls_files.client_cert, key=tls_files.client_key)
    assert _https_get(running, client) == 200


def test_client_certificate_must_name_an_allowed_san(serve: Serve, tls_files: TlsFiles) -> None:
    client = _client_context(tls_files, cert=tls_files.client_cert, key=tls_files.client_key)
    required = ClientAuth.REQUIRE_AND_VERIFY_CLIENT_CERT
    allowed = _tls_server(serve, tls_files, client_auth=required, sans=("scraper.example",))
    assert _https_get(allowed, client) == 200
    other = _tls_server(serve, tls_files, client_auth=required, sans=("other.example",))
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        _https_get(other, client)


@pytest.mark.parametrize("first_bytes", [b"", b"\x16\x03\x01"], ids=["silent", "stalled"])
def test_a_stalled_tls_handshake_is_cut_at_the_request_timeout(
    serve: Serve, tls_files: TlsFiles, first_bytes: bytes
) -> None:
    running = _tls_server(serve, tls_files)
    running.server._slots = threading.BoundedSemaphore(1)  # one slot: a hog would block all
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        sock.sendall(first_bytes)
        started = time.monotonic()
        assert sock.recv(1024) == b""
        assert time.monotonic() - started < REQUEST_TIMEOUT + 0.5
    assert _https_get(running, _client_context(tls_files)) == 200


def test_a_new_certificate_applies_to_the_next_connection(
    serve: Serve, tls_files: TlsFiles
) -> None:
    running = _tls_server(serve, tls_files)

    def served_certificate() -> bytes:
        with (
            socket.create_connection(("127.0.0.1", running.port), timeout=5) as raw,
            _client_context(tls_files).wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            certificate = tls.getpeercert(binary_form=True)
            assert certificate is not None
            return certificate

    before = served_certificate()
    rotated = TlsSettings(cert_file=tls_files.other_server_cert, key_file=tls_files.key)
    running.security[0] = WebSecurity(ssl_context=build_ssl_context(rotated))
    after = served_certificate()
    assert before != after
    assert after == ssl.PEM_cert_to_DER_cert(tls_files.other_server_cert.read_text())


def test_a_client_that_does_not_take_its_answer_is_cut_at_the_request_timeout(
    serve: Serve,
) -> None:
    running = serve(max_requests=1)
    big = Snapshot(source_up=True, build_info={f"k{i}": "v" * 1000 for i in range(4000)})
    running.server.app.cache.update(big)  # a ~4 MB answer: more than the socket buffers hold
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        # Read nothing meanwhile; the one worker is free again once the server gives up.
        started = time.monotonic()
        assert running.get("/healthz").status == 503, "the worker is busy writing the answer"
        statuses = [503]
        while statuses[-1] == 503 and time.monotonic() - started < REQUEST_TIMEOUT + 2:
            time.sleep(0.02)
            statuses.append(running.get("/healthz").status)
        assert statuses[-1] == 200, statuses
