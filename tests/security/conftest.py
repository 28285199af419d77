"""Real processes for the security and fault tests: ``guestload serve`` and a libvirt daemon.

The daemon is ``libvirtd`` serving only libvirt's test driver (``LIBVIRT_DRIVER_DIR`` points
at an empty folder, so no hypervisor driver loads) on sockets in a private folder, with the
socket group and permissions the test asks for. Every process is stopped by its id at the
end of the test, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

GUESTLOAD = Path(sys.executable).parent / "guestload"
START_TIMEOUT_SECONDS = 20.0
SYSTEM_PYTHON = Path("/usr/bin/python3")


def unprivileged_command() -> tuple[list[str], dict[str, str]]:
    """How another user runs this checkout's guestload: argv prefix and environment.

    The virtualenv's interpreter may live where only root can enter (pyenv under /root), so
    other users run the system's Python of the same minor version on the same packages.
    """
    result = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    )
    wanted = str(sys.version_info[:2])
    if result.returncode != 0 or result.stdout.strip() != wanted:
        pytest.fail(f"{SYSTEM_PYTHON} must be Python {wanted} to run guestload as another user")
    import guestload  # noqa: PLC0415 - only to find this checkout's source folder

    source = Path(guestload.__file__).resolve().parents[1]
    packages = [p for p in sys.path if p.endswith("site-packages")]
    return [str(SYSTEM_PYTHON), "-m", "guestload"], {
        "PYTHONPATH": os.pathsep.join([str(source), *packages]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


@dataclass
class Exporter:
    """A running ``guestload serve`` process on 127.0.0.1:``port``."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, str]:
        """Plain-HTTP GET: status and body (status 0 when the connection fails)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
                return int(reply.status), reply.read().decode()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode()
        except OSError:
            return 0, ""

    def stop(self, *, grace_seconds: float = 10.0) -> float:
        """SIGTERM the process; seconds until it exited (SIGKILL after ``grace_seconds``)."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return time.monotonic() - started


@dataclass
class Exporters:
    """Starts ``guestload serve`` processes; stops every one of them at the end."""

    folder: Path
    started: list[Exporter] = field(default_factory=list)

    def start(
        self,
        *args: str,
        user: str | None = None,
        group: str | None = None,
        env: dict[str, str] | None = None,
        wait_listening: bool = True,
    ) -> Exporter:
        port = free_port()
        log_path = self.folder / f"guestload-{len(self.started)}.log"
        prefix, extra_env = ([str(GUESTLOAD)], {}) if user is None else unprivileged_command()
        command = [
            *prefix,
            "serve",
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--collector.interval",
            "1s",
            "--collector.agent-timeout",
            "500ms",
            "--node",
            "test-node",
            *args,
        ]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **extra_env, **(env or {})},
                user=user,
                group=group,
                extra_groups=[] if user is not None else None,
                cwd=self.folder,
            )
        exporter = Exporter(process=process, port=port, log_path=log_path)
        self.started.append(exporter)
        if wait_listening and not wait_for(
            lambda: process.poll() is not None or "msg=listening" in exporter.log(),
            START_TIMEOUT_SECONDS,
        ):
            pytest.fail(f"guestload did not start listening:\n{exporter.log()}")
        if wait_listening and process.poll() is not None:
            pytest.fail(f"guestload exited with {process.returncode}:\n{exporter.log()}")
        return exporter

    def stop_all(self) -> None:
        for exporter in self.started:
            exporter.stop()


@pytest.fixture
def exporters(tmp_path: Path) -> Iterator[Exporters]:
    tmp_path.chmod(0o755)  # readable for an exporter running as another user
    running = Exporters(folder=tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


@dataclass
class TestDriverDaemon:
    """``libvirtd`` with only the test driver, its sockets in ``folder``."""

    folder: Path
    rw_perms: str = "0700"
    ro_perms: str = "0700"
    group: str | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.folder / "libvirt-sock"

    @property
    def ro_socket_path(self) -> Path:
        return self.folder / "libvirt-sock-ro"

    @property
    def uri(self) -> str:
        return f"test+unix:///default?socket={self.socket_path}"

    @property
    def ro_uri(self) -> str:
        return f"test+unix:///default?socket={self.ro_socket_path}"

    @property
    def log_path(self) -> Path:
        return self.folder / "libvirtd.log"

    def start(self) -> None:
        binary = shutil.which("libvirtd", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
        if binary is None:
            pytest.fail("libvirtd is not installed: run scripts/install-system-deps")
        drivers = self.folder / "no-drivers"
        drivers.mkdir(exist_ok=True)
        config = self.folder / "libvirtd.conf"
        config.write_text(
            f'unix_sock_dir = "{self.folder}"\n'
            f'unix_sock_rw_perms = "{self.rw_perms}"\n'
            f'unix_sock_ro_perms = "{self.ro_perms}"\n'
            + (f'unix_sock_group = "{self.group}"\n' if self.group else "")
            + 'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
        )
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "--config", str(config), "--pid-file", str(self.folder / "pid")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "LIBVIRT_DRIVER_DIR": str(drivers)},
            )
        if not wait_for(self._listening, START_TIMEOUT_SECONDS):
            self.stop()
            pytest.fail(f"libvirtd did not listen:\n{self.log_path.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def _listening(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket_path))
            except OSError:
                return False
        return True


DaemonFactory = Callable[..., TestDriverDaemon]


@pytest.fixture
def daemon_folder() -> Iterator[Path]:
    """A short private folder (unix socket paths are limited to 107 bytes), world-traversable."""
    folder = Path(tempfile.mkdtemp(prefix="guestload-sec-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def make_daemon(daemon_folder: Path) -> Iterator[DaemonFactory]:
    """Build (not start) test-driver daemons in ``daemon_folder``; all stopped afterwards."""
    daemons: list[TestDriverDaemon] = []

    def make(**options: str) -> TestDriverDaemon:
        daemon = TestDriverDaemon(folder=daemon_folder, **options)  # type: ignore[arg-type]
        daemons.append(daemon)
        return daemon

    try:
        yield make
    finally:
        for daemon in daemons:
            with contextlib.suppress(Exception):
                daemon.stop()


def metric_value(body: str, series: str) -> float | None:
    """The value of the exact series line ``series`` (name plus labels) in a text body."""
    for line in body.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return None


def command_output(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=60)
