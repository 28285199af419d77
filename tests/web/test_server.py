"""The HTTP layer on a real socket: routes, content negotiation, limits, auth, TLS."""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import logging
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
from guestload.logs import LogfmtFormatter
from guestload.model import Snapshot
from guestload.settings import ListenAddress
from guestload.web.basic_auth import BasicAuthenticator
from guestload.web.limits import FairSlots, listen_backlog
from guestload.web.refusals import Refusal, RefusalLog
from guestload.web.reload import PLAIN_HTTP, WebSecurity
from guestload.web.routes import WebApp
from guestload.web.server import ExporterServer
from guestload.web.tls import ClientAuth, TlsSettings, build_ssl_context
from guestload_lab.waiting import wait_until
from tests.certs import TlsFiles, make_tls_files
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


class HeldReadiness:
    """An ``is_ready`` that holds each request asking it (and so the request's slot) until
    released, and tells how many are held."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._entered = threading.Semaphore(0)

    def __call__(self) -> bool:
        self._entered.release()
        return self.release.wait(10)

    def wait_for_holders(self, count: int) -> None:
        for _ in range(count):
            assert self._entered.acquire(timeout=5), "a request never reached its handler"


class RecordedRefusals(RefusalLog):
    """A refusal log that also keeps every refusal it is told of."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Refusal] = []

    def record(self, refusal: Refusal, *, client: str) -> None:
        self.seen.append(refusal)
        super().record(refusal, client=client)


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start servers on free loopback ports; all are shut down after the test."""
    servers: list[ExporterServer] = []
    threads: list[threading.Thread] = []

    def start(
        *,
        max_requests: int = 8,
        security: WebSecurity = PLAIN_HTTP,
        max_connections: int = 256,
        is_ready: Callable[[], bool] | None = None,
        refusals: RefusalLog | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> Running:
        cache = MetricsCache(metric_set=MetricSet(queries=LOAD_ONLY, vcpu_collector=True))
        cache.update(Snapshot(source_up=True, polls_total=1))
        ready = [False]
        current = [security]
        app = WebApp(
            cache=cache, is_ready=is_ready or (lambda: ready[0]), telemetry_path="/metrics"
        )
        server = ExporterServer(
            ListenAddress(host="127.0.0.1", port=0),
            app=app,
            max_requests=max_requests,
            request_timeout=request_timeout,
            security=lambda: current[0],
            max_connections=max_connections,
            refusals=refusals,
        )
        servers.append(server)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        threads.append(thread)
        return Running(server=server, ready=ready, security=current)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
    for thread in threads:
        thread.join(timeout=5)
        assert not thread.is_alive(), "serve_forever did not return after shutdown"


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


def _get_quietly(running: Running, path: str) -> None:
    """A request whose answer does not matter (it may be cut at the answer deadline)."""
    with contextlib.suppress(OSError, http.client.HTTPException):
        running.get(path).read()


@contextlib.contextmanager
def _slots_held(serve: Serve, *, max_requests: int) -> Iterator[tuple[Running, HeldReadiness]]:
    """A server whose every slot answers a /readyz held until ``held.release`` is set."""
    held = HeldReadiness()
    limited = serve(max_requests=max_requests, is_ready=held)
    holders = [
        threading.Thread(target=_get_quietly, args=(limited, "/readyz"))
        for _ in range(max_requests)
    ]
    for holder in holders:
        holder.start()
    try:
        held.wait_for_holders(max_requests)
        yield limited, held
    finally:
        held.release.set()
        for holder in holders:
            holder.join(timeout=5)


def test_idle_connections_take_no_slot_and_are_cut_at_the_request_timeout(serve: Serve) -> None:
    limited = serve(max_requests=2)
    idle = [socket.create_connection(("127.0.0.1", limited.port)) for _ in range(4)]
    try:
        started = time.monotonic()
        assert limited.get("/metrics").status == 200  # twice the slots, idle: no slot taken
        for sock in idle:  # the server cuts each idle client at the request timeout
            sock.settimeout(REQUEST_TIMEOUT + 2)
            assert sock.recv(1) == b""
        assert time.monotonic() - started < REQUEST_TIMEOUT + 1
    finally:
        for sock in idle:
            sock.close()


def test_requests_beyond_the_limit_wait_a_second_then_get_503_and_a_warning(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """A slot is held while a request is answered; /readyz is held here by a blocked check."""
    with _slots_held(serve, max_requests=2) as (limited, _):
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="guestload.web.refusals"):
            busy = limited.get("/metrics")
        waited = time.monotonic() - started
        assert busy.status == 503
        assert busy.getheader("Retry-After") == "1"
        assert limited.server.slot_wait_seconds <= waited < limited.server.slot_wait_seconds + 1
        (record,) = [r for r in caplog.records if r.__dict__.get("reason") == "busy"]
        assert record.levelno == logging.WARNING
        assert record.name == "guestload.web.refusals"
    assert limited.get("/metrics").status == 200


def test_a_head_request_beyond_the_limit_gets_a_503_without_a_body(serve: Serve) -> None:
    """The 503 was once written by hand, with its body even for HEAD."""
    with _slots_held(serve, max_requests=1) as (limited, _):
        reply = limited.raw(b"HEAD /metrics HTTP/1.0\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 503 Service Unavailable\r\n")
    assert b"\r\nContent-Length: 26\r\n" in head  # the GET's body length, as HEAD says
    assert b"\r\nRetry-After: 1\r\n" in head
    assert body == b""


def test_a_scrape_and_its_head_carry_the_same_fields_the_head_no_body(running: Running) -> None:
    request = b"%s /metrics HTTP/1.1\r\nHost: x\r\nACCEPT-encoding: gzip\r\n\r\n"
    get_head, _, body = running.raw(request % b"GET").partition(b"\r\n\r\n")
    head_head, _, nothing = running.raw(request % b"HEAD").partition(b"\r\n\r\n")
    fields = [line for line in get_head.split(b"\r\n") if not line.startswith(b"Date: ")]
    assert fields == [line for line in head_head.split(b"\r\n") if not line.startswith(b"Date: ")]
    assert fields[0] == b"HTTP/1.0 200 OK"
    assert fields[1].startswith(b"Server: guestload/")
    assert b"Content-Encoding: gzip" in fields
    assert b"Content-Length: %d" % len(body) in fields
    assert b"guestload_libvirt_up" in gzip.decompress(body)
    assert nothing == b""


def test_a_freed_slot_goes_to_a_waiting_request(serve: Serve) -> None:
    with _slots_held(serve, max_requests=1) as (limited, held):
        threading.Timer(limited.server.slot_wait_seconds / 4, held.release.set).start()
        assert limited.get("/metrics").status == 200


def test_too_many_open_connections_close_the_oldest_first(serve: Serve) -> None:
    refusals = RecordedRefusals()
    limited = serve(max_connections=3, refusals=refusals, request_timeout=10.0)
    # The server accepts connections in the order the kernel queued them: the first is oldest.
    oldest = socket.create_connection(("127.0.0.1", limited.port), timeout=5)
    others = [socket.create_connection(("127.0.0.1", limited.port), timeout=5) for _ in range(2)]
    try:
        started = time.monotonic()
        assert limited.get("/metrics").status == 200  # the fourth: the oldest makes way
        assert oldest.recv(1) == b""
        assert time.monotonic() - started < 5.0  # cut, not timed out
        assert refusals.seen == [Refusal.EVICTED]
        others[0].sendall(b"GET /healthz HTTP/1.0\r\n\r\n")  # not cut: still served
        assert others[0].recv(100).startswith(b"HTTP/1.0 200")
    finally:
        for sock in (oldest, *others):
            sock.close()


def _switches(thread: threading.Thread) -> int:
    """How often the kernel has put ``thread`` on a CPU so far (``schedstat``'s third field)."""
    stat = Path(f"/proc/self/task/{thread.native_id}/schedstat").read_text()
    return int(stat.split()[2])


def _idle_switches(thread: threading.Thread, seconds: float) -> int:
    time.sleep(0.2)  # settled in its wait
    before = _switches(thread)
    time.sleep(seconds)
    return _switches(thread) - before


def _shutdown_seconds(server: ExporterServer, thread: threading.Thread) -> float:
    started = time.monotonic()
    server.shutdown()
    took = time.monotonic() - started
    thread.join(timeout=5)
    assert not thread.is_alive()
    return took


def test_an_idle_accept_loop_sleeps_until_a_connection_or_shutdown(running: Running) -> None:
    server = ExporterServer(
        ListenAddress(host="127.0.0.1", port=0),
        app=running.server.app,
        max_requests=1,
        request_timeout=REQUEST_TIMEOUT,
    )
    try:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        assert _idle_switches(thread, 1.5) <= 1  # socketserver's loop wakes every 0.5 s
        port = int(server.server_address[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/healthz")
        assert connection.getresponse().read() == b"ok\n"
        assert _shutdown_seconds(server, thread) < 0.25  # not the next 0.5 s wake-up
        # Served again: the first shutdown's wake-up is not left to make the loop spin.
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        assert _idle_switches(thread, 1.0) <= 1
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        assert _shutdown_seconds(server, thread) < 0.25
    finally:
        server.server_close()


def test_the_listen_backlog_is_the_kernels_somaxconn(running: Running) -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert running.server.request_queue_size == listen_backlog() >= somaxconn


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
    running.server._slots = FairSlots(1)  # one slot: a hog would block all
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


def test_a_client_that_does_not_take_its_answer_holds_no_slot_and_is_cut_in_time(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusals = RecordedRefusals()
    running = serve(max_requests=1, refusals=refusals)
    # A ~16 MB answer: more than loopback's buffers can hold (send buffers grow to 4 MB), with
    # a receive buffer made small before connecting, so the window stays small.
    big = Snapshot(source_up=True, build_info={f"k{i}": "v" * 1000 for i in range(16_000)})
    cache = running.server.app.cache
    cache.update(big)
    made = threading.Event()
    render_parts = cache.render_parts

    def rendering(*, openmetrics_format: bool, gzip: bool) -> tuple[bytes, ...]:
        parts = render_parts(openmetrics_format=openmetrics_format, gzip=gzip)
        made.set()
        return parts

    monkeypatch.setattr(cache, "render_parts", rendering)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", running.port))
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        started = time.monotonic()
        # Read nothing meanwhile: the one slot is free again once the answer is made.
        assert made.wait(5)
        assert running.get("/healthz").status == 200
        assert Refusal.BUSY not in refusals.seen
        wait_until(lambda: refusals.seen == [Refusal.ANSWER_TIMEOUT], timeout=REQUEST_TIMEOUT + 5)
        received = 0
        with contextlib.suppress(ConnectionResetError):  # reset: the rest is dropped
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        # Cut after its deadline, not trickled out for as long as the client likes (a
        # slack of seconds: a busy machine schedules late, and this is not a speed test).
        assert time.monotonic() - started < REQUEST_TIMEOUT + 5
        assert received < 16_000_000


@pytest.mark.parametrize("weight", ["0", "-1", "NaN"])
def test_gzip_refused_by_its_weight_gets_plain_text(running: Running, weight: str) -> None:
    response = running.get("/metrics", {"Accept-Encoding": f"gzip;q={weight}"})
    assert response.getheader("Content-Encoding") is None
    assert b"guestload_polls_total 1.0" in response.read()


@pytest.mark.parametrize(("prefer_server", "expected"), [(True, 0), (False, 1)])
def test_prefer_server_cipher_suites_decides_whose_order_wins(
    serve: Serve, tls_files: TlsFiles, prefer_server: bool, expected: int
) -> None:
    """The toolkit's "client chooses cipher" case, with the orders made to disagree."""
    server_order = ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384")
    settings = TlsSettings(
        cert_file=tls_files.cert,
        key_file=tls_files.key,
        max_version=ssl.TLSVersion.TLSv1_2,
        cipher_suites=server_order,
        prefer_server_cipher_suites=prefer_server,
    )
    running = serve(security=WebSecurity(ssl_context=build_ssl_context(settings)))
    client = _client_context(tls_files)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers(":".join(reversed(server_order)))
    with (
        socket.create_connection(("127.0.0.1", running.port), timeout=5) as raw,
        client.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        assert cipher[0] == server_order[expected]


def test_control_characters_of_a_request_are_escaped_in_the_log(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="guestload.web.server"):
        running.raw(b"GET /\x1b[31mred\x00\x7f HTTP/1.0\r\n\r\n")
        wait_until(
            lambda: any("red" in r.getMessage() + str(r.__dict__) for r in caplog.records),
            timeout=5,
        )
    lines = [LogfmtFormatter().format(record) for record in caplog.records]
    assert any("\\x1b[31mred\\x00\\x7f" in line for line in lines), lines
    for line in lines:
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in line), repr(line)


def test_slots_go_to_waiting_requests_in_arrival_order() -> None:
    slots = FairSlots(1)
    assert slots.acquire(timeout=0)
    order: list[int] = []

    def wait_for_slot(number: int) -> None:
        if slots.acquire(timeout=5):
            order.append(number)
            slots.release()

    waiters = []
    for number in range(4):
        waiter = threading.Thread(target=wait_for_slot, args=(number,))
        waiter.start()
        waiters.append(waiter)
        queued = number + 1
        wait_until(lambda: len(slots._waiters) == queued, timeout=5)  # noqa: B023 - used at once
    assert not slots.acquire(timeout=0.05)  # a late comer queues behind them and gives up
    slots.release()
    for waiter in waiters:
        waiter.join(timeout=5)
    assert order == [0, 1, 2, 3]
    assert slots.acquire(timeout=0)  # the one slot is free again, and only one
    assert not slots.acquire(timeout=0)
