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

import logging
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from guestload.web.errors import WebConfigError, error_reason
from guestload.web.tls import ClientAuth, TlsSettings, build_ssl_context

log = logging.getLogger(__name__)


MAX_FILE_BYTES: Final = 1 << 20
"""Largest web configuration file read (a real one is well under a kilobyte)."""

# A bcrypt hash as htpasswd -B, Go's bcrypt and the bcrypt package write it: $2a$, $2b$ or $2y$,
# a two-digit cost, 22 characters of salt and 31 of hash in bcrypt's base64 alphabet.
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_BCRYPT_MIN_COST, _BCRYPT_MAX_COST = 4, 31

_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")


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
class WebConfig:
    """A validated web configuration."""

    tls: TlsSettings | None = None
    basic_auth_users: Mapping[str, bytes] = field(default_factory=dict)
    """User name -> bcrypt hash."""
    headers: Mapping[str, str] = field(default_factory=dict)


# -- parsing ------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """A safe YAML loader that reads scalars as Go's YAML library fills string fields.

    Every scalar is kept as the text written (``X-XSS-Protection: 1`` is the string ``1``, a
    user named ``yes`` stays ``yes``, ``1.0`` stays ``1.0``); only the null forms read as
    None. Duplicate keys are refused instead of keeping the last one.
    """


class _PlainText(str):
    """An unquoted scalar: the only kind YAML 1.1 lets mean true or false."""

    __slots__ = ()


#: The words Go's YAML library (v2, YAML 1.1) reads as true and false, unquoted only.
_YAML_TRUE: Final = frozenset(
    ("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON")
)
_YAML_FALSE: Final = frozenset(
    ("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF")
)


def _construct_text(loader: _StrictLoader, node: yaml.Node) -> str | None:
    if not isinstance(node, yaml.ScalarNode):
        raise yaml.constructor.ConstructorError(None, None, "expected a scalar", node.start_mark)
    if node.tag == "tag:yaml.org,2002:null":
        return None
    text = str(loader.construct_scalar(node))
    return _PlainText(text) if node.style is None else text


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | None):
            raise yaml.constructor.ConstructorError(
                None, None, f"a key must be a scalar, not a {key_node.id}", key_node.start_mark
            )
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
for _tag in ("null", "bool", "int", "float", "timestamp", "str"):
    _StrictLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _construct_text)


def load_web_config(path: Path) -> WebConfig:
    """Read and validate the file at ``path``; raises :class:`WebConfigError`."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES or not path.is_file():
            raise WebConfigError(str(path), f"must be a regular file under {MAX_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise WebConfigError(str(path), f"cannot read: {error_reason(error)}") from None
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
    if isinstance(value, _PlainText) and value in _YAML_TRUE:
        return True
    if isinstance(value, _PlainText) and value in _YAML_FALSE:
        return False
    if isinstance(value, str):
        raise WebConfigError(name, f"must be true or false (unquoted), not {value!r}")
    raise WebConfigError(name, f"must be true or false, not {_type(value)}")


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
    prefer = section.get("prefer_server_cipher_suites", _PlainText("true"))
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
        text = "" if header_value is None else _string(header_value, field_name)
        if not _HEADER_VALUE.fullmatch(text):
            raise WebConfigError(field_name, "must be one line of printable ASCII")
        allowed_values = ALLOWED_HEADERS[allowed_name]
        if allowed_values is not None and text not in allowed_values:
            raise WebConfigError(field_name, f"must be one of {', '.join(allowed_values)}")
        if text:  # blank means unset
            headers[allowed_name] = text
    return headers


def _type(value: object) -> str:
    if value is None:
        return "nothing"
    return "str" if isinstance(value, str) else type(value).__name__
