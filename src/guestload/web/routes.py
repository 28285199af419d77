"""Routing: which reply a GET or HEAD of a path gets, and the pages behind the paths.

``/metrics`` (or ``--web.telemetry-path``) serves the cache, ``/healthz`` says the process
answers, ``/readyz`` whether a successful poll is being served, ``/`` links to them; any
other path is 404. Socket-free: :mod:`guestload.web.server` sends what :func:`route` answers.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from guestload import __version__
from guestload.exposition.cache import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, MetricsCache
from guestload.web.negotiation import accepts_gzip, accepts_openmetrics
from guestload.web.replies import HTML, Reply, text_reply
from guestload.web.request import RequestHeaders


@dataclass(frozen=True, slots=True, kw_only=True)
class WebApp:
    """What the endpoint serves: the metrics cache and the poller's readiness."""

    cache: MetricsCache
    is_ready: Callable[[], bool]
    telemetry_path: str


def route(app: WebApp, target: str, headers: RequestHeaders) -> Reply:
    """The reply to a GET (or, without its body, a HEAD) of ``target`` (query ignored)."""
    path = target.split("?", 1)[0]
    if path == app.telemetry_path:
        return _metrics(app.cache, headers)
    if path == "/":
        return Reply(status=HTTPStatus.OK, body=(_landing(app.telemetry_path),), content_type=HTML)
    if path == "/healthz":
        return text_reply(HTTPStatus.OK, "ok\n")
    if path == "/readyz":
        if app.is_ready():
            return text_reply(HTTPStatus.OK, "ready\n")
        return text_reply(
            HTTPStatus.SERVICE_UNAVAILABLE,
            "not ready: hypervisor connection down or no successful poll yet\n",
        )
    return text_reply(HTTPStatus.NOT_FOUND, "not found\n")


def _metrics(cache: MetricsCache, headers: RequestHeaders) -> Reply:
    openmetrics_format = accepts_openmetrics(headers.get("Accept", ""))
    gzip = accepts_gzip(headers.get("Accept-Encoding", ""))
    return Reply(
        status=HTTPStatus.OK,
        body=cache.render_parts(openmetrics_format=openmetrics_format, gzip=gzip),
        content_type=OPENMETRICS_CONTENT_TYPE if openmetrics_format else TEXT_CONTENT_TYPE,
        headers=(("Content-Encoding", "gzip"),) if gzip else (),
    )


def _landing(telemetry_path: str) -> bytes:
    path = html.escape(telemetry_path)
    return (
        "<!DOCTYPE html>\n<html><head><title>guestload</title></head><body>"
        f"<h1>guestload {html.escape(__version__)}</h1>"
        "<p>Guest load averages of libvirt VMs, read through the QEMU guest agent.</p>"
        f'<ul><li><a href="{path}">Metrics</a></li>'
        '<li><a href="/healthz">Health</a></li><li><a href="/readyz">Readiness</a></li></ul>'
        "</body></html>\n"
    ).encode()
