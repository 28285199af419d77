"""Replies: what the endpoint answers, and the one function that computes their headers.

Every answer, from a scrape's 200 to a refusal's 503 and the 400 a plain HTTP request to the
TLS port gets, is a :class:`Reply`; :func:`header_fields` derives its ``Content-Type``,
``Content-Length`` (from the body, never written by hand) and ``Connection`` fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from guestload.web.basic_auth import BASIC_AUTH_REALM

PLAIN_TEXT: Final = "text/plain; charset=utf-8"
HTML: Final = "text/html; charset=utf-8"


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """One answer: status, body (in pieces, sent as they are) and its own header fields."""

    status: HTTPStatus
    body: tuple[bytes, ...]
    content_type: str = PLAIN_TEXT
    headers: tuple[tuple[str, str], ...] = ()
    """Fields beyond those :func:`header_fields` computes, in order."""
    close: bool = False
    """Say ``Connection: close`` (a refusal: the client should not reuse the connection)."""
    reason: str = ""
    """The status line's reason phrase when not the status's own (the request errors the
    standard library finds name what was wrong there)."""

    @property
    def length(self) -> int:
        return sum(len(part) for part in self.body)


def text_reply(
    status: HTTPStatus,
    text: str,
    *,
    headers: tuple[tuple[str, str], ...] = (),
    close: bool = False,
) -> Reply:
    """A plain-text reply of ``text`` (UTF-8)."""
    return Reply(status=status, body=(text.encode(),), headers=headers, close=close)


def header_fields(reply: Reply) -> tuple[tuple[str, str], ...]:
    """The reply's header fields: type, length of the whole body, its own, ``Connection``."""
    fields = (
        ("Content-Type", reply.content_type),
        ("Content-Length", str(reply.length)),
        *reply.headers,
    )
    return (*fields, ("Connection", "close")) if reply.close else fields


def head_bytes(protocol: str, reply: Reply, fields: tuple[tuple[str, str], ...]) -> bytes:
    """The status line of ``reply`` and ``fields``, up to and with the blank line."""
    status = f"{protocol} {reply.status.value} {reply.reason or reply.status.phrase}\r\n"
    head = "".join(f"{name}: {value}\r\n" for name, value in fields)
    return (status + head + "\r\n").encode("latin-1")


def raw_reply(reply: Reply) -> bytes:
    """The reply as HTTP/1.0 bytes, for a socket no HTTP handler serves (no ``Server``
    or ``Date`` field)."""
    return head_bytes("HTTP/1.0", reply, header_fields(reply)) + b"".join(reply.body)


METHOD_NOT_ALLOWED: Final = text_reply(
    HTTPStatus.METHOD_NOT_ALLOWED,
    "method not allowed\n",
    headers=(("Allow", "GET, HEAD"),),
    close=True,
)
UNAUTHORIZED: Final = text_reply(
    HTTPStatus.UNAUTHORIZED,
    "unauthorized\n",
    headers=(("WWW-Authenticate", f'Basic realm="{BASIC_AUTH_REALM}"'),),
)
BUSY: Final = text_reply(
    HTTPStatus.SERVICE_UNAVAILABLE,
    "too many concurrent calls\n",
    headers=(("Retry-After", "1"),),
    close=True,
)
HTTP_TO_HTTPS: Final = Reply(
    status=HTTPStatus.BAD_REQUEST,
    body=(b"client sent an HTTP request to an HTTPS server\n",),
    content_type="text/plain",
    close=True,
)
"""What a plain HTTP request to the TLS port gets, before any handshake."""
