"""Warnings about clients the endpoint refused or cut, at most one a while per kind.

A flood of hostile clients must show in the log, but must not become a flood of log lines:
each kind of refusal is logged at warn level at most once per interval, with how many
refusals of that kind happened since the last line.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECONDS: Final = 10.0


class Refusal(enum.StrEnum):
    """Why a client got no answer, or a 503."""

    BUSY = "busy"
    """Every --web.max-requests slot was answering a request: 503."""
    EVICTED = "evicted"
    """Too many connections were open: the oldest was closed."""
    REQUEST_TIMEOUT = "request_timeout"
    """The TLS handshake or the request did not arrive within --web.request-timeout."""
    ANSWER_TIMEOUT = "answer_timeout"
    """The client did not take its answer within --web.request-timeout."""


_DESCRIPTIONS: Final = {
    Refusal.BUSY: "503: every request slot busy",
    Refusal.EVICTED: "closed: the oldest of too many open connections",
    Refusal.REQUEST_TIMEOUT: "closed: request not received in time",
    Refusal.ANSWER_TIMEOUT: "closed: answer not taken in time",
}


class RefusalLog:
    """Counts refusals and logs each kind at most once per ``interval_seconds``."""

    def __init__(
        self,
        *,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[Refusal, int] = {}
        self._last_logged: dict[Refusal, float] = {}

    def record(self, refusal: Refusal, *, client: str) -> None:
        now = self._clock()
        with self._lock:
            count = self._pending.get(refusal, 0) + 1
            last = self._last_logged.get(refusal)
            if last is not None and now - last < self._interval:
                self._pending[refusal] = count
                return
            self._pending[refusal] = 0
            self._last_logged[refusal] = now
        log.warning(
            "clients refused or cut",
            extra={
                "reason": refusal.value,
                "what": _DESCRIPTIONS[refusal],
                "count": count,
                "interval_seconds": self._interval,
                "last_client": client,
            },
        )
