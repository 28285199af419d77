"""The epoll event loop that stands in for libvirt's default one, on socket pairs and a fake
clock: epoll itself is real, nothing waits."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from guestload.sources.event_loop import HANGUP, READABLE, WRITABLE, EventLoop
from tests.unit.pollers import Clock

SHORT = 0.0
"""A wait that must end without any event: epoll reports what is ready at once (seconds)."""


class Recorder:
    """Collects the loop's callbacks and frees."""

    def __init__(self) -> None:
        self.handles: list[tuple[int, int, int, object]] = []
        self.timers: list[tuple[int, object]] = []
        self.freed: list[object] = []

    def on_handle(self, watch: int, fd: int, events: int, opaque: object) -> None:
        self.handles.append((watch, fd, events, opaque))

    def on_timer(self, timer: int, opaque: object) -> None:
        self.timers.append((timer, opaque))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def loop(recorder: Recorder, clock: Clock) -> EventLoop:
    return EventLoop(invoke_free=recorder.freed.append, clock=clock)


def count_wakeups(loop: EventLoop, monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """One entry per wake-up the loop sends itself from now on (they still wake it)."""
    wakeups: list[None] = []
    wake = loop._wake

    def counted() -> None:
        wakeups.append(None)
        wake()

    monkeypatch.setattr(loop, "_wake", counted)
    return wakeups


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, peer = socket.socketpair()
    yield ours, peer
    ours.close()
    peer.close()


def test_a_readable_socket_calls_its_handle(
    loop: EventLoop, recorder: Recorder, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, peer = pair
    watch = loop.add_handle(ours.fileno(), READABLE, recorder.on_handle, "conn")
    loop.run_once(max_wait=SHORT)
    assert recorder.handles == []
    peer.send(b"x")
    loop.run_once(max_wait=1.0)
    assert recorder.handles == [(watch, ours.fileno(), READABLE, "conn")]


def test_a_handle_updated_to_no_events_is_not_called(
    loop: EventLoop, recorder: Recorder, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, peer = pair
    watch = loop.add_handle(ours.fileno(), READABLE, recorder.on_handle, None)
    loop.update_handle(watch, 0)
    peer.send(b"x")
    peer.close()  # a hang-up is not reported either: the fd is out of epoll
    loop.run_once(max_wait=SHORT)
    assert recorder.handles == []
    loop.update_handle(watch, READABLE)
    loop.run_once(max_wait=1.0)
    assert len(recorder.handles) == 1
    assert recorder.handles[0][2] & READABLE


def test_watch_updates_do_not_wake_the_loop(
    loop: EventLoop,
    recorder: Recorder,
    pair: tuple[socket.socket, socket.socket],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libvirt updates the watch twice around every call, from its own threads: that must cost
    the loop nothing. epoll takes the change while the loop waits in it: no wake-up is sent."""
    ours, peer = pair
    watch = loop.add_handle(ours.fileno(), READABLE, recorder.on_handle, None)
    loop.run_once(max_wait=SHORT)
    wakeups = count_wakeups(loop, monkeypatch)
    for _ in range(100):
        loop.update_handle(watch, 0)
        loop.update_handle(watch, READABLE)
    assert wakeups == [], "an update woke the loop"
    peer.send(b"x")  # but the interest restored by the last update is live at once
    loop.run_once(max_wait=SHORT)
    assert len(recorder.handles) == 1


def test_only_the_events_a_handle_wants_are_reported(
    loop: EventLoop, recorder: Recorder, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, peer = pair
    reader = loop.add_handle(ours.fileno(), READABLE, recorder.on_handle, "reader")
    writer = loop.add_handle(ours.fileno(), WRITABLE, recorder.on_handle, "writer")
    loop.run_once(max_wait=1.0)
    assert recorder.handles == [(writer, ours.fileno(), WRITABLE, "writer")]
    recorder.handles.clear()
    loop.remove_handle(writer)
    peer.close()
    loop.run_once(max_wait=1.0)
    (called,) = recorder.handles
    assert called[0] == reader
    assert called[2] & HANGUP
    assert not called[2] & WRITABLE


def test_a_removed_handle_is_freed_by_the_loop_and_never_called(
    loop: EventLoop, recorder: Recorder, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, peer = pair
    watch = loop.add_handle(ours.fileno(), READABLE, recorder.on_handle, "opaque")
    assert loop.remove_handle(watch) == 0
    assert recorder.freed == [], "freed inside libvirt's call, where it may hold locks"
    peer.send(b"x")
    loop.run_once(max_wait=1.0)
    assert recorder.freed == ["opaque"]
    assert recorder.handles == []
    assert loop.remove_handle(watch) == -1


def test_timers_fire_on_their_interval(loop: EventLoop, recorder: Recorder, clock: Clock) -> None:
    timer = loop.add_timeout(50, recorder.on_timer, "keepalive")
    disabled = loop.add_timeout(-1, recorder.on_timer, "disabled")
    for fired in range(1, 4):
        clock.now += 0.04
        loop.run_once(max_wait=SHORT)
        assert len(recorder.timers) == fired - 1, "a timer fired before its interval"
        clock.now += 0.02
        loop.run_once(max_wait=SHORT)
        assert recorder.timers == [(timer, "keepalive")] * fired
    loop.update_timeout(disabled, 0)  # 0: every iteration
    loop.update_timeout(timer, -1)
    recorder.timers.clear()
    loop.run_once(max_wait=SHORT)
    loop.run_once(max_wait=SHORT)
    assert recorder.timers == [(disabled, "disabled")] * 2


def test_only_a_timer_moved_earlier_wakes_a_waiting_loop(
    loop: EventLoop, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    timer = loop.add_timeout(10_000, recorder.on_timer, None)
    loop.run_once(max_wait=SHORT)  # the new timer woke the loop: it now waits 10 s
    wakeups = count_wakeups(loop, monkeypatch)
    loop.update_timeout(timer, 20_000)  # later: nothing to do before the current deadline
    assert wakeups == []
    loop.update_timeout(timer, 0)
    assert wakeups == [None], "a sooner timer must wake the loop"
    loop.run_once(max_wait=SHORT)
    assert recorder.timers == [(timer, None)]


def test_a_removed_timer_is_freed_and_not_called(loop: EventLoop, recorder: Recorder) -> None:
    timer = loop.add_timeout(0, recorder.on_timer, "opaque")
    assert loop.remove_timeout(timer) == 0
    loop.run_once(max_wait=SHORT)
    assert recorder.timers == []
    assert recorder.freed == ["opaque"]
    assert loop.remove_timeout(timer) == -1


def test_a_descriptor_number_reused_after_close_is_watched(
    loop: EventLoop, recorder: Recorder
) -> None:
    """libvirt may close a socket before removing its watch; the number can come back."""
    first, first_peer = socket.socketpair()
    number = first.fileno()
    old = loop.add_handle(number, READABLE, recorder.on_handle, "old")
    first.close()
    first_peer.close()
    second, second_peer = socket.socketpair()
    if second.fileno() != number:
        os.dup2(second.fileno(), number)  # the number now names another socket
    try:
        loop.remove_handle(old)
        new = loop.add_handle(number, READABLE, recorder.on_handle, "new")
        second_peer.send(b"x")
        loop.run_once(max_wait=1.0)
        assert recorder.handles == [(new, number, READABLE, "new")]
    finally:
        if number != second.fileno():
            os.close(number)
        second.close()
        second_peer.close()


def test_unread_data_is_reported_again_only_after_an_update_or_more_data(
    loop: EventLoop, recorder: Recorder, pair: tuple[socket.socket, socket.socket]
) -> None:
    """libvirt's callback returns without reading while another thread owns the socket."""
    ours, peer = pair
    watch = loop.add_handle(ours.fileno(), READABLE, recorder.on_handle, None)
    peer.send(b"x")
    loop.run_once(max_wait=1.0)
    loop.run_once(max_wait=SHORT)
    assert len(recorder.handles) == 1, "level-triggered, the loop would spin on unread data"
    loop.update_handle(watch, READABLE)  # libvirt's update after a callback or a call
    loop.run_once(max_wait=1.0)
    assert len(recorder.handles) == 2, "an update re-arms: data still waiting is reported"
    peer.send(b"y")
    loop.run_once(max_wait=1.0)
    assert len(recorder.handles) == 3, "new data is reported without an update"
