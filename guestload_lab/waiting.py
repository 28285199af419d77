"""Polling until something holds: the one wait loop of the lab and its tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.5,
    what: str = "condition",
    detail: Callable[[], str] | None = None,
    error: type[Exception] = TimeoutError,
) -> T:
    """Call ``probe`` until it returns something other than None or False; return that.

    After ``timeout`` seconds raise ``error`` naming ``what``, followed by ``detail()`` (a log
    tail, say) when given. An exception raised by ``probe`` ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            message = f"{what} not reached within {timeout:g} s"
            raise error(message if detail is None else f"{message}\n{detail()}")
        time.sleep(interval)
