"""The pool that socket calls run on: a call abandoned at its deadline gives up its place."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

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


def quick_call() -> str:
    return "quick"


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def narrow(clock: Clock) -> Iterator[CallPool]:
    calls = CallPool(workers=3, name="test-narrow", widen_after=0.25, clock=clock)
    yield calls
    calls.close()


def test_a_narrow_pool_runs_quick_calls_one_after_another_on_one_thread(narrow: CallPool) -> None:
    running = 0
    most = 0
    threads: set[int] = set()
    lock = threading.Lock()

    def call() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            threads.add(threading.get_ident())
        with lock:
            running -= 1

    futures = narrow.submit_all([call] * 20)
    for future in futures:
        future.result(timeout=WAIT)
    assert most == 1
    assert len(threads) == 1, "each call woke another worker"
    assert narrow.width == 1


def test_a_call_running_past_widen_after_lets_one_more_worker_in(
    narrow: CallPool, clock: Clock
) -> None:
    blocked = Blocked()
    calls: list[Callable[[], str]] = [blocked, quick_call]
    stuck, quick = narrow.submit_all(calls)
    assert blocked.started.wait(WAIT)
    assert narrow.widen() == 0, "widened before the call was slow"
    assert not quick.done()
    clock.now += 0.25
    assert narrow.widen() == 1
    assert quick.result(timeout=WAIT) == "quick"
    assert narrow.widen() == 0, "one slow call widened the pool twice"
    assert narrow.width == 2
    blocked.release.set()
    assert stuck.result(timeout=WAIT) == "late"


def test_the_worker_a_slow_call_let_in_leaves_when_that_call_ends(
    narrow: CallPool, clock: Clock
) -> None:
    blocked = Blocked()
    stuck = narrow.submit(blocked)
    assert blocked.started.wait(WAIT)
    clock.now += 1.0
    narrow.widen()
    assert narrow.width == 2
    blocked.release.set()
    stuck.result(timeout=WAIT)
    assert narrow.width == 1
    again = Blocked()
    calls: list[Callable[[], str]] = [again, quick_call]
    second, quick = narrow.submit_all(calls)
    assert again.started.wait(WAIT)
    assert not quick.done(), "a quick call ran beside a call not yet slow"
    again.release.set()
    assert quick.result(timeout=WAIT) == "quick"
    assert second.result(timeout=WAIT) == "late"


def test_an_abandoned_slow_call_gives_its_place_back(narrow: CallPool, clock: Clock) -> None:
    blocked = Blocked()
    stuck = narrow.submit(blocked)
    assert blocked.started.wait(WAIT)
    clock.now += 1.0
    narrow.widen()
    narrow.abandon(stuck)
    assert narrow.width == 1
    assert narrow.submit(lambda: "quick").result(timeout=WAIT) == "quick"
    blocked.release.set()
    assert stuck.result(timeout=WAIT) == "late"


def test_the_width_never_passes_the_workers(narrow: CallPool, clock: Clock) -> None:
    blocks = [Blocked() for _ in range(4)]
    futures = narrow.submit_all(blocks)
    for number, blocked in enumerate(blocks[:3]):
        assert blocked.started.wait(WAIT)
        clock.now += 1.0
        assert narrow.widen() == (1 if number < 2 else 0)
    assert narrow.width == 3
    assert not blocks[3].started.is_set(), "a fourth call ran beside three on three workers"
    for blocked in blocks:
        blocked.release.set()
    for future in futures:
        assert future.result(timeout=WAIT) == "late"


def test_closing_cancels_queued_calls(pool: CallPool) -> None:
    blocked = Blocked()
    pool.submit(blocked)
    assert blocked.started.wait(WAIT)
    queued = pool.submit(lambda: "never")
    pool.close()
    assert queued.cancelled()
    blocked.release.set()
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(lambda: None)


def test_calls_submitted_wide_run_side_by_side_until_the_pool_is_idle(narrow: CallPool) -> None:
    first, second = Blocked(), Blocked()
    futures = narrow.submit_all([first, second], wide=True)
    assert first.started.wait(WAIT)
    assert second.started.wait(WAIT), "a wide call waited behind a running one"
    first.release.set()
    second.release.set()
    for future in futures:
        assert future.result(timeout=WAIT) == "late"
    assert narrow.width == 1


def test_calls_waiting_in_the_queue_past_widen_after_let_one_more_worker_in(
    narrow: CallPool, clock: Clock
) -> None:
    first, second = Blocked(), Blocked()
    calls: list[Callable[[], str]] = [first, second, quick_call]
    futures = narrow.submit_all(calls)
    assert first.started.wait(WAIT)
    clock.now += 0.1
    assert narrow.widen() == 0
    first.release.set()
    assert futures[0].result(timeout=WAIT) == "late"
    assert second.started.wait(WAIT)
    clock.now += 0.15  # the quick call has waited 0.25 s; the second call ran for 0.15 s
    assert narrow.widen() == 1
    assert futures[2].result(timeout=WAIT) == "quick"
    second.release.set()
    assert futures[1].result(timeout=WAIT) == "late"
