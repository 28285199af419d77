"""--web.config.file without files or threads: YAML scalars, basic auth, reload decisions.

The fixtures, TLS contexts and the watching reloader are in tests/web/test_webconfig_files.py."""

from __future__ import annotations

import base64
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
from guestload.web.tls import peer_has_allowed_san


def _basic(user: str, password: bytes) -> str:
    return "Basic " + base64.b64encode(user.encode() + b":" + password).decode()


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match=r"nowhere\.yml: cannot read"):
        load_web_config(tmp_path / "nowhere.yml")


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


def _users_file(path: Path, password: bytes) -> None:
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")


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
