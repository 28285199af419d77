"""The unit tier is hermetic: a test here that reaches outside the process fails, saying how.

While a test in tests/unit sets up, runs or tears down (in any thread), these fail it:

- a socket of any family but AF_UNIX, and binding, connecting or addressing any socket, or a
  name lookup. ``socket.socketpair()`` stays allowed: its two ends are an in-process peer (the
  event loop's tests watch one end for the other's writes) that no namespace, port or peer
  process can disturb.
- starting a process: ``subprocess``, ``os.fork``, ``os.exec*``, ``os.posix_spawn``,
  ``os.system``.
- ``time.sleep``: a test waits on an event or advances a fake clock instead.
- opening a libvirt connection (even ``test:///default``): tests give the source a fake one.

A test that needs any of these belongs to an integration tier (tests/daemon, tests/security).
The check is an audit hook (``sys.addaudithook``), so a call made through a name bound at
import, or swallowed by the code under test, still fails the test.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

import pytest

# Loads libvirtmod, whose connection openers the guard replaces while a unit test runs.
import guestload.sources.libvirt  # noqa: F401

#: Audit events that reach outside the process, by what they mean.
_FORBIDDEN_EVENTS = {
    "socket.bind": "binds a socket",
    "socket.connect": "connects a socket",
    "socket.sendto": "sends to a socket address",
    "socket.sendmsg": "sends to a socket address",
    "socket.getaddrinfo": "looks up a host name",
    "socket.gethostbyname": "looks up a host name",
    "socket.gethostbyaddr": "looks up a host name",
    "socket.getnameinfo": "looks up a host name",
    "subprocess.Popen": "starts a process",
    "os.fork": "forks",
    "os.forkpty": "forks",
    "os.exec": "executes a program",
    "os.posix_spawn": "starts a process",
    "os.spawn": "starts a process",
    "os.system": "starts a shell",
}
_LIBVIRT_OPENERS = ("virConnectOpen", "virConnectOpenReadOnly", "virConnectOpenAuth")
_ADVICE = (
    "tests/unit is hermetic (see tests/unit/conftest.py): inject a fake peer, clock or "
    "connection, or move the test to an integration tier such as tests/daemon"
)


class NotHermeticError(RuntimeError):
    """A unit test reached outside the process."""


class _Guard:
    """Collects what the running unit test did that it must not; idle between unit tests."""

    def __init__(self) -> None:
        self.active = False
        self.violations: list[str] = []
        self._lock = threading.Lock()

    def violate(self, what: str) -> NotHermeticError:
        """Records one violation and returns the error to raise where it happened."""
        message = f"{what} (thread {threading.current_thread().name!r})"
        with self._lock:
            self.violations.append(message)
        return NotHermeticError(f"{message}; {_ADVICE}")

    def audit(self, event: str, args: tuple[object, ...]) -> None:
        """The audit hook: raises inside the forbidden call while a unit test runs."""
        if not self.active:
            return
        if event == "socket.__new__":
            family = args[1]
            if family != socket.AF_UNIX:
                raise self.violate(f"opens a network socket (family {family!r})")
            return
        what = _FORBIDDEN_EVENTS.get(event)
        if what is not None:
            raise self.violate(f"{what}: {event}{_short(args)}")


def _short(args: tuple[object, ...]) -> str:
    text = repr(args)
    return text if len(text) <= 200 else text[:200] + "...)"


_GUARD = _Guard()
sys.addaudithook(_GUARD.audit)


def _refuse(what: str) -> Callable[..., None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise _GUARD.violate(f"{what}{_short(args)}")

    return refuse


@contextmanager
def _hermetic(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(time, "sleep", _refuse("sleeps: time.sleep"))
    libvirtmod: ModuleType | None = sys.modules.get("libvirtmod")
    if libvirtmod is not None:
        for name in _LIBVIRT_OPENERS:
            monkeypatch.setattr(libvirtmod, name, _refuse(f"opens a libvirt connection: {name}"))
    _GUARD.violations.clear()
    _GUARD.active = True
    try:
        yield
    finally:
        _GUARD.active = False
        monkeypatch.undo()
        # Named even when the code under test swallowed the error, or a failure followed it.
        if _GUARD.violations:
            pytest.fail(
                "not hermetic: " + "; ".join(_GUARD.violations) + f"\n{_ADVICE}", pytrace=False
            )


# The runtest hooks of this conftest run only for the tests below it, so a suite collected
# together with the integration tiers guards only its unit tests.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as monkeypatch, _hermetic(monkeypatch):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as monkeypatch, _hermetic(monkeypatch):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as monkeypatch, _hermetic(monkeypatch):
        return (yield)
