"""Routing and replies without a socket: which reply a path gets, and its computed headers.

The same replies on a real socket are tested in tests/web/test_server.py."""

from __future__ import annotations

import gzip
from http import HTTPStatus

import pytest

from guestload.exposition.cache import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, MetricsCache
from guestload.exposition.schema import MetricSet
from guestload.model import Snapshot
from guestload.web.replies import (
    BUSY,
    HTTP_TO_HTTPS,
    METHOD_NOT_ALLOWED,
    UNAUTHORIZED,
    Reply,
    header_fields,
    raw_reply,
    text_reply,
)
from guestload.web.request import RequestHeaders
from guestload.web.routes import WebApp, route
from tests.unit.fakes import LOAD_ONLY


def _app(*, ready: bool = False) -> WebApp:
    cache = MetricsCache(metric_set=MetricSet(queries=LOAD_ONLY, vcpu_collector=True))
    cache.update(Snapshot(source_up=True, polls_total=1))
    return WebApp(cache=cache, is_ready=lambda: ready, telemetry_path="/metrics")


def _headers(**fields: str) -> RequestHeaders:
    return RequestHeaders({name.replace("_", "-"): value for name, value in fields.items()})


def _fields(reply: Reply) -> dict[str, str]:
    return dict(header_fields(reply))


@pytest.mark.parametrize(
    ("target", "ready", "status", "body"),
    [
        ("/healthz", False, HTTPStatus.OK, b"ok\n"),
        ("/healthz?verbose=1", False, HTTPStatus.OK, b"ok\n"),
        ("/readyz", True, HTTPStatus.OK, b"ready\n"),
        (
            "/readyz",
            False,
            HTTPStatus.SERVICE_UNAVAILABLE,
            b"not ready: hypervisor connection down or no successful poll yet\n",
        ),
        ("/nope", False, HTTPStatus.NOT_FOUND, b"not found\n"),
        ("/metrics/", False, HTTPStatus.NOT_FOUND, b"not found\n"),
    ],
)
def test_each_path_gets_its_reply(
    target: str, ready: bool, status: HTTPStatus, body: bytes
) -> None:
    reply = route(_app(ready=ready), target, _headers())
    assert (reply.status, b"".join(reply.body)) == (status, body)
    assert _fields(reply)["Content-Type"] == "text/plain; charset=utf-8"
    assert _fields(reply)["Content-Length"] == str(len(body))


def test_the_landing_page_links_the_telemetry_path() -> None:
    app = _app()
    app = WebApp(cache=app.cache, is_ready=app.is_ready, telemetry_path="/m?<x>")
    reply = route(app, "/", _headers())
    page = b"".join(reply.body)
    assert b'<a href="/m?&lt;x&gt;">Metrics</a>' in page
    assert _fields(reply) == {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Length": str(len(page)),
    }


def test_metrics_are_negotiated_and_their_length_counts_every_piece() -> None:
    app = _app()
    plain = route(app, "/metrics", _headers())
    assert _fields(plain)["Content-Type"] == TEXT_CONTENT_TYPE
    assert "Content-Encoding" not in _fields(plain)
    packed = route(
        app,
        "/metrics",
        _headers(Accept="application/openmetrics-text; version=1.0.0", Accept_Encoding="gzip"),
    )
    assert len(packed.body) > 1  # the cached piece and the live one
    assert _fields(packed)["Content-Type"] == OPENMETRICS_CONTENT_TYPE
    assert _fields(packed)["Content-Encoding"] == "gzip"
    assert _fields(packed)["Content-Length"] == str(sum(len(part) for part in packed.body))
    assert gzip.decompress(b"".join(packed.body)).endswith(b"# EOF\n")


@pytest.mark.parametrize("reply", [METHOD_NOT_ALLOWED, UNAUTHORIZED, BUSY, HTTP_TO_HTTPS])
def test_a_refusal_s_length_is_its_body_s(reply: Reply) -> None:
    assert _fields(reply)["Content-Length"] == str(len(b"".join(reply.body)))


def test_refusals_say_what_a_client_needs_to_retry() -> None:
    assert _fields(METHOD_NOT_ALLOWED)["Allow"] == "GET, HEAD"
    assert _fields(UNAUTHORIZED)["WWW-Authenticate"] == 'Basic realm="guestload"'
    assert _fields(BUSY)["Retry-After"] == "1"
    assert header_fields(BUSY)[-1] == ("Connection", "close")
    assert "Connection" not in _fields(UNAUTHORIZED)


def test_a_raw_reply_is_a_complete_http_1_0_answer() -> None:
    assert raw_reply(HTTP_TO_HTTPS) == (
        b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 47\r\n"
        b"Connection: close\r\n\r\nclient sent an HTTP request to an HTTPS server\n"
    )
    odd = Reply(status=HTTPStatus.BAD_REQUEST, body=(b"x",), reason="Bad request syntax ('?')")
    assert raw_reply(odd).startswith(b"HTTP/1.0 400 Bad request syntax ('?')\r\n")
    assert text_reply(HTTPStatus.OK, "é\n").body == ("é\n".encode(),)
