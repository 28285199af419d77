"""A private libvirt daemon (libvirtd + virtlogd) whose files all live under one directory.

Each daemon runs in its own mount namespace (``unshare --mount``) in which the workdir's
folders are bind-mounted over ``/etc/libvirt``, ``/run/libvirt``, ``/var/lib/libvirt``,
``/var/log/libvirt`` and ``/var/cache/libvirt``. The host's libvirt files stay untouched, and
two private daemons (one per test session, say) never share the QEMU driver's state
directories, so they can run at the same time. Only the QEMU capability cache is shared
between daemons (``cache_dir``): probing QEMU costs ~13 s, reading the cache ~0.1 s.

QEMU runs as root by default: with ``/dev/kvm`` readable by root only, a daemon running QEMU
as ``libvirt-qemu`` re-probes QEMU's capabilities on every API call (~4 s each).
``qemu_as_root=False`` exists to show that pitfall; QEMU then also needs read access to the
kernel, initramfs and serial-log paths it is given.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import libvirt

from guestload_lab.deps import DEFAULT_CACHE_DIR as LAB_CACHE_DIR
from guestload_lab.processes import pid_alive, pid_cmdline, stop_child, terminate_pid

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


class LibvirtdError(RuntimeError):
    """The private daemon could not be started or did not answer."""


class PrivateLibvirtd:
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
        self.qemu_as_root = qemu_as_root
        self.cache_dir = cache_dir / ("root" if qemu_as_root else "libvirt-qemu")
        self._libvirtd: subprocess.Popen[bytes] | None = None
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
    def socket_path(self) -> Path:
        """The read-write socket of the daemon."""
        return self.run_dir / "libvirt-sock"

    @property
    def uri(self) -> str:
        """The QEMU driver's URI through the private socket."""
        return f"qemu+unix:///system?socket={self.socket_path}"

    def test_driver_uri(self) -> str:
        """The test driver (a fake hypervisor with one domain) through the same daemon."""
        return f"test+unix:///default?socket={self.socket_path}"

    @property
    def libvirtd_pid(self) -> int | None:
        """libvirtd's process id while it runs."""
        if self._libvirtd is None or self._libvirtd.poll() is not None:
            return None
        return self._libvirtd.pid

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
        self._libvirtd = self._spawn(
            [LIBVIRTD, "--config", str(self.workdir / "etc" / "libvirtd.conf")],
            pid_file=self.workdir / "libvirtd.pid",
            log_name="libvirtd.stderr",
        )
        atexit.register(self.stop)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

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

    def kill(self) -> None:
        """SIGKILL libvirtd as a crash would; its domains and virtlogd keep running."""
        if self._libvirtd is None:
            raise LibvirtdError("libvirtd is not running")
        with contextlib.suppress(ProcessLookupError):
            self._libvirtd.send_signal(signal.SIGKILL)
        self._libvirtd.wait(timeout=10.0)

    def restart(self, timeout: float = 60.0) -> None:
        """End libvirtd (SIGTERM; domains keep running) if it runs, and start it again."""
        if self._libvirtd is not None:
            stop_child(self._libvirtd)
        self._libvirtd = None
        self.start(timeout)

    def __enter__(self) -> PrivateLibvirtd:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

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
        with (self.log_dir / log_name).open("ab") as log:
            # unshare and sh exec in place: the child's pid is the daemon's pid.
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _write_config(self) -> None:
        for sub in _PRIVATE_FOLDERS.values():
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        (self.workdir / "etc" / "qemu").mkdir(exist_ok=True)
        (self.log_dir / "qemu").mkdir(exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        etc = self.workdir / "etc"
        (etc / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{self.run_dir}"\n'
            'unix_sock_rw_perms = "0700"\n'
            'unix_sock_ro_perms = "0777"\n'
            'auth_unix_rw = "none"\n'
            'auth_unix_ro = "none"\n'
            f'log_outputs = "3:file:{self.log_dir / "libvirtd.log"}"\n'
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

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = "socket not created"
        while time.monotonic() < deadline:
            if self.libvirtd_pid is None:
                raise LibvirtdError(f"libvirtd exited during start-up\n{self._log_tail()}")
            if _socket_accepts(self.socket_path):
                try:
                    connection = libvirt.open(self.uri)
                except libvirt.libvirtError as error:
                    last_error = str(error)
                else:
                    try:
                        connection.getVersion()
                        return
                    finally:
                        connection.close()
            time.sleep(0.1)
        raise LibvirtdError(
            f"libvirtd did not answer within {timeout:.0f} s: {last_error}\n{self._log_tail()}"
        )

    def _destroy_all_domains(self) -> None:
        connection = libvirt.open(self.uri)
        try:
            for domain in connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                with contextlib.suppress(libvirt.libvirtError):
                    domain.destroy()
        finally:
            connection.close()

    def _log_tail(self, lines: int = 20) -> str:
        parts = []
        for name in ("libvirtd.stderr", "libvirtd.log"):
            path = self.log_dir / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(parts)


def _socket_accepts(path: Path) -> bool:
    """True when a daemon listens on the unix socket ``path`` (probed without libvirt's noise)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
