"""Pollers for unit tests: clocks the test moves, and a poller over a FakeSource."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from guestload.identity import IdentityResolver
from guestload.model import Snapshot
from guestload.polling.poller import Poller
from guestload.queries.query import GuestQuery
from tests.unit.fakes import LOAD_ONLY, FakeSource


class Clock:
    """A monotonic clock that moves only when the test sets ``now``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class HangClock(Clock):
    """A fake clock for polls with a hung call: time passes only while that call hangs.

    Read on the thread that made it (the test's, which polls) while the hung call blocks
    (``hanging`` set) and every other call in flight is still unstarted, it moves to ``step``
    seconds after the hung call started: past that call's time limit, never past the limit of
    a call that runs or awaits collection, however the machine schedules the threads.
    """

    def __init__(self, *, hung: str, step: float) -> None:
        super().__init__()
        self.hung = hung
        self.step = step
        self.hanging = threading.Event()
        self.poller: Poller | None = None
        self._polling_thread = threading.get_ident()

    def __call__(self) -> float:
        if (
            self.poller is not None
            and self.hanging.is_set()
            and threading.get_ident() == self._polling_thread
        ):
            calls = dict(self.poller._in_flight)
            hung = calls.pop(self.hung, None)
            started = hung.started if hung is not None else None
            if started is not None and all(c.started is None for c in calls.values()):
                self.now = max(self.now, started + self.step)
        return self.now


class Published(list[Snapshot]):
    """The snapshots a poller published, in order; a test can wait for the one it expects."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = threading.Condition()

    def append(self, snapshot: Snapshot) -> None:
        with self._changed:
            super().append(snapshot)
            self._changed.notify_all()

    def wait_for(self, expected: Callable[[list[Snapshot]], bool], timeout: float = 5.0) -> bool:
        """Whether ``expected`` held for the published snapshots within ``timeout`` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: expected(self), timeout)


def make_poller(
    source: FakeSource,
    clock: Callable[[], float],
    published: list[Snapshot],
    *,
    interval: float = 30.0,
    agent_timeout: float = 0.2,
    concurrency: int = 4,
    backoff_max: float = 240.0,
    queries: Sequence[GuestQuery] = LOAD_ONLY,
) -> Poller:
    return Poller(
        source=source,
        queries=queries,
        identity=IdentityResolver(node="node-1", default_namespace="libvirt"),
        poll_interval_seconds=interval,
        agent_timeout_seconds=agent_timeout,
        concurrency=concurrency,
        agent_backoff_max_seconds=backoff_max,
        on_snapshot=published.append,
        build_info={"python_version": "3.11"},
        clock=clock,
        wall_clock=lambda: 1_700_000_000.0,
    )
