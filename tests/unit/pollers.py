"""Pollers for unit tests: a clock the test sets by hand, and a poller over a FakeSource."""

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
