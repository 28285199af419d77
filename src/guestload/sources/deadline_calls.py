"""Calls waited for up to a deadline, on a pool that calls stuck past theirs cannot drain.

A libvirt call to a hung daemon (a SIGSTOPped virt-launcher, say) blocks until the
connection's keepalive gives up, and a connect to one may block for good. :class:`CallPool`
runs such calls on daemon worker threads; a caller that stops waiting for a running call
*abandons* it: the call keeps its thread until it ends, and a new worker takes that thread's
place, so the pool always has its full number of workers for the calls that do answer.
Daemon threads never delay the interpreter's exit, unlike ``ThreadPoolExecutor``'s: the
poller runs its guest-agent calls on a pool of its own for the same reason.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

_Job = tuple[Future[Any], Callable[[], Any], float]
"""A queued call: its future, the call, and when it was queued."""


class Calls(Protocol):
    """Where a source runs calls it waits for only up to a deadline."""

    def submit(self, call: Callable[[], T]) -> Future[T]:
        """Run ``call`` soon; its result or exception lands in the future."""
        ...

    def submit_all(
        self, calls: Sequence[Callable[[], T]], *, wide: bool = False
    ) -> list[Future[T]]:
        """Run ``calls`` soon, in order (``wide``: not known to be quick)."""
        ...

    def wait(self, futures: Collection[Future[Any]], seconds: float) -> None:
        """Return when every future is done, or after ``seconds``."""
        ...

    def widen(self) -> int:
        """Let more calls run at once if some are slow; how many more."""
        ...

    def abandon(self, future: Future[Any]) -> None:
        """Stop counting on ``future``: cancel it if it has not started, else let it run."""
        ...


class CallPool:
    """:class:`Calls` on ``workers`` daemon threads; abandoned running calls are replaced.

    With ``widen_after`` the pool is *narrow*: one worker at a time runs the queued calls, one
    after another, and another worker joins for each call that :meth:`widen` finds running
    longer than ``widen_after`` seconds, until that call ends or is abandoned, and each time
    it finds the next queued call waiting that long, until the pool is idle (up to ``workers``
    at once); calls submitted ``wide`` may all run at once. Calls that answer quickly then
    run on one thread, which neither wakes the others nor hands a shared connection between
    them, while a slow or hung call still holds only its own worker. Without ``widen_after``
    every worker takes calls as they come.
    """

    def __init__(
        self,
        *,
        workers: int,
        name: str,
        widen_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = name
        self._widen_after = widen_after
        self._clock = clock
        self._limit = workers
        self._narrowest = workers if widen_after is None else 1
        self._width = self._narrowest
        """How many calls may run at once now."""
        self._jobs: collections.deque[_Job] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._running: dict[Future[Any], float] = {}
        """Running calls not abandoned, and when each started."""
        self._widened_for: set[Future[Any]] = set()
        self._for_queue = 0
        """Workers let in because calls waited in the queue longer than ``widen_after``."""
        self._wide = False
        """Every worker takes calls until the pool is idle (``submit_all(wide=True)``)."""
        self._abandoned: set[Future[Any]] = set()
        self._started = 0
        self._closed = False
        for _ in range(workers):
            self._start_worker()

    @property
    def threads(self) -> int:
        """Worker threads alive: ``workers`` plus one per abandoned call still running."""
        with self._ready:
            return self._started

    @property
    def width(self) -> int:
        """How many calls may run at once now."""
        with self._ready:
            return self._width

    def submit(self, call: Callable[[], T]) -> Future[T]:
        (future,) = self.submit_all((call,))
        return future

    def submit_all(
        self, calls: Sequence[Callable[[], T]], *, wide: bool = False
    ) -> list[Future[T]]:
        """Queue ``calls`` in order and wake only the workers the pool's width lets run.

        ``wide`` opens every worker to calls until the pool is idle again (for calls not known
        to be quick).
        """
        futures: list[Future[T]] = [Future() for _ in calls]
        with self._ready:
            if self._closed:
                raise RuntimeError("pool is closed")
            if wide:
                self._wide = True
                self._rewidth()
            queued = self._clock()
            self._jobs.extend(
                (future, call, queued) for future, call in zip(futures, calls, strict=True)
            )
            free = self._width - len(self._running)
            if free > 0:
                self._ready.notify(min(free, len(calls)))
        return futures

    def wait(self, futures: Collection[Future[Any]], seconds: float) -> None:
        if futures:
            concurrent.futures.wait(futures, timeout=max(0.0, seconds))

    def widen(self) -> int:
        """Let one more call run at once for each call running longer than ``widen_after``
        (each counted once), or else one more if the next queued call has waited that long.

        Returns how many workers it let in.
        """
        if self._widen_after is None:
            return 0
        with self._ready:
            oldest_start = self._clock() - self._widen_after
            slow = [
                future
                for future, started in self._running.items()
                if started <= oldest_start and future not in self._widened_for
            ]
            before = self._width
            self._widened_for.update(slow)
            if not slow and self._jobs and self._jobs[0][2] <= oldest_start:
                self._for_queue += 1
            self._rewidth()
            added = self._width - before
            if added > 0 and self._jobs:
                self._ready.notify(added)
            return max(0, added)

    def abandon(self, future: Future[Any]) -> None:
        with self._ready:
            if future.cancel() or future not in self._running or future in self._abandoned:
                return
            self._abandoned.add(future)
            del self._running[future]
            self._widened_for.discard(future)
            self._rewidth()
            if not self._closed:
                self._start_worker_locked()

    def close(self) -> None:
        """Stop taking work; idle workers exit, busy ones after their call; queued calls are
        cancelled."""
        with self._ready:
            self._closed = True
            while self._jobs:
                self._jobs.popleft()[0].cancel()
            self._ready.notify_all()

    def _rewidth(self) -> None:
        """Set the width from what runs now (lock held)."""
        if self._wide:
            self._width = self._limit
        else:
            joined = len(self._widened_for) + self._for_queue
            self._width = min(self._limit, self._narrowest + joined)

    def _start_worker(self) -> None:
        with self._ready:
            self._start_worker_locked()

    def _start_worker_locked(self) -> None:
        self._started += 1
        thread = threading.Thread(
            target=self._work, name=f"{self._name}-{self._started}", daemon=True
        )
        thread.start()

    def _next_job(self) -> _Job | None:
        """The next call to run, once the pool's width lets one more run; None once closed."""
        with self._ready:
            while True:
                if self._closed:
                    self._started -= 1
                    return None
                if self._jobs and len(self._running) < self._width:
                    job = self._jobs.popleft()
                    if job[0].set_running_or_notify_cancel():
                        self._running[job[0]] = self._clock()
                        return job
                    continue
                self._ready.wait()

    def _work(self) -> None:
        while (job := self._next_job()) is not None:
            future, call, _queued = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = call()
            except BaseException as raised:  # noqa: BLE001 - handed to the caller via the future
                error = raised
            with self._ready:
                # Before the future is done, so its waiter sees the pool as this call left it.
                self._widened_for.discard(future)
                replaced = future in self._abandoned
                if replaced:
                    self._abandoned.discard(future)
                    self._started -= 1
                else:
                    del self._running[future]
                if not self._running and not self._jobs:
                    self._wide = False
                    self._for_queue = 0
                self._rewidth()
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
            if replaced:
                return  # replaced when it was abandoned: this thread is one too many now
