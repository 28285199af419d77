"""A private libvirt daemon for tests: libvirt's test driver behind a unix socket of our own.

The daemon runs in the foreground as a child of the test, with its sockets and pid file in a
temporary directory. ``LIBVIRT_DRIVER_DIR`` points at an empty folder, so no hypervisor driver
module (QEMU, network, storage...) loads: the daemon serves only the test driver, built into
libvirt itself, never sees the host's domains and starts in well under a second. The only
file it shares with the host is ``/run/libvirt/common/system.token``, a token every system
daemon reads (and creates when missing).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

LIBVIRTD = "libvirtd"
START_TIMEOUT_SECONDS = 20.0


class PrivateTestDriverDaemon:
    """``libvirtd`` serving the test driver on ``<directory>/libvirt-sock``."""

    def __init__(self, *, directory: Path) -> None:
        self.directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.directory / "libvirt-sock"

    @property
    def uri(self) -> str:
        """The test driver's default instance, reached through this daemon."""
        return f"test+unix:///default?socket={self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.directory / "libvirtd.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the daemon and wait until its socket accepts connections."""
        binary = shutil.which(LIBVIRTD, path=f"{os.environ.get('PATH', '')}:/usr/sbin")
        if binary is None:
            pytest.fail("libvirtd is not installed: run scripts/install-system-deps")
        drivers = self.directory / "no-drivers"
        drivers.mkdir(exist_ok=True)
        config = self.directory / "libvirtd.conf"
        config.write_text(
            f'unix_sock_dir = "{self.directory}"\n'
            'unix_sock_rw_perms = "0700"\n'
            'unix_sock_ro_perms = "0700"\n'
            'auth_unix_rw = "none"\n'
            'auth_unix_ro = "none"\n'
        )
        environment = {**os.environ, "LIBVIRT_DRIVER_DIR": str(drivers)}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [binary, "--config", str(config), "--pid-file", str(self.directory / "pid")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        self._wait_until_listening()

    def kill(self) -> None:
        """SIGKILL the daemon, as a crash would, and reap it."""
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._process.send_signal(signal.SIGKILL)
        self._process.wait(timeout=10)
        self._process = None

    def pause(self) -> None:
        """SIGSTOP the daemon, as a hung daemon: it accepts nothing and answers nothing."""
        if self._process is None:
            raise RuntimeError("the daemon is not running")
        self._process.send_signal(signal.SIGSTOP)

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                pytest.fail(f"libvirtd exited at start-up:\n{self._log_tail()}")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(self.socket_path))
                except OSError:
                    time.sleep(0.05)
                    continue
            return
        self.kill()
        pytest.fail(f"libvirtd did not listen within {START_TIMEOUT_SECONDS}s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError as error:
            return f"(no log: {error})"


@pytest.fixture
def test_driver_daemon() -> Iterator[PrivateTestDriverDaemon]:
    """A running private daemon; killed and removed afterwards, whatever the test did."""
    # A short path of our own: unix socket paths are limited to 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="guestload-lvd-", dir="/tmp"))
    daemon = PrivateTestDriverDaemon(directory=directory)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.kill()
        shutil.rmtree(directory, ignore_errors=True)
