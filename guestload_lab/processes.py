"""Start and stop helper processes by process id, so nothing outlives the harness."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from guestload_lab.waiting import wait_until

DEFAULT_GRACE_SECONDS = 10.0


def pid_alive(pid: int) -> bool:
    """True while ``pid`` names a process that is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the parenthesised command name, which may contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def pid_cmdline(pid: int) -> list[str]:
    """The argument vector of ``pid``; empty when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def wait_pid_gone(pid: int, timeout_seconds: float) -> bool:
    """Poll until ``pid`` is gone (or a zombie); True when it went in time."""
    try:
        wait_until(lambda: not pid_alive(pid), timeout=timeout_seconds, interval=0.05, what="exit")
    except TimeoutError:
        return False
    return True


def terminate_pid(pid: int, *, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> None:
    """SIGTERM ``pid``, then SIGKILL it if it is still there after ``grace_seconds``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_pid_gone(pid, grace_seconds):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_pid_gone(pid, 5.0)


def stop_child(
    process: subprocess.Popen[bytes], *, grace_seconds: float = DEFAULT_GRACE_SECONDS
) -> None:
    """SIGTERM a child, SIGKILL it after ``grace_seconds``, and reap it."""
    if process.poll() is None:
        # Not reaped yet, so the pid is still this child's (a zombie at worst).
        terminate_pid(process.pid, grace_seconds=grace_seconds)
    process.wait(timeout=10.0)


class ProcessRegistry:
    """Every process a harness started, stopped in reverse order on ``stop_all`` or at exit."""

    def __init__(self) -> None:
        self._processes: list[subprocess.Popen[bytes]] = []
        atexit.register(self.stop_all)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        group: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` with stdout and stderr appended to ``log_path``.

        With ``user`` (and ``group``) the process runs as that account, with no other groups.
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                user=user,
                group=group,
                extra_groups=[] if user is not None else None,
            )
        self._processes.append(process)
        return process

    def stop(
        self, process: subprocess.Popen[bytes], *, grace_seconds: float = DEFAULT_GRACE_SECONDS
    ) -> None:
        """Stop one process this registry started."""
        stop_child(process, grace_seconds=grace_seconds)
        with contextlib.suppress(ValueError):
            self._processes.remove(process)

    def stop_all(self) -> None:
        """Stop every process still registered, newest first."""
        while self._processes:
            stop_child(self._processes.pop())

    def __enter__(self) -> ProcessRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()
        atexit.unregister(self.stop_all)
