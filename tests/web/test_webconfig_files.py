"""--web.config.file with real files: every fixture beside certificates made by ``openssl``,
TLS contexts, a lock held by another login, and the reloader's watching thread."""

from __future__ import annotations

import base64
import logging
import shutil
import ssl
import time
from pathlib import Path

import bcrypt
import pytest

from guestload.web.basic_auth import BasicAuthenticator
from guestload.web.config import load_web_config
from guestload.web.errors import WebConfigError
from guestload.web.reload import WebConfigReloader, WebSecurity
from guestload.web.tls import ClientAuth, build_ssl_context
from guestload_lab.waiting import wait_until
from tests.certs import TlsFiles, make_tls_files, openssl

FIXTURES = Path(__file__).parent / "webconfig"
GOOD = sorted(FIXTURES.glob("*.good.yml"))
BAD = sorted(FIXTURES.glob("*.bad.yml"))
#: The password behind the bcrypt hashes in the fixtures.
FIXTURE_PASSWORD = b"test-password"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def _basic(user: str, password: bytes) -> str:
    return "Basic " + base64.b64encode(user.encode() + b":" + password).decode()


def _users_file(path: Path, password: bytes) -> None:
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")


def _placed(fixture: Path, tls_files: TlsFiles) -> Path:
    """The fixture copied next to the certificates its relative file names refer to."""
    target = tls_files.folder / fixture.name
    shutil.copyfile(fixture, target)
    return target


def test_there_are_fixtures_of_both_kinds() -> None:
    assert len(GOOD) >= 8
    assert len(BAD) >= 30


@pytest.mark.parametrize("fixture", GOOD, ids=lambda p: p.name)
def test_good_fixture_loads_and_serves(fixture: Path, tls_files: TlsFiles) -> None:
    config = load_web_config(_placed(fixture, tls_files))
    security = WebSecurity.from_config(config)
    assert (security.ssl_context is None) == (config.tls is None)
    assert (security.authenticator is None) == (not config.basic_auth_users)


@pytest.mark.parametrize("fixture", BAD, ids=lambda p: p.name)
def test_bad_fixture_is_refused_naming_the_field(fixture: Path, tls_files: TlsFiles) -> None:
    expected = fixture.read_text().splitlines()[0].removeprefix("# field: ")
    placed = _placed(fixture, tls_files)
    if expected == "<path>":
        expected = str(placed)
    with pytest.raises(WebConfigError) as raised:
        load_web_config(placed)
    assert str(raised.value).startswith(f"{expected}: "), str(raised.value)
    assert "\n" not in str(raised.value)


def test_good_fixtures_mean_what_they_say(tls_files: TlsFiles) -> None:
    everything = load_web_config(_placed(FIXTURES / "everything.good.yml", tls_files))
    assert everything.tls is not None
    assert everything.tls.client_auth is ClientAuth.REQUIRE_AND_VERIFY_CLIENT_CERT
    assert everything.tls.cert_file == tls_files.cert
    assert everything.tls.client_ca_file == tls_files.ca
    assert everything.headers == {"X-Frame-Options": "sameorigin"}
    assert set(everything.basic_auth_users) == {"alice"}
    headers = load_web_config(_placed(FIXTURES / "headers.good.yml", tls_files)).headers
    assert "X-XSS-Protection" not in headers  # blank means unset
    assert headers["Content-Security-Policy"] == "default-src 'none'"
    ciphers = load_web_config(_placed(FIXTURES / "tls_ciphers.good.yml", tls_files)).tls
    assert ciphers is not None
    assert ciphers.cipher_suites == (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    )
    assert not ciphers.prefer_server_cipher_suites


def test_scalars_are_read_as_the_text_written_as_go_does(tls_files: TlsFiles) -> None:
    """The exporter-toolkit's own headers example writes ``X-XSS-Protection: 1`` unquoted."""
    config = load_web_config(_placed(FIXTURES / "go_scalars.good.yml", tls_files))
    assert config.headers == {"X-XSS-Protection": "1", "Strict-Transport-Security": "31536000"}
    assert set(config.basic_auth_users) == {"1234", "yes", "1.50", "null-ish"}
    authenticator = BasicAuthenticator(config.basic_auth_users)
    assert authenticator.check(_basic("yes", FIXTURE_PASSWORD))
    assert authenticator.check(_basic("1.50", FIXTURE_PASSWORD))
    assert not authenticator.check(_basic("1.5", FIXTURE_PASSWORD))


def test_ssl_context_follows_the_settings(tls_files: TlsFiles) -> None:
    config = load_web_config(_placed(FIXTURES / "tls_client_auth.good.yml", tls_files))
    assert config.tls is not None
    context = build_ssl_context(config.tls)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_RENEGOTIATION
    optional = load_web_config(_placed(FIXTURES / "tls_verify_if_given.good.yml", tls_files))
    assert optional.tls is not None
    assert build_ssl_context(optional.tls).verify_mode is ssl.CERT_OPTIONAL
    plain = load_web_config(_placed(FIXTURES / "tls13_only.good.yml", tls_files))
    assert plain.tls is not None
    tls13 = build_ssl_context(plain.tls)
    assert tls13.verify_mode is ssl.CERT_NONE
    assert tls13.minimum_version is ssl.TLSVersion.TLSv1_3


def test_an_encrypted_key_is_refused_without_prompting(tls_files: TlsFiles) -> None:
    openssl(
        "pkey", "-in", "server.key", "-aes256", "-passout", "pass:secret",
        "-out", "encrypted.key", cwd=tls_files.folder,
    )  # fmt: skip
    config = tls_files.folder / "encrypted.yml"
    config.write_text("tls_server_config:\n  cert_file: server.pem\n  key_file: encrypted.key\n")
    with pytest.raises(WebConfigError, match=r"^tls_server_config\.key_file: .*encrypted"):
        load_web_config(config)


def test_one_users_expensive_hash_does_not_hold_up_another_users_login() -> None:
    """A slow check for one user (a lock held here) leaves other users' checks free."""
    users = {
        "slow": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)),
        "fast": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)),
    }
    auth = BasicAuthenticator(users)
    with auth._user_locks["slow"]:  # as if a cost-18 check for "slow" were running
        started = time.monotonic()
        assert auth.check(_basic("fast", b"pw"))
        assert not auth.check(_basic("nobody", b"pw"))
        assert time.monotonic() - started < 1.0
        # The same user waits for its turn, but no longer than its connection's deadline.
        assert not auth.check(_basic("slow", b"pw"), deadline=time.monotonic() + 0.2)
    assert auth.check(_basic("slow", b"pw"))


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_reloads_when_the_file_changes_and_keeps_the_old_config_when_it_is_bad(
    tmp_path: Path,
) -> None:
    path = tmp_path / "web.yml"
    _users_file(path, b"first")
    reloader = WebConfigReloader(path, check_interval_seconds=0.02)
    reloader.start()
    try:
        first = reloader.current
        assert first.authenticator is not None
        assert first.authenticator.check(_basic("alice", b"first"))
        _users_file(path, b"second")
        wait_until(
            lambda: reloader.current is not first,
            timeout=5,
            interval=0.02,
            what="users file reloaded",
        )
        second = reloader.current.authenticator
        assert second is not None
        assert second.check(_basic("alice", b"second"))
        assert not second.check(_basic("alice", b"first"))
        records = _Records()
        logging.getLogger("guestload.web.reload").addHandler(records)
        try:
            path.write_text("basic_auth_users:\n  alice: second\n")  # a plaintext password

            def errors() -> list[logging.LogRecord]:
                return [r for r in records.records if r.levelno == logging.ERROR]

            wait_until(lambda: bool(errors()), timeout=5, interval=0.02, what="one reload failure")
            time.sleep(0.1)
            # A bad file is reported once, not at every check.
            (error,) = errors()
        finally:
            logging.getLogger("guestload.web.reload").removeHandler(records)
        assert reloader.current.authenticator is second
        assert "basic_auth_users.alice" in str(getattr(error, "err", ""))
    finally:
        reloader.stop()


def test_reload_on_request_and_rotated_certificates(tls_files: TlsFiles, tmp_path: Path) -> None:
    for name in ("server.pem", "server.key"):
        shutil.copyfile(tls_files.folder / name, tmp_path / name)
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n")
    reloader = WebConfigReloader(path, check_interval_seconds=60.0)
    reloader.start()
    try:
        first = reloader.current
        reloader.request_reload()
        wait_until(
            lambda: reloader.current is not first, timeout=5, interval=0.02, what="one reload"
        )
    finally:
        reloader.stop()
    watcher = WebConfigReloader(path, check_interval_seconds=0.02)
    watcher.start()
    try:
        before = watcher.current
        shutil.copyfile(tls_files.other_server_cert, tmp_path / "server.pem")  # rotation
        wait_until(
            lambda: watcher.current is not before,
            timeout=5,
            interval=0.02,
            what="rotated certificate loaded",
        )
    finally:
        watcher.stop()


def test_turning_tls_off_needs_a_restart(tls_files: TlsFiles, tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {tls_files.cert}\n  key_file: {tls_files.key}\n"
    )
    reloader = WebConfigReloader(path)
    path.write_text("")
    assert not reloader.reload(reason="test")
    assert reloader.current.ssl_context is not None
