"""A fixed pool of daemon worker threads.

Unlike ``concurrent.futures.ThreadPoolExecutor``, whose threads the interpreter joins at exit,
these threads never delay shutdown: a guest-agent call that hangs inside the hypervisor cannot keep
the exporter from stopping.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")

_Job = tuple[Future[object], Callable[[], object]]


class DaemonPool:
    """Runs submitted callables on ``workers`` daemon threads, in submission order."""

    def __init__(self, *, workers: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, call: Callable[[], T]) -> Future[T]:
        if self._closed:
            raise RuntimeError("pool is closed")
        future: Future[T] = Future()
        self._jobs.put((future, call))  # type: ignore[arg-type]
        return future

    def close(self) -> None:
        """Stop taking work; idle workers exit, busy ones finish their call first."""
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, call = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as error:  # noqa: BLE001 - handed to the caller via the future
                future.set_exception(error)
