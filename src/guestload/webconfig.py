"""``--web.config.file``: TLS, basic authentication and response headers for the HTTP endpoint.

The file has the format Prometheus exporters share (the exporter-toolkit's web configuration):
``tls_server_config``, ``http_server_config`` and ``basic_auth_users``. It is validated as a
whole before it is used: an unknown key, a wrong type, a missing file, a key without its
certificate, a plaintext password or an unsafe choice (TLS older than 1.2, client certificates
that are not verified) is refused with a message naming the field. Relative file names are
resolved against the configuration file's folder.

:class:`WebConfigReloader` keeps the active configuration. It re-reads the file on request
(SIGHUP) and whenever the file or one of the certificate files it names changes, so rotated
certificates are used without a restart; a bad new file keeps the old configuration.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import bcrypt
import yaml

log = logging.getLogger(__name__)

DEFAULT_CHECK_INTERVAL_SECONDS: Final = 1.0
"""How often the reloader looks at the files' modification times and sizes."""

MAX_FILE_BYTES: Final = 1 << 20
"""Largest web configuration file read (a real one is well under a kilobyte)."""
BASIC_AUTH_REALM: Final = "guestload"
AUTH_CACHE_SIZE: Final = 256
"""Successful (user, password) checks remembered, so a scrape does not pay bcrypt every time."""

# A bcrypt hash as htpasswd -B, Go's bcrypt and the bcrypt package write it: $2a$, $2b$ or $2y$,
# a two-digit cost, 22 characters of salt and 31 of hash in bcrypt's base64 alphabet.
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_BCRYPT_MIN_COST, _BCRYPT_MAX_COST = 4, 31

_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")


class WebConfigError(ValueError):
    """The web configuration is unusable; the message starts with the field at fault."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field_name = field_name


class ClientAuth(enum.StrEnum):
    """``client_auth_type`` values guestload accepts."""

    NO_CLIENT_CERT = "NoClientCert"
    VERIFY_CLIENT_CERT_IF_GIVEN = "VerifyClientCertIfGiven"
    REQUIRE_AND_VERIFY_CLIENT_CERT = "RequireAndVerifyClientCert"


#: client_auth_type values of the format that would accept unverified client certificates.
_UNVERIFIED_CLIENT_AUTH: Final = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")

_TLS_VERSIONS: Final = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_OLD_TLS_VERSIONS: Final = ("TLS10", "TLS11")

#: TLS 1.2 cipher suites by their IANA (and Go) names -> OpenSSL names. Only forward-secret
#: AEAD suites; TLS 1.3 suites are not configurable (as in the format's reference).
TLS12_CIPHER_SUITES: Final = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
}

#: Response headers the file may set, with their allowed values (None: any single-line value).
#: Every other header is reserved: the exporter sets it itself or it has no business here.
ALLOWED_HEADERS: Final[Mapping[str, tuple[str, ...] | None]] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}

_TOP_KEYS: Final = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS: Final = (
    "cert_file",
    "key_file",
    "client_ca_file",
    "client_auth_type",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
)
_HTTP_KEYS: Final = ("http2", "headers")
#: Keys of the format guestload deliberately does not implement, with what to do instead.
_UNSUPPORTED_KEYS: Final = {
    "rate_limit": "rate limiting is not supported; --web.max-requests bounds concurrent requests",
    "tls_server_config.cert": "inline certificates are not supported; use cert_file",
    "tls_server_config.key": "inline keys are not supported; use key_file",
    "tls_server_config.client_ca": "inline CA certificates are not supported; use client_ca_file",
    "tls_server_config.curve_preferences": "curve preferences are not supported; "
    "remove the key to use OpenSSL's defaults (X25519, P-256, P-384, P-521)",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """``tls_server_config`` after validation; file names are absolute."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth: ClientAuth = ClientAuth.NO_CLIENT_CERT
    client_allowed_sans: tuple[str, ...] = ()
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    cipher_suites: tuple[str, ...] = ()
    """OpenSSL names of the TLS 1.2 suites allowed; empty for OpenSSL's defaults."""
    prefer_server_cipher_suites: bool = True

    def files(self) -> tuple[Path, ...]:
        return (self.cert_file, self.key_file) + (
            (self.client_ca_file,) if self.client_ca_file else ()
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class WebConfig:
    """A validated web configuration."""

    tls: TlsSettings | None = None
    basic_auth_users: Mapping[str, bytes] = field(default_factory=dict)
    """User name -> bcrypt hash."""
    headers: Mapping[str, str] = field(default_factory=dict)


# -- parsing ------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses duplicate keys instead of keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def load_web_config(path: Path) -> WebConfig:
    """Read and validate the file at ``path``; raises :class:`WebConfigError`."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES or not path.is_file():
            raise WebConfigError(str(path), f"must be a regular file under {MAX_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise WebConfigError(str(path), f"cannot read: {_reason(error)}") from None
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise WebConfigError(str(path), f"not valid YAML: {_yaml_problem(error)}") from None
    return parse_web_config(document, base_dir=path.resolve().parent)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line, without quoting the file (it may hold secrets)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return type(error).__name__


def parse_web_config(document: object, *, base_dir: Path) -> WebConfig:
    """Validate a parsed document; relative file names are taken from ``base_dir``."""
    if document is None:
        return WebConfig()
    top = _mapping(document, "the file", _TOP_KEYS)
    tls_section = _optional_mapping(top, "tls_server_config", "tls_server_config", _TLS_KEYS)
    http_section = _optional_mapping(top, "http_server_config", "http_server_config", _HTTP_KEYS)
    if "http2" in http_section:
        _boolean(http_section["http2"], "http_server_config.http2")
    return WebConfig(
        tls=_tls_settings(tls_section, base_dir) if tls_section else None,
        basic_auth_users=_users(top.get("basic_auth_users")),
        headers=_headers(http_section.get("headers")),
    )


def _mapping(value: object, name: str, keys: tuple[str, ...]) -> dict[str, object]:
    if not isinstance(value, dict):
        raise WebConfigError(name, f"must be a mapping, not {_type(value)}")
    prefix = "" if name == "the file" else f"{name}."
    for key in value:
        full = f"{prefix}{key}"
        if full in _UNSUPPORTED_KEYS:
            raise WebConfigError(full, _UNSUPPORTED_KEYS[full])
        if key not in keys:
            raise WebConfigError(full, f"unknown field (known: {', '.join(keys)})")
    return value


def _optional_mapping(
    parent: Mapping[str, object], key: str, name: str, keys: tuple[str, ...]
) -> dict[str, object]:
    value = parent.get(key)
    return {} if value is None else _mapping(value, name, keys)


def _string(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise WebConfigError(name, f"must be a string, not {_type(value)}")
    return value


def _boolean(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise WebConfigError(name, f"must be true or false, not {_type(value)}")
    return value


def _string_list(value: object, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise WebConfigError(name, f"must be a list of strings, not {_type(value)}")
    return tuple(_string(item, f"{name}[{index}]") for index, item in enumerate(value))


def _file(section: Mapping[str, object], key: str, base_dir: Path) -> Path | None:
    name = f"tls_server_config.{key}"
    value = section.get(key)
    if value is None or value == "":
        return None
    path = base_dir / _string(value, name)
    if not path.is_file():
        raise WebConfigError(name, f"{path} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise WebConfigError(name, f"{path} is not readable")
    return path


def _tls_version(value: object, name: str, default: ssl.TLSVersion) -> ssl.TLSVersion:
    if value is None:
        return default
    text = _string(value, name)
    if text in _OLD_TLS_VERSIONS:
        raise WebConfigError(name, f"{text} is not allowed: TLS older than 1.2 is unsafe")
    if text not in _TLS_VERSIONS:
        raise WebConfigError(name, f"unknown TLS version {text!r} (use TLS12 or TLS13)")
    return _TLS_VERSIONS[text]


def _client_auth(value: object) -> ClientAuth:
    name = "tls_server_config.client_auth_type"
    if value is None or value == "":
        return ClientAuth.NO_CLIENT_CERT
    text = _string(value, name)
    if text in _UNVERIFIED_CLIENT_AUTH:
        raise WebConfigError(
            name,
            f"{text} accepts client certificates without verifying them and is not allowed; "
            "use RequireAndVerifyClientCert (or VerifyClientCertIfGiven) with client_ca_file",
        )
    try:
        return ClientAuth(text)
    except ValueError:
        known = ", ".join(auth.value for auth in ClientAuth)
        raise WebConfigError(name, f"unknown value {text!r} (use one of {known})") from None


def _cipher_suites(value: object) -> tuple[str, ...]:
    name = "tls_server_config.cipher_suites"
    suites = []
    for index, suite in enumerate(_string_list(value, name)):
        openssl_name = TLS12_CIPHER_SUITES.get(suite)
        if openssl_name is None:
            raise WebConfigError(
                f"{name}[{index}]",
                f"{suite!r} is unknown or not allowed (allowed: forward-secret AEAD suites: "
                f"{', '.join(TLS12_CIPHER_SUITES)})",
            )
        suites.append(openssl_name)
    return tuple(suites)


def _tls_settings(section: Mapping[str, object], base_dir: Path) -> TlsSettings:
    cert_file = _file(section, "cert_file", base_dir)
    key_file = _file(section, "key_file", base_dir)
    if cert_file is None:
        raise WebConfigError("tls_server_config.cert_file", "missing (TLS needs a certificate)")
    if key_file is None:
        raise WebConfigError("tls_server_config.key_file", "missing (TLS needs the key)")
    client_ca_file = _file(section, "client_ca_file", base_dir)
    client_auth = _client_auth(section.get("client_auth_type"))
    if client_ca_file is not None and client_auth is ClientAuth.NO_CLIENT_CERT:
        raise WebConfigError(
            "tls_server_config.client_auth_type",
            "client_ca_file is set but client certificates are not requested; "
            "set RequireAndVerifyClientCert or VerifyClientCertIfGiven",
        )
    if client_ca_file is None and client_auth is not ClientAuth.NO_CLIENT_CERT:
        raise WebConfigError(
            "tls_server_config.client_ca_file",
            f"missing: {client_auth.value} needs the CA that signs client certificates",
        )
    sans = _string_list(section.get("client_allowed_sans"), "tls_server_config.client_allowed_sans")
    if sans and client_auth is not ClientAuth.REQUIRE_AND_VERIFY_CLIENT_CERT:
        raise WebConfigError(
            "tls_server_config.client_allowed_sans",
            "needs client_auth_type RequireAndVerifyClientCert (else a client may send no "
            "certificate to match)",
        )
    min_version = _tls_version(
        section.get("min_version"), "tls_server_config.min_version", ssl.TLSVersion.TLSv1_2
    )
    max_version = _tls_version(
        section.get("max_version"), "tls_server_config.max_version", ssl.TLSVersion.TLSv1_3
    )
    if max_version < min_version:
        raise WebConfigError("tls_server_config.max_version", "is older than min_version")
    prefer = section.get("prefer_server_cipher_suites", True)
    settings = TlsSettings(
        cert_file=cert_file,
        key_file=key_file,
        client_ca_file=client_ca_file,
        client_auth=client_auth,
        client_allowed_sans=sans,
        min_version=min_version,
        max_version=max_version,
        cipher_suites=_cipher_suites(section.get("cipher_suites")),
        prefer_server_cipher_suites=_boolean(
            prefer, "tls_server_config.prefer_server_cipher_suites"
        ),
    )
    build_ssl_context(settings)  # the files must hold a certificate and its key
    return settings


def _users(value: object) -> dict[str, bytes]:
    name = "basic_auth_users"
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(name, f"must map user names to bcrypt hashes, not {_type(value)}")
    users: dict[str, bytes] = {}
    for user, hashed in value.items():
        if not isinstance(user, str) or not user:
            raise WebConfigError(name, f"user name {user!r} must be a non-empty string")
        field_name = f"{name}.{user}"
        if ":" in user:
            raise WebConfigError(field_name, "a basic-auth user name cannot contain ':'")
        text = _string(hashed, field_name)
        match = _BCRYPT_HASH.fullmatch(text)
        if match is None:
            raise WebConfigError(
                field_name,
                "is not a bcrypt hash: store passwords hashed, never in clear "
                "(e.g. htpasswd -nBC 10 '' | tr -d ':\\n')",
            )
        if not _BCRYPT_MIN_COST <= int(match[1]) <= _BCRYPT_MAX_COST:
            raise WebConfigError(field_name, f"bcrypt cost {match[1]} is out of range 04-31")
        users[user] = text.encode()
    return users


def _headers(value: object) -> dict[str, str]:
    name = "http_server_config.headers"
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(name, f"must be a mapping, not {_type(value)}")
    canonical = {header.lower(): header for header in ALLOWED_HEADERS}
    headers: dict[str, str] = {}
    for header, header_value in value.items():
        field_name = f"{name}.{header}"
        allowed_name = canonical.get(str(header).lower())
        if allowed_name is None:
            raise WebConfigError(
                field_name,
                f"cannot be configured (allowed: {', '.join(ALLOWED_HEADERS)})",
            )
        text = _string(header_value, field_name)
        if not _HEADER_VALUE.fullmatch(text):
            raise WebConfigError(field_name, "must be one line of printable ASCII")
        allowed_values = ALLOWED_HEADERS[allowed_name]
        if allowed_values is not None and text not in allowed_values:
            raise WebConfigError(field_name, f"must be one of {', '.join(allowed_values)}")
        if text:  # blank means unset
            headers[allowed_name] = text
    return headers


def _type(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error)


# -- TLS ----------------------------------------------------------------------------------


def _refuse_key_password() -> bytes:
    raise WebConfigError(
        "tls_server_config.key_file", "is encrypted; guestload needs an unencrypted key file"
    )


def build_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """A server context for ``tls``; raises :class:`WebConfigError` naming the bad file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = tls.min_version
    context.maximum_version = tls.max_version
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.cipher_suites:
        try:
            context.set_ciphers(":".join(tls.cipher_suites))
        except ssl.SSLError:
            raise WebConfigError(
                "tls_server_config.cipher_suites", "none of these suites is available in OpenSSL"
            ) from None
    context.set_alpn_protocols(["http/1.1"])
    try:
        has_certificate = b"-----BEGIN CERTIFICATE-----" in tls.cert_file.read_bytes()
    except OSError as error:
        raise WebConfigError("tls_server_config.cert_file", _reason(error)) from None
    if not has_certificate:
        raise WebConfigError(
            "tls_server_config.cert_file", f"{tls.cert_file} holds no PEM certificate"
        )
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file, password=_refuse_key_password)
    except ssl.SSLError as error:
        raise WebConfigError(
            "tls_server_config.key_file",
            f"{tls.cert_file} and {tls.key_file} are not a certificate and its key "
            f"({error.reason or error})",
        ) from None
    except OSError as error:
        raise WebConfigError("tls_server_config.cert_file", _reason(error)) from None
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (ssl.SSLError, OSError) as error:
            raise WebConfigError(
                "tls_server_config.client_ca_file",
                f"{tls.client_ca_file} holds no usable CA certificate ({_reason(error)})",
            ) from None
        context.verify_mode = (
            ssl.CERT_REQUIRED
            if tls.client_auth is ClientAuth.REQUIRE_AND_VERIFY_CLIENT_CERT
            else ssl.CERT_OPTIONAL
        )
    return context


def peer_has_allowed_san(peer_certificate: Mapping[str, Any], allowed: tuple[str, ...]) -> bool:
    """True when a verified client certificate names one of ``allowed`` in its SANs.

    DNS names, e-mail addresses and URIs compare as written; IP addresses as addresses
    (``2001:db8::1`` matches OpenSSL's ``2001:DB8:0:0:0:0:0:1``).
    """
    names = {_san_key(str(value)) for _kind, value in peer_certificate.get("subjectAltName", ())}
    return any(_san_key(san) in names for san in allowed)


def _san_key(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value


# -- basic authentication -----------------------------------------------------------------


class BasicAuthenticator:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    bcrypt is slow on purpose (~100 ms at cost 12), so successful checks are remembered in a
    small LRU cache keyed by an HMAC (with a per-process random key) of user, stored hash and
    password: the cache holds no password, a changed hash never matches an old entry, and
    failed attempts are never cached. bcrypt runs one check at a time, so a flood of wrong
    passwords costs at most one core.
    """

    def __init__(self, users: Mapping[str, bytes], *, cache_size: int = AUTH_CACHE_SIZE) -> None:
        self._users = dict(users)
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def check(self, authorization: str | None) -> bool:
        """True when the header names a configured user with the right password."""
        credentials = _basic_credentials(authorization)
        if credentials is None:
            return False
        user, password = credentials
        stored = self._users.get(user)
        key = hmac.digest(
            self._cache_key,
            b"\0".join((user.encode(), stored or b"", password)),
            hashlib.sha256,
        )
        with self._lock:
            if stored is not None and key in self._cache:
                self._cache.move_to_end(key)
                return True
        with self._bcrypt_lock:
            matches = bcrypt.checkpw(password, stored or _decoy_hash())
        if not (matches and stored is not None):
            return False
        with self._lock:
            self._cache[key] = None
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return True


@functools.cache
def _decoy_hash() -> bytes:
    """A hash of a password nobody has: unknown users cost the same bcrypt time as known ones."""
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=10))


def _basic_credentials(authorization: str | None) -> tuple[str, bytes] | None:
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


# -- what the server uses, and reloading ----------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSecurity:
    """A configuration made ready to serve: TLS context, authenticator, extra headers."""

    ssl_context: ssl.SSLContext | None = None
    client_allowed_sans: tuple[str, ...] = ()
    authenticator: BasicAuthenticator | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_config(cls, config: WebConfig) -> WebSecurity:
        return cls(
            ssl_context=build_ssl_context(config.tls) if config.tls else None,
            client_allowed_sans=config.tls.client_allowed_sans if config.tls else (),
            authenticator=(
                BasicAuthenticator(config.basic_auth_users) if config.basic_auth_users else None
            ),
            headers=tuple(config.headers.items()),
        )


PLAIN_HTTP: Final = WebSecurity()
"""No TLS, no authentication, no extra headers: serving without ``--web.config.file``."""

_Fingerprint = tuple[tuple[str, int, int, int], ...]


def _fingerprint(paths: tuple[Path, ...]) -> _Fingerprint:
    """What changes when a file is rewritten or a symlink swapped (as Kubernetes secrets are)."""
    marks = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            marks.append((str(path), -1, -1, -1))
        else:
            marks.append((str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino))
    return tuple(marks)


class WebConfigReloader:
    """Holds the active :class:`WebSecurity` and replaces it when the configuration changes.

    The constructor loads the file and raises :class:`WebConfigError` if it is unusable. After
    :meth:`start`, a thread re-reads it when :meth:`request_reload` is called (safe from a
    signal handler) and when the file or a certificate file it names changes and then stays
    unchanged for one check interval (so a file caught half-written is not read). A new file
    that fails validation, is empty while the active configuration is not (a truncated file
    must not switch authentication off), or would turn TLS on or off (that needs a restart)
    is logged and the old configuration stays.
    """

    def __init__(
        self,
        path: Path,
        *,
        check_interval_seconds: float = DEFAULT_CHECK_INTERVAL_SECONDS,
        loader: Callable[[Path], WebConfig] = load_web_config,
    ) -> None:
        self.path = path
        self._interval = check_interval_seconds
        self._loader = loader
        config = loader(path)
        self._config = config
        self._security = WebSecurity.from_config(config)
        self._watched = self._files(config)
        self._fingerprint = _fingerprint(self._watched)
        self._requested = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0
        """Successful reloads since start."""
        self.failures = 0
        """Reloads refused since start."""
        if config.basic_auth_users and config.tls is None:
            log.warning(
                "basic authentication without TLS sends passwords in clear text",
                extra={"file": str(path)},
            )

    @property
    def current(self) -> WebSecurity:
        return self._security

    def request_reload(self) -> None:
        """Ask the reloader thread to re-read the file now (e.g. on SIGHUP)."""
        self._requested.set()

    def reload(self, *, reason: str) -> bool:
        """Re-read the file now; True when the new configuration is active."""
        before = _fingerprint(self._watched)
        try:
            config = self._loader(self.path)
            if config == WebConfig() and self._config != WebConfig():
                raise WebConfigError(
                    str(self.path), "is empty; write it atomically, or restart to serve without it"
                )
            if (config.tls is None) != (self._config.tls is None):
                raise WebConfigError(
                    "tls_server_config", "turning TLS on or off needs a restart of guestload"
                )
            security = WebSecurity.from_config(config)
        except WebConfigError as error:
            self.failures += 1
            self._fingerprint = before
            log.error(
                "web config not reloaded; keeping the previous one",
                extra={"file": str(self.path), "reason": reason, "err": str(error)},
            )
            return False
        self._config, self._security = config, security
        watched = self._files(config)
        self._fingerprint = before if watched == self._watched else _fingerprint(watched)
        self._watched = watched
        self.reloads += 1
        log.info("web config reloaded", extra={"file": str(self.path), "reason": reason})
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="guestload-webconfig", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._requested.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        changing: _Fingerprint | None = None
        while not self._stopped.is_set():
            requested = self._requested.wait(self._interval)
            if self._stopped.is_set():
                return
            if requested:
                self._requested.clear()
                self.reload(reason="signal")
                changing = None
                continue
            now = _fingerprint(self._watched)
            if now == self._fingerprint:
                changing = None
            elif now == changing:  # changed, then quiet for one interval
                self.reload(reason="file changed")
                changing = None
            else:
                changing = now

    def _files(self, config: WebConfig) -> tuple[Path, ...]:
        return (self.path, *(config.tls.files() if config.tls else ()))
