"""The pool that socket calls run on: a call abandoned at its deadline gives up its place."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from guestload.sources.deadline_calls import CallPool

WAIT = 10.0
"""Seconds a test waits for an event before failing (never reached when the pool works)."""


@pytest.fixture
def pool() -> Iterator[CallPool]:
    calls = CallPool(workers=1, name="test-calls")
    yield calls
    calls.close()


class Blocked:
    """A call that blocks until released, as a call to a hung daemon does."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> str:
        self.started.set()
        assert self.release.wait(WAIT)
        return "late"


def test_an_abandoned_running_call_is_replaced_by_a_new_worker(pool: CallPool) -> None:
    blocked = Blocked()
    stuck = pool.submit(blocked)
    assert blocked.started.wait(WAIT)
    pool.wait([stuck], 0.0)
    assert not stuck.done()
    pool.abandon(stuck)
    assert pool.threads == 2
    assert pool.submit(lambda: "quick").result(timeout=WAIT) == "quick"
    blocked.release.set()
    assert stuck.result(timeout=WAIT) == "late", "the abandoned call still ends"


def test_abandoning_a_call_twice_starts_one_worker(pool: CallPool) -> None:
    blocked = Blocked()
    stuck = pool.submit(blocked)
    assert blocked.started.wait(WAIT)
    pool.abandon(stuck)
    pool.abandon(stuck)
    assert pool.threads == 2
    blocked.release.set()


def test_an_abandoned_queued_call_is_cancelled_without_a_new_worker(pool: CallPool) -> None:
    blocked = Blocked()
    pool.submit(blocked)
    assert blocked.started.wait(WAIT)
    queued = pool.submit(lambda: "never")
    pool.abandon(queued)
    assert queued.cancelled()
    assert pool.threads == 1
    blocked.release.set()


def test_an_abandoned_finished_call_changes_nothing(pool: CallPool) -> None:
    done = pool.submit(lambda: 1)
    assert done.result(timeout=WAIT) == 1
    pool.abandon(done)
    assert pool.threads == 1


def test_exceptions_land_in_the_future(pool: CallPool) -> None:
    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        pool.submit(fail).result(timeout=WAIT)
