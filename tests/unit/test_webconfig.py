"""--web.config.file: validation of every fixture, TLS contexts, basic auth, reloading."""

from __future__ import annotations

import base64
import logging
import shutil
import ssl
import time
from pathlib import Path

import bcrypt
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from guestload.cli.main import main
from guestload.web.basic_auth import BasicAuthenticator, decoy_cost, decoy_hash
from guestload.web.config import WebConfig, _StrictLoader, load_web_config, parse_web_config
from guestload.web.errors import WebConfigError
from guestload.web.reload import WebConfigReloader, WebSecurity
from guestload.web.tls import ClientAuth, build_ssl_context, peer_has_allowed_san
from guestload_lab.waiting import wait_until
from tests.unit.certs import TlsFiles, make_tls_files, openssl

FIXTURES = Path(__file__).parent / "webconfig"
GOOD = sorted(FIXTURES.glob("*.good.yml"))
BAD = sorted(FIXTURES.glob("*.bad.yml"))
#: The password behind the bcrypt hashes in the fixtures.
FIXTURE_PASSWORD = b"test-password"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def _placed(fixture: Path, tls_files: TlsFiles) -> Path:
    """The fixture copied next to the certificates its relative file names refer to."""
    target = tls_files.folder / fixture.name
    shutil.copyfile(fixture, target)
    return target


def _basic(user: str, password: bytes) -> str:
    return "Basic " + base64.b64encode(user.encode() + b":" + password).decode()


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


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match=r"nowhere\.yml: cannot read"):
        load_web_config(tmp_path / "nowhere.yml")


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


_HASH = "$2b$04$FKRvblzN1rtCpeKlEMeWrubdR5K8g/8fxazXts0WcYnFoTtlIS4aG"


@settings(max_examples=200, deadline=None)
@given(
    name=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,15}", fullmatch=True).filter(
        lambda text: text not in ("null", "Null", "NULL")
    ),
    value=st.one_of(
        st.integers().map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["yes", "No", "on", "OFF", "y", "~x", "0x1F", "0o17", "1_000", ".inf"]),
    ),
)
def test_any_plain_scalar_is_read_as_written(name: str, value: str) -> None:
    """User names and header values keep their text, whatever YAML 1.1 would resolve it to."""
    text = f"http_server_config:\n  headers:\n    X-XSS-Protection: {value}\n"
    text += f"basic_auth_users:\n  {name}: '{_HASH}'\n"
    document = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    config = parse_web_config(document, base_dir=Path())
    assert set(config.basic_auth_users) == {name}
    assert config.headers == {"X-XSS-Protection": value}


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


# -- basic authentication -------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_hash() -> bytes:
    """A hash of a common cost (10: tens of ms to check), to see the cache at work."""
    return bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=10))


def test_basic_auth_accepts_only_the_right_user_and_password(slow_hash: bytes) -> None:
    auth = BasicAuthenticator({"alice": slow_hash})
    assert auth.check(_basic("alice", b"right"))
    assert not auth.check(_basic("alice", b"wrong"))
    assert not auth.check(_basic("bob", b"right"))
    assert auth.check(_basic("alice", b"right"))
    assert not auth.check(_basic("alice", b"wrong"))  # a cached success admits nothing else


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer abc",
        "Basic",
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
        "Digest " + base64.b64encode(b"alice:right").decode(),
    ],
)
def test_basic_auth_refuses_malformed_headers(header: str | None, slow_hash: bytes) -> None:
    assert not BasicAuthenticator({"alice": slow_hash}).check(header)


def test_successful_checks_are_cached_so_scrapes_do_not_pay_bcrypt(slow_hash: bytes) -> None:
    auth = BasicAuthenticator({"alice": slow_hash})
    # CPU time of this thread, where bcrypt runs: waiting for a core on a loaded machine
    # does not count.
    started = time.thread_time()
    assert auth.check(_basic("alice", b"right"))
    first = time.thread_time() - started
    started = time.thread_time()
    for _ in range(20):
        assert auth.check(_basic("alice", b"right"))
    cached = (time.thread_time() - started) / 20
    assert cached < first / 20, (first, cached)


def test_failed_checks_always_pay_bcrypt_even_for_unknown_users(slow_hash: bytes) -> None:
    auth = BasicAuthenticator({"alice": slow_hash})
    for user in ("alice", "nobody-at-all"):
        started = time.thread_time()
        assert not auth.check(_basic(user, b"wrong"))
        assert time.thread_time() - started > 0.005  # bcrypt ran: no cheap "no such user"


def test_the_cache_is_bounded(slow_hash: bytes) -> None:
    fast = {f"user{i}": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)) for i in range(5)}
    auth = BasicAuthenticator(fast, cache_size=2)
    for user in fast:
        assert auth.check(_basic(user, b"pw"))
    assert len(auth._cache) == 2


def test_passwords_over_72_bytes_compare_on_their_first_72_as_go_bcrypt_does() -> None:
    """Go's CompareHashAndPassword has no length check and bcrypt reads 72 bytes of key."""
    long_password = bytes(range(65, 65 + 26)) * 3  # 78 bytes
    hashed = bcrypt.hashpw(long_password[:72], bcrypt.gensalt(rounds=4))
    auth = BasicAuthenticator({"alice": hashed})
    assert auth.check(_basic("alice", long_password))  # 200 where Go answers 200
    assert auth.check(_basic("alice", long_password[:72] + b"anything else"))
    assert not auth.check(_basic("alice", long_password[:71]))
    assert not auth.check(_basic("alice", b"x" * 4096))  # 401, never an exception
    assert not auth.check(_basic("nobody", b"x" * 4096))


def test_the_decoy_costs_what_most_configured_users_cost() -> None:
    def hashed(cost: int) -> bytes:
        return bcrypt.gensalt(rounds=cost) + b"A" * 31  # a cost in the header is all it takes

    assert decoy_cost([]) == 10
    assert decoy_cost([hashed(12)]) == 12
    assert decoy_cost([hashed(12), hashed(18), hashed(10), hashed(10)]) == 10
    assert decoy_cost([hashed(12), hashed(5)]) == 12  # a tie: the higher
    decoy = decoy_hash(12)
    assert decoy.startswith(b"$2b$12$")
    assert len(decoy) == 60
    assert not bcrypt.checkpw(b"", decoy_hash(4))


def test_unknown_users_take_as_long_as_known_ones() -> None:
    """Cost 8 against the default decoy's 10 would answer unknown users 4x slower."""
    auth = BasicAuthenticator({"alice": bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=8))})

    def cpu_seconds(user: str) -> float:
        # bcrypt runs in the calling thread: its CPU time does not count time spent waiting for
        # a core, which on a loaded machine made wall times differ 2.4x for equal work.
        started = time.thread_time()
        assert not auth.check(_basic(user, b"wrong"))
        return time.thread_time() - started

    known = min(cpu_seconds("alice") for _ in range(3))
    unknown = min(cpu_seconds("nobody") for _ in range(3))
    assert 0.5 < unknown / known < 2.0, (known, unknown)


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


def test_a_reload_keeps_remembered_logins() -> None:
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4))
    first = WebSecurity.from_config(WebConfig(basic_auth_users={"alice": hashed}))
    assert first.authenticator is not None
    assert first.authenticator.check(_basic("alice", b"right"))
    second = WebSecurity.from_config(
        WebConfig(basic_auth_users={"alice": hashed, "bob": hashed}), previous=first
    )
    assert second.authenticator is not None
    assert len(second.authenticator._cache) == 1
    changed = WebSecurity.from_config(
        WebConfig(basic_auth_users={"alice": bcrypt.hashpw(b"new", bcrypt.gensalt(rounds=4))}),
        previous=second,
    )
    assert changed.authenticator is not None
    assert not changed.authenticator.check(_basic("alice", b"right"))  # new hash, old entry


# -- reloading --------------------------------------------------------------------------------


def _users_file(path: Path, password: bytes) -> None:
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")


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
            wait_until(
                lambda: reloader.failures == 1,
                timeout=5,
                interval=0.02,
                what="one reload failure",
            )
        finally:
            logging.getLogger("guestload.web.reload").removeHandler(records)
        assert reloader.current.authenticator is second
        errors = [r for r in records.records if r.levelno == logging.ERROR]
        assert "basic_auth_users.alice" in str(getattr(errors[0], "err", ""))
        time.sleep(0.1)
        assert reloader.failures == 1  # a bad file is reported once, not at every check
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
        wait_until(lambda: reloader.reloads == 1, timeout=5, interval=0.02, what="one reload")
        assert reloader.current is not first
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


def test_a_bad_file_at_start_up_raises(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users:\n  alice: plaintext\n")
    with pytest.raises(WebConfigError, match=r"^basic_auth_users\.alice: is not a bcrypt hash"):
        WebConfigReloader(path)


def test_serve_with_a_bad_file_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config:\n  key_file: server.key\n")
    with pytest.raises(SystemExit) as raised:
        main(["serve", "--libvirt.uri", "test:///default", "--web.config.file", str(path)])
    assert raised.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("guestload: error: --web.config.file: tls_server_config.key_file:")
    assert len(error.splitlines()) == 1


def test_an_emptied_file_does_not_switch_authentication_off(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    _users_file(path, b"pw")
    reloader = WebConfigReloader(path)
    path.write_text("")  # a truncated file, as seen in the middle of a non-atomic write
    assert not reloader.reload(reason="test")
    assert reloader.current.authenticator is not None


@pytest.mark.parametrize(
    ("sans", "allowed", "matches"),
    [
        ((("DNS", "scraper.example"),), ("scraper.example",), True),
        ((("DNS", "scraper.example"),), ("other.example",), False),
        ((("IP Address", "2001:DB8:0:0:0:0:0:1\n"),), ("2001:db8::1",), True),
        ((("IP Address", "10.0.0.1"),), ("10.0.0.2",), False),
        ((("URI", "spiffe://cluster/prometheus"),), ("spiffe://cluster/prometheus",), True),
        ((), ("scraper.example",), False),
    ],
)
def test_client_allowed_sans(
    sans: tuple[tuple[str, str], ...], allowed: tuple[str, ...], matches: bool
) -> None:
    assert peer_has_allowed_san({"subjectAltName": sans}, allowed) is matches
