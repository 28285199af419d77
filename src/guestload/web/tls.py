"""TLS for the HTTP endpoint: the validated ``tls_server_config`` and its server context."""

from __future__ import annotations

import enum
import ipaddress
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guestload.web.errors import WebConfigError, error_reason

log = logging.getLogger(__name__)


class ClientAuth(enum.StrEnum):
    """``client_auth_type`` values guestload accepts."""

    NO_CLIENT_CERT = "NoClientCert"
    VERIFY_CLIENT_CERT_IF_GIVEN = "VerifyClientCertIfGiven"
    REQUIRE_AND_VERIFY_CLIENT_CERT = "RequireAndVerifyClientCert"


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
    # Python's server contexts start with the server's order on; false must turn it off.
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
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
        raise WebConfigError("tls_server_config.cert_file", error_reason(error)) from None
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
        raise WebConfigError("tls_server_config.cert_file", error_reason(error)) from None
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (ssl.SSLError, OSError) as error:
            raise WebConfigError(
                "tls_server_config.client_ca_file",
                f"{tls.client_ca_file} holds no usable CA certificate ({error_reason(error)})",
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
