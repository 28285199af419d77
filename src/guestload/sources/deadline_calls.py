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

import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import Callable, Collection
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

_Job = tuple[Future[Any], Callable[[], Any]]


class Calls(Protocol):
    """Where a source runs calls it waits for only up to a deadline."""

    def submit(self, call: Callable[[], T]) -> Future[T]:
        """Run ``call`` soon; its result or exception lands in the future."""
        ...

    def wait(self, futures: Collection[Future[Any]], seconds: float) -> None:
        """Return when every future is done, or after ``seconds``."""
        ...

    def abandon(self, future: Future[Any]) -> None:
        """Stop counting on ``future``: cancel it if it has not started, else let it run."""
        ...


class CallPool:
    """:class:`Calls` on ``workers`` daemon threads; abandoned running calls are replaced."""

    def __init__(self, *, workers: int, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running: set[Future[Any]] = set()
        self._abandoned: set[Future[Any]] = set()
        self._started = 0
        self._closed = False
        for _ in range(workers):
            self._start_worker()

    @property
    def threads(self) -> int:
        """Worker threads alive: ``workers`` plus one per abandoned call still running."""
        with self._lock:
            return self._started

    def submit(self, call: Callable[[], T]) -> Future[T]:
        if self._closed:
            raise RuntimeError("pool is closed")
        future: Future[T] = Future()
        self._jobs.put((future, call))
        return future

    def wait(self, futures: Collection[Future[Any]], seconds: float) -> None:
        if len(futures) == 1:
            # One call (a guest query): its own condition, without a waiter per call.
            (future,) = futures
            with contextlib.suppress(concurrent.futures.TimeoutError):
                future.exception(timeout=max(0.0, seconds))
        elif futures:
            concurrent.futures.wait(futures, timeout=max(0.0, seconds))

    def abandon(self, future: Future[Any]) -> None:
        with self._lock:
            if future.cancel() or future not in self._running or future in self._abandoned:
                return
            self._abandoned.add(future)
            if not self._closed:
                self._start_worker_locked()

    def close(self) -> None:
        """Stop taking work; idle workers exit, busy ones after their call."""
        with self._lock:
            self._closed = True
            workers = self._started - len(self._abandoned)
        for _ in range(workers):
            self._jobs.put(None)

    def _start_worker(self) -> None:
        with self._lock:
            self._start_worker_locked()

    def _start_worker_locked(self) -> None:
        self._started += 1
        thread = threading.Thread(
            target=self._work, name=f"{self._name}-{self._started}", daemon=True
        )
        thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, call = job
            with self._lock:
                if not future.set_running_or_notify_cancel():
                    continue
                self._running.add(future)
            try:
                future.set_result(call())
            except BaseException as error:  # noqa: BLE001 - handed to the caller via the future
                future.set_exception(error)
            with self._lock:
                self._running.discard(future)
                if future in self._abandoned:
                    # Replaced when it was abandoned: this thread is one too many now.
                    self._abandoned.discard(future)
                    self._started -= 1
                    return
        with self._lock:
            self._started -= 1
