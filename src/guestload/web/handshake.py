"""TLS handshakes within the request deadline, and the answer to plain HTTP on the TLS port."""

from __future__ import annotations

import contextlib
import logging
import math
import select
import socket
import ssl
import time

from guestload.web.refusals import Refusal, RefusalLog
from guestload.web.reload import WebSecurity
from guestload.web.replies import HTTP_TO_HTTPS, raw_reply
from guestload.web.tls import peer_has_allowed_san

log = logging.getLogger(__name__)

_TLS_HANDSHAKE_RECORD = 0x16
_HTTP_TO_HTTPS_BYTES = raw_reply(HTTP_TO_HTTPS)


def start_tls(
    raw: socket.socket,
    security: WebSecurity,
    *,
    deadline: float,
    client: str,
    refusals: RefusalLog,
) -> tuple[socket.socket, bool]:
    """The connection to use and close, and whether a TLS handshake finished by ``deadline``.

    ``security`` has a TLS context. The caller closes the connection either way.
    """
    context = security.ssl_context
    assert context is not None
    if not _looks_like_tls(raw, deadline, client=client, refusals=refusals):
        return raw, False
    tls = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
    tls.setblocking(False)
    poller = select.poll()
    poller.register(tls, select.POLLIN)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("TLS handshake not finished within the request timeout")
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                poller.modify(tls, select.POLLIN)
            except ssl.SSLWantWriteError:
                poller.modify(tls, select.POLLOUT)
            poller.poll(math.ceil(remaining * 1000))
        if security.client_allowed_sans and not peer_has_allowed_san(
            tls.getpeercert() or {}, security.client_allowed_sans
        ):
            raise ssl.SSLError("client certificate names none of client_allowed_sans")
    except OSError as error:
        if isinstance(error, TimeoutError):
            refusals.record(Refusal.REQUEST_TIMEOUT, client=client)
        log.debug("TLS handshake failed", extra={"client": client, "err": str(error)})
        return tls, False
    tls.setblocking(True)
    return tls, True


def _looks_like_tls(
    raw: socket.socket, deadline: float, *, client: str, refusals: RefusalLog
) -> bool:
    """Peek at the first byte: a plain HTTP request to the TLS port gets a 400 and no more."""
    raw.settimeout(max(deadline - time.monotonic(), 0.001))
    try:
        first = raw.recv(1, socket.MSG_PEEK)
    except TimeoutError:
        refusals.record(Refusal.REQUEST_TIMEOUT, client=client)
        return False
    except OSError:
        return False
    if not first:
        return False
    if first[0] != _TLS_HANDSHAKE_RECORD:
        with contextlib.suppress(OSError):
            raw.sendall(_HTTP_TO_HTTPS_BYTES)
        return False
    return True
