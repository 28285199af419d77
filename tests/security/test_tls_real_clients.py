"""TLS and basic auth of a real ``guestload serve``, asked by real clients: curl and Python ssl.

Certificates are made for each test module with ``openssl``; the exporter reads them through
``--web.config.file``, as an operator would configure it.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest

from guestload_lab.services import Exporter
from guestload_lab.waiting import wait_until
from tests.certs import TlsFiles, make_tls_files
from tests.exposition import metric_value
from tests.security.exporters import GUESTLOAD, Exporters, command_output

PASSWORD = "correct horse"  # noqa: S105 - the test's own made-up password


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _web_config(tls: TlsFiles, password: str, *, extra: str = "") -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
    return (
        "tls_server_config:\n"
        f"  cert_file: {tls.cert.name}\n"
        f"  key_file: {tls.key.name}\n"
        f"  client_ca_file: {tls.ca.name}\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        "http_server_config:\n"
        "  headers:\n"
        "    X-Content-Type-Options: nosniff\n"
        "basic_auth_users:\n"
        f"  prometheus: '{hashed}'\n" + extra
    )


@dataclass
class Secured:
    exporter: Exporter
    tls: TlsFiles
    config: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.exporter.port}/metrics"

    def curl(self, *args: str, cert: bool = True, url: str | None = None) -> tuple[int, str, str]:
        """curl's exit code, the HTTP status it saw ("000" when none) and its stderr."""
        client = ["--cert", str(self.tls.client_cert), "--key", str(self.tls.client_key)]
        result = command_output(
            [
                "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                "--cacert", str(self.tls.ca), *(client if cert else []), *args, url or self.url,
            ]
        )  # fmt: skip
        return result.returncode, result.stdout.strip(), result.stderr

    def headers(self, password: str) -> str:
        result = command_output(
            [
                "curl", "-sS", "-D", "-", "-o", "/dev/null", "--max-time", "10",
                "--cacert", str(self.tls.ca), "--cert", str(self.tls.client_cert),
                "--key", str(self.tls.client_key), "-u", f"prometheus:{password}", self.url,
            ]
        )  # fmt: skip
        return result.stdout

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.tls.ca)
        context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        return context

    def served_certificate(self) -> bytes:
        with (
            socket.create_connection(("127.0.0.1", self.exporter.port), timeout=5) as raw,
            self.client_context().wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            certificate = tls.getpeercert(binary_form=True)
            assert certificate is not None
            return certificate


@pytest.fixture
def secured(exporters: Exporters) -> Secured:
    tls = make_tls_files(exporters.folder / "tls")
    config = tls.folder / "web.yml"
    _write_atomically(config, _web_config(tls, PASSWORD))
    exporter = exporters.start("--libvirt.uri", "test:///default", "--web.config.file", str(config))
    return Secured(exporter=exporter, tls=tls, config=config)


def test_the_right_client_certificate_and_password_get_metrics(secured: Secured) -> None:
    code, status, stderr = secured.curl("-u", f"prometheus:{PASSWORD}")
    assert (code, status) == (0, "200"), stderr
    result = command_output(
        [
            "curl", "-sS", "--cacert", str(secured.tls.ca), "--cert", str(secured.tls.client_cert),
            "--key", str(secured.tls.client_key), "-u", f"prometheus:{PASSWORD}", secured.url,
        ]
    )  # fmt: skip
    assert metric_value(result.stdout, "guestload_libvirt_up") == 1.0
    assert "X-Content-Type-Options: nosniff" in secured.headers(PASSWORD)


def test_a_wrong_or_missing_password_gets_401_with_a_challenge(secured: Secured) -> None:
    assert secured.curl("-u", "prometheus:wrong")[:2] == (0, "401")
    assert secured.curl("-u", f"someone:{PASSWORD}")[:2] == (0, "401")
    assert secured.curl()[:2] == (0, "401")
    headers = secured.headers("wrong")
    assert headers.startswith("HTTP/1.0 401")
    assert 'WWW-Authenticate: Basic realm="guestload"' in headers


def test_no_or_untrusted_client_certificate_is_refused_in_the_handshake(secured: Secured) -> None:
    code, status, stderr = secured.curl("-u", f"prometheus:{PASSWORD}", cert=False)
    assert code != 0
    assert status == "000", "no HTTP answer at all"
    stranger = ["--cert", str(secured.tls.stranger_cert), "--key", str(secured.tls.stranger_key)]
    code, status, stderr = secured.curl("-u", f"prometheus:{PASSWORD}", *stranger, cert=False)
    assert (code != 0, status) == (True, "000"), stderr
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _scrape_without_client_certificate(secured)


def _scrape_without_client_certificate(secured: Secured) -> bytes:
    anonymous = ssl.create_default_context(cafile=secured.tls.ca)
    with (
        socket.create_connection(("127.0.0.1", secured.exporter.port), timeout=5) as raw,
        anonymous.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        return tls.recv(1024)


def test_plaintext_http_to_the_tls_port_gets_no_metrics(secured: Secured) -> None:
    url = f"http://127.0.0.1:{secured.exporter.port}/metrics"
    result = command_output(["curl", "-sS", "-i", "--max-time", "10", url])
    assert result.stdout.startswith("HTTP/1.0 400"), result.stdout + result.stderr
    assert "guestload_" not in result.stdout


@pytest.mark.parametrize("version", ["--tls-max 1.1", "--tls-max 1.0"])
def test_tls_older_than_1_2_is_refused(secured: Secured, version: str) -> None:
    code, status, stderr = secured.curl(
        *version.split(), "--ciphers", "DEFAULT:@SECLEVEL=0", "-u", f"prometheus:{PASSWORD}"
    )
    assert code == 35, stderr  # curl: SSL connect error
    assert status == "000"
    assert "alert protocol version" in stderr, stderr  # the server's verdict, not curl's


def test_sighup_reloads_the_password(secured: Secured) -> None:
    _write_atomically(secured.config, _web_config(secured.tls, "new password"))
    # A check interval of 1 s would also notice the change; SIGHUP applies it at once.
    secured.exporter.process.send_signal(signal.SIGHUP)
    secured.exporter.wait_for_log("web config reloaded", timeout=5)
    assert secured.curl("-u", "prometheus:new password")[:2] == (0, "200")
    assert secured.curl("-u", f"prometheus:{PASSWORD}")[:2] == (0, "401")


def test_rotated_certificates_are_used_without_a_restart(secured: Secured) -> None:
    before = secured.served_certificate()
    rotated = secured.tls.folder / "server.pem.new"
    rotated.write_bytes(secured.tls.other_server_cert.read_bytes())
    os.replace(rotated, secured.tls.cert)
    expected = ssl.PEM_cert_to_DER_cert(secured.tls.other_server_cert.read_text())
    wait_until(
        lambda: secured.served_certificate() == expected,
        timeout=10,
        interval=0.05,
        what="the new certificate served",
        detail=secured.exporter.log,
    )
    assert before != expected
    assert secured.curl("-u", f"prometheus:{PASSWORD}")[:2] == (0, "200")
    assert secured.exporter.process.poll() is None


def test_a_bad_new_file_keeps_the_old_config(secured: Secured) -> None:
    _write_atomically(secured.config, "basic_auth_users:\n  prometheus: plaintext\n")
    secured.exporter.process.send_signal(signal.SIGHUP)
    secured.exporter.wait_for_log("web config not reloaded", timeout=5)
    assert "basic_auth_users.prometheus" in secured.exporter.log()
    assert secured.curl("-u", f"prometheus:{PASSWORD}")[:2] == (0, "200")
    assert secured.curl("-u", "prometheus:plaintext")[:2] == (0, "401")


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("tls_server_config:\n  key_file: server.key\n", "tls_server_config.cert_file"),
        ("basic_auth_users:\n  prometheus: hunter2\n", "basic_auth_users.prometheus"),
        ("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n"
         "  min_version: TLS11\n", "tls_server_config.min_version"),
        ("basic_auth_user: {}\n", "basic_auth_user"),
    ],
)  # fmt: skip
def test_a_bad_file_stops_start_up_with_exit_2_naming_the_field(
    exporters: Exporters, content: str, field: str
) -> None:
    tls = make_tls_files(exporters.folder / "tls")
    config = tls.folder / "web.yml"
    config.write_text(content)
    result = command_output(
        [str(GUESTLOAD), "serve", "--libvirt.uri", "test:///default", "--web.config.file",
         str(config), "--web.listen-address", "127.0.0.1:0"]
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(f"guestload: error: --web.config.file: {field}: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
