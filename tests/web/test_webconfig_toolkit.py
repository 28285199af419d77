"""The exporter-toolkit's own web-config cases, each with the toolkit's outcome and ours.

Every file of the toolkit's ``web/testdata`` and every expectation of its
``tls_config_test.go`` (config validation, TLS handshakes, basic auth) is a case here, written
afresh for this project's test certificates: the toolkit's ``server.crt`` is our
``server.pem``, its client CAs are our ``ca.pem``. Where guestload refuses what the toolkit
accepts (or the reverse) on purpose, the case names the reason, and that reason is a row of
the refusal table in ``docs/security.md``.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from guestload.exposition.cache import MetricsCache
from guestload.exposition.schema import MetricSet
from guestload.model import Snapshot
from guestload.settings import ListenAddress
from guestload.web.config import load_web_config
from guestload.web.errors import WebConfigError
from guestload.web.reload import WebSecurity
from guestload.web.routes import WebApp
from guestload.web.server import ExporterServer
from tests.certs import TlsFiles, make_tls_files
from tests.unit.fakes import LOAD_ONLY

SECURITY_DOC = (Path(__file__).parents[2] / "docs" / "security.md").read_text()

_TLS = 'tls_server_config:\n  cert_file: "server.pem"\n  key_file: "server.key"\n'
_INLINE_KEY = (
    "  key: |\n    -----BEGIN PRIVATE KEY-----\n    MIIJQw==\n    -----END PRIVATE KEY-----\n"
)
_INLINE_CERT = (
    "  cert: |\n    -----BEGIN CERTIFICATE-----\n    MIIFsD==\n    -----END CERTIFICATE-----\n"
)
#: The toolkit's users: alice cost 12, bob cost 18, carol and dave cost 10 (carol123, dave123).
_USERS = """basic_auth_users:
  alice: $2y$12$1DpfPeqF9HzHJt.EWswy1exHluGfbhnn3yXhR7Xes6m3WJqFg0Wby
  bob: $2y$18$4VeFDzXIoPHKnKTU3O3GH.N.vZu06CVqczYZ8WvfzrddFU6tGqjR.
  carol: $2y$10$qRTBuFoULoYNA7AQ/F3ck.trZBPyjV64.oA4ZsSBCIWvXuvQlQTuu
  dave: $2y$10$2UXri9cIDdgeKjBo4Rlpx.U3ZLDV8X1IxKmsfOvhcM5oXQt/mLmXq
"""

# Documented reasons (rows of docs/security.md) for refusing what the toolkit accepts.
UNVERIFIED = "`client_auth_type` `RequestClientCert` or `RequireAnyClientCert`"
NO_CA = "a verifying `client_auth_type` without `client_ca_file`"
NOT_IMPLEMENTED = "inline `cert`, `key`, `client_ca`; `curve_preferences`; `rate_limit`"
WEAK_CIPHERS = "`cipher_suites` other than the forward-secret AEAD suites"
HTTP1_ONLY = "`http_server_config.http2` is accepted and has no effect"


@dataclass(frozen=True)
class Case:
    toolkit_file: str
    yaml: str
    toolkit_accepts: bool
    guestload_accepts: bool
    reason: str = ""
    """Why guestload's outcome differs, quoted from docs/security.md; empty when it agrees."""


CASES = [
    Case("web_config_empty.yml", "", True, True),
    Case("web_config_junk.yml", "hWkNKCp3fvIx3jKnsaBI\nTuEjdwNS8A2vYdFbiKqr\n", False, False),
    Case(
        "web_config_junk_key.yml", 'tls_server_config:\n  cert_filse: "server.pem"\n', False, False
    ),
    Case(
        "web_config_noAuth_certPath_empty.bad.yml",
        'tls_server_config:\n  cert_file: ""\n  key_file: "server.key"\n',
        False,
        False,
    ),
    Case(
        "web_config_noAuth_cert_empty.bad.yml",
        'tls_server_config:\n  cert: ""\n  key_file: "server.key"\n',
        False,
        False,
    ),
    Case(
        "web_config_noAuth_keyPath_empty.bad.yml",
        'tls_server_config:\n  cert_file: "server.pem"\n  key_file: ""\n',
        False,
        False,
    ),
    Case(
        "web_config_noAuth_key_empty.bad.yml",
        'tls_server_config:\n  cert_file: "server.pem"\n  key: ""\n',
        False,
        False,
    ),
    Case(
        "web_config_noAuth_certPath_keyPath_empty.bad.yml",
        'tls_server_config:\n  cert_file: ""\n  key_file: ""\n  client_auth_type: "x"\n',
        False,
        False,
    ),
    Case(
        "web_config_noAuth_certPath_invalid.bad.yml",
        'tls_server_config:\n  cert_file: "somefile"\n  key_file: "server.key"\n',
        False,
        False,
    ),
    Case(
        "web_config_noAuth_keyPath_invalid.bad.yml",
        'tls_server_config:\n  cert_file: "server.cert"\n  key_file: "somefile"\n',
        False,
        False,
    ),
    Case(
        "web_config_noAuth_certPath_keyPath_invalid.bad.yml",
        'tls_server_config:\n  cert_file: "somefile"\n  key_file: "somefile"\n',
        False,
        False,
    ),
    Case("web_config_noAuth.bad.yml", _TLS + '  client_ca_file: "/dev/null"\n', False, False),
    Case(
        "web_config_auth_clientCAs_invalid.bad.yml",
        _TLS + '  client_ca_file: "somefile"\n',
        False,
        False,
    ),
    Case(
        "web_config_auth_user_list_invalid.bad.yml",
        _TLS + "basic_auth_users:\n  john: doe\n",
        False,
        False,
    ),
    Case(
        "web_config_noAuth_inventedCiphers.bad.yml",
        _TLS + "  cipher_suites:\n  - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA2048\n",
        False,
        False,
    ),
    Case(
        "web_config_noAuth_inventedCurves.bad.yml",
        _TLS + "  curve_preferences:\n    - CurveP257\n",
        False,
        False,
    ),
    Case(
        "web_config_noAuth_wrongTLSVersion.bad.yml",
        _TLS + "  min_version: TLS111\n",
        False,
        False,
    ),
    Case(
        "web_config_noAuth.good.yml",
        _TLS + '  client_auth_type: "VerifyClientCertIfGiven"\n',
        True,
        False,
        NO_CA,
    ),
    Case(
        "web_config_noAuth.good.blocking.yml",
        _TLS + '  client_auth_type: "RequireAndVerifyClientCert"\n',
        True,
        False,
        NO_CA,
    ),
    # Named .bad, but no toolkit test loads it and the toolkit's code accepts it.
    Case(
        "web_config_auth_clientCAs_missing.bad.yml",
        _TLS + '  client_auth_type: "RequireAndVerifyClientCert"\n',
        True,
        False,
        NO_CA,
    ),
    Case(
        "tls_config_noAuth.requireanyclientcert.good.yml",
        _TLS + '  client_auth_type: "RequireAnyClientCert"\n',
        True,
        False,
        UNVERIFIED,
    ),
    Case(
        "tls_config_noAuth.requireanyclientcertkeyinline.good.yml",
        'tls_server_config:\n  cert_file: "server.pem"\n'
        + _INLINE_KEY
        + '  client_auth_type: "RequireAnyClientCert"\n',
        True,
        False,
        NOT_IMPLEMENTED,
    ),
    Case(
        "tls_config_noAuth.requireandverifyclientcert.good.yml",
        _TLS + '  client_auth_type: "RequireAndVerifyClientCert"\n  client_ca_file: "ca.pem"\n',
        True,
        True,
    ),
    Case(
        "web_config_noAuth_allCiphers.good.yml",
        _TLS
        + '  client_auth_type: "VerifyClientCertIfGiven"\n  client_ca_file: "ca.pem"\n'
        + "  cipher_suites:\n"
        + "".join(
            f"  - {suite}\n"
            for suite in (
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_AES_128_GCM_SHA256",
                "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
                "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
                "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
                "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
            )
        ),
        True,
        False,
        WEAK_CIPHERS,
    ),
    Case(
        "web_config_noAuth_someCiphers.good.yml",
        _TLS
        + "  cipher_suites:\n  - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n"
        + "  - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\n  min_version: TLS12\n  max_version: TLS12\n",
        True,
        True,
    ),
    Case(
        "web_config_noAuth_someCiphers_noOrder.good.yml",
        _TLS
        + "  cipher_suites:\n  - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\n"
        + "  - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n  prefer_server_cipher_suites: false\n"
        + "  min_version: TLS12\n  max_version: TLS12\n",
        True,
        True,
    ),
    Case(
        "web_config_noAuth_allCurves.good.yml",
        _TLS + "  curve_preferences:\n    - CurveP256\n    - CurveP384\n    - CurveP521\n"
        "    - X25519\n",
        True,
        False,
        NOT_IMPLEMENTED,
    ),
    Case(
        "web_config_noAuth_someCurves.good.yml",
        _TLS + "  min_version: TLS13\n  curve_preferences:\n  - CurveP521\n",
        True,
        False,
        NOT_IMPLEMENTED,
    ),
    Case(
        "web_config_noAuth_tlsInline.good.yml",
        "tls_server_config:\n" + _INLINE_CERT + _INLINE_KEY,
        True,
        False,
        NOT_IMPLEMENTED,
    ),
    Case(
        "web_config_noAuth_noHTTP2.good.yml",
        _TLS + "  cipher_suites:\n    - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\n"
        "  max_version: TLS12\nhttp_server_config:\n  http2: false\n",
        True,
        True,
    ),
    Case(
        "web_config_noAuth_noHTTP2Cipher.bad.yml",
        _TLS + "  cipher_suites:\n    - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\n"
        "  max_version: TLS12\n",
        False,
        True,
        HTTP1_ONLY,
    ),
    Case(
        "web_config_headers.good.yml",
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        "    Strict-Transport-Security: max-age=31536000; includeSubDomains\n"
        "    X-Content-Type-Options: nosniff\n    X-XSS-Protection: 1\n"
        "    Content-Security-Policy: \"default-src 'self' *.test.example.net\"\n",
        True,
        True,
    ),
    Case(
        "web_config_headers_content_type_options.bad.yml",
        "http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n",
        False,
        False,
    ),
    Case(
        "web_config_headers_frame_options.bad.yml",
        "http_server_config:\n  headers:\n    X-Frame-Options: foo\n",
        False,
        False,
    ),
    Case(
        "web_config_headers_extra_header.bad.yml",
        "http_server_config:\n  headers:\n    Content-Type: foo\n",
        False,
        False,
    ),
    Case(
        "web_config_auth_client_san.good.yaml",
        _TLS + '  client_auth_type: "RequireAndVerifyClientCert"\n  client_ca_file: "ca.pem"\n'
        '  client_allowed_sans:\n    - "one"\n    - "test3"\n    - "two"\n',
        True,
        True,
    ),
    # Loads in both; the toolkit then refuses the client's certificate (test_server.py does too).
    Case(
        "web_config_auth_client_san.bad.yaml",
        _TLS + '  client_auth_type: "RequireAndVerifyClientCert"\n  client_ca_file: "ca.pem"\n'
        '  client_allowed_sans:\n    - "bad"\n',
        True,
        True,
    ),
    Case(
        "web_config_rate_limiter_nonblocking.yaml",
        "rate_limit:\n  interval: 0\n  burst: 0\n",
        True,
        False,
        NOT_IMPLEMENTED,
    ),
    Case(
        "web_config_rate_limiter_one_second.yaml",
        'rate_limit:\n  interval: "1s"\n  burst: 0\n',
        True,
        False,
        NOT_IMPLEMENTED,
    ),
    Case("web_config_users.good.yml", _TLS + _USERS, True, True),
    Case("web_config_users_noTLS.good.yml", _USERS, True, True),
]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("toolkit"))


def _write(tls_files: TlsFiles, name: str, text: str) -> Path:
    path = tls_files.folder / name
    path.write_text(text)
    return path


def test_every_toolkit_testdata_file_is_a_case() -> None:
    names = [case.toolkit_file for case in CASES]
    assert len(names) == len(set(names)) == 41


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.toolkit_file)
def test_toolkit_case(case: Case, tls_files: TlsFiles) -> None:
    path = _write(tls_files, case.toolkit_file, case.yaml)
    if case.guestload_accepts:
        WebSecurity.from_config(load_web_config(path))
    else:
        with pytest.raises(WebConfigError) as raised:
            load_web_config(path)
        assert "\n" not in str(raised.value)
    if case.guestload_accepts == case.toolkit_accepts:
        assert not case.reason
    else:
        assert case.reason, "a different outcome needs its documented reason"
        assert case.reason in SECURITY_DOC


def test_a_missing_config_file_is_an_error_in_both(tls_files: TlsFiles) -> None:
    """The toolkit's ``path to config yml invalid``."""
    with pytest.raises(WebConfigError, match="cannot read"):
        load_web_config(tls_files.folder / "somefile")


def test_the_toolkit_headers_example_sets_its_headers(tls_files: TlsFiles) -> None:
    (case,) = [c for c in CASES if c.toolkit_file == "web_config_headers.good.yml"]
    headers = load_web_config(_write(tls_files, case.toolkit_file, case.yaml)).headers
    assert headers == {
        "X-Frame-Options": "deny",
        "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
        "X-Content-Type-Options": "nosniff",
        "X-XSS-Protection": "1",
        "Content-Security-Policy": "default-src 'self' *.test.example.net",
    }


# -- the toolkit's server cases: handshakes and logins ------------------------------------------


@dataclass
class Served:
    port: int
    tls_files: TlsFiles

    def get(
        self, *, tls: bool, authorization: str = "", context: ssl.SSLContext | None = None
    ) -> int:
        if tls:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=10, context=context or self.client_context()
            )
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {"Authorization": authorization} if authorization else {}
            connection.request("GET", "/metrics", headers=headers)
            return connection.getresponse().status
        finally:
            connection.close()

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.tls_files.ca)
        context.check_hostname = False
        return context


ServeFile = Callable[[str, str], "Served"]


@pytest.fixture
def serve_file(tls_files: TlsFiles) -> Iterator[ServeFile]:
    servers: list[ExporterServer] = []

    def start(name: str, text: str) -> Served:
        security = WebSecurity.from_config(load_web_config(_write(tls_files, name, text)))
        cache = MetricsCache(metric_set=MetricSet(queries=LOAD_ONLY, vcpu_collector=True))
        cache.update(Snapshot(source_up=True, polls_total=1))
        app = WebApp(cache=cache, is_ready=lambda: True, telemetry_path="/metrics")
        server = ExporterServer(
            ListenAddress(host="127.0.0.1", port=0),
            app=app,
            max_requests=4,
            request_timeout=10.0,
            security=lambda: security,
        )
        servers.append(server)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return Served(port=int(server.server_address[1]), tls_files=tls_files)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("name", "tls", "credentials", "status"),
    [
        ("without basic auth", False, "", 401),
        ("with correct basic auth", False, "dave:dave123", 200),
        ("without basic auth and TLS", True, "", 401),
        ("with correct basic auth and TLS", True, "dave:dave123", 200),
        ("with another correct basic auth and TLS", True, "carol:carol123", 200),
        ("with bad password and TLS", True, "dave:bad", 401),
        ("with bad username and TLS", True, "nonexistent:nonexistent", 401),
    ],
)
def test_toolkit_users(
    serve_file: ServeFile, name: str, tls: bool, credentials: str, status: int
) -> None:
    """The toolkit's TestUsers, against its own hashes (bob's cost 18 is never checked)."""
    user, _, password = credentials.partition(":")
    served = serve_file("users.yml", (_TLS if tls else "") + _USERS)
    authorization = _basic(user, password) if user else ""
    assert served.get(tls=tls, authorization=authorization) == status, name


# The toolkit's certificate is RSA, ours ECDSA: the same cases with the ECDSA suites.
_AES128, _AES256 = "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"
_SOME_CIPHERS = (
    _TLS + "  cipher_suites:\n  - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n"
    "  - TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\n  min_version: TLS12\n  max_version: TLS12\n"
)
_SOME_CIPHERS_NO_ORDER = (
    _TLS + "  cipher_suites:\n  - TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\n"
    "  - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n  prefer_server_cipher_suites: false\n"
    "  min_version: TLS12\n  max_version: TLS12\n"
)


@pytest.mark.parametrize(
    ("name", "config", "client_ciphers", "expected"),
    [
        ("valid tls config yml with some ciphers", _SOME_CIPHERS, [_AES128], _AES128),
        (
            "valid tls config yml with no common cipher",
            _SOME_CIPHERS,
            ["ECDHE-ECDSA-AES256-SHA"],
            None,
        ),
        (
            "valid tls config yml with multiple client ciphers",
            _SOME_CIPHERS,
            [_AES128, _AES256],
            _AES128,
        ),
        (
            "valid tls config yml with multiple client ciphers, client chooses cipher",
            _SOME_CIPHERS_NO_ORDER,
            [_AES128, _AES256],
            _AES128,
        ),
    ],
)
def test_toolkit_cipher_cases(
    serve_file: ServeFile,
    name: str,
    config: str,
    client_ciphers: list[str],
    expected: str | None,
) -> None:
    start = serve_file
    served = start("ciphers.yml", config)
    client = served.client_context()
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers(":".join(client_ciphers))
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as raw:
        if expected is None:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                client.wrap_socket(raw, server_hostname="localhost")
            return
        with client.wrap_socket(raw, server_hostname="localhost") as tls:
            cipher = tls.cipher()
            assert cipher is not None
            assert cipher[0] == expected, name


def test_toolkit_plain_and_tls_clients_on_the_wrong_port(serve_file: ServeFile) -> None:
    """``valid tls config yml and default client``; ``empty YAMLConfigPath and TLS client``."""
    start = serve_file
    tls_server = start("tls.yml", _TLS)
    assert tls_server.get(tls=False) == 400
    plain_server = start("plain.yml", "")
    with pytest.raises(ssl.SSLError):
        plain_server.get(tls=True)
