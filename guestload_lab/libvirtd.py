"""Private libvirt daemons: the QEMU driver for real VMs, or libvirt's test driver alone.

:class:`PrivateLibvirtd` runs libvirtd + virtlogd with all their files under one directory.
Each daemon runs in its own mount namespace (``unshare --mount``) in which the workdir's
folders are bind-mounted over ``/etc/libvirt``, ``/run/libvirt``, ``/var/lib/libvirt``,
``/var/log/libvirt`` and ``/var/cache/libvirt``. The host's libvirt files stay untouched, and
two private daemons (one per test session, say) never share the QEMU driver's state
directories, so they can run at the same time. Only the QEMU capability cache is shared
between daemons (``cache_dir``): probing QEMU takes seconds, reading the cache a fraction of
one.

QEMU runs as root by default: with ``/dev/kvm`` readable by root only, a daemon running QEMU
as ``libvirt-qemu`` re-probes QEMU's capabilities on every API call (seconds each).
``qemu_as_root=False`` exists to show that pitfall; QEMU then also needs read access to the
kernel, initramfs and serial-log paths it is given.

:class:`TestDriverLibvirtd` runs libvirtd with no hypervisor driver at all:
``LIBVIRT_DRIVER_DIR`` points at an empty folder, so no driver module (QEMU, network,
storage...) loads and the daemon serves only the test driver built into libvirt (a fake
hypervisor with one running domain, ``test``). It needs no mount namespace, never sees the
host's domains and starts in well under a second; the socket group and permissions are
options. The only file it shares with the host is ``/run/libvirt/common/system.token``, a
token every system daemon reads (and creates when missing).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

import libvirt

from guestload_lab.deps import DEFAULT_CACHE_DIR as LAB_CACHE_DIR
from guestload_lab.processes import pid_alive, pid_cmdline, stop_child, terminate_pid
from guestload_lab.waiting import wait_until

DEFAULT_CACHE_DIR = LAB_CACHE_DIR / "libvirt"
"""Where QEMU capability caches are kept between daemons, one subfolder per QEMU user."""

LIBVIRTD = "/usr/sbin/libvirtd"
VIRTLOGD = "/usr/sbin/virtlogd"

# Host folder -> workdir subfolder bound over it inside the daemon's mount namespace.
_PRIVATE_FOLDERS = {
    "/etc/libvirt": "etc",
    "/run/libvirt": "run",
    "/var/lib/libvirt": "lib",
    "/var/log/libvirt": "log",
}
_CACHE_TARGET = "/var/cache/libvirt"

# Binds each (source, target) pair given as arguments, then execs the rest of the arguments.
_NAMESPACE_SCRIPT = """
set -eu
while [ "$1" != "--" ]; do
  mkdir -p "$2"
  mount --bind "$1" "$2"
  shift 2
done
shift
exec "$@"
"""


def short_directory(prefix: str) -> Path:
    """A new folder directly under /tmp: a daemon's unix socket paths must fit in 107 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class LibvirtdError(RuntimeError):
    """The private daemon could not be started or did not answer."""


def libvirtd_config(
    *,
    socket_dir: Path,
    rw_perms: str,
    ro_perms: str,
    group: str | None = None,
    log_file: Path | None = None,
) -> str:
    """A ``libvirtd.conf`` with its sockets in ``socket_dir`` and no authentication."""
    lines = [
        f'unix_sock_dir = "{socket_dir}"',
        f'unix_sock_rw_perms = "{rw_perms}"',
        f'unix_sock_ro_perms = "{ro_perms}"',
        'auth_unix_rw = "none"',
        'auth_unix_ro = "none"',
    ]
    if group is not None:
        lines.append(f'unix_sock_group = "{group}"')
    if log_file is not None:
        lines.append(f'log_outputs = "3:file:{log_file}"')
    return "".join(f"{line}\n" for line in lines)


class _LibvirtdChild:
    """libvirtd as a foreground child with its sockets in ``socket_dir``, logs in ``log_dir``.

    What every private daemon shares: start-up until it answers, a crash (``kill``), a hang
    (``pause``), and the log tail that explains a failure.
    """

    def __init__(self, *, socket_dir: Path, log_dir: Path) -> None:
        self._socket_dir = socket_dir
        self._log_dir = log_dir
        self._libvirtd: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        """The read-write socket of the daemon."""
        return self._socket_dir / "libvirt-sock"

    @property
    def ro_socket_path(self) -> Path:
        """The read-only socket of the daemon."""
        return self._socket_dir / "libvirt-sock-ro"

    @property
    def libvirtd_pid(self) -> int | None:
        """libvirtd's process id while it runs."""
        if self._libvirtd is None or self._libvirtd.poll() is not None:
            return None
        return self._libvirtd.pid

    @property
    def running(self) -> bool:
        return self.libvirtd_pid is not None

    def test_driver_uri(self, *, read_only: bool = False) -> str:
        """The test driver (a fake hypervisor with one domain) through this daemon's socket."""
        socket = self.ro_socket_path if read_only else self.socket_path
        return f"test+unix:///default?socket={socket}"

    def start(self, timeout: float = 60.0) -> None:
        """Start the daemon and wait until it answers."""
        raise NotImplementedError

    def stop(self) -> None:
        """End the daemon and whatever it started."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def kill(self) -> None:
        """SIGKILL libvirtd as a crash would, and reap it; nothing when it does not run."""
        if self._libvirtd is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._libvirtd.send_signal(signal.SIGKILL)
        self._libvirtd.wait(timeout=10.0)

    def pause(self) -> None:
        """SIGSTOP libvirtd, as a hung daemon: it accepts nothing and answers nothing."""
        if self._libvirtd is None:
            raise LibvirtdError("libvirtd is not running")
        self._libvirtd.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused libvirtd."""
        if self._libvirtd is None:
            raise LibvirtdError("libvirtd is not running")
        self._libvirtd.send_signal(signal.SIGCONT)

    def _launch(
        self, command: list[str], *, log_name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        if not Path(LIBVIRTD).exists():
            raise LibvirtdError(f"{LIBVIRTD} is not installed: run scripts/install-system-deps")
        self._log_dir.mkdir(parents=True, exist_ok=True)
        with (self._log_dir / log_name).open("ab") as log:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def _adopt_and_wait(
        self, libvirtd: subprocess.Popen[bytes], *, uri: str, timeout: float
    ) -> None:
        """Take ``libvirtd`` as this daemon and wait until it answers; ``stop`` if it does not."""
        self._libvirtd = libvirtd
        atexit.register(self.stop)
        try:
            self._wait_ready(uri, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, uri: str, timeout: float) -> None:
        """Wait until libvirtd accepts on its socket and answers a call through ``uri``."""
        last_error = ["socket not created"]

        def answers() -> bool:
            if self.libvirtd_pid is None:
                raise LibvirtdError(f"libvirtd exited during start-up\n{self._log_tail()}")
            if not _socket_accepts(self.socket_path):
                return False
            try:
                connection = libvirt.open(uri)
            except libvirt.libvirtError as error:
                last_error[0] = str(error)
                return False
            try:
                connection.getVersion()
            finally:
                connection.close()
            return True

        wait_until(
            answers,
            timeout=timeout,
            interval=0.05,
            what="an answer from libvirtd",
            detail=lambda: f"{last_error[0]}\n{self._log_tail()}",
            error=LibvirtdError,
        )

    def _log_tail(self, lines: int = 20) -> str:
        parts = []
        for name in ("libvirtd.stderr", "libvirtd.log"):
            path = self._log_dir / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(parts)


class PrivateLibvirtd(_LibvirtdChild):
    """libvirtd and virtlogd as foreground child processes, configured under ``workdir``.

    ``start`` waits until the QEMU driver answers; ``stop`` destroys every domain and ends
    both daemons; ``kill`` SIGKILLs libvirtd alone (QEMU and virtlogd keep running, as after a
    crash) and ``restart`` brings it back, reconnecting to the running domains.
    """

    def __init__(
        self,
        *,
        workdir: Path,
        qemu_as_root: bool = True,
        cache_dir: Path = DEFAULT_CACHE_DIR,
    ) -> None:
        self.workdir = workdir.resolve()
        super().__init__(socket_dir=self.workdir / "run", log_dir=self.workdir / "log")
        self.qemu_as_root = qemu_as_root
        self.cache_dir = cache_dir / ("root" if qemu_as_root else "libvirt-qemu")
        self._virtlogd: subprocess.Popen[bytes] | None = None

    # -- paths and URIs ---------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        """Seen by the daemon as ``/run/libvirt``: sockets, QEMU pid and status files."""
        return self.workdir / "run"

    @property
    def log_dir(self) -> Path:
        """Seen by the daemon as ``/var/log/libvirt``; also holds the daemons' own logs."""
        return self.workdir / "log"

    @property
    def uri(self) -> str:
        """The QEMU driver's URI through the private socket."""
        return f"qemu+unix:///system?socket={self.socket_path}"

    def qemu_pids(self) -> dict[str, int]:
        """Domain name -> QEMU process id, for the domains this daemon started and still runs."""
        pids: dict[str, int] = {}
        for pid_file in sorted((self.run_dir / "qemu").glob("*.pid")):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip())
                argv = pid_cmdline(pid)
                if pid_alive(pid) and argv and "qemu" in Path(argv[0]).name:
                    pids[pid_file.stem] = pid
        return pids

    # -- life cycle -------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Write the configuration, start both daemons, wait until the QEMU driver answers."""
        if os.geteuid() != 0:
            raise LibvirtdError("a private libvirtd for QEMU must run as root")
        if self.libvirtd_pid is not None:
            raise LibvirtdError("libvirtd is already running")
        self._write_config()
        if self._virtlogd is None or self._virtlogd.poll() is not None:
            self._virtlogd = self._spawn(
                [VIRTLOGD, "--config", str(self.workdir / "etc" / "virtlogd.conf")],
                pid_file=self.workdir / "virtlogd.pid",
                log_name="virtlogd.stderr",
            )
        libvirtd = self._spawn(
            [LIBVIRTD, "--config", str(self.workdir / "etc" / "libvirtd.conf")],
            pid_file=self.workdir / "libvirtd.pid",
            log_name="libvirtd.stderr",
        )
        self._adopt_and_wait(libvirtd, uri=self.uri, timeout=timeout)

    def stop(self) -> None:
        """Destroy every domain, then end libvirtd, any QEMU left over, and virtlogd."""
        atexit.unregister(self.stop)
        if self.libvirtd_pid is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._destroy_all_domains()
        if self._libvirtd is not None:
            stop_child(self._libvirtd)
            self._libvirtd = None
        for pid in self.qemu_pids().values():
            terminate_pid(pid, grace_seconds=5.0)
        if self._virtlogd is not None:
            stop_child(self._virtlogd)
            self._virtlogd = None

    def restart(self, timeout: float = 60.0) -> None:
        """End libvirtd (SIGTERM; domains keep running) if it runs, and start it again."""
        if self._libvirtd is not None:
            stop_child(self._libvirtd)
        self._libvirtd = None
        self.start(timeout)

    # -- internals --------------------------------------------------------------------------

    def _spawn(self, argv: list[str], *, pid_file: Path, log_name: str) -> subprocess.Popen[bytes]:
        binds: list[str] = []
        for target, sub in _PRIVATE_FOLDERS.items():
            binds += [str(self.workdir / sub), target]
        binds += [str(self.cache_dir), _CACHE_TARGET]
        command = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            _NAMESPACE_SCRIPT,
            "namespace",
            *binds,
            "--",
            *argv,
            "--pid-file",
            str(pid_file),
        ]
        # unshare and sh exec in place: the child's pid is the daemon's pid.
        return self._launch(command, log_name=log_name)

    def _write_config(self) -> None:
        for sub in _PRIVATE_FOLDERS.values():
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        (self.workdir / "etc" / "qemu").mkdir(exist_ok=True)
        (self.log_dir / "qemu").mkdir(exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        etc = self.workdir / "etc"
        (etc / "libvirtd.conf").write_text(
            libvirtd_config(
                socket_dir=self.run_dir,
                rw_perms="0700",
                ro_perms="0777",
                log_file=self.log_dir / "libvirtd.log",
            )
        )
        (etc / "virtlogd.conf").write_text(
            f'log_outputs = "3:file:{self.log_dir / "virtlogd.log"}"\n'
        )
        user = "root" if self.qemu_as_root else "libvirt-qemu"
        group = "root" if self.qemu_as_root else "kvm"
        (etc / "qemu.conf").write_text(
            f'user = "{user}"\n'
            f'group = "{group}"\n'
            'security_driver = "none"\n'
            "cgroup_controllers = [ ]\n"
            'stdio_handler = "logd"\n'
        )

    def _destroy_all_domains(self) -> None:
        connection = libvirt.open(self.uri)
        try:
            for domain in connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                with contextlib.suppress(libvirt.libvirtError):
                    domain.destroy()
        finally:
            connection.close()


class TestDriverLibvirtd(_LibvirtdChild):
    """libvirtd serving only libvirt's test driver, its sockets and log in ``directory``.

    ``directory`` must be short: unix socket paths are limited to 107 bytes. ``rw_perms``,
    ``ro_perms`` and ``group`` set the sockets' modes and group. ``start`` waits until the
    test driver answers (and may be called again after ``kill`` or ``stop``); ``stop`` ends
    the daemon with SIGTERM, ``kill`` with SIGKILL, ``pause`` freezes it.
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self,
        *,
        directory: Path,
        rw_perms: str = "0700",
        ro_perms: str = "0700",
        group: str | None = None,
    ) -> None:
        super().__init__(socket_dir=directory, log_dir=directory)
        self.directory = directory
        self.rw_perms = rw_perms
        self.ro_perms = ro_perms
        self.group = group

    @property
    def uri(self) -> str:
        """The test driver's default instance, reached through this daemon."""
        return self.test_driver_uri()

    @property
    def ro_uri(self) -> str:
        """The same, through the read-only socket."""
        return self.test_driver_uri(read_only=True)

    @property
    def log_path(self) -> Path:
        """libvirtd's standard output and error."""
        return self.directory / "libvirtd.log"

    def start(self, timeout: float = 20.0) -> None:
        """Write the configuration, start libvirtd, wait until the test driver answers."""
        if self.running:
            raise LibvirtdError("libvirtd is already running")
        drivers = self.directory / "no-drivers"
        drivers.mkdir(parents=True, exist_ok=True)
        config = self.directory / "libvirtd.conf"
        config.write_text(
            libvirtd_config(
                socket_dir=self.directory,
                rw_perms=self.rw_perms,
                ro_perms=self.ro_perms,
                group=self.group,
            )
        )
        libvirtd = self._launch(
            [LIBVIRTD, "--config", str(config), "--pid-file", str(self.directory / "pid")],
            log_name=self.log_path.name,
            env={**os.environ, "LIBVIRT_DRIVER_DIR": str(drivers)},
        )
        self._adopt_and_wait(libvirtd, uri=self.uri, timeout=timeout)

    def stop(self) -> None:
        """End libvirtd with SIGTERM (SIGKILL if it lingers); nothing when it does not run."""
        atexit.unregister(self.stop)
        if self._libvirtd is not None:
            stop_child(self._libvirtd)
            self._libvirtd = None


def _socket_accepts(path: Path) -> bool:
    """True when a daemon listens on the unix socket ``path`` (probed without libvirt's noise)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
