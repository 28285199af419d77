"""A request's head, parsed without the standard library's email parser.

``http.server`` parses header fields with :mod:`email.parser` (0.25 ms of a scrape's 1.8 in the
served process, docs/performance.md); the endpoint reads three fields (``Accept``,
``Accept-Encoding``, ``Authorization``). Same refusals and limits as ``http.server``: a request
line it cannot take is a 400 (or 505 for HTTP/2 and later), a header line over 65,536 bytes or
more than 100 header lines a 431. Field names are case-insensitive and the first of a repeated
name counts, as with ``email.message.Message.get``; a line that is neither a field nor the
continuation of one ends the fields (the email parser takes the rest as a body), and a
continuation is joined to its field with a space (RFC 9112 section 5.2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

MAX_LINE: Final = 65536
"""The longest request or header line, as ``http.server`` and ``http.client`` allow."""
MAX_FIELDS: Final = 100
"""The most header lines, as ``http.client`` allows."""
_VERSION_DIGITS_MAX = 10
_NOT_A_NAME = frozenset(" \t\r\n\v\f")
_BLANKS = " \t"


@dataclass(frozen=True, slots=True)
class RequestLine:
    """A request line that can be answered."""

    method: str
    target: str
    version: str
    """``HTTP/x.y``, or the server's default for a two-word (HTTP/0.9 style) ``GET``."""


class BadRequestError(Exception):
    """A request head the server refuses: the status and the reason phrase to answer with."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_request_line(line: str, *, default_version: str) -> RequestLine | None:
    """The method, target and version of ``line`` (CR LF stripped); None when it is blank.

    :class:`BadRequestError` for what ``http.server`` refuses: a malformed or unknown version,
    HTTP/2 and later, other than two or three words, a two-word request other than ``GET``.
    """
    words = line.split()
    if not words:
        return None
    version = default_version
    if len(words) >= 3:
        version = words[-1]
        numbers = version[5:].split(".") if version.startswith("HTTP/") else []
        if (
            len(numbers) != 2
            or not all(number.isdigit() for number in numbers)
            or any(len(number) > _VERSION_DIGITS_MAX for number in numbers)
        ):
            raise BadRequestError(HTTPStatus.BAD_REQUEST, f"Bad request version ({version!r})")
        if int(numbers[0]) >= 2:
            raise BadRequestError(
                HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"Invalid HTTP version ({version[5:]})"
            )
    if not 2 <= len(words) <= 3:
        raise BadRequestError(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({line!r})")
    method, target = words[:2]
    if len(words) == 2 and method != "GET":
        raise BadRequestError(HTTPStatus.BAD_REQUEST, f"Bad HTTP/0.9 request type ({method!r})")
    if target.startswith("//"):  # not taken for a scheme-relative URL (gh-87389)
        target = "/" + target.lstrip("/")
    return RequestLine(method=method, target=target, version=version)


class RequestHeaders:
    """Header fields by case-insensitive name; the first of a repeated name counts."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, str] | None = None) -> None:
        self._fields = {name.lower(): value for name, value in (fields or {}).items()}

    def get(self, name: str, default: str = "") -> str:
        """The field ``name``'s value, or ``default`` when the request has none."""
        return self._fields.get(name.lower(), default)


def read_header_lines(readline: Callable[[int], bytes]) -> list[bytes]:
    """The header lines up to and without the blank one (or the end of the stream).

    :class:`BadRequestError` (431) for a line over :data:`MAX_LINE` bytes or more than
    :data:`MAX_FIELDS` lines, as ``http.server`` answers.
    """
    lines: list[bytes] = []
    while True:
        line = readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise BadRequestError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long")
        if line in (b"\r\n", b"\n", b""):
            return lines
        lines.append(line)
        if len(lines) >= MAX_FIELDS:  # http.client counts the blank line too
            raise BadRequestError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers")


def parse_header_lines(lines: list[bytes]) -> RequestHeaders:
    """The fields of ``lines`` (ISO-8859-1, as HTTP/1.1 takes them)."""
    fields: dict[str, str] = {}
    current: str | None = None
    """The field that continuation lines go to: None after a repeated one (not kept)."""
    for raw in lines:
        line = raw.decode("iso-8859-1").rstrip("\r\n")
        if line[:1] in (" ", "\t"):
            if current is not None:
                fields[current] = f"{fields[current]} {line.strip(_BLANKS)}".strip(_BLANKS)
            continue
        field, colon, value = line.partition(":")
        if not colon or not field or not _NOT_A_NAME.isdisjoint(field):
            break  # not a field: what follows is not read as fields
        current = field.lower()
        if current in fields:
            current = None  # a repeated field: the first counts
            continue
        fields[current] = value.strip(_BLANKS)
    return RequestHeaders(fields)
