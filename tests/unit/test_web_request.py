"""The request head: ``http.server``'s refusals and fields, without its email parser."""

from __future__ import annotations

import http.client
import io
from http import HTTPStatus

import pytest

from guestload.web.request import (
    MAX_FIELDS,
    MAX_LINE,
    BadRequestError,
    RequestLine,
    parse_header_lines,
    parse_request_line,
    read_header_lines,
)


def _line(text: str) -> RequestLine | None:
    return parse_request_line(text, default_version="HTTP/1.0")


def test_a_request_line_gives_method_target_and_version() -> None:
    assert _line("GET /metrics?x=1 HTTP/1.1") == RequestLine("GET", "/metrics?x=1", "HTTP/1.1")
    assert _line("GET /metrics") == RequestLine("GET", "/metrics", "HTTP/1.0")
    assert _line("GET //evil.example/x HTTP/1.1") == RequestLine(
        "GET", "/evil.example/x", "HTTP/1.1"
    )
    assert _line("   ") is None


@pytest.mark.parametrize(
    ("line", "status", "reason"),
    [
        ("GET /metrics HTTP/1.x", 400, "Bad request version ('HTTP/1.x')"),
        ("GET /metrics HTTP/1.1.1", 400, "Bad request version ('HTTP/1.1.1')"),
        ("GET /metrics FTP/1.1", 400, "Bad request version ('FTP/1.1')"),
        ("GET /m HTTP/1." + "1" * 11, 400, "Bad request version ('HTTP/1." + "1" * 11 + "')"),
        ("GET /metrics HTTP/2.0", 505, "Invalid HTTP version (2.0)"),
        ("GET /metrics HTTP/1.1 extra", 400, "Bad request version ('extra')"),
        ("GET", 400, "Bad request syntax ('GET')"),
        ("POST /metrics", 400, "Bad HTTP/0.9 request type ('POST')"),
    ],
)
def test_a_bad_request_line_is_refused_as_http_server_refuses_it(
    line: str, status: int, reason: str
) -> None:
    with pytest.raises(BadRequestError) as refused:
        _line(line)
    assert (refused.value.status, refused.value.reason) == (HTTPStatus(status), reason)


def _head(*fields: bytes, end: bytes = b"\r\n") -> io.BytesIO:
    return io.BytesIO(b"".join(fields) + end + b"body, never read as fields\r\n")


@pytest.mark.parametrize("count", [MAX_FIELDS - 1, MAX_FIELDS])
def test_the_field_count_limit_is_http_clients(count: int) -> None:
    fields = [b"X-%d: 1\r\n" % i for i in range(count)]
    try:
        http.client.parse_headers(_head(*fields))
        allowed = True
    except http.client.HTTPException:
        allowed = False
    if allowed:
        assert len(read_header_lines(_head(*fields).readline)) == count
    else:
        with pytest.raises(BadRequestError, match="Too many headers"):
            read_header_lines(_head(*fields).readline)
    assert allowed == (count < MAX_FIELDS)


def test_a_header_line_over_the_limit_is_refused() -> None:
    fine = b"X-Big: " + b"b" * (MAX_LINE - 9) + b"\r\n"
    assert read_header_lines(_head(fine).readline) == [fine]
    with pytest.raises(BadRequestError, match="Line too long") as refused:
        read_header_lines(_head(b"X-Big: " + b"b" * MAX_LINE + b"\r\n").readline)
    assert refused.value.status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


def test_reading_stops_at_the_blank_line_or_the_end() -> None:
    stream = _head(b"Accept: text/plain\r\n")
    assert read_header_lines(stream.readline) == [b"Accept: text/plain\r\n"]
    assert stream.read() == b"body, never read as fields\r\n"
    assert read_header_lines(io.BytesIO(b"Accept: x\n").readline) == [b"Accept: x\n"]


HEADS = [
    [b"Accept: application/openmetrics-text; version=1.0.0\r\n", b"Accept-Encoding: gzip\r\n"],
    [b"accept-encoding:gzip  \r\n", b"ACCEPT-ENCODING: identity\r\n"],
    [b"Authorization: Basic dXNlcjpwYXNz\r\n", b"X-Other: 1\r\n"],
    [b"no colon here\r\n", b"Accept-Encoding: gzip\r\n"],
    [b"Bad Name: 1\r\n", b"Accept: text/plain\r\n"],
    [b"Accept-Encoding: \xe9t\xe9\r\n"],
    [b"Host: x\r\n", b"Accept: text/plain\r\n"],
    [],
]


@pytest.mark.parametrize("lines", HEADS)
def test_fields_are_those_the_email_parser_finds(lines: list[bytes]) -> None:
    stdlib = http.client.parse_headers(_head(*lines))
    ours = parse_header_lines(lines)
    for name in ("Accept", "accept-encoding", "Authorization", "Host", "X-Other", "Bad Name"):
        assert ours.get(name) == (stdlib.get(name) or "").strip(), name


def test_a_continuation_line_is_joined_with_a_space() -> None:
    fields = parse_header_lines([b"Accept: text/plain;\r\n", b"\tversion=0.0.4\r\n"])
    assert fields.get("accept") == "text/plain; version=0.0.4"
    fields = parse_header_lines([b" stray\r\n", b"Accept: a\r\n", b"Accept: b\r\n", b" c\r\n"])
    assert fields.get("Accept") == "a"
